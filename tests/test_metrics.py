"""Metrics (docs/conventions.md) against brute-force references and hand-computed values."""

import collections
import itertools
import math

import numpy as np
import pytest
import scipy.ndimage as ndi

from unet_jax import metrics

_FOUR = ndi.generate_binary_structure(2, 1)
_EIGHT = ndi.generate_binary_structure(2, 2)


def _random_labels(rng, shape=(6, 7), segs=4, seg_zero=0.25, gt_zero=0.2):
  seg = rng.integers(1, segs + 1, shape)
  seg[rng.random(shape) < seg_zero] = 0
  gt = rng.integers(1, segs + 1, shape)
  gt[rng.random(shape) < gt_zero] = 0
  return seg, gt


def _scored_pixels(gt):
  return [p for p in np.ndindex(gt.shape) if gt[p] > 0]


def _brute_rand(seg, gt):
  """Counts ordered pixel pairs (self pairs included) over GT foreground, O(n^2)."""
  pixels = _scored_pixels(gt)
  a = b = c = 0
  for x, y in itertools.product(pixels, repeat=2):
    same_t = gt[x] == gt[y]
    same_s = x == y or (seg[x] == seg[y] and seg[x] > 0)  # S background = singletons
    a += same_t
    b += same_s
    c += same_t and same_s
  p, r = c / b, c / a
  return 2 * p * r / (p + r)


def _entropy(labels):
  n = len(labels)
  return -sum(k / n * math.log(k / n) for k in collections.Counter(labels).values())


def _hand_info(seg, gt):
  """V_info from entropies of explicit per-pixel segment ids (S background = unique ids)."""
  pixels = _scored_pixels(gt)
  s = [seg[p] if seg[p] > 0 else ("single", p) for p in pixels]
  t = [gt[p] for p in pixels]
  h_s, h_t = _entropy(s), _entropy(t)
  mutual = h_s + h_t - _entropy(list(zip(s, t)))
  return 2 * mutual / (h_s + h_t)


