"""Overlap-tile inference (paper, Fig. 2) and test-time augmentation.

An image of any size is mirror-padded (numpy ``'reflect'``) by the net's border
(92 px at depth 4), cut into input tiles whose output tiles cover it, the tiles
are run batched under one jitted function, and the output tiles are stitched.

Seamlessness (docs/conventions.md, tiling grid): a depth-d U-Net with VALID convolutions is
shift-equivariant only for shifts that are multiples of ``2**d`` (the pooling
grid). Tiles are therefore placed at output positions ``i * stride`` with
``stride`` the largest multiple of ``2**d`` not above the output tile side
(neighbouring output tiles overlap by ``out - stride`` px), and the image is
reflect-padded further on the bottom/right so that the last tile fits; the
result is cropped back. With this placement the stitched result equals one
forward pass over the whole padded image (up to float summation order), which
``tests/test_tiling.py`` checks.

A net with ``padding="same"`` (the non-default ablation variant) is tiled the
ordinary way instead: input tile = output tile, no border and no overlap; the
image is reflect-padded on the bottom/right to whole tiles. Its tiles see zero
padding at their edges, so (unlike overlap-tile) the stitched result is not
seamless.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh

from unet_jax import model as model_lib
from unet_jax import parallel
from unet_jax.errors import UserInputError

GiB = 1 << 30
_MAX_TILE = 1 << 14  # search limit of tile_size_for_memory


# --------------------------------------------------------------------------
# Tile sizes.
# --------------------------------------------------------------------------


def smallest_usable_tile(depth: int = 4) -> int:
  """Smallest valid input tile whose output covers one pooling cell (204 at depth 4)."""
  size = model_lib.valid_input_size(1, depth)
  while model_lib.output_size(size, depth) < 2**depth:
    size = model_lib.valid_input_size(size + 1, depth)
  return size


def check_tile_size(tile_size: int, depth: int = 4, padding: str = "valid") -> int:
  """Checks that ``tile_size`` is a valid, usable input tile side.

  Returns:
    The output tile side.
  Raises:
    UserInputError: for an invalid size (the message names the nearest valid
      ones) or one whose output is smaller than the ``2**depth`` pooling grid.
  """
  try:
    out = model_lib.tile_output_size(tile_size, depth, padding)
  except ValueError as e:
    raise UserInputError(f"tile_size: {e}") from None
  if out < 2**depth:
    raise UserInputError(
        f"tile_size {tile_size} gives a {out}-px output tile, smaller than the "
        f"{2**depth}-px pooling grid of a depth-{depth} U-Net, so tiles cannot be "
        f"placed seamlessly; the smallest usable tile_size is {smallest_usable_tile(depth)}")
  return out


def _conv_peak(n: int, c_in: int, c_out: int) -> int:
  """Elements live during one VALID 3x3 conv: input, SAME output, cropped output."""
  return n * n * c_in + n * n * c_out + (n - 2)**2 * c_out


def activation_elements(tile_size: int, *, features: int, depth: int, num_classes: int,
                        in_channels: int) -> int:
  """Peak number of activation elements live in one forward pass of one tile.

  The estimate walks the net (``unet_jax.model.UNet``) layer by layer and keeps
  what a buffer-reusing compiler must hold at each step: the skip maps of the
  encoder levels not yet consumed by the decoder, plus the inputs and outputs
  of the current layer (a 3x3 conv counts its input, its SAME-padded output and
  the cropped output, see ``unet_jax.layers.conv3x3_valid``; the concatenation
  counts the up-convolution output, the cropped skip and the concatenated map).
  The peak over all steps is returned. ``tile_size_for_memory`` documents how
  it compares with the compiler's own figure.
  """
  n, c = tile_size, in_channels
  skips: list[int] = []
  peak = 0

  def step(live: int) -> None:
    nonlocal peak
    peak = max(peak, sum(skips) + live)

  for level in range(depth + 1):
    f = features * 2**level
    step(_conv_peak(n, c, f))
    step(_conv_peak(n - 2, f, f))
    n, c = n - 4, f
    if level < depth:
      skips.append(n * n * f)
      step((n // 2)**2 * f)  # the pooled map (the skip is counted in `skips`)
      n //= 2
  for level in reversed(range(depth)):
    f = features * 2**level
    m = 2 * n
    skip = skips.pop()
    step(n * n * c + m * m * f + skip)  # up-convolution
    step(m * m * f + m * m * f + m * m * 2 * f)  # cropped skip, concat
    step(_conv_peak(m, 2 * f, f))
    step(_conv_peak(m - 2, f, f))
    n, c = m - 4, f
  step(2 * n * n * c + 2 * n * n * num_classes)  # classifier, softmax
  return peak


def architecture_param_count(*, features: int, depth: int, num_classes: int,
                             in_channels: int) -> int:
  """Number of parameters of ``UNet(num_classes, features, depth)``."""
  total, c = 0, in_channels
  for level in range(depth + 1):
    f = features * 2**level
    total += 9 * c * f + f + 9 * f * f + f
    c = f
  for level in reversed(range(depth)):
    f = features * 2**level
    total += 4 * c * f + f + 9 * 2 * f * f + f + 9 * f * f + f
    c = f
  return total + c * num_classes + num_classes


def estimate_memory(tile_size: int, *, features: int, depth: int, num_classes: int,
                    in_channels: int, batch_size: int, dtype_bytes: int = 4) -> int:
  """Estimated peak bytes of one batched inference call (see ``tile_size_for_memory``).

  Parameters (float32, plus a ``dtype_bytes`` copy when the compute dtype is
  narrower), the input batch and output probabilities (float32), and
  ``batch_size`` times the activation peak of ``activation_elements``.
  """
  params = architecture_param_count(features=features, depth=depth,
                                    num_classes=num_classes, in_channels=in_channels)
  out = model_lib.output_size(tile_size, depth)
  io = batch_size * 4 * (tile_size**2 * in_channels + out**2 * num_classes)
  act = activation_elements(tile_size, features=features, depth=depth,
                            num_classes=num_classes, in_channels=in_channels)
  return params * (4 + (dtype_bytes if dtype_bytes < 4 else 0)) + io + (
      batch_size * dtype_bytes * act)


def activation_bytes(model: nn.Module) -> int:
  """Bytes per activation element for the memory estimate of ``model`` here.

  The compute dtype's size, except on XLA:CPU, which runs bfloat16
  convolutions through float32 copies: there the estimate with 2 bytes came to
  0.72-0.77x of XLA's ``memory_analysis()`` (tests/test_tiling.py), below the
  budget it was meant to keep; with 4 bytes it errs on the safe side.
  """
  size = jnp.dtype(model.dtype).itemsize
  return max(size, 4) if jax.default_backend() == "cpu" else size


def _usable_tiles(depth: int) -> Iterator[int]:
  """Usable tile sides in increasing order (valid sizes step by ``2**depth``)."""
  size = smallest_usable_tile(depth)
  while True:
    yield size
    size = model_lib.valid_input_size(size + 1, depth)


def tile_size_for_memory(budget_bytes: int, *, features: int, depth: int, num_classes: int,
                         in_channels: int, batch_size: int, dtype_bytes: int = 4,
                         max_tile: int | None = None) -> int:
  """Largest usable tile side whose estimated inference memory fits ``budget_bytes``.

  The estimate (``estimate_memory``) is parameters + input/output batch +
  ``batch_size * dtype_bytes * activation_elements(...)``, where
  ``activation_elements`` simulates the live set of a buffer-reusing compiler
  layer by layer. Measured against XLA's own figure for the jitted inference
  call (``compiled.memory_analysis()``: argument + output + temp bytes;
  XLA:CPU, float32, depth 4; ``benchmarks/inference.py --memory_only``)::

    features  tile  batch  estimate MiB  XLA MiB  estimate / XLA
           8   204      4            17       14            1.26
           8   572      4           130      110            1.19
          64   204      4           238      210            1.13
          64   572      1           358      326            1.10
          64   572      4          1078      919            1.17
          64   700      1           478      434            1.10
          64   700      4          1559     1350            1.15

  so the estimate errs on the safe side by 10-25 %. Process RSS adds the XLA
  runtime and compiler (a few hundred MiB, see
  ``results/inference_benchmark.md``).

  Args:
    budget_bytes: memory available for one batched call.
    features, depth, num_classes, in_channels: the net (``UNet`` fields).
    batch_size: tiles per call.
    dtype_bytes: bytes per activation element (4 float32, 2 bfloat16).
    max_tile: no tile above this side is returned (e.g. one that already
      covers the whole image); None = no cap.
  Returns:
    The tile side (a valid input size whose output is >= ``2**depth``).
  Raises:
    UserInputError: if not even the smallest usable tile fits.
  """
  est = functools.partial(estimate_memory, features=features, depth=depth,
                          num_classes=num_classes, in_channels=in_channels,
                          batch_size=batch_size, dtype_bytes=dtype_bytes)
  best = None
  for size in _usable_tiles(depth):
    if (est(size) > budget_bytes or size > _MAX_TILE
        or (best is not None and max_tile and size > max_tile)):
      break
    best = size
  if best is None:
    small = smallest_usable_tile(depth)
    raise UserInputError(
        f"memory budget {budget_bytes / GiB:.2f} GiB is too small for even the smallest "
        f"tile ({small} px, about {est(small) / GiB:.2f} GiB at batch_size {batch_size}); "
        f"lower batch_size or raise the budget")
  return best


def default_memory_budget() -> int:
  """Half the accelerator's memory, or a quarter of the host RAM (at most 4 GiB) on CPU."""
  # This process's own device: in a multi-process run jax.devices()[0] may be another
  # host's (validation runs on every process with its local copy of the parameters).
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"]) // 2
  try:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    ram = 8 * GiB
  return min(ram // 4, 4 * GiB)


# --------------------------------------------------------------------------
# Tile placement.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TilePlan:
  """Where the tiles of one image go.

  Attributes:
    tile: input tile side.
    out: output tile side.
    stride: output stride between tiles (a multiple of ``2**depth``).
    border: pixels the net loses on each side (92 at depth 4).
    height, width: the image size.
    rows, cols: output positions of the tiles' top-left corners.
  """
  tile: int
  out: int
  stride: int
  border: int
  height: int
  width: int
  rows: tuple[int, ...]
  cols: tuple[int, ...]

  @property
  def padded_out(self) -> tuple[int, int]:
    """Output extent covered by the tiles (>= the image size)."""
    return self.rows[-1] + self.out, self.cols[-1] + self.out

  @property
  def num_tiles(self) -> int:
    return len(self.rows) * len(self.cols)


def _positions(length: int, out: int, stride: int) -> tuple[int, ...]:
  count = -(-max(length - out, 0) // stride) + 1
  return tuple(i * stride for i in range(count))


def plan_tiles(height: int, width: int, tile_size: int, depth: int,
               padding: str = "valid") -> TilePlan:
  """Places output tiles on the ``2**depth`` grid so they cover ``height x width``.

  VALID: overlap-tile (border = the net's, stride a multiple of ``2**depth``).
  SAME: ordinary tiling (border 0, stride = tile = output tile, no overlap).
  """
  out = check_tile_size(tile_size, depth, padding)
  stride = out // 2**depth * 2**depth
  border = model_lib.border(depth) if padding == "valid" else 0
  return TilePlan(tile=tile_size, out=out, stride=stride, border=border,
                  height=height, width=width, rows=_positions(height, out, stride),
                  cols=_positions(width, out, stride))


def pad_image(image: np.ndarray, plan: TilePlan) -> np.ndarray:
  """Reflect-pads ``image`` [H, W, C] to the input extent of the plan.

  ``border`` on the top/left, ``border`` plus the grid remainder on the
  bottom/right. One forward pass over this array, cropped to ``[:H, :W]``, is
  what the stitched tiles equal.
  """
  ph, pw = plan.padded_out
  b = plan.border
  return np.pad(image, ((b, ph - plan.height + b), (b, pw - plan.width + b), (0, 0)),
                mode="reflect")


def extract_tiles(padded: np.ndarray, plan: TilePlan) -> np.ndarray:
  """Input tiles ``[num_tiles, tile, tile, C]`` in row-major order."""
  t = plan.tile
  return np.stack([padded[r:r + t, c:c + t] for r in plan.rows for c in plan.cols])


def stitch(outputs: np.ndarray, plan: TilePlan) -> np.ndarray:
  """Assembles output tiles ``[num_tiles, out, out, K]`` into ``[H, W, K]``.

  Overlapping pixels are equal up to float tolerance (grid placement), so later
  tiles simply overwrite earlier ones.
  """
  ph, pw = plan.padded_out
  result = np.empty((ph, pw, outputs.shape[-1]), outputs.dtype)
  o = plan.out
  tiles = iter(outputs)
  for r in plan.rows:
    for c in plan.cols:
      result[r:r + o, c:c + o] = next(tiles)
  return result[:plan.height, :plan.width]


# --------------------------------------------------------------------------
# Test-time augmentation: the dihedral group D4 (4 rotations x optional flip).
# --------------------------------------------------------------------------

DIHEDRAL = tuple((k, flip) for flip in (False, True) for k in range(4))


def transform(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
  """Flips (left-right, if ``flip``) then rotates by ``k`` quarter turns; x [H, W, ...]."""
  return np.rot90(x[:, ::-1] if flip else x, k, axes=(0, 1))


def inverse_transform(y: np.ndarray, k: int, flip: bool) -> np.ndarray:
  """Undoes ``transform(., k, flip)`` on an output ``[H, W, ...]``."""
  y = np.rot90(y, -k, axes=(0, 1))
  return y[:, ::-1] if flip else y


# --------------------------------------------------------------------------
# Prediction.
# --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="model")
def _probabilities(model: nn.Module, variables: Any, tiles: jax.Array) -> jax.Array:
  """Softmax probabilities [B, out, out, K] (float32) of a batch of tiles."""
  return jax.nn.softmax(model.apply(variables, tiles, train=False).astype(jnp.float32), -1)


def inference_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh | None:
  """The ``"data"`` mesh that inference spreads its tile batches over.

  ``devices`` None = all of this process's devices (``jax.local_devices()``:
  in a multi-process run every process predicts on its own devices, without
  collectives between processes). Returns None for a single device, so that
  the one-device programs stay exactly as they are.
  """
  devices = jax.local_devices() if devices is None else list(devices)
  if not devices:
    raise UserInputError("devices: an empty list; pass None for all local devices")
  return parallel.make_mesh(devices) if len(devices) > 1 else None


def run_batched(model: nn.Module, variables: Any, tiles: np.ndarray, batch_size: int,
                progress: bool = False,
                on_tiles: Callable[[int, int], None] | None = None,
                mesh: Mesh | None = None) -> np.ndarray:
  """Runs ``tiles`` [N, T, T, C] through the net in fixed-size batches.

  The last batch is zero-padded to ``batch_size`` so every call has the same
  shape: one compilation per (model, tile size, batch size), none per image.
  ``on_tiles(done, total)`` is called after every batch (progress of large images).
  With a ``mesh`` (``inference_mesh``; a Flax ``model`` whose ``variables`` are
  replicated on it) every call takes ``batch_size`` tiles per device, split over
  the mesh's devices.

  Returns:
    float32 probabilities ``[N, out, out, K]``.
  """
  if mesh is not None:
    batch_size *= mesh.devices.size
  n = len(tiles)
  starts = range(0, n, batch_size)
  if progress:
    from tqdm.auto import tqdm
    starts = tqdm(starts, desc="tiles", unit="batch", leave=False, disable=None)
  outs = []
  for s in starts:
    batch = tiles[s:s + batch_size]
    if len(batch) < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - len(batch),) + batch.shape[1:],
                                              batch.dtype)])
    outs.append(_forward(model, variables, batch, mesh))
    if on_tiles is not None:
      on_tiles(min(s + batch_size, n), n)
  return np.concatenate(outs)[:n]


