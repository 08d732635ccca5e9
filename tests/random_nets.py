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


def tta_by_hand(predict, image):
  """``(mean, views)``: ``predict`` (probabilities [H, W, K]) of the 8 flips/rotations
  of ``image``, each view's output rotated/flipped back, and their mean: TTA written
  independently of the library's dihedral transforms."""
  views = []
  for flip in (False, True):
    x = image[:, ::-1] if flip else image
    for k in range(4):
      p = np.rot90(predict(np.ascontiguousarray(np.rot90(x, k))), -k)
      views.append(p[:, ::-1] if flip else p)
  return np.mean(views, axis=0), views
