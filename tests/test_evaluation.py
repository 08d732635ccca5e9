"""Held-out evaluation, submission TIFF, predict_files and the evaluate.py CLI."""

import functools
import json
import os
import pathlib
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
import tifffile

from random_nets import random_net, tta_by_hand
from unet_jax import evaluation
from unet_jax.errors import UserInputError

REPO = pathlib.Path(__file__).resolve().parents[1]

_net = functools.lru_cache(maxsize=None)(random_net)


@pytest.fixture
def tiny_config(tiny_config):
  """The tiny config, resolved as the evaluation code expects (1 input channel)."""
  from unet_jax import config_lib
  return config_lib.resolve(tiny_config, 1)


def _blobs(rng, size=40, cells=5):
  """Bright separate discs on a dark background: image, labels, instances."""
  yy, xx = np.mgrid[:size, :size]
  instances = np.zeros((size, size), np.int32)
  centres = [(7 + 12 * i, 7 + 12 * j) for i in range(3) for j in range(3)]
  for k, c in enumerate(rng.permutation(len(centres))[:cells], start=1):
    cy, cx = centres[c]
    instances[(yy - cy)**2 + (xx - cx)**2 < 16] = k
  image = (instances > 0) + 0.1 * rng.normal(size=(size, size))
  return image[..., None].astype(np.float32), (instances > 0).astype(np.int32), instances


def _data(dataset, n=2, seed=0):
  rng = np.random.default_rng(seed)
  images, labels, instances = zip(*[_blobs(rng) for _ in range(n)])
  return types.SimpleNamespace(images=list(images), labels=list(labels),
                               instances=list(instances), names=[f"img:{i}" for i in range(n)],
                               num_channels=1, dataset=dataset)


def test_evaluate_split_isbi_like_writes_report(tiny_config, tmp_path):
  model, variables = _net(2, 4)
  data = _data("synthetic")
  scores = evaluation.evaluate_split(model, variables, data, tiny_config, out_dir=tmp_path)
  for key in ("vrand", "vinfo", "rand_error", "pixel_error", "warping_error", "best_threshold"):
    assert np.isfinite(scores[key]) and isinstance(scores[key], float)
  assert 0 <= scores["vrand"] <= 1 and scores["num_images"] == 2
  # the same as scoring the tiled forward's p(cell) of each image directly
  from unet_jax import config_lib, metrics, tiling
  tile = config_lib.resolve(tiny_config, 1).eval_tile_size
  probs = [tiling.predict_tiled(model, variables, im, tile_size=tile)[..., 1] for im in data.images]
  ref = metrics.isbi_scores(probs, data.labels)
  for key in ("vrand", "vinfo", "rand_error", "pixel_error", "warping_error", "best_threshold"):
    assert scores[key] == pytest.approx(ref[key], abs=1e-6), key
  report = json.loads((tmp_path / "metrics.json").read_text())
  assert report["vrand"] == pytest.approx(scores["vrand"])
  assert len(report["curves"]["vrand"]) == 11
  assert "| vrand |" in (tmp_path / "metrics.md").read_text()
  assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["img_0.png", "img_1.png"]


def test_evaluate_split_ctc_reports_seg(tiny_config):
  model, variables = _net(2, 4)
  data = _data("dic_hela")
  scores = evaluation.evaluate_split(model, variables, data, tiny_config, warping=False)
  assert set(scores) >= {"seg", "vrand", "vinfo", "pixel_error"}
  # SEG of the instances of the tiled forward's p(cell), pooled over the images' cells
  # (metrics.seg_score equals py-ctcmetrics' SEG: tests/test_ctc_format.py)
  from unet_jax import config_lib, instances, metrics, tiling
  tile = config_lib.resolve(tiny_config, 1).eval_tile_size
  params = instances.InstanceParams.from_config(tiny_config)
  preds = [instances.from_probability(
      tiling.predict_tiled(model, variables, im, tile_size=tile)[..., 1], params)
      for im in data.images]
  ious = np.concatenate([metrics.seg_jaccards(p, r) for p, r in zip(preds, data.instances)])
  assert ious.max() > 0  # some cells matched: not a trivial 0 == 0
  assert scores["seg"] == pytest.approx(ious.mean(), abs=1e-9)
  assert 0 <= scores["seg"] <= 1


