r"""Train-step and forward-pass benchmark: unet_jax (XLA:CPU) against eager PyTorch.

Every variant runs in its own worker process (so each one's peak RSS is its
own), and the parent interleaves them: one timed call of each variant per round
(JAX fast, PyTorch, JAX reference, ...), so that load from other users of a
shared machine falls on all of them alike. Report medians and the ratios to
PyTorch within the same run only.

Each timed call comes after ``--settle`` (default 1) untimed calls of the same op
by the same worker, and ``--block`` timed calls may follow in a row. A call is
not independent of the one before it: a JAX train step right after a PyTorch one
took 10-35 % longer than after a JAX step (docs/performance.md, "The order of
the calls"). With the settle call, each framework is timed after its own calls,
as in a training loop.

Variants:
  jax               ``UNet()``, the fast formulations of ``unet_jax.layers``,
                    jitted with ``layers.xla_compiler_options()``.
  jax_xla_defaults  the same model jitted with XLA's default options.
  jax_reference     ``UNet(reference_ops=True)``: textbook ops, same parameters,
                    XLA's default options (the starting point).
  jax_dw_copy       ``jax`` with the weight gradient as before 2026-12-03: the
                    output gradient's axes named by dimension numbers, which made
                    XLA copy every output gradient into the kernel layout.
  jax_valid_fwd     ``jax`` with the forward of each 3x3 conv as the plain VALID
                    convolution instead of a SAME convolution + crop (same custom
                    VJP); 10-40 % faster per layer on Eigen in isolation
                    (``benchmarks/conv_layers.py``); docs/performance.md.
  jax_same_autodiff with ``--padding same`` only: ``UNet(padding="same")`` with
                    JAX's autodiff of the SAME conv (``layers.conv_same_reference``)
                    instead of its custom VJP, the compiler options as ``jax``.
  torch             ``benchmarks/torch_unet.py`` in eager mode, fp32 (autocast
                    bf16 with ``--dtype bfloat16``), ``torch.set_num_threads(cpu_count)``.
  <name>+thp        any of the above in a worker started with
                    ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc's malloc asks for
                    transparent huge pages; docs/performance.md, "Host memory").

The train step is forward + pixel-weighted cross-entropy (mean over pixels) +
backward + SGD with momentum 0.99; dropout is active in both frameworks. The
JAX step is one ``jax.jit`` with parameters and optimizer state donated.

Usage (from the repo root)::

  .venv/bin/python benchmarks/train_step.py --size 572 --features 64 --reps 5
  .venv/bin/python benchmarks/train_step.py --size 252 --features 64 --reps 7
  .venv/bin/python benchmarks/train_step.py --size 572 --dtype bfloat16 \
      --variants jax,torch
  .venv/bin/python benchmarks/train_step.py --size 256 --features 16 --padding same \
      --variants jax,torch,jax_same_autodiff --reps 20

Each run stores its figures as JSON beside ``--out`` and rewrites the markdown
table ``--out`` from all JSON files found there.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("jax", "torch", "jax_xla_defaults", "jax_reference", "jax_same_autodiff",
            "jax_dw_copy", "jax_valid_fwd")


# --------------------------------------------------------------------------
# Workers: one framework / formulation per process.
# --------------------------------------------------------------------------


def _peak_rss_mb() -> float:
  """Peak resident set size of this process in MiB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _batch_numpy(args: argparse.Namespace) -> dict[str, Any]:
  """A fixed random batch: image ``[B, S, S, 1]``, label and weight ``[B, S', S']``."""
  import numpy as np
  sys.path.insert(0, REPO)
  from unet_jax.model import tile_output_size
  out = tile_output_size(args.size, args.depth, args.padding)
  rng = np.random.default_rng(0)
  return {
      "image": rng.standard_normal((args.batch, args.size, args.size, 1), np.float32),
      "label": rng.integers(0, 2, (args.batch, out, out), dtype=np.int32),
      "weight": rng.uniform(0.5, 10.0, (args.batch, out, out)).astype(np.float32),
  }


