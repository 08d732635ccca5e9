"""The training loop on the tiny config: learning, exact resume, crash safety, NaN guard."""

import io
import json
import os
import pathlib
import shutil
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from unet_jax import checkpoint, config_lib, inference, monitoring, train_lib
from unet_jax import model as model_lib
from unet_jax.errors import NonFiniteError, UserInputError


REPO = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=600, env=None):
  """Runs a top-level script like a user would; returns CompletedProcess."""
  full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=full_env)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
  monkeypatch.setenv("UNET_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _params(workdir, which="latest"):
  _, _, variables = inference.load_for_inference(workdir, which)
  return jax.tree.map(np.asarray, variables["params"])


def _assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)  # bit-identical


def _init_params(c):
  state = train_lib.create_train_state(config_lib.resolve(c, 1), model_lib.from_config(c),
                                       jax.random.PRNGKey(c.seed))
  return jax.tree.map(np.asarray, state.params)


def test_tiny_training_loss_falls(tiny_config, tmp_path):
  from unet_jax import datasets, input_pipeline

  c = tiny_config
  c.num_steps, c.eval_every, c.log_every, c.checkpoint_every = 60, 0, 5, 60
  state = train_lib.train_and_evaluate(c, str(tmp_path))
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in rows if r["split"] == "train"]
  assert len(losses) == 12 and all(np.isfinite(losses))
  # the loss on fixed batches (another seed) falls well below the initial one
  model = model_lib.from_config(c)
  init = train_lib.create_train_state(config_lib.resolve(c, 1), model, jax.random.PRNGKey(c.seed))
  probe = c.copy_and_resolve_references()
  probe.seed = 123
  it = input_pipeline.make_train_iterator(probe, datasets.load_split(probe, "train"))
  batches = [next(it) for _ in range(8)]
  eval_step = train_lib.make_eval_step(model)
  loss = lambda params: np.mean([float(eval_step(params, b)["loss"]) for b in batches])  # noqa: E731
  assert loss(state.params) < 0.5 * loss(init.params)
  for name in ("config.json", "versions.json", "curves.png"):
    assert (tmp_path / name).is_file(), name
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert json.loads((tmp_path / "versions.json").read_text())["jax"] == jax.__version__


def test_train_step_compiles_once(tiny_config, tmp_path, monkeypatch):
  """Recompile guard: the train step is traced once per run, not once per step
  (a changing dtype, weak type or shape of the state or batch would retrace)."""
  traces = []
  step_fn = train_lib.train_step_fn

  def counting_step_fn(*args, **kwargs):
    traces.append(1)  # runs only while tracing
    return step_fn(*args, **kwargs)

  monkeypatch.setattr(train_lib, "train_step_fn", counting_step_fn)
  c = tiny_config
  c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 3, 0, 1, 1
  train_lib.train_and_evaluate(c, str(tmp_path))
  assert len(traces) == 1
  c.num_steps = 6  # a resumed run: restored state, same single trace
  train_lib.train_and_evaluate(c, str(tmp_path))
  assert len(traces) == 2


@pytest.mark.parametrize("async_save", ["off", "on"])
def test_resume_is_bit_identical(tiny_config, tmp_path, async_save):
  """Both the raw parameters and their average (ema_decay > 0); checkpoints written
  while the run waits, and in the background (the next step donates the saved state)."""
  c = tiny_config
  c.async_checkpoints = async_save
  c.eval_every = 0
  c.ema_decay = 0.5
  c.num_steps = 6
  train_lib.train_and_evaluate(c, str(tmp_path / "straight"))
  c.num_steps = 3
  train_lib.train_and_evaluate(c, str(tmp_path / "split"))
  c.num_steps = 6
  train_lib.train_and_evaluate(c, str(tmp_path / "split"))
  straight, split = _params(tmp_path / "straight"), _params(tmp_path / "split")
  _assert_trees_equal(straight, split)
  raw = [inference.load_for_inference(tmp_path / d, "latest", average=False)[2]["params"]
         for d in ("straight", "split")]
  _assert_trees_equal(*(jax.tree.map(np.asarray, r) for r in raw))
  # The straight run's step-3 checkpoint, saved while steps 4-6 reused (donated)
  # the state's buffers, equals the one the split run ended with.
  saved = config_lib.load_saved(tmp_path / "straight")
  abstract = train_lib.create_train_state(saved, model_lib.from_config(saved),
                                          jax.random.PRNGKey(0))
  at3 = [checkpoint.restore_state(tmp_path / d, abstract, 3) for d in ("straight", "split")]
  _assert_trees_equal(*(jax.tree.map(np.asarray, a) for a in at3))
  # and training did change the parameters
  assert not np.array_equal(jax.tree.leaves(_init_params(c))[0], jax.tree.leaves(straight)[0])