def test_heldout_instances_of_own_data_are_written_as_label_tiffs(tiny_config, tmp_path):
  """Instance data whose names are not challenge frames (your own folder) still gets its
  instances: labels/NAME.tif, the instances that were scored, ids 1..n."""
  from unet_jax import config_lib, instances, tiling
  model, variables = _net(2, 4)
  data = _data("folder")
  evaluation.evaluate_split(model, variables, data, tiny_config, out_dir=tmp_path,
                            warping=False)
  assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["img_0.tif", "img_1.tif"]
  assert not list(tmp_path.glob("*_RES"))
  tile = config_lib.resolve(tiny_config, 1).eval_tile_size
  params = instances.InstanceParams.from_config(tiny_config)
  for i, im in enumerate(data.images):
    ref = instances.from_probability(
        tiling.predict_tiled(model, variables, im, tile_size=tile)[..., 1], params)
    written = tifffile.imread(tmp_path / "labels" / f"img_{i}.tif")
    assert written.dtype == np.uint16 and written.shape == ref.shape
    assert ref.max() > 0  # some objects: not a trivial all-background comparison
    # the same partition of the pixels (ids renumbered 1..n)
    pairs = set(zip(written.ravel().tolist(), ref.ravel().tolist()))
    assert len(pairs) == len(np.unique(ref)) == len(np.unique(written))
    assert set(np.unique(written)) == set(range(len(np.unique(ref))))


def test_scores_of_a_perfect_prediction(tiny_config):
  from unet_jax import instances
  data = _data("dic_hela")
  probs = [np.stack([1.0 - lab, lab], -1).astype(np.float32) for lab in data.labels]
  params = instances.InstanceParams.from_config(tiny_config)

  def split_scores(protocol):
    parts = [evaluation.score_probabilities(p, lab, ref, protocol, params, index=i)[0]
             for i, (p, lab, ref) in enumerate(zip(probs, data.labels, data.instances))]
    return evaluation.combine_image_scores(parts, protocol)

  scores, _ = split_scores("instance")
  assert scores["seg"] == 1.0 and scores["vrand"] == 1.0 and scores["pixel_error"] == 0.0
  scores, curves = split_scores("isbi")
  assert scores["vrand"] == 1.0 and scores["warping_error"] == 0.0
  assert curves["threshold"][0] == 0.0


def test_write_submission_shape_and_dtype(tiny_config, tmp_path):
  model, variables = _net(2, 4)
  volume = np.random.default_rng(0).integers(0, 255, (2, 30, 36), dtype=np.uint8)
  path = evaluation.write_submission(model, variables, volume, tmp_path / "sub.tif", tiny_config)
  stack = tifffile.imread(path)
  assert stack.shape == (2, 30, 36) and stack.dtype == np.float32
  assert 0 <= stack.min() and stack.max() <= 1
  # slice i is p(cell interior) = softmax channel 1 of slice i's own normalised image
  # (the challenge's convention), not 1 - p, not another slice
  from unet_jax import config_lib, datasets, tiling
  tile = config_lib.resolve(tiny_config, 1).eval_tile_size
  for i in range(2):
    p = tiling.predict_tiled(model, variables, datasets.normalize(volume[i]), tile_size=tile)
    np.testing.assert_allclose(stack[i], p[..., 1], atol=1e-6)
  assert np.abs(stack[0] - stack[1]).max() > 1e-3  # the slices differ


def test_watershed_postprocessing_is_what_gets_scored_and_submitted(tiny_config, tmp_path):
  """postprocess="watershed": the scores are the ISBI measures of
  instances.watershed_cell_mask of the probabilities, and the submission holds that mask."""
  from unet_jax import instances, metrics
  model, variables = _net(2, 4)
  data = _data("synthetic")
  probs = [p[..., 1] for p in evaluation.predict_images(model, variables, data.images,
                                                        tiny_config)]
  expected = metrics.isbi_scores([instances.watershed_cell_mask(p) for p in probs], data.labels)
  scores = evaluation.evaluate_split(model, variables, data, tiny_config, out_dir=tmp_path,
                                     postprocess="watershed")
  for key in ("vrand", "vinfo", "pixel_error", "warping_error", "best_threshold"):
    assert scores[key] == pytest.approx(expected[key], abs=1e-12), key
  assert json.loads((tmp_path / "metrics.json").read_text())["postprocess"] == "watershed"
  with pytest.raises(UserInputError, match="choose one of none, watershed"):
    evaluation.evaluate_split(model, variables, data, tiny_config, postprocess="watersheds")
  with pytest.raises(UserInputError, match="ISBI-style"):
    evaluation.evaluate_split(model, variables, _data("dic_hela"), tiny_config,
                              postprocess="watershed")
  volume = np.random.default_rng(0).integers(0, 255, (2, 30, 36), dtype=np.uint8)
  raw = tifffile.imread(evaluation.write_submission(model, variables, volume,
                                                    tmp_path / "raw.tif", tiny_config))
  mask = tifffile.imread(evaluation.write_submission(model, variables, volume,
                                                     tmp_path / "ws.tif", tiny_config,
                                                     postprocess="watershed"))
  assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
  np.testing.assert_array_equal(mask, [instances.watershed_cell_mask(p) for p in raw])


