"""Loading a trained model from a training run's workdir, for prediction.

The inference side of a run: ``evaluate.py`` (and users' notebooks) call
:func:`load_for_inference` and pass the model and its variables to
:mod:`unet_jax.evaluation` or :func:`unet_jax.tiling.predict_tiled`.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import ml_collections

from unet_jax import checkpoint, config_lib, train_lib
from unet_jax import model as model_lib
from unet_jax.errors import UserInputError

log = logging.getLogger(__name__)


def _on_default_device(abstract: Any) -> Any:
  """Shapes/dtypes placed on this process's first device, so that checkpoints
  written on other devices or topologies (GPUs, data parallel) load here."""
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      abstract)


def load_for_inference(workdir: str | pathlib.Path, which: str = "best", *,
                       average: bool = True
                       ) -> tuple[ml_collections.ConfigDict, model_lib.UNet, dict]:
  """Loads a trained model for prediction.

  Args:
    workdir: the training run's workdir.
    which: "best" (the best held-out checkpoint; falls back to the latest if
      no held-out evaluation ran) or "latest".
    average: the parameter average if the run kept one (``config.ema_decay >
      0``), else the raw parameters; the best checkpoint holds only the
      average, so ``average=False`` needs ``which="latest"`` for such runs.
  Returns:
    ``(config, model, variables)``: the run's resolved config
    (:func:`unet_jax.config_lib.resolve`), the UNet, and ``{"params": ...}``.
  Raises:
    UserInputError: no config.json or no checkpoint in ``workdir``, a bad
      ``which``, or raw parameters asked of a best checkpoint that has none.
  """
  if which not in ("best", "latest"):
    raise UserInputError(f"--checkpoint must be 'best' or 'latest', got {which!r}")
  workdir = pathlib.Path(workdir)
  config, model = _saved_model(workdir)
  rng = jax.random.PRNGKey(0)
  if which == "best" and not average and config.ema_decay > 0:
    raise UserInputError("the best checkpoint of a run with a parameter average holds only "
                         "the average: use --checkpoint latest for the raw parameters")
  if which == "best":
    abstract = _on_default_device(jax.eval_shape(
        lambda: model_lib.init_params(model, rng, config.in_channels)))
    restored = checkpoint.restore_best_params(workdir, abstract)
    if restored is not None:
      log.info("loaded the best checkpoint (step %d) of %s", restored[1], workdir)
      return config, model, {"params": restored[0]}
    log.info("no best checkpoint in %s; using the latest", workdir)
  state = _restore_latest(workdir, config, model)
  return config, model, {"params": train_lib.eval_params(state) if average else state.params}


def load_snapshots(workdir: str | pathlib.Path, count: int, *, average: bool = True
                   ) -> tuple[ml_collections.ConfigDict, model_lib.UNet, list[dict]]:
  """The last ``count`` periodic checkpoints of a run, for a snapshot ensemble.

  Averaging the class probabilities of a run's last few checkpoints
  (``evaluation.predict_images`` with a list of variables) costs no training,
  only ``count`` predictions instead of one. Not in the paper, and on the ISBI
  CPU recipe it did not raise V_info on validation
  (results/isbi_cpu_same14k_snapshots_val/); ``count=1`` is the latest
  checkpoint alone.

  Returns:
    ``(config, model, [variables, ...])``, oldest checkpoint first, each
    ``{"params": ...}`` (the parameter average if the run kept one and
    ``average``).
  Raises:
    UserInputError: ``count`` < 1, no config.json, or fewer than ``count``
      checkpoints in ``workdir/checkpoints``.
  """
  if count < 1:
    raise UserInputError(f"--snapshots must be at least 1, got {count}")
  workdir = pathlib.Path(workdir)
  config, model = _saved_model(workdir)
  steps = checkpoint.periodic_steps(workdir)
  if len(steps) < count:
    raise UserInputError(f"{count} snapshots asked, but {workdir}/checkpoints keeps "
                         f"{len(steps)} ({steps}): lower --snapshots or train with "
                         f"--config.keep_checkpoints={count}")
  abstract_state = _abstract_state(config, model)
  variables = []
  for step in steps[-count:]:
    state = checkpoint.restore_state(workdir, abstract_state, step)
    variables.append({"params": train_lib.eval_params(state) if average else state.params})
  log.info("loaded the checkpoints %s of %s", steps[-count:], workdir)
  return config, model, variables


def load_latest_state(workdir: str | pathlib.Path
                      ) -> tuple[ml_collections.ConfigDict, model_lib.UNet, train_lib.TrainState]:
  """The run's resolved config, its UNet and the whole train state of the latest
  checkpoint (raw ``params`` and, if kept, ``ema_params``), restored once.

  Raises:
    UserInputError: no config.json or no checkpoint in ``workdir``.
  """
  workdir = pathlib.Path(workdir)
  config, model = _saved_model(workdir)
  return config, model, _restore_latest(workdir, config, model)


def _saved_model(workdir: pathlib.Path) -> tuple[ml_collections.ConfigDict, model_lib.UNet]:
  """The run's resolved config (``workdir/config.json``) and its UNet."""
  config = config_lib.resolve(config_lib.load_saved(workdir))
  return config, model_lib.from_config(config)


def _abstract_state(config: ml_collections.ConfigDict, model: model_lib.UNet) -> Any:
  """Shapes and dtypes of the run's train state, to restore checkpoints into."""
  return _on_default_device(jax.eval_shape(
      lambda: train_lib.create_train_state(config, model, jax.random.PRNGKey(0))))


def _restore_latest(workdir: pathlib.Path, config: ml_collections.ConfigDict,
                    model: model_lib.UNet) -> train_lib.TrainState:
  restored = checkpoint.restore_latest_state(workdir, _abstract_state(config, model))
  if restored is None:
    raise UserInputError(f"no checkpoint in {workdir}/checkpoints: train first "
                         f"(python train.py --config ... --workdir {workdir})")
  log.info("loaded the latest checkpoint (step %d) of %s", restored[1], workdir)
  return restored[0]
