r"""How long a checkpoint holds up the train loop: waiting saves vs background saves.

At every ``checkpoint_every`` steps the loop saves the train state (with the
grain iterator position) and redraws ``curves.png``. This script times, for the
train state of a config (parameters + momentum, and the average if
``ema_decay > 0``), what the loop waits for:

* ``checkpoint.save`` with a synchronous manager (the CPU default) and with an
  asynchronous one (``config.async_checkpoints``, the GPU/TPU default), and how
  long the background write then takes to finish;
* ``RunMonitor.plot()`` (drawing in a background thread) against drawing the same
  rows in the loop (``monitoring.save_curves``).

The variants alternate in every round, on the same state, into fresh
directories under ``--dir`` (the disk the workdir would be on).

Usage (from the repo root)::

  python benchmarks/checkpoint_cost.py --config isbi --rounds 5 --out results/checkpoint_cost.md
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(config_name: str, rounds: int, directory: str,
            history_file: str) -> tuple[dict[str, list[float]], float]:
  """Seconds per variant and round, and the state's size in MiB."""
  import jax
  from unet_jax import checkpoint, config_lib, datasets, input_pipeline, monitoring, train_lib
  from unet_jax import model as model_lib

  tiny = config_lib.resolve(config_lib.load_file(str(REPO / "configs/tiny.py")), 1)
  it = input_pipeline.make_train_iterator(tiny, datasets.load_split(tiny, "train"))
  next(it)  # a grain iterator with a position to save
  c = config_lib.resolve(config_lib.load_file(str(REPO / f"configs/{config_name}.py")), 1)
  state = train_lib.create_train_state(c, model_lib.from_config(c), jax.random.PRNGKey(0))
  jax.block_until_ready(state)
  mib = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
  history = monitoring.read_metrics(history_file)

  times: dict[str, list[float]] = {k: [] for k in (
      "save, waiting", "save, background: returns", "save, background: written",
      "curves.png in the loop", "curves.png, background: plot() returns")}
  for r in range(rounds):
    for async_save in (False, True):
      d = tempfile.mkdtemp(dir=directory)
      manager = checkpoint.train_manager(d, 2, async_save=async_save)
      t0 = time.perf_counter()
      checkpoint.save(manager, 1, state, it)
      t1 = time.perf_counter()
      manager.wait_until_finished()
      t2 = time.perf_counter()
      manager.close()
      if async_save:
        times["save, background: returns"].append(t1 - t0)
        times["save, background: written"].append(t2 - t0)
      else:
        times["save, waiting"].append(t2 - t0)
    d = tempfile.mkdtemp(dir=directory)
    t0 = time.perf_counter()
    monitoring.save_curves(history, d)
    times["curves.png in the loop"].append(time.perf_counter() - t0)
    monitor = monitoring.RunMonitor(tempfile.mkdtemp(dir=directory), num_steps=1, start_step=0)
    monitor.history = list(history)
    t0 = time.perf_counter()
    monitor.plot()
    times["curves.png, background: plot() returns"].append(time.perf_counter() - t0)
    monitor.close()
    print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()),
          flush=True)
  return times, mib


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="isbi", help="configs/NAME.py whose train state is saved")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--dir", default=tempfile.gettempdir(), help="where the checkpoints go")
  p.add_argument("--history", default=str(REPO / "results/isbi_gpu_6k/metrics.jsonl"),
                 help="metrics.jsonl drawn as curves.png")
  p.add_argument("--out", default="")
  args = p.parse_args()
  from train_step import cpu_model  # benchmarks/ is on sys.path when run as a script
  load0 = os.getloadavg()[0]
  times, mib = measure(args.config, args.rounds, args.dir, args.history)
  rows = ["| what the loop waits for | median | min | max |", "|---|---|---|---|"]
  for name, v in times.items():
    rows.append(f"| {name} | {statistics.median(v):.3f} s | {min(v):.3f} s | {max(v):.3f} s |")
  text = "\n".join([
      f"{time.strftime('%Y-%m-%d %H:%M')}, {cpu_model()}, {os.cpu_count()} CPU cores; "
      f"1-min load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after. "
      f"Train state of configs/{args.config}.py: {mib:.0f} MiB; curves.png of "
      f"{pathlib.Path(args.history).relative_to(REPO) if args.history.startswith(str(REPO)) else args.history}; "
      f"{args.rounds} rounds, variants alternating.", "", *rows, ""])
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
  main()
