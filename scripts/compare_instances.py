"""Scores several ways of making instances from the SAME network outputs.

    python scripts/compare_instances.py --workdir W --split val --out results/x/instances_val.json
    python scripts/compare_instances.py --workdir W --split heldout --out ... --markdown ...

Predicts p(cell) for every frame of the split once (the workdir's best
checkpoint, or --checkpoint latest), then runs each candidate of
``CANDIDATES`` (unet_jax/instances.py) and reports SEG, V_rand and the numbers
of merged, split and missed cells. Choose the method on ``--split val`` (the
frames that also chose the checkpoint) and report ``--split heldout``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # script, not library

from unet_jax import datasets, evaluation, inference, instances, metrics  # noqa: E402
from unet_jax.instances import InstanceParams  # noqa: E402

CANDIDATES = {
    "components (paper), p > 0.5": InstanceParams("components", 0.5),
    "components, p > 0.7": InstanceParams("components", 0.7),
    "components, p > 0.9": InstanceParams("components", 0.9),
    "watershed, seeds p > 0.9 r 2": InstanceParams("watershed", 0.5, 0.9, 2),
    "watershed, seeds p > 0.9 r 5": InstanceParams("watershed", 0.5, 0.9, 5),
    "watershed, seeds p > 0.95 r 5": InstanceParams("watershed", 0.5, 0.95, 5),
    "watershed, seeds p > 0.8 r 5": InstanceParams("watershed", 0.5, 0.8, 5),
}


def score(cell_probs, data, params: InstanceParams, min_size: int) -> dict:
  params = dataclasses.replace(params, min_size=min_size)
  preds = [instances.from_probability(p, params) for p in cell_probs]
  counts = [instances.merge_split_counts(p, g) for p, g in zip(preds, data.instances)]
  return {"seg": metrics.seg_score(preds, data.instances),
          "vrand": float(np.mean([metrics.rand_f_score(p, g)
                                  for p, g in zip(preds, data.instances)])),
          **{k: int(sum(c[k] for c in counts))
             for k in ("cells", "merged", "split", "missed", "predicted")},
          "params": dataclasses.asdict(params)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--split", default="val", choices=["val", "heldout"])
  p.add_argument("--checkpoint", default="best", choices=["best", "latest"])
  p.add_argument("--min_size", type=int, default=200, help="px; objects below are dropped")
  p.add_argument("--tta", action="store_true")
  p.add_argument("--out", required=True, help="JSON with all rows")
  p.add_argument("--markdown", help="also write the table here")
  args = p.parse_args()
  config, model, variables = inference.load_for_inference(args.workdir, args.checkpoint)
  data = datasets.load_split(config, args.split)
  probs = evaluation.predict_images(model, variables, data.images, config, tta=args.tta)
  cell_probs = [q[..., 1] for q in probs]
  rows = {name: score(cell_probs, data, params, args.min_size)
          for name, params in CANDIDATES.items()}
  out = {"workdir": args.workdir, "split": args.split,
         "indices": config[f"{args.split}_indices"], "checkpoint": args.checkpoint,
         "tta": args.tta, "min_size": args.min_size, "rows": rows}
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(out, indent=2))
  lines = [f"Instances from the same p(cell): {args.split} frames {out['indices']}, "
           f"{rows[next(iter(rows))]['cells']} reference cells, objects < {args.min_size} px "
           "dropped", "", "| method | SEG | V_rand | merged | split | missed | objects |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  lines += [f"| {n} | {r['seg']:.4f} | {r['vrand']:.4f} | {r['merged']} | {r['split']} | "
            f"{r['missed']} | {r['predicted']} |" for n, r in rows.items()]
  table = "\n".join(lines) + "\n"
  print(table)
  if args.markdown:
    pathlib.Path(args.markdown).write_text(table)


if __name__ == "__main__":
  main()
