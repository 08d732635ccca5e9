r"""GPU benchmark for one short lease (~10 min): unet_jax against PyTorch, loader rate.

One process, one run, everything measured in the same session on the same card:

* cases (paper net: 64 features, depth 4, 1 input channel, 2 classes):
  572² batch 1 fp32, 572² batch 1 bf16, 572² batch 8 bf16, 1084² batch 4 bf16;
* for each case, the forward pass and the train step (forward + pixel-weighted
  cross-entropy + backward + SGD with momentum 0.99) of
  - ``jax``: ``unet_jax.train_lib.make_train_step`` (the project's jitted,
    donating step) and the jitted ``UNet.apply``;
  - ``jax_reference`` (opt-in, ``--variants jax,jax_reference,...``): the same
    with ``UNet(reference_ops=True)``: plain VALID convolutions followed by
    bias + ReLU (the pattern XLA:GPU's cuDNN rewriter matches to fuse conv +
    bias + activation into one call; in the CPU formulation a crop sits
    between the SAME conv and the bias), ``conv_transpose`` and
    ``reduce_window``, autodiff'd. Not measured on a GPU yet;
  - ``torch``: ``benchmarks/torch_unet.py`` in eager mode (channels-last,
    ``cudnn.benchmark``; bf16 = ``torch.autocast``), same loss and optimizer;
  - ``torch.compile``: the same module through ``torch.compile``;
* fp32 like for like: PyTorch with TF32 off, JAX at ``jax_default_matmul_precision``
  ``"highest"`` (``FP32_PRECISION``; XLA:GPU would otherwise use TF32);
* achieved TFLOP/s from the analytic count of the net's multiply-adds
  (``unet_flops``; train step = 3x forward) and its share of the card's dense
  bf16 peak (``PEAK_BF16_TFLOPS``, or ``--peak_tflops``);
* the grain loader (elastic deformation + weight maps, 572² tiles, batch 8)
  in samples/s with 0/4/8/16 worker processes, against the batch-8 step rate.

Timing: ``--warmup`` untimed calls (compilation, autotuning), then ``--reps``
calls back to back with one sync at the end (the train loop's own behaviour:
no host sync per step); ms per call = total / reps.

Usage on the GPU machine (from the repo root, after
``pip install -r requirements.txt "jax[cuda12]==0.10.2" -r requirements-bench.txt``)::

  python benchmarks/gpu.py                       # ~5-8 min on an H100
  python benchmarks/gpu.py --skip_torch_compile  # if torch.compile is too slow to build

Writes ``results/gpu_<card>.md`` and ``.json`` (``--out_dir``). ``--tiny``
runs the same code at toy sizes on any machine (CPU included) in a minute or
two: what the tests and a dry check before a lease use.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import sys
import time
import traceback
from typing import Any, Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
# Share the card with PyTorch: no up-front grab of 75 % of its memory.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s,
# matched against jax's device_kind in this order.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
    ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0), ("V100", 125.0), ("T4", 65.0),
)

# The goal case (batch 8 bf16) first: a lease that ends early has measured it.
FULL_CASES = ((572, 8, "bfloat16"), (572, 1, "bfloat16"), (572, 1, "float32"),
              (1084, 4, "bfloat16"))
TINY_CASES = ((204, 1, "float32"), (204, 1, "bfloat16"), (204, 2, "bfloat16"),
              (220, 2, "bfloat16"))


def unet_flops(size: int, batch: int, features: int = 64, depth: int = 4,
               in_channels: int = 1, num_classes: int = 2) -> int:
  """Floating-point operations (2 per multiply-add) of one forward pass.

  Counts the convolutions only (3x3 VALID, 2x2 stride-2 up-convolutions and
  the 1x1 classifier): ReLU, pooling, crop and softmax are < 1 %.
  """
  total, n, c = 0, size, in_channels
  for level in range(depth + 1):
    f = features * 2**level
    total += 9 * c * f * (n - 2)**2 + 9 * f * f * (n - 4)**2
    n, c = n - 4, f
    if level < depth:
      n //= 2
  for level in reversed(range(depth)):
    f = features * 2**level
    m = 2 * n
    total += 4 * c * f * n * n  # each of the m*m outputs sums c inputs
    total += 9 * 2 * f * f * (m - 2)**2 + 9 * f * f * (m - 4)**2
    n, c = m - 4, f
  total += c * num_classes * n * n
  return 2 * batch * total


def peak_tflops(device_kind: str) -> float | None:
  for name, tflops in PEAK_BF16_TFLOPS:
    if name.lower() in device_kind.lower():
      return tflops
  return None


def _time(fn: Callable[[], Any], sync: Callable[[Any], None], warmup: int,
          reps: int) -> tuple[float, float]:
  """(seconds of the first call, mean seconds per call over ``reps`` back-to-back calls)."""
  t0 = time.perf_counter()
  sync(fn())
  first = time.perf_counter() - t0
  for _ in range(warmup - 1):
    sync(fn())
  t0 = time.perf_counter()
  out = None
  for _ in range(reps):
    out = fn()
  sync(out)
  return first, (time.perf_counter() - t0) / reps


def _batch(size: int, batch: int, seed: int = 0) -> dict:
  import numpy as np
  from unet_jax.model import output_size
  out = output_size(size, 4)
  rng = np.random.default_rng(seed)
  return {"image": rng.standard_normal((batch, size, size, 1), np.float32),
          "label": rng.integers(0, 2, (batch, out, out), dtype=np.int32),
          "weight": rng.uniform(0.5, 10.0, (batch, out, out)).astype(np.float32)}


# --------------------------------------------------------------------------
# The frameworks.
# --------------------------------------------------------------------------


FP32_PRECISION = "highest"  # jax_default_matmul_precision of the fp32 cases (no TF32)


def bench_jax(size: int, batch: int, dtype: str, features: int, warmup: int,
              reps: int, reference_ops: bool = False) -> dict:
  import jax
  import jax.numpy as jnp
  from configs import default
  from unet_jax import layers, train_lib

  c = default.get_config()
  c.tile_size, c.batch_size, c.features, c.dtype = size, batch, features, dtype
  c.in_channels, c.lr_schedule, c.warmup_steps, c.grad_clip_norm = 1, "constant", 0, 0.0
  c.learning_rate = 1e-4
  from unet_jax import model as model_lib
  model = model_lib.from_config(c)
  if reference_ops:  # textbook ops: plain VALID conv (+ bias + ReLU), conv_transpose, reduce_window
    model = model.clone(reference_ops=True)
  state = train_lib.create_train_state(c, model, jax.random.PRNGKey(0))
  data = {k: jnp.asarray(v) for k, v in _batch(size, batch).items()}
  step = train_lib.make_train_step(model, c)
  holder = {"state": state}

  def train():
    holder["state"], metrics = step(holder["state"], data)
    return metrics["loss"]

  fwd = layers.jit(lambda p, x: model.apply({"params": p}, x, train=False))
  sync = jax.block_until_ready
  # fp32 like for like: XLA:GPU runs f32 convolutions on TF32 tensor cores by default,
  # PyTorch here has TF32 off (bench_torch), so the fp32 case asks JAX for full f32
  # (the 2026-11-27 table still compared TF32 with fp32). Tracing happens inside.
  with jax.default_matmul_precision(FP32_PRECISION if dtype == "float32" else None):
    f_first, f = _time(lambda: fwd(holder["state"].params, data["image"]), sync, warmup, reps)
    s_first, s = _time(train, sync, warmup, reps)
  return {"forward_s": f, "step_s": s, "first_forward_s": f_first, "first_step_s": s_first}


def bench_torch(size: int, batch: int, dtype: str, features: int, warmup: int, reps: int,
                compiled: bool) -> dict:
  import torch
  from torch_unet import TorchUNet, weighted_cross_entropy

  cuda = torch.cuda.is_available()
  dev = torch.device("cuda" if cuda else "cpu")
  torch.backends.cudnn.benchmark = True
  # True fp32 in PyTorch. JAX's default precision uses TF32 for f32 convolutions on
  # Ampere and later (measured on an H200: 133 TFLOP/s), so its fp32 row is TF32.
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  torch.manual_seed(0)
  model = TorchUNet(1, 2, features, 4).to(dev).to(memory_format=torch.channels_last)
  opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.99)
  b = _batch(size, batch)
  image = torch.from_numpy(b["image"]).permute(0, 3, 1, 2).contiguous(
      memory_format=torch.channels_last).to(dev)
  label = torch.from_numpy(b["label"]).long().to(dev)
  weight = torch.from_numpy(b["weight"]).to(dev)
  net = torch.compile(model) if compiled else model
  amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

  def forward():
    model.eval()
    with torch.no_grad(), torch.autocast(**amp):
      return net(image)

  def train():
    model.train()
    opt.zero_grad(set_to_none=True)
    with torch.autocast(**amp):
      logits = net(image)
    loss = weighted_cross_entropy(logits.float(), label, weight)
    loss.backward()
    opt.step()
    return loss

  sync = (lambda _: torch.cuda.synchronize()) if cuda else (lambda _: None)
  f_first, f = _time(forward, sync, warmup, reps)
  s_first, s = _time(train, sync, warmup, reps)
  return {"forward_s": f, "step_s": s, "first_forward_s": f_first, "first_step_s": s_first}


def bench_loader(tile: int, batch: int, workers: list[int], batches: int,
                 image_size: int) -> list[dict]:
  from configs import synthetic
  from unet_jax import input_pipeline as data_lib
  from unet_jax import datasets

  c = synthetic.get_config()
  c.tile_size, c.batch_size = tile, batch
  c.synthetic.size, c.synthetic.num_images, c.train_indices = image_size, 6, "0-5"
  train = datasets.load_split(c, "train")
  data_lib.weights_for(c, train)  # cache outside the timing
  rows = []
  for w in workers:
    c.num_workers = w
    it = data_lib.make_train_iterator(c, train)
    next(it)  # worker start-up, first batch
    t0 = time.perf_counter()
    for _ in range(batches):
      next(it)
    rows.append({"num_workers": w,
                 "samples_per_s": batches * batch / (time.perf_counter() - t0)})
    if hasattr(it, "close"):
      it.close()
    print(f"loader: {w} workers: {rows[-1]['samples_per_s']:.1f} samples/s", flush=True)
  return rows


# --------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------


def _fmt_ms(seconds: float | None) -> str:
  return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def report(run: dict) -> str:
  peak = run["peak_bf16_tflops"]
  lines = [
      f"# GPU benchmark (benchmarks/gpu.py{' --tiny' if run['tiny'] else ''})", "",
      f"{run['date']}, {run['device_kind']} ({run['backend']}), jax {run['jax']}, "
      f"torch {run.get('torch', 'not installed')}, {run['features']} features, depth 4. "
      f"Dense bf16 peak used: {peak if peak else 'unknown'} TFLOP/s. Warm-up "
      f"{run['warmup']}, {run['reps']} back-to-back calls, one sync at the end. "
      f"fp32 cases: JAX at `jax_default_matmul_precision={run.get('fp32_precision', 'default')}`"
      f", PyTorch with TF32 off.", "",
      "| input | batch | dtype | variant | forward ms | train step ms | step / torch eager "
      "| step TFLOP/s | % of bf16 peak | first step s |",
      "|---|---|---|---|---|---|---|---|---|---|"]
  for case in run["cases"]:
    eager = case["variants"].get("torch", {}).get("step_s")
    flops = case["train_flops"]
    for name, v in case["variants"].items():
      if "error" in v:
        lines.append(f"| {case['size']}² | {case['batch']} | {case['dtype']} | {name} | "
                     f"failed: {v['error'][:80]} | | | | | |")
        continue
      tf = flops / v["step_s"] / 1e12
      ratio = f"{v['step_s'] / eager:.2f}×" if eager else "-"
      pct = f"{100 * tf / peak:.0f} %" if peak else "-"
      lines.append(f"| {case['size']}² | {case['batch']} | {case['dtype']} | {name} | "
                   f"{_fmt_ms(v['forward_s'])} | {_fmt_ms(v['step_s'])} | {ratio} | "
                   f"{tf:.1f} | {pct} | {v['first_step_s']:.1f} |")
  if run.get("loader"):
    step8 = next((c["variants"].get("jax", {}).get("step_s") for c in run["cases"]
                  if c["batch"] == max(x["batch"] for x in run["cases"])
                  and c["size"] == run["cases"][0]["size"]), None)
    need = f"{run['loader_batch'] / step8:.0f}" if step8 else "?"
    lines += ["", f"Loader (grain, {run['loader_tile']}² tiles, batch {run['loader_batch']}, "
              f"elastic deformation + weight maps; {os.cpu_count()} CPU cores): the "
              f"batch-{run['loader_batch']} jax step consumes {need} samples/s.", "",
              "| workers | samples/s |", "|---|---|"]
    lines += [f"| {r['num_workers']} | {r['samples_per_s']:.1f} |" for r in run["loader"]]
  if run.get("goals"):
    lines += ["", "Goals: " + "; ".join(run["goals"])]
  return "\n".join(lines) + "\n"


def goals(run: dict) -> list[str]:
  """The batch-8 bf16 goals: step <= 0.8x PyTorch eager and >= 50 % of the bf16 peak."""
  out = []
  for case in run["cases"]:
    if case["dtype"] != "bfloat16" or case["batch"] != max(c["batch"] for c in run["cases"]):
      continue
    v = case["variants"]
    jax_s, eager = v.get("jax", {}).get("step_s"), v.get("torch", {}).get("step_s")
    if jax_s and eager:
      out.append(f"batch-{case['batch']} bf16 step {jax_s / eager:.2f}× torch eager "
                 f"({'met' if jax_s / eager <= 0.8 else 'not met'}, goal ≤ 0.8×)")
    if jax_s and run["peak_bf16_tflops"]:
      pct = 100 * case["train_flops"] / jax_s / 1e12 / run["peak_bf16_tflops"]
      out.append(f"{pct:.0f} % of bf16 peak ({'met' if pct >= 50 else 'not met'}, goal ≥ 50 %)")
  return out


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tiny", action="store_true", help="toy sizes: a check on any machine")
  p.add_argument("--reps", type=int, default=None, help="timed calls (default 20; tiny 2)")
  p.add_argument("--warmup", type=int, default=None, help="untimed calls (default 3; tiny 1)")
  p.add_argument("--variants", default="jax,torch,torch.compile")
  p.add_argument("--skip_torch_compile", action="store_true")
  p.add_argument("--cases", default=None,
                 help="SIZExBATCHxDTYPE,... e.g. 1084x4xbfloat16 (default: the four cases; "
                 "with --tiny, the toy ones)")
  p.add_argument("--compile_batch", type=int, default=0,
                 help="run torch.compile only for cases of this batch size (0 = all); "
                 "each torch.compile build takes about a minute of the lease")
  p.add_argument("--workers", default=None, help="loader worker counts (default 0,4,8,16)")
  p.add_argument("--loader_batches", type=int, default=None)
  p.add_argument("--peak_tflops", type=float, default=None, help="override the bf16 peak")
  p.add_argument("--out_dir", default=str(REPO / "results"))
  args = p.parse_args(argv)

  import jax
  tiny = args.tiny
  cases = TINY_CASES if tiny else FULL_CASES
  if args.cases:
    cases = tuple((int(n), int(b), d) for n, b, d in (c.split("x") for c in args.cases.split(",")))
  features = 8 if tiny else 64
  reps = args.reps or (2 if tiny else 20)
  warmup = args.warmup or (1 if tiny else 3)
  variants = [v for v in args.variants.split(",") if v]
  if args.skip_torch_compile and "torch.compile" in variants:
    variants.remove("torch.compile")
  try:
    import torch
    torch_version = torch.__version__
  except ImportError:
    torch_version = None
    variants = [v for v in variants if not v.startswith("torch")]
    print("torch is not installed: JAX only (pip install -r requirements-bench.txt)")
  dev = jax.devices()[0]
  kind = dev.device_kind if dev.platform != "cpu" else f"CPU {platform.processor() or platform.machine()}"
  run = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
         "device_kind": kind, "backend": jax.default_backend(), "jax": jax.__version__,
         "features": features, "tiny": tiny, "reps": reps, "warmup": warmup,
         "peak_bf16_tflops": args.peak_tflops or peak_tflops(kind),
         "fp32_precision": FP32_PRECISION, "cases": []}
  if torch_version:
    run["torch"] = torch_version
  for size, batch, dtype in cases:
    case = {"size": size, "batch": batch, "dtype": dtype,
            "train_flops": 3 * unet_flops(size, batch, features), "variants": {}}
    for name in variants:
      if name == "torch.compile" and args.compile_batch and batch != args.compile_batch:
        continue
      t0 = time.perf_counter()
      try:
        if name in ("jax", "jax_reference"):
          r = bench_jax(size, batch, dtype, features, warmup, reps, name == "jax_reference")
        else:
          r = bench_torch(size, batch, dtype, features, warmup, reps, name == "torch.compile")
      except Exception as e:  # noqa: BLE001 - one failed variant must not end the lease
        traceback.print_exc()
        r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
      case["variants"][name] = r
      print(f"{size}² b{batch} {dtype} {name}: "
            + (f"forward {_fmt_ms(r['forward_s'])} ms, step {_fmt_ms(r['step_s'])} ms"
               if "error" not in r else r["error"])
            + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    run["cases"].append(case)
    _write(run, args.out_dir)  # a lease that ends early still leaves the cases measured so far
  workers = [int(w) for w in (args.workers or ("0,1,2" if tiny else "0,4,8,16")).split(",")]
  run["loader_tile"], run["loader_batch"] = cases[0][0], max(c[1] for c in cases)
  run["loader"] = bench_loader(run["loader_tile"], run["loader_batch"], workers,
                               args.loader_batches or (2 if tiny else 20),
                               128 if tiny else 600)
  print(_write(run, args.out_dir))
  return run


def _write(run: dict, out_dir: str) -> str:
  """Writes ``gpu_<card>[_tiny].md`` and ``.json`` under ``out_dir``; returns the report."""
  run["goals"] = goals(run)
  text = report(run)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  stem = ("gpu_" + re.sub(r"[^A-Za-z0-9]+", "_", run["device_kind"]).strip("_").lower()
          + ("_tiny" if run["tiny"] else ""))
  (out / f"{stem}.md").write_text(text)
  (out / f"{stem}.json").write_text(json.dumps(run, indent=2))
  return text + f"wrote {out / stem}.md and .json\n"


if __name__ == "__main__":
  main()
