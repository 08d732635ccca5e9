"""Throughput of the training data pipeline (elastic deformation + weight maps).

    python benchmarks/loader.py --config configs/isbi.py --num_workers 0 2

Prints samples/s for each worker count and writes a markdown table to
results/loader_benchmark.md, to compare with the train step time (docs/performance.md):
the step never waits on data when samples/s x step time >= batch size.
Weight maps are computed (or read from the cache) before timing starts.
"""

import argparse
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unet_jax import config_lib, datasets  # noqa: E402
from unet_jax import input_pipeline  # noqa: E402


def samples_per_second(config, train, num_workers: int, batches: int) -> float:
  config.num_workers = num_workers
  it = input_pipeline.make_train_iterator(config, train)
  next(it)  # start-up (worker processes, first batch)
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  rate = batches * config.batch_size / (time.perf_counter() - t0)
  if hasattr(it, "close"):
    it.close()
  return rate


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/isbi.py")
  p.add_argument("--num_workers", type=int, nargs="+", default=[0, 2])
  p.add_argument("--batches", type=int, default=40)
  p.add_argument("--out", default=str(REPO / "results" / "loader_benchmark.md"))
  args = p.parse_args()
  config = config_lib.load_file(args.config)
  train = datasets.load_split(config, "train")
  input_pipeline.weights_for(config, train)  # fill the cache outside the timing
  rows = []
  for w in args.num_workers:
    rate = samples_per_second(config, train, w, args.batches)
    rows.append(f"| {args.config} | {config.tile_size} | {w} | {rate:.1f} | {1000 / rate:.0f} |")
    print(rows[-1], flush=True)
  table = "\n".join([
      f"# Loader throughput ({os.cpu_count()} CPU cores, load average "
      f"{os.getloadavg()[0]:.1f} at the end)", "",
      "| config | tile | num_workers | samples/s | ms/sample |", "|---|---|---|---|---|", *rows, ""])
  pathlib.Path(args.out).write_text(table)
  print(table)


if __name__ == "__main__":
  main()