class JaxWorker:
  """Builds the jitted forward pass and train step of ``unet_jax.model.UNet``."""

  def __init__(self, args: argparse.Namespace, reference: bool, compiler_options: bool):
    sys.path.insert(0, REPO)
    import jax
    import jax.numpy as jnp
    import optax
    from unet_jax import layers
    from unet_jax.losses import weighted_cross_entropy
    from unet_jax.model import UNet

    if args.worker == "jax_dw_copy":
      # this worker process only: the weight gradient as before 2026-12-03
      dn = jax.lax.ConvDimensionNumbers(lhs_spec=(3, 0, 1, 2), rhs_spec=(3, 0, 1, 2),
                                        out_spec=(2, 3, 0, 1))
      layers._weight_grad = lambda x, g: jax.lax.conv_general_dilated(
          x, g, (1, 1), "VALID", dimension_numbers=dn)
    if args.worker == "jax_valid_fwd":
      # this worker process only: the forward as the plain VALID convolution
      conv = jax.custom_vjp(layers._conv_valid)
      conv.defvjp(lambda x, k: (layers._conv_valid(x, k), (x, k)), layers._conv3x3_valid_bwd)
      layers._conv3x3_valid = conv
    if args.worker == "jax_same_autodiff":
      # this worker process only: the SAME conv as before its custom VJP
      layers.conv3x3_same = layers.conv_same_reference
    self.jax = jax
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    model = UNet(num_classes=2, features=args.features, depth=args.depth, dtype=dtype,
                 reference_ops=reference, padding=args.padding)
    b = _batch_numpy(args)
    self.batch = {k: jnp.asarray(v) for k, v in b.items()}
    self.params = model.init(jax.random.PRNGKey(0), self.batch["image"][:1])["params"]
    tx = optax.sgd(1e-2, momentum=0.99)
    self.opt_state = tx.init(self.params)
    self.key = jax.random.PRNGKey(1)

    def loss_fn(params, batch, key):
      logits = model.apply({"params": params}, batch["image"], train=True,
                           rngs={"dropout": key})
      return weighted_cross_entropy(logits, batch["label"], batch["weight"])

    def step(params, opt_state, batch, key):
      loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    opts = (layers.xla_compiler_options() or None) if compiler_options else None
    self._step = jax.jit(step, donate_argnums=(0, 1), compiler_options=opts)
    self._fwd = jax.jit(lambda p, x: model.apply({"params": p}, x), compiler_options=opts)

  def forward(self) -> None:
    self.jax.block_until_ready(self._fwd(self.params, self.batch["image"]))

  def step(self) -> None:
    self.key, sub = self.jax.random.split(self.key)
    self.params, self.opt_state, loss = self._step(self.params, self.opt_state,
                                                   self.batch, sub)
    self.jax.block_until_ready((self.params, loss))


class TorchWorker:
  """Eager PyTorch peer (``benchmarks/torch_unet.py``), NCHW."""

  def __init__(self, args: argparse.Namespace):
    import torch
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    from torch_unet import TorchUNet, weighted_cross_entropy

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    self.torch = torch
    self.loss_fn = weighted_cross_entropy
    self.model = TorchUNet(1, 2, args.features, args.depth, padding=args.padding)
    self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-2, momentum=0.99)
    b = _batch_numpy(args)
    self.image = torch.from_numpy(b["image"]).permute(0, 3, 1, 2).contiguous()
    self.label = torch.from_numpy(b["label"]).long()
    self.weight = torch.from_numpy(b["weight"])
    self.autocast = args.dtype == "bfloat16"

  def _logits(self):
    with self.torch.autocast("cpu", dtype=self.torch.bfloat16, enabled=self.autocast):
      return self.model(self.image)

  def forward(self) -> None:
    self.model.eval()
    with self.torch.no_grad():
      self._logits()

  def step(self) -> None:
    self.model.train()
    self.opt.zero_grad(set_to_none=True)
    loss = self.loss_fn(self._logits(), self.label, self.weight)
    loss.backward()
    self.opt.step()


