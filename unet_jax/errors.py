"""Errors caused by the user's input (files, config, tile sizes).

The CLIs catch :class:`UserInputError` and print its message alone (no
traceback) with a non-zero exit code, so every message must say what is wrong,
name the culprit file or field, and what to do about it.
"""


class UserInputError(ValueError):
  """Bad input that the user can fix: a clear, actionable message."""


class NonFiniteError(RuntimeError):
  """Training produced a NaN/Inf loss or gradient; the message names the step."""
