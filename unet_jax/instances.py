"""Cell instances from the network's cell probability, and how they fail.

The network (2-class soft-max, paper Eq. 1) gives ``p(cell)`` per pixel; the
paper trains it to leave a thin background line between touching cells
(separation borders, Fig. 3) so that instances are simply connected
components. Two ways to turn the same probabilities into instances:

* ``"components"`` (the paper's way): threshold, 4-connected components,
  drop tiny objects, give the separation border back to the cells.
* ``"watershed"`` (seeded watershed, an established alternative): seeds are
  the confident cores (``p > seed_threshold``, eroded by a disk of
  ``seed_radius`` so that a thin bridge of confident pixels does not join two
  seeds), the cell mask is ``p > threshold``, and a watershed of ``1 - p``
  grows the seeds over the mask (scikit-image). A faint valley of ``p``
  between two cells is enough to keep them apart, where the paper's way needs
  the valley to fall below the threshold. Mask components without a seed are
  kept as objects of their own.

Both return int32 ``[H, W]`` labels (0 = background, 1..n consecutive).
For ISBI-style membrane data, ``watershed_cell_mask`` turns ``p(cell)`` into a
cell mask whose boundaries are 1-px watershed lines (``evaluate.py
--postprocess watershed``; opt-in, see docs/conventions.md).
``merge_split_counts`` counts the two ways an instance result goes wrong; the
definitions are in docs/cells.md.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from unet_jax import metrics

METHODS = ("components", "watershed")


@dataclasses.dataclass(frozen=True)
class InstanceParams:
  """How to make instances from ``p(cell)``.

  Attributes:
    method: "components" (the paper's) or "watershed".
    threshold: cell where ``p(cell) > threshold``.
    seed_threshold: watershed seeds where ``p(cell) > seed_threshold``.
    seed_radius: radius (px) of the disk that erodes the seed mask.
    min_size: objects (and seeds) smaller than this many pixels are removed.
    fill_gaps: give the separation borders back to the cells (the training
      labels have a 2-px gap between touching cells; the reference does not).
  """
  method: str = "components"
  threshold: float = 0.5
  seed_threshold: float = 0.9
  seed_radius: int = 2
  min_size: int = 0
  fill_gaps: bool = True

  @classmethod
  def from_config(cls, config) -> "InstanceParams":
    """From the ``config.instances`` block (see configs/default.py; workdirs
    written before the block existed get it from ``config_lib.load_saved``);
    the defaults (the paper's rule) where the config has none, e.g. an
    exported graph whose metadata holds no rule."""
    c = config.get("instances")
    if c is None:
      return cls()
    return cls(method=str(c.method), threshold=float(c.threshold),
               seed_threshold=float(c.seed_threshold), seed_radius=int(c.seed_radius),
               min_size=int(c.min_size), fill_gaps=bool(c.fill_gaps))


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
  """int32 ids 1..n in the order of the old ids' values; 0 (and below) stays 0."""
  labels = np.maximum(np.asarray(labels), 0)
  ids = np.unique(labels[labels > 0])
  lut = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
  lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
  return lut[labels]


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
  """Removes objects with fewer than ``min_size`` pixels and relabels 1..n."""
  labels = np.asarray(labels, np.int32)
  if min_size > 1 and labels.max():
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = True
    labels = np.where(small[labels], 0, labels)
  return relabel_consecutive(labels)


def fill_separation_gaps(labels: np.ndarray) -> np.ndarray:
  """Gives the background gaps between touching cells back to the cells.

  The inverse of ``weight_maps.separate_touching``, which removes one pixel on
  each side where two cells touch: a background pixel with two different
  instances within 2 px (Chebyshev) takes the label of its nearest instance.
  Boundaries against real background are left as they are.

  Args:
    labels: int ``[H, W]`` instances, 0 = background.
  Returns:
    int32 ``[H, W]``.
  """
  from skimage.segmentation import expand_labels

  labels = np.asarray(labels, np.int32)
  big = np.iinfo(np.int32).max
  hi = ndimage.maximum_filter(labels, size=5)
  lo = ndimage.minimum_filter(np.where(labels > 0, labels, big), size=5)
  gap = (labels == 0) & (hi > 0) & (lo < big) & (hi != lo)
  return np.where(gap, expand_labels(labels, distance=2), labels).astype(np.int32)


def seeded_watershed(cell_prob: np.ndarray, threshold: float = 0.5,
                     seed_threshold: float = 0.9, seed_radius: int = 2,
                     min_seed_size: int = 0) -> np.ndarray:
  """Watershed of ``1 - p`` from confident cores, restricted to ``p > threshold``.

  Args:
    cell_prob: ``[H, W]`` probability of the cell class.
    threshold: the cell mask.
    seed_threshold: the seeds (cores), eroded by a disk of ``seed_radius``.
    min_seed_size: seeds smaller than this are dropped.
  Returns:
    int32 ``[H, W]`` instances (not yet relabelled or size-filtered).
  """
  from skimage.morphology import disk
  from skimage.segmentation import watershed

  p = np.asarray(cell_prob, np.float32)
  mask = p > threshold
  cores = p > max(seed_threshold, threshold)
  if seed_radius > 0:
    cores = ndimage.binary_erosion(cores, structure=disk(seed_radius))
  seeds = remove_small(metrics.components(cores), min_seed_size)
  labels = watershed(1.0 - p, markers=seeds, mask=mask, connectivity=1)
  # Parts of the mask that hold no seed (small or faint cells) stay objects.
  rest = metrics.components(mask & (labels == 0))
  return np.where(rest > 0, rest + labels.max(), labels).astype(np.int32)


def watershed_cell_mask(cell_prob: np.ndarray, seed_threshold: float = 0.7,
                        min_seed_size: int = 20, sigma: float = 1.0) -> np.ndarray:
  """Cell mask with 1-px watershed lines as boundaries (ISBI-style membrane data).

  A thresholded probability loses a cell boundary wherever the membrane is
  faint for a few pixels, and one gap merges two cells (V_info drops). Here
  the cells are grown from confident cores by a watershed of the smoothed
  probability, and every pair of touching basins is cut by a 1-px line, so a
  faint membrane still separates cells once both have a seed. The defaults
  are the setting chosen on ISBI validation slices 20-24 (seeds p > 0.7,
  >= 20 px, sigma 1 px; results/isbi_cpu_same_val/postprocessing.md).

  Args:
    cell_prob: ``[H, W]`` probability of cell interior (1 = cell, 0 = membrane).
    seed_threshold: seeds are the 4-connected components of ``p > seed_threshold``.
    min_seed_size: seeds with fewer pixels are dropped (their area goes to a neighbour).
    sigma: Gaussian smoothing (px) of ``p`` before the watershed.
  Returns:
    float32 ``[H, W]``: 1 = cell, 0 = watershed line (no other values).
  """
  from skimage.segmentation import watershed

  p = ndimage.gaussian_filter(np.asarray(cell_prob, np.float32), sigma)
  seeds = metrics.components(p > seed_threshold)
  if min_seed_size:
    sizes = np.bincount(seeds.ravel())
    seeds[sizes[seeds] < min_seed_size] = 0
  labels = watershed(-p, markers=seeds, connectivity=1, watershed_line=True)
  return (labels > 0).astype(np.float32)


def from_probability(cell_prob: np.ndarray, params: InstanceParams = InstanceParams()
                     ) -> np.ndarray:
  """Instances of one image's ``p(cell)`` ``[H, W]``; int32 ``[H, W]``, 0 = background."""
  if params.method == "components":
    labels = metrics.components(np.asarray(cell_prob) > params.threshold)
  elif params.method == "watershed":
    labels = seeded_watershed(cell_prob, params.threshold, params.seed_threshold,
                              params.seed_radius, params.min_size)
  else:
    raise ValueError(f"instance method {params.method!r}: choose one of {METHODS}")
  labels = remove_small(labels, params.min_size)
  if params.fill_gaps and labels.max():
    labels = fill_separation_gaps(labels)
  return labels


def merge_split_counts(pred: np.ndarray, ref: np.ndarray) -> dict[str, int]:
  """How many reference cells were merged, split or missed.

  A predicted object *covers* a reference cell when it holds more than half
  of the cell's pixels (the SEG matching rule); a predicted object *belongs*
  to the reference cell that holds more than half of its own pixels.

  * merged: reference cells covered by an object that covers at least one
    other reference cell too.
  * split: reference cells to which two or more predicted objects belong.
  * missed: reference cells no predicted object covers (SEG counts 0 for them).

  Args:
    pred, ref: int ``[H, W]`` instance labels, 0 = background.
  Returns:
    ``{"cells", "merged", "split", "missed", "predicted"}``.
  """
  pred = relabel_consecutive(pred)
  ref = relabel_consecutive(ref)
  n_p, n_r = int(pred.max()), int(ref.max())
  table = np.zeros((n_p + 1, n_r + 1), np.int64)
  np.add.at(table, (pred.ravel(), ref.ravel()), 1)
  ref_sizes, pred_sizes = table.sum(0), table.sum(1)
  covers = 2 * table[1:, 1:] > ref_sizes[None, 1:]       # [P, R]
  belongs = 2 * table[1:, 1:] > pred_sizes[1:, None]      # [P, R]
  cells_covered = covers.sum(1)                           # per predicted object
  merged = covers[cells_covered >= 2].any(0).sum()
  split = (belongs.sum(0) >= 2).sum()
  missed = (~covers.any(0)).sum()
  return {"cells": n_r, "merged": int(merged), "split": int(split), "missed": int(missed),
          "predicted": n_p}
