"""Runs a U-Net exported by ``unet_jax.export`` with onnxruntime (no JAX in the forward).

``OnnxUNet`` stands in for the Flax model wherever the overlap-tile inference
takes one (``tiling.predict_tiled``, ``predict.predict_files``): it carries
the net's ``depth``/``features``/``num_classes``/``in_channels`` (read from the
graph's metadata) and maps a batch of normalised tiles ``[B, T, T, C]`` to
softmax probabilities ``[B, T - 2 * border, T - 2 * border, K]``.

``predict_image`` and ``segment_image`` do the whole job for one image in
Python (e.g. in napari's console): overlap tiles in, probabilities aligned
with the image (and the run's instances) out.
"""

from __future__ import annotations

import json
import pathlib

import ml_collections
import numpy as np

from unet_jax.errors import UserInputError

META_PREFIX = "unet_jax."


class OnnxUNet:
  """An exported U-Net, callable on batches of tiles.

  Attributes:
    path: the ``.onnx`` file.
    depth, features, num_classes, in_channels: the net.
    fixed_tile: the only tile side the graph takes, or None (any valid side).
    dtype: activation dtype (float32), for the memory estimate of the tiler.
    config: the export-time config fields that inference uses (tile size,
      batch size, dataset, ``instances``).
  """

  def __init__(self, path: str | pathlib.Path):
    try:
      import onnxruntime as ort
    except ImportError:
      # onnxruntime is in requirements-export.txt; the hint is the export's,
      # which also installs jax2onnx (the .onnx file was written with it).
      from unet_jax.export import INSTALL_HINT
      raise UserInputError(f"--onnx needs onnxruntime: {INSTALL_HINT}") from None
    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise UserInputError(f"--onnx {self.path} not found: pass the .onnx file written by "
                           "python -m unet_jax.export")
    try:
      self._session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own error types for bad files
      raise UserInputError(f"cannot load {self.path} as an ONNX model: "
                           f"{str(e).splitlines()[0]}") from None
    meta = self._session.get_modelmeta().custom_metadata_map
    if META_PREFIX + "config" not in meta:
      raise UserInputError(f"{self.path} was not exported by unet_jax.export "
                           "(no unet_jax metadata)")
    fields = json.loads(meta[META_PREFIX + "config"])
    self.depth = int(fields["depth"])
    self.features = int(fields["features"])
    self.num_classes = int(fields["num_classes"])
    self.in_channels = int(fields["in_channels"])
    self.fixed_tile = int(meta.get(META_PREFIX + "fixed_tile", 0)) or None
    self.dtype = np.float32
    self.config = ml_collections.ConfigDict({
        "dataset": fields.get("dataset") or "folder",
        "depth": self.depth,
        "tile_size": int(fields["tile"]),
        "eval_tile_size": self.fixed_tile or int(fields["tile"]),
        "eval_batch_size": int(fields.get("eval_batch_size") or 4),
    })
    if fields.get("instances") is not None:
      self.config.instances = ml_collections.ConfigDict(fields["instances"])
    self._input = self._session.get_inputs()[0].name

  def __call__(self, tiles: np.ndarray) -> np.ndarray:
    """Softmax probabilities ``[B, O, O, K]`` of normalised tiles ``[B, T, T, C]``."""
    tiles = np.asarray(tiles, np.float32)
    if tiles.shape[-1] != self.in_channels:
      raise UserInputError(f"the image has {tiles.shape[-1]} channel(s) but the model was "
                           f"trained on {self.in_channels}; convert the image first")
    if self.fixed_tile and tiles.shape[1:3] != (self.fixed_tile, self.fixed_tile):
      raise UserInputError(f"{self.path.name} takes {self.fixed_tile}-px tiles only; "
                           f"pass --tile_size {self.fixed_tile}")
    return self._session.run(None, {self._input: tiles})[0]


def _as_model(model: OnnxUNet | str | pathlib.Path) -> OnnxUNet:
  """``model`` itself, or the graph at that path."""
  return model if isinstance(model, OnnxUNet) else OnnxUNet(model)


def predict_image(model: OnnxUNet | str | pathlib.Path, image: np.ndarray, *,
                  tile_size: int | None = None, tta: bool = False) -> np.ndarray:
  """Softmax probabilities of a raw image of any size, aligned with it.

  The overlap-tile inference of ``evaluate.py --onnx`` (paper Fig. 2): the
  image is normalised as in training, mirror-padded by the border and cut
  into tiles (``tiling.predict_tiled``), so pixel (y, x) of the result is
  the prediction for pixel (y, x) of the image.

  Args:
    model: an ``OnnxUNet`` or the path of a ``.onnx`` file from ``unet_jax.export``.
    image: raw ``[H, W]`` or ``[H, W, C]``, any numeric dtype and size.
    tile_size: input tile side; None = the run's evaluation tile (the only
      one for a fixed-tile export).
    tta: average the 8 flips/rotations.
  Returns:
    float32 ``[H, W, K]``.
  Raises:
    UserInputError: wrong number of channels, or a tile size the graph does not take.
  """
  from unet_jax import tiling
  from unet_jax.datasets import normalize

  model = _as_model(model)
  return tiling.predict_tiled(model, None, normalize(image),
                              tile_size=tile_size or model.config.eval_tile_size,
                              batch_size=model.config.eval_batch_size, tta=tta, method="host")


def segment_image(model: OnnxUNet | str | pathlib.Path, image: np.ndarray, *,
                  tile_size: int | None = None, tta: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Probabilities and instances of a raw image, by the run's instance rule.

  The rule is the training run's ``config.instances`` (stored in the graph's
  metadata; the paper's threshold + components if it holds none), threshold
  included: what ``evaluate.py --onnx --mode predict --threshold T`` writes
  with the run's threshold.

  Args:
    model, image, tile_size, tta: as for ``predict_image``.
  Returns:
    ``(probs, labels)``: float32 ``[H, W, K]`` and int32 ``[H, W]`` (0 = background).
  """
  from unet_jax import instances, predict

  model = _as_model(model)
  probs = predict_image(model, image, tile_size=tile_size, tta=tta)
  params = instances.InstanceParams.from_config(model.config)
  return probs, predict.mask_and_labels(probs, params)[1]
