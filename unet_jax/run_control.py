"""One training per workdir, and a clean stop on Ctrl-C / SIGTERM.

:class:`WorkdirLock` is the file ``WORKDIR/train.lock`` holding the pid, the
host and the start time of the run that owns the workdir. A second training
on the same workdir stops with a message naming the first (exit 2). A lock
left by a process that no longer exists on this host (a killed run) is taken
over with a warning; a lock of another host cannot be checked and must be
removed by hand, which the message says.

:class:`StopOnSignal` turns the first SIGINT (Ctrl-C) or SIGTERM (``kill``,
batch schedulers, ``docker stop``) into a request that the training loop
honours after the current step: it writes a checkpoint (train state and data
iterator position) and raises :class:`unet_jax.errors.Interrupted`, so that re-running the
same command resumes at exactly that step. A second Ctrl-C aborts at once
(the last checkpoint is kept). With several processes :class:`StopTogether`
does the same for SIGTERM (a cluster's preemption notice), in step across
all processes.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
import signal
import socket
import sys
import tempfile
import threading

from unet_jax.errors import Interrupted, UserInputError  # pylint: disable=unused-import

log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def writable_dir(path: str | os.PathLike, flag: str = "--out") -> pathlib.Path:
  """Creates the folder ``path`` and checks that a file can be written in it.

  Called before any work (outputs, the workdir), so that an unwritable folder is
  one line at once rather than a traceback after the work. The probe file has a
  unique name: the processes of a run (several hosts, same pids) may probe the
  same folder at once.

  Raises:
    UserInputError: naming ``flag``, the path and the reason.
  """
  folder = pathlib.Path(path).expanduser()
  if folder.exists() and not folder.is_dir():
    raise UserInputError(f"{flag} {path} is a file, not a folder: choose a folder "
                         "(it is created if missing)")
  try:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test."):
      pass
  except OSError as e:
    raise UserInputError(f"{flag} {path} is not writable ({e.strerror or e}): choose a "
                         "folder you can write to") from None
  return folder


class WorkdirLock:
  """Context manager holding ``WORKDIR/train.lock`` for one training process."""

  def __init__(self, workdir: str | os.PathLike):
    self.path = pathlib.Path(workdir) / LOCK_NAME
    self.owner = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().isoformat(timespec="seconds"),
                  "command": " ".join(sys.argv)[:500]}
    self._held = False

  def _read(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}

  def _try_create(self) -> bool:
    # Write the content to a private file, then hard-link it to the lock name:
    # link() is atomic and fails if the name exists, so two starting runs can
    # never both succeed or read a half-written lock.
    tmp = self.path.with_name(f".{LOCK_NAME}.{os.getpid()}")
    tmp.write_text(json.dumps(self.owner))
    try:
      os.link(tmp, self.path)
      return True
    except FileExistsError:
      return False
    finally:
      tmp.unlink(missing_ok=True)

  def acquire(self) -> None:
    """Takes the lock; raises UserInputError naming the run that holds it."""
    for _ in range(3):
      if self._try_create():
        self._held = True
        return
      other = self._read()
      if other is None:
        continue  # released between our two calls: try again
      pid, host = other.get("pid"), other.get("host")
      if host == self.owner["host"] and isinstance(pid, int) and not _pid_alive(pid):
        log.warning("taking over the stale lock %s of process %d (started %s), which no "
                    "longer runs", self.path, pid, other.get("started", "?"))
        self.path.unlink(missing_ok=True)
        continue
      who = (f"process {pid} on {host}, started {other.get('started', '?')}"
             if pid else "an unreadable lock")
      raise UserInputError(
          f"{self.path.parent} is in use by another training ({who}); wait for it to finish "
          f"or stop it, or choose another --workdir (if that run is gone, delete {self.path})")
    raise UserInputError(f"could not take the lock {self.path}: another training keeps "
                         "starting in this workdir")

  def release(self) -> None:
    if self._held:
      other = self._read()
      if other and other.get("pid") == self.owner["pid"]:
        self.path.unlink(missing_ok=True)
      self._held = False

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


class NoStop:
  """Stand-in for :class:`StopOnSignal` where signals keep their default action."""
  signum = None
  requested = False
  aborted = False

  def check(self, step: int) -> bool:
    del step
    return False

  def __enter__(self) -> "NoStop":
    return self

  def __exit__(self, *exc) -> None:
    return None


class StopTogether:
  """Several processes: a SIGTERM to any of them stops all after the same step.

  JAX's preemption service (started by ``jax.distributed.initialize``) catches
  SIGTERM in every process and spreads the notice; ``check`` then turns true
  in all processes at the same step (``reached_preemption_sync_point``), so
  they save one checkpoint collectively and exit 143. SIGINT keeps its default
  action: a Ctrl-C reaches one process only, and the others could not join
  its save. ``check`` must be called at every step, by every process.
  """
  signum = signal.SIGTERM
  aborted = False

  def __init__(self):
    self.requested = False

  def check(self, step: int) -> bool:
    """Whether to save and stop after ``step`` (the same answer in every process)."""
    if not self.requested:
      import jax  # pylint: disable=g-import-not-at-top
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      self.requested = multihost_utils.reached_preemption_sync_point(step)
      if self.requested and jax.process_index() == 0:
        print(f"\nSIGTERM: all processes stop after step {step} and save a checkpoint",
              file=sys.stderr, flush=True)
    return self.requested

  def __enter__(self) -> "StopTogether":
    return self

  def __exit__(self, *exc) -> None:
    return None


class StopOnSignal:
  """Context manager: SIGINT/SIGTERM set :attr:`signum` instead of killing the process.

  Outside the main thread (where Python cannot install handlers) it does nothing.
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.signum: int | None = None
    self.aborted = False  # a second Ctrl-C: True even where a library swallowed the interrupt
    self._previous: dict = {}

  @property
  def requested(self) -> bool:
    return self.signum is not None

  def check(self, step: int) -> bool:
    """Whether to save and stop after ``step``."""
    del step
    return self.requested

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      self.aborted = True
      raise KeyboardInterrupt  # a second Ctrl-C: stop now
    self.signum = signum
    print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
          "(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

  def __enter__(self) -> "StopOnSignal":
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous.clear()
