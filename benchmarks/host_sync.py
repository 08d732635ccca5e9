r"""Step rate of the train loop, this checkout against another (e.g. before a change).

Runs ``train.py`` of each checkout on the same configs for a short run, in
turns (A, B, A, B, ...) so that load from other users falls on both alike,
and reads ``steps_per_sec`` from ``metrics.jsonl``, leaving out the first
logged interval (it holds the compilation). Written to measure the train loop
that fetches metrics every ``log_every`` steps against one that synced every
step.

Usage (from the repo root; ``/tmp/before`` a checkout of the older commit,
e.g. ``git archive OLD | tar -x -C /tmp/before``)::

  python benchmarks/host_sync.py --other /tmp/before --configs tiny,synthetic

Prints a markdown table (and writes it to ``--out`` if given).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_once(tree: pathlib.Path, config: str, steps: int, log_every: int) -> list[float]:
  """steps/s of each logged interval after the first, of one fresh training run."""
  with tempfile.TemporaryDirectory() as work:
    cmd = [sys.executable, "train.py", f"--config=configs/{config}.py", f"--workdir={work}",
           f"--config.num_steps={steps}", f"--config.log_every={log_every}",
           "--config.eval_every=0", f"--config.checkpoint_every={steps}"]
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(tree)))
    if proc.returncode:
      raise RuntimeError(f"{tree}: {proc.stderr[-1500:]}")
    rows = [json.loads(l) for l in pathlib.Path(work, "metrics.jsonl").read_text().splitlines()]
    return [r["steps_per_sec"] for r in rows if r["split"] == "train"][1:]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--other", required=True, help="the checkout to compare with")
  p.add_argument("--configs", default="tiny,synthetic")
  p.add_argument("--steps", default="tiny=200,synthetic=30", help="steps per run, per config")
  p.add_argument("--log_every", default="tiny=50,synthetic=10")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--out", default="")
  args = p.parse_args()
  steps = dict(kv.split("=") for kv in args.steps.split(","))
  log_every = dict(kv.split("=") for kv in args.log_every.split(","))
  trees = {"this": REPO, "other": pathlib.Path(args.other).resolve()}
  load0 = os.getloadavg()[0]
  rows = ["| config | steps | log_every | other: steps/s | this: steps/s | this / other |",
          "|---|---|---|---|---|---|"]
  for config in args.configs.split(","):
    rates: dict[str, list[float]] = {k: [] for k in trees}
    for _ in range(args.rounds):
      for name, tree in trees.items():
        rates[name] += run_once(tree, config, int(steps[config]), int(log_every[config]))
        print(config, name, [f"{r:.2f}" for r in rates[name]], flush=True)
    a, b = statistics.median(rates["other"]), statistics.median(rates["this"])
    rows.append(f"| {config} | {steps[config]} | {log_every[config]} | {a:.2f} | {b:.2f} | "
                f"{b / a:.2f} |")
  text = "\n".join([f"Load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after; "
                    f"{os.cpu_count()} CPU cores; medians of the logged intervals "
                    f"({args.rounds} interleaved runs each).", "", *rows, ""])
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
  main()
