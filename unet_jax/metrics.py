"""Segmentation metrics, written from their definitions in docs/conventions.md (Metrics).

Label images: ``0`` = background / boundary, ``k > 0`` = segment k. Ground-truth
pixels with a negative label (or where an ``ignore`` mask is True) are excluded
from every score.

* ``rand_f_score`` / ``info_f_score``: the foreground-restricted Rand and
  information F-scores (V_rand, V_info of the ISBI 2012 challenge). Only pixels
  where the ground truth T is foreground count; pixels that the proposal S
  labels 0 count as singleton segments.
* ``isbi_scores``: the challenge protocol over a stack of cell probabilities
  (threshold sweep, 4-connected components, boundary thinning, best
  threshold).
* ``warping_error``: topology errors left after warping the ground truth
  towards the prediction by simple-point flips (Jain et al., 2010).
* ``seg_score``: the Cell Tracking Challenge SEG measure.

All counting uses a sparse contingency table (``scipy.sparse``), so a
512x512 slice is scored in milliseconds.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import warnings
from typing import Sequence

import numpy as np
import scipy.ndimage as ndi
import scipy.sparse
from skimage.segmentation import watershed

DEFAULT_THRESHOLDS = np.round(np.linspace(0.0, 1.0, 11), 10)

_FOUR = ndi.generate_binary_structure(2, 1)
_EIGHT = ndi.generate_binary_structure(2, 2)


# --------------------------------------------------------------------------
# Contingency tables.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Overlap:
  """Contingency table of a proposal S and a ground truth T over GT foreground.

  Attributes:
    table: ``[I, J]`` sparse counts n_ij; row 0 = pixels that S labels 0,
      rows 1.. = the segments of S, columns = the segments of T.
    n: number of pixels counted.
  """
  table: scipy.sparse.csr_matrix
  n: int

  @property
  def background(self) -> np.ndarray:
    """n_0j: pixels of each T segment that S labels background, ``[J]``."""
    return np.asarray(self.table[0].todense()).ravel()

  @property
  def segments(self) -> scipy.sparse.csr_matrix:
    """n_ij for the segments i > 0 of S, ``[I - 1, J]``."""
    return self.table[1:]


def _dense_ids(labels: np.ndarray) -> tuple[np.ndarray, int]:
  """Labels as row/column indices (0 stays 0) and their count.

  Non-negative integer labels of moderate size are used as they are (empty
  rows/columns add nothing to any score); others are relabelled by np.unique.
  """
  if labels.dtype == bool:
    return labels.astype(np.int64), 2
  if (np.issubdtype(labels.dtype, np.integer) and labels.size
      and labels.min() >= 0 and labels.max() <= 4 * labels.size + 1024):
    return labels.astype(np.int64), int(labels.max()) + 1
  values, ids = np.unique(labels, return_inverse=True)
  if values.size and values[0] == 0:
    return ids, values.size
  return ids + 1, values.size + 1  # no background in S: row 0 stays empty


def _foreground(gt: np.ndarray, ignore: np.ndarray | None) -> np.ndarray:
  mask = gt > 0
  return mask if ignore is None else mask & ~np.asarray(ignore, bool)


def overlap(seg: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> Overlap:
  """Contingency table of ``seg`` vs ``gt`` over the GT foreground pixels.

  Args:
    seg: proposal label image, any shape; 0 = background (singletons).
    gt: ground-truth label image, same shape; 0 = background, < 0 = ignore
      (both excluded).
    ignore: optional bool mask of further pixels to exclude.
  """
  seg, gt = np.asarray(seg), np.asarray(gt)
  if seg.shape != gt.shape:
    raise ValueError(f"segmentation {seg.shape} and ground truth {gt.shape} differ in shape")
  mask = _foreground(gt, ignore)
  rows, n_rows = _dense_ids(seg[mask])
  cols, n_cols = _dense_ids(gt[mask])
  table = scipy.sparse.csr_matrix((np.ones(rows.size, np.int64), (rows, cols)),
                                  shape=(max(n_rows, 1), max(n_cols, 1)))
  table.sum_duplicates()
  return Overlap(table, int(rows.size))


def _f_score(precision: float, recall: float) -> float:
  return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------
# V_rand and V_info.
# --------------------------------------------------------------------------


def rand_counts(o: Overlap) -> tuple[float, float, float]:
  """(A, B, C) of V_rand (docs/conventions.md): pairs within T, within S, within both.

  A = sum_j t_j^2, B = sum_{i>0} s_i^2 + sum_j n_0j,
  C = sum_{i>0,j} n_ij^2 + sum_j n_0j (ordered pairs, self pairs included;
  S-background pixels are singletons).
  """
  t = np.asarray(o.table.sum(axis=0), np.float64).ravel()
  seg = o.segments
  s = np.asarray(seg.sum(axis=1), np.float64).ravel()
  n0 = float(o.background.sum())
  return float(t @ t), float(s @ s) + n0, float(seg.multiply(seg).sum()) + n0


def rand_f_score(seg: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
  """Foreground-restricted Rand F-score V_rand = 2PR / (P + R) in [0, 1].

  Args:
    seg: proposal label image ``[H, W]`` (or any shape); 0 = background, each
      such pixel counts as its own segment. Scored as given (no thresholding
      or thinning).
    gt: ground-truth label image of the same shape; only pixels with gt > 0
      count (0 = boundary, < 0 = ignore).
    ignore: optional bool mask of pixels to exclude as well.
  Returns:
    V_rand (1.0 if there is no GT foreground to score).
  """
  return rand_from_overlap(overlap(seg, gt, ignore))


def rand_from_overlap(o: Overlap) -> float:
  """V_rand of a contingency table (1.0 if it is empty)."""
  if o.n == 0:
    return 1.0
  a, b, c = rand_counts(o)
  return _f_score(c / b, c / a)


def _entropy_terms(counts: np.ndarray, n: int) -> float:
  """sum p log p over the cells with counts > 0 (p = count / n)."""
  p = counts[counts > 0] / n
  return float(np.sum(p * np.log(p)))


def info_terms(o: Overlap) -> tuple[float, float, float]:
  """(H(S), H(T), I(S;T)) in nats, S-background pixels as singletons."""
  n = o.n
  t = np.asarray(o.table.sum(axis=0)).ravel()
  seg = o.segments
  s = np.asarray(seg.sum(axis=1)).ravel()
  n0 = float(o.background.sum())
  singles = n0 / n * np.log(1.0 / n)  # each singleton has probability 1/n
  h_s = -(_entropy_terms(s, n) + singles)
  h_t = -_entropy_terms(t, n)
  h_st = -(_entropy_terms(seg.data, n) + singles)
  return h_s, h_t, h_s + h_t - h_st


def info_f_score(seg: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
  """Foreground-restricted information F-score V_info = 2 I(S;T) / (H(S) + H(T)).

  Same conventions and arguments as ``rand_f_score``. Returns 1.0 when both
  entropies are 0 (one segment each, identical) or there is no GT foreground.
  """
  return info_from_overlap(overlap(seg, gt, ignore))


def info_from_overlap(o: Overlap) -> float:
  """V_info of a contingency table (1.0 if it is empty)."""
  if o.n == 0:
    return 1.0
  h_s, h_t, mutual = info_terms(o)
  if h_s + h_t <= 1e-12:
    return 1.0
  return float(np.clip(2 * mutual / (h_s + h_t), 0.0, 1.0))


# --------------------------------------------------------------------------
# From probabilities to segments.
# --------------------------------------------------------------------------


def components(mask: np.ndarray) -> np.ndarray:
  """4-connected components of a 2-D bool mask; int32 labels, 0 = background."""
  return ndi.label(mask, structure=_FOUR)[0].astype(np.int32)


def thin_boundaries(mask: np.ndarray) -> np.ndarray:
  """Segments of a cell mask with boundaries thinned to 1-px lines (docs/conventions.md, V_rand).

  A watershed of the background's distance transform (distance of each
  boundary pixel to the nearest cell pixel), seeded by the 4-connected cell
  components, 4-connectivity, ``watershed_line=True``: every boundary pixel
  joins the nearest cell except the 1-px lines where cells meet (label 0).

  Args:
    mask: ``[H, W]`` bool, True = cell.
  Returns:
    int32 ``[H, W]`` labels, 0 = the watershed lines.
  """
  seeds = components(mask)
  if seeds.max() == 0:
    return seeds
  distance = ndi.distance_transform_edt(~mask)
  return watershed(distance, markers=seeds, connectivity=1,
                   watershed_line=True).astype(np.int32)


def pixel_f1(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
  """F1 of the pixel classification with cell (True) as the positive class."""
  if valid is not None:
    pred, gt = pred[valid], gt[valid]
  tp = np.count_nonzero(pred & gt)
  denom = np.count_nonzero(pred) + np.count_nonzero(gt)
  return 1.0 if denom == 0 else 2.0 * tp / denom


# --------------------------------------------------------------------------
# Warping error (Jain, Bollmann, Richardson, Berger, Helmstaedter, Briggman,
# Denk, Bowden, Mendenhall, Abraham, Harris, Kasthuri, Hayworth, Schalek,
# Tapia, Lichtman, Seung: "Boundary learning by optimization with topological
# constraints", CVPR 2010), as the ISBI 2012 challenge uses it.
#
# Topology: 4-connected foreground (cells), 8-connected background; outside
# the image is background. A pixel is *simple* if flipping it changes neither
# the number of objects nor the number of holes; this depends only on its
# 3x3 neighbourhood (T4 == T8 == 1, see ``_topology_tables``).
# --------------------------------------------------------------------------

# Offsets of the 8 neighbours, bit i of a neighbourhood code = neighbour i.
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _patch(code: int) -> np.ndarray:
  patch = np.zeros((3, 3), bool)
  for bit, (dr, dc) in enumerate(_NEIGHBOURS):
    patch[1 + dr, 1 + dc] = bool(code >> bit & 1)
  return patch


@functools.lru_cache(maxsize=None)
def _topology_tables() -> tuple[np.ndarray, np.ndarray]:
  """Per 8-neighbourhood code: T4 of the foreground and T8 of the background.

  T4 = number of 4-connected foreground components in the punctured 3x3
  neighbourhood that touch the centre 4-adjacently; T8 = number of
  8-connected background components there. The centre is simple for
  (4, 8) topology iff T4 == T8 == 1.
  """
  t4 = np.zeros(256, np.int8)
  t8 = np.zeros(256, np.int8)
  cross = np.zeros((3, 3), bool)
  cross[[0, 1, 1, 2], [1, 0, 2, 1]] = True
  for code in range(256):
    fg = _patch(code)
    labels, _ = ndi.label(fg, structure=_FOUR)
    t4[code] = np.unique(labels[cross & fg]).size
    bg = ~fg
    bg[1, 1] = False
    t8[code] = ndi.label(bg, structure=_EIGHT)[1]
  return t4, t8


@functools.lru_cache(maxsize=None)
def _simple_table() -> bytes:
  """``_simple_table()[code]`` is 1 iff the centre of that neighbourhood is simple."""
  t4, t8 = _topology_tables()
  return bytes(((t4 == 1) & (t8 == 1)).astype(np.uint8).tolist())


def _codes(padded: np.ndarray, flat: np.ndarray, width: int) -> np.ndarray:
  """Neighbourhood codes of the pixels ``flat`` (indices into ``padded.ravel()``)."""
  image = padded.ravel()
  code = np.zeros(flat.size, np.int32)
  for bit, (dr, dc) in enumerate(_NEIGHBOURS):
    code |= image[flat + dr * width + dc].astype(np.int32) << bit
  return code


def warp_towards(gt: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> np.ndarray:
  """Warps ``gt`` towards ``target > threshold`` by flipping simple points.

  Jain et al. (2010), Algorithm 1: starting from L = gt, repeatedly flip the
  simple pixel of L that disagrees with the target and whose target value is
  the most confident (largest ``|target - threshold|``; ties in raster
  order), one pixel at a time, until no disagreeing pixel is simple. L keeps
  the topology of ``gt`` throughout (every flip is a simple-point flip).

  A priority queue holds the disagreeing pixels. A popped pixel that is not
  simple is dropped; it is pushed again whenever one of its 8 neighbours
  flips (only then can its simplicity change), so each pop returns the most
  confident pixel among those that are simple *now*, as the algorithm
  requires.

  Args:
    gt: ``[H, W]`` bool, the ground-truth cell mask.
    target: ``[H, W]`` cell probabilities (float) or a bool mask (then every
      disagreement is equally confident and pixels flip in raster order).
    threshold: cell where ``target > threshold``.
  Returns:
    the warped ``[H, W]`` bool mask.
  """
  gt = np.asarray(gt, bool)
  target = np.asarray(target, np.float64)
  if gt.shape != target.shape or gt.ndim != 2:
    raise ValueError(f"ground truth {gt.shape} and target {target.shape} must be the "
                     f"same [H, W] shape")
  width = gt.shape[1] + 2
  goal_np = np.pad(target > threshold, 1).ravel()
  image_np = np.pad(gt, 1).ravel()
  confidence = np.pad(np.abs(target - threshold), 1).ravel()
  start = np.flatnonzero(image_np != goal_np)
  # Plain Python containers: this loop touches single pixels, where list and
  # bytearray indexing is several times faster than NumPy scalar indexing.
  image = bytearray(image_np.astype(np.uint8).tobytes())
  goal = goal_np.astype(np.uint8).tobytes()
  priority = (-confidence).tolist()
  simple = _simple_table()
  n0, n1, n2, n3, n4, n5, n6, n7 = (dr * width + dc for dr, dc in _NEIGHBOURS)
  heap = list(zip((-confidence[start]).tolist(), start.tolist()))
  heapq.heapify(heap)
  pop, push = heapq.heappop, heapq.heappush
  while heap:
    _, i = pop(heap)
    g = goal[i]
    if image[i] == g:
      continue  # a stale entry: already flipped
    code = (image[i + n0] | image[i + n1] << 1 | image[i + n2] << 2 | image[i + n3] << 3
            | image[i + n4] << 4 | image[i + n5] << 5 | image[i + n6] << 6
            | image[i + n7] << 7)
    if not simple[code]:
      continue  # comes back when a neighbour flips
    image[i] = g
    for j in (i + n0, i + n1, i + n2, i + n3, i + n4, i + n5, i + n6, i + n7):
      if image[j] != goal[j]:  # the 1-px frame always agrees (both 0)
        push(heap, (priority[j], j))
  warped = np.frombuffer(bytes(image), np.uint8).reshape(-1, width)
  return warped[1:-1, 1:-1].astype(bool)


def _distinct_nonzero(ids: np.ndarray) -> np.ndarray:
  """Number of distinct non-zero values in each row of ``ids`` ``[N, k]``."""
  s = np.sort(ids, axis=1)
  new = np.concatenate([s[:, :1] != 0, (s[:, 1:] != s[:, :-1]) & (s[:, 1:] != 0)], axis=1)
  return new.sum(axis=1)


def _four_neighbour_ids(labels: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """Labels of the 4 neighbours of each pixel, ``[N, 4]`` (0 outside the image)."""
  padded = np.pad(labels, 1)
  r, c = rows + 1, cols + 1
  return np.stack([padded[r - 1, c], padded[r + 1, c], padded[r, c - 1], padded[r, c + 1]],
                  axis=1)


def topology_errors(warped: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
  """(splits, merges) among the pixels where ``warped`` and ``pred`` still differ.

  Each remaining disagreement is classified on its own against the whole
  warped image (Jain et al. 2010; the ISBI 2012 challenge counts only these
  two kinds):

  * merge: ``pred`` adds a pixel whose 4-neighbours belong to two or more
    different objects (4-connected components of the whole warped image).
    Closing the 1-px gap of a C-shaped cell joins an object to itself: that
    creates a hole, not a merge.
  * split: ``pred`` removes a pixel whose object falls apart without it, i.e.
    its 4-neighbours lie in two or more components of that object minus the
    pixel. Opening a ring removes a hole, not a split.

  Object creation/deletion and hole creation/deletion are not counted.

  Args:
    warped: ``[H, W]`` bool, the warped ground truth (``warp_towards``).
    pred: ``[H, W]`` bool, the predicted cell mask.
  Returns:
    (number of split pixels, number of merge pixels).
  """
  warped = np.asarray(warped, bool)
  pred = np.asarray(pred, bool)
  objects = components(warped)
  rows, cols = np.nonzero(warped != pred)
  adds = pred[rows, cols]
  merges = int(np.count_nonzero(
      _distinct_nonzero(_four_neighbour_ids(objects, rows[adds], cols[adds])) >= 2))
  # A removal can only split if its neighbours are not already joined inside
  # the 3x3 window (T4 >= 2); those few are checked on their whole object.
  r, c = rows[~adds], cols[~adds]
  width = warped.shape[1] + 2
  t4, _ = _topology_tables()
  local = t4[_codes(np.pad(warped, 1), (r + 1) * width + c + 1, width)] >= 2
  boxes = ndi.find_objects(objects)
  splits = 0
  for y, x in zip(r[local], c[local]):
    box = boxes[objects[y, x] - 1]
    part = objects[box] == objects[y, x]
    yy, xx = y - box[0].start, x - box[1].start
    part[yy, xx] = False
    pieces = components(part)
    ids = _four_neighbour_ids(pieces, np.array([yy]), np.array([xx]))
    splits += int(_distinct_nonzero(ids)[0] >= 2)
  return splits, merges


def warping_error(pred: np.ndarray, gt_binary: np.ndarray,
                  ignore: np.ndarray | None = None, threshold: float = 0.5) -> float:
  """Warping error of a prediction: (splits + merges) / pixels.

  The ground truth is warped towards ``pred > threshold`` by simple-point
  flips, most confident first (``warp_towards``), and the disagreements left
  that split or merge objects (``topology_errors``) are counted and divided
  by the number of pixels, as in the ISBI 2012 challenge.

  Args:
    pred: ``[H, W]`` cell probabilities, or a bool cell mask.
    gt_binary: ``[H, W]`` bool, True = cell.
    ignore: optional bool mask; there the prediction is replaced by the
      ground truth, so those pixels never count as errors.
    threshold: cell where ``pred > threshold``.
  Returns:
    the error in [0, 1]; 0 for identical masks.
  """
  gt = np.asarray(gt_binary, bool)
  pred = np.asarray(pred, np.float64)
  if ignore is not None:
    # 1 / 0 lie on the same side of any threshold in [0, 1) as the truth.
    pred = np.where(ignore, gt.astype(np.float64), pred)
  warped = warp_towards(gt, pred, threshold)
  return sum(topology_errors(warped, pred > threshold)) / pred.size


# --------------------------------------------------------------------------
# ISBI 2012 protocol.
# --------------------------------------------------------------------------


def _slice_scores(prob: np.ndarray, gt: np.ndarray, thresholds: np.ndarray,
                  warping: bool) -> dict[str, np.ndarray]:
  """Per-threshold scores of one slice: prob [H, W] float, gt [H, W] int."""
  ignore = (gt != 0) & (gt != 1)
  cells = gt == 1
  truth = components(cells)
  curves = {k: np.full(thresholds.size, np.nan) for k in
            ("vrand", "vinfo", "rand_f_raw", "pixel_f1", "warping_error")}
  for i, t in enumerate(thresholds):
    binary = prob > t
    thin = overlap(thin_boundaries(binary), truth, ignore)
    curves["vrand"][i] = rand_from_overlap(thin)
    curves["vinfo"][i] = info_from_overlap(thin)
    curves["rand_f_raw"][i] = rand_f_score(components(binary), truth, ignore)
    curves["pixel_f1"][i] = pixel_f1(binary, cells, ~ignore)
    if warping and t < 0.95:  # min over thresholds 0 .. 0.9 (docs/conventions.md)
      curves["warping_error"][i] = warping_error(prob, cells, ignore, threshold=t)
  return curves


def isbi_slice_curves(prob: np.ndarray, gt: np.ndarray,
                      thresholds: Sequence[float] = DEFAULT_THRESHOLDS, *, warping: bool = True,
                      index: int = 0) -> dict[str, np.ndarray] | None:
  """The per-threshold scores of one slice that ``isbi_scores`` averages.

  Args:
    prob: ``[H, W]`` cell-interior probability; gt: ``[H, W]`` as in
      ``isbi_scores``; index: the slice's number, for the messages.
  Returns:
    ``{"vrand", "vinfo", "rand_f_raw", "pixel_f1", "warping_error"}``, each
    ``[T]``; ``None`` (with a warning) for a slice without GT cell pixels.
  """
  gt = np.asarray(gt)
  gt = gt.astype(np.int32) if gt.dtype == bool else gt
  if np.shape(prob) != gt.shape:
    raise ValueError(f"slice {index}: prediction {np.shape(prob)} vs ground truth {gt.shape}")
  if not np.any(gt == 1):
    warnings.warn(f"slice {index} has no ground-truth cell pixels (value 1); skipped. "
                  f"(Raw ISBI labels use 255 for cells: pass labels == 255.)")
    return None
  return _slice_scores(np.asarray(prob), gt, np.asarray(thresholds, np.float64), warping)


def isbi_from_slice_curves(per_slice: Sequence[dict[str, np.ndarray] | None],
                           thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict:
  """``isbi_scores`` from the slices' ``isbi_slice_curves`` (``None`` entries skipped)."""
  thresholds = np.asarray(thresholds, np.float64)
  per_slice = [c for c in per_slice if c is not None]
  if not per_slice:
    raise ValueError("no slice with ground-truth cell pixels to score")
  curves = {k: np.mean([c[k] for c in per_slice], axis=0) for k in per_slice[0]}
  best = int(np.argmax(curves["vrand"]))
  warp = curves["warping_error"]
  return {
      "vrand": float(curves["vrand"].max()),
      "vinfo": float(curves["vinfo"].max()),
      "rand_error": float(1.0 - curves["rand_f_raw"].max()),
      "pixel_error": float(1.0 - curves["pixel_f1"].max()),
      "warping_error": float(np.nanmin(warp)) if np.isfinite(warp).any() else float("nan"),
      "best_threshold": float(thresholds[best]),
      "num_slices": len(per_slice),
      "curves": {"threshold": thresholds.tolist(),
                 **{k: v.tolist() for k, v in curves.items()}},
  }