def test_safe_name():
  assert evaluation.safe_name("train-volume.tif:25") == "train-volume.tif_25"


# --------------------------------------------------------------------------
# A saved run: loading it, and evaluate.py end to end.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir holding the tiny config and a "best" checkpoint of random weights."""
  from configs import tiny
  from unet_jax import checkpoint, config_lib
  config = tiny.get_config()
  config.in_channels = 1
  model, variables = _net(config.depth, config.features)
  assert (model.depth, model.features) == (config.depth, config.features)
  path = tmp_path_factory.mktemp("run")
  config_lib.save(path, config)
  checkpoint.save_best(path, 1, variables["params"], {"vrand": 0.0})
  return path


def test_load_for_inference_round_trip(workdir):
  from unet_jax import inference
  config, model, variables = inference.load_for_inference(workdir, "best")
  _, saved = _net(config.depth, config.features)
  assert (model.depth, model.features, config.in_channels) == (2, 4, 1)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(saved)):
    np.testing.assert_array_equal(np.asarray(a), b)
  assert config.eval_tile_size >= 44  # resolved: raised to a usable tile
  with pytest.raises(UserInputError, match="no checkpoint"):
    inference.load_for_inference(workdir, "latest")  # only a best checkpoint was saved
  with pytest.raises(UserInputError, match="'best' or 'latest'"):
    inference.load_for_inference(workdir, "newest")


def test_loaded_model_heldout_submission_and_predict(workdir, tmp_path):
  """What evaluate.py's three modes call, on the loaded model."""
  from unet_jax import datasets, inference
  config, model, variables = inference.load_for_inference(workdir, "best")
  data = datasets.load_split(config, "val")
  scores = evaluation.evaluate_split(model, variables, data, config, out_dir=tmp_path / "eval")
  report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  assert report["num_images"] == scores["num_images"] == 1 and 0 <= report["vrand"] <= 1
  volume = np.random.default_rng(0).integers(0, 255, (2, 40, 40), np.uint8)
  stack = tifffile.imread(evaluation.write_submission(model, variables, volume,
                                                     tmp_path / "submission.tif", config))
  assert stack.shape == (2, 40, 40) and stack.dtype == np.float32
  from unet_jax import predict
  image = tmp_path / "cells.tif"
  tifffile.imwrite(image, np.random.default_rng(0).integers(0, 255, (37, 45), np.uint8))
  predict.predict_files(model, variables, image, tmp_path / "out", config, tta=True,
                        tile_size=48, progress=False)
  probs = tifffile.imread(tmp_path / "out" / "cells.tif_prob.tif")
  assert probs.shape == (2, 37, 45) and probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
  assert (tmp_path / "out" / "cells.tif_overlay.png").is_file()
  with pytest.raises(UserInputError, match="not found"):
    predict.predict_files(model, variables, tmp_path / "nope.tif", tmp_path / "o", config)
  with pytest.raises(UserInputError, match="44 or 48"):
    predict.predict_files(model, variables, image, tmp_path / "o", config, tile_size=47)


def _evaluate(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, str(REPO / "evaluate.py"), *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)


