"""Training: state, the jitted train step, and the loop (paper Sec. 3).

Functional core in the style of the Flax examples: ``create_train_state``
builds the state, ``make_train_step`` returns one pure jitted
``(state, batch) -> (state, metrics)`` function that donates the state, and
``train_and_evaluate(config, workdir)`` runs the loop with auto-resume,
periodic validation, logging and checkpoints.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pathlib
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from unet_jax import checkpoint
from unet_jax import config_lib
from unet_jax import datasets
from unet_jax import evaluation
from unet_jax import input_pipeline
from unet_jax import layers
from unet_jax import parallel
from unet_jax import run_control
from unet_jax import model as model_lib
from unet_jax.errors import Interrupted, NonFiniteError, UserInputError
from unet_jax.losses import weighted_cross_entropy
from unet_jax.monitoring import NullMonitor, RunMonitor, StepProfiler

log = logging.getLogger(__name__)

Batch = dict[str, Any]  # {"image": [B,T,T,C], "label": [B,O,O], "weight": [B,O,O]}


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. The rng stays fixed; each step folds in its index.

  ``ema_params`` is the exponential moving average of ``params`` when
  ``config.ema_decay > 0`` (evaluated, kept as the best model and exported
  instead of the raw parameters; see :func:`eval_params`), else None.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = None


def eval_params(state: TrainState) -> Any:
  """The parameters to evaluate and keep: the moving average if there is one."""
  return state.params if state.ema_params is None else state.ema_params


def ema_update(ema: Any, params: Any, step: jax.Array, decay: float) -> Any:
  """One step of the parameter average ``ema <- d ema + (1 - d) params``.

  ``d = min(decay, (1 + step) / (10 + step))``: the usual warm-up of the decay
  (as in TensorFlow's ExponentialMovingAverage with ``num_updates``), so that
  an early average is not dominated by the random initialisation.

  Args:
    ema, params: pytrees of the same structure.
    step: number of updates already applied to ``params`` (scalar int).
    decay: the final decay, in (0, 1).
  """
  t = step.astype(jnp.float32)
  d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
  return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


# --------------------------------------------------------------------------
# Construction.
# --------------------------------------------------------------------------


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Constant, or polynomial decay (power 0.9) to 0 over num_steps; optional linear warmup."""
  if config.lr_schedule == "constant":
    main = optax.constant_schedule(config.learning_rate)
  elif config.lr_schedule == "poly":
    main = optax.polynomial_schedule(config.learning_rate, 0.0, 0.9,
                                     max(config.num_steps - config.warmup_steps, 1))
  else:
    raise UserInputError(f"config.lr_schedule must be 'poly' or 'constant', "
                         f"got {config.lr_schedule!r}")
  if config.warmup_steps <= 0:
    return main
  warm = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
  return optax.join_schedules([warm, main], [config.warmup_steps])


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD with momentum 0.99 (paper), optional global-norm clipping."""
  sgd = optax.sgd(learning_rate_schedule(config), momentum=config.momentum)
  if config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), sgd)
  return sgd


def create_train_state(config: ml_collections.ConfigDict, model: model_lib.UNet,
                       rng: jax.Array) -> TrainState:
  """Fresh state: He-normal params, zero momentum, step 0.

  Args:
    config: a resolved config (:func:`unet_jax.config_lib.resolve`), for
      ``in_channels`` and the optimizer.
  """
  if config.in_channels < 1:
    raise ValueError("config.in_channels is 0: resolve the config first "
                     "(unet_jax.config_lib.resolve(config, num_channels))")
  init_rng, rng = jax.random.split(rng)
  params = model_lib.init_params(model, init_rng, config.in_channels)
  opt_state = make_optimizer(config).init(params)
  # a copy, not an alias: the train step donates the whole state
  ema = jax.tree.map(jnp.copy, params) if config.ema_decay > 0 else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, rng=rng,
                    ema_params=ema)


# --------------------------------------------------------------------------
# Steps.
# --------------------------------------------------------------------------


def _metrics(loss, logits, labels, grad_norm=None):
  """Loss, pixel accuracy on non-ignored pixels, and finiteness flags."""
  valid = (labels >= 0) & (labels < logits.shape[-1])
  correct = (jnp.argmax(logits, -1) == labels) & valid
  m = {"loss": loss, "accuracy": correct.sum() / jnp.maximum(valid.sum(), 1)}
  if grad_norm is not None:
    m["grad_norm"] = grad_norm
  return m


def train_step_fn(model: model_lib.UNet, tx: optax.GradientTransformation,
                  state: TrainState, batch: Batch, ema_decay: float = 0.0
                  ) -> tuple[TrainState, dict]:
  """One SGD step on the pixel-weighted cross-entropy (un-jitted, pure).

  With ``ema_decay > 0`` the state's parameter average is updated too
  (:func:`ema_update`).
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    logits = model.apply({"params": params}, batch["image"], train=True,
                         rngs={"dropout": dropout_rng})
    return weighted_cross_entropy(logits, batch["label"], batch["weight"]), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema_decay > 0:
    ema = ema_update(ema, params, state.step, ema_decay)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            ema_params=ema)
  return new_state, _metrics(loss, logits, batch["label"], optax.global_norm(grads))