def test_parameter_average_follows_its_recurrence_and_is_what_inference_loads(
    tiny_config, tmp_path):
  """ema_decay > 0: the averaged parameters equal a NumPy re-computation of
  e_t = d_t e_{t-1} + (1 - d_t) p_t, d_t = min(decay, (1 + t) / (10 + t)),
  from the raw parameters of every step's checkpoint, and are what
  load_for_inference returns (resume: test_resume_is_bit_identical)."""
  c = tiny_config
  c.eval_every, c.num_steps, c.checkpoint_every, c.keep_checkpoints = 0, 3, 1, 10
  c.ema_decay = 0.5
  train_lib.train_and_evaluate(c, str(tmp_path / "run"))
  saved = config_lib.load_saved(tmp_path / "run")
  abstract = train_lib.create_train_state(saved, model_lib.from_config(saved),
                                          jax.random.PRNGKey(0))
  mgr = checkpoint.train_manager(tmp_path / "run", 10)
  states = [mgr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
                        ).state for s in (1, 2, 3)]
  mgr.close()
  ema = _init_params(c)
  for t, st in enumerate(states):
    d = min(0.5, (1 + t) / (10 + t))
    ema = jax.tree.map(lambda e, p: d * e + (1 - d) * np.asarray(p), ema, st.params)
  loaded = _params(tmp_path / "run")
  for x, y, raw in zip(jax.tree.leaves(ema), jax.tree.leaves(loaded),
                       jax.tree.leaves(states[-1].params)):
    np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-7)
  assert not all(np.array_equal(y, np.asarray(r)) for y, r in
                 zip(jax.tree.leaves(loaded), jax.tree.leaves(states[-1].params)))
  _, _, raw = inference.load_for_inference(tmp_path / "run", "latest", average=False)
  _assert_trees_equal(jax.tree.map(np.asarray, raw["params"]),
                      jax.tree.map(np.asarray, states[-1].params))
  with pytest.raises(UserInputError, match="--checkpoint latest"):
    inference.load_for_inference(tmp_path / "run", "best", average=False)


