"""Orbax checkpoints in the workdir: periodic saves, auto-resume, the best model.

Layout of a workdir::

    WORKDIR/checkpoints/<step>/{state,data_iter}   latest few (train state + grain iterator)
    WORKDIR/best/<step>/{params,score}             best held-out model (params + JSON score)

This module only saves and restores pytrees (plus the grain iterator position
and a JSON score); what the pytrees hold is the caller's business: the train
state comes from :mod:`unet_jax.train_lib`, the loading of a trained model for
prediction is in :mod:`unet_jax.inference`, and ``WORKDIR/config.json`` is
written by :mod:`unet_jax.config_lib`. Only orbax array formats and JSON are
written or read: never pickle.
"""

from __future__ import annotations

import gc
import logging
import pathlib
import sys
from typing import Any, Callable, NamedTuple

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from unet_jax import distributed
from unet_jax.errors import NonFiniteError, UserInputError

log = logging.getLogger(__name__)


def _options(keep: int, async_save: bool = False) -> ocp.CheckpointManagerOptions:
  # A crash during a save leaves at most an unfinalised temporary directory,
  # which orbax never lists as a checkpoint. Synchronous: the save is on disk
  # before the next step starts. Asynchronous: ``save`` returns once the arrays
  # are copied to host memory (so the next step may donate them: tested), the
  # write runs in a background thread, and the next save or ``close`` waits for it.
  return ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                      enable_async_checkpointing=async_save)


def train_manager(workdir: str | pathlib.Path, keep: int = 3,
                  async_save: bool = False) -> ocp.CheckpointManager:
  """Manager of the periodic checkpoints (train state + data iterator).

  ``async_save``: write in the background (``config.async_checkpoints``); a crash
  in the second or so that a write takes then falls back to the previous checkpoint.
  """
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints",
                               options=_options(keep, async_save),
                               item_names=("state", "data_iter"))


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


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iter: Any | None = None) -> None:
  """Saves the train state pytree and the grain iterator position at ``step``.

  With a synchronous manager the checkpoint is on disk when this returns; with
  an asynchronous one (``train_manager(async_save=True)``) it is being written,
  and ``manager.close()`` (or the next save) waits for it.

  Args:
    manager: from :func:`train_manager`.
    step: the step the state was reached at.
    state: a pytree with a ``params`` attribute (``train_lib.TrainState``, or a
      library user's own ``flax.training.train_state.TrainState``).
    data_iter: a grain iterator whose position is saved with the state; None
      for a loop that feeds its own data (only the state is saved).
  Raises:
    NonFiniteError: if the parameters hold a NaN/Inf (nothing is written).
  """
  _refuse_non_finite(step, state.params, "parameters")
  items = dict(state=ocp.args.StandardSave(state))
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


class Restored(NamedTuple):
  """What :func:`restore_latest` found."""
  state: Any       # the train state
  step: int        # the step it was saved at
  data_restored: bool  # False: the caller repositions the data iterator at ``step``


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   data_iter: Any | None = None,
                   aborted: Callable[[], bool] = lambda: False) -> Restored | None:
  """Restores the newest readable checkpoint; falls back to older ones.

  A corrupt or incomplete newest checkpoint is reported with a warning and the
  previous one is tried, so a crash during a save loses at most one interval.
  The data-iterator position is restored separately: when it cannot be (a run
  resumed with another number of processes or grain workers, whose positions
  are laid out differently, or a damaged position file), the train state is
  still used and ``data_restored`` is False.

  In a multi-process run every process calls this, and the processes agree on
  each decision (``distributed.all_agree``): all resume from the same step,
  and all reposition their data if one of them has to; a state that only some
  processes can read makes all of them try the previous checkpoint at once
  (``_read_state``).

  Args:
    manager: from :func:`train_manager`.
    abstract_state: pytree of the train state (arrays or ShapeDtypeStructs)
      giving structure, shapes and dtypes.
    data_iter: grain iterator whose position is restored in place; None for
      a loop that feeds its own data (``data_restored`` is then False).
    aborted: True once the user asked to abort (a second Ctrl-C). A read that
      fails then was interrupted, not damaged: KeyboardInterrupt is raised and
      nothing is set aside (orbax may turn the interrupt into an ordinary error).
  Returns:
    A :class:`Restored`, or None if there is no checkpoint.
  Raises:
    UserInputError: if checkpoints exist but none can be read (e.g. they come
      from a different architecture).
  """
  # Process 0's listing: a shared filesystem may show another process a stale one.
  steps = distributed.broadcast_ints(sorted(manager.all_steps(), reverse=True))
  errors = []
  for step in steps:
    state, error = _try_read(lambda: _read_state(manager, step, abstract_state))
    if error is not None and aborted():
      raise KeyboardInterrupt
    if not distributed.all_agree(error is None):
      log.warning("checkpoint %d in %s is unreadable (%s); trying the previous one", step,
                  manager.directory, error or "in another process")
      errors.append((step, error or "unreadable in another process"))
      continue
    if errors:
      _set_aside(manager, [s for s, _ in errors])
      log.warning("resumed from the older checkpoint %d", step)
    if data_iter is None:
      return Restored(state, step, False)
    data_restored = distributed.all_agree(_restore_position(manager, step, data_iter))
    if not data_restored:
      log.warning("the data-iterator position of checkpoint %d was not restored (in this "
                  "or another process); the data continue at step %d instead", step, step)
    return Restored(state, step, data_restored)
  if errors:
    raise UserInputError(
        f"none of the checkpoints {steps} in {manager.directory} could be restored "
        f"(first error: {errors[0][1]!s:.300}). If they come from a different "
        "architecture or config, use a new --workdir.")
  return None


