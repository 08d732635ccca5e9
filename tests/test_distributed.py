"""Multi-process training: per-process data shards, and 2 CPU processes against 1."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from unet_jax import checkpoint, distributed, inference, train_lib
from unet_jax.errors import UserInputError

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
  monkeypatch.setenv("UNET_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_process_shards_assemble_the_single_process_batches(tiny_config):
  from unet_jax import input_pipeline as data_lib
  from unet_jax import datasets

  c = tiny_config
  c.batch_size = 4
  data = datasets.load_split(c, "train")
  whole = data_lib.make_train_iterator(c, data)
  shards = [data_lib.make_train_iterator(c, data, process_index=p, process_count=2)
            for p in range(2)]
  for _ in range(3):
    ref = next(whole)
    parts = [next(it) for it in shards]
    for key in ("image", "label", "weight"):
      assert parts[0][key].shape[0] == 2
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), ref[key])
  c.batch_size = 3
  with pytest.raises(UserInputError, match="multiple of the 2 processes"):
    data_lib.make_train_iterator(c, data, process_index=0, process_count=2)


def test_cluster_detection_and_flags():
  assert not distributed.cluster_detected({})
  assert distributed.cluster_detected({"JAX_COORDINATOR_ADDRESS": "h:1"})
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0", "SLURM_NTASKS": "2"}
  assert distributed.cluster_detected(slurm)
  assert not distributed.cluster_detected(dict(slurm, SLURM_NTASKS="1"))  # one task: no init
  with pytest.raises(UserInputError, match="all three"):
    distributed.initialize("localhost:1234", None, None)
  with pytest.raises(UserInputError, match="process_id=2"):
    distributed.initialize("localhost:1234", 2, 2)
  # evaluate.py's question, asked without joining the job
  assert distributed.launch_index(environ={}) == 0
  assert distributed.launch_index("h:1", 2, 1, environ={}) == 1
  assert distributed.launch_index(environ=dict(slurm, SLURM_PROCID="1")) == 1
  assert distributed.launch_index(environ=dict(slurm, SLURM_PROCID="1", SLURM_NTASKS="1")) == 0
  with pytest.raises(UserInputError, match="all three"):
    distributed.launch_index(None, 2, None, environ={})


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(workdir, args, logs, script="train.py"):
  """Starts the 2 processes of one run; their stderr goes to ``logs[i]``."""
  port = _free_port()
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  return [subprocess.Popen(
      [sys.executable, script, *args, f"--workdir={workdir}",
       f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(logs[i], "w"))
          for i in range(2)]


def _launch_and_wait_for_rows(workdir, args, logs, rows):
  """Starts the 2 processes and returns once ``rows`` steps are logged (or process 0 ended)."""
  procs = _launch(workdir, args, logs)
  deadline = time.time() + 1800
  while time.time() < deadline and len(_train_rows(workdir)) < rows and procs[0].poll() is None:
    time.sleep(0.02)
  return procs


def _train_rows(workdir):
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.is_file():
    return []
  return [r for r in map(json.loads, path.read_text().splitlines()) if r["split"] == "train"]


_STEPS = 12


def _assert_every_step_logged_once_with_the_losses(workdir, ref):
  """Steps 1.._STEPS each logged once, with the losses of ``ref`` (to 1e-4)."""
  after = {r["step"]: r["loss"] for r in _train_rows(workdir)}
  assert len(after) == len(_train_rows(workdir)) and sorted(after) == list(range(1, _STEPS + 1))
  np.testing.assert_allclose([after[s] for s in sorted(after)], [ref[s] for s in sorted(ref)],
                             rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
  """The 1-process reference (global batch 2): ``(losses by step, final state)``.

  Module scope, so it is built before the serial test takes its exclusive lock
  (tests/conftest.py) and the other pytest worker keeps running meanwhile.
  """
  from configs import tiny
  c = tiny.get_config()
  c.batch_size, c.num_steps, c.eval_every, c.log_every, c.checkpoint_every = 2, _STEPS, 0, 1, 4
  work = tmp_path_factory.mktemp("one_process")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("UNET_JAX_CACHE", str(work / "cache"))
    state = train_lib.train_and_evaluate(c.copy_and_resolve_references(), str(work / "run"))
  return {r["step"]: r["loss"] for r in _train_rows(work / "run")}, state


@pytest.mark.slow
@pytest.mark.serial
def test_two_processes_match_one_and_resume_exactly_after_both_are_killed(one_process_run,
                                                                          tmp_path):
  """2 CPU processes (global batch 2, 1 sample each) log the losses of 1 process (batch 2);
  killed mid-run and restarted, they redo the steps after the checkpoint bit-identically."""
  steps = _STEPS
  ref, one = one_process_run
  assert sorted(ref) == list(range(1, steps + 1))

  args = ["--config=configs/tiny.py", "--config.batch_size=2", f"--config.num_steps={steps}",
          "--config.eval_every=0", "--config.log_every=1", "--config.checkpoint_every=4"]
  work, logs = tmp_path / "two", [tmp_path / "p0.log", tmp_path / "p1.log"]
  procs = _launch_and_wait_for_rows(work, args, logs, 5)
  procs[1].send_signal(signal.SIGSTOP)  # process 0 now waits in the next all-reduce
  assert procs[0].poll() is None, "the run ended before it could be killed: " + \
      logs[0].read_text()[-2000:]
  for p in procs:
    p.send_signal(signal.SIGKILL)
    p.wait()
  rows = _train_rows(work)
  before = {r["step"]: r["loss"] for r in rows}
  assert len(rows) == len(before), "a step was logged twice: process 1 wrote the log too"
  saved = max(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
  assert 4 <= saved < steps

  procs = _launch(work, args, logs)
  for p, log in zip(procs, logs):
    assert p.wait(timeout=1800) == 0, log.read_text()[-2000:]
  assert f"resumed from checkpoint step {saved}" in logs[0].read_text()
  rows = _train_rows(work)
  # Process 0 alone writes the log (and drops the rows past the resumed step on
  # resume), so every step appears exactly once.
  assert sorted(r["step"] for r in rows) == list(range(1, steps + 1))
  after = {r["step"]: r["loss"] for r in rows}
  redone = [s for s in before if s > saved]
  assert redone, (saved, sorted(before))
  for s in redone:  # steps trained before the kill and again after: bit-identical
    assert after[s] == before[s], (s, before[s], after[s])
  np.testing.assert_allclose([after[s] for s in sorted(after)],
                             [ref[s] for s in sorted(ref)], rtol=1e-4, atol=1e-4)
  # the collectively written checkpoint loads in one process and matches 1-process training
  _, _, variables = inference.load_for_inference(work, "latest")
  for a, b in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(one.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.serial
def test_two_processes_validate_and_keep_the_best_checkpoint(tmp_path):
  """With validation on, both processes score the validation split, process 0 logs it once,
  and the collectively written best checkpoint holds the parameters of the best step: a
  fresh single-process evaluation of it reproduces the logged score."""
  from unet_jax import datasets, evaluation

  # 3 validation images: process 0 predicts images 0 and 2, process 1 image 1.
  args = ["--config=configs/tiny.py", "--config.batch_size=2", "--config.num_steps=6",
          "--config.eval_every=3", "--config.log_every=1", "--config.checkpoint_every=6",
          "--config.synthetic.num_images=5", "--config.train_indices=0-1",
          "--config.val_indices=2-4"]
  work, logs = tmp_path / "run", [tmp_path / "p0.log", tmp_path / "p1.log"]
  for p, log in zip(_launch(work, args, logs), logs):
    assert p.wait(timeout=1800) == 0, log.read_text()[-2000:]
  for log, share in zip(logs, (2, 1)):  # each validation split between the processes
    assert log.read_text().count(f"predicting {share} of the 3 images here") == 2
  rows = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
  val = [r for r in rows if r["split"] == "val"]
  assert [r["step"] for r in val] == [3, 6]  # logged once, by process 0
  config, model, variables = inference.load_for_inference(work, "best")
  primary = datasets.spec(config.dataset).primary_metric
  best = max(val, key=lambda r: r[primary])
  stored = checkpoint.best_score(work)
  assert stored["step"] == best["step"] and stored[primary] == pytest.approx(best[primary])
  val_data = datasets.load_split(config, "val")
  assert len(val_data.images) == 3
  scores = evaluation.evaluate_split(model, variables, val_data, config)
  assert scores[primary] == pytest.approx(best[primary], abs=1e-5)


_GATHER = """
import sys
import jax
import numpy as np
from unet_jax import distributed
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
assert jax.local_device_count() == 2  # process_allgather over several local devices
shapes = [(3, 5, 3), (40, 2, 3), (1, 1, 3), (6, 3, 3), (2, 7, 3)]
items = [np.arange(np.prod(s), dtype=np.float32).reshape(s) + 100 * i for i, s in enumerate(shapes)]
got = distributed.gather_strided(items[jax.process_index()::2], shapes)
assert len(got) == len(shapes)
for g, want in zip(got, items):
  assert g.dtype == np.float32
  np.testing.assert_array_equal(g, want)