def test_corrupt_latest_checkpoint_falls_back(tiny_config, tmp_path, caplog):
  c = tiny_config
  c.eval_every, c.num_steps, c.checkpoint_every = 0, 6, 3
  train_lib.train_and_evaluate(c, str(tmp_path / "run"))
  # damage every data file of the newest checkpoint's state
  for f in (tmp_path / "run" / "checkpoints" / "6" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and f.suffix != ".json":
      f.write_bytes(b"\0" * 7)
  c.num_steps = 9
  with caplog.at_level("WARNING"):
    train_lib.train_and_evaluate(c, str(tmp_path / "run"))
  assert any("checkpoint 6" in r.getMessage() and "unreadable" in r.getMessage()
             for r in caplog.records)
  assert (tmp_path / "run" / "checkpoints" / "6.corrupt").is_dir()
  train_lib.train_and_evaluate(c, str(tmp_path / "ref"))  # 9 steps without a break
  _assert_trees_equal(_params(tmp_path / "ref"), _params(tmp_path / "run"))


@pytest.mark.parametrize("change", ["damaged_position", "more_workers"])
def test_data_continue_at_the_step_when_the_position_cannot_be_restored(tiny_config, tmp_path,
                                                                        caplog, change):
  """A checkpoint whose data-iterator position cannot be restored (a damaged file; a run
  resumed with grain workers, whose position has another layout) still resumes: the
  state from the checkpoint, the data from its step; and a second resume, from a
  checkpoint of the repositioned run, lands on the right batch too. Batch 1, so the
  batches are the same with or without workers: the run ends bit-identical to an
  uninterrupted one."""
  c = tiny_config
  c.eval_every, c.num_steps, c.checkpoint_every, c.batch_size = 0, 9, 3, 1
  train_lib.train_and_evaluate(c, str(tmp_path / "ref"))
  c.num_steps = 3
  train_lib.train_and_evaluate(c, str(tmp_path / "run"))
  if change == "damaged_position":
    (position,) = (tmp_path / "run" / "checkpoints" / "3" / "data_iter").glob("process_*.json")
    position.write_text("{ not json")
  else:
    c.num_workers = 2
  c.num_steps = 6
  with caplog.at_level("WARNING"):
    train_lib.train_and_evaluate(c, str(tmp_path / "run"))
  assert any("position of checkpoint 3 was not restored" in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]
  assert not list((tmp_path / "run" / "checkpoints").glob("*.corrupt"))  # the state was fine
  caplog.clear()
  c.num_steps = 9
  with caplog.at_level("WARNING"):
    train_lib.train_and_evaluate(c, str(tmp_path / "run"))  # resumes at 6, position restored
  assert not any("not restored" in r.getMessage() for r in caplog.records)
  _assert_trees_equal(_params(tmp_path / "ref"), _params(tmp_path / "run"))


def test_metrics_are_fetched_every_log_every_steps_not_every_step(tiny_config, tmp_path,
                                                                  monkeypatch):
  """No per-step host sync: the loop pulls the steps' metrics to the host in blocks that
  end at a log, save or evaluation step (issue 13), each step exactly once."""
  blocks = []
  device_get = jax.device_get

  def recording_device_get(tree):
    if isinstance(tree, list) and tree and all(
        isinstance(x, tuple) and isinstance(x[0], int) for x in tree):
      blocks.append([s for s, _ in tree])  # the loop's (step, metrics) pending list
    return device_get(tree)

  monkeypatch.setattr(jax, "device_get", recording_device_get)
  c = tiny_config
  c.num_steps, c.log_every, c.checkpoint_every, c.eval_every = 12, 4, 6, 0
  train_lib.train_and_evaluate(c, str(tmp_path))
  assert blocks == [[1, 2, 3, 4], [5, 6], [7, 8], [9, 10, 11, 12]]


def _profiled_steps(workdir) -> list[int]:
  """Step numbers of the "train" step annotations in the run's profiler trace(s)."""
  from jax.profiler import ProfileData
  files = sorted((pathlib.Path(workdir) / "profile").rglob("*.xplane.pb"))
  steps = []
  for f in files:
    for plane in ProfileData.from_file(str(f)).planes:
      for line in plane.lines:
        steps += [dict(e.stats)["step_num"] for e in line.events if e.name == "train"]
  return sorted(steps)


def test_profile_steps_writes_a_trace_of_exactly_those_steps(tiny_config, tmp_path):
  """config.profile_steps="3-4": a jax.profiler trace with steps 3 and 4 annotated and
  the compiled train step's work in it; resuming inside the range traces the rest."""
  c = tiny_config
  c.num_steps, c.eval_every, c.checkpoint_every, c.profile_steps = 6, 0, 3, "3-4"
  train_lib.train_and_evaluate(c, str(tmp_path / "a"))
  assert _profiled_steps(tmp_path / "a") == [3, 4]
  trace = next((tmp_path / "a" / "profile" / "process_0").rglob("*.xplane.pb"))
  assert "jit_train_step" in trace.read_bytes().decode("latin-1")  # the XLA program ran in it
  # Resumed from the checkpoint of step 3 with the range 2-9: the trace starts at
  # step 4 and stops with the run's last step, 6.
  c.num_steps, c.profile_steps = 3, ""
  train_lib.train_and_evaluate(c, str(tmp_path / "b"))
  assert not (tmp_path / "b" / "profile").exists()
  c.num_steps, c.profile_steps = 6, "2-9"
  train_lib.train_and_evaluate(c, str(tmp_path / "b"))
  assert _profiled_steps(tmp_path / "b") == [4, 5, 6]


def test_async_checkpoints_auto_means_accelerators_only(tiny_config):
  for setting, backend, expected in [("auto", "cpu", False), ("auto", "gpu", True),
                                     ("auto", "tpu", True), ("on", "cpu", True),
                                     ("off", "gpu", False)]:
    tiny_config.async_checkpoints = setting
    assert config_lib.async_checkpoints(tiny_config, backend) is expected
  tiny_config.async_checkpoints = "yes"
  with pytest.raises(UserInputError, match="async_checkpoints"):
    config_lib.validate(tiny_config)


@pytest.mark.parametrize("text", ["5-2", "0-3", "a-b", "3-"])
def test_bad_profile_steps_are_refused(tiny_config, text):
  tiny_config.profile_steps = text
  with pytest.raises(UserInputError, match="profile_steps"):
    config_lib.validate(tiny_config)


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


def test_dry_run_reports_sizes_and_writes_nothing(tiny_config, tmp_path, monkeypatch):
  from unet_jax import tiling
  monkeypatch.chdir(tmp_path)
  c = config_lib.resolve(tiny_config, 1)
  report = train_lib.dry_run(c)
  assert report["parameters"] == tiling.architecture_param_count(
      features=4, depth=2, num_classes=2, in_channels=1)
  assert (report["input_tile"], report["output_tile"]) == (60, 20)
  assert report["step_seconds"] > 0 and report["estimated_peak_memory_bytes"] > 0
  assert not list(tmp_path.iterdir())


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
  # an evaluation step that is not a save step: the best checkpoint is refused alike
  c.num_steps, c.checkpoint_every, c.eval_every = 4, 4, 3
  with pytest.raises(NonFiniteError, match=r"step 3: the parameters after step 3 contain "
                     r"non-finite values; they were not saved as the best checkpoint.*"
                     r"last good checkpoint \(step 2\)"):
    train_lib.train_and_evaluate(c, str(tmp_path))
  assert not (tmp_path / "best").exists() or not list((tmp_path / "best").glob("*/*"))
  _assert_trees_equal(before, _params(tmp_path))
  # the backstop in checkpoint.save itself
  rc = config_lib.resolve(c, 1)
  state = train_lib.create_train_state(rc, model_lib.from_config(rc), jax.random.PRNGKey(0))
  state = state.replace(params=jax.tree.map(lambda x: x.at[..., 0].set(np.nan), state.params))
  assert not checkpoint.all_finite(state.params)
  with pytest.raises(NonFiniteError, match="not written"):
    checkpoint.save(checkpoint.train_manager(tmp_path / "other"), 1, state, None)
  assert not list((tmp_path / "other").glob("*/*"))


def test_own_loop_checkpoints_without_a_data_iterator(tmp_path):
  """A library user's loop (flax's TrainState, own data) saves and resumes the state alone."""
  import optax
  from flax.training import train_state
  model = model_lib.UNet(features=4, depth=2, num_classes=2)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 44, 44, 1), np.float32))["params"]
  state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                        tx=optax.sgd(0.1, momentum=0.99))
  grads = jax.tree.map(lambda x: np.full(x.shape, 0.5, x.dtype), params)
  state = state.apply_gradients(grads=grads)  # a non-zero momentum trace to restore
  manager = checkpoint.train_manager(tmp_path)
  checkpoint.save(manager, 7, state)
  manager.close()
  assert (tmp_path / "checkpoints" / "7" / "state").is_dir()
  assert not (tmp_path / "checkpoints" / "7" / "data_iter").exists()
  manager = checkpoint.train_manager(tmp_path)
  abstract = jax.eval_shape(lambda: state)
  restored = checkpoint.restore_latest(manager, abstract)
  manager.close()
  assert restored.step == 7 and not restored.data_restored
  _assert_trees_equal(state.params, restored.state.params)
  _assert_trees_equal(state.opt_state, restored.state.opt_state)
  assert int(restored.state.step) == 1


