"""The training config: checks, derived values, and the copy saved with a run.

Every field and its default is in configs/default.py; the library reads fields
directly (``config.tile_size``), never with a fallback default. Values that
depend on the data or on other fields are filled in once by :func:`resolve`,
and the resolved config is what the rest of the run uses and what
``WORKDIR/config.json`` holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import os
import pathlib
from typing import Sequence

import ml_collections

from unet_jax import datasets
from unet_jax import model as model_lib
from unet_jax import tiling
from unet_jax.errors import UserInputError

DTYPES = ("float32", "bfloat16")
# Fields that fix the parameter shapes: a checkpoint only loads into the same ones.
ARCH_FIELDS = ("features", "depth", "num_classes", "in_channels", "padding")
# Config fields added after runs were committed, with the value that reproduces
# those runs (so their workdirs still load).
FIELDS_ADDED_LATER = {
    "classifier_init_scale": 1.0, "heldout_indices": "", "padding": "valid",
    "mask_kind": "binary", "ema_decay": 0.0, "profile_steps": "", "async_checkpoints": "auto",
    # the paper's way: 4-connected components of p(cell) > 0.5
    "instances": {"method": "components", "threshold": 0.5, "seed_threshold": 0.9,
                  "seed_radius": 2, "min_size": 0, "fill_gaps": True},
}


def _fail(field: str, value, what: str) -> None:
  raise UserInputError(f"--config.{field}={value!r}: {what}")


# Every number of configs/default.py: (field, integer, allowed range, note).
# Ranges are ">= A", "> A" or "in [A, B)"; floats must also be finite. The tile
# sizes are checked against depth and padding in validate() (a message naming
# the nearest valid sizes).
NUMBERS = (
    ("num_workers", True, ">= 0", "0 = in the main process"),
    ("synthetic.num_images", True, ">= 1", ""),
    ("synthetic.size", True, ">= 1", ""),
    ("synthetic.cells", True, ">= 1", ""),
    ("features", True, ">= 1", ""),
    ("depth", True, ">= 1", "the paper uses 4"),
    ("num_classes", True, ">= 2", ""),
    ("dropout_rate", False, "in [0, 1)", ""),
    ("in_channels", True, ">= 0", "0 = taken from the data"),
    ("classifier_init_scale", False, ">= 0", "0 = zero init, 1 = the paper's"),
    ("w0", False, ">= 0", "0 = no border term"),
    ("sigma", False, "> 0", "the border width in pixels"),
    ("augment.elastic_std", False, ">= 0", "0 = no elastic deformation"),
    # 1 node per side only shifts the tile, 2 deform it (augment.elastic_field)
    ("augment.elastic_grid", True, ">= 2", "2 is the least that deforms; the paper uses 3"),
    ("augment.intensity", False, "in [0, 1)", "the grey-value gain 1 +- s stays positive"),
    ("batch_size", True, ">= 1", ""),
    ("learning_rate", False, "> 0", ""),
    ("momentum", False, "in [0, 1)", ""),
    ("warmup_steps", True, ">= 0", "0 = no warmup"),
    ("grad_clip_norm", False, ">= 0", "0 = no clipping"),
    ("ema_decay", False, "in [0, 1)", "0 = no parameter average"),
    ("num_steps", True, ">= 1", ""),
    ("seed", True, "in [0, 2**63)", ""),
    ("log_every", True, ">= 1", ""),
    ("checkpoint_every", True, ">= 1", ""),
    ("keep_checkpoints", True, ">= 1", ""),
    ("eval_every", True, ">= 0", "0 = no validation"),
    ("eval_batch_size", True, ">= 1", ""),
    ("instances.threshold", False, "in [0, 1)", ""),
    ("instances.seed_threshold", False, "in [0, 1)", ""),
    ("instances.seed_radius", True, ">= 0", ""),
    ("instances.min_size", True, ">= 0", ""),
)


def _in_range(value, allowed: str) -> bool:
  """Whether ``value`` lies in ``allowed``: ">= A", "> A" or "in [A, B)" (A, B: N or N**P)."""
  def bound(text: str) -> int:
    base, _, power = text.strip().partition("**")
    return int(base) ** int(power or 1)

  op, _, rest = allowed.partition(" ")
  if op == "in":
    low, high = (bound(b) for b in rest.strip("[)").split(","))
    return low <= value < high
  return value >= bound(rest) if op == ">=" else value > bound(rest)


def _check_numbers(config: ml_collections.ConfigDict, prefix: str = "",
                   flag: str | None = None) -> None:
  """The fields of :data:`NUMBERS` that start with ``prefix``: type, finiteness and
  range (NaN fails them all). Errors name ``--config.FIELD=VALUE``, or
  ``FLAG NAME=VALUE`` (NAME without the prefix) when ``flag`` is given."""
  missing = object()

  def fail(field, value, what):
    if flag is None:
      _fail(field, value, what)
    raise UserInputError(f"{flag} {field[len(prefix):]}={value!r}: {what}")

  for field, integer, allowed, note in NUMBERS:
    if not field.startswith(prefix):
      continue
    value = config
    for key in field.split("."):
      value = value.get(key, missing) if value is not missing else missing
    if value is missing:
      continue  # e.g. no instances block (an exported graph's config): the code's defaults
    note = f" ({note})" if note else ""
    if isinstance(value, bool) or not isinstance(
        value, numbers.Integral if integer else numbers.Real):
      fail(field, value, f"must be {'an integer' if integer else 'a number'} {allowed}{note}")
    # (an integer of any size is finite; math.isfinite would overflow on a huge one)
    if not isinstance(value, numbers.Integral) and not math.isfinite(value):
      fail(field, value, f"must be a finite number {allowed}{note}")
    if not _in_range(value, allowed):
      fail(field, value, f"must be {allowed}{note}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserInputError naming the first bad field and what to use instead."""
  c = config
  _check_numbers(c)
  padding = c.get("padding", "valid")
  if padding not in model_lib.PADDINGS:
    _fail("padding", padding, f"must be one of {model_lib.PADDINGS} (the paper: valid)")
  try:
    model_lib.tile_output_size(c.tile_size, c.depth, padding)
  except ValueError as e:
    _fail("tile_size", c.tile_size, str(e))
  if c.eval_tile_size:
    try:
      tiling.check_tile_size(c.eval_tile_size, c.depth, padding)
    except ValueError as e:
      _fail("eval_tile_size", c.eval_tile_size, str(e))
  if c.dtype not in DTYPES:
    _fail("dtype", c.dtype, f"must be one of {DTYPES}")
  kind = c.mask_kind
  if kind not in ("binary", "instances", "classes"):
    _fail("mask_kind", kind, "must be 'binary', 'instances' or 'classes'")
  if c.get("dataset") == "folder" and kind != "classes" and c.num_classes != 2:
    _fail("num_classes", c.num_classes, f"mask_kind={kind!r} gives 2 classes (background, "
          "cell); for more classes set --config.mask_kind=classes")
  if c.get("dataset") != "folder" and c.num_classes != 2:
    _fail("num_classes", c.num_classes, f"dataset {c.get('dataset')!r} has 2 classes "
          "(background, cell); more classes need your own masks (dataset 'folder', "
          "mask_kind 'classes')")
  if c.class_weights not in ("balanced", "none"):
    _fail("class_weights", c.class_weights, "must be 'balanced' or 'none'")
  if c.lr_schedule not in ("poly", "constant"):
    _fail("lr_schedule", c.lr_schedule, "must be 'poly' or 'constant'")
  method = c.get("instances", {}).get("method", "components")
  from unet_jax import instances  # pylint: disable=g-import-not-at-top
  if method not in instances.METHODS:  # else found only at the first validation, steps in
    _fail("instances.method", method, f"must be one of {', '.join(instances.METHODS)}")
  if str(c.get("ctc_truth", "st")).lower() not in ("st", "gt"):
    _fail("ctc_truth", c.ctc_truth, "must be 'st' (silver truth, all frames) or 'gt' "
          "(gold truth, a few frames)")
  datasets.check_splits(c)
  parse_step_range(c.profile_steps)
  if c.async_checkpoints not in ("auto", "on", "off"):
    _fail("async_checkpoints", c.async_checkpoints, "must be 'auto' (background saves on "
          "a GPU/TPU, waiting ones on a CPU), 'on' or 'off'")


