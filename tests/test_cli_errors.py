"""Bad input gives one clear message naming the culprit.

The library raises ``UserInputError`` (checked here in-process); ``cli.run``
turns it into one line on stderr and exit code 2 (checked once end to end).
Flag parsing errors are checked in-process on a private ``FlagValues``.
"""

import json
import logging
import os
import pathlib
import subprocess
import sys

import pytest
import tifffile
from absl import flags
from ml_collections import config_flags

from tests import data_helpers
from unet_jax import cli, config_lib, train_lib
from unet_jax.errors import UserInputError

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
  monkeypatch.setenv("UNET_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


TINY = ["train.py", "--config", "configs/tiny.py", "--config.eval_every=0"]


def run_cli(*args, timeout=300, env=None):
  """Runs a top-level script like a user would; returns CompletedProcess."""
  full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=full_env)


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


def _isbi_config(data):
  c = config_lib.load_file(REPO / "configs" / "isbi.py")
  c.data_dir, c.tile_size, c.features = str(data), 204, 2
  c.train_indices, c.val_indices = "0-1", "2"
  return c


def _train_error(config, workdir, *needles) -> str:
  with pytest.raises(UserInputError) as e:
    train_lib.train_and_evaluate(config, str(workdir))
  message = str(e.value)
  assert "\n" not in message, message
  for needle in needles:
    assert needle in message, (needle, message)
  return message


def test_truncated_tiff_names_the_file(tmp_path):
  data = _isbi_folder(tmp_path)
  f = data / "isbi2012" / "train-labels.tif"
  f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  _train_error(_isbi_config(data), tmp_path / "w", str(f), "cannot read")


def test_image_label_count_mismatch(tmp_path):
  data = _isbi_folder(tmp_path)
  labels = tifffile.imread(data / "isbi2012" / "train-labels.tif")
  tifffile.imwrite(data / "isbi2012" / "train-labels.tif", labels[:2])
  _train_error(_isbi_config(data), tmp_path / "w", "3 images but 2 label images")


def test_label_values_outside_expected(tmp_path):
  data = _isbi_folder(tmp_path)
  labels = tifffile.imread(data / "isbi2012" / "train-labels.tif")
  labels[0, 0, 0] = 7
  tifffile.imwrite(data / "isbi2012" / "train-labels.tif", labels)
  _train_error(_isbi_config(data), tmp_path / "w", "must be 0 (membrane) or 255", "[7]")


def test_load_file_works_from_any_directory(tmp_path):
  """A library user outside the repository (unet_jax importable, the repository root not
  on sys.path), in a project with a ``configs`` package of its own, loads a variant
  config: its ``from configs import default`` resolves to the repository's, and
  afterwards ``configs`` is the project's again."""
  site = tmp_path / "site"
  site.mkdir()
  (site / "unet_jax").symlink_to(REPO / "unet_jax")
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "__init__.py").write_text("OWN = True\n")
  code = ("import json, sys; from unet_jax import config_lib; "
          f"c = config_lib.load_file({str(REPO / 'configs' / 'isbi.py')!r}); "
          "assert 'configs' not in sys.modules; import configs; assert configs.OWN; "
          f"c = config_lib.load_file({str(REPO / 'configs' / 'isbi.py')!r}); "
          "assert sys.modules['configs'] is configs and 'configs.default' not in sys.modules; "
          f"assert {str(REPO)!r} not in sys.path; "
          "print(json.dumps([c.dataset, c.features, c.tile_size]))")
  env = dict(os.environ, PYTHONPATH=str(site))
  run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr
  expected = config_lib.load_file(REPO / "configs" / "isbi.py")
  assert json.loads(run.stdout) == [expected.dataset, expected.features, expected.tile_size]