def _read_state(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
  """The train state of checkpoint ``step``, through orbax's handler directly.

  As ``_restore_position``: ``manager.restore`` ends in a barrier of all
  processes, which a process whose read failed never reaches; the others would
  wait there until it times out (300 s) before all agree to try the previous
  checkpoint. The handler alone has no barrier.
  """
  directory = pathlib.Path(manager.directory) / str(step) / "state"
  if not directory.is_dir():  # e.g. a stale listing on this host
    raise FileNotFoundError(f"{directory} not found")
  handler = ocp.StandardCheckpointHandler()
  try:
    return handler.restore(directory, args=ocp.args.StandardRestore(abstract_state))
  finally:
    handler.close()


def _try_read(read: Callable[[], Any]) -> tuple[Any, str | None]:
  """``(read(), None)``, or ``(None, "Type: first line")`` if the checkpoint is unreadable."""
  previous = sys.unraisablehook

  def quiet(unraisable) -> None:
    # After the first failed array read orbax drops the other reads, which raise
    # the same error again when collected: ~60 lines of "Exception ignored"
    # traceback per array, for a failure reported in one line here. Their
    # TensorStore callbacks keep arriving after that, on a busy machine after
    # this function has returned, and fail on orbax's closed event loop.
    code = getattr(unraisable.object, "cr_code", None)
    closed_loop = (isinstance(unraisable.exc_value, RuntimeError)
                   and str(unraisable.exc_value) == "Event loop is closed")
    if getattr(code, "co_name", "") != "_read_array_index_and_device_put" and not closed_loop:
      previous(unraisable)

  sys.unraisablehook = quiet
  try:
    result = read()
  except Exception as e:  # noqa: BLE001 - any failure means "unreadable"
    error = _first_line(e)
  else:
    sys.unraisablehook = previous
    return result, None
  gc.collect()  # the dropped reads (held by the exception until here), while quiet
  # The filter stays: the dropped reads' late callbacks (above) have no end to wait for.
  return None, error


def _first_line(e: Exception) -> str:
  """``"Type: first line of the message"`` for a log line (without TensorStore's
  spec dump, which follows "See full TensorStore details")."""
  line = str(e).splitlines()[0].split(" See full TensorStore details")[0] if str(e) else ""
  return f"{type(e).__name__}: {line[:200]}"


def _restore_position(manager: ocp.CheckpointManager, step: int, data_iter: Any) -> bool:
  """Restores this process's data-iterator position of ``step``; False if it cannot.

  grain's own handler, called directly: through the manager a failure in one
  process would skip orbax's closing barrier, where the others then wait.
  """
  directory = pathlib.Path(manager.directory) / str(step) / "data_iter"
  try:
    grain.checkpoint.CheckpointHandler().restore(
        directory, args=grain.checkpoint.CheckpointRestore(data_iter))
    return True
  except Exception as e:  # noqa: BLE001 - another layout (processes, workers) or a damaged file
    log.warning("the data-iterator position in %s is unusable here (%s)", directory,
                _first_line(e))
    return False


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Renames unreadable checkpoints to ``<step>.corrupt`` (kept for inspection).

  Process 0 renames (the directory is shared); all reload once it has.
  """
  if jax.process_index() == 0:
    for step in steps:
      path = pathlib.Path(manager.directory) / str(step)
      if path.exists():
        path.rename(path.with_name(f"{step}.corrupt"))
  distributed.barrier("unet_jax_set_aside")
  manager.reload()


def save_best(workdir: str | pathlib.Path, step: int, params: Any, score: dict) -> None:
  """Replaces the best checkpoint with ``params`` and its held-out ``score``."""
  _refuse_non_finite(step, params, "parameters")
  mgr = best_manager(workdir)
  # The new best is written before the old one is deleted, so a crash in
  # between never leaves a run without one. A best of a later step (from steps
  # redone after a resume) goes first: orbax keeps only the newest step.
  for old in mgr.all_steps():
    if old >= step:
      mgr.delete(old)
  mgr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                         score=ocp.args.JsonSave(score)), force=True)
  mgr.wait_until_finished()
  for old in mgr.all_steps():
    if old != step:
      mgr.delete(old)
  mgr.close()


def _restore_newest(mgr: ocp.CheckpointManager, name: str, restore_args: Any
                    ) -> tuple[Any, int] | None:
  """``(item, step)``: item ``name`` of ``mgr``'s newest step, or None if it
  has none; closes ``mgr`` either way."""
  try:
    step = mgr.latest_step()
    if step is None:
      return None
    return _read(mgr, step, name, restore_args), step
  finally:
    mgr.close()


def _read(mgr: ocp.CheckpointManager, step: int, name: str, restore_args: Any) -> Any:
  """Item ``name`` of checkpoint ``step`` for prediction; an unreadable one is a
  one-line :class:`UserInputError` (training falls back past such checkpoints instead)."""
  restored, error = _try_read(
      lambda: mgr.restore(step, args=ocp.args.Composite(**{name: restore_args})))
  if error is not None:
    path = pathlib.Path(mgr.directory) / str(step)
    other = ("use --checkpoint latest" if path.parent.name == "best" else
             f"to use the one before, move it aside (mv {path} {path}.corrupt)")
    raise UserInputError(f"the checkpoint {path} cannot be read ({error}): damaged, or "
                         f"written with another config or version; {other}")
  return restored[name]


def best_score(workdir: str | pathlib.Path) -> dict | None:
  """The held-out score dict stored with the best checkpoint, or None."""
  restored = _restore_newest(best_manager(workdir), "score", ocp.args.JsonRestore())
  return None if restored is None else restored[0]


def restore_best_params(workdir: str | pathlib.Path, abstract_params: Any
                        ) -> tuple[Any, int] | None:
  """``(params, step)`` of the best checkpoint, or None if there is none.

  Args:
    workdir: the training run's workdir.
    abstract_params: pytree of ShapeDtypeStructs (structure, shapes, dtypes
      and shardings to restore into).
  """
  return _restore_newest(best_manager(workdir), "params",
                         ocp.args.StandardRestore(abstract_params))


def _read_only_train_manager(workdir: str | pathlib.Path) -> ocp.CheckpointManager:
  # max_to_keep far above any run's keep_checkpoints: opening it deletes nothing.
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints",
                               options=_options(1000), item_names=("state", "data_iter"))


def restore_latest_state(workdir: str | pathlib.Path, abstract_state: Any
                         ) -> tuple[Any, int] | None:
  """``(state, step)`` of the newest periodic checkpoint (without the data
  iterator, read-only), or None if there is none."""
  return _restore_newest(_read_only_train_manager(workdir), "state",
                         ocp.args.StandardRestore(abstract_state))


def periodic_steps(workdir: str | pathlib.Path) -> list[int]:
  """Steps of the periodic checkpoints kept in ``workdir/checkpoints``, oldest first."""
  mgr = _read_only_train_manager(workdir)
  try:
    return sorted(mgr.all_steps())
  finally:
    mgr.close()


def restore_state(workdir: str | pathlib.Path, abstract_state: Any, step: int) -> Any:
  """The train state of the periodic checkpoint at ``step`` (read-only)."""
  mgr = _read_only_train_manager(workdir)
  try:
    return _read(mgr, step, "state", ocp.args.StandardRestore(abstract_state))
  finally:
    mgr.close()
