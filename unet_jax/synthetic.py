"""Synthetic EM-like images: touching cells separated by thin dark membranes.

A random Voronoi tiling of the image plane stands in for densely packed cells
(as in the ISBI 2012 EM stack): each Voronoi cell is one instance, and pixels
close to the boundary between two cells (``d2 - d1 < membrane``, with d1, d2
the distances to the nearest and second-nearest seed) are membrane. Each cell
region ``{d_j - d_i >= membrane for all j != i}`` is an intersection of convex
sets, so it is convex and the cells stay separate connected components, just
like the ISBI "in-out" labels. The grey values add a per-cell brightness,
smooth texture and pixel noise so that thresholding alone does not solve it.

Everything is deterministic given the seed; a 256x256 image takes a few ms.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, spatial


def voronoi_instances(rng: np.random.Generator, size: int, cells: int,
                      membrane: float = 2.0) -> np.ndarray:
  """Cell instances of a random Voronoi tiling with membranes between cells.

  Args:
    rng: random generator (the seeds of the tiling).
    size: image side H = W.
    cells: number of Voronoi seeds (>= 2).
    membrane: membrane width in pixels (``d2 - d1 < membrane`` is membrane).
  Returns:
    int32 ``[size, size]``: 0 = membrane, 1..n = cells (consecutive ids, cells
    whose interior vanished are dropped).
  """
  seeds = rng.uniform(0, size, (max(int(cells), 2), 2))
  yy, xx = np.mgrid[0:size, 0:size]
  pts = np.stack([yy.ravel(), xx.ravel()], axis=-1).astype(np.float64)
  dist, idx = spatial.cKDTree(seeds).query(pts, k=2)
  cell = np.where(dist[:, 1] - dist[:, 0] >= membrane, idx[:, 0] + 1, 0).reshape(size, size)
  cell = _largest_piece_per_cell(cell)
  # Consecutive ids 1..n over the cells that kept some interior.
  ids, inverse = np.unique(cell, return_inverse=True)
  offset = 0 if ids[0] == 0 else 1
  return (inverse + offset).reshape(size, size).astype(np.int32)


def _largest_piece_per_cell(cell: np.ndarray) -> np.ndarray:
  """Pixelisation can cut a thin cell corner off; such slivers become membrane.

  Afterwards the 4-connected components of ``cell > 0`` are exactly the cells,
  as for ISBI labels.
  """
  comp, n = ndimage.label(cell > 0)
  if n == 0:
    return cell
  sizes = np.bincount(comp.ravel())[1:]
  owner = np.asarray(ndimage.maximum(cell, comp, np.arange(1, n + 1)), np.int64)
  order = np.argsort(-sizes, kind="stable")
  _, first = np.unique(owner[order], return_index=True)  # largest piece of each cell
  keep = np.zeros(n + 1, bool)
  keep[order[first] + 1] = True
  return np.where(keep[comp], cell, 0)


def render(rng: np.random.Generator, instances: np.ndarray) -> np.ndarray:
  """Grey-value image for an instance map: bright textured cells, dark membranes.

  Args:
    rng: random generator (brightness, texture and noise).
    instances: int ``[H, W]``, 0 = membrane.
  Returns:
    uint8 ``[H, W]``.
  """
  n = int(instances.max())
  brightness = np.concatenate([[60.0], rng.uniform(130, 190, n)])
  img = brightness[instances]
  texture = ndimage.gaussian_filter(rng.normal(0, 1, instances.shape), 3.0)
  img = img + 25.0 * texture / (texture.std() + 1e-8)
  img = ndimage.gaussian_filter(img, 1.0)  # membranes look blurred, like EM
  img = img + rng.normal(0, 12.0, instances.shape)
  return np.clip(img, 0, 255).astype(np.uint8)


def generate(num_images: int, size: int, cells: int, seed: int
             ) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Deterministic synthetic dataset.

  Args:
    num_images: number of images.
    size: side of each image.
    cells: Voronoi seeds per image.
    seed: random seed; the same arguments always give the same data.
  Returns:
    ``(images, instances)``: lists of uint8 ``[size, size]`` images and int32
    ``[size, size]`` instance maps (0 = membrane).
  """
  rngs = [np.random.default_rng([int(seed), i]) for i in range(int(num_images))]
  instances = [voronoi_instances(r, int(size), int(cells)) for r in rngs]
  images = [render(r, inst) for r, inst in zip(rngs, instances)]
  return images, instances
