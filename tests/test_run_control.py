"""One training per workdir (lock) and save-on-signal with an exact resume."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.test_train import REPO, _assert_trees_equal, _params, run_cli
from unet_jax import run_control, train_lib
from unet_jax.errors import UserInputError


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
  monkeypatch.setenv("UNET_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_lock_refuses_a_second_run_and_takes_over_a_stale_one(tmp_path, caplog):
  with run_control.WorkdirLock(tmp_path):
    lock = json.loads((tmp_path / "train.lock").read_text())
    assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname()
    with pytest.raises(UserInputError, match=f"in use by another training \\(process "
                       f"{os.getpid()} on {socket.gethostname()}"):
      run_control.WorkdirLock(tmp_path).acquire()
  assert not (tmp_path / "train.lock").exists()  # released
  dead = _dead_pid()
  (tmp_path / "train.lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
  with run_control.WorkdirLock(tmp_path):
    assert json.loads((tmp_path / "train.lock").read_text())["pid"] == os.getpid()
  assert f"stale lock" in caplog.text and str(dead) in caplog.text
  # Another host's lock cannot be checked: refused, with how to remove it.
  (tmp_path / "train.lock").write_text(json.dumps({"pid": dead, "host": "elsewhere"}))
  with pytest.raises(UserInputError, match="elsewhere.*delete .*train.lock"):
    run_control.WorkdirLock(tmp_path).acquire()


def test_second_train_py_on_a_locked_workdir_exits_2(tmp_path):
  with run_control.WorkdirLock(tmp_path):
    proc = run_cli("train.py", "--config", "configs/tiny.py", f"--workdir={tmp_path}")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and f"process {os.getpid()}" in last
  assert not (tmp_path / "config.json").exists()  # the running one's files are untouched


@pytest.mark.slow
@pytest.mark.parametrize("signum,async_save", [(signal.SIGINT, "off"), (signal.SIGTERM, "on")])
def test_signal_saves_and_the_rerun_resumes_bit_identically(tiny_config, tmp_path, signum,
                                                            async_save):
  """Signal mid-run: checkpoint at the step reached, exit 128+signum; resume = no signal.
  With background saves too: the run waits for the write before it exits."""
  overrides = {"eval_every": 0, "checkpoint_every": 100000, "log_every": 1,
               "async_checkpoints": async_save}
  args = ["train.py", "--config", "configs/tiny.py", "--config.num_steps=100000",
          *(f"--config.{k}={v}" for k, v in overrides.items()), f"--workdir={tmp_path / 'run'}"]
  proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
  metrics = tmp_path / "run" / "metrics.jsonl"
  deadline = time.time() + 600  # generous: a loaded CI machine, not a timing assert
  while time.time() < deadline and proc.poll() is None:
    if metrics.is_file() and sum(json.loads(line).get("split") == "train"
                                 for line in metrics.read_text().splitlines()
                                 if line.strip()) >= 3:
      break  # three steps done (log_every=1)
    time.sleep(0.05)
  assert proc.poll() is None, proc.stderr.read()[-2000:]
  proc.send_signal(signum)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 128 + signum, err[-2000:]
  assert "Traceback" not in err
  saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert len(saved) == 1 and saved[0] >= 3, saved
  assert f"checkpoint saved at step {saved[0]}" in err
  assert not (tmp_path / "run" / "train.lock").exists()
  # Resume for two more steps, and compare with an uninterrupted run of as many steps.
  c = tiny_config
  for k, v in overrides.items():
    setattr(c, k, v)
  c.num_steps = saved[0] + 2
  train_lib.train_and_evaluate(c, str(tmp_path / "run"))
  train_lib.train_and_evaluate(c, str(tmp_path / "ref"))
  _assert_trees_equal(_params(tmp_path / "ref"), _params(tmp_path / "run"))