# More processes than items: process 1 holds none and still takes part.
got = distributed.gather_strided(items[:1] if jax.process_index() == 0 else [], shapes[:1])
np.testing.assert_array_equal(got[0], items[0])
# Wrong shapes in process 1 only: both processes raise, neither waits in the gather.
mine = items[jax.process_index()::2]
try:
  distributed.gather_strided(mine if jax.process_index() == 0 else mine[:1], shapes)
except ValueError as e:
  print("refused:", e)
print("gathered", len(shapes))
"""


def test_gather_strided_in_one_process_checks_the_shapes():
  items = [np.ones((2, 3)), np.zeros((1, 1))]
  got = distributed.gather_strided(items, [(2, 3), (1, 1)])
  assert [g.dtype for g in got] == [np.float32] * 2
  np.testing.assert_array_equal(got[0], items[0])
  with pytest.raises(ValueError, match="expected items 0::1"):
    distributed.gather_strided(items, [(2, 3), (1, 2)])


@pytest.mark.serial
def test_gather_strided_returns_every_process_items_in_order(tmp_path):
  """Two processes of 2 CPU devices each, items of different shapes split p, p + 2, ...: each
  process gets all of them back, equal to the arrays built directly with NumPy; also with
  one process empty; wrong shapes in one process make both raise instead of waiting."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = [subprocess.Popen([sys.executable, "-c", _GATHER, f"localhost:{port}", str(i)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=600) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
    assert "gathered 5" in out
  assert "another process holds arrays of the wrong shapes" in outs[0][0]
  assert "process 1 holds arrays of shapes" in outs[1][0]


