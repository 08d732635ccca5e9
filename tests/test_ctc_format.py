"""CTC result folders, and our SEG against the challenge's own measure (py-ctcmetrics)."""

import json
import pathlib
import types

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from unet_jax import ctc_format, evaluation, metrics

DIC = pathlib.Path("ctc") / "DIC-C2DH-HeLa" / "01_ST" / "SEG"


def test_file_names_and_dtype(tmp_path):
  labels = np.zeros((6, 7), np.int64)
  labels[1:3, 1:3], labels[4:6, 2:5] = 70000, 5  # ids past uint16 are renumbered
  paths = ctc_format.write_results(tmp_path, ["01/t007", "02/t120"], [labels, labels])
  assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
      "01_RES/mask007.tif", "02_RES/mask120.tif"]
  back = tifffile.imread(paths[0])
  assert back.dtype == np.uint16 and back.shape == (6, 7)
  assert np.array_equal(back > 0, labels > 0) and len(np.unique(back)) == 3
  assert ctc_format.parse_name("01/t060") == ("01", 60)
  with pytest.raises(ValueError):
    ctc_format.parse_name("train-volume.tif:03")


def _perturbed(ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A plausible result: cells eroded/dilated, two merged, one split, one lost."""
  out = np.zeros_like(ref)
  ids = [i for i in np.unique(ref) if i]
  for k in ids:
    cell = ref == k
    r = int(rng.integers(-3, 4))
    if r > 0:
      cell = ndimage.binary_dilation(cell, iterations=r) & (out == 0)
    elif r < 0:
      cell = ndimage.binary_erosion(cell, iterations=-r)
    out[cell] = k
  out[out == ids[1]] = ids[0]            # a merge
  ys, xs = np.nonzero(out == ids[2])
  out[(out == ids[2]) & (np.arange(out.shape[1])[None] > xs.mean())] = 999  # a split
  out[out == ids[3]] = 0                 # a missed cell
  return out


def _ctcmetrics_seg(res_dir: pathlib.Path, ref_paths: list[pathlib.Path]) -> float:
  """SEG as py-ctcmetrics computes it from the challenge's files."""
  pytest.importorskip("ctc_metrics", reason="py-ctcmetrics (test dependency) not installed")
  from ctc_metrics.metrics import seg
  from ctc_metrics.utils.representations import match

  labels_ref, ious = [], []
  for ref in ref_paths:
    frame = int(ref.stem.replace("man_seg", ""))
    m = match(str(ref), str(res_dir / ctc_format.mask_name(frame)))
    labels_ref.append(m[0])
    ious.append(m[4])
  return seg(labels_ref, ious)


def test_seg_equals_py_ctcmetrics_on_real_dic_hela_masks(data_root, tmp_path):
  ref_paths = [data_root / DIC / f"man_seg{t:03d}.tif" for t in (60, 61, 70, 83)]
  refs = [tifffile.imread(p).astype(np.int32) for p in ref_paths]
  rng = np.random.default_rng(0)
  preds = [_perturbed(r, rng) for r in refs]
  ctc_format.write_results(tmp_path, [f"01/t{t:03d}" for t in (60, 61, 70, 83)], preds)
  theirs = _ctcmetrics_seg(tmp_path / "01_RES", ref_paths)
  ours = metrics.seg_score(preds, refs)
  assert 0.3 < theirs < 0.95  # a non-trivial case
  assert ours == pytest.approx(theirs, abs=1e-12)


def test_heldout_report_writes_ctc_folders_scored_like_the_challenge(data_root, tmp_path,
                                                                     tiny_config, monkeypatch):
  """evaluate_split on DIC-HeLa frames: the SEG in metrics.json is py-ctcmetrics' SEG
  of the written <seq>_RES folder."""
  frames = (60, 75)
  ref_paths = [data_root / DIC / f"man_seg{t:03d}.tif" for t in frames]
  refs = [tifffile.imread(p).astype(np.int32) for p in ref_paths]
  rng = np.random.default_rng(1)
  # The "network": a smoothed, noisy version of the separated reference masks.
  from unet_jax.weight_maps import separate_touching
  probs = [np.clip(ndimage.gaussian_filter((separate_touching(r) > 0).astype(np.float32), 2)
                   + 0.15 * rng.normal(size=r.shape), 0, 1) for r in refs]
  monkeypatch.setattr(evaluation, "predict_images",
                      lambda *a, **k: [np.stack([1 - p, p], -1) for p in probs])
  data = types.SimpleNamespace(
      images=[np.zeros(r.shape + (1,), np.float32) for r in refs],
      labels=[(separate_touching(r) > 0).astype(np.int32) for r in refs], instances=refs,
      names=[f"01/t{t:03d}" for t in frames], num_channels=1, dataset="dic_hela")
  scores = evaluation.evaluate_split(None, None, data, tiny_config, out_dir=tmp_path)
  written = sorted((tmp_path / "01_RES").iterdir())
  assert [p.name for p in written] == ["mask060.tif", "mask075.tif"]
  for p, r in zip(written, refs):
    mask = tifffile.imread(p)
    assert mask.dtype == np.uint16 and mask.shape == r.shape and mask.max() > 5
  report = json.loads((tmp_path / "metrics.json").read_text())
  assert report["seg"] == pytest.approx(_ctcmetrics_seg(tmp_path / "01_RES", ref_paths),
                                        abs=1e-12)
  assert report["seg"] == pytest.approx(scores["seg"])
  assert {"cells_merged", "cells_split", "cells_missed", "cells"} <= set(report)