def override_instances(config: ml_collections.ConfigDict, items: Sequence[str]
                       ) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``config.instances`` fields set from ``FIELD=VALUE`` items.

  How instances are made from p(cell) is not part of the trained net, so
  ``evaluate.py --instances method=watershed --instances seed_threshold=0.8``
  can change it on top of a run's saved config.

  Raises:
    UserInputError: for an unknown field, a value of the wrong type or range.
  """
  from unet_jax import instances  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(config.to_dict())
  if config.get("instances") is None:  # e.g. an exported graph without a rule: the defaults
    config.instances = dataclasses.asdict(instances.InstanceParams())
  block = config.instances
  for item in items:
    key, sep, text = (part.strip() for part in item.partition("="))
    if not sep or key not in block:
      raise UserInputError(f"--instances {item!r}: give FIELD=VALUE, FIELD one of "
                           f"{', '.join(sorted(block.keys()))} (configs/default.py)")
    old = block[key]
    try:
      if isinstance(old, bool):
        value = {"true": True, "false": False, "1": True, "0": False}[text.lower()]
      else:
        value = type(old)(text)
    except (KeyError, ValueError):
      kind = {bool: "true or false", int: "an integer", float: "a number"}.get(type(old), "text")
      raise UserInputError(f"--instances {item!r}: {key} takes {kind} (now {old!r})") from None
    block[key] = value
  if block.method not in instances.METHODS:
    raise UserInputError(f"--instances method={block.method!r}: must be one of "
                         f"{', '.join(instances.METHODS)}")
  _check_numbers(config, "instances.", flag="--instances")
  return config


def async_checkpoints(config: ml_collections.ConfigDict, backend: str) -> bool:
  """Whether periodic checkpoints are written in the background on ``backend``.

  "auto": on accelerators only. There a paper-size checkpoint (with the plot of
  curves.png, now drawn in the background too) stopped the loop for 0.7-2 s,
  100-300 steps (results/isbi_gpu_6k/metrics.jsonl); on a CPU a save is well
  under 1 % of the time between checkpoints, and waiting keeps the guarantee
  that a crash loses only the steps since the last save.
  """
  return config.async_checkpoints == "on" or (
      config.async_checkpoints == "auto" and backend != "cpu")


def parse_step_range(text: str) -> tuple[int, int] | None:
  """``config.profile_steps``: "" -> None, "20-24" -> (20, 24), "7" -> (7, 7).

  Raises:
    UserInputError: unless it is empty, N or A-B with 1 <= A <= B.
  """
  text = str(text).strip()
  if not text:
    return None
  first, dash, last = text.partition("-")
  try:
    lo, hi = int(first), int(last if dash else first)
  except ValueError:
    lo = hi = 0
  if not 1 <= lo <= hi:
    _fail("profile_steps", text, "must be a step or a range of steps, e.g. '20-24' "
          "(steps count from 1; '' = no profile)")
  return lo, hi


def resolve(config: ml_collections.ConfigDict, num_channels: int | None = None
            ) -> ml_collections.ConfigDict:
  """The completed config: a copy with the derived fields filled in.

  * ``in_channels``: ``num_channels`` (the data's channel count) if given,
    else the config's own value (a saved config of a run has it).
  * ``eval_tile_size``: 0 means ``tile_size``; raised to the smallest tile
    usable for seamless inference (:func:`unet_jax.tiling.smallest_usable_tile`),
    since training tiles may be smaller (188 at depth 4); SAME-padded nets
    (``padding = "same"``, ordinary tiling) keep it as it is.

  Calling it again on its result changes nothing.

  Raises:
    UserInputError: if the input channels are unknown (no data, and
      ``config.in_channels`` is 0).
  """
  out = ml_collections.ConfigDict(config.to_dict())
  in_channels = int(num_channels if num_channels is not None else config.in_channels)
  if in_channels < 1:
    raise UserInputError("config.in_channels is 0 (= taken from the data) and no data was "
                         "given: set --config.in_channels")
  out.in_channels = in_channels
  out.eval_tile_size = int(config.eval_tile_size or config.tile_size)
  if config.padding == "valid":  # SAME nets tile without overlap: any grid size works
    out.eval_tile_size = max(out.eval_tile_size, tiling.smallest_usable_tile(config.depth))
  if config.is_locked:
    out.lock()
  return out


def load_file(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """``get_config()`` of a config file such as configs/isbi.py.

  Loaded with ml_collections' config-file flag, exactly as ``--config`` of
  train.py is (on a private ``FlagValues``, so no global flag changes). The
  variants' ``from configs import default`` needs a ``configs`` package: when
  none is importable (a library user outside the repository), the file's own
  folder is imported as ``configs``, so this works from any current directory.
  ``sys_argv`` is given so that the caller's own command line (say ``--config
  X`` of a benchmark) is not read as overrides of this flag, which left the
  flag's value ``None``.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  if not path.is_file():
    raise UserInputError(f"config file not found: {path}")
  try:
    with _configs_package(path.absolute().parent):
      flag_values = flags.FlagValues()
      # Defining the flag already executes the file, so it sits inside the try.
      config_flags.DEFINE_config_file("config", str(path), flag_values=flag_values,
                                      sys_argv=["load_file"])
      flag_values(["load_file"])
      return flag_values.config
  except ImportError as e:
    raise UserInputError(f"cannot load {path} ({e}): a variant imports `configs.default`, "
                         "so keep it in the repository's configs/ folder") from None