def _forward(model: Any, variables: Any, batch: np.ndarray,
             mesh: Mesh | None = None) -> np.ndarray:
  """Probabilities of one batch: the jitted Flax model, or an exported graph.

  An exported graph (``unet_jax.onnx_predict.OnnxUNet``) is a callable on
  NumPy tiles that runs outside JAX; its ``variables`` are None. With a
  ``mesh`` the batch is split over its devices (jit follows the input's sharding).
  """
  if isinstance(model, nn.Module):
    # A local mesh: every device is this process's, so device_put can place it.
    x = (jnp.asarray(batch) if mesh is None
         else jax.device_put(batch, parallel.batch_sharding(mesh)))
    return np.asarray(_probabilities(model, variables, x))
  return np.asarray(model(batch))


def _as_hwc(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image, np.float32)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3:
    raise UserInputError(f"expected an image [H, W] or [H, W, C], got shape {image.shape}")
  return image


def _check_channels(variables: Any, channels: int) -> None:
  try:
    expected = variables["params"]["down0_conv0"]["kernel"].shape[2]
  except (KeyError, TypeError, AttributeError):
    return
  if expected != channels:
    raise UserInputError(f"the image has {channels} channel(s) but the model was trained "
                         f"on {expected}; convert the image (e.g. to greyscale) first")


