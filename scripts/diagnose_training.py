"""Short training runs that each change one suspect, with per-layer statistics.

    python scripts/diagnose_training.py --config configs/dic_hela_cpu.py \
        --steps 150 --out results/dic_hela_cpu/diagnosis.jsonl \
        --variant base: --variant lr_low:learning_rate=0.0005 ...

Each variant trains ``--steps`` steps of the real train step (same data
pipeline, weight maps and optimizer as train.py) from the same seed and logs,
every ``--every`` steps: loss, pixel accuracy, global gradient norm, the
std of the logit difference (a constant prediction has std ~0) and, per conv
layer, the fraction of "dead" ReLU channels (pre-activation <= 0 at every
pixel of the batch) and the activation RMS. Used for docs/cells.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # script, not library

from unet_jax import config_lib, datasets, input_pipeline, train_lib  # noqa: E402
from unet_jax import model as model_lib  # noqa: E402


def _set(config, assignment: str) -> None:
  key, value = assignment.split("=", 1)
  node = config
  *path, last = key.split(".")
  for p in path:
    node = node[p]
  old = node[last]
  node[last] = type(old)(value) if not isinstance(old, bool) else value == "True"


def layer_stats(model, params, image) -> dict:
  """Per conv layer: dead-channel fraction and RMS of the pre-activation."""
  _, inter = model.apply({"params": params}, image, train=False, capture_intermediates=True)
  out = {}
  for name, entry in inter["intermediates"].items():
    if not isinstance(entry, dict) or name == "classifier":
      continue
    v = entry["__call__"][0]
    dead = jnp.mean(jnp.max(v, axis=(0, 1, 2)) <= 0)
    out[name] = (float(dead), float(jnp.sqrt(jnp.mean(v**2))))
  return out


def run_variant(base_config, name: str, overrides: list[str], steps: int, every: int,
                data) -> list[dict]:
  config = base_config.copy_and_resolve_references()
  with config.unlocked():
    for o in overrides:
      _set(config, o)
  config = config_lib.resolve(config, data.num_channels)
  model = model_lib.from_config(config)
  state = train_lib.create_train_state(config, model, jax.random.PRNGKey(config.seed))
  step_fn = train_lib.make_train_step(model, config)
  it = input_pipeline.make_train_iterator(config, data)
  rows, window, t0 = [], [], time.time()
  for step in range(1, steps + 1):
    batch = next(it)
    state, m = step_fn(state, batch)
    window.append({k: float(v) for k, v in jax.device_get(m).items()})
    if step % every == 0 or step == 1:
      logits = model.apply({"params": state.params}, batch["image"], train=False)
      stats = layer_stats(model, state.params, batch["image"])
      row = {"variant": name, "overrides": overrides, "step": step,
             "loss": float(np.mean([w["loss"] for w in window])),
             "accuracy": float(np.mean([w["accuracy"] for w in window])),
             "grad_norm": float(np.mean([w["grad_norm"] for w in window])),
             "logit_diff_std": float(jnp.std(logits[..., 1] - logits[..., 0])),
             "dead_fraction": float(np.mean([d for d, _ in stats.values()])),
             "dead_by_layer": {k: round(d, 3) for k, (d, _) in stats.items()},
             "rms_by_layer": {k: round(r, 3) for k, (_, r) in stats.items()},
             "seconds": time.time() - t0}
      rows.append(row)
      window = []
      print(f"{name:14s} step {step:4d} loss {row['loss']:.3f} acc {row['accuracy']:.3f} "
            f"|g| {row['grad_norm']:.2f} logit-std {row['logit_diff_std']:.2f} "
            f"dead {row['dead_fraction']:.2f}", flush=True)
  return rows


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True)
  p.add_argument("--set", action="append", default=[], help="base override field=value")
  p.add_argument("--variant", action="append", required=True,
                 help="name:field=value,field=value (empty after ':' = base)")
  p.add_argument("--steps", type=int, default=150)
  p.add_argument("--every", type=int, default=25)
  p.add_argument("--out", required=True)
  args = p.parse_args()
  config = importlib.import_module("configs." + pathlib.Path(args.config).stem).get_config()
  with config.unlocked():
    for o in args.set:
      _set(config, o)
  data = datasets.load_split(config, "train")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  with out.open("a") as f:
    for spec in args.variant:
      name, _, rest = spec.partition(":")
      overrides = [o for o in rest.split(",") if o]
      for row in run_variant(config, name, overrides, args.steps, args.every, data):
        f.write(json.dumps(row) + "\n")
        f.flush()


if __name__ == "__main__":
  main()
