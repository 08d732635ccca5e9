"""Held-out evaluation, the ISBI submission file and prediction on users' images.

The library behind ``evaluate.py`` (and the periodic evaluation of training).
``config`` arguments are resolved configs (:func:`unet_jax.config_lib.resolve`):
the eval tile size is ``config.eval_tile_size``.

* ``evaluate_split``: scores a ``SegmentationData`` split with the protocol of
  its dataset (``datasets.spec(name).protocol``). "isbi" data (``isbi2012``,
  ``synthetic``: label 1 = cell interior, 0 = membrane) get the ISBI 2012
  protocol (``metrics.isbi_scores`` on the class-1 probability); "instance"
  data (``dic_hela``, ``phc_u373``, ``folder``) get the Cell Tracking
  Challenge SEG of the instances made from ``p_cell`` as ``config.instances``
  says (:mod:`unet_jax.instances`), V_rand / V_info of those instances against
  the reference instances, and merged / split / missed cell counts. The
  metrics are defined in docs/conventions.md.
* ``write_submission``: the ISBI 2012 challenge file.

Users' own images (``evaluate.py --mode predict``) are in :mod:`unet_jax.predict`.

Class 1 is "cell" throughout (cell interior for ISBI), so the probability maps
follow the challenge convention: 1 = cell interior, 0 = membrane/background.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import re
import time
from typing import Any, Sequence

from flax import linen as nn
import jax
import numpy as np

from unet_jax import ctc_format, datasets, distributed, instances, metrics, parallel, tiling
from unet_jax.errors import UserInputError

log = logging.getLogger(__name__)



# --------------------------------------------------------------------------
# Prediction helpers.
# --------------------------------------------------------------------------


def predict_images(model, variables: Any, images: Sequence[np.ndarray], config, *,
                   tile_size: int | None = None, tta: bool = False,
                   progress: bool = False) -> list[np.ndarray]:
  """Class probabilities ``[H, W, K]`` of each normalised image ``[H, W, C]``.

  ``variables`` is ``{"params": ...}``, or a list of them (a snapshot
  ensemble, ``inference.load_snapshots``): then the probabilities of the
  members are averaged. ``tile_size`` overrides the config's ``eval_tile_size``.
  """
  if isinstance(variables, (list, tuple)):
    members = [predict_images(model, v, images, config, tile_size=tile_size, tta=tta,
                              progress=progress) for v in variables]
    return [np.mean(per_image, axis=0) for per_image in zip(*members)]
  tile = tile_size or config.eval_tile_size
  if not tile:
    raise ValueError("config.eval_tile_size is 0: pass a resolved config "
                     "(unet_jax.config_lib.resolve)")
  batch = int(config.eval_batch_size)
  mesh = tiling.inference_mesh() if isinstance(model, nn.Module) else None
  if mesh is not None:  # several local devices: copy the parameters there once, not per image
    variables = parallel.replicate(variables, mesh)
  items = images
  if progress:
    from tqdm.auto import tqdm
    items = tqdm(images, desc="images", unit="image", disable=None)  # None: off unless a terminal
  return [tiling.predict_tiled(model, variables, im, tile_size=tile, batch_size=batch, tta=tta)
          for im in items]


# --------------------------------------------------------------------------
# Scores.
# --------------------------------------------------------------------------


def score_image(scored: np.ndarray, label: np.ndarray, reference: np.ndarray | None,
                protocol: str, params: instances.InstanceParams | None = None, *,
                warping: bool = True, index: int = 0) -> tuple[dict, np.ndarray | None]:
  """What one image adds to the scores of its split (``combine_image_scores``).

  Args:
    scored: ``[H, W]`` the map scored: p(cell), or its post-processed mask.
    label: int ``[H, W]``: 1 = cell, 0 = membrane/background, other = ignore.
    reference: int ``[H, W]`` reference instances (instance data; unused for
      "isbi").
    protocol: ``"isbi"`` or ``"instance"`` (``datasets.spec(name).protocol``).
    params: how instance data become instances (``InstanceParams.from_config``).
    warping, index: for ``metrics.isbi_slice_curves``.
  Returns:
    ``(part, instances)``. ``part`` holds tens to hundreds of numbers: ISBI-like data
    ``{"curves": metrics.isbi_slice_curves(...)}`` (``None`` for a slice
    without cells); instance data ``{"jaccards": [n_ref], "vrand", "vinfo",
    "f1", "counts"}``. ``instances``: the predicted instances ``[H, W]`` of
    instance data, ``None`` for ISBI-like data (their mask needs the threshold
    chosen over the whole split).
  """
  if protocol == "isbi":
    return {"curves": metrics.isbi_slice_curves(scored, label, warping=warping, index=index)}, None
  pred = instances.from_probability(scored, params)
  ignore = (label != 0) & (label != 1)
  return {
      "jaccards": metrics.seg_jaccards(pred, reference),
      "vrand": metrics.rand_f_score(pred, reference, ignore),
      "vinfo": metrics.info_f_score(pred, reference, ignore),
      "f1": metrics.pixel_f1(pred > 0, label == 1, ~ignore),
      "counts": instances.merge_split_counts(pred, reference),
  }, pred


def combine_image_scores(parts: Sequence[dict], protocol: str) -> tuple[dict, dict]:
  """The split's scores from its images' ``score_image`` / ``score_probabilities`` parts.

  Returns:
    ``(scores, curves)``: ISBI-like data ``metrics.isbi_from_slice_curves``
    (curves: per threshold, averaged over the slices); instance data SEG
    pooled over all reference cells, V_rand / V_info / pixel error averaged
    over the images, cell counts summed (curves empty). Parts of K > 2 classes
    add ``class_iou`` of their pooled ``"classes"`` counts.
  """
  if protocol == "isbi":
    result = metrics.isbi_from_slice_curves([part["curves"] for part in parts])
    scores, curves = result, result.pop("curves")
  else:
    counts = [part["counts"] for part in parts]
    scores, curves = {
        "seg": metrics.seg_from_jaccards([part["jaccards"] for part in parts]),
        "vrand": float(np.mean([part["vrand"] for part in parts])),
        "vinfo": float(np.mean([part["vinfo"] for part in parts])),
        "pixel_error": float(1.0 - np.mean([part["f1"] for part in parts])),
        "cells": int(sum(c["cells"] for c in counts)),
        **{f"cells_{k}": int(sum(c[k] for c in counts)) for k in ("merged", "split", "missed")},
    }, {}
  if parts and "classes" in parts[0]:
    scores.update(class_iou([part["classes"] for part in parts]))
  return scores, curves


def score_probabilities(prob: np.ndarray, label: np.ndarray, reference: np.ndarray | None,
                        protocol: str, params: instances.InstanceParams | None = None, *,
                        postprocess: str = "none", warping: bool = True, index: int = 0
                        ) -> tuple[dict, np.ndarray]:
  """``score_image`` of one image's class probabilities ``[H, W, K]``.

  The map scored is ``cell_probability(prob)``, post-processed as ``postprocess``
  says (``postprocess_cell_probs``). With K > 2 classes it is scored against the
  foreground label (every class 1..K-1 is "cell") and the part also holds the
  image's ``class_counts`` as ``"classes"``. ``label``, ``reference``, ``protocol``,
  ``params``, ``warping``, ``index``: as in ``score_image`` (``label`` with its K
  classes).

  Returns:
    ``(part, shown)``: the part for ``combine_image_scores``, and the map the
    report's overlays outline: the predicted instances of instance data, the
    scored map of ISBI-like data (their mask is ``shown > best_threshold``,
    known once the split is combined).
  """
  k = prob.shape[-1]
  scored = postprocess_cell_probs([cell_probability(prob)], postprocess)[0]
  part, pred = score_image(scored, label if k == 2 else _foreground_label(label, k), reference,
                           protocol, params, warping=warping, index=index)
  if k > 2:
    part["classes"] = class_counts(prob, label, k)
  return part, scored if pred is None else pred


POSTPROCESS = ("none", "watershed")


def postprocess_cell_probs(cell_probs: list[np.ndarray], method: str) -> list[np.ndarray]:
  """``[H, W]`` maps to score or submit instead of the raw cell probabilities.

  ``"none"``: the probabilities (the paper). ``"watershed"``: the cell mask
  with 1-px watershed lines of ``instances.watershed_cell_mask`` (ISBI-style
  membrane data only; cell-instance data choose their own way in
  ``config.instances``).
  """
  check_postprocess(method)
  if method == "watershed":
    return [instances.watershed_cell_mask(p) for p in cell_probs]
  return cell_probs


def check_postprocess(method: str) -> None:
  """Refuses a post-processing name not in ``POSTPROCESS`` (before any prediction)."""
  if method not in POSTPROCESS:
    raise UserInputError(f"post-processing {method!r}: choose one of {', '.join(POSTPROCESS)}")


def evaluate_split(model, variables: Any, data, config, *,
                   out_dir: str | pathlib.Path | None = None, tta: bool = False,
                   progress: bool = False, warping: bool = True,
                   tile_size: int | None = None, postprocess: str = "none",
                   across_processes: bool = False) -> dict:
  """Predicts and scores a held-out split.

  Args:
    model: a ``unet_jax.UNet``.
    variables: ``{"params": ...}``, or a list of them (probabilities averaged,
      see ``predict_images``).
    data: a ``datasets.SegmentationData`` (or any object with ``images``
      float32 ``[H, W, C]``, ``labels`` int32 ``[H, W]`` (1 = cell, 0 =
      membrane/background, other = ignore), ``instances``, ``names``,
      ``dataset``).
    config: a resolved config; uses ``eval_tile_size``, ``eval_batch_size``
      and ``instances`` (how cell data become instances; unet_jax/instances.py).
    out_dir: if given, writes ``metrics.json``, ``metrics.md`` and
      ``overlays/<name>.png`` there.
    tta: average the 8 flips/rotations.
    progress: tqdm bar over the images.
    warping: compute the warping error (ISBI-like data).
    tile_size: overrides the config's tile size.
    postprocess: ``"none"`` or, for ISBI-like data, ``"watershed"``
      (:func:`postprocess_cell_probs`): score the watershed cell mask instead
      of the probabilities; the overlays still show the probabilities.
    across_processes: in a multi-process run, a collective that every process
      calls with the same arguments: process ``p`` of ``P`` predicts and scores
      images ``p, p + P, ...`` with its local ``variables``
      (``score_probabilities``, as one process does for every image),
      the per-image parts are gathered (``distributed.map_strided``) and every
      process returns the scores of the whole split. No ``out_dir`` then (the
      report needs every probability map in one place). Otherwise each process
      predicts and scores every image.
  Returns:
    Scalar scores: ISBI-like data ``vrand``, ``vinfo``, ``rand_error``,
    ``pixel_error``, ``warping_error``, ``best_threshold``; instance data
    ``seg``, ``vrand``, ``vinfo``, ``pixel_error``, ``cells`` and
    ``cells_merged`` / ``cells_split`` / ``cells_missed`` (see
    ``instances.merge_split_counts``); always ``num_images`` and
    ``seconds``.
  """
  if data.labels is None:
    raise UserInputError(f"the {data.dataset} split has no labels to evaluate against")
  check_postprocess(postprocess)
  if postprocess != "none" and datasets.spec(data.dataset).protocol != "isbi":
    raise UserInputError(f"post-processing {postprocess!r} is for ISBI-style membrane data; "
                         f"{data.dataset} makes instances as config.instances says "
                         "(e.g. --config.instances.method=watershed)")
  start = time.perf_counter()
  protocol = datasets.spec(data.dataset).protocol
  params = instances.InstanceParams.from_config(config) if protocol == "instance" else None

  def predict_and_score(indices: Sequence[int], bar: bool = False
                        ) -> tuple[list[np.ndarray], list[tuple[dict, np.ndarray]]]:
    """The images' probabilities ``[H, W, K]`` and their ``score_probabilities``."""
    probs = predict_images(model, variables, [data.images[i] for i in indices], config,
                           tile_size=tile_size, tta=tta, progress=bar)
    return probs, [score_probabilities(
        prob, data.labels[i], data.instances[i] if protocol == "instance" else None, protocol,
        params, postprocess=postprocess, warping=warping, index=i)
        for i, prob in zip(indices, probs)]

  if across_processes and jax.process_count() > 1:
    if not distributed.all_agree(out_dir is None):  # all raise, none waits in the gather
      raise ValueError("evaluate_split(across_processes=True) writes no report: pass out_dir "
                       "to a call in one process")

    def parts_here(indices: Sequence[int]) -> list[dict]:
      log.info("predicting and scoring %d of the %d images here, the others in the other %d "
               "process(es)", len(indices), len(data.images), jax.process_count() - 1)
      return [part for part, _ in predict_and_score(indices)[1]]

    parts = distributed.map_strided(parts_here, len(data.images))
  else:
    probs, scored = predict_and_score(range(len(data.images)), bar=progress)
    parts = [part for part, _ in scored]
  scores, curves = combine_image_scores(parts, protocol)
  if postprocess != "none":
    scores["postprocess"] = postprocess
  scores.update(num_images=len(data.images), seconds=time.perf_counter() - start)
  scores = {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in scores.items()}
  if out_dir is not None:
    shown = [m for _, m in scored]
    masks = [m > scores["best_threshold"] for m in shown] if protocol == "isbi" else shown
    num_classes = probs[0].shape[-1] if probs else 2
    write_report(out_dir, scores, curves,
                 data if num_classes == 2 else _foreground_view(data, num_classes),
                 [cell_probability(p) for p in probs], masks, tta=tta)
  return scores