def test_cli_predict_ctrl_c_then_skip_existing(workdir, tmp_path):
  """Ctrl-C (SIGINT) once the first results are out: exit 130 and a line that says how to
  go on; the same command with --skip_existing then segments only the files left."""
  import signal
  import time
  inputs, out = tmp_path / "in", tmp_path / "out"
  inputs.mkdir()
  rng = np.random.default_rng(0)
  for i in range(60):
    tifffile.imwrite(inputs / f"c{i:02d}.tif", rng.integers(0, 255, (300, 300), np.uint8))
  args = [sys.executable, str(REPO / "evaluate.py"), f"--workdir={workdir}", "--mode=predict",
          f"--input={inputs}", f"--out={out}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 300
  while not list(out.glob("*_labels.tif")) and proc.poll() is None:
    assert time.monotonic() < deadline, "no results after 300 s"
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, err[-2000:]
  assert "Traceback" not in err, err[-2000:]
  assert err.strip().splitlines()[-1] == (
      f"interrupted: the files segmented so far are in {out}; add --skip_existing to the "
      "same command to segment the rest")
  done = sorted(p.name[:-len("_labels.tif")] for p in out.glob("*_labels.tif"))
  assert 1 <= len(done) < 60
  assert not (out / ".partial").exists()
  # every finished file has all four results, and nothing of an unfinished one is there
  assert sorted(p.name for p in out.iterdir()) == sorted(
      name + suffix for name in done for suffix in predict_suffixes())
  rerun = _evaluate(*args[2:], "--skip_existing")
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert f"60 of 60 files segmented, {4 * (60 - len(done))} files written" in rerun.stdout
  assert f"({len(done)} of them done by an earlier run" in rerun.stdout
  assert len(list(out.glob("*_labels.tif"))) == 60


def predict_suffixes():
  from unet_jax import predict
  return [*predict.SUFFIXES[:3], "_overlay.png"]


def test_cli_predict_batch_with_a_bad_file(workdir, tmp_path):
  """A folder with a broken file: the others are written, the summary names it, exit 1."""
  inputs = tmp_path / "in"
  inputs.mkdir()
  image = np.random.default_rng(0).integers(0, 255, (37, 45), np.uint8)
  tifffile.imwrite(inputs / "cells.tif", image)
  (inputs / "empty.tif").write_bytes(b"")
  out = tmp_path / "out"
  run = _evaluate(f"--workdir={workdir}", "--mode=predict", f"--input={inputs}",
                  f"--out={out}", "--tta", "--tile_size=48")
  assert run.returncode == 1, run.stderr
  assert "Traceback" not in run.stderr
  assert "1 of 2 files segmented" in run.stdout and "empty.tif is empty" in run.stdout
  probs = tifffile.imread(out / "cells.tif_prob.tif")
  assert probs.shape == (2, 37, 45) and probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
  assert (out / "cells.tif_overlay.png").is_file()
  # Nothing usable came out: bad input, exit 2 (the reason is still listed).
  run = _evaluate(f"--workdir={workdir}", "--mode=predict", f"--input={inputs / 'empty.tif'}",
                  f"--out={tmp_path / 'none'}", "--tile_size=48")
  assert run.returncode == 2 and "Traceback" not in run.stderr
  assert "0 of 1 files segmented" in run.stdout and "empty.tif is empty" in run.stdout
  # Outputs are never overwritten silently; --out inside --input is refused.
  run = _evaluate(f"--workdir={workdir}", "--mode=predict", f"--input={inputs}",
                  f"--out={out}", "--tile_size=48")
  assert run.returncode == 2 and "--overwrite" in run.stderr
  run = _evaluate(f"--workdir={workdir}", "--mode=predict", f"--input={inputs}",
                  f"--out={inputs / 'res'}", "--tile_size=48")
  assert run.returncode == 2 and "inside the input folder" in run.stderr
  run = _evaluate(f"--workdir={workdir}", "--mode=predict", f"--input={inputs}",
                  f"--out={tmp_path / 'ws'}", "--postprocess=watershed")
  assert run.returncode == 2 and "Traceback" not in run.stderr
  assert run.stderr.strip().splitlines()[-1].startswith("error: --postprocess works with")
  # --instances changes how the labels are made, on top of the run's config
  from unet_jax import config_lib, instances
  run = _evaluate(f"--workdir={workdir}", "--mode=predict", f"--input={inputs / 'cells.tif'}",
                  f"--out={tmp_path / 'ws'}", "--tile_size=48", "--instances=method=watershed",
                  "--instances=seed_threshold=0.6", "--instances=min_size=3")
  assert run.returncode == 0, run.stderr
  probs = tifffile.imread(tmp_path / "ws" / "cells.tif_prob.tif")
  saved = config_lib.load_saved(workdir)
  changed = config_lib.override_instances(saved, ["method=watershed", "seed_threshold=0.6",
                                                  "min_size=3"])
  expected = instances.from_probability(probs[1], instances.InstanceParams.from_config(changed))
  written = tifffile.imread(tmp_path / "ws" / "cells.tif_labels.tif")
  np.testing.assert_array_equal(written, expected)
  default = instances.from_probability(probs[1], instances.InstanceParams.from_config(saved))
  assert not np.array_equal(written, default)  # the flag changed the labels
  run = _evaluate(f"--workdir={workdir}", "--mode=predict", f"--input={inputs}",
                  f"--out={tmp_path / 'bad'}", "--instances=method=magic")
  assert run.returncode == 2 and "must be one of components, watershed" in run.stderr


def _clean_error(run, *needles) -> str:
  """Exit 2, no traceback, the last stderr line ``error: ...`` holding ``needles``."""
  assert run.returncode == 2, run.stderr[-3000:]
  assert "Traceback" not in run.stderr, run.stderr[-3000:]
  err = run.stderr.strip().splitlines()[-1]
  assert err.startswith("error: "), run.stderr[-3000:]
  for needle in needles:
    assert needle in err, (needle, err)
  return err


def test_cli_out_that_cannot_be_a_folder_is_one_line_before_any_work(workdir, tmp_path):
  """--out that is a file or lies under one, in each mode: one line, exit 2, before the
  checkpoint is loaded (so before any prediction)."""
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  image = tmp_path / "cells.tif"
  tifffile.imwrite(image, np.random.default_rng(0).integers(0, 255, (37, 45), np.uint8))
  for mode, out, needle in (("heldout", blocker, f"--out {blocker} is a file"),
                            ("submission", blocker / "s", "is not writable (Not a directory)"),
                            ("predict", blocker, f"--out {blocker} is a file")):
    run = _evaluate(f"--workdir={workdir}", f"--mode={mode}", f"--out={out}",
                    *([f"--input={image}"] if mode != "heldout" else []))
    _clean_error(run, needle)
    assert "loaded the" not in run.stderr, run.stderr  # no checkpoint was read
  # the other mistakes are found before --out is created
  for args, needle in ((["--mode=heldout"], "--workdir is required"),
                       ([f"--workdir={workdir}", "--onnx=m.onnx"], "--onnx works with"),
                       ([f"--workdir={workdir}", "--snapshots=2"], "--checkpoint latest"),
                       ([f"--workdir={workdir}", "--onnx=m.onnx", "--mode=predict",
                         f"--input={image}"], "--onnx and --workdir both name a model")):
    out = tmp_path / "never"
    run = _evaluate(*args, f"--out={out}")
    _clean_error(run, needle)
    assert not out.exists(), args


def test_cli_read_only_out_is_one_line(workdir, tmp_path):
  read_only = tmp_path / "read_only"
  read_only.mkdir(mode=0o555)
  if os.access(read_only, os.W_OK):
    pytest.skip("running as root: a 0o555 folder is writable")
  image = tmp_path / "cells.tif"
  tifffile.imwrite(image, np.random.default_rng(0).integers(0, 255, (37, 45), np.uint8))
  for mode in ("heldout", "submission", "predict"):
    run = _evaluate(f"--workdir={workdir}", f"--mode={mode}", f"--out={read_only / 'o'}",
                    *([f"--input={image}"] if mode != "heldout" else []))
    _clean_error(run, f"--out {read_only / 'o'} is not writable (Permission denied)")


def test_cli_explicit_config_is_validated(workdir, tmp_path):
  """--config is checked as train.py checks it: a bad field is one line, exit 2."""
  for field, needle in (("dtype=float16", "--config.dtype='float16'"),
                        ("eval_batch_size=0", "--config.eval_batch_size=0")):
    run = _evaluate(f"--workdir={workdir}", "--config", str(REPO / "configs" / "tiny.py"),
                    f"--config.{field}", f"--out={tmp_path / 'eval'}")
    _clean_error(run, needle)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_submission_input_must_be_a_grey_stack(workdir, tmp_path):
  """An RGB image is one colour image, never 96 slices of 96 x 3 px: refused."""
  from PIL import Image
  from unet_jax import submission
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 255, (96, 96, 3), np.uint8)
  Image.fromarray(rgb).save(tmp_path / "rgb.png")
  tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
  for name in ("rgb.png", "rgb.tif"):
    with pytest.raises(UserInputError, match=r"grey \[S, H, W\] stack.*1 RGB image"):
      submission.read_test_volume(tmp_path / name)
  grey = rng.integers(0, 255, (2, 40, 44), np.uint8)
  tifffile.imwrite(tmp_path / "grey.tif", grey)
  np.testing.assert_array_equal(submission.read_test_volume(tmp_path / "grey.tif"), grey)
  Image.fromarray(grey[0]).save(tmp_path / "grey.png")
  np.testing.assert_array_equal(submission.read_test_volume(tmp_path / "grey.png"), grey[:1])
  run = _evaluate(f"--workdir={workdir}", "--mode=submission", f"--input={tmp_path / 'rgb.png'}",
                  f"--out={tmp_path / 'sub'}")
  _clean_error(run, str(tmp_path / "rgb.png"), "grey [S, H, W] stack")
  assert not (tmp_path / "sub" / "submission.tif").exists()


