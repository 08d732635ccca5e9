"""Instances from p(cell): hand-made cases, and merge/split counts by brute force."""

import numpy as np
import pytest

from unet_jax import instances, metrics
from unet_jax.instances import InstanceParams

PAPER = InstanceParams(method="components")
WATERSHED = InstanceParams(method="watershed", seed_radius=1)


def _two_squares(valley: float) -> tuple[np.ndarray, np.ndarray]:
  """Two 12x12 cells touching along two columns (the separation border of the
  training labels) whose p(cell) is ``valley``."""
  prob = np.full((20, 30), 0.02, np.float32)
  prob[4:16, 3:27] = 0.98
  prob[4:16, 14:16] = valley
  ref = np.zeros((20, 30), np.int32)
  ref[4:16, 3:15], ref[4:16, 15:27] = 1, 2
  return prob, ref


@pytest.mark.parametrize("params", [PAPER, WATERSHED], ids=["components", "watershed"])
def test_touching_squares_with_a_separation_line_come_out_as_two(params):
  prob, ref = _two_squares(valley=0.1)
  labels = instances.from_probability(prob, params)
  assert labels.max() == 2
  assert metrics.seg_score(labels, ref) > 0.9  # the gap went back to the cells


def test_a_faint_valley_merges_with_the_paper_rule_but_not_with_watershed():
  prob, ref = _two_squares(valley=0.7)  # above the 0.5 threshold: no gap in the mask
  merged = instances.from_probability(prob, PAPER)
  split = instances.from_probability(prob, WATERSHED)
  assert merged.max() == 1 and split.max() == 2
  assert instances.merge_split_counts(merged, ref)["merged"] == 2
  assert instances.merge_split_counts(split, ref) == {
      "cells": 2, "merged": 0, "split": 0, "missed": 0, "predicted": 2}


def test_a_thin_gap_bridged_by_one_pixel():
  prob, ref = _two_squares(valley=0.1)
  prob[9, 14:16] = 0.95  # one confident 1-px-wide bridge joins the cells
  assert instances.from_probability(prob, PAPER).max() == 1
  # The seeds are eroded by a disk, so a 1-px-wide bridge does not join them.
  assert instances.from_probability(prob, WATERSHED).max() == 2


@pytest.mark.parametrize("method", ["components", "watershed"])
def test_tiny_objects_are_removed(method):
  prob = np.zeros((30, 30), np.float32)
  prob[2:12, 2:12] = 0.99  # 100 px
  prob[20, 20] = 0.99      # 1 px
  prob[20:23, 2:5] = 0.99  # 9 px
  keep_all = instances.from_probability(prob, InstanceParams(method=method, seed_radius=0))
  assert keep_all.max() == 3
  labels = instances.from_probability(prob, InstanceParams(method=method, min_size=10,
                                                           seed_radius=0))
  assert labels.max() == 1 and labels[20, 20] == 0 and labels[21, 3] == 0
  assert np.array_equal(np.unique(labels), [0, 1])


def test_unknown_method_is_refused():
  with pytest.raises(ValueError, match="watershed"):
    instances.from_probability(np.zeros((8, 8)), InstanceParams(method="magic"))


def _brute_force_counts(pred, ref):
  """The definitions of merge_split_counts, one object pair at a time."""
  cells = [r for r in np.unique(ref) if r]
  objs = [p for p in np.unique(pred) if p]
  covers = {(p, r): 2 * np.sum((pred == p) & (ref == r)) > np.sum(ref == r)
            for p in objs for r in cells}
  belongs = {(p, r): 2 * np.sum((pred == p) & (ref == r)) > np.sum(pred == p)
             for p in objs for r in cells}
  merged = {r for p in objs if sum(covers[p, c] for c in cells) >= 2
            for r in cells if covers[p, r]}
  split = [r for r in cells if sum(belongs[p, r] for p in objs) >= 2]
  missed = [r for r in cells if not any(covers[p, r] for p in objs)]
  return {"cells": len(cells), "merged": len(merged), "split": len(split),
          "missed": len(missed), "predicted": len(objs)}


def test_merge_split_counts_equal_a_brute_force_count():
  rng = np.random.default_rng(3)
  ref = np.zeros((40, 40), np.int32)
  ref[2:12, 2:12], ref[2:12, 12:22], ref[20:30, 5:15], ref[25:38, 25:38] = 3, 7, 9, 11
  pred = np.zeros_like(ref)
  pred[2:12, 2:22] = 5                          # merges cells 3 and 7
  pred[20:30, 5:10], pred[20:30, 10:15] = 1, 2  # splits cell 9
  # cell 11 missed (no object covers half of it)
  pred[25:31, 25:31] = 4
  for _ in range(20):  # and some noise objects
    y, x = rng.integers(0, 38, 2)
    pred[y:y + 2, x:x + 2] = rng.integers(12, 20)
  counts = instances.merge_split_counts(pred, ref)
  assert counts == _brute_force_counts(pred, ref)
  # cell 9 is split in halves: none covers more than half of it, so it is missed too
  assert counts["merged"] == 2 and counts["split"] == 1 and counts["missed"] == 2


