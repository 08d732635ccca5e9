"""Shared plumbing of the command-line tools: logging and clean error exits.

A user's mistake (bad file, bad field, bad size, a config file that does not
exist, a field value that does not parse) or a diverged run ends with one
message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import pathlib
import re
import sys
from typing import Callable, NoReturn, Sequence

from unet_jax.errors import Interrupted, NonFiniteError, UserInputError

# Errors of the file system that the user fixes (disk full or over quota,
# read-only, permission denied, a file where a folder belongs): ``run`` gives
# them one line; every other OSError keeps its traceback.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
USER_ERRNOS = DISK_FULL + (errno.EROFS, errno.EACCES, errno.ENOTDIR, errno.EEXIST)


def _fail(message: str) -> NoReturn:
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  _quiet_exit(2)


def _quiet_exit(code: int) -> NoReturn:
  """Exits with nothing more on the process's stderr after the error line: the
  reads orbax dropped after a damaged checkpoint finish on TensorStore's threads
  while the interpreter shuts down and print "Event loop is closed" tracebacks
  (0 to 3000 lines, measured). Silenced at exit (``atexit``), so that a caller
  that catches the ``SystemExit`` keeps its stderr."""
  if sys.stderr is sys.__stderr__:  # the process's own stderr, not a capture
    atexit.register(_silence_stderr)
    previous = sys.excepthook

    def hook(exc_type, exc, tb):  # what TensorStore's threads print meanwhile
      if not (exc_type is RuntimeError and str(exc) == "Event loop is closed"):
        previous(exc_type, exc, tb)

    sys.excepthook = hook
  sys.exit(code)


def _silence_stderr() -> None:
  try:
    sys.stderr.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
  except (OSError, ValueError):
    pass


def os_error_message(exc: BaseException) -> str | None:
  """One line for an OSError of ``USER_ERRNOS``, also as a ``raise ... from`` cause; else None."""
  while exc is not None and not (isinstance(exc, OSError) and exc.errno in USER_ERRNOS):
    exc = exc.__cause__
  if exc is None:
    return None
  path = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None) or "a file"
  if exc.errno in DISK_FULL:
    return (f"no space left on device writing {path}: free space, then re-run (training "
            "resumes from its last checkpoint)")
  return (f"cannot access {path}: {exc.strerror or os.strerror(exc.errno)} "
          f"({errno.errorcode[exc.errno]}); fix the path or its permissions, then re-run")


def load_config_file(path: str, name: str = "config") -> "ml_collections.ConfigDict":
  """``config_lib.load_file`` + ``validate`` for an argparse CLI's ``--name PATH``.

  The errors are the one-line messages that train.py's ``--config`` gives.

  Raises:
    UserInputError: a missing, ``.json``, broken or invalid config file.
  """
  from unet_jax import config_lib
  if not pathlib.Path(path).is_file():
    raise UserInputError(f"--{name} {path}: config file not found")
  if path.endswith(".json"):
    raise UserInputError(_json_config_message(name, path, saved_is_default=False))
  try:
    config = config_lib.load_file(path)
  except UserInputError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # raised by the file itself
    raise UserInputError(_config_file_message(name, path, e)) from None
  config_lib.validate(config)
  return config


def _json_config_message(name: str, value: str, saved_is_default: bool = True) -> str:
  return (f"--{name} {value}: a config file is Python with get_config() (e.g. "
          "configs/isbi.py)" + (f"; a workdir's config.json is used when --{name} is not "
                                "given" if saved_is_default else ", not a workdir's config.json"))


def _config_flag_message(exc: BaseException) -> str:
  """One line for an error of flag parsing (unknown/invalid --config fields)."""
  text = str(exc)
  if "Traceback (most recent call last)" in text:  # the config file's get_config() raised
    head = text.split("Traceback (most recent call last)")[0].rstrip(": \n")
    head = head.replace("Error whilst parsing config file", "loading the config file raised")
    frames = re.findall(r'File "([^"]+)", line (\d+)', text)
    where = f" ({frames[-1][0]}, line {frames[-1][1]})" if frames else ""
    return f"{head}: {text.strip().splitlines()[-1].strip()}{where}"
  cause = exc
  while cause is not None and not isinstance(cause, KeyError):
    cause = cause.__cause__ or cause.__context__
  if cause is not None and cause.args:  # a KeyError's str() is the repr of its message
    exc = cause
    text = str(cause.args[0]).strip()
  else:
    text = str(exc).strip()
  if isinstance(exc, (KeyError, AttributeError)) or "has no attribute" in text \
      or "not found" in text.lower():
    text = text.rstrip(".")
    return (f"unknown or invalid config field: {text}{'' if text.endswith('?') else '.'} "
            "See configs/default.py for the available fields.")
  return text or type(exc).__name__


def _check_config_files(argv: Sequence[str], flag_values) -> None:
  """Exits with one line if a ``--config`` file does not exist.

  ml_collections defers that error to the first use of the config, where it
  would surface as a traceback.
  """
  # config_flags.DEFINE_config_file flags report the type "config object"
  names = [n for n, f in flag_values._flags().items()  # pylint: disable=protected-access
           if f.flag_type() == "config object"]
  for name in names:
    for value in _flag_values(argv, name):
      path = value.split(":", 1)[0]
      if not pathlib.Path(path).is_file():
        _fail(f"--{name} {value}: config file not found")
      if path.endswith(".json"):
        _fail(_json_config_message(name, value))


_HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def _flag_values(argv: Sequence[str], name: str) -> list[str]:
  """The values given for ``--name`` in ``argv``, as ``--name=V`` or ``--name V``."""
  values = []
  for i, a in enumerate(argv[1:], start=1):
    if a.startswith(f"--{name}="):
      values.append(a.split("=", 1)[1])
    elif a == f"--{name}" and i + 1 < len(argv):
      values.append(argv[i + 1])
  return values


def parse_flags(argv: Sequence[str], flag_values=None) -> list[str]:
  """absl's flag parsing with one-line errors (exit 2) instead of usage dumps.

  Args:
    argv: the command line, program name first.
    flag_values: default ``absl.flags.FLAGS``.
  Returns:
    The remaining (non-flag) arguments.
  """
  from absl import flags
  flag_values = flags.FLAGS if flag_values is None else flag_values
  _check_config_files(argv, flag_values)
  try:
    rest = flag_values(argv)
  except SystemExit as e:  # absl exits 1 after printing --help; asking for help is no error
    if e.code == 1 and any(a.split("=")[0] in _HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise
  except Exception as e:  # pylint: disable=broad-except  # every parse error is the user's
    field_error = (isinstance(e, (KeyError, flags.Error))
                   or (isinstance(e, AttributeError) and "get_config" not in str(e)))
    if not field_error:  # raised by the config file itself (syntax, get_config())
      given = _flag_values(argv, "config")
      _fail(_config_file_message("config", given[-1] if given else "(default)", e))
    _fail(_config_flag_message(e))
  _check_loaded_configs(argv, flag_values)
  return rest


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


def _config_file_message(name: str, value: str, exc: BaseException) -> str:
  """One line for a config file that is broken or whose get_config() fails."""
  if isinstance(exc, SyntaxError):
    return f"--{name} {value}: syntax error at line {exc.lineno}: {exc.msg}"
  if isinstance(exc, OSError) and "No such file" in str(exc):
    return f"--{name} {value}: config file not found (e.g. --{name}=configs/synthetic.py)"
  if isinstance(exc, AttributeError) and "get_config" in str(exc):
    return f"--{name} {value}: the config file has no get_config() function"
  lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
  return (f"--{name} {value}: cannot load the config ({type(exc).__name__}: "
          f"{lines[-1] if lines else ''})")


def _check_loaded_configs(argv: Sequence[str], flag_values) -> None:
  """Exits with one line if a --config file failed to load (ml_collections defers
  the error of a broken file or a failing get_config() to the first use)."""
  for name, flag in flag_values._flags().items():  # pylint: disable=protected-access
    if flag.flag_type() == "config object" and type(flag.value).__name__ == "_ErrorConfig":
      given = [a.split("=", 1)[1] for a in argv[1:] if a.startswith(f"--{name}=")]
      _fail(_config_file_message(name, given[-1] if given else "(default)",
                                 object.__getattribute__(flag.value, "_error")))


def define_config_file(name: str, default: str | None, help_string: str) -> None:
  """``config_flags.DEFINE_config_file(..., lock_config=True)`` with user errors as one line.

  The default config file is loaded while the flag is defined (at import of
  the CLI script): an error there would otherwise be a traceback.
  """
  from ml_collections import config_flags
  try:
    config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)
  except Exception as e:  # pylint: disable=broad-except
    _fail(_config_flag_message(e))


class _DroppedCheckpointReads(logging.Filter):
  """Drops the log records of the reads orbax abandons after a failed checkpoint read.

  A damaged checkpoint is reported in one line (``checkpoint``), but its other
  array reads are left running: when they finish or are collected, asyncio
  logs each ("Task exception was never retrieved", "Exception in callback ...
  Event loop is closed") with a traceback: 0 to 3000 lines per failed load,
  measured. Records about anything else pass.
  """

  NEEDLES = ("Encountered error while reading array index", "Event loop is closed")

  def filter(self, record: logging.LogRecord) -> bool:
    text = record.getMessage() + (repr(record.exc_info[1]) if record.exc_info else "")
    return not any(n in text for n in self.NEEDLES)


def run(app, main: Callable,
        interrupted: str = "re-run the same command to resume from the last checkpoint"
        ) -> None:
  """``app.run(main)`` that turns user errors into one-line messages (exit 2).

  ``interrupted``: what the line after a Ctrl-C that ``main`` did not handle
  tells the user to do (a training resumes; an evaluation starts again).

  Exit status: 0 done; 1 some work failed and is listed (e.g. files that
  ``evaluate.py --mode predict`` skipped); 2 a user error (one line, no
  traceback), including an OSError of ``USER_ERRNOS`` (disk full, read-only,
  permission denied, a file in the way); 128 + N stopped by signal N after saving
  (130 Ctrl-C, 143 SIGTERM).
  """

  def wrapped(argv):
    for name in ("asyncio", "concurrent.futures"):
      logging.getLogger(name).addFilter(_DroppedCheckpointReads())
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/grain chatter
    logging.getLogger("unet_jax").setLevel(logging.INFO)
    try:
      return main(argv)
    except (UserInputError, NonFiniteError) as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      _quiet_exit(2)
    except Interrupted as e:
      print(f"interrupted: {e}", file=sys.stderr)
      sys.exit(e.exit_code)
    except Exception as e:  # pylint: disable=broad-except
      message = os_error_message(e)  # the file system's (USER_ERRNOS), also as a cause
      if message is None:
        raise  # anything else is a bug: its traceback
      _fail(message)
    except KeyboardInterrupt:
      print(f"interrupted: {interrupted}", file=sys.stderr)
      sys.exit(130)

  app.run(wrapped, flags_parser=parse_flags)
