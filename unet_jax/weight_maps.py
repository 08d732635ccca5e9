"""Pixel weight maps of the paper (Eq. 2): class balancing plus a border term.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

d1, d2 are the distances to the nearest and second-nearest cell instance. The
exact convention (docs/conventions.md, Weight map): D_k = distance_transform_edt(inst != k) for
every instance k > 0; d1, d2 = the two smallest D_k; the border term is added on
background pixels (inst == 0) only; w_c(x) = class weight of x's class with
class 0 = background, 1 = foreground (inst > 0).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage


def instances_from_binary(cell_mask: np.ndarray) -> np.ndarray:
  """4-connected components of a binary cell mask.

  Args:
    cell_mask: ``[H, W]`` bool (True = cell interior, e.g. ISBI label 255).
  Returns:
    int32 ``[H, W]``, 0 = background/membrane, 1..n = instance ids.
  """
  labels, _ = ndimage.label(np.asarray(cell_mask, bool))  # default structure: 4-connectivity
  return labels.astype(np.int32)


def separate_touching(instances: np.ndarray) -> np.ndarray:
  """Removes the pixels where two instances touch, leaving a background gap.

  The paper's weight map (Eq. 2) puts its border term on the *background*
  between touching cells, so instance masks without gaps (Cell Tracking
  Challenge) need separation borders first (paper Fig. 3c/d): a pixel becomes
  background if one of its 4-neighbours belongs to another instance. Afterwards
  no two instances are 4-adjacent, so the 4-connected components of the
  foreground are the (slightly eroded) instances.

  Args:
    instances: int ``[H, W]``, 0 = background.
  Returns:
    int32 ``[H, W]`` with the touching pixels set to 0.
  """
  inst = np.asarray(instances).astype(np.int32)
  touching = np.zeros(inst.shape, bool)
  for axis in (0, 1):
    a = inst.take(range(inst.shape[axis] - 1), axis=axis)
    b = inst.take(range(1, inst.shape[axis]), axis=axis)
    diff = (a != b) & (a > 0) & (b > 0)
    lo = [slice(None)] * 2
    hi = [slice(None)] * 2
    lo[axis], hi[axis] = slice(0, -1), slice(1, None)
    touching[tuple(lo)] |= diff
    touching[tuple(hi)] |= diff
  return np.where(touching, 0, inst).astype(np.int32)


def balanced_class_weights(labels: Sequence[np.ndarray] | np.ndarray,
                           num_classes: int = 2) -> np.ndarray:
  """Class weights N / (K * n_k) over the training labels (mean weight 1).

  Args:
    labels: one or several int label maps with values in [0, K); other values
      (ignore labels) are not counted.
    num_classes: K.
  Returns:
    float32 ``[K]``. A class that never occurs gets weight 0.
  """
  counts = np.zeros(num_classes, np.int64)
  for lab in (labels if isinstance(labels, (list, tuple)) else [labels]):
    lab = np.asarray(lab).ravel()
    lab = lab[(lab >= 0) & (lab < num_classes)]
    counts += np.bincount(lab.astype(np.int64), minlength=num_classes)
  total = counts.sum()
  with np.errstate(divide="ignore"):
    w = np.where(counts > 0, total / (num_classes * np.maximum(counts, 1)), 0.0)
  return w.astype(np.float32)


def weight_map(instances: np.ndarray, class_weights: Sequence[float] | None = None,
               w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
  """Weight map of paper Eq. 2 for one instance image.

  Args:
    instances: int ``[H, W]``, 0 = background, k > 0 = instance k. The border
      term needs every cell to have its own id: a 0/1 mask is one instance
      (border term 0 everywhere); ``instances_from_binary`` gives the
      components of a binary mask. A bool array is refused.
    class_weights: ``[2]`` weights of background and foreground (None = all 1).
      More classes: this map with ``[0, 0]`` plus each pixel's class weight
      (``input_pipeline.weights_for``).
    w0: border weight (paper: 10).
    sigma: border width in pixels (paper: about 5).
  Returns:
    float32 ``[H, W]``.
  Raises:
    ValueError: for a shape other than ``[H, W]``, a bool ``instances`` or
      ``class_weights`` that are not two numbers.
  """
  inst = np.asarray(instances)
  if inst.ndim != 2:
    raise ValueError(f"weight_map expects an [H, W] instance image, got shape {inst.shape}")
  if inst.dtype == bool:
    # A mask would silently be one instance, with no border term (Eq. 2).
    raise ValueError("weight_map expects instance ids (int, 0 = background, k > 0 = cell k), "
                     "got a bool mask; use instances_from_binary(mask) for its 4-connected "
                     "components")
  cw = np.ones(2, np.float64) if class_weights is None else np.asarray(class_weights, np.float64)
  if cw.shape != (2,):
    raise ValueError(f"class_weights must be [background, foreground] (2 values), got shape "
                     f"{cw.shape}; for K > 2 classes add each pixel's class weight to "
                     f"weight_map(instances, [0, 0], ...)")
  w = cw[(inst > 0).astype(np.int64)]
  ids = np.unique(inst)
  ids = ids[ids > 0]
  if len(ids) < 2 or w0 == 0:
    return w.astype(np.float32)

  # Distances beyond `margin` contribute < 1e-8 * w0, below float32 resolution,
  # so each instance's distance transform is computed on its bounding box
  # grown by `margin` (exact inside; outside the distance is > margin).
  margin = int(math.ceil(6.0 * sigma)) + 1
  h, wd = inst.shape
  d1 = np.full(inst.shape, np.inf)
  d2 = np.full(inst.shape, np.inf)
  for k, sl in zip(range(1, int(ids.max()) + 1), ndimage.find_objects(inst)):
    if sl is None:
      continue
    r0, r1 = max(sl[0].start - margin, 0), min(sl[0].stop + margin, h)
    c0, c1 = max(sl[1].start - margin, 0), min(sl[1].stop + margin, wd)
    dk = ndimage.distance_transform_edt(inst[r0:r1, c0:c1] != k)
    a1, a2 = d1[r0:r1, c0:c1], d2[r0:r1, c0:c1]
    np.minimum(a2, np.maximum(a1, dk), out=a2)
    np.minimum(a1, dk, out=a1)
  border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
  w = w + np.where(inst == 0, border, 0.0)
  return w.astype(np.float32)
