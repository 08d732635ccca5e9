"""Overlap-tile inference (paper, Fig. 2) as one compiled program on the device.

The same tile placement as :mod:`unet_jax.tiling` (``plan_tiles``: output
tiles on the ``2**depth`` pooling grid, so the stitched result equals one
forward pass over the padded image), but every stage runs inside one
``jax.jit``: no tile ever goes through host memory.

1. the dihedral views of the image (test-time augmentation) are stacked; views
   of the same shape share one tile plan;
2. mirror padding (``jnp.pad(mode="reflect")``, the same as NumPy's);
3. tiles are cut with ``jax.vmap`` of ``lax.dynamic_slice`` over the
   (view, row, column) offsets of one batch, inside ``lax.map`` over
   fixed-size batches, so the net always sees ``[batch_size, T, T, C]`` and at
   most one batch of activations is live;
4. output tiles are stitched with static slicing and reshapes (the pixel of
   output row ``p`` comes from tile ``min(p // stride, rows - 1)``, the last
   tile covering it, exactly as the host loop's overwriting order), mapped back
   by the inverse transform and averaged.

One compilation per (model, image shape, tile size, batch size, views).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from unet_jax import tiling


def _transform(x: jax.Array, k: int, flip: bool) -> jax.Array:
  """``tiling.transform`` in jnp: flip left-right (if ``flip``), then ``k`` quarter turns."""
  return jnp.rot90(x[:, ::-1] if flip else x, k, axes=(0, 1))


def _inverse_transform(y: jax.Array, k: int, flip: bool) -> jax.Array:
  y = jnp.rot90(y, -k, axes=(0, 1))
  return y[:, ::-1] if flip else y


def _stitch(outputs: jax.Array, plan: tiling.TilePlan) -> jax.Array:
  """Output tiles ``[rows, cols, out, out, K]`` -> ``[H, W, K]`` (``tiling.stitch`` on device)."""
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


@functools.partial(jax.jit, static_argnames=("model", "tile_size", "batch_size", "views"))
def predict_sum(model: nn.Module, variables: Any, image: jax.Array, *, tile_size: int,
                batch_size: int, views: tuple[tuple[int, bool], ...]) -> jax.Array:
  """Sum over ``views`` of the mapped-back softmax probabilities of ``image``.

  Args:
    model: a ``unet_jax.UNet``.
    variables: ``{"params": ...}``.
    image: float32 ``[H, W, C]``.
    tile_size: a usable input tile side (``tiling.check_tile_size``).
    batch_size: tiles per forward pass of the net.
    views: ``(k, flip)`` pairs of ``tiling.DIHEDRAL`` (``((0, False),)``: no TTA).
  Returns:
    float32 ``[H, W, K]``: divide by ``len(views)`` for the mean.
  """
  h, w, c = image.shape
  t = tile_size
  total = None
  for group in _group_views(h, w, views):
    stack = jnp.stack([_transform(image, k, flip) for k, flip in group])  # [V, h', w', C]
    plan = tiling.plan_tiles(stack.shape[1], stack.shape[2], t, model.depth)
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
      logits = model.apply(variables, tiles, train=False)
      return jax.nn.softmax(logits.astype(jnp.float32), -1)

    out = lax.map(run, offsets)  # [chunks, B, o, o, K]
    out = out.reshape((-1,) + out.shape[2:])[:n]
    out = out.reshape(len(group), len(plan.rows), len(plan.cols), *out.shape[1:])
    stitched = jax.vmap(lambda x: _stitch(x, plan))(out)  # [V, h', w', K]
    for i, (k, flip) in enumerate(group):
      back = _inverse_transform(stitched[i], k, flip)
      total = back if total is None else total + back
  return total


def image_buffer_bytes(height: int, width: int, channels: int, num_classes: int,
                       tile_size: int, depth: int, num_views: int) -> int:
  """Bytes of the per-image buffers of ``predict_sum`` beyond one batch of the net.

  The padded views and every view's output tiles (float32), stitched maps
  included. ``tiling.predict_tiled`` splits the TTA views over several calls
  when this exceeds its memory budget.
  """
  plan = tiling.plan_tiles(max(height, width), max(height, width), tile_size, depth)
  ph, pw = plan.padded_out
  padded = (ph + 2 * plan.border) * (pw + 2 * plan.border) * channels
  outputs = plan.num_tiles * plan.out**2 * num_classes + ph * pw * num_classes
  return 4 * num_views * (padded + 2 * outputs)
