r"""Layer by layer: the 3x3 convolutions of the U-Net on XLA:CPU's two libraries and PyTorch.

Times each 3x3 convolution of the net alone, in its three parts: forward
(conv + bias + ReLU, the VALID output), input gradient (dX) and weight
gradient (dW), on

  jax_eigen    the ops of ``unet_jax.layers`` jitted with
               ``layers.xla_compiler_options()``: every convolution on XLA's
               Eigen path (what the train step uses);
  jax_ynnpack  the same ops under XLA's default options: convolutions on
               YNNPACK (what the forward-only inference programs use);
  jax_eigen_valid  forward only: the plain VALID convolution (+ bias + ReLU) on
               Eigen, instead of ``layers.conv3x3_valid``'s SAME convolution +
               crop (docs/performance.md, "Tried without gain");
  torch        eager PyTorch, NCHW: ``conv2d`` + ``relu_`` under ``no_grad``,
               ``torch.nn.grad.conv2d_input`` / ``conv2d_weight`` (the oneDNN
               kernels its autograd calls).

Why: it says whether the whole-net gap to PyTorch (docs/performance.md) lies in
the convolution kernels or around them. If the faster XLA library per layer adds
up to what PyTorch's kernels take, no choice of library per layer can make the
forward pass much faster than PyTorch's.

Each framework runs in its own worker process; the parent interleaves them call
by call (round r: layer 1 forward on each worker, layer 1 dX on each, ...), so
that load from elsewhere falls on all alike, and reports medians. Each timed call
comes after ``--settle`` (default 1) untimed calls of the same op and layer by the
same worker, so that no timed call directly follows another framework's. Before timing,
every worker computes each op on the same inputs (drawn from one NumPy seed) and
the parent checks that all workers agree (a projection of every output onto a
fixed random direction, to 1e-4 of its scale).

Usage (from the repo root)::

  .venv/bin/python benchmarks/conv_layers.py --size 572 --features 64 --reps 7
  .venv/bin/python benchmarks/conv_layers.py --variants jax_eigen,jax_ynnpack

Writes ``results/conv_layers_<size>_f<features>[_<tag>].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import ask_worker, cpu_model, load_average, stop_workers  # noqa: E402  pylint: disable=g-import-not-at-top

VARIANTS = ("jax_eigen", "jax_ynnpack", "torch", "jax_eigen_valid")
OPS = ("fwd", "dx", "dw")
AGREE = 1e-4  # relative tolerance between the workers' outputs (float32 sums)


def conv_layers(size: int, features: int, depth: int) -> list[tuple[int, int, int]]:
  """The 3x3 convolutions of the VALID U-Net in the order they run.

  Returns:
    ``(input side, C_in, C_out)`` per convolution: 2 per level going down, 2 at
    the bottom, 2 per level going up (their input is the concatenation).
  """
  side, c_in, out = size, 1, []
  for level in range(depth + 1):
    f = features * 2**level
    for _ in range(2):
      out.append((side, c_in, f))
      side, c_in = side - 2, f
    if level < depth:
      side //= 2
  for level in reversed(range(depth)):
    f = features * 2**level
    side, c_in = 2 * side, 2 * f  # up-conv doubles the side; concat with the skip
    for _ in range(2):
      out.append((side, c_in, f))
      side, c_in = side - 2, f
  return out


def _inputs(layer: tuple[int, int, int], seed: int):
  """One layer's NumPy inputs, NHWC/HWIO: x, kernel, bias, output gradient, probes."""
  import numpy as np
  side, c, o = layer
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((1, side, side, c), np.float32)
  k = (rng.standard_normal((3, 3, c, o), np.float32) / np.sqrt(9 * c)).astype(np.float32)
  b = rng.standard_normal(o).astype(np.float32) * 0.1
  g = rng.standard_normal((1, side - 2, side - 2, o), np.float32)
  probes = {"fwd": rng.standard_normal(g.shape), "dx": rng.standard_normal(x.shape),
            "dw": rng.standard_normal(k.shape)}
  return x, k, b, g, probes


def _check(out, probe) -> list[float]:
  """``[<out, probe>, <|out|, |probe|>]`` in float64: agreement and its scale."""
  import numpy as np
  out = np.asarray(out, np.float64)
  return [float((out * probe).sum()), float((np.abs(out) * np.abs(probe)).sum())]


# --------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------


