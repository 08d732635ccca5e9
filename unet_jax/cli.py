"""Shared plumbing of the command-line tools: logging and clean error exits.

A user's mistake (bad file, bad field, bad size) or a diverged run ends with
one message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

from unet_jax.errors import NonFiniteError, UserInputError


def _config_flag_message(exc: BaseException) -> str | None:
  """Rephrases ml_collections' errors for unknown/invalid --config fields."""
  text = str(exc)
  if isinstance(exc, (KeyError, AttributeError)) or "has no attribute" in text \
      or "not found" in text.lower():
    return (f"unknown or invalid config field: {text.strip()}. "
            "See configs/default.py for the available fields.")
  return None


def define_distributed_flags() -> None:
  """--coordinator_address, --num_processes, --process_id (multi-process runs)."""
  from absl import flags
  flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0 "
                      "(unset: single process, or what a SLURM/MPI cluster provides).")
  flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
  flags.DEFINE_integer("process_id", None, "Multi-process: this process's index, 0-based.")


def initialize_distributed() -> bool:
  """Calls ``unet_jax.distributed.initialize`` with the flags of ``define_distributed_flags``."""
  from absl import flags
  from unet_jax import distributed
  f = flags.FLAGS
  return distributed.initialize(f.coordinator_address, f.num_processes, f.process_id)


def run(app, main: Callable) -> None:
  """``app.run(main)`` that turns user errors into one-line messages (exit 2)."""

  def wrapped(argv):
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/grain chatter
    logging.getLogger("unet_jax").setLevel(logging.INFO)
    try:
      return main(argv)
    except (UserInputError, NonFiniteError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except KeyboardInterrupt:
      print("interrupted: re-run the same command to resume from the last checkpoint",
            file=sys.stderr)
      sys.exit(130)

  try:
    app.run(wrapped)
  except SystemExit:
    raise
  except Exception as e:  # flag parsing happens inside app.run, before `wrapped`
    msg = _config_flag_message(e)
    if msg is None:
      raise
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)
