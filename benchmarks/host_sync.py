r"""Step rate of the train loop: metrics fetched every step vs every ``log_every`` steps.

The train loop used to pull each step's loss and gradient norm to the host and
check them before dispatching the next step (a device sync per step); it now
keeps them on the device and fetches them every ``log_every`` steps. This
script times both policies in one process on the same compiled step
(``train_lib.make_train_step``) and the same grain pipeline, in alternating
blocks (A, B, A, B, ...) so that load from other jobs falls on both alike.

Usage (from the repo root)::

  python benchmarks/host_sync.py --configs tiny,synthetic --steps 40 --rounds 3

Prints a markdown table (and writes it to ``--out`` if given).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(config_name: str, steps: int, log_every: int, rounds: int) -> dict[str, list]:
  import jax
  from unet_jax import input_pipeline as data_lib
  from unet_jax import datasets, train_lib

  c = importlib.import_module(f"configs.{config_name}").get_config()
  train = datasets.load_split(c, "train")
  with c.unlocked():
    c.in_channels = int(train.num_channels)
  from unet_jax import model as model_lib
  model = model_lib.from_config(c)
  state = train_lib.create_train_state(c, model, jax.random.PRNGKey(0))
  step_fn = train_lib.make_train_step(model, c)
  it = data_lib.make_train_iterator(c, train)
  state, m = step_fn(state, next(it))  # compile
  jax.block_until_ready(m)

  def every_step(state):
    for _ in range(steps):
      state, m = step_fn(state, next(it))
      host = {k: float(v) for k, v in jax.device_get(m).items()}  # the old per-step sync
      train_lib.check_finite([(0, host)], c, None, "")
    return state

  def every_log(state):
    pending = []
    for i in range(1, steps + 1):
      state, m = step_fn(state, next(it))
      pending.append((i, m))
      if i % log_every == 0 or i == steps:
        fetched = [(s, {k: float(v) for k, v in d.items()}) for s, d in jax.device_get(pending)]
        pending = []
        train_lib.check_finite(fetched, c, None, "")
    return state

  rates = {"every step": [], f"every {log_every} steps": []}
  for _ in range(rounds):
    for name, loop in zip(rates, (every_step, every_log)):
      t0 = time.perf_counter()
      state = loop(state)
      jax.block_until_ready(state.params)
      rates[name].append(steps / (time.perf_counter() - t0))
      print(config_name, name, f"{rates[name][-1]:.2f} steps/s", flush=True)
  return rates


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--configs", default="tiny,synthetic")
  p.add_argument("--steps", type=int, default=40, help="steps per timed block")
  p.add_argument("--log_every", type=int, default=10)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--out", default="")
  args = p.parse_args()
  from train_step import cpu_model  # benchmarks/ is on sys.path when run as a script
  load0 = os.getloadavg()[0]
  rows = ["| config | steps per block | fetch every step: steps/s | fetch every "
          f"{args.log_every}: steps/s | ratio |", "|---|---|---|---|---|"]
  for name in args.configs.split(","):
    rates = measure(name, args.steps, args.log_every, args.rounds)
    a, b = (statistics.median(v) for v in rates.values())
    rows.append(f"| {name} | {args.steps} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
  text = "\n".join([
      f"{time.strftime('%Y-%m-%d %H:%M')}, {cpu_model()}, {os.cpu_count()} CPU cores; "
      f"1-min load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after (the run "
      f"itself keeps the cores busy); medians of {args.rounds} alternating blocks.", "",
      *rows, ""])
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
  main()
