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
    assert log.read_text().count(f"predicting and scoring {share} of the 3 images here") == 2
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


_MAP = """
import sys
import types
sys.path.insert(0, "tests")
import jax
import numpy as np
from configs import tiny
from random_nets import random_variables
from unet_jax import UNet, config_lib, distributed, evaluation
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
assert jax.local_device_count() == 2  # process_allgather over several local devices
me = jax.process_index()
calls = []
def parts(indices):
  calls.append(list(indices))
  return [{"i": i, "values": np.arange(300 * i, dtype=np.float32) - i} for i in indices]
got = distributed.map_strided(parts, 5)
assert calls == [[0, 2, 4] if me == 0 else [1, 3]], calls
assert [g["i"] for g in got] == list(range(5))
for i, g in enumerate(got):
  np.testing.assert_array_equal(g["values"], np.arange(300 * i, dtype=np.float32) - i)
# More processes than items: process 1 gets none and still takes part.
assert [g["i"] for g in distributed.map_strided(parts, 1)] == [0]
print("mapped in order")
# fn fails in process 1 only: both raise, neither waits in the gather.
class Unpicklable(Exception):
  def __init__(self, a, b):
    super().__init__(f"{a} and {b}")
for who, error in ((1, ValueError("image 3 is broken")), (1, Unpicklable("not", "picklable")),
                   (0, KeyError("process 0 broke"))):
  def failing(indices):
    if me == who:
      raise error
    return list(indices)
  try:
    distributed.map_strided(failing, 4)
  except Exception as e:
    print(f"raised {type(e).__name__}: {e}")
for total, fn in ((5 if me == 0 else 6, parts), (4, lambda indices: [1] * (me + 1))):
  try:  # different totals; a wrong number of results in process 0
    distributed.map_strided(fn, total)
  except ValueError as e:
    print(f"refused: {e}")

# The validation split scored across the processes = one process scoring all of it.
def blobs(rng, classes, size=40):
  yy, xx = np.mgrid[:size, :size]
  inst = np.zeros((size, size), np.int32)
  for k, (cy, cx) in enumerate(rng.integers(6, size - 6, (5, 2)), start=1):
    inst[(yy - cy)**2 + (xx - cx)**2 < 16] = k
  image = (inst > 0) + 0.3 * rng.normal(size=(size, size))
  label = np.where(inst > 0, 1 + inst % (classes - 1), 0).astype(np.int32)
  label[:2] = -1  # an ignored band
  return image[..., None].astype(np.float32), label, inst
config = config_lib.resolve(tiny.get_config(), 1)
for dataset, classes, postprocess in (("synthetic", 2, "none"), ("synthetic", 2, "watershed"),
                                      ("dic_hela", 2, "none"), ("folder", 3, "none")):
  rng = np.random.default_rng(0)
  images, labels, refs = zip(*[blobs(rng, classes) for _ in range(5)])
  data = types.SimpleNamespace(images=list(images), labels=list(labels), instances=list(refs),
                               names=[f"img:{i}" for i in range(5)], dataset=dataset)
  model = UNet(num_classes=classes, features=4, depth=2, dropout_rate=0.0)
  variables = random_variables(model, 1)
  config.num_classes = classes
  split, whole = (evaluation.evaluate_split(model, variables, data, config, postprocess=postprocess,
                                            across_processes=across)
                  for across in (True, False))
  # not a score that ignores which prediction goes with which label: rolling the images
  # against their labels changes it
  rolled = evaluation.evaluate_split(model, variables, types.SimpleNamespace(
      **{**vars(data), "images": data.images[1:] + data.images[:1]}), config,
      postprocess=postprocess)
  for scores in (split, whole, rolled):
    scores.pop("seconds")
  assert list(split) == list(whole) and len(split) > 6, (split, whole)
  for key in split:
    same = (split[key] == whole[key] if isinstance(whole[key], str) else
            np.isclose(split[key], whole[key], rtol=0, atol=1e-12, equal_nan=True))
    assert same, (key, split, whole)
  assert whole["vrand"] > 0 and ("seg" not in whole or whole["seg"] > 0), whole
  if postprocess == "none":  # (the random net's watershed mask is nearly the same for all)
    assert any(abs(whole[k] - rolled[k]) > 1e-6 for k in whole if k != "num_images"), rolled
  print(f"equal {dataset} {postprocess}", sorted(whole))
"""


