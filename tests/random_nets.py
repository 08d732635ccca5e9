"""Test helper: a U-Net with random weights, without compiling ``model.init``.

Compiling ``model.init`` of a depth-4 net takes tens of seconds on a busy CPU;
``jax.eval_shape`` gives the parameter shapes for free.
"""

import jax
import numpy as np

from unet_jax import UNet, tiling


def random_variables(model, channels: int, seed: int = 0):
  """He-normal weights and small random biases, without compiling ``model.init``."""
  t = tiling.smallest_usable_tile(model.depth)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), np.zeros((1, t, t, channels)), train=False))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (rng.normal(size=a.shape) * np.sqrt(
      2 / max(np.prod(a.shape[:-1]), 1)) * (1 if a.ndim > 1 else 0.1)).astype(np.float32), shapes)


def random_net(depth: int = 2, features: int = 4, channels: int = 1, seed: int = 0):
  """``(model, variables)`` of a small UNet (K = 2, no dropout) with random weights."""
  model = UNet(num_classes=2, features=features, depth=depth, dropout_rate=0.0)
  return model, random_variables(model, channels, seed)
