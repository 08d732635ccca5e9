"""Redraws WORKDIR/curves.png from WORKDIR/metrics.jsonl (e.g. in a committed results folder).

    python scripts/plot_curves.py results/isbi_cpu_same14k/seed0 [more run folders] [--primary vrand]

Training draws the same figure itself (unet_jax/monitoring.py); this script only
re-draws it after the plotting changed, from the logged rows, without a checkpoint.
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from unet_jax import monitoring  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+", help="run folders with a metrics.jsonl")
  parser.add_argument("--primary", default="vrand", help="validation metric to plot")
  args = parser.parse_args(argv)
  for workdir in map(pathlib.Path, args.workdirs):
    rows = monitoring.read_metrics(workdir / "metrics.jsonl")
    if not rows:
      print(f"error: no metrics.jsonl rows in {workdir}; give a run folder", file=sys.stderr)
      return 2
    print(monitoring.save_curves(rows, workdir, args.primary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
