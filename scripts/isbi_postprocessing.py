"""Does post-processing of the probability map raise V_rand? A check on the validation split.

    python scripts/isbi_postprocessing.py --workdir runs/same_val/run --split val \
        --out results/isbi_cpu_same_val/postprocessing.md

Predicts the split once with the run's latest checkpoint (8-fold test-time
augmentation), then scores the ISBI protocol (threshold sweep, 4-connected
components, thinning; unet_jax/metrics.py) on the raw probabilities and on
a few classic post-processings: Gaussian or median smoothing, and a
marker-controlled watershed of the (Gaussian-smoothed, sigma 1 px) cell
probability seeded by the components of ``p > high`` (smaller seeds dropped),
whose 1-px watershed lines become the boundaries
(``instances.watershed_cell_mask``; ``evaluate.py --postprocess watershed``
applies the setting p > 0.7, >= 20 px). ``--per_slice`` adds each slice's
scores and its number of cell components against the truth's, which shows
whether a setting merges or splits cells. Any setting chosen here must
be chosen on validation slices, never on the held-out ones. To apply one
chosen setting to the held-out slices (and nothing else), name it with --only:

    python scripts/isbi_postprocessing.py --workdir W --split heldout --out W/pp.md \
        --only 'raw probabilities' --only 'watershed, seeds p > 0.7, seeds >= 20 px'
"""

import argparse
import functools
import pathlib
import sys
from typing import Callable

import numpy as np
import scipy.ndimage as ndi

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from unet_jax import datasets, evaluation, inference, instances, metrics  # noqa: E402
from unet_jax.errors import UserInputError  # noqa: E402


def variants() -> list[tuple[str, Callable[[np.ndarray], np.ndarray]]]:
  """(name, ``[H, W]`` probability -> ``[H, W]`` map) for every post-processing tried."""
  out = [("raw probabilities", lambda p: p)]
  out += [(f"Gaussian smoothing, sigma {s} px", functools.partial(ndi.gaussian_filter, sigma=s))
          for s in (0.5, 1.0, 1.5, 2.0, 3.0)]
  out += [(f"median filter {m}x{m}", functools.partial(ndi.median_filter, size=m)) for m in (3, 5)]
  out += [(f"watershed, seeds p > {high}, seeds >= {min_seed} px",
           functools.partial(instances.watershed_cell_mask, seed_threshold=high,
                             min_seed_size=min_seed))
          for high in (0.5, 0.7, 0.8, 0.9, 0.95) for min_seed in (0, 20, 100)]
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True, help="a training run (its latest checkpoint)")
  ap.add_argument("--split", default="val", choices=["val", "heldout"])
  ap.add_argument("--out", required=True, help="markdown table to write")
  ap.add_argument("--only", action="append", default=[],
                  help="score only this variant (its exact name in the table; repeatable), e.g. "
                       "a setting chosen on validation, applied once to the held-out slices")
  ap.add_argument("--per_slice", action="store_true",
                  help="add a table per slice (each slice its own best threshold) with the "
                       "number of cell components against the truth's: where a setting "
                       "merges or splits cells")
  args = ap.parse_args(argv)
  try:
    table = _score(args)
  except UserInputError as e:  # one line, exit code 2, as the CLIs do (unet_jax/cli.py)
    print(f"error: {e}", file=sys.stderr)
    return 2
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(table)
  return 0


def _score(args: argparse.Namespace) -> str:
  """The markdown table of the chosen variants on the run's split."""
  chosen = [(n, f) for n, f in variants() if not args.only or n in args.only]
  unknown = [n for n in args.only if n not in {name for name, _ in chosen}]
  if unknown:
    raise UserInputError(f"unknown --only {unknown[0]!r}; the variants are: "
                         f"{'; '.join(n for n, _ in variants())}")
  config, model, variables = inference.load_for_inference(args.workdir, "latest")
  data = datasets.load_split(config, args.split)  # "" train = the images not val/held out
  if not len(data):
    raise UserInputError(f"the run has no {args.split} split; pick another --split")
  indices = config[f"{args.split}_indices"] or "the images not in validation or held out"
  probs = [p[..., 1] for p in evaluation.predict_images(model, variables, data.images, config,
                                                        tta=True)]
  rows, maps = [], {}
  for name, post in chosen:
    maps[name] = [post(p) for p in probs]
    r = metrics.isbi_scores(maps[name], data.labels, warping=False)
    rows.append(f"| {name} | {r['vrand']:.4f} | {r['vinfo']:.4f} | {r['best_threshold']:.1f} |")
    print(rows[-1], flush=True)
  lines = [
      f"# Post-processing on the {args.split} split ({indices})", "",
      f"Run `{args.workdir}`, latest checkpoint, 8-fold TTA. Command: "
      f"`python scripts/isbi_postprocessing.py --workdir {args.workdir} --split {args.split} "
      f"--out {args.out}" + "".join(f" --only '{n}'" for n in args.only)
      + (" --per_slice" if args.per_slice else "") + "`", "",
      "| post-processing | V_rand | V_info | best threshold |", "|---|---|---|---|", *rows, ""]
  if args.per_slice:
    lines += ["## Per slice", "",
              "Each slice scored alone (its own best threshold). Components: 4-connected "
              "cell components of the map at that threshold, and of the truth's cell label.", "",
              "| slice | post-processing | V_rand | V_info | threshold | components | truth |",
              "|---|---|---|---|---|---|---|"]
    for i, (slice_name, label) in enumerate(zip(data.names, data.labels)):
      truth = int(metrics.components(label == 1).max())
      for name in maps:
        r = metrics.isbi_scores([maps[name][i]], [label], warping=False)
        found = int(metrics.components(maps[name][i] > r["best_threshold"]).max())
        lines.append(f"| {slice_name} | {name} | {r['vrand']:.4f} | {r['vinfo']:.4f} | "
                     f"{r['best_threshold']:.1f} | {found} | {truth} |")
    lines.append("")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