@pytest.mark.slow
@pytest.mark.serial
def test_sigterm_to_one_process_stops_both_at_one_step_and_one_process_resumes(tmp_path):
  """A SIGTERM to process 1 alone (a cluster's preemption notice) makes both processes save
  one checkpoint after the same step and exit 143. The run then resumes in ONE process:
  the data position of two processes cannot be restored there, so the data continue at
  the checkpoint's step, and every logged loss equals an uninterrupted 1-process run.
  (The run is long, so that the notice arrives before its end: the step it stops at
  depends on how fast the notice spreads.)"""
  args = ["--config=configs/tiny.py", "--config.batch_size=2", "--config.num_steps=5000",
          "--config.eval_every=0", "--config.log_every=1", "--config.checkpoint_every=5000"]
  work, logs = tmp_path / "run", [tmp_path / "p0.log", tmp_path / "p1.log"]
  procs = _launch_and_wait_for_rows(work, args, logs, 3)
  procs[1].send_signal(signal.SIGTERM)
  codes = [p.wait(timeout=1800) for p in procs]
  assert codes == [143, 143], [log.read_text()[-2000:] for log in logs]
  saved = [int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(saved) == 1 and 3 <= saved[0] < 5000, saved  # one save, at the agreed step
  assert sorted(r["step"] for r in _train_rows(work)) == list(range(1, saved[0] + 1))

  end = saved[0] + 4
  proc = subprocess.run([sys.executable, "train.py", *args[:2], f"--config.num_steps={end}",
                         *args[3:], f"--workdir={work}"], cwd=REPO,
                        capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"resumed from checkpoint step {saved[0]}" in proc.stderr
  assert f"data continue at step {saved[0]}" in proc.stderr
  from configs import tiny
  c = tiny.get_config()
  c.batch_size, c.num_steps, c.eval_every, c.log_every, c.checkpoint_every = 2, end, 0, 1, end
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("UNET_JAX_CACHE", str(tmp_path / "cache"))
    train_lib.train_and_evaluate(c, str(tmp_path / "ref"))
  ref = {r["step"]: r["loss"] for r in _train_rows(tmp_path / "ref")}
  after = {r["step"]: r["loss"] for r in _train_rows(work)}
  assert sorted(after) == sorted(ref) == list(range(1, end + 1))
  np.testing.assert_allclose([after[s] for s in sorted(after)], [ref[s] for s in sorted(ref)],
                             rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.serial
def test_both_processes_reposition_the_data_when_one_cannot_restore_its_position(
    one_process_run, tmp_path):
  """Process 1's data position of the newest checkpoint is damaged: the processes agree,
  both take the state of that checkpoint and continue the data at its step (no process
  falls back alone), and the losses equal the 1-process run."""
  ref, _ = one_process_run
  args = ["--config=configs/tiny.py", "--config.batch_size=2", "--config.eval_every=0",
          "--config.log_every=1", "--config.checkpoint_every=4"]
  work, logs = tmp_path / "run", [tmp_path / "p0.log", tmp_path / "p1.log"]
  for p, log in zip(_launch(work, [*args, "--config.num_steps=8"], logs), logs):
    assert p.wait(timeout=1800) == 0, log.read_text()[-2000:]
  (work / "checkpoints" / "8" / "data_iter" / "process_1-of-2.json").write_text("{ damaged")
  procs = _launch(work, [*args, f"--config.num_steps={_STEPS}"], logs)
  for p, log in zip(procs, logs):
    assert p.wait(timeout=1800) == 0, log.read_text()[-2000:]
  for log in logs:
    text = log.read_text()
    assert "resumed from checkpoint step 8" in text and "data continue at step 8" in text, \
        text[-2000:]
  _assert_every_step_logged_once_with_the_losses(work, ref)


@pytest.mark.slow
@pytest.mark.serial
def test_a_workdir_in_use_stops_both_processes(tmp_path):
  """Process 0 cannot take the workdir's lock (another training holds it): both processes
  exit 2 with one line each, instead of process 1 waiting for process 0 in a collective."""
  from unet_jax import run_control

  work, logs = tmp_path / "run", [tmp_path / "p0.log", tmp_path / "p1.log"]
  work.mkdir()
  args = ["--config=configs/tiny.py", "--config.batch_size=2", "--config.num_steps=4"]
  with run_control.WorkdirLock(work):  # held by this (live) process
    procs = _launch(work, args, logs)
    codes = [p.wait(timeout=600) for p in procs]
  assert codes == [2, 2], [log.read_text()[-2000:] for log in logs]
  assert "in use by another training" in logs[0].read_text()
  assert "process 0 could not take the workdir's lock" in logs[1].read_text()
  assert "Traceback" not in logs[0].read_text() + logs[1].read_text()
  assert not (work / "checkpoints").exists() or not any((work / "checkpoints").iterdir())


def test_evaluate_runs_in_process_0_only(tmp_path):
  """evaluate.py launched as process 1 of 2 exits 0 at once (nothing written), before it
  looks at its inputs or touches a device."""
  proc = subprocess.run(
      [sys.executable, "evaluate.py", f"--workdir={tmp_path / 'missing'}",
       "--coordinator_address=localhost:1", "--num_processes=2", "--process_id=1"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "runs in process 0 only" in proc.stdout
  assert not (tmp_path / "missing").exists()
