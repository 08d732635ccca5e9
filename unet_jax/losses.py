"""Pixel-weighted cross-entropy of the paper (Eq. 1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array,
                           weights: jax.Array) -> jax.Array:
  """Mean over pixels of ``w(x) * (-log softmax(logits)(x)[l(x)])``.

  The paper's energy is a sum over pixels; we divide by the number of pixels
  (ignored ones included) so that the learning rate does not depend on the tile
  size. Labels outside ``[0, K)`` (e.g. -1 or 255) are ignored: weight 0, and
  they never produce NaN.

  Args:
    logits: ``[..., H, W, K]`` class scores (any float dtype; computed in float32).
    labels: ``[..., H, W]`` int labels.
    weights: ``[..., H, W]`` pixel weights.
  Returns:
    scalar float32 loss.
  """
  k = logits.shape[-1]
  if labels.shape != logits.shape[:-1] or weights.shape != labels.shape:
    raise ValueError(f"shape mismatch: logits {logits.shape}, labels {labels.shape}, "
                     f"weights {weights.shape}")
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  valid = (labels >= 0) & (labels < k)
  safe = jnp.where(valid, labels, 0).astype(jnp.int32)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  w = jnp.where(valid, weights.astype(jnp.float32), 0.0)
  return jnp.sum(w * nll) / labels.size