def isbi_scores(cell_prob: np.ndarray | Sequence[np.ndarray],
                gt_cell_mask: np.ndarray | Sequence[np.ndarray],
                thresholds: Sequence[float] = DEFAULT_THRESHOLDS, *,
                warping: bool = True) -> dict:
  """The ISBI 2012 scores of a stack of cell-interior probabilities.

  Per slice and threshold t: cell mask = prob > t; proposal segments = its
  4-connected components after ``thin_boundaries``; ground-truth segments =
  4-connected components of the GT cell mask. Scores are averaged over the
  slices at each threshold, then the best threshold is taken per score.
  (``isbi_slice_curves`` + ``isbi_from_slice_curves``: the same in two steps,
  for slices scored in different places.)

  Args:
    cell_prob: ``[S, H, W]`` (or a list of ``[H, W]``) probabilities that a
      pixel is cell interior (not membrane).
    gt_cell_mask: same shape, bool or int: 1 / True = cell interior,
      0 = membrane; any other value (e.g. -1, 255 in a K=2 label map) is
      ignored (excluded from every score). Slices without GT cell pixels are
      skipped with a warning.
    thresholds: the sweep, default 0.0, 0.1, ..., 1.0.
    warping: compute the warping error (the slowest part) for t <= 0.9.
  Returns:
    dict with ``vrand``, ``vinfo`` (max over t of the thinned V_rand / V_info),
    ``rand_error`` (1 - max_t V_rand without thinning), ``pixel_error``
    (1 - max_t pixel F1), ``warping_error`` (min over t <= 0.9; NaN if
    ``warping=False``), ``best_threshold`` (argmax of V_rand),
    ``num_slices`` (scored), and ``curves``: ``{"threshold": [T], "vrand":
    [T], "vinfo", "rand_f_raw", "pixel_f1", "warping_error"}`` lists of floats.
  """
  return isbi_from_slice_curves(
      [isbi_slice_curves(prob, gt, thresholds, warping=warping, index=index)
       for index, (prob, gt) in enumerate(zip(cell_prob, gt_cell_mask))], thresholds)


