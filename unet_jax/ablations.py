"""Ablations of the paper's ingredients: train every row for several seeds, score, tabulate.

Each row is the base config (the paper's recipe at some budget) with one
ingredient changed (``ROWS``). For every row and seed the runner

1. trains on the training slices with the row's config for ``num_steps``,
   choosing the checkpoint on a *validation* split carved from the training
   data (ISBI: train 0-19, validation 20-24), or taking the last checkpoint
   (``select="last"``), so that the held-out slices never choose anything;
2. scores that checkpoint on the held-out slices (ISBI 25-29) with and without
   test-time augmentation (the paper averages rotated versions of the input,
   Table 1; the "no TTA" row is the paper's recipe scored without it); with
   ``ema_decay > 0`` and the last checkpoint, the raw parameters are scored and
   their moving average separately (the "ema" row);
3. records the training wall time (including the periodic validation).

``write_table`` turns the per-run scores into ``results/ablations.md``: mean
and range over the seeds per column, and whether a row's V_rand range is
disjoint from the paper recipe's (a difference larger than the seed spread).

Runs are resumable: a finished run (its ``heldout.json``) is not redone, and an
interrupted training resumes from its checkpoints (its wall time adds up).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import pathlib
import time
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

log = logging.getLogger(__name__)

COLUMNS = ("vrand", "vinfo", "pixel_error", "warping_error", "train_minutes")
COLUMN_TITLES = {"vrand": "V_rand", "vinfo": "V_info", "pixel_error": "pixel error",
                 "warping_error": "warping error", "train_minutes": "wall time (min)"}


@dataclasses.dataclass(frozen=True)
class Row:
  """One ablation: a name, what it changes, and config overrides (dotted keys)."""
  name: str
  description: str
  overrides: dict[str, Any]


def _same_padding(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """SAME convs with ordinary tiling: tiles rounded up to the ``2**depth`` grid.

  The input tile keeps (about) the VALID tile's side, so a step costs about the
  same; its output is the whole tile instead of the centre.
  """
  grid = 2**config.depth
  up = lambda s: -(-int(s) // grid) * grid  # noqa: E731
  out = {"padding": "same", "tile_size": up(config.tile_size)}
  if config.eval_tile_size:
    out["eval_tile_size"] = up(config.eval_tile_size)
  return out


ROWS = (
    Row("paper", "the paper's recipe (base config)", {}),
    Row("w0_0", "w0 = 0: no border term in the weight map (Eq. 2)", {"w0": 0.0}),
    Row("no_class_balance", "class_weights = none: no class-frequency balancing in Eq. 2",
        {"class_weights": "none"}),
    Row("no_elastic", "no elastic deformation (shift, rotation, flips, grey values kept)",
        {"augment.elastic_std": 0.0}),
    Row("same_padding", "SAME-padded convolutions with ordinary tiling instead of VALID + "
        "overlap-tile", {"padding": _same_padding}),
    Row("momentum_0.9", "SGD momentum 0.9 instead of 0.99", {"momentum": 0.9}),
)
ROW_NAMES = tuple(r.name for r in ROWS)


def row_config(base: ml_collections.ConfigDict, row: Row, seed: int, num_steps: int, *,
               train_indices: str, val_indices: str, heldout_indices: str,
               select: str) -> ml_collections.ConfigDict:
  """The training config of one run: ``base`` + the row's overrides + protocol fields.

  Args:
    base: the base config (not modified).
    row: the ablation.
    seed: ``config.seed``.
    num_steps: the budget, same for every row.
    train_indices, val_indices: training and checkpoint-selection splits.
    heldout_indices: the reported split (``config.heldout_indices``).
    select: "best" (best validation V_rand) or "last" (no validation).
  """
  c = copy.deepcopy(base)
  with c.unlocked():
    for key, value in row.overrides.items():
      values = value(c) if callable(value) else {key: value}
      for k, v in values.items():
        *parents, leaf = k.split(".")
        node = c
        for p in parents:
          node = node[p]
        node[leaf] = v
    c.seed = int(seed)
    c.num_steps = int(num_steps)
    c.train_indices = train_indices
    c.heldout_indices = heldout_indices
    if select == "last":
      c.val_indices, c.eval_every = "", 0
    else:
      c.val_indices = val_indices
      c.eval_every = min(int(c.eval_every) or num_steps, num_steps)
    c.checkpoint_every = min(int(c.checkpoint_every), num_steps)
  return c


def _read_json(path: pathlib.Path) -> dict | None:
  return json.loads(path.read_text()) if path.is_file() else None


def run_one(config: ml_collections.ConfigDict, workdir: pathlib.Path, *, select: str,
            train_fn: Callable | None = None) -> dict:
  """Trains (or resumes) one run and scores it on its ``heldout_indices``.

  Returns:
    ``{"train_seconds", "step", "no_tta": scores, "tta": scores}``; also
    written to ``workdir/heldout.json`` (a run with that file is not redone).
  """
  from unet_jax import checkpoint, datasets, evaluation, inference, train_lib

  done = _read_json(workdir / "heldout.json")
  if done is not None:
    log.info("%s: done before, skipped", workdir)
    return done
  workdir.mkdir(parents=True, exist_ok=True)
  timing_path = workdir / "train_seconds.json"
  seconds = (_read_json(timing_path) or {}).get("seconds", 0.0)
  start = time.perf_counter()
  try:
    (train_fn or train_lib.train_and_evaluate)(config, str(workdir))
  finally:  # an interrupted run (Ctrl-C, SIGTERM) keeps its time for the resumed one
    seconds += time.perf_counter() - start
    timing_path.write_text(json.dumps({"seconds": seconds}))

  # With a parameter average and the last checkpoint, the rows score the raw
  # parameters (the paper's model) and the average separately ("ema_tta"),
  # both from one restore of the latest train state.
  both = config.ema_decay > 0 and select == "last"
  if both:
    saved, model, state = inference.load_latest_state(workdir)
    variables = {"params": state.params}
  else:
    saved, model, variables = inference.load_for_inference(
        workdir, "best" if select == "best" else "latest")
  data = datasets.load_split(saved, "heldout")
  result = {"train_seconds": seconds, "select": select,
            "best": checkpoint.best_score(workdir) if select == "best" else None}
  for key, tta in (("no_tta", False), ("tta", True)):
    result[key] = evaluation.evaluate_split(model, variables, data, saved,
                                            out_dir=workdir / f"heldout_{key}", tta=tta)
  if both:
    average = {"params": train_lib.eval_params(state)}
    result["ema_tta"] = evaluation.evaluate_split(model, average, data, saved,
                                                  out_dir=workdir / "heldout_ema_tta", tta=True)
  (workdir / "heldout.json").write_text(json.dumps(result, indent=2, allow_nan=True))
  return result


def run_ablations(base: ml_collections.ConfigDict, root: str | pathlib.Path, *,
                  num_steps: int, seeds: Sequence[int], rows: Sequence[str] = ROW_NAMES,
                  train_indices: str = "0-19", val_indices: str = "20-24",
                  heldout_indices: str = "25-29", select: str = "best",
                  train_fn: Callable | None = None) -> dict[str, list[dict]]:
  """Runs every row for every seed, one after the other, under ``root/<row>/seed<k>``.

  Returns:
    ``{row name: [run result per seed]}`` (see ``run_one``); also written to
    ``root/ablations.json``.
  """
  if select not in ("best", "last"):
    raise ValueError(f"select must be 'best' or 'last', got {select!r}")
  unknown = sorted(set(rows) - set(ROW_NAMES))
  if unknown:
    from unet_jax.errors import UserInputError
    raise UserInputError(f"unknown ablation rows {unknown}; choose from {', '.join(ROW_NAMES)}")
  root = pathlib.Path(root)
  results: dict[str, list[dict]] = {}
  for row in (r for r in ROWS if r.name in rows):
    for seed in seeds:
      config = row_config(base, row, seed, num_steps, train_indices=train_indices,
                          val_indices=val_indices, heldout_indices=heldout_indices,
                          select=select)
      log.info("ablation %s, seed %d, %d steps", row.name, seed, num_steps)
      result = run_one(config, root / row.name / f"seed{seed}", select=select,
                       train_fn=train_fn)
      results.setdefault(row.name, []).append({"seed": int(seed), **result})
  (root / "ablations.json").write_text(json.dumps(results, indent=2, allow_nan=True))
  return results


def collect(root: str | pathlib.Path) -> dict[str, list[dict]]:
  """The finished runs under ``root`` (``root/<row>/seed<k>/heldout.json``), in
  ``ROWS`` order, seeds ascending; the same layout as ``run_ablations`` returns.

  For a table over runs made by several invocations (e.g. a third seed of one
  row only).
  """
  root = pathlib.Path(root)
  results: dict[str, list[dict]] = {}
  for row in ROWS:
    runs = []
    for path in (root / row.name).glob("seed*/heldout.json"):
      runs.append({"seed": int(path.parent.name[len("seed"):]), **_read_json(path)})
    if runs:
      results[row.name] = sorted(runs, key=lambda r: r["seed"])
  return results


# --------------------------------------------------------------------------
# The table.
# --------------------------------------------------------------------------


def _values(runs: list[dict], key: str, column: str) -> np.ndarray:
  if column == "train_minutes":
    return np.array([r["train_seconds"] / 60 for r in runs])
  return np.array([r[key][column] for r in runs], np.float64)


def _cell(values: np.ndarray, digits: int) -> str:
  if values.size == 0 or not np.isfinite(values).all():
    return "n/a"
  mean = f"{values.mean():.{digits}f}"
  if values.size == 1:
    return mean
  return f"{mean} [{values.min():.{digits}f}, {values.max():.{digits}f}]"


_DIGITS = {"vrand": 4, "vinfo": 4, "pixel_error": 4, "warping_error": 6, "train_minutes": 1}


def _spread_note(runs: list[dict], paper: list[dict] | None, key: str) -> str:
  """Whether the row's V_rand range and the paper recipe's are disjoint."""
  if paper is None or len(runs) < 2 or len(paper) < 2:
    return "—"
  a, b = _values(runs, key, "vrand"), _values(paper, "tta", "vrand")
  if a.max() < b.min():
    return "lower, beyond the seed spread"
  if a.min() > b.max():
    return "higher, beyond the seed spread"
  return "within the seed spread"


def table_lines(results: dict[str, list[dict]]) -> list[str]:
  """Markdown table: one line per row (TTA) plus the paper recipe without TTA."""
  head = ["ablation", "seeds"] + [COLUMN_TITLES[c] for c in COLUMNS] + ["V_rand vs paper"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  paper = results.get("paper")
  entries = [(r, "tta") for r in ROWS if r.name in results]
  if paper is not None:
    entries.insert(1, (Row("no_tta", "the paper's recipe scored without test-time "
                           "augmentation (same checkpoints)", {}), "no_tta"))
  if paper is not None and all("ema_tta" in r for r in paper):
    entries.insert(2, (Row("ema", "a moving average of the parameters (not in the paper) "
                           "instead of the last step's (same runs)", {}), "ema_tta"))
  for row, key in entries:
    runs = results["paper" if row.name in ("no_tta", "ema") else row.name]
    cells = [_cell(_values(runs, key, c), _DIGITS[c]) for c in COLUMNS]
    seeds = ",".join(str(r["seed"]) for r in runs)
    note = _spread_note(runs, paper, key) if row.name != "paper" else "—"
    lines.append(f"| **{row.name}**: {row.description} | {seeds} | " + " | ".join(cells)
                 + f" | {note} |")
  return lines


def per_run_lines(results: dict[str, list[dict]]) -> list[str]:
  """Markdown table of every run: held-out scores with and without TTA."""
  lines = ["| ablation | seed | step | V_rand (TTA) | V_info (TTA) | V_rand | V_info | "
           "pixel error (TTA) | warping error (TTA) | wall time (min) |",
           "|" + " --- |" * 10]
  for name, runs in results.items():
    for r in runs:
      step = (r.get("best") or {}).get("step", "last")
      t, n = r["tta"], r["no_tta"]
      lines.append(f"| {name} | {r['seed']} | {step} | {t['vrand']:.4f} | {t['vinfo']:.4f} | "
                   f"{n['vrand']:.4f} | {n['vinfo']:.4f} | {t['pixel_error']:.4f} | "
                   f"{t['warping_error']:.6f} | {r['train_seconds'] / 60:.1f} |")
  return lines


def write_table(results: dict[str, list[dict]], path: str | pathlib.Path, *, base_name: str,
                num_steps: int, select: str, train_indices: str, val_indices: str,
                heldout_indices: str, command: str = "") -> pathlib.Path:
  """Writes the ablation table (markdown) to ``path``."""
  select_text = (f"the checkpoint with the best V_rand on the validation slices {val_indices}"
                 if select == "best" else "the last checkpoint")
  lines = [
      "# Ablations of the paper's ingredients", "",
      f"Base config `{base_name}`, {num_steps} steps per run, trained on slices "
      f"{train_indices}; {select_text}; scored on the held-out slices {heldout_indices}, "
      "which chose nothing. Every row changes one ingredient of the base recipe; all rows "
      "have the same budget. Cells: mean [min, max] over the seeds. Scores are with "
      "8-fold test-time augmentation (the paper averages rotated inputs) except in the "
      "`no_tta` row. Wall time: training, including the periodic validation.", "",
      "\"V_rand vs paper\": whether the row's V_rand range over the seeds and the paper "
      "recipe's are disjoint (a difference larger than the seed spread).", "",
  ]
  if command:
    lines += ["Command:", "", "```", command, "```", ""]
  lines += table_lines(results) + ["", "## Every run", ""] + per_run_lines(results)
  lines += ["", "## What each row shows", "",
            "_To be written from the table above: two sentences per row._", ""]
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines))
  return path