@pytest.mark.slow
def test_sigkill_then_rerun_gives_identical_parameters(tiny_config, tmp_path):
  """Kill train.py mid-run, re-run: same final parameters as an uninterrupted run."""
  args = ["train.py", "--config", "configs/tiny.py", "--config.num_steps=16",
          "--config.checkpoint_every=2", "--config.eval_every=0", "--config.log_every=1"]
  proc = subprocess.Popen([sys.executable, *args, "--workdir", str(tmp_path / "run")],
                          cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  kill_at = int(np.random.default_rng(0).integers(5, 12))  # seeded: the same every run
  metrics = tmp_path / "run" / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if metrics.is_file() and len(metrics.read_text().splitlines()) >= kill_at:
      proc.send_signal(signal.SIGSTOP)  # freeze it at once: at least 5 steps are left
      break
    time.sleep(0.01)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  c = tiny_config
  c.num_steps, c.checkpoint_every, c.eval_every, c.log_every = 16, 2, 0, 1
  train_lib.train_and_evaluate(c, str(tmp_path / "run"))  # the re-run resumes
  train_lib.train_and_evaluate(c, str(tmp_path / "ref"))
  _assert_trees_equal(_params(tmp_path / "ref"), _params(tmp_path / "run"))


def test_periodic_evaluation_keeps_the_best_checkpoint(tiny_run):
  rows = [json.loads(l) for l in (tiny_run / "metrics.jsonl").read_text().splitlines()]
  val = [r for r in rows if r["split"] == "val"]
  assert [r["step"] for r in val] == [3, 6, 9]
  best_row = max(val, key=lambda r: (r["vrand"], -r["step"]))  # first of equal scores wins
  score = checkpoint.best_score(tiny_run)
  assert score["step"] == best_row["step"] and score["vrand"] == pytest.approx(best_row["vrand"])
  # the best parameters are those of that step's periodic checkpoint
  c = config_lib.load_saved(tiny_run)
  mgr = checkpoint.train_manager(tiny_run, 5)
  abstract = train_lib.create_train_state(c, model_lib.from_config(c), jax.random.PRNGKey(0))
  at_step = mgr.restore(best_row["step"], args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract))).state
  mgr.close()
  _assert_trees_equal(_params(tiny_run, "best"), jax.tree.map(np.asarray, at_step.params))
  assert (tiny_run / "curves.png").is_file()