def test_separated_training_labels_score_seg_one_after_filling_the_gaps():
  """Thresholding the separated training labels and filling the gaps gives back the cells."""
  from scipy import ndimage
  from unet_jax.weight_maps import separate_touching
  rng = np.random.default_rng(0)
  seeds = np.zeros((60, 60), np.int32)
  seeds[tuple(rng.integers(5, 55, (2, 8)))] = np.arange(1, 9)
  dist, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
  gt = np.where(dist < 12, seeds[iy, ix], 0)  # touching round-ish cells on background
  prob = (separate_touching(gt) > 0).astype(np.float32)
  raw = instances.from_probability(prob, InstanceParams(fill_gaps=False))
  filled = instances.from_probability(prob)
  assert metrics.seg_score(raw, gt) < 0.9 < 0.98 < metrics.seg_score(filled, gt)
  # the gaps are filled; boundaries against the background barely move (corners)
  assert np.all((raw > 0) <= (filled > 0))
  assert ((filled > 0) & (gt == 0)).sum() < 0.02 * (gt > 0).sum()


def _membrane_cells(gap: float) -> tuple[np.ndarray, np.ndarray]:
  """ISBI-style ``p(cell)`` of two cells split by a 3-px membrane (p 0.05)
  whose rows 14-19 are faint (p ``gap``), and the truth (1 = cell, 0 = membrane)."""
  truth = np.ones((36, 60), np.int32)
  truth[:, 28:31] = 0
  truth[[0, -1], :] = truth[:, [0, -1]] = 0
  prob = np.where(truth == 1, 0.95, 0.05).astype(np.float32)
  prob[14:20, 28:31] = gap
  return prob, truth


def test_watershed_lines_close_a_faint_membrane_gap():
  prob, truth = _membrane_cells(gap=0.55)  # above 0.5: thresholding merges the cells
  # A 1-px faint streak across the left cell (p 0.45): a threshold high
  # enough to open the gap (> 0.55) cuts the cell along it, so no threshold
  # of the ISBI sweep gets both right; smoothing lifts the streak above the
  # seed level (0.7) but not the 3-px gap, so the watershed does.
  prob[24, 1:28] = 0.45
  assert metrics.components(prob > 0.5).max() == 2  # left top half + the rest
  mask = instances.watershed_cell_mask(prob)
  assert set(np.unique(mask)) == {0.0, 1.0} and mask.dtype == np.float32
  cells = metrics.components(mask > 0.5)
  left, right = np.unique(cells[1:-1, 1:28]), np.unique(cells[1:-1, 31:-1])
  assert cells.max() == 2 and len(left) == len(right) == 1 and left[0] != right[0]
  # The line runs inside the faint gap, so the cells keep their area (pixel error).
  line_cols = np.nonzero(mask[14:20, 1:-1] == 0)[1] + 1
  assert line_cols.min() >= 27 and line_cols.max() <= 31
  # By the ISBI measures (metrics.isbi_scores, the challenge's V_rand / V_info),
  # the merge costs the raw map and the watershed mends it.
  raw = metrics.isbi_scores([prob], [truth], warping=False)
  ws = metrics.isbi_scores([mask], [truth], warping=False)
  assert ws["vrand"] > 0.99 and ws["vinfo"] > 0.99
  assert raw["vrand"] < 0.9 and raw["vinfo"] < 0.9  # its best threshold still errs


def test_watershed_mask_of_a_clean_map_keeps_its_cells():
  prob, truth = _membrane_cells(gap=0.05)  # no gap: nothing to mend
  cells = metrics.components(instances.watershed_cell_mask(prob) > 0.5)
  assert cells.max() == 2
  assert metrics.isbi_scores([instances.watershed_cell_mask(prob)], [truth],
                             warping=False)["vrand"] > 0.99


def test_small_seeds_do_not_cut_a_cell():
  """A 16-px confident speck in a faint patch of a cell: a seed of its own (and a line
  around it) only when seeds below ``min_seed_size`` are kept."""
  prob = np.full((30, 30), 0.05, np.float32)
  prob[3:27, 3:27] = 0.9
  prob[9:21, 9:21] = 0.5
  prob[13:17, 13:17] = 0.99
  one = metrics.components(instances.watershed_cell_mask(prob, min_seed_size=20) > 0.5)
  assert one.max() == 1 and one[15, 15] == one[5, 5]
  cut = metrics.components(instances.watershed_cell_mask(prob, min_seed_size=0) > 0.5)
  assert cut.max() == 2 and cut[15, 15] != cut[5, 5]