def worker_main(args: argparse.Namespace) -> None:
  """Serves timing requests read as lines from stdin; answers JSON lines on stdout."""
  out = sys.stdout
  sys.stdout = sys.stderr  # keep library chatter off the protocol channel
  t0 = time.perf_counter()
  if args.worker == "torch":
    w = TorchWorker(args)
  else:
    # every JAX variant runs with the project's compiler options but these two
    w = JaxWorker(args, reference=args.worker == "jax_reference",
                  compiler_options=args.worker not in ("jax_xla_defaults", "jax_reference"))
  info = {"setup_s": time.perf_counter() - t0}
  for op in ("forward", "step"):  # warm-up: compilation, allocator, first-touch
    t0 = time.perf_counter()
    getattr(w, op)()
    info[f"first_{op}_s"] = time.perf_counter() - t0
    info[f"rss_after_{op}_mb"] = _peak_rss_mb()
  print(json.dumps(info), file=out, flush=True)
  for line in sys.stdin:
    op = line.strip()
    if op == "quit":
      break
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt  # outside the timed span
    t0, c0 = time.perf_counter(), time.process_time()
    getattr(w, op)()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    print(json.dumps({"op": op, "s": dt, "cpu_s": dc, "page_faults": faults,
                      "peak_rss_mb": _peak_rss_mb()}), file=out, flush=True)


# --------------------------------------------------------------------------
# Parent: interleave, summarise, write.
# --------------------------------------------------------------------------


# A variant name with this suffix runs the base variant with glibc's malloc asking for
# transparent huge pages (docs/performance.md, "Host memory").
THP_SUFFIX, THP_TUNABLE = "+thp", "glibc.malloc.hugetlb=1"


def _spawn(name: str, args: argparse.Namespace) -> subprocess.Popen:
  base = name.removesuffix(THP_SUFFIX)
  env = dict(os.environ)
  if name.endswith(THP_SUFFIX):
    env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES"), THP_TUNABLE) if t)
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", base,
         "--size", str(args.size), "--features", str(args.features), "--depth",
         str(args.depth), "--batch", str(args.batch), "--dtype", args.dtype,
         "--padding", args.padding]
  return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          cwd=REPO, env=env)


def ask_worker(proc: subprocess.Popen, op: str) -> dict[str, Any]:
  """Sends one request line to a worker process; returns its JSON answer line."""
  proc.stdin.write(op + "\n")
  proc.stdin.flush()
  line = proc.stdout.readline()
  if not line:
    raise RuntimeError(f"worker died (exit code {proc.wait()})")
  return json.loads(line)