def test_checkpoint_of_another_architecture_is_refused(tiny_run, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(tiny_run, run)
  c = config_lib.load_saved(run)
  c.num_steps, c.features = 12, 8
  with pytest.raises(UserInputError, match="different architecture.*features: 4 "
                     r"\(checkpoint\) vs 8"):
    train_lib.train_and_evaluate(c, str(run))
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["3", "6", "9"]


def test_damaged_checkpoints_give_one_line_for_prediction(tiny_run, tmp_path):
  """evaluate.py / export load through load_for_inference: a damaged best or latest
  checkpoint is a UserInputError naming it and what to do (an orbax traceback before),
  without orbax's dropped reads printing "Exception ignored" tracebacks (~60 lines per
  array, 1067 lines from evaluate.py before) when they are collected."""
  run = tmp_path / "run"
  shutil.copytree(tiny_run, run)
  best_step = checkpoint.best_score(run)["step"]
  def damage(folder):
    for f in folder.rglob("*"):
      if f.is_file() and "ocdbt" in str(f) and "/d/" in str(f):
        f.write_bytes(f.read_bytes()[:50])
  damage(run / "best" / str(best_step) / "params")
  with pytest.raises(UserInputError, match=rf"checkpoint {run}/best/{best_step} cannot be "
                     r"read \(.*; use --checkpoint latest"):
    inference.load_for_inference(run, "best")
  inference.load_for_inference(run, "latest")  # the periodic ones are intact
  damage(run / "checkpoints" / "9" / "state")
  with pytest.raises(UserInputError, match=rf"checkpoint {run}/checkpoints/9 cannot be read.*"
                     rf"move it aside \(mv {run}/checkpoints/9 "):
    inference.load_for_inference(run, "latest")
  proc = run_cli("evaluate.py", f"--workdir={run}", "--checkpoint=latest",
                 f"--out={tmp_path / 'eval'}")
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert [l for l in lines if l.startswith("error: ")] == [
      l for l in lines if l.startswith("error: the checkpoint ")] != []
  # TensorStore threads may still print a stray traceback line or two (1-6 lines in all
  # over 12 runs; 1067 lines before the filters)
  assert len(lines) < 20, proc.stderr[:3000]


def test_a_crash_at_a_validation_step_redoes_that_validation(tiny_config, tmp_path,
                                                              monkeypatch):
  """A crash between the checkpoint and the validation of the same step (kill -9) must
  not lose that validation: the rerun logs it and keeps the best checkpoint that an
  uninterrupted run keeps. The crash is an exception raised by step 3's validation."""
  c = tiny_config
  c.num_steps, c.eval_every, c.checkpoint_every = 6, 3, 3
  train_lib.train_and_evaluate(c, str(tmp_path / "ref"))
  real = train_lib._evaluate  # pylint: disable=protected-access
  def crash_at_3(*args, **kwargs):
    if args[5] == 3:  # the step
      raise RuntimeError("killed")
    return real(*args, **kwargs)
  monkeypatch.setattr(train_lib, "_evaluate", crash_at_3)
  with pytest.raises(RuntimeError, match="killed"):
    train_lib.train_and_evaluate(c, str(tmp_path / "run"))
  monkeypatch.setattr(train_lib, "_evaluate", real)
  train_lib.train_and_evaluate(c, str(tmp_path / "run"))
  def val_rows(work):
    rows = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["vrand"]) for r in rows if r["split"] == "val"]
  assert [s for s, _ in val_rows(tmp_path / "run")] == [3, 6]
  np.testing.assert_allclose(val_rows(tmp_path / "run"), val_rows(tmp_path / "ref"),
                             atol=1e-5)
  assert checkpoint.best_score(tmp_path / "run")["step"] == \
      checkpoint.best_score(tmp_path / "ref")["step"]


