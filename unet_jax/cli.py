"""Shared plumbing of the command-line tools: logging and clean error exits.

A user's mistake (bad file, bad field, bad size) or a diverged run ends with
one message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

from unet_jax.errors import Interrupted, NonFiniteError, UserInputError


def _config_flag_message(exc: BaseException) -> str | None:
  """Rephrases ml_collections' errors for unknown/invalid --config fields."""
  inner = exc
  while inner.args and isinstance(inner.args[0], BaseException):  # AttributeError(KeyError(..))
    inner = inner.args[0]
  text = inner.args[0] if inner.args and isinstance(inner.args[0], str) else str(inner)
  text = " ".join(text.split()).rstrip(".")
  if isinstance(exc, (KeyError, AttributeError)) or "has no attribute" in text \
      or "not found" in text.lower():
    return (f"unknown or invalid config field: {text} "
            "(configs/default.py lists the fields)")
  return None


def _flag_value_in_argv(name: str) -> str | None:
  """The value of ``--name=V`` / ``--name V`` on the command line (the last one)."""
  value = None
  args = sys.argv[1:]
  for i, arg in enumerate(args):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(args):
      value = args[i + 1]
  return value


def _config_file_message(name: str, exc: BaseException) -> str:
  """One line for a config file that is missing, broken or whose get_config() fails."""
  path = _flag_value_in_argv(name) or "(default)"
  if isinstance(exc, SyntaxError):
    return f"--{name} {path}: syntax error at line {exc.lineno}: {exc.msg}"
  if isinstance(exc, OSError) and "No such file" in str(exc):
    return f"--{name} {path}: config file not found (e.g. --{name}=configs/synthetic.py)"
  if isinstance(exc, AttributeError) and "get_config" in str(exc):
    return f"--{name} {path}: the config file has no get_config() function"
  lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
  return f"--{name} {path}: cannot load the config ({type(exc).__name__}: " \
         f"{lines[-1] if lines else ''})"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with user errors as one line and exit 2 (bad flag type,
  unknown flag or config field, missing or broken config file)."""
  from absl import flags
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  try:
    rest = FLAGS(argv)
  except flags.Error as e:  # bad type or value, unknown flag
    _fail(f"{e} (see --helpfull)")
  except SystemExit:
    raise
  except Exception as e:  # pylint: disable=broad-except  # raised by a config file or field
    _fail(_flag_error_message(e))
  for name in ("config",):
    value = FLAGS[name].value if name in FLAGS else None
    if type(value).__name__ == "_ErrorConfig":  # ml_collections defers load errors
      _fail(_config_file_message(name, object.__getattribute__(value, "_error")))
  return rest


def _flag_error_message(exc: BaseException) -> str:
  """One line for an exception raised while the --config flag loads its file."""
  if isinstance(exc, (KeyError, AttributeError)) and "get_config" not in str(exc):
    return _config_flag_message(exc)  # an unknown --config.FIELD
  return _config_file_message("config", exc)  # missing or broken file, failing get_config()


def define_config_file(name: str, default: str | None, help_string: str) -> None:
  """``config_flags.DEFINE_config_file(..., lock_config=True)`` with user errors as one line.

  The default config file is loaded, and ``--name.field=...`` overrides applied
  to it, while the flag is defined (at import of the CLI script): an unknown
  field then fails there, before :func:`run` can catch it.
  """
  from ml_collections import config_flags
  try:
    config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)
  except Exception as e:  # pylint: disable=broad-except
    _fail(_flag_error_message(e))


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def run(app, main: Callable) -> None:
  """``app.run(main)`` that turns user errors into one-line messages (exit 2).

  Exit status: 0 done; 1 some work failed and is listed (e.g. files that
  ``evaluate.py --mode predict`` skipped); 2 a user error (one line, no
  traceback); 128 + N stopped by signal N after saving (130 Ctrl-C, 143 SIGTERM).
  """

  def wrapped(argv):
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/grain chatter
    logging.getLogger("unet_jax").setLevel(logging.INFO)
    try:
      return main(argv)
    except (UserInputError, NonFiniteError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except Interrupted as e:
      print(f"interrupted: {e}", file=sys.stderr)
      sys.exit(e.exit_code)
    except KeyboardInterrupt:
      print("interrupted: re-run the same command to resume from the last checkpoint",
            file=sys.stderr)
      sys.exit(130)

  app.run(wrapped, flags_parser=parse_flags)
