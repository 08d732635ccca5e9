"""Augmentation: identity, label values, dihedral transforms, elastic field, determinism."""

import numpy as np
import pytest
from scipy import ndimage

from unet_jax import augment

TILE, OUT = 60, 20
B = (TILE - OUT) // 2
NONE = augment.AugmentParams(elastic_std=0.0, rotate=False, flip=False, intensity=0.0)


def _arrays(h=50, w=41, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(h, w, 2)).astype(np.float32)
  label = rng.choice(np.array([0, 1, 255], np.int32), size=(h, w))
  weight = rng.uniform(0.5, 3.0, (h, w)).astype(np.float32)
  return image, label, weight


def _reflect_crop(array, origin, size):
  """np.pad(mode='reflect') crop: what overlap-tile inference sees at ``origin``."""
  pad = 3 * TILE
  widths = [(pad, pad), (pad, pad)] + [(0, 0)] * (array.ndim - 2)
  padded = np.pad(array, widths, mode="reflect")
  r, c = int(origin[0]) + pad, int(origin[1]) + pad
  return padded[r:r + size, c:c + size]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_augmentation_is_mirror_padded_crop(seed):
  image, label, weight = _arrays(seed=seed)  # smaller than the tile: mirror padding needed
  t = augment.random_transform(np.random.default_rng(seed), label.shape, TILE, OUT, NONE)
  img, lab, wgt = augment.apply_transform(t, image, label, weight, TILE, OUT)
  assert img.shape == (TILE, TILE, 2) and lab.shape == wgt.shape == (OUT, OUT)
  assert img.dtype == np.float32 and lab.dtype == np.int32 and wgt.dtype == np.float32
  np.testing.assert_allclose(img, _reflect_crop(image, t.origin, TILE), atol=1e-5)
  np.testing.assert_array_equal(lab, _reflect_crop(label, t.origin + B, OUT))
  np.testing.assert_allclose(wgt, _reflect_crop(weight, t.origin + B, OUT), atol=1e-5)


def test_crop_position_keeps_output_on_image():
  rng = np.random.default_rng(0)
  origins = np.array([augment.random_transform(rng, (100, 70), TILE, OUT, NONE).origin
                      for _ in range(300)])
  out_origin = origins + B
  assert out_origin.min(0).tolist() == [0, 0]
  assert out_origin.max(0).tolist() == [100 - OUT, 70 - OUT]


def test_flips_are_dihedral_transforms_of_the_crop():
  image, label, weight = _arrays()
  params = augment.AugmentParams(elastic_std=0.0, rotate=False, flip=True, intensity=0.0)
  seen = set()
  for seed in range(24):
    t = augment.random_transform(np.random.default_rng(seed), label.shape, TILE, OUT, params)
    img, lab, _ = augment.apply_transform(t, image, label, weight, TILE, OUT)
    crop, lab_crop = _reflect_crop(image, t.origin, TILE), _reflect_crop(label, t.origin + B, OUT)
    matches = [k for k in range(8)
               if np.allclose(img, np.rot90(crop[:, ::-1] if k >= 4 else crop, k % 4), atol=1e-5)]
    assert len(matches) == 1
    k = matches[0]
    np.testing.assert_array_equal(lab, np.rot90(lab_crop[:, ::-1] if k >= 4 else lab_crop, k % 4))
    seen.add(k)
  assert len(seen) >= 6  # all 8 are reachable


def test_deformed_label_keeps_original_values():
  image, label, weight = _arrays()
  rng = np.random.default_rng(5)
  for _ in range(5):
    _, lab, wgt = augment.augment_sample(rng, image, label, weight, TILE, OUT,
                                         augment.AugmentParams(elastic_std=10.0))
    assert set(np.unique(lab)) <= {0, 1, 255}
    assert wgt.min() >= 0.5 - 1e-5 and wgt.max() <= 3.0 + 1e-5  # linear interpolation


def test_elastic_field_is_bicubic_upsampled_grid():
  grid, size, std = 3, 61, 10.0
  field = augment.elastic_field(np.random.default_rng(0), size, grid, std)
  coarse = np.random.default_rng(0).normal(0.0, std, (2, grid, grid))
  assert field.shape == (2, size, size)
  np.testing.assert_allclose(field[:, ::30, ::30], coarse, atol=1e-9)  # passes through nodes
  reference = np.stack([ndimage.zoom(c, size / grid, order=3, mode="nearest") for c in coarse])
  np.testing.assert_allclose(field, reference, atol=1e-6)
  # Many draws: per-pixel displacement std close to the paper's std at the nodes.
  rng = np.random.default_rng(1)
  nodes = np.array([augment.elastic_field(rng, size, grid, std)[:, 0, 0] for _ in range(2000)])
  assert abs(nodes.std() - std) < 0.5