def test_load_file_ignores_the_callers_command_line(monkeypatch):
  """A script run as ``bench.py --config configs/isbi.py`` (benchmarks/loader.py)
  loads the file it names, not None: its own argv is not read as overrides."""
  monkeypatch.setattr(sys, "argv", ["bench.py"])
  expected = config_lib.load_file(REPO / "configs" / "synthetic.py").to_dict()
  monkeypatch.setattr(sys, "argv", ["bench.py", "--config", "configs/isbi.py",
                                    "--config.features=3"])
  c = config_lib.load_file(REPO / "configs" / "synthetic.py")
  assert c is not None and c.to_dict() == expected


@pytest.mark.parametrize("field, value, needles", [
    ("tile_size", 570, ("tile_size", "556 or 572")),
    ("eval_tile_size", 188, ("eval_tile_size", "204")),
])
def test_invalid_tile_sizes_name_the_valid_ones(field, value, needles):
  c = config_lib.load_file(REPO / "configs" / "synthetic.py")
  c[field] = value
  with pytest.raises(UserInputError) as e:
    config_lib.validate(c)
  assert all(n in str(e.value) for n in needles), str(e.value)


@pytest.mark.parametrize("args,needles", [
    (["--config.tile_sise=60"], ["tile_sise", "tile_size", "configs/default.py"]),
    (["--config.tile_size=abc"], ["--config.tile_size=abc", "invalid literal"]),
    (["--dry_run=maybe"], ["--dry_run=maybe"]),
    (["--no_such_flag"], ["no_such_flag"]),
    (["--config.num_steps=0"], ["--config.num_steps=0", "must be >= 1"]),
    # found at start, not at the first validation (which is steps into the run)
    (["--config.instances.method=watershd"],
     ["--config.instances.method='watershd'", "components, watershed"]),
    (["--config.val_indices=2"], ["config.train_indices = '0-2' and config.val_indices = '2'",
                                  "share image(s) 2", "disjoint"]),
    (["--config.ctc_truth=gold"], ["--config.ctc_truth='gold'", "'st'", "'gt'"]),
    (["--config.heldout_indices=3"], ["config.val_indices = '3' and config.heldout_indices = "
                                      "'3'", "share image(s) 3"]),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, args, needles):
  assert_clean_error(run_cli(*TINY, *args, f"--workdir={tmp_path}"), *needles)
  assert not list(tmp_path.glob("checkpoints/*")), "refused before any training"


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
  if "boom" in needle:  # a ValueError reaches absl's parser, which puts the stack in its
    path.write_text(content.replace("RuntimeError", "ValueError"))  # message: not in ours
    proc = run_cli("train.py", f"--config={path}", f"--workdir={tmp_path / 'w'}")
    assert_clean_error(proc, str(path), f"raised: ValueError: boom ({path}, line 2)")
    err = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and len(err) - 2 * len(str(path)) < 100, err


def test_a_broken_config_given_with_a_space_is_named(tmp_path):
  """``--config PATH`` (not ``--config=PATH``) names PATH, not "(default)"."""
  path = tmp_path / "my_config.py"
  path.write_text("def get_config(:\n")
  proc = run_cli("train.py", "--config", str(path), f"--workdir={tmp_path / 'w'}")
  assert_clean_error(proc, f"--config {path}: syntax error at line 1")


def test_a_json_config_says_how_configs_work(tmp_path):
  """A workdir's config.json given as --config: one line that says what --config takes."""
  path = tmp_path / "config.json"
  path.write_text("{\"features\": 4}")
  proc = run_cli("evaluate.py", f"--workdir={tmp_path}", "--config", str(path))
  assert_clean_error(proc, str(path), "get_config()", "config.json is used when --config is "
                     "not given")


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_help_exits_0(script):
  proc = run_cli(script, "--help")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "--workdir" in proc.stdout


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_data_dir_says_how_to_download(tmp_path, make):
  data = tmp_path / "data"
  if make == "empty":
    data.mkdir()
  _train_error(_isbi_config(data), tmp_path / "w", str(data),
               "python -m unet_jax.data_tool download --dataset isbi2012")


def test_unwritable_workdir(tiny_config, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  _train_error(tiny_config, blocker / "run", "not writable")


# ----------------------------------------------------------------------------- flags


@pytest.fixture
def train_flags():
  """train.py's flags on a private FlagValues (the global FLAGS stay untouched)."""
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", "configs/synthetic.py", "", flag_values=fv,
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  return fv


def _parse(fv, monkeypatch, *args):
  argv = ["train.py", *args]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads --config.* overrides there
  return cli.parse_flags(argv, fv)


def _flag_error(fv, capsys, monkeypatch, *args) -> str:
  with pytest.raises(SystemExit) as e:
    _parse(fv, monkeypatch, *args)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: "), err
  return err


def test_unknown_config_field(train_flags, capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  err = _flag_error(train_flags, capsys, monkeypatch, "--config", "configs/tiny.py",
                    "--config.tile_sise=60")
  assert "tile_sise" in err and "configs/default.py" in err


def test_unparsable_field_value(train_flags, capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  err = _flag_error(train_flags, capsys, monkeypatch, "--config", "configs/tiny.py",
                    "--config.tile_size=abc")
  assert "tile_size" in err and "abc" in err


@pytest.mark.parametrize("form", ["separate", "equals", "with_override"])
def test_missing_config_file(train_flags, capsys, monkeypatch, form):
  args = {"separate": ["--config", "no/such/file.py"],
          "equals": ["--config=no/such/file.py"],
          "with_override": ["--config=no/such/file.py", "--config.depth=3"]}[form]
  err = _flag_error(train_flags, capsys, monkeypatch, *args)
  assert "no/such/file.py" in err and "not found" in err


def test_good_flags_parse(train_flags, monkeypatch):
  monkeypatch.chdir(REPO)
  _parse(train_flags, monkeypatch, "--config", "configs/tiny.py", "--config.depth=3",
         "--workdir=w")
  assert train_flags.config.depth == 3 and train_flags.workdir == "w"


# ----------------------------------------------------------------------------- end to end


def test_cli_user_errors_are_one_line_exit_2(tmp_path):
  """The real train.py: a missing config file, then a missing data folder."""
  for args, needle in (
      (["--config", "no/such/file.py"], "no/such/file.py: config file not found"),
      (["--config", "configs/isbi.py", f"--config.data_dir={tmp_path / 'nope'}"],
       "python -m unet_jax.data_tool download --dataset isbi2012")):
    proc = subprocess.run([sys.executable, "train.py", *args, f"--workdir={tmp_path / 'w'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
def test_dry_run_needs_no_data(tmp_path):
  proc = run_cli("train.py", "--config", "configs/isbi.py", "--config.dataset=folder",
                 f"--config.data_dir={tmp_path / 'nothing'}", "--config.features=2",
                 "--config.depth=2", "--config.tile_size=60", "--dry_run",
                 env={"UNET_JAX_DATA": ""})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "sizes are for in_channels=1" in proc.stdout and "one train step" in proc.stdout


def test_download_help_names_the_citations():
  proc = run_cli("-m", "unet_jax.data_tool", "download", "--help")
  assert proc.returncode == 0
  for needle in ("Arganda-Carreras", "Cardona", "Ulman", "Cell Tracking Challenge"):
    assert needle in proc.stdout


# ----------------------------------------------------------------------------- file system


def _run_main(main, capsys) -> str:
  """``cli.run`` around ``main`` (no flags to parse); returns its one stderr line.

  ``cli.run`` sets the ``unet_jax`` logger to INFO, as a CLI's process should; in this
  pytest worker that would hide later tests' debug records, so the level is restored."""
  import logging
  import types
  app = types.SimpleNamespace(run=lambda f, flags_parser: f(["prog"]))
  logger = logging.getLogger("unet_jax")
  level = logger.level
  with pytest.raises(SystemExit) as e:
    try:
      cli.run(app, main)
    finally:
      logger.setLevel(level)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
  return err


def test_runner_turns_file_system_errors_into_one_line(tmp_path, capsys):
  """An OSError of a full disk, a read-only or forbidden path, or a file in the way
  that escapes a CLI is one line naming the path (exit 2); other errors keep their
  traceback."""
  import errno

  def raise_(exc):
    def main(argv):
      raise exc
    return main

  err = _run_main(raise_(OSError(errno.ENOSPC, "No space left on device", "/w/ckpt")), capsys)
  assert ("no space left on device writing /w/ckpt: free space, then re-run (training "
          "resumes from its last checkpoint)") in err
  err = _run_main(raise_(OSError(errno.EROFS, "Read-only file system", "/ro/x")), capsys)
  assert "/ro/x" in err and "Read-only file system" in err
  # wrapped by a library (raise ... from): its cause decides
  wrapped = RuntimeError("save failed")
  wrapped.__cause__ = PermissionError(errno.EACCES, "Permission denied", "/p/q")
  err = _run_main(raise_(wrapped), capsys)
  assert "/p/q" in err and "Permission denied" in err
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  err = _run_main(lambda argv: (blocker / "sub").mkdir(parents=True), capsys)  # ENOTDIR
  assert str(blocker / "sub") in err and "Not a directory" in err
  err = _run_main(lambda argv: blocker.mkdir(), capsys)  # EEXIST
  assert str(blocker) in err and "File exists" in err
  import types
  app = types.SimpleNamespace(run=lambda f, flags_parser: f(["prog"]))
  logger = logging.getLogger("unet_jax")
  level = logger.level  # cli.run sets INFO (see _run_main)
  try:
    for other in (FileNotFoundError(errno.ENOENT, "No such file", "/n"), RuntimeError("bug")):
      with pytest.raises(type(other)):
        cli.run(app, raise_(other))
  finally:
    logger.setLevel(level)


def _data_tool(capsys, *args) -> str:
  from unet_jax import data_tool
  assert data_tool.main(list(args)) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: "), err
  return err


@pytest.mark.parametrize("content, needle", [
    ("def get_config(:\n", "syntax error at line 1"),
    (None, "not a workdir's config.json"),
    ("from configs import tiny\n\ndef get_config():\n  c = tiny.get_config()\n"
     "  c.tile_size = 61\n  return c\n", "nearest valid sizes: 60 or 64"),
])
def test_data_tool_preview_checks_the_config_like_train(tmp_path, capsys, content, needle):
  """A broken file, a workdir's config.json, an invalid field: train.py's one line."""
  if content is None:
    path = tmp_path / "config.json"
    path.write_text('{"features": 4, "use": true}')
  else:
    path = tmp_path / "my_config.py"
    path.write_text(content)
  err = _data_tool(capsys, "preview", "--config", str(path), "--out", str(tmp_path / "p"))
  assert needle in err, err


def test_data_tool_output_folders_are_checked_before_any_work(tmp_path, capsys):
  """--out / --dest that is a file, lies under a file or is read-only: one line."""
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  tiny = str(REPO / "configs" / "tiny.py")
  err = _data_tool(capsys, "preview", "--config", tiny, "--out", str(blocker))
  assert f"--out {blocker} is a file" in err
  err = _data_tool(capsys, "preview", "--config", tiny, "--out", str(blocker / "p"))
  assert f"--out {blocker / 'p'} is not writable" in err
  err = _data_tool(capsys, "download", "--dataset", "isbi2012", "--dest", str(blocker / "d"),
                   "--url-base", "http://127.0.0.1:9")  # never reached
  assert f"--dest {blocker / 'd'} is not writable" in err


def read_only_dir(tmp_path) -> pathlib.Path:
  """A folder of mode 0o555; skips the test where it is writable (running as root)."""
  folder = tmp_path / "read_only"
  folder.mkdir(mode=0o555)
  if os.access(folder, os.W_OK):
    pytest.skip("running as root: a 0o555 folder is writable")
  return folder


def test_data_tool_read_only_out(tmp_path, capsys):
  readonly = read_only_dir(tmp_path)
  err = _data_tool(capsys, "preview", "--config", str(REPO / "configs" / "tiny.py"),
                   "--out", str(readonly / "p"))
  assert f"--out {readonly / 'p'} is not writable (Permission denied)" in err
