"""Weight maps (paper Eq. 2) against hand-computed values and a brute-force reference."""

import numpy as np
import pytest

from unet_jax import balanced_class_weights, instances_from_binary, weight_map


def border(d1, d2, w0=10.0, sigma=5.0):
  return w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))


def test_two_stripes_hand_computed():
  inst = np.zeros((5, 7), np.int32)
  inst[:, 0:2] = 1
  inst[:, 5:7] = 2
  w = weight_map(inst, class_weights=[0.5, 2.0])
  # columns 2, 3, 4: (d1, d2) = (1, 3), (2, 2), (3, 1) -> d1 + d2 = 4 everywhere
  np.testing.assert_allclose(w[:, 2:5], 0.5 + border(1, 3), rtol=1e-6)
  np.testing.assert_allclose(w[:, [0, 1, 5, 6]], 2.0)  # no border term on cells
  assert w.dtype == np.float32 and w.shape == inst.shape


def test_second_nearest_of_three_instances():
  inst = np.array([[1, 1, 0, 2, 2, 0, 0, 0, 3, 3, 3]], np.int32)
  w = weight_map(inst, w0=10.0, sigma=5.0)
  # col 2: D = (1, 1, 6); col 5: (4, 1, 3); col 6: (5, 2, 2); col 7: (6, 3, 1)
  expected = {2: border(1, 1), 5: border(1, 3), 6: border(2, 2), 7: border(3, 1)}
  for col, b in expected.items():
    assert w[0, col] == pytest.approx(1.0 + b, rel=1e-6), col


def test_fewer_than_two_instances_has_no_border_term():
  inst = np.zeros((6, 6), np.int32)
  np.testing.assert_array_equal(weight_map(inst), 1.0)
  inst[2:4, 2:4] = 7
  np.testing.assert_array_equal(weight_map(inst, class_weights=[1.0, 3.0]),
                                np.where(inst > 0, 3.0, 1.0))


def _brute_force(inst, w0, sigma):
  """Explicit distances from every pixel to every instance pixel."""
  ys, xs = np.indices(inst.shape)
  ids = [k for k in np.unique(inst) if k > 0]
  dists = []
  for k in ids:
    py, px = np.nonzero(inst == k)
    d = np.sqrt((ys[..., None] - py) ** 2 + (xs[..., None] - px) ** 2).min(-1)
    dists.append(d)
  d = np.sort(np.stack(dists), axis=0)
  return np.where(inst == 0, 1.0 + border(d[0], d[1], w0, sigma), 1.0)


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_random_instances_match_brute_force(sigma):
  rng = np.random.default_rng(0)
  mask = rng.random((40, 45)) > 0.55
  inst = instances_from_binary(mask)
  assert inst.max() > 5
  np.testing.assert_allclose(weight_map(inst, w0=10.0, sigma=sigma),
                             _brute_force(inst, 10.0, sigma), rtol=1e-5, atol=1e-6)


def test_instances_are_4_connected():
  mask = np.array([[1, 0, 0],
                   [0, 1, 1],
                   [0, 0, 1]], bool)
  inst = instances_from_binary(mask)
  assert inst.max() == 2  # the diagonal neighbour is a separate cell
  assert inst[0, 0] != inst[1, 1] and inst[1, 1] == inst[1, 2] == inst[2, 2]
  assert inst.dtype == np.int32


def test_balanced_class_weights():
  labels = [np.array([[0, 1, 1, 1]]), np.array([[1, 1, 1, 255]])]  # 255 is ignored
  w = balanced_class_weights(labels, 2)
  # N = 7, n0 = 1, n1 = 6 -> N / (K n_k)
  np.testing.assert_allclose(w, [7 / 2, 7 / 12])
  # the pixel-mean of the balanced weights is 1
  assert (1 * w[0] + 6 * w[1]) / 7 == pytest.approx(1.0)


def test_rejects_non_2d():
  with pytest.raises(ValueError, match=r"\[H, W\]"):
    weight_map(np.zeros((2, 3, 3), np.int32))


def test_rejects_a_bool_mask():
  """A mask is not instances: as one instance it would get no border term at all."""
  mask = np.zeros((5, 7), bool)
  mask[:, 0:2] = mask[:, 5:7] = True
  with pytest.raises(ValueError, match="instances_from_binary"):
    weight_map(mask)
  w = weight_map(instances_from_binary(mask))  # the fix the message names: two cells
  assert w[2, 3] == pytest.approx(1.0 + border(2, 2), rel=1e-6)


def test_a_0_1_int_mask_is_one_instance():
  """Legal, and documented: ids are taken as given, so no border term."""
  inst = np.zeros((5, 7), np.int32)
  inst[:, 0:2] = inst[:, 5:7] = 1
  np.testing.assert_array_equal(weight_map(inst), 1.0)


@pytest.mark.parametrize("class_weights", [[1.0], [1.0, 2.0, 3.0], [[1.0, 2.0]]])
def test_rejects_class_weights_that_are_not_two_numbers(class_weights):
  inst = np.zeros((4, 4), np.int32)
  with pytest.raises(ValueError, match=r"class_weights must be \[background, foreground\]"):
    weight_map(inst, class_weights=class_weights)


def test_separate_touching_leaves_a_gap_between_touching_cells_only():
  from unet_jax.weight_maps import separate_touching
  inst = np.zeros((6, 9), np.int32)
  inst[1:5, 0:4] = 1
  inst[1:5, 4:7] = 2   # touches cell 1 along a column
  inst[0, 8] = 3       # isolated
  sep = separate_touching(inst)
  np.testing.assert_array_equal(sep[1:5, 3:5], 0)            # 2-px gap where they touched
  np.testing.assert_array_equal(sep[1:5, 0:3], 1)
  np.testing.assert_array_equal(sep[1:5, 5:7], 2)
  assert sep[0, 8] == 3
  # the gap is background, so the border term of Eq. 2 now lands between the cells
  w = weight_map(sep, w0=10.0, sigma=5.0)
  assert w[2, 3] == pytest.approx(1.0 + border(1, 2), rel=1e-6)
  # no two instances stay 4-adjacent
  assert instances_from_binary(sep > 0).max() == 3


def test_separate_touching_on_random_voronoi():
  from scipy import ndimage
  from unet_jax.weight_maps import separate_touching
  rng = np.random.default_rng(3)
  seeds = np.zeros((50, 50), np.int32)
  seeds[tuple(rng.integers(0, 50, (2, 12)))] = np.arange(1, 13)
  _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
  inst = seeds[iy, ix]                      # touching cells covering the image
  comps = instances_from_binary(separate_touching(inst) > 0)
  for c in range(1, comps.max() + 1):       # each component lies in one instance
    assert len(np.unique(inst[comps == c])) == 1
