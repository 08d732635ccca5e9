r"""Throughput of overlap-tile inference, and the memory estimate against XLA's.

``predict_tiled`` on 512x512 images with the paper's net (64 features, depth
4, random He-normal weights: speed does not depend on the values), with and
without test-time augmentation (8 dihedral views), at tile sides 572 (the
paper's; 4 tiles per 512x512 image) and 700 (one tile covers the image).
The memory table compares ``tiling.estimate_memory`` with the compiled
inference call's ``memory_analysis()`` (argument + output + temp bytes).

Usage (from the repo root; a few minutes on a 2-core CPU)::

  nohup .venv/bin/python benchmarks/inference.py > /tmp/inference_bench.log 2>&1 &
  .venv/bin/python benchmarks/inference.py --memory_only

Writes the tables to ``--out`` (results/inference_benchmark.md).
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from unet_jax import UNet, model as model_lib, tiling  # noqa: E402

MiB = 1 << 20


def he_variables(model: UNet, in_channels: int = 1, seed: int = 0):
  """Random He-normal kernels (zero biases) from the shapes of ``model.init``."""
  t = model_lib.valid_input_size(1, model.depth)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, t, t, in_channels)), train=False))
  rng = np.random.default_rng(seed)

  def draw(leaf):
    if leaf.ndim == 1:
      return np.zeros(leaf.shape, np.float32)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

  return jax.tree.map(draw, shapes)


def xla_memory(model: UNet, variables, tile: int, batch: int) -> int:
  """Argument + output + temp bytes of the compiled batched inference call."""
  x = jax.ShapeDtypeStruct((batch, tile, tile, 1), jnp.float32)
  stats = tiling._probabilities.lower(model, variables, x).compile().memory_analysis()  # pylint: disable=protected-access
  return stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes


def memory_rows(cases) -> list[str]:
  rows = ["| features | tile | batch | estimate MiB | XLA MiB | estimate / XLA |",
          "| --- | --- | --- | --- | --- | --- |"]
  for features, tile, batch in cases:
    model = UNet(features=features, depth=4, dropout_rate=0.0)
    variables = he_variables(model)
    xla = xla_memory(model, variables, tile, batch)
    est = tiling.estimate_memory(tile, features=features, depth=4, num_classes=2,
                                 in_channels=1, batch_size=batch)
    rows.append(f"| {features} | {tile} | {batch} | {est / MiB:.0f} | {xla / MiB:.0f} | "
                f"{est / xla:.2f} |")
    print(rows[-1], flush=True)
  return rows


def time_predict(model, variables, image, reps: int, warm_up: bool, **kwargs) -> float:
  """Median seconds of ``predict_tiled`` (after a warm-up call that compiles, if asked)."""
  if warm_up:
    tiling.predict_tiled(model, variables, image, **kwargs)
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    tiling.predict_tiled(model, variables, image, **kwargs)
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def throughput_rows(tiles, batch: int, reps: int, tta_reps: int) -> list[str]:
  model = UNet(features=64, depth=4, dropout_rate=0.0)
  variables = he_variables(model)
  image = np.random.default_rng(0).normal(size=(512, 512)).astype(np.float32)
  rows = ["| tile | output | tiles / image | batch | TTA | s / image | images / s | tiles / s |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for tile in tiles:
    plan = tiling.plan_tiles(512, 512, tile, 4)
    for tta, n in ((False, reps), (True, tta_reps)):
      if n <= 0:
        continue
      seconds = time_predict(model, variables, image, n, warm_up=not tta, tile_size=tile,
                             batch_size=batch, tta=tta)  # TTA reuses the compiled call
      count = plan.num_tiles * (8 if tta else 1)
      rows.append(f"| {tile} | {plan.out} | {count} | {batch} | {'8 views' if tta else 'no'} | "
                  f"{seconds:.2f} | {1 / seconds:.3f} | {count / seconds:.2f} |")
      print(rows[-1], flush=True)
  return rows


def method_rows(features: int, sizes, tile: int, batch: int, reps: int,
                tta: bool = False) -> list[str]:
  """images/s of ``predict_tiled`` with ``method="host"`` (NumPy tiling around one
  jitted batch call) and ``method="device"`` (one compiled program), interleaved."""
  model = UNet(features=features, depth=4, dropout_rate=0.0)
  variables = he_variables(model)
  rows = ["| image | features | tile | tiles | batch | TTA | host s/image | device s/image "
          "| host images/s | device images/s | device / host time | first call host / device s |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for size in sizes:
    image = np.random.default_rng(0).normal(size=(size, size)).astype(np.float32)
    plan = tiling.plan_tiles(size, size, tile, 4)
    kw = dict(tile_size=tile, batch_size=batch, tta=tta)
    first, times = {}, {"host": [], "device": []}
    for method in times:  # compile both first
      t0 = time.perf_counter()
      out = tiling.predict_tiled(model, variables, image, method=method, **kw)
      first[method] = time.perf_counter() - t0
      if method == "host":
        ref = out
    assert np.abs(out - ref).max() < 1e-5
    for _ in range(reps):
      for method in times:
        t0 = time.perf_counter()
        tiling.predict_tiled(model, variables, image, method=method, **kw)
        times[method].append(time.perf_counter() - t0)
    h, d = float(np.median(times["host"])), float(np.median(times["device"]))
    rows.append(f"| {size}² | {features} | {tile} | {plan.num_tiles * (8 if tta else 1)} | "
                f"{batch} | {'8 views' if tta else 'no'} | {h:.2f} | {d:.2f} | {1 / h:.3f} | "
                f"{1 / d:.3f} | {d / h:.2f} | {first['host']:.1f} / {first['device']:.1f} |")
    print(rows[-1], flush=True)
  return rows


def _machine(load_before: float) -> str:
  """Date, cores, CPU model and the 1-min load average before and now, for a table header."""
  from train_step import cpu_model  # benchmarks/ is on sys.path when run as a script
  cores = os.cpu_count()
  return (f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {cores} CPU cores ({cpu_model()}), "
          f"1-min load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after "
          f"(about {cores} when this benchmark alone runs: more means other jobs shared "
          "the cores)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tiles", default="572,700", help="input tile sides")
  parser.add_argument("--batch", type=int, default=1, help="tiles per call")
  parser.add_argument("--reps", type=int, default=2, help="timed calls without TTA")
  parser.add_argument("--tta_reps", type=int, default=1, help="timed calls with TTA (0 = skip)")
  parser.add_argument("--memory_only", action="store_true")
  parser.add_argument("--methods", action="store_true",
                      help="only the host-vs-device table (predict_tiled method=)")
  parser.add_argument("--features", type=int, default=64, help="--methods: net width")
  parser.add_argument("--sizes", default="512,2048", help="--methods: image sides")
  parser.add_argument("--out", default=os.path.join(REPO, "results", "inference_benchmark.md"))
  args = parser.parse_args()

  load0 = os.getloadavg()[0]
  if args.methods:
    rows = method_rows(args.features, [int(x) for x in args.sizes.split(",")],
                       int(args.tiles.split(",")[0]), args.batch, args.reps)
    text = ["# Overlap-tile inference: host tiling vs one compiled program", "",
            f"{_machine(load0)}, jax {jax.__version__}, float32, depth 4, random weights, "
            f"medians of {args.reps} interleaved calls.", "", *rows, ""]
    with open(args.out, "w") as f:
      f.write("\n".join(text))
    print(f"wrote {args.out}")
    return
  memory = memory_rows([(8, 204, 4), (8, 572, 4), (64, 204, 4), (64, 572, 1), (64, 572, 4),
                        (64, 700, 1), (64, 700, 4)])
  speed = [] if args.memory_only else throughput_rows(
      [int(t) for t in args.tiles.split(",")], args.batch, args.reps, args.tta_reps)
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  header = [
      "# Inference benchmark (benchmarks/inference.py)", "",
      f"{_machine(load0)}, "
      f"jax {jax.__version__} on {jax.default_backend()}, float32, paper net "
      f"(64 features, depth 4, 31.0 M parameters), 512x512 image, random weights.", ""]
  text = header
  if speed:
    text += ["## Throughput of `predict_tiled`", "", *speed, "",
             f"Peak RSS of the benchmark process: {rss:.0f} MiB.", ""]
  text += ["## Memory: `tiling.estimate_memory` vs XLA's compiled `memory_analysis()`", "",
           "XLA = argument + output + temp bytes of the jitted batched call "
           "(parameters, input tiles, probabilities, activations).", "", *memory, ""]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write("\n".join(text))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