def cell_probability(prob: np.ndarray) -> np.ndarray:
  """``[H, W]`` p(cell) of class probabilities ``[H, W, K]``.

  Class 1 for K = 2. For K > 2 classes (own data, mask_kind "classes") 1 -
  p(background): the instance scores see every non-background class as
  "cell"; the classes get their IoU (``class_iou``).
  """
  return prob[..., 1] if prob.shape[-1] == 2 else 1.0 - prob[..., 0]


def _foreground_label(label: np.ndarray, num_classes: int) -> np.ndarray:
  """int32 ``[H, W]``: 1 = any class in 1..K-1, 0 = background, -1 = ignore."""
  return np.where((label >= 1) & (label < num_classes), 1,
                  np.where(label == 0, 0, -1)).astype(np.int32)


def _foreground_view(data, num_classes: int):
  """``data`` with its labels as ``_foreground_label``."""
  import types
  return types.SimpleNamespace(images=data.images,
                               labels=[_foreground_label(lab, num_classes) for lab in data.labels],
                               instances=data.instances, names=data.names, dataset=data.dataset)


def class_iou(counts: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
  """IoU per class and the mean over classes 1..K-1, pooled over images.

  Args:
    counts: per image the ``(intersection, union)`` pixel counts ``[K]`` of
      ``class_counts``.
  Returns:
    ``{"iou_class_k": ..., "mean_iou": ...}`` (NaN for a class absent from
    both prediction and labels).
  """
  inter = np.sum([c[0] for c in counts], axis=0)
  union = np.sum([c[1] for c in counts], axis=0)
  iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
  out = {f"iou_class_{k}": float(iou[k]) for k in range(len(iou))}
  out["mean_iou"] = float(np.nanmean(iou[1:])) if np.any(union[1:] > 0) else float("nan")
  return out


def class_counts(prob: np.ndarray, label: np.ndarray, num_classes: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Per class ``[K]``: pixels of one image in the intersection and in the union of
  the most probable class and the label (labels outside [0, K) ignored)."""
  valid = (label >= 0) & (label < num_classes)
  pred = np.argmax(prob, -1)[valid]
  gt = label[valid]
  inter = np.array([np.sum((pred == k) & (gt == k)) for k in range(num_classes)], np.float64)
  union = np.array([np.sum((pred == k) | (gt == k)) for k in range(num_classes)], np.float64)
  return inter, union


# --------------------------------------------------------------------------
# Reports.
# --------------------------------------------------------------------------


def safe_name(name: str) -> str:
  """A file-name-safe version of an image name (``train-volume.tif:25`` -> ``train-volume.tif_25``)."""
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "image"


def markdown_report(scores: dict, curves: dict, dataset: str, tta: bool = False,
                    names: Sequence[str] = ()) -> str:
  """The scores (and per-threshold curves) as markdown tables.

  The title names the images scored (``names``), not the split: which split
  they are (validation, which chose the checkpoint, or held-out) is the caller's
  to say.
  """
  lines = [f"# Evaluation ({dataset}{', TTA' if tta else ''})", ""]
  if names:
    lines += [f"{len(names)} images: {', '.join(names)}", ""]
  lines += ["| metric | value |", "| --- | --- |"]
  lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in scores.items()]
  if curves:
    keys = [k for k in curves if k != "threshold"]
    lines += ["", "Per threshold (averaged over the images):", "",
              "| threshold | " + " | ".join(keys) + " |",
              "| --- |" + " --- |" * len(keys)]
    for i, t in enumerate(curves["threshold"]):
      lines.append(f"| {t:.1f} | " + " | ".join(f"{curves[k][i]:.4f}" for k in keys) + " |")
  return "\n".join(lines) + "\n"


def write_report(out_dir, scores: dict, curves: dict, data, cell_probs: list[np.ndarray],
                 masks: list[np.ndarray], tta: bool = False) -> pathlib.Path:
  """Writes ``metrics.json``, ``metrics.md``, one overlay PNG per image and, for
  instance data, the instances: the challenge's ``<seq>_RES/maskTTT.tif`` for Cell
  Tracking Challenge frames, else ``labels/NAME.tif`` (uint16, 0 = background)."""
  out = pathlib.Path(out_dir)
  (out / "overlays").mkdir(parents=True, exist_ok=True)
  (out / "metrics.json").write_text(json.dumps(
      {"dataset": data.dataset, "tta": tta, "names": list(data.names), **scores,
       "curves": curves}, indent=2, allow_nan=True))
  (out / "metrics.md").write_text(markdown_report(scores, curves, data.dataset, tta, data.names))
  instance_data = datasets.spec(data.dataset).protocol == "instance"
  for image, prob, mask, label, name in zip(data.images, cell_probs, masks, data.labels,
                                            data.names):
    save_overlay(out / "overlays" / f"{safe_name(name)}.png", image, prob, mask, label,
                 instances=instance_data)
  if instance_data and data.names and all(map(ctc_format.is_frame_name, data.names)):
    ctc_format.write_results(out, data.names, masks)
  elif instance_data:  # e.g. your own folder of images + instance masks
    import tifffile
    (out / "labels").mkdir(exist_ok=True)
    for name, mask in zip(data.names, masks):
      tifffile.imwrite(out / "labels" / f"{safe_name(name)}.tif", ctc_format.to_uint16(mask),
                       compression="zlib")
  return out


def error_map(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
  """RGB ``[H, W, 3]``: correct = grey level of the truth, false positive
  (cell predicted on membrane/background) = red, false negative = blue,
  ignored = yellow."""
  rgb = np.repeat((label == 1)[..., None] * 0.6, 3, axis=-1).astype(np.float32)
  cell = pred > 0
  rgb[cell & (label == 0)] = (1.0, 0.1, 0.1)
  rgb[~cell & (label == 1)] = (0.1, 0.3, 1.0)
  rgb[(label != 0) & (label != 1)] = (1.0, 0.9, 0.2)
  return rgb


def save_overlay(path: str | pathlib.Path, image: np.ndarray, cell_prob: np.ndarray,
                 mask: np.ndarray, label: np.ndarray | None = None, *,
                 instances: bool = False) -> None:
  """Writes a PNG: image, prediction, and ground truth + error map (if ``label``).

  Args:
    image: ``[H, W, C]`` (channel 0 is shown).
    cell_prob: ``[H, W]`` cell probability.
    mask: ``[H, W]`` predicted cell mask or instances (> 0 = cell).
    label: ``[H, W]`` ground truth (1 = cell, 0 = not, other = ignore) or None,
      in which case the instances are drawn instead.
    instances: ``mask`` holds instance ids: add a panel with one colour per
      object, so that merged and split cells are seen at a glance.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from skimage.segmentation import find_boundaries

  grey = np.asarray(image)[..., 0] if np.ndim(image) == 3 else np.asarray(image)
  outline = np.repeat(((grey - grey.min()) / (np.ptp(grey) + 1e-9))[..., None], 3, -1)
  outline[find_boundaries(np.asarray(mask).astype(np.int32), mode="inner")] = (1.0, 0.2, 0.2)
  panels = [("image", grey, "gray"), ("p(cell)", cell_prob, "magma"),
            ("prediction outlines", outline, None)]
  if instances:
    from skimage.color import label2rgb
    panels.append((f"instances ({len(np.unique(mask[mask > 0]))})",
                   label2rgb(np.asarray(mask), image=outline[..., 0], bg_label=0, alpha=0.45,
                             image_alpha=1.0), None))
  if label is not None:
    panels += [("ground truth", np.where((label == 0) | (label == 1), label, 0.5), "gray"),
               ("errors: FP red, FN blue", error_map(mask, label), None)]
  fig = Figure(figsize=(3.2 * len(panels), 3.4))
  FigureCanvasAgg(fig)  # an own canvas: no pyplot state, the user's backend untouched
  axes = fig.subplots(1, len(panels))
  for ax, (title, array, cmap) in zip(np.atleast_1d(axes), panels):
    ax.imshow(array, cmap=cmap, vmin=0 if cmap == "magma" else None,
              vmax=1 if cmap == "magma" else None, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=80)


# --------------------------------------------------------------------------
# ISBI 2012 submission.
# --------------------------------------------------------------------------


def write_submission(model, variables: Any, volume: np.ndarray, path: str | pathlib.Path,
                     config, *, tta: bool = False, progress: bool = False,
                     tile_size: int | None = None, postprocess: str = "none") -> pathlib.Path:
  """Writes the ISBI 2012 challenge submission: a 32-bit float TIFF stack.

  Convention (as the challenge expects; docs/conventions.md): each value is the
  probability that the pixel is **cell interior** (1 = cell interior, 0 =
  membrane), the class-1 softmax output.

  Args:
    volume: ``[S, H, W]`` raw slices (e.g. ``test-volume.tif``, uint8); each
      slice is normalised like the training data (``datasets.normalize``).
    path: the TIFF to write.
    config, tta, progress, tile_size: as in ``evaluate_split``.
    postprocess: ``"watershed"`` writes the watershed cell mask (values 0 and
      1) instead of the probabilities (:func:`postprocess_cell_probs`).
  Returns:
    ``path``; the file holds float32 ``[S, H, W]`` in [0, 1].
  """
  check_postprocess(postprocess)
  volume = np.asarray(volume)
  volume = volume[None] if volume.ndim == 2 else volume
  if volume.ndim != 3:
    raise UserInputError(f"submission volume must be [S, H, W], got shape {volume.shape}")
  probs = predict_images(model, variables, [datasets.normalize(s) for s in volume], config,
                         tile_size=tile_size, tta=tta, progress=progress)
  stack = np.stack(postprocess_cell_probs([p[..., 1] for p in probs], postprocess))
  stack = stack.astype(np.float32)
  return _write_tiff(path, stack)


def _write_tiff(path: str | pathlib.Path, array: np.ndarray) -> pathlib.Path:
  import tifffile

  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tifffile.imwrite(path, array, photometric="minisblack")
  return path