@pytest.mark.slow
def test_train_then_evaluate(tmp_path):
  """The real CLIs once end to end: train.py writes a run, evaluate.py scores it,
  and the scores equal the library's on the same checkpoint."""
  from unet_jax import datasets, inference
  env = dict(os.environ, JAX_PLATFORMS="cpu", UNET_JAX_CACHE=str(tmp_path / "cache"))
  train = subprocess.run([sys.executable, "train.py", "--config", "configs/tiny.py",
                          f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
  assert train.returncode == 0, train.stderr[-3000:]
  run = subprocess.run([sys.executable, "evaluate.py", f"--workdir={tmp_path / 'run'}",
                        f"--out={tmp_path / 'eval'}"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "| vrand |" in run.stdout
  report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  config, model, variables = inference.load_for_inference(tmp_path / "run", "best")
  scores = evaluation.evaluate_split(model, variables, datasets.load_split(config, "val"),
                                     config)
  assert report["num_images"] == 1
  for key in ("vrand", "vinfo", "pixel_error", "warping_error", "best_threshold"):
    assert report[key] == pytest.approx(scores[key], abs=1e-6), key


def test_describe_submission(tmp_path):
  from PIL import Image
  from unet_jax import submission
  from unet_jax.errors import UserInputError
  rng = np.random.default_rng(0)
  stack = rng.random((30, 64, 64)).astype(np.float32)
  path = tmp_path / "sub.tif"
  tifffile.imwrite(path, stack)
  volume = rng.integers(0, 255, (30, 64, 64), np.uint8)
  info = submission.describe_submission(path, volume)
  assert info["shape"] == [30, 64, 64] and info["mean"] == pytest.approx(stack.mean())
  import hashlib
  assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
  with Image.open(info["preview"]) as im:
    assert im.width > im.height  # three slices side by side, two rows
  tifffile.imwrite(path, (stack * 255).astype(np.uint8))
  with pytest.raises(UserInputError, match="float32"):
    submission.describe_submission(path)


def test_postprocessing_script_scores_only_the_named_variants(tiny_run, tmp_path):
  """scripts/isbi_postprocessing.py --only: a setting chosen on validation, applied alone."""
  def script(*args):
    return subprocess.run([sys.executable, "scripts/isbi_postprocessing.py", "--workdir",
                           str(tiny_run), "--split", "val", "--out", str(tmp_path / "pp.md"),
                           *args], cwd=REPO, capture_output=True, text=True, timeout=600)

  chosen = ["watershed, seeds p > 0.7, seeds >= 20 px", "raw probabilities"]
  proc = script(*[a for name in chosen for a in ("--only", name)], "--per_slice")
  assert proc.returncode == 0, proc.stderr[-2000:]
  text = (tmp_path / "pp.md").read_text()
  lines, per_slice = text.split("## Per slice")[0].strip().splitlines(), text.split("## Per slice")[1]
  rows = [l[2:].split(" | ")[0] for l in lines if l.startswith("| ") and "V_rand" not in l]
  assert rows == chosen[::-1]  # the table's order, nothing else scored
  scores = [float(v) for l in lines[-2:] for v in l.split(" | ")[1:3]]  # V_rand, V_info
  assert len(scores) == 4 and all(0 <= v <= 1 for v in scores)
  # Per slice: every (slice, variant) once; the truth's cell count by scikit-image.
  from skimage.measure import label as sk_label
  from unet_jax import config_lib, datasets
  data = datasets.load_split(config_lib.load_saved(tiny_run), "val")
  cells = [l.strip("| ").split(" | ") for l in per_slice.splitlines() if l.startswith("| ")
           and not l.startswith("| slice")]
  assert cells and [(c[0], c[1]) for c in cells] == [(n, v) for n in data.names
                                                     for v in chosen[::-1]]
  for c in cells:
    truth = data.labels[data.names.index(c[0])] == 1
    assert int(c[-1]) == sk_label(truth, connectivity=1).max()
  proc = script("--only", "watershed p > 0.7")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.startswith("error: unknown --only 'watershed p > 0.7'; the variants are: ")


def test_snapshot_ensemble_averages_the_last_checkpoints(tiny_run, tmp_path):
  """evaluate.py --snapshots N: the last N periodic checkpoints, probabilities averaged."""
  import orbax.checkpoint as ocp

  from unet_jax import checkpoint, config_lib, datasets, inference

  assert checkpoint.periodic_steps(tiny_run) == [3, 6, 9]
  config, model, members = inference.load_snapshots(tiny_run, 2)
  assert len(members) == 2
  # The members are the checkpoints of steps 6 and 9, read here with orbax alone.
  for member, step in zip(members, (6, 9)):
    raw = ocp.StandardCheckpointer().restore(tiny_run / "checkpoints" / str(step) / "state")
    for got, want in zip(jax.tree.leaves(member["params"]), jax.tree.leaves(raw["params"])):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  data = datasets.load_split(config_lib.load_saved(tiny_run), "val")
  images = data.images[:1]
  each = [evaluation.predict_images(model, m, images, config) for m in members]
  assert not np.allclose(each[0][0], each[1][0])  # two different models
  both = evaluation.predict_images(model, members, images, config)
  np.testing.assert_allclose(both[0], (each[0][0] + each[1][0]) / 2, atol=1e-6)
  with pytest.raises(UserInputError, match=r"4 snapshots asked, but .* keeps 3 \(\[3, 6, 9\]\)"):
    inference.load_snapshots(tiny_run, 4)
  proc = subprocess.run([sys.executable, "evaluate.py", "--workdir", str(tiny_run),
                         "--snapshots", "2", "--out", str(tmp_path / "e")], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "--checkpoint latest" in proc.stderr


def test_tta_is_passed_on_to_predictions_scores_and_submission(tiny_config, tmp_path):
  """``tta=True`` in ``predict_images``, ``evaluate_split`` and ``write_submission``
  against the mean, built here, of the non-TTA tiled probabilities of the 8
  flipped/rotated images mapped back (a random, asymmetric net): the probabilities,
  the scores computed from them, and the submitted p(cell); the scores without TTA
  differ, so a dropped ``tta`` fails."""
  from unet_jax import datasets, metrics, tiling
  model, variables = _net(2, 4)
  data = _data("synthetic", seed=1)
  plain = functools.partial(tiling.predict_tiled, model, variables,
                            tile_size=tiny_config.eval_tile_size)
  want = [tta_by_hand(plain, im)[0] for im in data.images]
  got = evaluation.predict_images(model, variables, data.images, tiny_config, tta=True)
  for g, w, im in zip(got, want, data.images):
    np.testing.assert_allclose(g, w, atol=1e-6, rtol=0)
    assert np.abs(g - plain(im)).max() > 1e-3
  keys = ("vrand", "vinfo", "rand_error", "pixel_error", "best_threshold")
  scores = evaluation.evaluate_split(model, variables, data, tiny_config, tta=True,
                                     warping=False)
  ref = metrics.isbi_scores([w[..., 1] for w in want], data.labels, warping=False)
  for key in keys:
    assert scores[key] == pytest.approx(ref[key], abs=1e-6), key
  no_tta = evaluation.evaluate_split(model, variables, data, tiny_config, warping=False)
  assert any(abs(no_tta[k] - scores[k]) > 1e-4 for k in keys)
  volume = np.random.default_rng(0).integers(0, 255, (2, 30, 36), dtype=np.uint8)
  stack = tifffile.imread(evaluation.write_submission(model, variables, volume,
                                                     tmp_path / "sub.tif", tiny_config,
                                                     tta=True))
  for i in range(2):
    p = tta_by_hand(plain, datasets.normalize(volume[i]))[0]
    np.testing.assert_allclose(stack[i], p[..., 1], atol=1e-6, rtol=0)