def _jax_ops(variant: str, layers_: list, seed: int) -> tuple[dict, dict]:
  """Jitted ops per layer and their check values (NHWC / HWIO outputs)."""
  sys.path.insert(0, REPO)
  import jax
  import jax.numpy as jnp
  from unet_jax import layers

  opts = (layers.xla_compiler_options() or None) if variant.startswith("jax_eigen") else None
  fns = {
      "fwd": jax.jit(lambda x, k, b, g: jax.nn.relu(layers.conv3x3_valid(x, k, b)),
                     compiler_options=opts),
      # the custom VJP's own parts (layers._conv3x3_valid_bwd)
      "dx": jax.jit(lambda x, k, b, g: layers._input_grad(layers._conv_valid, x, k, g),
                    compiler_options=opts),
      "dw": jax.jit(lambda x, k, b, g: layers._weight_grad(x, g), compiler_options=opts),
  }
  if variant == "jax_eigen_valid":
    fns = {"fwd": jax.jit(lambda x, k, b, g: jax.nn.relu(layers.conv_valid_reference(x, k, b)),
                          compiler_options=opts)}
  calls, checks = {}, {}
  for i, layer in enumerate(layers_):
    x, k, b, g, probes = _inputs(layer, seed + i)
    args = [jnp.asarray(a) for a in (x, k, b, g)]
    for op, f in fns.items():
      if op == "dx" and layer[1] == 1:
        continue  # the first layer's input gradient is never needed
      call = (lambda f=f, args=args: jax.block_until_ready(f(*args)))
      checks[f"{i}/{op}"] = _check(call(), probes[op])  # also compiles
      calls[f"{i}/{op}"] = call
  return calls, checks


def _torch_ops(layers_: list, seed: int) -> tuple[dict, dict]:
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  calls, checks = {}, {}
  for i, layer in enumerate(layers_):
    x, k, b, g, probes = _inputs(layer, seed + i)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    tw = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())  # OIHW
    tb, tg = torch.from_numpy(b), torch.from_numpy(g.transpose(0, 3, 1, 2).copy())

    def fwd(tx=tx, tw=tw, tb=tb):
      with torch.no_grad():
        return torch.relu_(torch.nn.functional.conv2d(tx, tw, tb))

    ops = {"fwd": (fwd, lambda y: y.numpy().transpose(0, 2, 3, 1)),
           "dx": (lambda tx=tx, tw=tw, tg=tg: torch.nn.grad.conv2d_input(tx.shape, tw, tg),
                  lambda y: y.numpy().transpose(0, 2, 3, 1)),
           "dw": (lambda tx=tx, tw=tw, tg=tg: torch.nn.grad.conv2d_weight(tx, tw.shape, tg),
                  lambda y: y.numpy().transpose(2, 3, 1, 0))}
    for op, (call, to_nhwc) in ops.items():
      if op == "dx" and layer[1] == 1:
        continue
      checks[f"{i}/{op}"] = _check(to_nhwc(call()), probes[op])
      calls[f"{i}/{op}"] = call
  return calls, checks


def worker_main(args: argparse.Namespace) -> None:
  """Answers ``<layer>/<op>`` lines with one timed call each (JSON lines on stdout)."""
  out = sys.stdout
  sys.stdout = sys.stderr  # keep library chatter off the protocol channel
  layers_ = conv_layers(args.size, args.features, args.depth)
  if args.worker == "torch":
    calls, checks = _torch_ops(layers_, args.seed)
  else:
    calls, checks = _jax_ops(args.worker, layers_, args.seed)
  print(json.dumps({"checks": checks}), file=out, flush=True)
  for line in sys.stdin:
    key = line.strip()
    if key == "quit":
      break
    t0 = time.perf_counter()
    calls[key]()
    print(json.dumps({"s": time.perf_counter() - t0}), file=out, flush=True)


# --------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------


