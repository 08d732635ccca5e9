"""Checks a training config before any work starts, with messages that name the field."""

from __future__ import annotations

import ml_collections

from unet_jax import model as model_lib
from unet_jax import tiling
from unet_jax.errors import UserInputError

DTYPES = ("float32", "bfloat16")


def _fail(field: str, value, what: str) -> None:
  raise UserInputError(f"--config.{field}={value!r}: {what}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserInputError naming the first bad field and what to use instead."""
  c = config
  if c.depth < 1:
    _fail("depth", c.depth, "must be >= 1 (the paper uses 4)")
  try:
    model_lib.output_size(c.tile_size, c.depth)
  except ValueError as e:
    _fail("tile_size", c.tile_size, str(e))
  if c.get("eval_tile_size", 0):
    try:
      tiling.check_tile_size(c.eval_tile_size, c.depth)
    except ValueError as e:
      _fail("eval_tile_size", c.eval_tile_size, str(e))
  if c.dtype not in DTYPES:
    _fail("dtype", c.dtype, f"must be one of {DTYPES}")
  if c.num_classes < 2:
    _fail("num_classes", c.num_classes, "must be >= 2")
  kind = c.get("mask_kind", "binary")
  if kind not in ("binary", "instances", "classes"):
    _fail("mask_kind", kind, "must be 'binary', 'instances' or 'classes'")
  if c.get("dataset") == "folder" and kind != "classes" and c.num_classes != 2:
    _fail("num_classes", c.num_classes, f"mask_kind={kind!r} gives 2 classes (background, "
          "cell); for more classes set --config.mask_kind=classes")
  if c.get("dataset") != "folder" and c.num_classes != 2:
    _fail("num_classes", c.num_classes, f"dataset {c.get('dataset')!r} has 2 classes "
          "(background, cell); more classes need your own masks (dataset 'folder', "
          "mask_kind 'classes')")
  if c.features < 1:
    _fail("features", c.features, "must be >= 1")
  if not 0.0 <= c.dropout_rate < 1.0:
    _fail("dropout_rate", c.dropout_rate, "must be in [0, 1)")
  if c.batch_size < 1:
    _fail("batch_size", c.batch_size, "must be >= 1")
  if c.learning_rate <= 0:
    _fail("learning_rate", c.learning_rate, "must be > 0")
  if not 0.0 <= c.momentum < 1.0:
    _fail("momentum", c.momentum, "must be in [0, 1)")
  if c.class_weights not in ("balanced", "none"):
    _fail("class_weights", c.class_weights, "must be 'balanced' or 'none'")
  if c.lr_schedule not in ("poly", "constant"):
    _fail("lr_schedule", c.lr_schedule, "must be 'poly' or 'constant'")
  for field in ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
    if c.get(field) < 1:
      _fail(field, c.get(field), "must be >= 1")
  if c.sigma <= 0 or c.w0 < 0:
    _fail("sigma" if c.sigma <= 0 else "w0", c.sigma if c.sigma <= 0 else c.w0,
          "sigma must be > 0 and w0 >= 0")
