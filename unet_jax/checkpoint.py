"""Orbax checkpoints in the workdir: periodic saves, auto-resume, the best model.

Layout of a workdir::

    WORKDIR/config.json        resolved config of the run (JSON)
    WORKDIR/checkpoints/<step>/{state,data_iter}   latest few (train state + grain iterator)
    WORKDIR/best/<step>/{params,score}             best held-out model (params + JSON score)

Only orbax array formats and JSON are written or read: never pickle.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from unet_jax.errors import NonFiniteError, UserInputError

log = logging.getLogger(__name__)

ARCH_FIELDS = ("features", "depth", "num_classes", "in_channels")
# Config fields added after runs were committed, with the value that reproduces
# those runs (so their workdirs still load).
FIELDS_ADDED_LATER = {"classifier_init_scale": 1.0, "heldout_indices": ""}


def _options(keep: int) -> ocp.CheckpointManagerOptions:
  # Synchronous saves: a save finishes before the next (donating) step starts,
  # and a crash can leave at most an unfinalised temporary directory, which
  # orbax never lists as a checkpoint.
  return ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                      enable_async_checkpointing=False)


def train_manager(workdir: str | pathlib.Path, keep: int = 3) -> ocp.CheckpointManager:
  """Manager of the periodic checkpoints (train state + data iterator)."""
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints",
                               options=_options(keep), item_names=("state", "data_iter"))


def best_manager(workdir: str | pathlib.Path) -> ocp.CheckpointManager:
  """Manager of the single best checkpoint (params + score JSON)."""
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "best",
                               options=_options(1), item_names=("params", "score"))


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def all_finite(tree: Any) -> bool:
  """True if no floating-point leaf of ``tree`` holds a NaN or Inf (reduced on the device)."""
  return bool(_all_finite(tree))


def _refuse_non_finite(step: int, tree: Any, what: str) -> None:
  # The last line of defence: a checkpoint is what a run resumes from and
  # what evaluation loads, so one with NaNs must never be written.
  if not all_finite(tree):
    raise NonFiniteError(f"step {step}: the {what} contain non-finite values; the "
                         "checkpoint was not written")


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any) -> None:
  """Saves the train state pytree and the grain iterator position at ``step``.

  Raises:
    NonFiniteError: if the parameters hold a NaN/Inf (nothing is written).
  """
  _refuse_non_finite(step, state.params, "parameters")
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data_iter=grain.checkpoint.CheckpointSave(data_iter)), force=True)
  manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   data_iter: Any) -> tuple[Any, int] | None:
  """Restores the newest readable checkpoint; falls back to older ones.

  A corrupt or incomplete newest checkpoint is reported with a warning and the
  previous one is tried, so a crash during a save loses at most one interval.

  Args:
    manager: from :func:`train_manager`.
    abstract_state: pytree of the train state (arrays or ShapeDtypeStructs)
      giving structure, shapes and dtypes.
    data_iter: grain iterator whose position is restored in place.
  Returns:
    ``(state, step)``, or None if there is no checkpoint.
  Raises:
    UserInputError: if checkpoints exist but none can be read (e.g. they come
      from a different architecture).
  """
  steps = sorted(manager.all_steps(), reverse=True)
  errors = []
  for step in steps:
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data_iter=grain.checkpoint.CheckpointRestore(data_iter)))
      if errors:
        _set_aside(manager, [s for s, _ in errors])
        log.warning("resumed from the older checkpoint %d", step)
      return restored.state, step
    except Exception as e:  # noqa: BLE001 - any failure means "unreadable"
      log.warning("checkpoint %d in %s is unreadable (%s: %s); trying the previous one",
                  step, manager.directory, type(e).__name__, str(e).splitlines()[0][:200])
      errors.append((step, e))
  if errors:
    raise UserInputError(
        f"none of the checkpoints {steps} in {manager.directory} could be restored "
        f"(first error: {errors[0][1]!s:.300}). If they come from a different "
        "architecture or config, use a new --workdir.")
  return None


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Renames unreadable checkpoints to ``<step>.corrupt`` (kept for inspection)."""
  for step in steps:
    path = pathlib.Path(manager.directory) / str(step)
    if path.exists():
      path.rename(path.with_name(f"{step}.corrupt"))
  manager.reload()