def make_train_step(model: model_lib.UNet, config: ml_collections.ConfigDict,
                    mesh=None) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """The jitted train step; the state argument is donated.

  Args:
    model: the UNet.
    config: for the optimizer and ``ema_decay``.
    mesh: optional ``jax.sharding.Mesh`` with a "data" axis: the batch is split
      over it and the state replicated (data parallel). None = default device.
  """
  fn = functools.partial(train_step_fn, model, make_optimizer(config),
                         ema_decay=config.ema_decay)
  if mesh is None:
    return jax.jit(fn, donate_argnums=0,
                   compiler_options=layers.xla_compiler_options() or None)
  return parallel.jit_data_parallel(fn, mesh)


def make_eval_step(model: model_lib.UNet) -> Callable[[Any, Batch], dict]:
  """Jitted ``(params, batch) -> metrics`` without dropout."""

  @functools.partial(jax.jit, compiler_options=layers.xla_compiler_options() or None)
  def eval_step(params, batch):
    logits = model.apply({"params": params}, batch["image"], train=False)
    loss = weighted_cross_entropy(logits, batch["label"], batch["weight"])
    return _metrics(loss, logits, batch["label"])

  return eval_step


def _kept_message(last_checkpoint: int | None, workdir: str) -> str:
  return (f"the last good checkpoint (step {last_checkpoint}) in {workdir}/checkpoints "
          "is untouched" if last_checkpoint else "no checkpoint was written")


def _advice(config: ml_collections.ConfigDict) -> str:
  return (f"Lower --config.learning_rate (now {config.learning_rate}), add warmup "
          "(--config.warmup_steps) or clipping (--config.grad_clip_norm), and check "
          "the input data for NaNs.")


def _parameters_refused(where: str, step: int, saved_as: str, config: ml_collections.ConfigDict,
                        last_checkpoint: int | None, workdir: str) -> NonFiniteError:
  """The training's message when a checkpoint of non-finite parameters was refused."""
  return NonFiniteError(
      f"{where}: the parameters after step {step} contain non-finite values; they were "
      f"not saved{saved_as}. Training stopped; {_kept_message(last_checkpoint, workdir)}. "
      f"{_advice(config)}")


def check_finite(steps: list[tuple[int, dict]], config: ml_collections.ConfigDict,
                 last_checkpoint: int | None, workdir: str) -> None:
  """Raises NonFiniteError at the first non-finite loss/gradient norm of ``steps``.

  Args:
    steps: ``(step, host metrics)`` of the steps fetched together (the loop
      fetches metrics every ``log_every`` steps and before every save).
    config, last_checkpoint, workdir: for the message.
  """
  if not steps:
    return
  first, last = steps[0][0], steps[-1][0]
  for step, metrics in steps:
    for name, what in (("loss", "loss"), ("grad_norm", "gradient norm")):
      value = float(metrics.get(name, 0.0))
      if not np.isfinite(value):
        raise NonFiniteError(
            f"step {step}: the {what} is {value} (non-finite; first bad step of steps "
            f"{first}-{last}, whose metrics were fetched together). Training stopped; "
            f"{_kept_message(last_checkpoint, workdir)}. {_advice(config)}")


def save_checkpoint(manager: Any, step: int, state: TrainState, data_iter: Any, first: int,
                    config: ml_collections.ConfigDict, last_checkpoint: int | None,
                    workdir: str) -> None:
  """``checkpoint.save``, with the training's message if the parameters hold a NaN/Inf.

  The loss of step s is computed from the parameters before that step's
  update, so finite metrics do not prove finite parameters: ``checkpoint.save``
  checks them on the device before writing, and writes nothing if they are
  not finite. Here that refusal names the steps since the last checkpoint
  (``first`` to ``step``) and what is kept.
  """
  try:
    checkpoint.save(manager, step, state, data_iter)
  except NonFiniteError:
    raise _parameters_refused(f"steps {first}-{step}", step, "", config, last_checkpoint,
                              workdir) from None


