"""Training input pipeline (grain) and the on-disk weight-map cache.

Weight maps (paper Eq. 2) are computed once per training image with
:func:`unet_jax.weight_maps.weight_map` and cached as ``.npy`` files in
``config.cache_dir`` (else ``$UNET_JAX_CACHE``, else ``~/.cache/unet_jax``). The
cache key hashes the dataset name, the image's name and the bytes of its
image, instance and label maps, ``w0``, ``sigma`` and the class weights, so any
change recomputes.

The pipeline::

    MapDataset.range(n).seed(config.seed).shuffle().repeat()
      .random_map(sample).to_iter_dataset().batch(B)[.mp_prefetch(num_workers)]

``sample`` cuts one augmented tile (:mod:`unet_jax.augment`) with the per-element
``np.random.Generator`` grain derives from the seed and the element index, so
the batch sequence depends only on ``config.seed`` (not on ``num_workers``),
and the iterator's ``get_state()``/``set_state()`` (or orbax with
``grain.checkpoint.CheckpointSave(it)`` / ``CheckpointRestore(it)``) resume it
exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pathlib
import sys
import tempfile
from typing import Sequence

import grain
import numpy as np

from unet_jax import augment, model, weight_maps
from unet_jax.datasets import SegmentationData
from unet_jax.errors import UserInputError


def cache_root(config) -> pathlib.Path:
  """``config.cache_dir``, else ``$UNET_JAX_CACHE``, else ``~/.cache/unet_jax``."""
  raw = str(config.cache_dir or os.environ.get("UNET_JAX_CACHE", "")
            or pathlib.Path.home() / ".cache" / "unet_jax")
  return pathlib.Path(raw).expanduser()


def class_weights_for(config, data: SegmentationData) -> np.ndarray:
  """``[K]`` class weights: "balanced" (N / (K n_k) over ``data.labels``) or "none" (ones)."""
  mode = str(config.class_weights)
  if mode == "balanced":
    return weight_maps.balanced_class_weights(list(data.labels), config.num_classes)
  if mode == "none":
    return np.ones(config.num_classes, np.float32)
  raise UserInputError(f"config.class_weights = {mode!r}: choose 'balanced' or 'none'")


# Part of every cache key: bump it when the maps' computation changes (weight_maps.py
# or weights_for below), so that caches shared by checkouts (~/.cache/unet_jax) are
# not reused with maps of the old code.
WEIGHT_MAP_VERSION = 1


def cache_key(dataset: str, name: str, arrays: Sequence[np.ndarray], w0: float, sigma: float,
              class_weights: np.ndarray) -> str:
  """Hex digest identifying one weight map (of this :data:`WEIGHT_MAP_VERSION`)."""
  h = hashlib.sha256()
  h.update(f"v{WEIGHT_MAP_VERSION}|{dataset}|{name}|w0={float(w0)!r}|sigma={float(sigma)!r}|"
           .encode())
  h.update(np.asarray(class_weights, np.float64).tobytes())
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:32]


def weights_for(config, data: SegmentationData, *,
                class_weights: np.ndarray | None = None) -> list[np.ndarray]:
  """Weight maps of paper Eq. 2 for every image of ``data``, from the disk cache.

  Args:
    config: ``w0``, ``sigma``, ``class_weights``, ``num_classes``, ``cache_dir``.
    data: a split with ``instances`` and ``labels``.
    class_weights: ``[K]`` (default: :func:`class_weights_for` on ``data``; pass
      the training split's when ``data`` is a subset).
  Returns:
    float32 ``[H, W]`` per image.
  """
  if data.instances is None:
    raise UserInputError(f"{data.dataset}: weight maps need labels, this split has none")
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  cw = class_weights_for(config, data) if class_weights is None else np.asarray(class_weights)
  folder = cache_root(config) / "weight_maps"
  folder.mkdir(parents=True, exist_ok=True)
  keys = [cache_key(data.dataset, n, (img, inst, lab), config.w0, config.sigma, cw)
          for n, img, inst, lab in zip(data.names, data.images, data.instances, data.labels)]
  paths = [folder / f"{data.dataset}-{k}.npy" for k in keys]
  todo = [i for i, p in enumerate(paths) if not p.is_file()]
  for i in tqdm(todo, desc="weight maps", unit="img", disable=not sys.stderr.isatty()):
    # Instances restricted to the foreground label: for touching cells (CTC)
    # the separation gap becomes background, where Eq. 2's border term acts.
    inst = np.where(data.labels[i] == 1, data.instances[i], 0)
    if len(cw) == 2:
      w = weight_maps.weight_map(inst, cw, config.w0, config.sigma)
    else:
      # K > 2 classes: w_c of each pixel's class plus the border term between
      # the objects of all foreground classes (Eq. 2 on the background only).
      lab = data.labels[i]
      inst = np.where((lab >= 1) & (lab < len(cw)), data.instances[i], 0)
      w = (weight_maps.weight_map(inst, np.zeros(2), config.w0, config.sigma)
           + cw[np.clip(lab, 0, len(cw) - 1)]).astype(np.float32)
    # A unique temporary name (not the pid: processes on different hosts of one
    # job may share the cache and have the same pid), then an atomic rename:
    # parallel runs never see half a file.
    fd, tmp = tempfile.mkstemp(dir=paths[i].parent, prefix=paths[i].stem, suffix=".tmp.npy")
    with os.fdopen(fd, "wb") as f:
      np.save(f, w)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep a shared cache from other users
    os.replace(tmp, paths[i])
  return [np.load(p) for p in paths]


@dataclasses.dataclass(frozen=True)
class TileSampler:
  """grain random map: image index -> one augmented training sample.

  Holds the whole split in memory (numpy arrays pickle to grain workers).
  """
  images: tuple[np.ndarray, ...]
  labels: tuple[np.ndarray, ...]
  weights: tuple[np.ndarray, ...]
  tile: int
  out: int
  params: augment.AugmentParams

  def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    image, label, weight = augment.augment_sample(
        rng, self.images[index], self.labels[index], self.weights[index],
        self.tile, self.out, self.params)
    return {"image": image, "label": label, "weight": weight}


def _read_options(batch_size: int) -> grain.ReadOptions:
  # One background thread, two batches ahead: grain's default (16 threads, 500
  # elements) would hold ~650 MB of 572x572 tiles and fight the train step for
  # the CPU. Workers (num_workers > 0) add parallelism where it is wanted.
  return grain.ReadOptions(num_threads=1, prefetch_buffer_size=2 * batch_size)


def _ensure_absl_flags_parsed() -> None:
  # grain's worker processes read absl flags; outside an absl app (tests,
  # notebooks) they are unparsed and grain would raise. Keep the defaults.
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_train_iterator(config, data: SegmentationData, *,
                        weights: Sequence[np.ndarray] | None = None,
                        process_index: int = 0, process_count: int = 1
                        ) -> "StepPositionedIterator":
  """Endless iterator of augmented training batches.

  Args:
    config: ``tile_size``, ``depth``, ``batch_size``, ``seed``, ``num_workers``,
      ``augment.*`` and the weight-map fields.
    data: the training split.
    weights: weight maps per image (default: :func:`weights_for`).
    process_index, process_count: in a multi-process run, this process reads
      only its block of ``B / process_count`` samples of every global batch
      (``unet_jax.distributed.shard_dataset``).
  Returns:
    A grain ``DatasetIterator`` (``get_state()``/``set_state()``; ``restart_at(step)``
    repositions it) yielding
    ``{"image": float32 [B, T, T, C], "label": int32 [B, O, O],
    "weight": float32 [B, O, O]}`` with T = ``tile_size``, O its output size,
    B = ``batch_size / process_count``.

  With ``num_workers > 0`` outside an absl app (a notebook, a test), absl's
  flags are marked as parsed with their defaults, because grain's worker
  processes read them; an absl app of the caller's should parse its flags first.
  """
  if not len(data):
    raise UserInputError(f"{data.dataset}: the training split is empty (check train_indices)")
  weights = weights_for(config, data) if weights is None else weights
  make = functools.partial(_pipeline_from, config, data, weights, process_index, process_count)
  return StepPositionedIterator(make)


class StepPositionedIterator(grain.DatasetIterator):
  """The training iterator, with a saved position that holds the step it started at.

  A pipeline rebuilt at a later step (``make(start_step)``: a run resumed
  with another number of processes or workers) counts its own position from
  that step. Its state is therefore saved as ``{"start_step": s, "iterator":
  the pipeline's own}``, and ``set_state`` rebuilds the pipeline at ``s``
  before restoring it, so every later resume lands on the right batch. (A
  bare pipeline state, from before this class, is taken as ``s = 0``.)
  """

  def __init__(self, make):
    super().__init__()
    self._make, self._start = make, 0
    self._it = None  # stays None if make() raises: close() (also from __del__) then has nothing to do
    self._it = make(self._start)

  def __next__(self):
    return next(self._it)

  def get_state(self) -> dict:
    return {"start_step": self._start, "iterator": self._it.get_state()}

  def set_state(self, state: dict) -> None:
    if "start_step" not in state:
      state = {"start_step": 0, "iterator": state}
    start = int(state["start_step"])
    if start != self._start:
      self.restart_at(start)
    self._it.set_state(state["iterator"])

  def restart_at(self, step: int) -> None:
    """Rebuilds the pipeline so that its first batch is that of ``step`` (0-based).

    The data position of a run resumed at ``step`` whatever the number of
    processes or workers that wrote its checkpoint: every sample depends only
    on the seed and its index, so the batches are those an uninterrupted run reads.
    """
    self._it.close()
    self._it, self._start = self._make(step), int(step)

  def start_prefetch(self) -> None:
    self._it.start_prefetch()

  def close(self) -> None:
    if self._it is not None:
      self._it.close()


def _pipeline_from(config, data: SegmentationData, weights: Sequence[np.ndarray],
                   process_index: int, process_count: int,
                   start_step: int) -> grain.DatasetIterator:
  """The grain pipeline of :func:`make_train_iterator`, its first batch that of ``start_step``.

  Yields batches ``{"image": [b, T, T, C], "label": [b, O, O], "weight": [b, O, O]}``,
  b = ``batch_size / process_count``.
  """
  tile = int(config.tile_size)
  out = model.tile_output_size(tile, config.depth, config.padding)
  sampler = TileSampler(tuple(data.images), tuple(data.labels),
                        tuple(np.asarray(w) for w in weights), tile, out,
                        augment.AugmentParams.from_config(config.augment))
  # Batch on the IterDataset: MapDataset.batch of an endless repeat() overflows len().
  from unet_jax import distributed  # pylint: disable=g-import-not-at-top
  batch = int(config.batch_size)
  ds = (grain.MapDataset.range(len(data)).seed(int(config.seed)).shuffle().repeat()
        .random_map(sampler))
  ds = distributed.shard_dataset(ds, batch, process_index, process_count)
  batch //= process_count
  if start_step:
    ds = ds[start_step * batch:]  # lazy; the elements keep their indices, hence their samples
  ds = ds.to_iter_dataset(_read_options(batch)).batch(batch)
  if int(config.num_workers) > 0:
    _ensure_absl_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(config.num_workers)))
  return iter(ds)
