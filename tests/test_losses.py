"""Pixel-weighted cross-entropy (paper Eq. 1) against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import weighted_cross_entropy


def numpy_reference(logits, labels, weights):
  k = logits.shape[-1]
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  total = 0.0
  for idx in np.ndindex(labels.shape):
    if 0 <= labels[idx] < k:
      total += weights[idx] * -logp[idx + (labels[idx],)]
  return total / labels.size


def test_matches_numpy_with_ignore_labels():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 6, 3)).astype(np.float32) * 3
  labels = rng.integers(0, 3, (2, 5, 6)).astype(np.int32)
  labels[0, 0, :3] = -1
  labels[1, 2, 2] = 255
  weights = rng.uniform(0.5, 10, (2, 5, 6)).astype(np.float32)
  got = float(weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights)))
  assert got == pytest.approx(numpy_reference(logits, labels, weights), rel=1e-5)


def test_ignored_pixels_get_no_gradient_and_no_nan():
  logits = jnp.array([[[1e4, -1e4], [0.0, 0.0]]])  # extreme logits
  labels = jnp.array([[1, -1]])
  weights = jnp.array([[1.0, 5.0]])
  loss, g = jax.value_and_grad(weighted_cross_entropy)(logits, labels, weights)
  assert np.isfinite(float(loss)) and float(loss) == pytest.approx(1e4, rel=1e-3)  # 2e4 / 2 px
  assert np.all(np.isfinite(g)) and np.all(np.asarray(g[0, 1]) == 0)


def test_mean_over_all_pixels_and_weight_scaling():
  logits = jnp.zeros((1, 4, 4, 2))
  labels = jnp.zeros((1, 4, 4), jnp.int32)
  assert float(weighted_cross_entropy(logits, labels, jnp.ones((1, 4, 4)))) == pytest.approx(np.log(2))
  assert float(weighted_cross_entropy(logits, labels, 3 * jnp.ones((1, 4, 4)))) == pytest.approx(3 * np.log(2))


def test_shape_mismatch_is_reported():
  with pytest.raises(ValueError, match="shape mismatch"):
    weighted_cross_entropy(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 5), jnp.int32), jnp.ones((1, 4, 5)))