def stop_workers(procs) -> None:
  """Asks each worker process to quit, then waits for it (kills it after 60 s)."""
  for p in procs:
    if p.poll() is None:
      try:
        p.stdin.write("quit\n")
        p.stdin.flush()
      except (BrokenPipeError, OSError):
        pass
  for p in procs:
    try:
      p.wait(timeout=60)
    except subprocess.TimeoutExpired:
      p.kill()


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo; machines of the same name differ between sessions)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def load_average() -> str:
  """The 1-, 5- and 15-min load averages as ``"a / b / c"``."""
  la = os.getloadavg()
  return f"{la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f}"


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Runs the interleaved benchmark and returns the summary."""
  variants = args.variants.split(",")
  reps = {v: (args.reference_reps if v.startswith("jax_reference") else args.reps)
          for v in variants}
  result: dict[str, Any] = {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "size": args.size, "features": args.features, "depth": args.depth,
      "batch": args.batch, "dtype": args.dtype, "padding": args.padding, "reps": reps,
      "settle": args.settle, "block": args.block,
      "cpu_count": os.cpu_count(), "machine": cpu_model(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "load_before": load_average(),
      "variants": {},
  }
  times: dict[str, dict[str, list[float]]] = {
      v: {"forward": [], "step": [], "forward_cpu": [], "step_cpu": [], "forward_faults": [],
          "step_faults": []} for v in variants}
  procs: dict[str, subprocess.Popen] = {}
  try:
    # Start and warm the workers one at a time, so that compilation runs alone.
    for v in variants:
      procs[v] = _spawn(v, args)
      line = procs[v].stdout.readline()
      if not line:
        raise RuntimeError(f"worker {v} died during warm-up (exit {procs[v].wait()})")
      result["variants"][v] = {"warmup": json.loads(line)}
      print(f"[{v}] warm: {result['variants'][v]['warmup']}", flush=True)
    for r in range(max(reps.values())):
      for op in ("forward", "step"):
        for v in variants:
          if r < reps[v]:
            for _ in range(args.settle):  # untimed: see --settle
              ask_worker(procs[v], op)
            for _ in range(args.block):
              ans = ask_worker(procs[v], op)
              times[v][op].append(ans["s"])
              times[v][op + "_cpu"].append(ans["cpu_s"])
              times[v][op + "_faults"].append(ans["page_faults"])
              result["variants"][v]["peak_rss_mb"] = ans["peak_rss_mb"]
              print(f"rep {r} {op:7s} {v:16s} {ans['s']:8.3f} s  cpu {ans['cpu_s']:8.3f} s  "
                    f"load {load_average()}", flush=True)
  finally:
    stop_workers(procs.values())
  result["load_after"] = load_average()
  for v in variants:
    for op in ("forward", "step", "forward_cpu", "step_cpu"):
      result["variants"][v][f"{op}_s"] = times[v][op]
      result["variants"][v][f"{op}_median_s"] = statistics.median(times[v][op])
    for op in ("forward_faults", "step_faults"):  # minor page faults per call
      result["variants"][v][op] = times[v][op]
      result["variants"][v][f"{op}_median"] = statistics.median(times[v][op])
  return result


def _row(name: str, v: dict[str, Any], torch: dict[str, Any] | None) -> str:
  cells = []
  for op in ("forward", "step", "step_cpu"):
    t = v[f"{op}_median_s"]
    ratio = f"{t / torch[f'{op}_median_s']:.2f}×" if torch else "–"
    cells.append(f"{t:.3g} | {ratio}")
  faults = v.get("step_faults_median")  # recorded since 2026-12-03
  return (f"| {name} | {' | '.join(cells)} | "
          f"{'–' if faults is None else f'{faults / 1000:.0f}k'} | "
          f"{v['peak_rss_mb'] / 1024:.2f} | {v['warmup']['first_step_s']:.1f} |")


def _peer(variants: dict[str, Any], v: str) -> dict[str, Any] | None:
  """The PyTorch run ``v`` is compared with: the one under the same allocator setting
  (``torch+thp`` for a ``+thp`` variant) when it was run, else plain ``torch``."""
  ref = variants.get("torch" + THP_SUFFIX) if v.endswith(THP_SUFFIX) else None
  return ref or variants.get("torch")


def _pairs(variants: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
  """``(name, PyTorch peer)`` for each JAX variant with per-call times."""
  out = []
  for v in variants:
    if v.startswith("torch") or "step_s" not in variants[v]:
      continue
    ref = _peer(variants, v)
    if ref and "step_s" in ref:
      out.append((v, ref))
  return out


def _ratios(v: dict[str, Any], ref: dict[str, Any], op: str) -> list[float]:
  """``v``'s per-call times of ``op`` over ``ref``'s, paired by index."""
  return [a / b for a, b in zip(v[f"{op}_s"], ref[f"{op}_s"])]


def _paired(v: dict[str, Any], ref: dict[str, Any], op: str) -> str:
  """Median and range of ``v``'s times over ``ref``'s, paired by index (same round and
  place in its block).

  Drift of the machine's speed within a run cancels in each pair, so this scatters
  less between runs than the ratio of the two medians does.
  """
  ratios = _ratios(v, ref, op)
  return (f"{op} {statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f}, "
          f"{len(ratios)} pair{'s' if len(ratios) != 1 else ''})")


def pooled(paths: list[str], variant: str = "jax") -> dict[str, dict[str, float]]:
  """Paired ratios of ``variant`` to its PyTorch peer, pooled over the rounds of several runs.

  Returns:
    op -> {"runs", "rounds", "median", "q1", "q3", "at_or_under_1"}: the runs that had
    the variant, their rounds, quartiles by rank, and the share of rounds with a ratio <= 1.0.
  """
  ratios: dict[str, list[float]] = {"step": [], "forward": []}
  runs = 0
  for path in paths:
    with open(path) as f:
      variants = json.load(f)["variants"]
    for v, ref in _pairs(variants):
      if v == variant:
        runs += 1
        for op, r in ratios.items():
          r += _ratios(variants[v], ref, op)
  out = {}
  for op, r in ratios.items():
    if r:
      r.sort()
      out[op] = {"runs": runs, "rounds": len(r), "median": statistics.median(r),
                 "q1": r[len(r) // 4],
                 "q3": r[(3 * len(r)) // 4], "at_or_under_1": sum(x <= 1.0 for x in r) / len(r)}
  return out


def write_markdown(out: str) -> None:
  """Rewrites ``out`` from every ``train_step_*.json`` beside it."""
  runs = []
  for path in sorted(glob.glob(os.path.join(os.path.dirname(out) or ".", "train_step_*.json"))):
    with open(path) as f:
      runs.append((os.path.basename(path), json.load(f)))
  lines = [
      "# Train step and forward pass: unet_jax vs PyTorch on CPU",
      "",
      "Written by `benchmarks/train_step.py` (see its docstring and docs/performance.md).",
      "Medians over the timed reps after one warm-up call; each variant in its own",
      "process, calls interleaved round by round. Ratios are JAX / PyTorch from the same",
      "run. 'CPU' is the process CPU time of the step (all threads): on a machine shared",
      "with other jobs it shows the work done better than the wall time, but PyTorch's",
      "OpenMP threads spin while waiting, which inflates its CPU time. Peak RSS is the",
      "worker process's `ru_maxrss` (forward + train step). 'First step' includes",
      "compilation. A `+thp` row ran with glibc's malloc asking for transparent huge",
      "pages; its ratios are against the PyTorch `+thp` row when there is one.",
      "Page faults: the worker's minor page faults per train step (median;",
      "recorded since 2026-12-03): fresh pages of the temporary buffers, see",
      "docs/performance.md, 'Host memory'.",
      "",
  ]
  for name, r in runs:
    lines += [
        f"## {r['size']}², {r['features']} features, depth {r['depth']}, batch {r['batch']}, "
        + ("SAME padding, " if r.get("padding") == "same" else "") +
        f"{r['dtype']} ({name})",
        "",
        f"{r['date']}, {r['cpu_count']} CPUs ({r['machine']}), reps {r['reps']}, "
        f"{r.get('settle', 0)} untimed call(s) of the same op, then {r.get('block', 1)} "
        f"timed one(s), per variant and round, load "
        f"average before {r['load_before']}, after {r['load_after']}"
        + (f", XLA_FLAGS=`{r['xla_flags']}`" if r["xla_flags"] else "")
        + (f", GLIBC_TUNABLES=`{r['glibc_tunables']}`" if r.get("glibc_tunables") else "")
        + ".",
        "",
        "| variant | forward (s) | vs PyTorch | train step (s) | vs PyTorch "
        "| train step CPU (s) | vs PyTorch | page faults per step | peak RSS (GiB) "
        "| first step (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in [x + thp for x in VARIANTS for thp in ("", THP_SUFFIX)]:
      if v in r["variants"]:
        label = {"jax": "unet_jax `UNet()`, `layers.xla_compiler_options()`",
                 "jax_xla_defaults": "unet_jax `UNet()`, XLA default options",
                 "jax_reference": "unet_jax `UNet(reference_ops=True)`, XLA defaults",
                 "jax_dw_copy": "unet_jax `UNet()`, compiler options, weight gradient "
                                "as before 2026-12-03 (copies of the output gradients)",
                 "jax_same_autodiff": "unet_jax `UNet()`, SAME conv by autodiff "
                                      "(before its custom VJP), compiler options",
                 "jax_valid_fwd": "unet_jax `UNet()`, compiler options, forward as the "
                                  "plain VALID conv (not SAME + crop)",
                 "torch": "PyTorch eager" + (" (autocast bf16)" if r["dtype"] == "bfloat16"
                                            else "")}[v.removesuffix(THP_SUFFIX)]
        if v.endswith(THP_SUFFIX):
          label += f", `GLIBC_TUNABLES={THP_TUNABLE}`"
        lines.append(_row(label, r["variants"][v], _peer(r["variants"], v)))
    paired = [f"`{v}` " + ", ".join(_paired(r["variants"][v], ref, op) for op in ("step", "forward"))
              for v, ref in _pairs(r["variants"])]
    if paired:
      lines += ["", "Paired (each timed call over the PyTorch call at the same place in "
                "its round), median (min–max): " + "; ".join(paired) + "."]
    lines.append("")
  with open(out, "w") as f:
    f.write("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", type=int, default=572, help="input tile side (a valid size)")
  p.add_argument("--features", type=int, default=64, help="channels of the first level")
  p.add_argument("--depth", type=int, default=4)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--reps", type=int, default=5, help="timed calls per op and variant")
  p.add_argument("--settle", type=int, default=1,
                 help="untimed calls of the same op by the same worker right before each "
                 "timed one (0: plain call-by-call interleaving, as in runs before "
                 "2026-12-03 16:30). A JAX train step right after PyTorch's took "
                 "10-30 %% longer than after its own (docs/performance.md)")
  p.add_argument("--block", type=int, default=1,
                 help="timed calls of the same op by the same worker in a row, per round "
                 "(after the --settle ones): >1 measures each framework in the steady "
                 "state of a training loop, which runs one framework alone")
  p.add_argument("--reference-reps", type=int, default=2,
                 help="timed calls for jax_reference (slow at paper size)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--padding", choices=("valid", "same"), default="valid",
                 help="same: the non-default UNet(padding='same') (and padded PyTorch convs)")
  p.add_argument("--variants", default=",".join(VARIANTS),
                 help=f"comma-separated subset of {VARIANTS}; a name with the suffix "
                 f"'{THP_SUFFIX}' runs that variant with GLIBC_TUNABLES={THP_TUNABLE}")
  p.add_argument("--out", default=os.path.join(REPO, "results", "train_step_benchmark.md"))
  p.add_argument("--tag", default="", help="suffix of the JSON file name")
  p.add_argument("--pool", nargs="+", metavar="JSON",
                 help="print the paired ratios of --pool-variant pooled over these runs' "
                 "rounds (no timing)")
  p.add_argument("--pool-variant", default="jax")
  p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    worker_main(args)
    return
  if args.pool:
    for op, q in pooled(args.pool, args.pool_variant).items():
      print(f"{args.pool_variant} {op}: {q['rounds']} pairs in {q['runs']} runs, paired "
            f"ratio to PyTorch median {q['median']:.3f} (quartiles {q['q1']:.2f}–{q['q3']:.2f}), "
            f"<= 1.0 in {100 * q['at_or_under_1']:.0f} % of pairs")
    return
  for v in args.variants.split(","):
    if v.removesuffix(THP_SUFFIX) not in VARIANTS:
      p.error(f"unknown variant {v!r}; choose from {VARIANTS}, each optionally with "
              f"the suffix {THP_SUFFIX!r}")
    if v == "jax_same_autodiff" and args.padding != "same":
      p.error("jax_same_autodiff needs --padding same")
  result = run(args)
  tag = ("_same" if args.padding == "same" else "") + (f"_{args.tag}" if args.tag else "")
  path = os.path.join(os.path.dirname(args.out) or ".",
                      f"train_step_{args.size}_f{args.features}_{args.dtype}{tag}.json")
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  write_markdown(args.out)
  print(open(args.out).read())


if __name__ == "__main__":
  main()