# --------------------------------------------------------------------------
# The loop.
# --------------------------------------------------------------------------


def prepare_workdir(workdir: str | os.PathLike) -> pathlib.Path:
  """Creates the workdir and checks that it is writable (clear error if not)."""
  return run_control.writable_dir(workdir, "--workdir")


def versions() -> dict[str, str]:
  """Versions of the stack and the devices of this run (written to versions.json)."""
  return {"python": sys.version.split()[0], "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "optax": optax.__version__, "orbax-checkpoint": ocp.__version__,
          "numpy": np.__version__, "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()]}


def param_count(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def _fake_batch(config: ml_collections.ConfigDict, process_count: int = 1) -> Batch:
  """Zeros shaped like this process's share of a training batch: ``image [b, T, T, C]``,
  ``label``/``weight [b, O, O]``, b = ``batch_size / process_count``."""
  t = config.tile_size
  o = model_lib.tile_output_size(t, config.depth, config.padding)
  b = config.batch_size // process_count
  return {"image": np.zeros((b, t, t, config.in_channels), np.float32),
          "label": np.zeros((b, o, o), np.int32), "weight": np.ones((b, o, o), np.float32)}


def dry_run_channels(config: ml_collections.ConfigDict) -> tuple[int, str | None]:
  """Input channels for a dry run, which needs no data: ``(channels, note or None)``.

  ``config.in_channels`` if set; 1 for the built-in datasets (all grey); for
  own data the first training images' channels if they can be read, else 1
  with a note.
  """
  if config.in_channels > 0:
    return int(config.in_channels), None
  if config.dataset != "folder":
    return 1, None
  try:
    return int(datasets.load_split(config, "train").num_channels), None
  except UserInputError as e:
    return 1, (f"note: the data cannot be read ({e}); sizes are for in_channels=1 "
               "(set --config.in_channels)")


def dry_run(config: ml_collections.ConfigDict) -> dict:
  """Sizes, parameter count, compiled peak-memory estimate and one step's time.

  Args:
    config: a resolved config (:func:`unet_jax.config_lib.resolve`).
  Returns:
    The report (also printed by train.py). Writes nothing.
  """
  config_lib.validate(config)
  model = model_lib.from_config(config)
  state = create_train_state(config, model, jax.random.PRNGKey(config.seed))
  # As the training runs it: split over the devices, so the memory estimate is
  # per device (batch_size / devices), not the whole batch on one.
  mesh = _data_parallel_mesh(config)
  step = make_train_step(model, config, mesh)
  batch = _fake_batch(config, jax.process_count())
  if mesh is not None:
    state, batch = parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh)
  compiled = step.lower(state, batch).compile()
  mem = compiled.memory_analysis()
  peak = None
  if mem is not None:
    peak = int(mem.argument_size_in_bytes + mem.output_size_in_bytes
               + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  state, m = step(state, batch)  # warm-up (first call pays one-off costs)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  seconds = time.perf_counter() - t0
  return {"parameters": param_count(state.params),
          "input_tile": config.tile_size,
          "output_tile": model_lib.tile_output_size(config.tile_size, config.depth,
                                                    model.padding),
          "batch_size": config.batch_size,
          "devices": jax.device_count(),
          "estimated_peak_memory_bytes": peak,  # per device
          "step_seconds": seconds,
          "backend": jax.default_backend()}


def _data_parallel_mesh(config: ml_collections.ConfigDict):
  """A mesh over all local devices when there are several, else None.

  The batch is split over the devices (data parallel, parameters replicated);
  ``batch_size`` must be a multiple of the device count.
  """
  n = jax.device_count()
  if n == 1:
    return None
  if config.batch_size % n:
    raise UserInputError(f"--config.batch_size={config.batch_size} must be a multiple of the "
                         f"{n} devices for data-parallel training (e.g. {n * max(1, config.batch_size // n)})")
  log.info("data parallel over %d devices (batch %d per device)", n, config.batch_size // n)
  return parallel.make_mesh()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming from ``workdir`` if it holds checkpoints) and evaluates.

  The resume order: (1) read the data and resolve the config (input channels,
  eval tile), (2) refuse a workdir of another architecture, (3) build a fresh
  state and data iterator, (4) overwrite both from the newest readable
  checkpoint.

  The host never waits for a step: metrics stay on the device and are fetched
  every ``log_every`` steps and before each save or evaluation (as in the Flax
  examples), so JAX's asynchronous dispatch keeps the accelerator busy. The
  non-finite guard then names the first bad step of the fetched range, and the
  parameters are checked on the device before every save.

  In a multi-process run (``unet_jax.distributed.initialize``) every process
  calls this with the same config: ``config.batch_size`` is the global batch,
  each process reads its share, and only process 0 writes logs and plots.

  Args:
    config: the training config (see configs/default.py); not modified.
    workdir: where checkpoints, logs and curves go.
  Returns:
    The final train state.
  """
  import contextlib

  from unet_jax import distributed

  config_lib.validate(config)
  workdir = prepare_workdir(workdir)
  primary_process = distributed.is_primary()
  with contextlib.ExitStack() as stack:
    # One training per workdir: process 0 holds the lock, and all processes
    # stop if it cannot take it (rather than wait for it in a collective).
    lock_error = None
    if primary_process:
      try:
        stack.enter_context(run_control.WorkdirLock(workdir))
      except Exception as e:  # pylint: disable=broad-except  # raised below, once all know
        lock_error = e
    if not distributed.all_agree(lock_error is None):
      raise lock_error or UserInputError(
          f"{workdir}: process 0 could not take the workdir's lock (its message says why)")
    # Ctrl-C / SIGTERM save a checkpoint after the current step; with several
    # processes SIGTERM does, after a step they agree on.
    stop = stack.enter_context(run_control.StopOnSignal() if jax.process_count() == 1
                               else _stop_together())
    return _train(config, workdir, stop, primary_process)


def _stop_together() -> run_control.StopTogether | run_control.NoStop:
  """``StopTogether``, or ``NoStop`` if JAX's preemption service is off."""
  if not jax.config.jax_enable_preemption_service:
    log.warning("JAX's preemption service is off (jax_enable_preemption_service): a "
                "SIGTERM kills the processes without a checkpoint")
    return run_control.NoStop()
  return run_control.StopTogether()


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path, stop,
           primary_process: bool) -> TrainState:
  """The body of ``train_and_evaluate``, run while holding the workdir lock."""
  train_data = datasets.load_split(config, "train")
  val_data = (datasets.load_split(config, "val")
              if config.val_indices and config.eval_every > 0 else None)
  if val_data is not None and val_data.num_channels != train_data.num_channels:
    # each split takes its own images' count when in_channels is 0 (grey vs RGB files)
    raise UserInputError(
        f"the training images have {train_data.num_channels} channel(s) and the validation "
        f"images {val_data.num_channels} (e.g. {val_data.names[0]}); set "
        "--config.in_channels=1 (RGB is converted to grey) or =3 (grey is repeated)")
  if config.in_channels and config.in_channels != train_data.num_channels:
    raise UserInputError(  # the built-in datasets are grey; folder data honour it
        f"--config.in_channels={config.in_channels}, but the {config.dataset} images have "
        f"{train_data.num_channels} channel(s): set it to 0 (taken from the data) or "
        f"{train_data.num_channels}")
  config = config_lib.resolve(config, train_data.num_channels)
  changed = []
  if (workdir / "config.json").is_file():
    saved = config_lib.load_saved(workdir)
    config_lib.check_same_architecture(saved, config, str(workdir))
    changed = config_lib.changed_fields(saved, config)
    if changed:
      log.warning("resuming %s with config fields changed since its config.json: %s",
                  workdir, "; ".join(changed))

  model = model_lib.from_config(config)
  state = create_train_state(config, model, jax.random.PRNGKey(config.seed))
  mesh = _data_parallel_mesh(config)
  if mesh is not None:
    state = parallel.replicate(state, mesh)  # restored checkpoints keep this placement
  data_iter = input_pipeline.make_train_iterator(config, train_data,
                                                 process_index=jax.process_index(),
                                                 process_count=jax.process_count())
  manager = checkpoint.train_manager(
      workdir, config.keep_checkpoints,
      async_save=config_lib.async_checkpoints(config, jax.default_backend()))
  try:
    restored = checkpoint.restore_latest(manager, state, data_iter,
                                         aborted=lambda: stop.aborted)
  except UserInputError as e:
    if changed:
      raise UserInputError(f"{e} Changed since the run's config.json: {'; '.join(changed)}."
                           ) from None
    raise
  # Written once the checkpoint is loaded: a refused resume leaves the run's
  # config.json, which evaluate.py reads, as it was.
  if primary_process:
    config_lib.save(workdir, config)
    (workdir / "versions.json").write_text(json.dumps(versions(), indent=2))
  start = 0
  if restored is not None:
    state, start = restored.state, restored.step
    log.info("resumed from checkpoint step %d in %s", start, workdir)
    if not restored.data_restored:  # e.g. resumed with another number of processes
      data_iter.restart_at(start)
  else:
    log.info("no checkpoint in %s: starting from scratch (%d parameters)",
             workdir, param_count(state.params))
  last_ckpt = start or None

  train_step = make_train_step(model, config, mesh)
  schedule = learning_rate_schedule(config)  # for the logs; the optimizer has its own
  # the held-out score that picks the best checkpoint; the mean class IoU for K > 2
  primary = ("mean_iou" if config.num_classes > 2
             else datasets.spec(config.dataset).primary_metric)
  monitor = (RunMonitor(workdir, config.num_steps, start, primary) if primary_process
             else NullMonitor())
  best = _best_so_far(workdir) if val_data is not None else None
  profiler = StepProfiler(workdir, config_lib.parse_step_range(config.profile_steps),
                          jax.process_index())
  pending: list[tuple[int, dict]] = []  # (step, metrics on the device) not yet fetched
  try:
    for step in range(start + 1, config.num_steps + 1):
      with profiler.step(step):
        batch = next(data_iter)
        if mesh is not None:
          batch = parallel.shard_batch(batch, mesh)
        state, metrics = train_step(state, batch)
      profiler.after(step, (state, metrics), final=step == config.num_steps)
      pending.append((step, metrics))
      monitor.tick()
      last = step == config.num_steps
      log_now = step % config.log_every == 0 or last
      save_now = step % config.checkpoint_every == 0 or last
      eval_now = val_data is not None and (step % config.eval_every == 0 or last)
      stop_now = stop.check(step)
      save_now = save_now or stop_now
      if not (log_now or save_now or eval_now):
        continue
      fetched = [(s, {k: float(v) for k, v in m.items()})
                 for s, m in jax.device_get(pending)]
      pending = []
      check_finite(fetched, config, last_ckpt, str(workdir))
      for _, m in fetched:
        monitor.update(m)
      if log_now:
        monitor.write_train(step, {"learning_rate": float(schedule(step - 1))})
      # Validation before the save: a crash between the two then redoes the step's
      # validation on resume (the run resumes after the newest checkpoint), so the
      # best checkpoint is the one an uninterrupted run keeps. Asked to stop (a
      # preemption's grace period), the checkpoint goes first.
      if eval_now and not stop_now:
        best = _evaluate(model, state, val_data, config, workdir, step, monitor, primary, best,
                         last_ckpt)
      if save_now:
        save_checkpoint(manager, step, state, data_iter, (last_ckpt or start) + 1, config,
                        last_ckpt, str(workdir))
        last_ckpt = step
        monitor.plot()  # curves.png at checkpoint time, off the per-step path
      if eval_now and stop_now:
        best = _evaluate(model, state, val_data, config, workdir, step, monitor, primary, best,
                         last_ckpt)
      if stop_now:
        raise Interrupted(stop.signum, step)
  finally:
    profiler.close()
    monitor.close()
    manager.close()
  return state


def _best_so_far(workdir: pathlib.Path) -> dict | None:
  """The score of the run's best checkpoint; None if there is none or it is unreadable
  (a warning: the next validation writes a new best, which replaces it)."""
  try:
    return checkpoint.best_score(workdir)
  except UserInputError as e:
    log.warning("%s; the next validation's checkpoint replaces it", str(e).split("; use")[0])
    return None


def _evaluate(model, state, val_data, config, workdir, step, monitor, primary, best,
              last_checkpoint):
  """Validation; keeps the best checkpoint by ``primary``."""
  from unet_jax import distributed

  # Each process predicts and scores its share of the validation images with its
  # local copy of the parameters; the per-image parts are gathered, so all hold the
  # split's scores; process 0's score decides, so that all join the same save.
  scores = evaluation.evaluate_split(model, {"params": distributed.local_copy(eval_params(state))},
                                     val_data, config, progress=False, across_processes=True)
  monitor.write_eval(step, scores)
  value = float(scores[primary])
  improved = best is None or value > best.get(primary, -np.inf)
  if jax.process_count() > 1:  # process 0 decides, so that all join the same save
    from jax.experimental import multihost_utils
    value, improved = multihost_utils.broadcast_one_to_all((np.float32(value),
                                                            np.bool_(improved)))
    value, improved = float(value), bool(improved)
  if improved:
    best = {k: float(v) for k, v in scores.items() if np.isscalar(v)}
    best.update({"step": step, primary: value})
    try:
      checkpoint.save_best(workdir, step, eval_params(state), best)
    except NonFiniteError:
      raise _parameters_refused(f"step {step}", step, " as the best checkpoint", config,
                                last_checkpoint, str(workdir)) from None
    log.info("new best %s %.4f at step %d", primary, value, step)
  return best