@pytest.mark.parametrize("seed", range(6))
def test_rand_f_score_matches_pair_counting(seed):
  seg, gt = _random_labels(np.random.default_rng(seed))
  assert metrics.rand_f_score(seg, gt) == pytest.approx(_brute_rand(seg, gt), rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_info_f_score_matches_hand_entropies(seed):
  seg, gt = _random_labels(np.random.default_rng(seed))
  assert metrics.info_f_score(seg, gt) == pytest.approx(_hand_info(seg, gt), rel=1e-10)


def test_arbitrary_label_values_are_relabelled():
  seg, gt = _random_labels(np.random.default_rng(7))
  expected = metrics.rand_f_score(seg, gt)
  big = np.where(seg > 0, seg * 10**9 + 5, 0)
  assert metrics.rand_f_score(big, gt * 1000) == pytest.approx(expected)
  assert metrics.info_f_score(big, gt) == pytest.approx(metrics.info_f_score(seg, gt))


def test_ignore_pixels_are_excluded():
  rng = np.random.default_rng(3)
  seg, gt = _random_labels(rng)
  ignore = rng.random(gt.shape) < 0.3
  cut = np.where(ignore, 0, gt)  # excluding = making them GT background
  assert metrics.rand_f_score(seg, gt, ignore) == pytest.approx(_brute_rand(seg, cut))
  negative = np.where(ignore, -1, gt)
  assert metrics.info_f_score(seg, negative) == pytest.approx(_hand_info(seg, cut))


def test_perfect_and_trivial_scores():
  gt = np.array([[1, 1, 0, 2], [1, 1, 0, 2], [0, 0, 0, 2]])
  assert metrics.rand_f_score(gt, gt) == 1.0
  assert metrics.info_f_score(gt * 7, gt) == pytest.approx(1.0)
  assert metrics.rand_f_score(np.zeros_like(gt), gt) < 1.0  # all singletons
  assert metrics.rand_f_score(gt, np.zeros_like(gt)) == 1.0  # nothing to score


def _isbi_labels(data_root, slices=slice(0, 2)):
  import tifffile
  labels = tifffile.imread(data_root / "isbi2012" / "train-labels.tif")[slices]
  return labels == 255  # 255 = cell interior


def test_perfect_prediction_on_real_isbi_labels(data_root):
  cells = _isbi_labels(data_root)
  scores = metrics.isbi_scores(cells.astype(np.float32), cells)
  assert scores["vrand"] == pytest.approx(1.0)
  assert scores["vinfo"] == pytest.approx(1.0)
  assert scores["rand_error"] == pytest.approx(0.0, abs=1e-12)
  assert scores["pixel_error"] == pytest.approx(0.0, abs=1e-12)
  assert scores["warping_error"] == 0.0
  assert scores["num_slices"] == 2
  assert len(scores["curves"]["vrand"]) == 11


def _merge_two_cells(cells):
  """Paints a 3-px bridge across the membrane between the largest cell and its nearest neighbour."""
  from skimage.draw import line
  labels = metrics.components(cells)
  a = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
  dist, nearest = ndi.distance_transform_edt(labels != a, return_indices=True)
  dist[(labels == 0) | (labels == a)] = np.inf
  b_pixel = np.unravel_index(np.argmin(dist), dist.shape)
  a_pixel = nearest[:, b_pixel[0], b_pixel[1]]
  bridge = np.zeros_like(cells)
  bridge[line(*a_pixel, *b_pixel)] = True
  merged = cells | ndi.binary_dilation(bridge)
  assert metrics.components(merged).max() == labels.max() - 1
  return merged


def test_merging_two_cells_lowers_scores(data_root):
  cells = _isbi_labels(data_root, slice(0, 1))
  merged = _merge_two_cells(cells[0])[None]
  scores = metrics.isbi_scores(merged.astype(np.float32), cells, thresholds=[0.5])
  assert scores["vrand"] < 0.999
  assert scores["vinfo"] < 1.0
  assert scores["warping_error"] > 0
  assert metrics.warping_error(merged[0], cells[0]) > 0


def test_isbi_scores_skips_slices_without_cells():
  gt = np.zeros((2, 8, 8), np.int32)
  gt[1, 2:6, 2:6] = 1
  prob = gt.astype(np.float32)
  with pytest.warns(UserWarning, match="slice 0"):
    scores = metrics.isbi_scores(prob, gt, warping=False)
  assert scores["num_slices"] == 1 and scores["vrand"] == 1.0
  assert np.isnan(scores["warping_error"])


def test_isbi_ignore_label():
  gt = np.zeros((1, 10, 10), np.int32)
  gt[0, 1:4, 1:9] = 1
  gt[0, 6:9, 1:9] = 1
  prob = gt.astype(np.float32)
  prob[0, 4:6, 3] = 1.0  # a bridge that merges the two cells ...
  gt[0, 4:6, 3] = -1     # ... over pixels the ground truth ignores
  assert metrics.isbi_scores(prob, gt, thresholds=[0.5])["warping_error"] == 0.0
  gt[0, 4:6, 3] = 0
  assert metrics.isbi_scores(prob, gt, thresholds=[0.5])["warping_error"] > 0


def test_thin_boundaries_gives_one_pixel_lines():
  mask = np.ones((9, 12), bool)
  mask[:, 5:8] = False  # a 3-px membrane between two cells
  thin = metrics.thin_boundaries(mask)
  assert set(np.unique(thin)) == {0, 1, 2}
  assert np.count_nonzero(thin == 0) == 9  # one column of line pixels
  assert np.all(thin[:, :5] == 1) and np.all(thin[:, 8:] == 2)


def test_warping_error_of_simple_cases():
  gt = np.zeros((12, 12), bool)
  gt[2:10, 2:5] = gt[2:10, 7:10] = True
  assert metrics.warping_error(gt, gt) == 0.0
  shifted = np.zeros_like(gt)
  shifted[3:11, 2:6] = shifted[3:11, 7:10] = True  # same topology, moved borders
  assert metrics.warping_error(shifted, gt) == 0.0
  merged = gt.copy()
  merged[5, 5:7] = True  # a 2-px bridge: one pixel flips (simple), one merges
  assert metrics.warping_error(merged, gt) == pytest.approx(1 / gt.size)
  split = gt.copy()
  split[5, 2:5] = False  # a cut across the first cell
  # the warp (raster order for a bool mask) narrows the 3-px cut to its last
  # pixel, whose removal splits the cell
  assert metrics.warping_error(split, gt) == pytest.approx(1 / gt.size)
  hole = gt.copy()
  hole[5, 8] = False  # a hole: topological, but neither split nor merge
  assert metrics.warping_error(hole, gt) == 0.0


def _ring(shape=(12, 12)):
  """A 1-px thick square ring (one object with one hole)."""
  ring = np.zeros(shape, bool)
  ring[2:9, 2:9] = True
  ring[3:8, 3:8] = False
  return ring


def test_closing_or_opening_a_c_shaped_cell_is_no_error():
  ring = _ring()
  c_shape = ring.copy()
  c_shape[5, 8] = False  # a 1-px gap in the right side
  for gt, pred in ((c_shape, ring), (ring, c_shape)):
    warped = metrics.warp_towards(gt, pred)
    # the gap pixel cannot be flipped (it changes the hole), so it stays ...
    assert np.array_equal(np.argwhere(warped != pred), [[5, 8]])
    # ... but it joins (or cuts) one object to itself: a hole change, not a
    # merge or split, although it touches two pieces inside its 3x3 window.
    assert metrics.topology_errors(warped, pred) == (0, 0)
    assert metrics.warping_error(pred, gt) == 0.0


def test_true_merge_and_true_split():
  gt = np.zeros((10, 12), bool)
  gt[2:8, 1:5] = gt[2:8, 6:11] = True  # two cells, 1-px membrane at column 5
  merged = gt.copy()
  merged[4, 5] = True
  assert metrics.topology_errors(metrics.warp_towards(gt, merged), merged) == (0, 1)
  assert metrics.warping_error(merged, gt) == pytest.approx(1 / gt.size)
  cut = gt.copy()
  cut[2:8, 8] = False  # a 1-px membrane through the second cell
  # six pixels removed, but only one split remains: the warp keeps a 1-px
  # bridge and the prediction removes it.
  assert metrics.topology_errors(metrics.warp_towards(gt, cut), cut) == (1, 0)
  assert metrics.warping_error(cut, gt) == pytest.approx(1 / gt.size)
  # the reverse: the truth has three cells, the prediction fills the whole
  # membrane between two of them. No pixel of it can flip alone without
  # merging, so all six stay and count (the error counts pixels).
  assert metrics.topology_errors(metrics.warp_towards(cut, gt), gt) == (0, 6)


def test_warp_flips_the_most_confident_pixel_first():
  gt = np.zeros((8, 12), bool)
  gt[3:5, 1:11] = True  # a 2-px thick bar
  prob = gt.astype(np.float64)
  prob[3, 6], prob[4, 6] = 0.1, 0.4  # both removed at threshold 0.5; (3, 6) surer
  warped = metrics.warp_towards(gt, prob)
  # only one of the two can go without splitting the bar: the more confident
  assert not warped[3, 6] and warped[4, 6]
  prob[3, 6], prob[4, 6] = 0.4, 0.1
  warped = metrics.warp_towards(gt, prob)
  assert warped[3, 6] and not warped[4, 6]
  assert metrics.warping_error(prob, gt) == pytest.approx(1 / gt.size)  # a split either way


def _components_count(mask):
  """(4-connected objects, 8-connected background components) with a background frame."""
  padded = np.pad(mask, 1)
  return ndi.label(padded, _FOUR)[1], ndi.label(~padded, _EIGHT)[1]


def _brute_warp(gt, prob, threshold):
  """Jain et al. (2010), Algorithm 1, literally: flip the most confident simple
  disagreeing pixel, where simple = flipping it keeps the numbers of objects and
  of background components of the whole image; repeat until none is left."""
  warped = gt.copy()
  goal = prob > threshold
  while True:
    best = None
    counts = _components_count(warped)
    for p in map(tuple, np.argwhere(warped != goal)):
      warped[p] = ~warped[p]
      if _components_count(warped) == counts:
        key = (-abs(prob[p] - threshold), p)
        best = key if best is None or key < best else best
      warped[p] = ~warped[p]
    if best is None:
      return warped
    warped[best[1]] = goal[best[1]]


def _brute_topology_errors(warped, pred):
  """Flips each remaining disagreement alone and counts objects before and after."""
  splits = merges = 0
  objects = _components_count(warped)[0]
  for p in map(tuple, np.argwhere(warped != pred)):
    flipped = warped.copy()
    flipped[p] = pred[p]
    after = _components_count(flipped)[0]
    merges += pred[p] and after < objects
    splits += (not pred[p]) and after > objects
  return splits, merges


@pytest.mark.parametrize("seed", range(6))
def test_warping_matches_brute_force_algorithm(seed):
  rng = np.random.default_rng(seed)
  gt = ndi.gaussian_filter(rng.normal(size=(16, 16)), 1.2) > 0
  prob = np.clip(0.5 + 2.0 * ndi.gaussian_filter(rng.normal(size=(16, 16)), 1.0), 0, 1)
  threshold = (0.3, 0.5, 0.7)[seed % 3]
  warped = metrics.warp_towards(gt, prob, threshold)
  np.testing.assert_array_equal(warped, _brute_warp(gt, prob, threshold))
  assert _components_count(warped) == _components_count(gt)  # topology kept
  pred = prob > threshold
  assert metrics.topology_errors(warped, pred) == _brute_topology_errors(warped, pred)


def test_simple_point_tables():
  t4, t8 = metrics._topology_tables()
  simple = (t4 == 1) & (t8 == 1)
  assert not simple[0]          # isolated pixel: adding it creates an object
  assert not simple[255]        # fully surrounded: removing it creates a hole
  assert simple[1 << 1]         # only the north neighbour
  assert not simple[(1 << 1) | (1 << 6)]  # north and south only: joins two parts
  assert not simple[1 << 0]     # only a diagonal neighbour: not 4-connected


def test_seg_score_hand_computed():
  gt = np.zeros((6, 8), np.int32)
  gt[0:2, 0:4] = 1   # 8 px
  gt[3:6, 0:2] = 2   # 6 px
  gt[3:6, 5:8] = 3   # 9 px
  pred = np.zeros_like(gt)
  pred[0:2, 0:3] = 5  # 6 of 8 px of object 1: J = 6 / 8
  pred[3:6, 0:1] = 6  # 3 of 6 px of object 2: not > 0.5 |R|: J = 0
  pred[2:6, 5:8] = 7  # covers object 3 (9 px) plus 3 px: J = 9 / 12
  expected = (6 / 8 + 0 + 9 / 12) / 3
  assert metrics.seg_score(pred, gt) == pytest.approx(expected)
  assert metrics.seg_score(np.stack([pred, gt]), np.stack([gt, gt])) == pytest.approx(
      (6 / 8 + 0 + 9 / 12 + 3) / 6)
  assert metrics.seg_score(gt, gt) == 1.0


def test_seg_score_without_reference_objects_warns():
  with pytest.warns(UserWarning, match="no reference"):
    assert np.isnan(metrics.seg_score(np.ones((3, 3), int), np.zeros((3, 3), int)))


def test_rand_and_info_on_a_full_slice_match_counting():
  """512x512 with ~500 segments (the sparse-table path) against plain pixel counting."""
  rng = np.random.default_rng(0)
  seeds = rng.random((512, 512)) < 0.002
  gt = ndi.label(ndi.binary_dilation(seeds, iterations=6))[0]
  seg = ndi.label(ndi.binary_dilation(seeds, iterations=5))[0]
  seg[rng.random(seg.shape) < 0.05] = 0  # some proposal background inside the cells
  fg = gt > 0
  s, t = seg[fg], gt[fg]
  n0 = int((s == 0).sum())  # S background: singletons
  a = sum(v * v for v in collections.Counter(t.tolist()).values())
  b = sum(v * v for k, v in collections.Counter(s.tolist()).items() if k > 0) + n0
  c = sum(v * v for (i, _), v in collections.Counter(zip(s.tolist(), t.tolist())).items()
          if i > 0) + n0
  p, r = c / b, c / a
  assert metrics.rand_f_score(seg, gt) == pytest.approx(2 * p * r / (p + r), rel=1e-12)
  ids = np.where(s > 0, s, -np.arange(1, s.size + 1))  # unique ids for singletons
  assert metrics.info_f_score(seg, gt) == pytest.approx(
      _hand_info_from_ids(ids.tolist(), t.tolist()), rel=1e-9)


def _hand_info_from_ids(s, t):
  h_s, h_t = _entropy(s), _entropy(t)
  return 2 * (h_s + h_t - _entropy(list(zip(s, t)))) / (h_s + h_t)


# --------------------------------------------------------------------------
# V_rand / V_info against scikit-image (docs/metrics.md, "Conventions").
# --------------------------------------------------------------------------


def _noisy_isbi_segmentation(cells, seed=0, noise=0.6):
  """A realistic proposal: the truth blurred, noised, thresholded and thinned."""
  rng = np.random.default_rng(seed)
  prob = (ndi.gaussian_filter(cells.astype(np.float64), 2.0)
          + ndi.gaussian_filter(rng.normal(0, noise, cells.shape), 1.5))
  return metrics.thin_boundaries(prob > 0.5)


def _singletons_as_labels(seg):
  """Gives every background pixel of a proposal its own label (our convention)."""
  seg = np.asarray(seg, np.int64).copy()
  zero = seg == 0
  seg[zero] = seg.max() + 1 + np.arange(np.count_nonzero(zero))
  return seg


def test_vrand_vinfo_agree_with_scikit_image(data_root):
  """Same numbers as skimage.metrics once its conventions are mapped to ours:
  skimage counts pixel pairs without self-pairs (sum n^2 - n), and reports the
  variation of information H(S|T) + H(T|S) in bits rather than
  2 I / (H(S) + H(T)); a proposal's background pixels are singletons only for
  us, so they get their own labels before skimage sees them."""
  from skimage.metrics import adapted_rand_error, variation_of_information

  for cells in _isbi_labels(data_root, slice(25, 26)):
    truth = metrics.components(cells)
    seg = _noisy_isbi_segmentation(cells)
    ours_rand, ours_info = metrics.rand_f_score(seg, truth), metrics.info_f_score(seg, truth)
    assert 0.5 < ours_rand < 0.999  # a realistic, imperfect proposal
    test = _singletons_as_labels(seg)
    # skimage: pixels with truth label 0 (membrane) excluded via ignore_labels.
    _, sk_p, sk_r = adapted_rand_error(truth, test, ignore_labels=(0,))
    inside = truth > 0
    n = np.count_nonzero(inside)
    t_pairs = float(np.sum(np.bincount(truth[inside]).astype(np.float64) ** 2))  # A
    # skimage: sk_p = (C - n) / (A - n), sk_r = (C - n) / (B - n); restore self-pairs.
    c_pairs = n + sk_p * (t_pairs - n)
    s_pairs = n + (c_pairs - n) / sk_r
    p, r = c_pairs / s_pairs, c_pairs / t_pairs
    assert ours_rand == pytest.approx(2 * p * r / (p + r), rel=1e-9)
    h_s, h_t = _entropy(test[inside].tolist()), _entropy(truth[inside].tolist())
    vi = variation_of_information(truth, test, ignore_labels=(0,)).sum() * math.log(2)  # nats
    assert ours_info == pytest.approx(1 - vi / (h_s + h_t), rel=1e-9)
    # Without the mapping the two differ, but only slightly for 512^2 slices.
    assert ours_rand != 1 - adapted_rand_error(truth, test, ignore_labels=(0,))[0]


def test_isbi_scores_sweep_average_and_best_threshold_recomputed():
  """The aggregation of ``isbi_scores`` on an imperfect two-slice prediction, recomputed
  here: per threshold t, V_rand / V_info of the thinned components of prob > t and the raw
  Rand F of its plain 4-connected components (those scorers are checked against brute
  force and scikit-image above), pixel F1 counted here; each averaged over the slices,
  then the best over t, and V_rand's argmax as ``best_threshold``. Ignored pixels (255)
  count nowhere."""
  from unet_jax import synthetic
  rng = np.random.default_rng(5)
  _, instances = synthetic.generate(2, 64, 10, seed=1)
  cells = [inst > 0 for inst in instances]
  probs = [np.clip(ndi.gaussian_filter(c.astype(float), 1.5) + rng.normal(0, 0.15, c.shape), 0, 1)
           for c in cells]
  gts = [c.astype(np.int32) for c in cells]
  gts[1][:5] = 255
  ts = np.round(np.arange(11) * 0.1, 1)
  got = metrics.isbi_scores(probs, gts, ts, warping=False)
  per = {k: np.zeros((2, ts.size)) for k in ("vrand", "vinfo", "raw", "f1")}
  for s, (p, g) in enumerate(zip(probs, gts)):
    ignore, valid = g == 255, g != 255
    truth = ndi.label(g == 1, _FOUR)[0]
    for i, t in enumerate(ts):
      b = p > t
      thin = metrics.thin_boundaries(b)
      per["vrand"][s, i] = metrics.rand_f_score(thin, truth, ignore)
      per["vinfo"][s, i] = metrics.info_f_score(thin, truth, ignore)
      per["raw"][s, i] = metrics.rand_f_score(ndi.label(b, _FOUR)[0], truth, ignore)
      tp = np.sum(b & (g == 1) & valid)
      fp, fn = np.sum(b & (g == 0) & valid), np.sum(~b & (g == 1) & valid)
      per["f1"][s, i] = 2 * tp / (2 * tp + fp + fn)
  mean = {k: v.mean(0) for k, v in per.items()}
  assert got["vrand"] == pytest.approx(mean["vrand"].max(), rel=1e-12)
  assert got["vinfo"] == pytest.approx(mean["vinfo"].max(), rel=1e-12)
  assert got["rand_error"] == pytest.approx(1 - mean["raw"].max(), rel=1e-12)
  assert got["pixel_error"] == pytest.approx(1 - mean["f1"].max(), rel=1e-12)
  assert got["best_threshold"] == ts[np.argmax(mean["vrand"])]
  np.testing.assert_allclose(got["curves"]["pixel_f1"], mean["f1"], rtol=1e-12)
  assert got["num_slices"] == 2 and np.isnan(got["warping_error"])
  # an imperfect prediction whose score depends on the threshold
  assert 0.3 < got["vrand"] < 0.999 and np.ptp(mean["vrand"]) > 0.1
