"""Segmenting users' own images: a batch of files in, result files out, never clobbering.

The library behind ``evaluate.py --mode predict``. Every input file ``NAME.EXT``
(any format :mod:`unet_jax.image_io` reads; a multi-page file is a stack) gives,
in the output folder, names that keep the input's extension so that ``a.png``
and ``a.tif`` never collide:

=========================  ==================================================
``NAME.EXT_prob.tif``      float32 per-class softmax probabilities, ImageJ
                           axes ``CYX`` (``TCYX``, ``ZCYX`` or ``TZCYX`` for a
                           stack, see below); channel 1 = cell (cell interior
                           for ISBI-like models)
``NAME.EXT_mask.tif``      uint8: 2 classes: 255 where p(cell) > threshold, else
                           0; K > 2 classes: the most probable class id
``NAME.EXT_labels.tif``    instances of the mask's foreground, made as
                           ``config.instances`` says (:mod:`unet_jax.instances`);
                           uint16, or uint32 past 65,535 objects; 0 = background
``NAME.EXT_overlay.png``   the image with the objects outlined, at the image's
                           own aspect; images above ``OVERLAY_MAX`` px are
                           downscaled and get a full-resolution centre crop
                           ``NAME.EXT_overlay_crop.png`` as well
=========================  ==================================================

Stacks give one ``..._overlay_pNNN.png`` per page. The TIFFs carry the input's
pixel size (only a physical calibration, never a dpi: see
:mod:`unet_jax.image_io`). A stack keeps its leading axes: a time-lapse stays
``T`` (with its frame interval), a Z stack ``Z`` (with its Z spacing), a
``T`` x ``Z`` hyperstack ``TZ``; pages along any other axis (``I``, ``Q``,
GIF frames) are written as a ``Z`` stack, ImageJ's plain stack. The output
folder must not be (inside) an input folder, and existing outputs are refused
unless ``overwrite=True``, or skipped with ``skip_existing=True``: each input's
files are written to ``OUT/.partial/`` and moved into ``OUT`` one by one, its
``_labels.tif`` last, so an input whose ``_labels.tif`` exists has all its
files, and a batch stopped part-way (Ctrl-C) resumes where it stopped
(``evaluate.py --mode predict ... --skip_existing``). A file that cannot be read
or converted is skipped with a one-line reason; the others are processed (:class:`PredictResult` lists
both; ``exit_code`` is 1 if some were skipped, 2 if none could be segmented).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
from typing import Any, Callable, Sequence

import numpy as np

from unet_jax import image_io
from unet_jax.errors import UserInputError

OVERLAY_MAX = 1024  # px: longest side of an overlay PNG
SUFFIXES = ("_prob.tif", "_mask.tif", "_labels.tif", "_overlay.png")


@dataclasses.dataclass
class PredictResult:
  """What a batch did.

  Attributes:
    written: every file written.
    failed: ``(input file, reason)`` of each skipped file; the reason names
      the file only where its sentence needs it (``X is empty (0 bytes)``).
    notes: ``(input file, note)``: what was dropped or converted on reading.
  """
  written: list[pathlib.Path] = dataclasses.field(default_factory=list)
  failed: list[tuple[pathlib.Path, str]] = dataclasses.field(default_factory=list)
  notes: list[tuple[pathlib.Path, str]] = dataclasses.field(default_factory=list)
  done_before: list[pathlib.Path] = dataclasses.field(default_factory=list)

  @property
  def exit_code(self) -> int:
    """0 if every file was processed, 1 if some were skipped, 2 if all were.

    2 is the CLIs' code for bad input: nothing usable came out of the run.
    """
    if not self.failed:
      return 0
    return 1 if self.written or self.done_before else 2

  def summary(self, num_inputs: int, out_dir: pathlib.Path) -> str:
    ok = num_inputs - len(self.failed)
    lines = [f"{ok} of {num_inputs} files segmented, {len(self.written)} files written to "
             f"{out_dir}"]
    if self.done_before:
      lines[0] += (f" ({len(self.done_before)} of them done by an earlier run, "
                   "left as they were: --skip_existing)")
    if self.failed:
      lines.append(f"{len(self.failed)} file(s) skipped:")
      lines += [f"  {skip_line(path, reason)}" for path, reason in self.failed]
    return "\n".join(lines)


def skip_reason(path: pathlib.Path, error: Exception) -> str:
  """The reason of a skipped file: the message without its leading ``PATH: ``."""
  message = str(error)
  return message[len(f"{path}: "):] if message.startswith(f"{path}: ") else message


def skip_line(path: pathlib.Path, reason: str) -> str:
  """``PATH: reason``, the path once even if the reason names it already."""
  return reason if str(path) in reason else f"{path}: {reason}"


# --------------------------------------------------------------------------
# Inputs and output names.
# --------------------------------------------------------------------------


def input_items(inputs: str | pathlib.Path | Sequence[str | pathlib.Path]
                ) -> list[pathlib.Path]:
  """``--input`` as a list of paths: one file or folder, or a list of them."""
  if isinstance(inputs, (str, pathlib.Path)):
    inputs = [inputs]
  return [pathlib.Path(item) for item in inputs]


def list_inputs(inputs: str | pathlib.Path | Sequence[str | pathlib.Path]) -> list[pathlib.Path]:
  """Image files of a file, a folder (its images, sorted, see ``image_io``) or a list."""
  files = []
  for item in input_items(inputs):
    if item.is_dir():
      found = image_io.list_images(item)
      if not found:
        raise UserInputError(f"no images ({image_io.describe()}) in the folder {item}")
      files += found
    elif item.is_file():
      files.append(item)
    else:
      raise UserInputError(f"input not found: {item}")
  return files


def output_names(path: pathlib.Path, pages: int = 1) -> list[str]:
  """File names written for the input ``path`` (see the module docstring)."""
  names = [path.name + s for s in SUFFIXES[:3]]
  if pages == 1:
    names.append(path.name + "_overlay.png")
  else:
    names += [f"{path.name}_overlay_p{i:03d}.png" for i in range(pages)]
  return names


def check_out_dir(inputs, out_dir: pathlib.Path) -> None:
  """Refuses an output folder equal to or inside an input folder."""
  out = pathlib.Path(out_dir).resolve()
  for item in input_items(inputs):
    if item.is_dir():
      folder = item.resolve()
      if out == folder or folder in out.parents:
        raise UserInputError(
            f"--out {out_dir} is {'the' if out == folder else 'inside the'} input folder "
            f"{item}: the results would be read as inputs next time; choose another --out")


def _existing_outputs(files: Sequence[pathlib.Path], out: pathlib.Path) -> list[pathlib.Path]:
  found = []
  for path in files:
    found += [out / n for n in output_names(path)[:3] if (out / n).exists()]
    found += sorted(out.glob(f"{glob_escape(path.name)}_overlay*.png"))
  return found


def glob_escape(name: str) -> str:
  import glob
  return glob.escape(name)


# --------------------------------------------------------------------------
# Results.
# --------------------------------------------------------------------------


def label_dtype(num_objects: int) -> np.dtype:
  """uint16, or uint32 past 65,535 objects."""
  return np.dtype(np.uint16 if num_objects <= np.iinfo(np.uint16).max else np.uint32)


def stack_pages(pages: Sequence[np.ndarray], image: image_io.ImageFile
                ) -> tuple[np.ndarray, str]:
  """Stacks one result per page with the input's leading axes (module docstring).

  Args:
    pages: one array ``[...]`` per page of ``image`` (e.g. ``[K, H, W]``).
    image: the input, for ``page_axes`` and ``page_shape``.
  Returns:
    ``(array, axes)``: ``pages[0]`` and ``""`` for one page; else
    ``[T, ...]``, ``[Z, ...]`` or ``[T, Z, ...]`` with ``"T"``, ``"Z"`` or
    ``"TZ"`` (ImageJ's order, a ``ZT`` input is transposed), or ``[N, ...]``
    and ``"Z"`` for pages along other axes.
  """
  if len(pages) == 1:
    return pages[0], ""
  array = np.stack(pages)
  axes = image.page_axes
  if axes and set(axes) <= set("TZ") and len(set(axes)) == len(axes) \
      and int(np.prod(image.page_shape)) == len(pages):
    array = array.reshape(tuple(image.page_shape) + array.shape[1:])
    if axes == "ZT":  # ImageJ hyperstacks are T, Z, C, Y, X
      array, axes = np.swapaxes(array, 0, 1), "TZ"
    return array, axes
  return array, "Z"


def mask_and_labels(probs: np.ndarray, params) -> tuple[np.ndarray, np.ndarray]:
  """The mask and the instances of one page's probabilities ``[H, W, K]``.

  Args:
    probs: ``[H, W, K]`` softmax probabilities.
    params: ``unet_jax.instances.InstanceParams`` (its ``threshold`` is p(cell)'s).
  Returns:
    ``(mask, labels)``: uint8 ``[H, W]`` (K = 2: 255 where p(class 1) >
    threshold; K > 2: argmax class id) and int ``[H, W]`` instances of the
    foreground (``instances.from_probability`` of p(class 1), resp. of
    argmax != 0 for K > 2).
  """
  from unet_jax import instances

  if probs.shape[-1] == 2:
    foreground = probs[..., 1]
    mask = np.where(foreground > params.threshold, 255, 0).astype(np.uint8)
  else:
    classes = np.argmax(probs, -1)
    mask = classes.astype(np.uint8)
    foreground = (classes != 0).astype(np.float32)
    params = dataclasses.replace(params, threshold=0.5, method="components")
  return mask, instances.from_probability(foreground, params)


def _grey_for_display(image: np.ndarray) -> np.ndarray:
  """``[H, W, C]`` -> uint8 ``[H, W, 3]``, contrast stretched to the 0.5-99.5 percentiles."""
  x = np.asarray(image, np.float32)
  if x.shape[-1] != 3:
    x = np.repeat(x[..., :1], 3, -1)
  lo, hi = np.percentile(x, (0.5, 99.5))
  return (np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def render_overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """uint8 RGB ``[H, W, 3]``: the image, each object tinted in its own colour and
  outlined, so that merged and split cells are seen at a glance."""
  from skimage.color import label2rgb
  from skimage.segmentation import find_boundaries

  grey = _grey_for_display(image)
  grey = grey if grey.ndim == 2 else grey[..., :3].mean(-1)
  tinted = label2rgb(np.asarray(labels), image=grey.astype(np.float32) / 255.0, bg_label=0,
                     alpha=0.35, image_alpha=1.0)
  rgb = (np.clip(tinted, 0, 1) * 255).astype(np.float32)
  rgb[find_boundaries(labels, mode="inner")] = (255, 40, 40)
  return rgb.astype(np.uint8)


def save_overlays(stem: pathlib.Path, image: np.ndarray, labels: np.ndarray,
                  max_side: int = OVERLAY_MAX) -> list[pathlib.Path]:
  """Writes ``STEM.png`` (whole image, longest side <= ``max_side``) and, for larger
  images, ``STEM_crop.png`` (a ``max_side`` square at full resolution, centred).

  Args:
    stem: output path without ``.png``.
    image: ``[H, W, C]``; labels: ``[H, W]`` instances.
  """
  from PIL import Image

  h, w = labels.shape
  written = []
  scale = min(1.0, max_side / max(h, w))
  if scale < 1.0:
    # Outlines are drawn on nearest-neighbour downscaled labels so that they
    # stay one pixel wide in the downscaled view.
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small_image = np.asarray(Image.fromarray(_grey_for_display(image)).resize(size, Image.BILINEAR))
    yy = (np.arange(size[1]) / scale).astype(int).clip(0, h - 1)
    xx = (np.arange(size[0]) / scale).astype(int).clip(0, w - 1)
    whole = render_overlay(small_image, labels[np.ix_(yy, xx)])
  else:
    whole = render_overlay(image, labels)
  path = stem.with_name(stem.name + ".png")
  Image.fromarray(whole).save(path)
  written.append(path)
  if scale < 1.0:
    y0, x0 = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
    crop = (slice(y0, y0 + max_side), slice(x0, x0 + max_side))
    path = stem.with_name(stem.name + "_crop.png")
    Image.fromarray(render_overlay(image[crop], labels[crop])).save(path)
    written.append(path)
  return written


# --------------------------------------------------------------------------
# The batch.
# --------------------------------------------------------------------------


def input_channels(variables: Any, model: Any = None) -> int:
  """The model's input channels, read from its first kernel (or an exported graph)."""
  if hasattr(model, "in_channels"):  # unet_jax.onnx_predict.OnnxUNet
    return int(model.in_channels)
  try:
    return int(variables["params"]["down0_conv0"]["kernel"].shape[2])
  except (KeyError, TypeError, AttributeError):
    return 1


def check_request(inputs, out_dir: str | pathlib.Path, threshold: float | None = None,
                  overwrite: bool = False, skip_existing: bool = False) -> list[pathlib.Path]:
  """The input files of a prediction, after the checks that need no model.

  ``evaluate.py`` calls it before it loads a checkpoint, so that a wrong
  ``--input`` or ``--out`` is one line at once; :func:`predict_files` again.

  Raises:
    UserInputError: no inputs, ``--out`` inside an input folder, existing
      outputs without ``overwrite`` or ``skip_existing`` (or both of them given),
      a threshold outside [0, 1).
  """
  if threshold is not None and not 0.0 <= threshold < 1.0:
    raise UserInputError(f"--threshold={threshold}: must be in [0, 1)")
  if overwrite and skip_existing:
    raise UserInputError("--overwrite redoes every file, --skip_existing keeps the finished "
                         "ones: choose one")
  files = list_inputs(inputs)
  out = pathlib.Path(out_dir)
  check_out_dir(inputs, out)
  if not (overwrite or skip_existing) and out.is_dir():
    existing = _existing_outputs(files, out)
    if existing:
      raise UserInputError(
          f"{len(existing)} output file(s) already exist in {out} (e.g. {existing[0].name}); "
          "pass --skip_existing to segment only the files without results (e.g. after "
          "Ctrl-C), --overwrite to redo them all, or choose another --out")
  return files


def predict_files(model, variables: Any, inputs, out_dir: str | pathlib.Path, config, *,
                  threshold: float | None = None, tta: bool = False, progress: bool = True,
                  tile_size: int | None = None, overwrite: bool = False,
                  skip_existing: bool = False,
                  echo: Callable[[str], None] | None = None) -> PredictResult:
  """Segments users' images of any size; writes the files of the module docstring.

  Args:
    model, variables: the net.
    inputs: a file, a folder, or a list of files.
    out_dir: output folder (created); must not be an input folder or inside one.
    config: ``eval_tile_size`` / ``tile_size``, ``eval_batch_size``, ``instances``
      (how objects are made from p(cell); ``threshold`` overrides its threshold).
    threshold: p(cell) above which a pixel is cell (2-class models); None =
      ``config.instances.threshold``, the run's own.
    tta: average the 8 flips/rotations.
    progress: a tqdm bar per file, moving by tiles.
    tile_size: overrides the config's tile size.
    overwrite: replace existing outputs (else they are an error, before any work).
    skip_existing: leave the inputs whose ``_labels.tif`` exists (written last, so
      their other files are complete) as they are, and segment the others.
    echo: where per-file notes and skips are reported as they happen (default: none).
  Returns:
    :class:`PredictResult`.
  Raises:
    UserInputError: before any work, for missing inputs, an output folder
      inside an input folder or that cannot be written (a file, read-only),
      existing outputs without ``overwrite`` or a bad threshold. Problems of
      single files are reported in the result instead.
  """
  from unet_jax import instances
  from unet_jax import run_control
  from unet_jax import tiling
  from unet_jax.datasets import normalize

  files = check_request(inputs, out_dir, threshold, overwrite, skip_existing)
  out = run_control.writable_dir(out_dir)
  stage = out / ".partial"
  if stage.exists():  # left by a run that was killed (SIGKILL, SIGTERM) mid-file
    shutil.rmtree(stage)
  channels = input_channels(variables, model)
  params = instances.InstanceParams.from_config(config)
  if threshold is not None:
    params = dataclasses.replace(params, threshold=float(threshold))
  tile = tile_size or config.eval_tile_size or config.tile_size
  # a bad --tile_size would fail every file: say so once
  tiling.check_tile_size(tile, model.depth, getattr(model, "padding", "valid"))
  batch = int(config.eval_batch_size)
  say = echo or (lambda _: None)
  result = PredictResult()
  for folder in input_items(inputs):
    subfolders = sorted(d.name for d in folder.iterdir()
                        if d.is_dir() and not d.name.startswith(".")) if folder.is_dir() else []
    if subfolders:  # list_inputs takes a folder's own images only
      note = (f"{len(subfolders)} subfolder(s) not searched ({', '.join(subfolders[:3])}"
              f"{', ...' if len(subfolders) > 3 else ''}): give them as --input to segment "
              "their images")
      result.notes.append((folder, note))
      say(f"{folder}: {note}")
  for index, path in enumerate(files):
    if skip_existing and (out / output_names(path)[2]).exists():
      result.done_before.append(path)
      continue
    try:
      image, pages = image_io.model_pages(path, channels)
    except UserInputError as e:
      reason = skip_reason(path, e)
      result.failed.append((path, reason))
      say(f"skipped {skip_line(path, reason)}")
      continue
    for note in image.notes:
      result.notes.append((path, note))
      say(f"{path}: {note}")
    bar = None
    if progress:
      from tqdm.auto import tqdm
      bar = tqdm(total=0, desc=f"[{index + 1}/{len(files)}] {path.name}", unit="tile",
                 disable=None)  # None: off unless a terminal (no bar lines in log files)

    def on_tiles(done: int, total: int) -> None:
      if bar is not None:  # tiles of the current page (all TTA views)
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
      probs, masks, labels = [], [], []
      for i, page in enumerate(pages):
        if bar is not None and len(pages) > 1:
          bar.set_description(f"[{index + 1}/{len(files)}] {path.name} page {i + 1}/{len(pages)}")
        # on_tiles selects the host tiling loop (tiling.predict_tiled, method="auto"):
        # users' images come in any size, and it compiles once per tile size where
        # the one-program device path compiles once per image shape.
        p = tiling.predict_tiled(model, variables, normalize(page), tile_size=tile,
                                 batch_size=batch, tta=tta, on_tiles=on_tiles)
        m, lab = mask_and_labels(p, params)
        probs.append(np.moveaxis(p, -1, 0).astype(np.float32))
        masks.append(m)
        labels.append(lab)
      names = output_names(path, len(pages))
      n_objects = max(int(lab.max()) for lab in labels)
      prob, lead = stack_pages(probs, image)  # lead: "", "T", "Z" or "TZ"
      calibration = dict(z_spacing=image.z_spacing, frame_interval=image.frame_interval)
      staged = [
          image_io.write_tiff(stage / names[0], prob, image.pixel_size, lead + "CYX",
                              **calibration),
          image_io.write_tiff(stage / names[1], stack_pages(masks, image)[0], image.pixel_size,
                              lead + "YX", **calibration)]
      for name, page, lab in zip(names[3:], pages, labels):
        staged += save_overlays(stage / name[:-len(".png")], page, lab)
      staged.append(image_io.write_tiff(  # last: it marks the input as done
          stage / names[2], stack_pages(labels, image)[0].astype(label_dtype(n_objects)),
          image.pixel_size, lead + "YX", **calibration))
      result.written += [_move_into(f, out) for f in staged]
    except UserInputError as e:
      reason = skip_reason(path, e)
      result.failed.append((path, reason))
      say(f"skipped {skip_line(path, reason)}")
    except OSError as e:  # e.g. disk full while writing
      result.failed.append((path, f"cannot write its results ({e})"))
      say(f"skipped {path}: cannot write its results ({e})")
    finally:
      if bar is not None:
        bar.close()
      if stage.is_dir():  # empty, or a failed or interrupted file's leftovers
        shutil.rmtree(stage)
  return result


def _move_into(path: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
  """``path`` moved into ``folder`` (one atomic rename: same file system)."""
  os.replace(path, folder / path.name)
  return folder / path.name
