"""The training loop on the tiny config: learning, exact resume, crash safety, NaN guard."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from unet_jax import checkpoint, train_lib
from unet_jax.errors import NonFiniteError

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
  monkeypatch.setenv("UNET_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _params(workdir, which="latest"):
  _, _, variables = checkpoint.load_for_inference(workdir, which)
  return jax.tree.map(np.asarray, variables["params"])


def _assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)  # bit-identical


def run_cli(*args, timeout=300, env=None):
  """Runs a top-level script like a user would; returns CompletedProcess."""
  full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=full_env)


def test_tiny_training_loss_falls(tiny_config, tmp_path):
  from unet_jax import data as data_lib
  from unet_jax import datasets

  c = tiny_config
  c.num_steps, c.eval_every, c.log_every, c.checkpoint_every = 60, 0, 5, 60
  state = train_lib.train_and_evaluate(c, str(tmp_path))
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in rows if r["split"] == "train"]
  assert len(losses) == 12 and all(np.isfinite(losses))
  # the loss on fixed batches (another seed) falls well below the initial one
  model = train_lib.make_model(c)
  init = train_lib.create_train_state(c, model, jax.random.PRNGKey(c.seed))
  probe = c.copy_and_resolve_references()
  probe.seed = 123
  it = data_lib.make_train_iterator(probe, datasets.load_split(probe, "train"))
  batches = [next(it) for _ in range(8)]
  eval_step = train_lib.make_eval_step(model)
  loss = lambda params: np.mean([float(eval_step(params, b)["loss"]) for b in batches])  # noqa: E731
  assert loss(state.params) < 0.5 * loss(init.params)
  for name in ("config.json", "versions.json", "curves.png"):
    assert (tmp_path / name).is_file(), name
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert json.loads((tmp_path / "versions.json").read_text())["jax"] == jax.__version__


def test_resume_is_bit_identical(tiny_config, tmp_path):
  c = tiny_config
  c.eval_every = 0
  c.num_steps = 6
  train_lib.train_and_evaluate(c, str(tmp_path / "straight"))
  c.num_steps = 3
  train_lib.train_and_evaluate(c, str(tmp_path / "split"))
  c.num_steps = 6
  train_lib.train_and_evaluate(c, str(tmp_path / "split"))
  straight, split = _params(tmp_path / "straight"), _params(tmp_path / "split")
  _assert_trees_equal(straight, split)
  # and training did change the parameters
  c.num_steps = 3
  train_lib.train_and_evaluate(c, str(tmp_path / "short"))
  assert not np.array_equal(jax.tree.leaves(_params(tmp_path / "short"))[0],
                            jax.tree.leaves(straight)[0])


def test_corrupt_latest_checkpoint_falls_back(tiny_config, tmp_path, caplog):
  c = tiny_config
  c.eval_every, c.num_steps, c.checkpoint_every = 0, 6, 3
  train_lib.train_and_evaluate(c, str(tmp_path / "ref"))
  train_lib.train_and_evaluate(c, str(tmp_path / "run"))
  # damage every data file of the newest checkpoint's state
  for f in (tmp_path / "run" / "checkpoints" / "6" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and f.suffix != ".json":
      f.write_bytes(b"\0" * 7)
  c.num_steps = 9
  c_ref = c.copy_and_resolve_references()
  with caplog.at_level("WARNING"):
    train_lib.train_and_evaluate(c, str(tmp_path / "run"))
  assert any("checkpoint 6" in r.getMessage() and "unreadable" in r.getMessage()
             for r in caplog.records)
  train_lib.train_and_evaluate(c_ref, str(tmp_path / "ref"))
  _assert_trees_equal(_params(tmp_path / "ref"), _params(tmp_path / "run"))


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(tiny_config, tmp_path):
  """Metrics are fetched every log_every steps; the guard names the first bad step and range."""
  c = tiny_config
  c.eval_every, c.num_steps, c.checkpoint_every = 0, 3, 3
  train_lib.train_and_evaluate(c, str(tmp_path))
  before = _params(tmp_path)
  c.num_steps, c.learning_rate, c.log_every, c.checkpoint_every = 30, 1e12, 4, 100
  with pytest.raises(NonFiniteError) as err:
    train_lib.train_and_evaluate(c, str(tmp_path))
  match = re.match(r"step (\d+): the (loss|gradient norm) is (nan|inf) \(non-finite; first bad "
                   r"step of steps (\d+)-(\d+),", str(err.value))
  assert match, str(err.value)
  bad, first, last = int(match[1]), int(match[4]), int(match[5])
  assert first <= bad <= last and last - first < 4 and last % 4 == 0 and first > 3
  assert "last good checkpoint (step 3)" in str(err.value)
  # the host saw every step of the range, so `bad` really is the first non-finite one
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [3]
  _assert_trees_equal(before, _params(tmp_path))


def test_no_checkpoint_with_non_finite_parameters(tiny_config, tmp_path):
  """A step whose loss is finite can still leave NaN/Inf parameters (the loss is computed
  before the update): the save is refused, the previous checkpoint stays."""
  c = tiny_config
  c.eval_every, c.num_steps, c.checkpoint_every, c.log_every = 0, 2, 2, 1
  train_lib.train_and_evaluate(c, str(tmp_path))
  before = _params(tmp_path)
  # 1e39 overflows float32: the first update makes the parameters inf/nan while
  # the first step's loss and gradient norm (at the old parameters) stay finite.
  c.num_steps, c.checkpoint_every, c.warmup_steps = 3, 1, 0  # same optimizer structure
  c.learning_rate = 1e39
  with pytest.raises(NonFiniteError, match=r"steps 3-3: the parameters after step 3 contain "
                     r"non-finite values; they were not saved.*last good checkpoint \(step 2\)"):
    train_lib.train_and_evaluate(c, str(tmp_path))
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert np.isfinite(rows[-1]["loss"]) and rows[-1]["step"] == 3
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [2]
  _assert_trees_equal(before, _params(tmp_path))
  # the backstop in checkpoint.save itself
  state = train_lib.create_train_state(c, train_lib.make_model(c), jax.random.PRNGKey(0))
  state = state.replace(params=jax.tree.map(lambda x: x.at[..., 0].set(np.nan), state.params))
  assert not checkpoint.all_finite(state.params)
  with pytest.raises(NonFiniteError, match="not written"):
    checkpoint.save(checkpoint.train_manager(tmp_path / "other"), 1, state, None)
  assert not list((tmp_path / "other").glob("*/*"))


@pytest.mark.slow
def test_sigkill_then_rerun_gives_identical_parameters(tmp_path):
  """Kill train.py mid-run, re-run the same command: same final parameters."""
  args = ["train.py", "--config", "configs/tiny.py", "--config.num_steps=16",
          "--config.checkpoint_every=2", "--config.eval_every=0"]
  ref = run_cli(*args, "--workdir", str(tmp_path / "ref"))
  assert ref.returncode == 0, ref.stderr[-2000:]
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  proc = subprocess.Popen([sys.executable, *args, "--workdir", str(tmp_path / "run"),
                           "--config.log_every=1"], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  kill_at = int(np.random.default_rng().integers(5, 12))
  metrics = tmp_path / "run" / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if metrics.is_file() and len(metrics.read_text().splitlines()) >= kill_at:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  rerun = run_cli(*args, "--workdir", str(tmp_path / "run"))
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert "resumed from checkpoint step" in rerun.stderr
  _assert_trees_equal(_params(tmp_path / "ref"), _params(tmp_path / "run"))


def test_periodic_evaluation_keeps_the_best_checkpoint(tiny_config, tmp_path):
  c = tiny_config
  c.num_steps, c.eval_every, c.checkpoint_every, c.keep_checkpoints = 9, 3, 3, 5
  train_lib.train_and_evaluate(c, str(tmp_path))
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  val = [r for r in rows if r["split"] == "val"]
  assert [r["step"] for r in val] == [3, 6, 9]
  best_row = max(val, key=lambda r: (r["vrand"], -r["step"]))  # first of equal scores wins
  score = checkpoint.best_score(tmp_path)
  assert score["step"] == best_row["step"] and score["vrand"] == pytest.approx(best_row["vrand"])
  # the best parameters are those of that step's periodic checkpoint
  mgr = checkpoint.train_manager(tmp_path, 5)
  abstract = train_lib.create_train_state(c, train_lib.make_model(c), jax.random.PRNGKey(0))
  at_step = mgr.restore(best_row["step"], args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract))).state
  _assert_trees_equal(_params(tmp_path, "best"), jax.tree.map(np.asarray, at_step.params))


def test_progress_bar_on_a_terminal_and_plain_logs_otherwise(tmp_path):
  """On a TTY: a tqdm bar with step, loss, rate and ETA; without one (CI): log lines."""
  import pty

  args = [sys.executable, "train.py", "--config", "configs/tiny.py", "--config.eval_every=0",
          "--config.log_every=2"]
  leader, follower = pty.openpty()
  proc = subprocess.Popen([*args, f"--workdir={tmp_path / 'tty'}"], cwd=REPO, stdin=follower,
                          stdout=follower, stderr=follower, env=dict(os.environ))
  os.close(follower)
  chunks = []
  while True:
    try:
      chunk = os.read(leader, 4096)
    except OSError:  # the child closed the terminal
      break
    if not chunk:
      break
    chunks.append(chunk)
  assert proc.wait(timeout=300) == 0
  screen = b"".join(chunks).decode(errors="replace")
  assert "train:" in screen and "6/6" in screen and "loss=" in screen, screen[-2000:]
  assert "step/s" in screen or "s/step" in screen
  plain = run_cli(*args[1:], f"--workdir={tmp_path / 'plain'}")
  assert plain.returncode == 0
  assert "loss=" not in plain.stderr and "step 6/6  loss" in plain.stderr


@pytest.mark.slow
def test_data_parallel_training_on_two_devices_matches_one(tmp_path):
  """train.py on 2 (forced host) devices, batch 2, with a resume in between."""
  args = ["train.py", "--config", "configs/tiny.py", "--config.eval_every=0",
          "--config.batch_size=2", "--config.checkpoint_every=2"]
  two = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  first = run_cli(*args, "--config.num_steps=2", f"--workdir={tmp_path / 'two'}", env=two)
  assert first.returncode == 0, first.stderr[-2000:]
  assert "data parallel over 2 devices" in first.stderr
  second = run_cli(*args, "--config.num_steps=4", f"--workdir={tmp_path / 'two'}", env=two)
  assert second.returncode == 0 and "resumed from checkpoint step 2" in second.stderr
  one = run_cli(*args, "--config.num_steps=4", f"--workdir={tmp_path / 'one'}")
  assert one.returncode == 0, one.stderr[-2000:]
  for a, b in zip(jax.tree.leaves(_params(tmp_path / "two")), jax.tree.leaves(_params(tmp_path / "one"))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  odd = run_cli(*args, "--config.batch_size=3", f"--workdir={tmp_path / 'odd'}", env=two)
  assert odd.returncode == 2 and "multiple of the 2 devices" in odd.stderr