def test_map_strided_in_one_process_calls_fn_once():
  calls = []
  got = distributed.map_strided(lambda idx: calls.append(list(idx)) or [i * i for i in idx], 4)
  assert got == [0, 1, 4, 9] and calls == [[0, 1, 2, 3]]
  with pytest.raises(ValueError, match="fn returned 3 results for 4 items"):
    distributed.map_strided(lambda idx: idx[1:], 4)


@pytest.mark.serial
def test_map_strided_and_the_split_validation_scores_in_two_processes(tmp_path):
  """Two processes of 2 CPU devices each. ``map_strided``: each process maps its items
  p, p + 2, ... and gets every result back in order, also with one process empty; an error
  in one process (or different totals, or a wrong number of results) makes both raise
  instead of waiting. ``evaluate_split(across_processes=
  True)`` (each process predicts and scores its share of the images, the per-image parts
  are gathered) equals the same call scoring every image in one process, for ISBI-like data
  (with and without the watershed), cell instances and K = 3 classes."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = [subprocess.Popen([sys.executable, "-c", _MAP, f"localhost:{port}", str(i)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=900) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    assert "mapped in order" in out
    assert "raised ValueError: image 3 is broken" in out
    for case in ("synthetic none", "synthetic watershed", "dic_hela none", "folder none"):
      assert f"equal {case}" in out, out
  # the process where it failed raises its own exception, the other what can be sent of it
  assert "raised RuntimeError: Unpicklable: not and picklable" in outs[0][0]
  assert "raised Unpicklable: not and picklable" in outs[1][0]
  for out, _ in outs:
    assert "raised KeyError: 'process 0 broke'" in out
    assert "refused: map_strided: the processes were given different totals [5, 6]" in out
    assert "refused: map_strided: fn returned 1 results for 2 items" in out
  assert "'seg'" in outs[0][0] and "'mean_iou'" in outs[0][0]


_UNREADABLE_IN_ONE = """
import pathlib
import sys
import time
from typing import NamedTuple
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from unet_jax import checkpoint, distributed
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
replicated = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec())
class State(NamedTuple):
  params: jax.Array
def state(value):
  return State(jax.make_array_from_callback(
      (3,), replicated, lambda index: np.full(3, value, np.float32)[index]))
manager = checkpoint.train_manager(sys.argv[3])
for step in (1, 2):
  checkpoint.save(manager, step, state(float(step)))
manager.wait_until_finished()
if jax.process_index() == 1:  # this host cannot read the newest state (e.g. a damaged copy)
  real = ocp.StandardCheckpointHandler.restore
  def restore(self, directory, *args, **kwargs):
    if pathlib.Path(directory).parent.name == "2":
      raise OSError("unreadable on this host")
    return real(self, directory, *args, **kwargs)
  ocp.StandardCheckpointHandler.restore = restore
start = time.perf_counter()
restored = checkpoint.restore_latest(manager, state(0.0))
value = float(np.asarray(restored.state.params.addressable_data(0))[0])
print(f"restored step {restored.step} value {value} in {time.perf_counter() - start:.0f} s")
manager.close()
"""


@pytest.mark.serial
def test_a_state_unreadable_in_one_process_makes_both_fall_back_at_once(tmp_path):
  """The newest train state can be read by process 0 but not by process 1: both resume
  from the previous checkpoint, without waiting for orbax's restore barrier (300 s) that
  the failing process would never reach; the unreadable one is set aside."""
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, "-c", _UNREADABLE_IN_ONE, f"localhost:{port}",
                             str(i), str(tmp_path / "run")], cwd=REPO,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=200) for p in procs]  # well under the barrier's 300 s
  finally:
    for p in procs:
      p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    assert "restored step 1 value 1.0" in out, out
  assert "unreadable on this host" in outs[1][1]
  assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["1", "2.corrupt"]


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