def test_determinism_and_intensity():
  image, label, weight = _arrays()
  params = augment.AugmentParams()
  a = augment.augment_sample(np.random.default_rng(7), image, label, weight, TILE, OUT, params)
  b = augment.augment_sample(np.random.default_rng(7), image, label, weight, TILE, OUT, params)
  c = augment.augment_sample(np.random.default_rng(8), image, label, weight, TILE, OUT, params)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])
  t = augment.random_transform(np.random.default_rng(3), label.shape, TILE, OUT,
                               augment.AugmentParams(elastic_std=0, rotate=False, flip=False,
                                                     intensity=0.2))
  assert 0.8 <= t.gain <= 1.2 and -0.2 <= t.offset <= 0.2 and t.gain != 1.0
  img = augment.apply_transform(t, image, label, weight, TILE, OUT)[0]
  np.testing.assert_allclose(img, _reflect_crop(image, t.origin, TILE) * t.gain + t.offset,
                             atol=1e-5)


def test_image_label_and_weight_are_sampled_at_the_documented_coordinates():
  """Ramps reveal where each tile pixel was sampled: image channels hold the row and the
  column, the weight map the row, the label a unique id per pixel. With a free rotation,
  a mirror and an elastic field, every array must be sampled at
  ``origin + c + A (p - c + d(p))`` (the module docstring), written out here; the label
  and weights at the centre O x O of the same coordinates as the image, so all three stay
  aligned under deformation."""
  h = w = 400
  rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
  image = np.stack([rows, cols], -1)
  label = (np.arange(h * w, dtype=np.int32)).reshape(h, w)
  field = augment.elastic_field(np.random.default_rng(3), TILE, 3, 10.0)
  angle = np.deg2rad(30.0)
  a = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ np.diag([1, -1])
  t = augment.Transform(origin=np.array([170.0, 150.0]), matrix=a, displacement=field)
  img, lab, wgt = augment.apply_transform(t, image, label, rows, TILE, OUT)
  c = (TILE - 1) / 2
  want = np.zeros((2, TILE, TILE))
  for i in range(TILE):
    for j in range(TILE):
      want[:, i, j] = t.origin + c + a @ (np.array([i, j]) - c + field[:, i, j])
  assert want.min() > 0 and want.max() < h - 1  # inside the image: no mirroring here
  assert np.abs(field).max() > 3  # a real deformation
  np.testing.assert_allclose(img[..., 0], want[0], atol=1e-3)  # linear interpolation of
  np.testing.assert_allclose(img[..., 1], want[1], atol=1e-3)  # a ramp is exact
  centre = want[:, B:B + OUT, B:B + OUT]
  np.testing.assert_allclose(wgt, centre[0], atol=1e-3)
  r, q = np.divmod(lab, w)  # nearest neighbour: the pixel nearest to the coordinates
  np.testing.assert_array_equal(r, np.round(centre[0]))
  np.testing.assert_array_equal(q, np.round(centre[1]))


def _ramps(size):
  """``[size, size, 2]`` image holding each pixel's row and column: warped linearly, it
  shows where every tile pixel was sampled."""
  return np.stack(np.mgrid[0:size, 0:size].astype(np.float32), -1)


