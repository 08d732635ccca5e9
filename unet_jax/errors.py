"""Errors caused by the user's input (files, config, tile sizes).

The CLIs catch :class:`UserInputError` and print its message alone (no
traceback) with a non-zero exit code, so every message must say what is wrong,
name the culprit file or field, and what to do about it.
"""

import signal


class UserInputError(ValueError):
  """Bad input that the user can fix: a clear, actionable message."""


class NonFiniteError(RuntimeError):
  """Training produced a NaN/Inf loss or gradient; the message names the step."""


class Interrupted(Exception):
  """Training stopped on a signal after saving a checkpoint at ``step``."""

  def __init__(self, signum: int, step: int | None):
    self.signum = signum
    self.step = step
    name = signal.Signals(signum).name
    saved = (f"checkpoint saved at step {step}" if step else "no step was trained, nothing saved")
    super().__init__(f"stopped by {name}: {saved}; re-run the same command to resume")

  @property
  def exit_code(self) -> int:
    return 128 + self.signum  # the shell's convention (130 for Ctrl-C, 143 for SIGTERM)