def _disagreements(checks: dict[str, dict[str, list[float]]]) -> list[str]:
  """Keys where a worker's check value differs from the first worker's by more than AGREE."""
  names = list(checks)
  bad = []
  for key, (ref, scale) in checks[names[0]].items():
    for n in names[1:]:
      if key not in checks[n]:
        continue
      val = checks[n][key][0]
      if abs(val - ref) > AGREE * max(scale, 1e-30):
        bad.append(f"{key}: {names[0]} {ref:.6g} vs {n} {val:.6g} (scale {scale:.3g})")
  return bad


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Starts the workers, checks that they agree, times them interleaved."""
  variants = args.variants.split(",")
  layers_ = conv_layers(args.size, args.features, args.depth)
  result: dict[str, Any] = {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "size": args.size, "features": args.features, "depth": args.depth, "reps": args.reps,
      "settle": args.settle,
      "cpu_count": os.cpu_count(), "machine": cpu_model(),
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "load_before": load_average(),
      "layers": layers_, "variants": variants, "times": {v: {} for v in variants},
  }
  procs: dict[str, subprocess.Popen] = {}
  checks = {}
  try:
    for v in variants:  # one at a time, so that compilation runs alone
      cmd = [sys.executable, os.path.abspath(__file__), "--worker", v, "--size",
             str(args.size), "--features", str(args.features), "--depth", str(args.depth),
             "--seed", str(args.seed)]
      procs[v] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, cwd=REPO)
      line = procs[v].stdout.readline()
      if not line:
        raise RuntimeError(f"worker {v} died during set-up (exit {procs[v].wait()})")
      checks[v] = json.loads(line)["checks"]
    bad = _disagreements(checks)
    if bad:
      raise RuntimeError("workers disagree:\n  " + "\n  ".join(bad))
    keys = list(checks[variants[0]])
    for r in range(args.reps):
      for key in keys:
        for v in variants:
          if key not in checks[v]:
            continue  # an op this worker does not time
          for _ in range(args.settle + 1):  # the last call is the timed one
            ans = ask_worker(procs[v], key)
          result["times"][v].setdefault(key, []).append(ans["s"])
      print(f"round {r + 1}/{args.reps} done, load {load_average()}", flush=True)
  finally:
    stop_workers(procs.values())
  result["load_after"] = load_average()
  result["median_s"] = {v: {k: statistics.median(t) for k, t in ts.items()}
                        for v, ts in result["times"].items()}
  return result


def markdown(r: dict[str, Any]) -> str:
  """The per-layer table (ms, medians) with totals per op."""
  variants, med = r["variants"], r["median_s"]
  short = {"jax_eigen": "Eigen", "jax_ynnpack": "YNNPACK", "torch": "PyTorch",
           "jax_eigen_valid": "Eigen VALID"}
  jax_v = [v for v in variants if v.startswith("jax")]
  best = len(jax_v) >= 2
  lines = [
      f"# 3x3 convolutions of the U-Net, layer by layer ({r['size']}², "
      f"{r['features']} features, depth {r['depth']}, batch 1, fp32)", "",
      "Written by `benchmarks/conv_layers.py` (see its docstring). Median wall time in ms",
      f"of {r['reps']} calls per cell, the workers interleaved call by call, each timed call "
      f"after {r.get('settle', 0)} untimed one(s) of the same op and layer; all workers",
      f"computed the same outputs (checked before timing). {r['date']}, {r['cpu_count']} CPUs",
      f"({r['machine']}), load average before {r['load_before']}, after {r['load_after']}"
      + (f", GLIBC_TUNABLES=`{r['glibc_tunables']}`" if r["glibc_tunables"] else "") + ".",
      "'Eigen': `layers.xla_compiler_options()` (the train step's setting); 'YNNPACK':",
      "XLA's defaults (the inference programs' setting)"
      + ("; 'Eigen VALID': the forward as a plain VALID convolution on Eigen"
         if "jax_eigen_valid" in variants else "")
      + ("; 'best': the fastest JAX variant for that cell." if best else "."), "",
  ]
  cols = [(op, v) for op in OPS for v in variants
          if any(k.endswith("/" + op) for k in med[v])] + (
      [(op, "best") for op in OPS] if best else [])
  head = [f"{op} {short.get(v, v)}" for op, v in cols]
  lines += ["| layer (input², C→O) | " + " | ".join(head) + " |",
            "|---|" + "---|" * len(cols)]
  totals = {c: 0.0 for c in cols}
  for i, (side, c, o) in enumerate(r["layers"]):
    cells = []
    for op, v in cols:
      key = f"{i}/{op}"
      if key not in med[variants[0]] or (v != "best" and key not in med[v]):
        cells.append("–")
        continue
      t = min(med[j][key] for j in jax_v if key in med[j]) if v == "best" else med[v][key]
      totals[(op, v)] += t
      cells.append(f"{t * 1e3:.3g}")
    lines.append(f"| {side}², {c}→{o} | " + " | ".join(cells) + " |")
  lines.append("| **all** | " + " | ".join(f"**{totals[c] * 1e3:.0f}**" for c in cols) + " |")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", type=int, default=572, help="input tile side (a valid size)")
  p.add_argument("--features", type=int, default=64, help="channels of the first level")
  p.add_argument("--depth", type=int, default=4)
  p.add_argument("--reps", type=int, default=7, help="timed calls per op, layer and variant")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--settle", type=int, default=1,
                 help="untimed calls of the same op and layer by the same worker right "
                 "before each timed one (0 in the runs before 2026-12-03 16:50; see "
                 "benchmarks/train_step.py --settle)")
  p.add_argument("--variants", default=",".join(VARIANTS),
                 help=f"comma-separated subset of {VARIANTS}")
  p.add_argument("--out-dir", default=os.path.join(REPO, "results"))
  p.add_argument("--tag", default="", help="suffix of the output file names")
  p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    worker_main(args)
    return
  for v in args.variants.split(","):
    if v not in VARIANTS:
      p.error(f"unknown variant {v!r}; choose from {VARIANTS}")
  sys.path.insert(0, REPO)
  from unet_jax.model import tile_output_size
  try:
    tile_output_size(args.size, args.depth)
  except ValueError as e:
    p.error(str(e))
  result = run(args)
  stem = os.path.join(args.out_dir, f"conv_layers_{args.size}_f{args.features}"
                      + (f"_{args.tag}" if args.tag else ""))
  os.makedirs(args.out_dir, exist_ok=True)
  with open(stem + ".json", "w") as f:
    json.dump(result, f, indent=1)
  with open(stem + ".md", "w") as f:
    f.write(markdown(result))
  print(markdown(result))


if __name__ == "__main__":
  main()
