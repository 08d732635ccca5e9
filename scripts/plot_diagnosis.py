"""Plots scripts/diagnose_training.py output: accuracy, logit spread, dead ReLUs per variant.

    python scripts/plot_diagnosis.py results/dic_hela_cpu/diagnosis/t572_150_steps.jsonl OUT.png
"""

import collections
import json
import sys

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def main(path: str, out: str) -> None:
  runs = collections.defaultdict(list)
  for line in open(path):
    row = json.loads(line)
    runs[row["variant"]].append(row)
  fig = Figure(figsize=(13, 3.4))
  FigureCanvasAgg(fig)
  keys = [("loss", "weighted loss"), ("accuracy", "pixel accuracy"),
          ("logit_diff_std", "std of logit difference"), ("dead_fraction", "dead ReLU channels")]
  for i, (key, title) in enumerate(keys):
    ax = fig.add_subplot(1, len(keys), i + 1)
    for name, rows in runs.items():
      ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker=".", label=name)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    if key in ("loss", "logit_diff_std"):
      ax.set_yscale("log")
  fig.axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out, dpi=80)


if __name__ == "__main__":
  main(*sys.argv[1:3])