def save_best(workdir: str | pathlib.Path, step: int, params: Any, score: dict) -> None:
  """Replaces the best checkpoint with ``params`` and its held-out ``score``.

  Raises:
    NonFiniteError: if ``params`` hold a NaN/Inf (the old best is kept).
  """
  _refuse_non_finite(step, params, "parameters")
  mgr = best_manager(workdir)
  for old in mgr.all_steps():
    mgr.delete(old)
  mgr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                         score=ocp.args.JsonSave(score)), force=True)
  mgr.wait_until_finished()
  mgr.close()


def best_score(workdir: str | pathlib.Path) -> dict | None:
  """The held-out score dict stored with the best checkpoint, or None."""
  mgr = best_manager(workdir)
  step = mgr.latest_step()
  if step is None:
    return None
  out = mgr.restore(step, args=ocp.args.Composite(score=ocp.args.JsonRestore())).score
  mgr.close()
  return out


# --------------------------------------------------------------------------
# Config of a run.
# --------------------------------------------------------------------------


def write_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> None:
  # Atomic: the other processes of a multi-process run read it meanwhile.
  path = pathlib.Path(workdir, "config.json")
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(config.to_json_best_effort(indent=2))
  tmp.replace(path)


def read_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  path = pathlib.Path(workdir, "config.json")
  if not path.is_file():
    raise UserInputError(f"{path} not found: is {workdir} the --workdir of a training run?")
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  for field, value in FIELDS_ADDED_LATER.items():  # workdirs of older versions
    if field not in config:
      config[field] = value
  return config


def check_same_architecture(old: ml_collections.ConfigDict,
                            new: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir trained with a different architecture."""
  diff = [f"{f}: {old.get(f)} (checkpoint) vs {new.get(f)} (config)" for f in ARCH_FIELDS
          if f in old and f in new and old.get(f) != new.get(f)]
  if diff:
    raise UserInputError(
        f"the checkpoints in {workdir} come from a different architecture ("
        + "; ".join(diff) + "). Use a new --workdir, or the same architecture fields.")


# --------------------------------------------------------------------------
# Inference.
# --------------------------------------------------------------------------


def _on_default_device(abstract: Any) -> Any:
  """Shapes/dtypes placed on this process's first device, so that checkpoints
  written on other devices or topologies (GPUs, data parallel) load here."""
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      abstract)


def load_for_inference(workdir: str | pathlib.Path, which: str = "best"):
  """Loads a trained model for prediction.

  Args:
    workdir: the training run's workdir.
    which: "best" (the best held-out checkpoint; falls back to the latest if
      no held-out evaluation ran) or "latest".
  Returns:
    ``(config, model, variables)`` with ``variables = {"params": ...}``.
  """
  from unet_jax import train_lib  # local import: train_lib imports this module

  workdir = pathlib.Path(workdir)
  config = read_config(workdir)
  model = train_lib.make_model(config)
  abstract = _on_default_device(
      jax.eval_shape(lambda: train_lib.init_params(model, config, jax.random.PRNGKey(0))))
  if which not in ("best", "latest"):
    raise UserInputError(f"--checkpoint must be 'best' or 'latest', got {which!r}")
  if which == "best":
    mgr = best_manager(workdir)
    step = mgr.latest_step()
    if step is not None:
      params = mgr.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract))).params
      mgr.close()
      log.info("loaded the best checkpoint (step %d) of %s", step, workdir)
      return config, model, {"params": params}
    mgr.close()
    log.info("no best checkpoint in %s; using the latest", workdir)
  mgr = ocp.CheckpointManager(workdir.absolute() / "checkpoints", options=_options(1000),
                              item_names=("state", "data_iter"))
  step = mgr.latest_step()
  if step is None:
    raise UserInputError(f"no checkpoint in {workdir}/checkpoints: train first "
                         f"(python train.py --config ... --workdir {workdir})")
  abstract_state = _on_default_device(jax.eval_shape(
      lambda: train_lib.create_train_state(config, model, jax.random.PRNGKey(0))))
  state = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state))).state
  mgr.close()
  log.info("loaded the latest checkpoint (step %d) of %s", step, workdir)
  return config, model, {"params": state.params}