def test_a_refused_resume_names_the_changed_fields_and_keeps_config_json(tiny_run, tmp_path,
                                                                          caplog):
  """A config whose optimizer state no longer fits the checkpoints (no clipping) is
  refused naming the field, and the run's config.json stays as it was (evaluate.py reads
  it). A change that fits is resumed with a warning naming it."""
  run = tmp_path / "run"
  shutil.copytree(tiny_run, run)
  before = (run / "config.json").read_text()
  c = config_lib.load_saved(run)
  c.num_steps, c.grad_clip_norm = 12, 0.0
  with pytest.raises(UserInputError, match=r"could be restored.*Changed since the run's "
                     r"config.json: grad_clip_norm: 5.0 -> 0.0; num_steps: 9 -> 12\."):
    train_lib.train_and_evaluate(c, str(run))
  assert (run / "config.json").read_text() == before
  c = config_lib.load_saved(run)
  c.num_steps, c.learning_rate = 10, 0.02
  with caplog.at_level("WARNING"):
    train_lib.train_and_evaluate(c, str(run))
  assert "changed since its config.json: learning_rate: 0.01 -> 0.02; num_steps: 9 -> 10" \
      in caplog.text
  assert config_lib.load_saved(run).learning_rate == 0.02


def test_a_read_failing_after_an_abort_is_not_taken_for_damage(tiny_run, tmp_path,
                                                                 monkeypatch):
  """A second Ctrl-C during the checkpoint load can surface from orbax as an ordinary
  read error. With the abort asked (``aborted``), restore_latest raises KeyboardInterrupt
  and sets nothing aside; without it, the same failure is damage (renamed .corrupt)."""
  from unet_jax import run_control
  run = tmp_path / "run"
  shutil.copytree(tiny_run, run)
  c = config_lib.load_saved(run)
  abstract = jax.eval_shape(lambda: train_lib.create_train_state(
      c, model_lib.from_config(c), jax.random.PRNGKey(0)))
  real = checkpoint._read_state  # pylint: disable=protected-access

  def read_state(manager, step, abstract_state):
    if step == 9:
      raise OSError("Encountered error while reading")
    return real(manager, step, abstract_state)

  monkeypatch.setattr(checkpoint, "_read_state", read_state)
  stop = run_control.StopOnSignal()
  stop._handle(signal.SIGINT, None)  # pylint: disable=protected-access
  with pytest.raises(KeyboardInterrupt):
    stop._handle(signal.SIGINT, None)  # pylint: disable=protected-access
  manager = checkpoint.train_manager(run)
  with pytest.raises(KeyboardInterrupt):
    checkpoint.restore_latest(manager, abstract, aborted=lambda: stop.aborted)
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["3", "6", "9"]
  assert checkpoint.restore_latest(manager, abstract).step == 6
  manager.close()
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["3", "6", "9.corrupt"]


def test_an_unreadable_best_checkpoint_is_replaced_not_fatal(tiny_run, tmp_path, caplog):
  """Resuming a run whose best checkpoint is damaged: a warning, and the next validation
  writes a new best (train.py has no --checkpoint flag to follow the prediction advice)."""
  run = tmp_path / "run"
  shutil.copytree(tiny_run, run)
  best_step = checkpoint.best_score(run)["step"]
  (run / "best" / str(best_step) / "score" / "metadata").write_text("garbage{")
  c = config_lib.load_saved(run)
  c.num_steps = 12
  with caplog.at_level("WARNING"):
    train_lib.train_and_evaluate(c, str(run))
  assert f"best/{best_step} cannot be read" in caplog.text and "replaces it" in caplog.text
  assert checkpoint.best_score(run)["step"] == 12  # the only validation since the resume


