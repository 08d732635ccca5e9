"""Data augmentation of the paper (Sec. 3.1), as pure NumPy with an explicit rng.

One training sample is an input tile ``T x T`` whose centre ``O x O`` (the
network's output, ``O = output_size(T, depth)``) carries the label and weight
map. All geometric transforms are composed into ONE coordinate map: for a tile
pixel ``p`` (row, col) with tile centre ``c = (T - 1) / 2``,

    source(p) = origin + c + A @ (p - c + d(p))

where ``d`` is the elastic displacement field, ``A`` a rotation (any angle, or a
multiple of 90 degrees) times an optional flip, and ``origin`` the random crop
position (top-left of the input tile in image coordinates). Each array is then
resampled once with ``scipy.ndimage.map_coordinates`` in mode ``'mirror'``
(numpy's ``np.pad(..., mode='reflect')``, the same padding as overlap-tile
inference), so a tile may sit anywhere on the image, even over its border:

- image: linear interpolation (``order=1``),
- label: nearest neighbour (``order=0``), so only original label values appear,
- weight map: linear interpolation.

Elastic deformation exactly as the paper: displacement vectors on a coarse
``grid x grid`` grid spanning the tile, drawn from a Gaussian with std
``elastic_std`` pixels, upsampled to a per-pixel field by bicubic (cubic
B-spline, interpolating) interpolation. Grey-value variation: ``a * x + b`` on
the normalised image, ``a ~ U(1 - s, 1 + s)``, ``b ~ U(-s, s)``.

With ``elastic_std = 0``, no rotation, no flip and ``intensity = 0`` a sample is
the plain mirror-padded crop (tested).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class AugmentParams:
  """What to randomise (mirrors ``config.augment``)."""
  elastic_std: float = 10.0   # px, std of coarse-grid displacements
  elastic_grid: int = 3       # coarse grid points per side
  rotate: bool = True         # any angle
  flip: bool = True           # mirror + multiples of 90 degrees
  intensity: float = 0.1      # grey-value scale/offset amplitude

  @classmethod
  def from_config(cls, augment_config) -> "AugmentParams":
    return cls(elastic_std=float(augment_config.elastic_std),
               elastic_grid=int(augment_config.elastic_grid),
               rotate=bool(augment_config.rotate), flip=bool(augment_config.flip),
               intensity=float(augment_config.intensity))


@dataclasses.dataclass(frozen=True)
class Transform:
  """One sampled transform (see the module docstring for the formula)."""
  origin: np.ndarray           # [2] top-left of the input tile, image coordinates
  matrix: np.ndarray           # [2, 2] rotation @ flip
  displacement: np.ndarray | None  # [2, T, T] elastic field (None = zero)
  gain: float = 1.0            # grey-value scale
  offset: float = 0.0          # grey-value offset


@functools.lru_cache(maxsize=16)
def _cubic_upsample_matrix(grid: int, n: int) -> np.ndarray:
  """``[n, grid]`` matrix M with ``M @ v`` = cubic interpolation of grid values v.

  The grid nodes sit at the first and last pixel and evenly in between; the
  interpolation is scipy's cubic B-spline (it passes through the nodes).
  """
  pos = np.linspace(0.0, grid - 1.0, n)[None]
  return np.stack([ndimage.map_coordinates(np.eye(grid)[k], pos, order=3, mode="nearest")
                   for k in range(grid)], axis=1)


def elastic_field(rng: np.random.Generator, size: int, grid: int, std: float
                  ) -> np.ndarray:
  """Smooth random displacement field of the paper (Sec. 3.1).

  Args:
    rng: random generator.
    size: tile side T.
    grid: coarse grid points per side (paper: 3).
    std: std of the coarse displacements in pixels (paper: 10).
  Returns:
    float64 ``[2, T, T]`` displacements (rows, cols) in pixels.
  """
  coarse = rng.normal(0.0, std, (2, grid, grid))
  m = _cubic_upsample_matrix(int(grid), int(size))
  return np.einsum("ia,cab,jb->cij", m, coarse, m)  # separable bicubic upsampling


def _crop_range(image_side: int, tile: int, out: int) -> tuple[int, int]:
  """Range of the tile's top-left so that the output region lies in the image."""
  b = (tile - out) // 2
  lo = -b
  return lo, max(lo, lo + image_side - out)