# --------------------------------------------------------------------------
# Cell Tracking Challenge SEG.
# --------------------------------------------------------------------------


def seg_jaccards(pred_instances: np.ndarray, gt_instances: np.ndarray) -> np.ndarray:
  """Jaccard index J of every reference object of one frame, ``[num_objects]``.

  For reference object R the predicted object S with |R ∩ S| > 0.5 |R| (at most
  one can exist) gives J = |R ∩ S| / |R ∪ S|; without one J = 0.
  """
  pred = np.asarray(pred_instances).ravel()
  gt = np.asarray(gt_instances).ravel()
  if pred.shape != gt.shape:
    raise ValueError(f"prediction {np.shape(pred_instances)} and reference "
                     f"{np.shape(gt_instances)} differ in shape")
  ref = gt > 0
  ref_ids, ref_dense = np.unique(gt[ref], return_inverse=True)
  if ref_ids.size == 0:
    return np.zeros(0)
  pred_ids, pred_dense = np.unique(pred, return_inverse=True)
  pred_sizes = np.bincount(pred_dense).astype(np.float64)
  ref_sizes = np.bincount(ref_dense).astype(np.float64)
  inside = pred[ref] != 0  # predicted background is no object
  table = scipy.sparse.coo_matrix(
      (np.ones(np.count_nonzero(inside)), (ref_dense[inside], pred_dense[ref][inside])),
      shape=(ref_ids.size, pred_ids.size)).tocsr().tocoo()  # sums duplicates
  match = table.data > 0.5 * ref_sizes[table.row]
  rows, cols, inter = table.row[match], table.col[match], table.data[match]
  jaccard = np.zeros(ref_ids.size)
  jaccard[rows] = inter / (ref_sizes[rows] + pred_sizes[cols] - inter)
  return jaccard


def seg_score(pred_instances: np.ndarray | Sequence[np.ndarray],
              gt_instances: np.ndarray | Sequence[np.ndarray]) -> float:
  """Cell Tracking Challenge SEG: mean Jaccard index over all reference objects.

  Args:
    pred_instances: ``[H, W]`` instance labels (0 = background), or a stack
      ``[S, H, W]`` / list of frames.
    gt_instances: the reference, same layout; 0 (or < 0) = no object.
  Returns:
    SEG in [0, 1], pooled over the objects of all frames; NaN (with a warning)
    if there is no reference object.
  """
  if np.ndim(gt_instances) == 2:
    pred_instances, gt_instances = [pred_instances], [gt_instances]
  return seg_from_jaccards([seg_jaccards(p, g) for p, g in zip(pred_instances, gt_instances)])


def seg_from_jaccards(per_frame: Sequence[np.ndarray]) -> float:
  """SEG from each frame's ``seg_jaccards``: their mean over all reference objects."""
  jaccard = np.concatenate(per_frame) if len(per_frame) else np.zeros(0)
  if jaccard.size == 0:
    warnings.warn("no reference objects: SEG is undefined (NaN)")
    return float("nan")
  return float(jaccard.mean())