@contextlib.contextmanager
def _configs_package(folder: pathlib.Path):
  """While loading: ``folder`` (a ``configs/`` with ``__init__.py``) is the package
  ``configs``, whatever else of that name is importable or imported; afterwards the
  modules of that name are as they were (nothing of this load stays behind)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  init = folder / "__init__.py"
  if folder.name != "configs" or not init.is_file():
    yield
    return
  mine = lambda name: name == "configs" or name.startswith("configs.")  # noqa: E731
  saved = {name: module for name, module in sys.modules.items() if mine(name)}
  for name in saved:
    del sys.modules[name]
  try:
    spec = importlib.util.spec_from_file_location("configs", init,
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["configs"] = module
    spec.loader.exec_module(module)
    yield
  finally:
    for name in [n for n in sys.modules if mine(n)]:
      del sys.modules[name]
    sys.modules.update(saved)


# --------------------------------------------------------------------------
# The copy saved with a run.
# --------------------------------------------------------------------------


def save(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Writes ``WORKDIR/config.json`` (atomically: the other processes of a
  multi-process run may read it meanwhile)."""
  path = pathlib.Path(workdir, "config.json")
  tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
  tmp.write_text(config.to_json_best_effort(indent=2))
  tmp.replace(path)


def load_saved(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config a run saved in ``WORKDIR/config.json`` (older runs' missing
  fields filled with the values that reproduce them).

  Raises:
    UserInputError: if the file is missing or not a JSON object (truncated, edited).
  """
  path = pathlib.Path(workdir, "config.json")
  if not path.is_file():
    raise UserInputError(f"{path} not found: is {workdir} the --workdir of a training run?")
  try:
    saved = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserInputError(f"{path} is not valid JSON ({e}): restore it or use a new "
                         "--workdir") from None
  if not isinstance(saved, dict):
    raise UserInputError(f"{path} holds a JSON {type(saved).__name__}, not a config's "
                         "fields: restore it or use a new --workdir")
  config = ml_collections.ConfigDict(saved)
  for field, value in FIELDS_ADDED_LATER.items():  # workdirs of older versions
    if field not in config:
      config[field] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
  return config


def changed_fields(old: ml_collections.ConfigDict, new: ml_collections.ConfigDict
                   ) -> list[str]:
  """``"field: old -> new"`` for every (nested) field whose value differs."""
  def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
      if isinstance(v, dict):
        out.update(flat(v, f"{prefix}{k}."))
      else:
        out[prefix + k] = v
    return out
  a, b = flat(old.to_dict()), flat(new.to_dict())
  norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731  # JSON has no tuples
  return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
          if norm(a.get(k)) != norm(b.get(k))]


def check_same_architecture(old: ml_collections.ConfigDict,
                            new: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir trained with a different architecture."""
  diff = [f"{f}: {old[f]} (checkpoint) vs {new[f]} (config)" for f in ARCH_FIELDS
          if f in old and f in new and old[f] != new[f]]
  if diff:
    raise UserInputError(
        f"the checkpoints in {workdir} come from a different architecture ("
        + "; ".join(diff) + "). Use a new --workdir, or the same architecture fields.")