def _padding(model: nn.Module) -> str:
  return getattr(model, "padding", "valid")


def choose_tile_size(model: nn.Module, height: int, width: int, channels: int,
                     batch_size: int, memory_budget: int | None = None) -> int:
  """Largest usable tile within the memory budget, capped at one covering the image.

  For a SAME-padded net: the VALID choice rounded down to a multiple of
  ``2**depth`` (about the same activation memory), capped at the image.
  """
  depth = model.depth
  if _padding(model) == "same":
    grid = 2**depth
    valid = choose_tile_size(model.clone(padding="valid"), height, width, channels,
                             batch_size, memory_budget)
    return min(max(grid, valid // grid * grid), covering_tile(height, width, depth, "same"))
  return tile_size_for_memory(
      memory_budget or default_memory_budget(), features=model.features, depth=depth,
      num_classes=model.num_classes, in_channels=channels, batch_size=batch_size,
      dtype_bytes=activation_bytes(model),
      max_tile=covering_tile(height, width, depth, "valid"))


def covering_tile(height: int, width: int, depth: int = 4, padding: str = "valid") -> int:
  """The smallest usable tile whose output covers a ``[height, width]`` image at once."""
  if padding == "same":
    grid = 2**depth
    return max(grid, -(-max(height, width) // grid) * grid)
  cover = model_lib.valid_input_size(max(height, width) + 2 * model_lib.border(depth), depth)
  return max(cover, smallest_usable_tile(depth))


def reduced_tile(tile_size: int, cover: int, depth: int = 4) -> int:
  """A VALID tile no larger than about twice ``cover`` (``covering_tile``).

  ``--tile_size 100000`` on a 512-px image would mirror-pad it to 100000² (37 GiB);
  a larger VALID tile only adds mirrored pixels around the image, so the
  probabilities are the same (to float rounding). The tile is halved (to the
  next valid size) while it stays at or above ``cover``, so that images of
  different sizes share a few tile sizes, each compiled once, instead of one
  per size.
  """
  while True:
    half = model_lib.valid_input_size(tile_size // 2, depth)
    if half >= tile_size or half < cover:
      return tile_size
    tile_size = half


def predict_tiled(model: nn.Module, variables: Any, image: np.ndarray, *,
                  tile_size: int | None = None, batch_size: int = 4, tta: bool = False,
                  memory_budget: int | None = None, progress: bool = False,
                  method: str = "auto",
                  on_tiles: Callable[[int, int], None] | None = None,
                  devices: Sequence[jax.Device] | None = None) -> np.ndarray:
  """Softmax probabilities of an image of any size by overlap-tile inference.

  Args:
    model: a ``unet_jax.UNet`` (any ``dtype``; logits come back float32), or
      an exported model with the same interface (``onnx_predict.OnnxUNet``,
      ``method="host"`` only).
    variables: its variables, ``{"params": ...}``.
    image: ``[H, W]`` or ``[H, W, C]``, normalised like the training data.
    tile_size: input tile side, a valid size whose output is at least
      ``2**depth`` (204 is the smallest at depth 4). None = the largest that
      fits ``memory_budget`` (``tile_size_for_memory``), but no larger than one
      tile covering the whole image; a given VALID size more than twice the
      covering one is halved (``reduced_tile``).
    batch_size: tiles per jitted call and device.
    tta: average the predictions of the 8 flips/rotations of the image (the
      dihedral group), each mapped back before averaging.
    memory_budget: bytes for ``tile_size=None`` and for how many TTA views
      one device call holds; None = ``default_memory_budget()``.
    progress: show a tqdm progress bar over the batches (``method="host"`` only).
    method: "device": padding, tiling, the batched net, stitching and TTA in
      one compiled program (``predict_sum`` below; one compilation per
      image shape); "host": tiles cut and stitched in NumPy around one jitted
      batch call (one compilation per tile and batch size, whatever the
      image size). Both give the same result (float rounding). "auto":
      "device" for a VALID Flax net without a progress callback, else "host"
      (progress by tiles, exported ONNX models, SAME padding).
    on_tiles: called as ``on_tiles(done, total)`` after every batch of tiles
      (all TTA views together), e.g. to move a caller's progress bar.
    devices: the devices that share every batch of tiles (``batch_size``
      each); None = all of this process's devices, e.g. the 8 GPUs of a host.
      The result does not depend on them (float rounding aside).
  Returns:
    float32 ``[H, W, K]`` softmax probabilities.
  Raises:
    UserInputError: for an invalid or too small ``tile_size`` or a wrong number
      of channels.
  """
  image = _as_hwc(image)
  h, w, c = image.shape
  _check_channels(variables, c)
  if tile_size is None:
    tile_size = choose_tile_size(model, h, w, c, batch_size, memory_budget)
  padding = _padding(model)
  check_tile_size(tile_size, model.depth, padding)
  if padding == "valid" and isinstance(model, nn.Module):  # not a fixed-tile ONNX model
    tile_size = reduced_tile(tile_size, covering_tile(h, w, model.depth), model.depth)
  transforms = DIHEDRAL if tta else DIHEDRAL[:1]
  mesh = inference_mesh(devices) if isinstance(model, nn.Module) else None
  if mesh is not None:
    variables = parallel.replicate(variables, mesh)  # a no-op when already there
  if method == "auto":
    device_ok = isinstance(model, nn.Module) and padding == "valid"
    method = "device" if device_ok and on_tiles is None and not progress else "host"
  if method == "device":
    if padding != "valid" or not isinstance(model, nn.Module):
      raise UserInputError("method='device' takes a Flax U-Net with VALID padding (the "
                           "paper's); use method='host' (or 'auto') for SAME padding or "
                           "an exported model")
    return _predict_on_device(model, variables, image, tile_size, batch_size, transforms,
                              memory_budget, mesh)
  if method != "host":
    raise UserInputError(f"method must be 'device' or 'host', got {method!r}")
  views = [transform(image, k, flip) for k, flip in transforms]
  plans = [plan_tiles(v.shape[0], v.shape[1], tile_size, model.depth, padding) for v in views]
  # All views' tiles go through one batched loop: full batches, one compilation.
  tiles = np.concatenate([extract_tiles(pad_image(v, p), p) for v, p in zip(views, plans)])
  outputs = run_batched(model, variables, tiles, batch_size, progress, on_tiles, mesh)
  total = np.zeros((h, w, outputs.shape[-1]), np.float32)
  start = 0
  for (k, flip), plan in zip(transforms, plans):
    total += inverse_transform(stitch(outputs[start:start + plan.num_tiles], plan), k, flip)
    start += plan.num_tiles
  return total / len(transforms)


def _predict_on_device(model: nn.Module, variables: Any, image: np.ndarray, tile_size: int,
                       batch_size: int, transforms: tuple, memory_budget: int | None,
                       mesh: Mesh | None) -> np.ndarray:
  """``predict_tiled`` through ``predict_sum``: as many TTA views per
  compiled call as the memory budget allows (all 8 on any usual machine).
  The budget is per device: each holds one batch of the net and the image's buffers."""
  h, w, c = image.shape
  budget = memory_budget or default_memory_budget()
  net = estimate_memory(tile_size, features=model.features, depth=model.depth,
                        num_classes=model.num_classes, in_channels=c, batch_size=batch_size,
                        dtype_bytes=activation_bytes(model))
  per_view = image_buffer_bytes(h, w, c, model.num_classes, tile_size, model.depth, 1)
  per_call = int(max(1, min(len(transforms), (budget - net) // max(per_view, 1))))
  x = jnp.asarray(image) if mesh is None else parallel.replicate(image, mesh)
  total = None
  for i in range(0, len(transforms), per_call):
    part = predict_sum(model, variables, x, tile_size=tile_size, batch_size=batch_size,
                       views=tuple(transforms[i:i + per_call]), mesh=mesh)
    total = part if total is None else total + part
  return np.asarray(total / len(transforms))


def full_image_reference(model: nn.Module, variables: Any, image: np.ndarray,
                         tile_size: int) -> np.ndarray:
  """One forward pass over the whole padded image that ``predict_tiled`` tiles.

  For tests and checks: the padding is the one of the tile plan, so the result
  is what the stitched tiles must equal. Returns float32 ``[H, W, K]``.
  """
  image = _as_hwc(image)
  plan = plan_tiles(image.shape[0], image.shape[1], tile_size, model.depth, _padding(model))
  padded = pad_image(image, plan)[None]
  return np.asarray(_probabilities(model, variables, jnp.asarray(padded)))[
      0, :plan.height, :plan.width]


# --------------------------------------------------------------------------
# Overlap-tile inference (paper, Fig. 2) as one compiled program on the device.
# --------------------------------------------------------------------------
# The same tile placement as the host loop above (``plan_tiles``: output
# tiles on the ``2**depth`` pooling grid, so the stitched result equals one
# forward pass over the padded image), but every stage runs inside one
# ``jax.jit``: no tile ever goes through host memory.
#
# 1. the dihedral views of the image (test-time augmentation) are stacked; views
#    of the same shape share one tile plan;
# 2. mirror padding (``jnp.pad(mode="reflect")``, the same as NumPy's);
# 3. tiles are cut with ``jax.vmap`` of ``lax.dynamic_slice`` over the
#    (view, row, column) offsets of one batch, inside ``lax.map`` over
#    fixed-size batches, so the net always sees ``[batch_size, T, T, C]`` and at
#    most one batch of activations is live;
# 4. output tiles are stitched with static slicing and reshapes (the pixel of
#    output row ``p`` comes from tile ``min(p // stride, rows - 1)``, the last
#    tile covering it, exactly as the host loop's overwriting order), mapped back
#    by the inverse transform and averaged.
#
# One compilation per (model, image shape, tile size, batch size, views).


def _transform_on_device(x: jax.Array, k: int, flip: bool) -> jax.Array:
  """``transform`` in jnp: flip left-right (if ``flip``), then ``k`` quarter turns."""
  return jnp.rot90(x[:, ::-1] if flip else x, k, axes=(0, 1))


def _inverse_transform_on_device(y: jax.Array, k: int, flip: bool) -> jax.Array:
  y = jnp.rot90(y, -k, axes=(0, 1))
  return y[:, ::-1] if flip else y


def _stitch_on_device(outputs: jax.Array, plan: TilePlan) -> jax.Array:
  """Output tiles ``[rows, cols, out, out, K]`` -> ``[H, W, K]`` (``stitch`` on device)."""
  nr, nc, o = len(plan.rows), len(plan.cols), plan.out
  s, k = plan.stride, outputs.shape[-1]
  width = (nc - 1) * s + o
  body = outputs[:, :nc - 1, :, :s].transpose(0, 2, 1, 3, 4).reshape(nr, o, (nc - 1) * s, k)
  strips = jnp.concatenate([body, outputs[:, nc - 1]], axis=2)  # [rows, out, width, K]
  top = strips[:nr - 1, :s].reshape((nr - 1) * s, width, k)
  full = jnp.concatenate([top, strips[nr - 1]], axis=0)
  return full[:plan.height, :plan.width]


def _group_views(height: int, width: int,
                 views: Sequence[tuple[int, bool]]) -> list[list[tuple[int, bool]]]:
  """Views whose transformed images have the same shape (odd quarter turns swap H, W)."""
  groups: dict[tuple[int, int], list] = {}
  for k, flip in views:
    shape = (width, height) if k % 2 else (height, width)
    groups.setdefault(shape, []).append((k, flip))
  return list(groups.values())


@functools.partial(jax.jit, static_argnames=("model", "tile_size", "batch_size", "views",
                                              "mesh"))
def predict_sum(model: nn.Module, variables: Any, image: jax.Array, *, tile_size: int,
                batch_size: int, views: tuple[tuple[int, bool], ...],
                mesh: Mesh | None = None) -> jax.Array:
  """Sum over ``views`` of the mapped-back softmax probabilities of ``image``.

  Args:
    model: a ``unet_jax.UNet``.
    variables: ``{"params": ...}``.
    image: float32 ``[H, W, C]``.
    tile_size: a usable input tile side (``check_tile_size``).
    batch_size: tiles per forward pass of the net and device.
    views: ``(k, flip)`` pairs of ``DIHEDRAL`` (``((0, False),)``: no TTA).
    mesh: ``inference_mesh`` of several devices, ``variables`` and ``image``
      replicated on it: every forward pass takes ``batch_size`` tiles per
      device, split over the ``"data"`` axis (data parallel, no collectives
      inside the net); None = one device.
  Returns:
    float32 ``[H, W, K]``: divide by ``len(views)`` for the mean.
  """
  h, w, c = image.shape
  t = tile_size
  if mesh is not None:
    batch_size *= mesh.devices.size
  total = None
  for group in _group_views(h, w, views):
    stack = jnp.stack([_transform_on_device(image, k, flip) for k, flip in group])  # [V, h', w', C]
    plan = plan_tiles(stack.shape[1], stack.shape[2], t, model.depth)
    ph, pw = plan.padded_out
    b = plan.border
    padded = jnp.pad(stack, ((0, 0), (b, ph - plan.height + b), (b, pw - plan.width + b),
                             (0, 0)), mode="reflect")
    # (view, row, col) of every tile, row-major per view; the last batch is
    # filled up with repeats of the first tile (their outputs are dropped).
    v, r, cc = np.meshgrid(np.arange(len(group)), np.asarray(plan.rows),
                           np.asarray(plan.cols), indexing="ij")
    offsets = np.stack([v.ravel(), r.ravel(), cc.ravel()], 1).astype(np.int32)
    n = len(offsets)
    chunks = -(-n // batch_size)
    offsets = np.concatenate([offsets, np.repeat(offsets[:1], chunks * batch_size - n, 0)])
    offsets = jnp.asarray(offsets.reshape(chunks, batch_size, 3))

    def cut(o):
      return lax.dynamic_slice(padded, (o[0], o[1], o[2], 0), (1, t, t, c))[0]

    def run(batch_offsets):
      tiles = jax.vmap(cut)(batch_offsets)  # [B, T, T, C]
      if mesh is not None:  # each device runs the net on its B / devices tiles
        tiles = lax.with_sharding_constraint(tiles, parallel.batch_sharding(mesh))
      logits = model.apply(variables, tiles, train=False)
      return jax.nn.softmax(logits.astype(jnp.float32), -1)

    out = lax.map(run, offsets)  # [chunks, B, o, o, K]
    out = out.reshape((-1,) + out.shape[2:])[:n]
    out = out.reshape(len(group), len(plan.rows), len(plan.cols), *out.shape[1:])
    stitched = jax.vmap(lambda x: _stitch_on_device(x, plan))(out)  # [V, h', w', K]
    for i, (k, flip) in enumerate(group):
      back = _inverse_transform_on_device(stitched[i], k, flip)
      total = back if total is None else total + back
  return total


def image_buffer_bytes(height: int, width: int, channels: int, num_classes: int,
                       tile_size: int, depth: int, num_views: int) -> int:
  """Bytes of the per-image buffers of ``predict_sum`` beyond one batch of the net.

  The padded views and every view's output tiles (float32), stitched maps
  included. ``predict_tiled`` splits the TTA views over several calls
  when this exceeds its memory budget.
  """
  plan = plan_tiles(max(height, width), max(height, width), tile_size, depth)
  ph, pw = plan.padded_out
  padded = (ph + 2 * plan.border) * (pw + 2 * plan.border) * channels
  outputs = plan.num_tiles * plan.out**2 * num_classes + ph * pw * num_classes
  return 4 * num_views * (padded + 2 * outputs)