def test_asked_to_stop_at_a_validation_step_the_checkpoint_comes_first(tiny_config, tmp_path,
                                                                       monkeypatch):
  """A stop (SIGTERM: a grace period) at a step that also validates saves before the
  validation, so a slow or interrupted validation does not cost the checkpoint."""
  from unet_jax import run_control
  c = tiny_config
  c.num_steps, c.eval_every, c.checkpoint_every = 6, 3, 6
  monkeypatch.setattr(run_control.StopOnSignal, "check", lambda self, step: step == 3)
  def killed(*args, **kwargs):
    raise RuntimeError("killed during the validation")
  monkeypatch.setattr(train_lib, "_evaluate", killed)
  with pytest.raises(RuntimeError, match="killed during"):
    train_lib.train_and_evaluate(c, str(tmp_path))
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3"]


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def _feed(monitor, steps=6):
  for step in range(1, steps + 1):
    monitor.tick()  # one dispatched step (the loop fetches metrics later)
    monitor.update({"loss": 1.0 / step, "accuracy": 0.5})
    if step % 2 == 0:
      monitor.write_train(step)
  monitor.close()


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch):
  """On a TTY: a tqdm bar with step, loss, rate and ETA."""
  screen = _Terminal()
  monkeypatch.setattr(sys, "stderr", screen)
  _feed(monitoring.RunMonitor(tmp_path, num_steps=6, start_step=0))
  text = screen.getvalue()
  assert "train:" in text and "6/6" in text and "loss=" in text, text[-2000:]
  assert "step/s" in text or "s/step" in text


def test_plain_logs_without_a_terminal(tmp_path, caplog):
  """Without a TTY (CI, nohup): one log line per log_every steps, no bar."""
  with caplog.at_level("INFO", logger="unet_jax"):
    _feed(monitoring.RunMonitor(tmp_path, num_steps=6, start_step=0))
  lines = [r.getMessage() for r in caplog.records]
  assert any(l.startswith("step 6/6  loss 0.1") for l in lines), lines
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [2, 4, 6]
  assert rows[0]["loss"] == pytest.approx((1 + 1 / 2) / 2)


def test_curves_are_drawn_in_the_background_and_close_waits(tmp_path, monkeypatch):
  """plot() returns while a drawing is still running; close() waits for all of them,
  drawn in order, each from the rows logged when it was asked for."""
  import threading
  release, drawn = threading.Event(), []

  def slow_save_curves(rows, workdir, primary):
    released = release.wait(timeout=60)  # a synchronous plot() would sit here
    drawn.append((len(rows), released))

  monkeypatch.setattr(monitoring, "save_curves", slow_save_curves)
  monitor = monitoring.RunMonitor(tmp_path, num_steps=4, start_step=0)
  for step in (2, 4):
    monitor.update({"loss": 1.0 / step})
    monitor.write_train(step)
    monitor.plot()
  assert drawn == []  # neither drawing has finished, yet the loop went on
  release.set()
  monitor.close()
  assert drawn == [(1, True), (2, True)]


def test_curves_show_accuracy_when_there_is_no_validation_split(tmp_path):
  """A run without validation rows gets a training-accuracy panel, not an empty one."""
  train = [{"step": s, "split": "train", "loss": 1.0 / s, "accuracy": 0.5 + s / 100}
           for s in (2, 4, 6)]
  val = [{"step": 4, "split": "val", "vrand": 0.7}]
  for rows, title, ys in ((train, "training pixel accuracy (no validation split)",
                           [0.52, 0.54, 0.56]),
                          (train + val, "validation vrand", [0.7])):
    axes = monitoring.curves_figure(rows, "vrand").axes
    assert axes[1].get_title() == title
    np.testing.assert_allclose(axes[1].lines[0].get_ydata(), ys)
    np.testing.assert_allclose(axes[0].lines[0].get_ydata(), [1 / 2, 1 / 4, 1 / 6])
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in train) + '{"step": 8, "spl')  # cut by a crash
  assert monitoring.read_metrics(tmp_path / "metrics.jsonl") == train
  proc = run_cli("scripts/plot_curves.py", str(tmp_path))
  assert proc.returncode == 0, proc.stderr
  assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  proc = run_cli("scripts/plot_curves.py", str(tmp_path / "missing"))
  assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def _poly_lr(lr, t, warmup, num_steps, schedule):
  """README "Learning rate and schedule", written out: linear warmup 0 -> lr over
  `warmup` steps, then lr (constant) or lr (1 - s / (num_steps - warmup))^0.9, s the
  steps since the warmup, 0 from num_steps on."""
  if t < warmup:
    return lr * t / warmup
  if schedule == "constant":
    return lr
  return lr * max(1.0 - (t - warmup) / (num_steps - warmup), 0.0) ** 0.9


