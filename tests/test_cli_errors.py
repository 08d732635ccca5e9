"""Bad input through the real CLI: exit code 2, one clear message, no traceback."""

import pathlib

import numpy as np
import pytest
import tifffile

from tests import data_helpers
from tests.test_train import run_cli

TINY = ["train.py", "--config", "configs/tiny.py", "--config.eval_every=0"]


def assert_clean_error(proc, *needles):
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  err = proc.stderr.strip().splitlines()[-1]
  assert err.startswith("error: "), proc.stderr[-3000:]
  for needle in needles:
    assert needle in err, (needle, err)
  return err


def _isbi_folder(tmp_path, **kw):
  data = tmp_path / "data"
  data_helpers.write_isbi(data / "isbi2012", n=3, size=64, **kw)
  return data


def _isbi_args(data, workdir):
  return ["train.py", "--config", "configs/isbi.py", f"--config.data_dir={data}",
          "--config.tile_size=204", "--config.features=2", "--config.train_indices=0-1",
          "--config.val_indices=2", f"--workdir={workdir}"]


def test_truncated_tiff_names_the_file(tmp_path):
  data = _isbi_folder(tmp_path)
  f = data / "isbi2012" / "train-labels.tif"
  f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  assert_clean_error(run_cli(*_isbi_args(data, tmp_path / "w")), str(f), "cannot read")


def test_image_label_count_mismatch(tmp_path):
  data = _isbi_folder(tmp_path)
  labels = tifffile.imread(data / "isbi2012" / "train-labels.tif")
  tifffile.imwrite(data / "isbi2012" / "train-labels.tif", labels[:2])
  assert_clean_error(run_cli(*_isbi_args(data, tmp_path / "w")), "3 images but 2 label images")


def test_label_values_outside_expected(tmp_path):
  data = _isbi_folder(tmp_path)
  labels = tifffile.imread(data / "isbi2012" / "train-labels.tif")
  labels[0, 0, 0] = 7
  tifffile.imwrite(data / "isbi2012" / "train-labels.tif", labels)
  assert_clean_error(run_cli(*_isbi_args(data, tmp_path / "w")), "must be 0 (membrane) or 255",
                     "[7]")


def test_invalid_tile_size_names_nearest_valid_sizes(tmp_path):
  proc = run_cli("train.py", "--config", "configs/synthetic.py", "--config.tile_size=570",
                 f"--workdir={tmp_path}")
  assert_clean_error(proc, "tile_size", "556 or 572")


def test_too_small_eval_tile(tmp_path):
  proc = run_cli("train.py", "--config", "configs/synthetic.py", "--config.eval_tile_size=188",
                 f"--workdir={tmp_path}")
  assert_clean_error(proc, "eval_tile_size", "204")


@pytest.mark.parametrize("args,needles", [
    (["--config.tile_sise=60"], ["tile_sise", "tile_size", "configs/default.py"]),
    (["--config.tile_size=abc"], ["--config.tile_size=abc", "invalid literal"]),
    (["--dry_run=maybe"], ["--dry_run=maybe"]),
    (["--no_such_flag"], ["no_such_flag"]),
    (["--config.num_steps=0"], ["--config.num_steps=0", "must be >= 1"]),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, args, needles):
  assert_clean_error(run_cli(*TINY, *args, f"--workdir={tmp_path}"), *needles)


def test_default_config_with_unknown_field(tmp_path):
  # No --config: the default file is loaded while the flag is defined.
  assert_clean_error(run_cli("train.py", "--config.tile_sise=60", f"--workdir={tmp_path}"),
                     "tile_sise")


@pytest.mark.parametrize("content,needle", [
    (None, "config file not found"),
    ("def get_config(:\n", "syntax error at line 1"),
    ("x = 1\n", "no get_config()"),
    ("def get_config():\n  raise RuntimeError('boom')\n", "RuntimeError: boom"),
])
def test_missing_or_broken_config_file(tmp_path, content, needle):
  path = tmp_path / "my_config.py"
  if content is not None:
    path.write_text(content)
  proc = run_cli("train.py", f"--config={path}", f"--workdir={tmp_path / 'w'}")
  assert_clean_error(proc, str(path), needle)


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_data_dir_says_how_to_download(tmp_path, make):
  data = tmp_path / "data"
  if make == "empty":
    data.mkdir()
  proc = run_cli(*_isbi_args(data, tmp_path / "w"))
  assert_clean_error(proc, str(data), "python -m unet_jax.datasets download --dataset isbi2012")


def test_checkpoint_of_another_architecture(tmp_path):
  first = run_cli(*TINY, "--config.num_steps=2", f"--workdir={tmp_path}")
  assert first.returncode == 0, first.stderr[-2000:]
  proc = run_cli(*TINY, "--config.num_steps=4", "--config.features=8", f"--workdir={tmp_path}")
  assert_clean_error(proc, "different architecture", "features: 4 (checkpoint) vs 8")
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]  # nothing lost


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  assert_clean_error(run_cli(*TINY, f"--workdir={blocker / 'run'}"), "not writable")


def test_non_finite_loss_exit_code_and_message(tmp_path):
  proc = run_cli(*TINY, "--config.num_steps=30", "--config.learning_rate=1e12",
                 f"--workdir={tmp_path}")
  err = assert_clean_error(proc, "non-finite", "learning_rate")
  assert "step " in err


def test_dry_run_prints_sizes_and_writes_nothing(tmp_path):
  proc = run_cli("train.py", "--config", "configs/synthetic.py", "--dry_run",
                 f"--workdir={tmp_path / 'w'}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = proc.stdout
  for needle in ("parameters", "1,940,834", "input tile", "252", "output tile", "68",
                 "estimated peak memory", "one train step"):
    assert needle in out, (needle, out[-2000:])
  assert not (tmp_path / "w").exists()


def test_dry_run_needs_no_data(tmp_path):
  proc = run_cli("train.py", "--config", "configs/isbi.py", "--config.dataset=folder",
                 f"--config.data_dir={tmp_path / 'nothing'}", "--config.features=2",
                 "--config.tile_size=204", "--dry_run", env={"UNET_JAX_DATA": ""})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "sizes are for in_channels=1" in proc.stdout and "one train step" in proc.stdout


def test_download_help_names_the_citations():
  proc = run_cli("-m", "unet_jax.datasets", "download", "--help")
  assert proc.returncode == 0
  for needle in ("Arganda-Carreras", "Cardona", "Ulman", "Cell Tracking Challenge"):
    assert needle in proc.stdout
