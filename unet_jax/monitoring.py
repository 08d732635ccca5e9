"""What a long run shows: progress bar, metrics.jsonl, TensorBoard, curves.png,
and on request a profiler trace of a few steps (:class:`StepProfiler`).

``curves.png`` is redrawn by :meth:`RunMonitor.plot`, which the training loop
calls at checkpoint and evaluation time (not at every logged step), with
matplotlib's object-oriented API on its own canvas: no pyplot state, and the
caller's matplotlib backend is left alone. The drawing (about 0.25 s) runs in
one background thread from a copy of the rows, so the loop does not wait for it
(on a GPU that is some 35 paper-size steps per checkpoint); ``close`` waits.

``WORKDIR/metrics.jsonl`` has one JSON object per line:
``{"step": 50, "split": "train", "loss": ..., "accuracy": ..., "grad_norm": ...,
"steps_per_sec": ...}`` every ``log_every`` steps, and
``{"step": 1000, "split": "val", "vrand": ..., ...}`` after each validation
evaluation. On resume the lines past the resumed step are dropped (those steps
are trained again), so the file always describes one consistent run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import pathlib
import shutil
import sys
import time

import jax
import numpy as np
import tqdm

log = logging.getLogger(__name__)


class RunMonitor:
  """Progress bar + metric logs of one training run.

  Args:
    workdir: the run's directory.
    num_steps: total steps (for the bar's ETA).
    start_step: first step of this process (> 0 when resuming).
    primary: name of the validation metric plotted in curves.png.
  """

  def __init__(self, workdir: str | pathlib.Path, num_steps: int, start_step: int,
               primary: str = "vrand"):
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / "metrics.jsonl"
    self.primary = primary
    self.history = [r for r in read_metrics(self.path) if r["step"] <= start_step]
    self.path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
    self._acc: list[dict] = []
    self._t0 = time.perf_counter()
    self._tb = None
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
    except ImportError:  # optional
      log.info("tensorboardX not installed: no TensorBoard event files")
    self.interactive = sys.stderr.isatty()
    # A terminal that reports a 0x0 size (some ptys, tmux panes being set up)
    # would get an invisible bar from tqdm: fall back to 100x24.
    size = shutil.get_terminal_size((100, 24))
    self.bar = tqdm.tqdm(total=num_steps, initial=start_step, desc="train", unit="step",
                         ncols=size.columns or 100, nrows=size.lines or 24,
                         disable=not self.interactive)
    # One worker: drawings run in the order asked, the last one has every row.
    self._plotter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="curves")

  def tick(self) -> None:
    """Advances the progress bar by one dispatched step (no device sync)."""
    self.bar.update(1)

  def update(self, metrics: dict) -> None:
    """Adds one step's metrics (host floats, fetched later than the step ran)."""
    self._acc.append(metrics)
    self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)

  def _append(self, row: dict) -> None:
    self.history.append(row)
    with self.path.open("a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k not in ("step", "split") and isinstance(v, (int, float)):
          self._tb.add_scalar(f"{row['split']}/{k}", v, row["step"])
      self._tb.flush()

  def write_train(self, step: int, extra: dict | None = None) -> dict:
    """Logs the mean of the metrics since the last call."""
    if not self._acc:
      return {}
    now = time.perf_counter()
    row = {"step": step, "split": "train"}
    row.update({k: float(np.mean([m[k] for m in self._acc])) for k in self._acc[0]})
    row["steps_per_sec"] = len(self._acc) / max(now - self._t0, 1e-9)
    row.update(extra or {})
    self._acc, self._t0 = [], now
    self._append(row)
    if not self.interactive:
      log.info("step %d/%d  loss %.4f  acc %.3f  %.3f steps/s", step, self.bar.total,
               row["loss"], row.get("accuracy", float("nan")), row["steps_per_sec"])
    return row

  def write_eval(self, step: int, scores: dict) -> None:
    row = {k: float(v) for k, v in scores.items() if np.isscalar(v)}
    row.update(step=step, split="val")
    self._append(row)
    text = f"step {step}: validation " + ", ".join(
        f"{k} {v:.4f}" for k, v in row.items() if k not in ("step", "split"))
    if self.interactive:
      self.bar.write(text, file=sys.stderr)
    else:
      log.info(text)
    self.plot()

  def plot(self) -> None:
    """Redraws WORKDIR/curves.png (:func:`curves_figure`) in the background."""
    future = self._plotter.submit(save_curves, list(self.history), self.workdir, self.primary)
    future.add_done_callback(_report_plot_failure)

  def close(self) -> None:
    """Waits for the drawing of curves.png, then closes the bar and TensorBoard."""
    self._plotter.shutdown(wait=True)
    self.bar.close()
    if self._tb is not None:
      self._tb.close()


def _report_plot_failure(future: concurrent.futures.Future) -> None:
  # A figure that cannot be drawn must not stop a training; say why once per try.
  if future.exception() is not None:
    log.warning("curves.png not updated: %s", future.exception())


def read_metrics(path: str | pathlib.Path) -> list[dict]:
  """The rows of a ``metrics.jsonl`` ([] when there is none); a line cut by a crash is skipped."""
  path = pathlib.Path(path)
  if not path.is_file():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:  # a line cut by a crash
      continue
  return rows


def curves_figure(history: list[dict], primary: str = "vrand"):
  """The figure of ``curves.png`` from ``metrics.jsonl`` rows.

  Left: training loss. Right: the validation metric ``primary`` over steps, or,
  for a run without a validation split (``val_indices`` empty, e.g. a final
  recipe retrained on all slices), the training pixel accuracy, so that no
  panel is left empty.

  Returns:
    A ``matplotlib.figure.Figure`` on its own Agg canvas (no pyplot state).
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  train = [r for r in history if r["split"] == "train"]
  val = [r for r in history if r["split"] == "val" and primary in r]
  fig = Figure(figsize=(10, 3.8))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2)
  axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
  axes[0].set(title="training loss (pixel-weighted CE)", xlabel="step", ylabel="loss")
  if train and min(r["loss"] for r in train) > 0:
    axes[0].set_yscale("log")
  if val:
    axes[1].plot([r["step"] for r in val], [r[primary] for r in val], "o-")
    axes[1].set(title=f"validation {primary}", xlabel="step", ylabel=primary)
  else:
    acc = [r for r in train if "accuracy" in r]
    axes[1].plot([r["step"] for r in acc], [r["accuracy"] for r in acc], lw=1)
    axes[1].set(title="training pixel accuracy (no validation split)", xlabel="step",
                ylabel="accuracy")
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def save_curves(history: list[dict], workdir: str | pathlib.Path,
                primary: str = "vrand") -> pathlib.Path:
  """Writes ``workdir/curves.png`` atomically (a reader never sees half a PNG)."""
  workdir = pathlib.Path(workdir)
  tmp = workdir / f"curves.png.{os.getpid()}.tmp"
  curves_figure(history, primary).savefig(tmp, dpi=90, format="png")
  return tmp.replace(workdir / "curves.png")


class NullMonitor:
  """The monitor of processes other than process 0 in a multi-process run: writes nothing."""

  def tick(self) -> None:
    pass

  def update(self, metrics: dict) -> None:
    del metrics

  def write_train(self, step: int, extra: dict | None = None) -> dict:
    del step, extra
    return {}

  def write_eval(self, step: int, scores: dict) -> None:
    del step, scores

  def plot(self) -> None:
    pass

  def close(self) -> None:
    pass


class StepProfiler:
  """A ``jax.profiler`` trace of the train steps ``first..last``.

  ``config.profile_steps`` chooses them (``config_lib.parse_step_range``); skip
  the first steps, which compile. The trace goes to
  ``WORKDIR/profile/process_I/plugins/profile/<time>/`` (``*.xplane.pb``: open
  it with TensorBoard's profile plugin or XProf), one folder per process so that
  processes on one host do not overwrite each other. Each step runs under a
  ``StepTraceAnnotation("train", step_num=step)``, by which the viewers split the
  trace into steps. The trace stops only when the last profiled step's results
  are ready, so that step's device work is in it (the train loop itself never
  waits on the device).

  Args:
    workdir: the run's directory.
    steps: ``(first, last)`` or None (no profile: every method is a no-op).
    process_index: ``jax.process_index()``.
  """

  def __init__(self, workdir: str | os.PathLike, steps: tuple[int, int] | None,
               process_index: int = 0):
    self.steps = steps
    self.logdir = pathlib.Path(workdir) / "profile" / f"process_{process_index}"
    self.active = False
    self.done = False

  def step(self, step: int) -> contextlib.AbstractContextManager:
    """Context for running ``step``: starts the trace at the first profiled step
    (or the first one after a resume inside the range) and annotates it."""
    if self.steps is None or self.done:
      return contextlib.nullcontext()
    first, last = self.steps
    if not self.active and first <= step <= last:
      self.logdir.mkdir(parents=True, exist_ok=True)
      jax.profiler.start_trace(str(self.logdir))
      self.active = True
      log.info("profiling steps %d-%d into %s", step, last, self.logdir)
    if not self.active:
      return contextlib.nullcontext()
    return jax.profiler.StepTraceAnnotation("train", step_num=step)

  def after(self, step: int, outputs, final: bool = False) -> None:
    """After ``step`` was dispatched: at the last profiled step (or ``final``,
    the run's last step), waits for ``outputs`` and stops the trace."""
    if self.active and (step >= self.steps[1] or final):
      jax.block_until_ready(outputs)
      self.close()

  def close(self) -> None:
    """Stops a running trace (also when the run ends early or fails)."""
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      self.done = True
      log.info("profile written to %s", self.logdir)