def test_rotation_angles_are_uniform_and_the_warp_is_scipy_rotate():
  """rotate=True (no flip, no elastic field): every sample's image coordinates, read back
  from ramps, are an exact rotation of the tile about its centre; the angles fitted here
  spread uniformly over [0, 2 pi) (Kolmogorov-Smirnov against 200 draws); and one
  sample of a smooth image equals ``scipy.ndimage.rotate`` of the unrotated crop."""
  from scipy import stats
  params = augment.AugmentParams(elastic_std=0.0, rotate=True, flip=False, intensity=0.0)
  size, c = 300, (TILE - 1) / 2
  ramps = _ramps(size)
  label, weight = np.zeros((size, size), np.int32), np.ones((size, size), np.float32)
  offsets = np.mgrid[0:TILE, 0:TILE].reshape(2, -1) - c  # tile pixels around the centre
  design = np.concatenate([offsets, np.ones((1, offsets.shape[1]))]).T
  rng = np.random.default_rng(0)
  angles, transforms = [], []
  while len(angles) < 200:
    t = augment.random_transform(rng, (size, size), TILE, OUT, params)
    if t.origin.min() < 15 or t.origin.max() > size - TILE - 16:
      continue  # the rotated tile (radius 42 px) would reach the mirrored border
    img = augment.apply_transform(t, ramps, label, weight, TILE, OUT)[0].reshape(-1, 2)
    fit = np.linalg.lstsq(design, img, rcond=None)[0].T  # [2, 3]: matrix | translation
    a, shift = fit[:, :2], fit[:, 2]
    np.testing.assert_allclose(design @ fit.T, img, atol=2e-3)  # affine, to float32 precision
    np.testing.assert_allclose(a @ a.T, np.eye(2), atol=1e-4)  # orthogonal ...
    assert np.linalg.det(a) == pytest.approx(1.0, abs=1e-4)  # ... and no mirror
    np.testing.assert_allclose(shift, t.origin + c, atol=1e-3)  # about the tile centre
    angles.append(np.arctan2(a[1, 0], a[0, 0]) % (2 * np.pi))
    transforms.append(t)
  assert stats.kstest(np.array(angles) / (2 * np.pi), "uniform").pvalue > 1e-3
  smooth = ndimage.gaussian_filter(np.random.default_rng(1).normal(size=(size, size)), 3) * 10
  i = int(np.argmin(np.abs(np.array(angles) - np.deg2rad(50))))  # an angle far from 0 and 90
  t, r, q = transforms[i], *transforms[i].origin.astype(int)
  img = augment.apply_transform(t, smooth[..., None], label, weight, TILE, OUT)[0][..., 0]
  # ndimage.rotate turns counter-clockwise on screen (rows down): -angle in (row, col)
  want = ndimage.rotate(smooth[r:r + TILE, q:q + TILE], -np.rad2deg(angles[i]), reshape=False,
                        order=1)
  inside = (offsets**2).sum(0).reshape(TILE, TILE) < (c - 1)**2  # no rotated-in zeros
  assert abs(np.rad2deg(angles[i]) - 50) < 10
  np.testing.assert_allclose(img[inside], want[inside], atol=1e-3)


@pytest.mark.parametrize("std,grid", [(10.0, 3), (6.0, 4)])
def test_elastic_displacements_have_the_configured_grid_and_std(std, grid):
  """Only the elastic deformation (paper Sec. 3.1): the displacement of every tile pixel,
  read back from warped ramps, is the bicubic interpolation (``scipy.ndimage.zoom``,
  order 3) of its values on the ``grid x grid`` nodes, and over 150 samples the node
  displacements are zero-mean with the configured std (not the default 10 px)."""
  params = augment.AugmentParams(elastic_std=std, elastic_grid=grid, rotate=False, flip=False,
                                 intensity=0.0)
  tile, out, size = 61, 21, 400  # nodes on pixels 0, 30, 60 (grid 3) / 0, 20, 40, 60 (grid 4)
  ramps = _ramps(size)
  label, weight = np.zeros((size, size), np.int32), np.ones((size, size), np.float32)
  pixels = np.mgrid[0:tile, 0:tile]
  step = (tile - 1) // (grid - 1)
  rng = np.random.default_rng(0)
  nodes = []
  while len(nodes) < 150:
    t = augment.random_transform(rng, (size, size), tile, out, params)
    if t.origin.min() < 71 or t.origin.max() > size - tile - 72:
      continue  # a 7-sigma displacement would reach the mirrored border
    img = augment.apply_transform(t, ramps, label, weight, tile, out)[0]
    moved = np.moveaxis(img, -1, 0) - pixels - t.origin[:, None, None]
    node = moved[:, ::step, ::step]
    assert node.shape == (2, grid, grid)
    bicubic = np.stack([ndimage.zoom(n, tile / grid, order=3, mode="nearest") for n in node])
    np.testing.assert_allclose(moved, bicubic, atol=2e-3)
    nodes.append(node)
  nodes = np.array(nodes)
  assert nodes.std() == pytest.approx(std, rel=0.07)
  assert abs(nodes.mean()) < 0.1 * std
  assert np.abs(nodes.std(axis=0) - std).max() < 0.3 * std  # every node and direction