def random_transform(rng: np.random.Generator, image_shape: tuple[int, int],
                     tile: int, out: int, params: AugmentParams) -> Transform:
  """Draws one transform (crop position, rotation/flip, elastic field, grey values).

  Args:
    rng: random generator; the same state gives the same transform.
    image_shape: ``(H, W)`` of the source image.
    tile: input tile side T.
    out: output side O (centre of the tile carrying label and weights).
    params: what to randomise.
  Returns:
    A :class:`Transform`.
  """
  origin = np.array([rng.integers(lo, hi + 1)
                     for lo, hi in (_crop_range(s, tile, out) for s in image_shape[:2])],
                    np.float64)
  if params.rotate:
    angle = rng.uniform(0.0, 2.0 * np.pi)
  elif params.flip:
    angle = rng.integers(4) * np.pi / 2
  else:
    angle = 0.0
  mirror = -1.0 if params.flip and rng.random() < 0.5 else 1.0
  cos, sin = np.round(np.cos(angle), 12), np.round(np.sin(angle), 12)
  matrix = np.array([[cos, -sin], [sin, cos]]) @ np.diag([1.0, mirror])
  field = (elastic_field(rng, tile, params.elastic_grid, params.elastic_std)
           if params.elastic_std > 0 else None)
  s = params.intensity
  gain, offset = (rng.uniform(1 - s, 1 + s), rng.uniform(-s, s)) if s > 0 else (1.0, 0.0)
  return Transform(origin, matrix, field, float(gain), float(offset))


def source_coordinates(transform: Transform, tile: int) -> np.ndarray:
  """Image coordinates of every tile pixel.

  Returns:
    float64 ``[2, T, T]`` (rows, cols) for ``map_coordinates``.
  """
  c = (tile - 1) / 2.0
  grid = np.mgrid[0:tile, 0:tile].astype(np.float64) - c
  if transform.displacement is not None:
    grid = grid + transform.displacement
  rotated = np.einsum("ij,jhw->ihw", transform.matrix, grid)
  return rotated + (transform.origin + c)[:, None, None]


def _resample(array: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
  """``map_coordinates`` of a ``[H, W]`` or ``[H, W, C]`` array (mirror padding)."""
  if array.ndim == 2:
    return ndimage.map_coordinates(array, coords, order=order, mode="mirror")
  return np.stack([ndimage.map_coordinates(array[..., k], coords, order=order, mode="mirror")
                   for k in range(array.shape[-1])], axis=-1)


def apply_transform(transform: Transform, image: np.ndarray, label: np.ndarray,
                    weight: np.ndarray, tile: int, out: int, image_order: int = 1
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Resamples image, label and weight map with one transform.

  Args:
    transform: from :func:`random_transform`.
    image: float ``[H, W, C]``.
    label: int ``[H, W]``.
    weight: float ``[H, W]``.
    tile: input tile side T.
    out: output side O.
    image_order: spline order for the image (1 = linear, 3 = cubic).
  Returns:
    ``(image [T, T, C] float32, label [O, O] int32, weight [O, O] float32)``.
  """
  coords = source_coordinates(transform, tile)
  b = (tile - out) // 2
  centre = coords[:, b:b + out, b:b + out]
  img = _resample(np.asarray(image, np.float32), coords, image_order)
  img = img * transform.gain + transform.offset
  lab = _resample(np.asarray(label, np.int32), centre, 0)
  wgt = _resample(np.asarray(weight, np.float32), centre, 1)
  return img.astype(np.float32), lab.astype(np.int32), wgt.astype(np.float32)


def augment_sample(rng: np.random.Generator, image: np.ndarray, label: np.ndarray,
                   weight: np.ndarray, tile: int, out: int, params: AugmentParams
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Random training sample: :func:`random_transform` then :func:`apply_transform`.

  Args:
    rng: random generator (the only source of randomness).
    image: float ``[H, W, C]``; label: int ``[H, W]``; weight: float ``[H, W]``.
    tile: input tile side T; out: output side O.
    params: what to randomise.
  Returns:
    ``(image [T, T, C], label [O, O], weight [O, O])``.
  """
  t = random_transform(rng, label.shape, tile, out, params)
  return apply_transform(t, image, label, weight, tile, out)