def test_learning_rate_schedule_matches_the_documented_formula(tiny_config):
  """learning_rate_schedule at several steps against _poly_lr (warmup, poly decay
  to 0 at num_steps, constant)."""
  c = tiny_config
  c.learning_rate, c.num_steps = 0.02, 14
  for schedule in ("poly", "constant"):
    for warmup in (0, 4):
      c.lr_schedule, c.warmup_steps = schedule, warmup
      sched = train_lib.learning_rate_schedule(c)
      for t in (0, 1, 2, 3, 4, 5, 7, 9, 13, 14, 20):
        want = _poly_lr(0.02, t, warmup, 14, schedule)
        assert float(sched(t)) == pytest.approx(want, rel=1e-5, abs=1e-9), (schedule, warmup, t)


def test_train_steps_match_weighted_loss_clipped_sgd_momentum_by_hand(tiny_config):
  """Two real steps of make_train_step (as train_and_evaluate builds it) on a fixed
  batch with a non-uniform weight map: the reported loss, accuracy and gradient norm,
  and each step's parameter update, against an independent computation: Eq. 1 written
  with one_hot/logsumexp from model.apply's logits, its jax.grad, global-norm clipping
  g min(1, c / |g|) (c below |g|, so it acts), and optax.sgd's momentum by hand
  (v = m v + g, p -= lr_t v) with config.momentum = 0.9 and lr_t of the poly schedule."""
  import jax.numpy as jnp
  c = tiny_config
  c.momentum, c.learning_rate, c.lr_schedule, c.warmup_steps, c.num_steps = 0.9, 0.05, "poly", 0, 4
  c.dropout_rate, c.ema_decay = 0.0, 0.0
  c = config_lib.resolve(c, 1)
  model = model_lib.from_config(c)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(2, 60, 60, 1)).astype(np.float32),
           "label": rng.integers(0, 2, (2, 20, 20)).astype(np.int32),
           "weight": rng.uniform(0.2, 12.0, (2, 20, 20)).astype(np.float32)}

  def ref_loss(params):
    logits = model.apply({"params": params}, batch["image"], train=False)
    logp = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    nll = -(jax.nn.one_hot(batch["label"], 2) * logp).sum(-1)
    return (jnp.asarray(batch["weight"]) * nll).sum() / batch["label"].size, logits

  ref_grad = jax.jit(jax.value_and_grad(ref_loss, has_aux=True))
  p = _init_params(c)
  g_norm = lambda g: float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2)  # noqa: E731
                                       for x in jax.tree.leaves(g))))
  c.grad_clip_norm = 0.5 * g_norm(ref_grad(p)[1])  # the first gradient is clipped by half
  state = train_lib.create_train_state(c, model, jax.random.PRNGKey(c.seed))
  _assert_trees_equal(jax.tree.map(np.asarray, state.params), p)
  step = train_lib.make_train_step(model, c)
  v = jax.tree.map(np.zeros_like, p)
  for t in range(2):
    (loss, logits), g = ref_grad(p)
    g = jax.tree.map(lambda x: np.asarray(x, np.float64), g)
    norm = g_norm(g)
    if t == 0:
      assert norm == pytest.approx(2 * c.grad_clip_norm)
    g = jax.tree.map(lambda x: x * min(1.0, c.grad_clip_norm / norm), g)
    v = jax.tree.map(lambda vi, gi: c.momentum * vi + gi, v, g)
    lr = _poly_lr(0.05, t, 0, 4, "poly")
    new_p = jax.tree.map(lambda pi, vi: pi - lr * vi, p, v)
    before = jax.tree.map(np.array, state.params)  # copies: the step donates the state
    state, metrics = step(state, batch)
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-5)
    assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-4)
    accuracy = np.mean(np.argmax(np.asarray(logits), -1) == batch["label"])
    assert float(metrics["accuracy"]) == pytest.approx(accuracy, abs=1e-6)
    for got, old, want, ref_old in zip(jax.tree.leaves(state.params), jax.tree.leaves(before),
                                       jax.tree.leaves(new_p), jax.tree.leaves(p)):
      update, ref_update = np.asarray(got) - old, want - ref_old
      np.testing.assert_allclose(update, ref_update, rtol=1e-4,
                                 atol=1e-4 * np.abs(ref_update).max() + 1e-9)
    p = jax.tree.map(np.array, state.params)
  assert int(state.step) == 2
