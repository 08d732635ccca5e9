"""Dataset readers, splits, normalisation and the one table of dataset specs.

``load_split(config, split)`` returns a :class:`SegmentationData` for
``split`` in {"train", "val", "test"}:

- ``images``: float32 ``[H, W, C]``, normalised (see below),
- ``labels``: int32 ``[H, W]`` class ids (values outside [0, K) = ignore),
- ``instances``: int32 ``[H, W]``, 0 = background, k > 0 = cell k (the input of
  the border term of the weight map, paper Eq. 2).

Datasets (``config.dataset``):

- ``synthetic``: generated in-process (:mod:`unet_jax.synthetic`) from
  ``config.seed`` and ``config.synthetic.{num_images,size,cells}``; label
  1 = cell interior, 0 = membrane, like ISBI. Needs no data folder.
- ``isbi2012``: ``train-volume.tif``, ``train-labels.tif`` and
  ``test-volume.tif`` (multi-page TIFF) under ``DATA/isbi2012/`` or ``DATA/``.
  Label 1 = cell interior (255 in the file), 0 = membrane (0); instances are the
  4-connected components of the cell interior. "test" = ``test-volume.tif``,
  images only.
- ``dic_hela``, ``phc_u373``: Cell Tracking Challenge layout under
  ``DATA/ctc/<NAME>/``, ``DATA/<NAME>/`` or ``DATA/`` itself, NAME =
  DIC-C2DH-HeLa or PhC-C2DH-U373: frames ``01/tNNN.tif``, instance masks
  ``01_ST/SEG/man_segNNN.tif`` (silver truth, all frames; ``ctc_truth = "st"``)
  or ``01_GT/SEG/man_segNNN.tif`` (gold truth, a few frames; ``ctc_truth =
  "gt"``: only frames that have a mask are used, and the split indices count
  those frames). Several sequences: ``ctc_sequences = "01,02"`` (frames are
  concatenated in that order). Label 1 = cell (mask > 0), 0 = background.
  8- or 16-bit, LZW-compressed TIFFs are fine (tifffile + imagecodecs).
- ``folder``: your own data. ``DATA/images/NAME.EXT`` with a mask of the same
  stem ``DATA/masks/NAME.EXT`` (EXT: tif, tiff, png, jpg, jpeg, bmp, gif; one
  2-D image per file), sorted by name (the split indices count in that
  order); optional ``DATA/test/*`` for the "test" split. Images are read by
  :mod:`unet_jax.image_io` (grey, RGB(A), palette, any bit depth; alpha dropped;
  mixed grey and RGB need ``config.in_channels``). What a mask holds is declared,
  not guessed, by ``config.mask_kind``:

  * ``"binary"`` (default): 0 = background and one other value (1, 255, ...) =
    cell; instances = 4-connected components, so keep a background line
    between touching cells. Label 1 = cell, 0 = background.
  * ``"instances"``: 0 = background, k > 0 = cell k (touching cells allowed;
    they get a 1-px background gap in the labels, paper Fig. 3). Label 1 = cell.
  * ``"classes"``: class ids 0..K-1 with K = ``config.num_classes`` (0 =
    background); instances for the border term of Eq. 2 are the 4-connected
    components of each class.

  A mask that does not fit its kind is an error naming the file and the
  values found. Masks are read without resolving palettes (the indices are
  the labels).

Every dataset is one :class:`DatasetSpec` in :data:`SPECS` (reader, default
held-out split, evaluation protocol, primary metric, download source); every
part of the library looks a dataset up there with :func:`spec`, so a new
dataset is one more entry.

Splits: ``config.train_indices`` / ``val_indices`` / ``heldout_indices`` such as
"0-24", "25-29" or "0,3,5-7" (inclusive ranges); "" = none for "val" and
"heldout", and for "train" every image not in those two; splits that share an
image are refused (:func:`check_splits`). The data folder is ``config.data_dir``,
else ``$UNET_JAX_DATA``.

Normalisation: every image is normalised on its own, per channel, to zero mean
and unit standard deviation. Per-image statistics need no dataset-wide pass,
work the same for a user's single image at inference time, and remove the
frame-to-frame brightness drift of the microscopy sequences (DIC-HeLa ranges
29..255, other CTC sets are 16-bit) -- at the cost of a slight sensitivity to
image content, which is small for 512x512 images full of cells.
:func:`normalize` is public so that inference code applies the same.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import types
from typing import Callable, Mapping, Sequence

import numpy as np

from unet_jax import image_io, synthetic
from unet_jax.errors import UserInputError
from unet_jax.weight_maps import instances_from_binary, separate_touching

ISBI_FILES = {"train": ("train-volume.tif", "train-labels.tif"), "test": ("test-volume.tif", None)}
MASK_KINDS = ("binary", "instances", "classes")


@dataclasses.dataclass
class SegmentationData:
  """One split of a dataset.

  Attributes:
    images: float32 ``[H, W, C]`` normalised images.
    labels: int32 ``[H, W]`` class ids, or None (ISBI test set).
    instances: int32 ``[H, W]`` instance ids (0 = background), or None.
    names: one name per image (file or slice), for reports and the cache key.
    num_channels: C.
    dataset: ``config.dataset``.
  """
  images: list[np.ndarray]
  labels: list[np.ndarray] | None
  instances: list[np.ndarray] | None
  names: list[str]
  num_channels: int
  dataset: str

  def __len__(self) -> int:
    return len(self.images)


# --------------------------------------------------------------------------
# Small helpers: indices, data folder, reading files, normalisation.
# --------------------------------------------------------------------------


def parse_indices(spec: str, n: int, *, empty_means_all: bool, field: str = "indices"
                  ) -> list[int]:
  """Parses "0-24", "25-29", "0,3,5-7" (inclusive ranges) into sorted indices.

  Args:
    spec: the string ("" = all or nothing, see ``empty_means_all``).
    n: number of available images; every index must be < n.
    empty_means_all: what "" means.
    field: config field name, for error messages.
  Returns:
    Sorted unique indices.
  Raises:
    UserInputError: on bad syntax or an index out of range.
  """
  ranges = _index_ranges(spec, field)
  if not ranges:
    return list(range(n)) if empty_means_all else []
  top = max(hi for _, hi in ranges)
  if top >= n:
    raise UserInputError(
        f"config.{field} = {spec!r} asks for index {top}, but the dataset has only "
        f"{n} images (indices 0-{n - 1})")
  return sorted({i for lo, hi in ranges for i in range(lo, hi + 1)})


def _index_ranges(spec: str, field: str) -> list[tuple[int, int]]:
  """``parse_indices``'s inclusive ``(lo, hi)`` ranges of ``spec`` ("" = none)."""
  spec = str(spec).strip()
  if not spec:
    return []
  ranges = []
  for part in spec.split(","):
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
    if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
      raise UserInputError(
          f"config.{field} = {spec!r}: expected indices like '0-24' or '0,3,5-7' "
          f"(inclusive ranges, comma-separated)")
    ranges.append((int(m.group(1)), int(m.group(2) or m.group(1))))
  return ranges


SPLITS = ("train", "val", "heldout")


def split_indices(config, n: int, split: str) -> list[int]:
  """The indices of ``split`` ("train", "val" or "heldout") in a dataset of ``n`` images.

  ``config.val_indices`` / ``heldout_indices`` of "" mean none; a
  ``train_indices`` of "" means every image not in the other two (so that
  setting only a validation split never trains on it).

  Raises:
    UserInputError: bad syntax, an index >= ``n`` (in the split asked for, and
      for an empty ``train_indices`` in the other two), or two splits sharing an
      image (:func:`check_splits`).
  """
  check_splits(config)
  parse = lambda name: parse_indices(config[f"{name}_indices"], n, empty_means_all=False,
                                     field=f"{name}_indices")
  if split == "train" and not str(config.train_indices).strip():
    rest = set(parse("val")) | set(parse("heldout"))
    train = [i for i in range(n) if i not in rest]
    if not train:
      raise UserInputError(
          f"no images left to train on: config.val_indices = {config.val_indices!r} and "
          f"config.heldout_indices = {config.heldout_indices!r} take all {n}; leave some "
          "out of them or set config.train_indices")
    return train
  return parse(split)


def check_splits(config) -> None:
  """Refuses train / val / heldout index sets that share an image.

  Validation chooses the checkpoint and the held-out split is reported, never
  used to choose (docs/conventions.md, Data splits): an image in two of them
  would make the validation or the held-out scores those of images seen before.
  Checked from the index strings alone, so before any data is read.

  Raises:
    UserInputError: naming the two fields and the shared indices.
  """
  ranges = {split: _index_ranges(config.get(f"{split}_indices", ""), f"{split}_indices")
            for split in SPLITS}
  for a, b in (("train", "val"), ("train", "heldout"), ("val", "heldout")):
    shared = sorted({i for lo_a, hi_a in ranges[a] for lo_b, hi_b in ranges[b]
                     for i in range(max(lo_a, lo_b), min(hi_a, hi_b, max(lo_a, lo_b) + 5) + 1)})
    if shared:
      listed = ", ".join(map(str, shared[:5])) + (", ..." if len(shared) > 5 else "")
      raise UserInputError(
          f"config.{a}_indices = {config[f'{a}_indices']!r} and config.{b}_indices = "
          f"{config[f'{b}_indices']!r} share image(s) {listed}: {_WHY_DISJOINT[a, b]}; "
          f"make the splits disjoint (docs/conventions.md, Data splits)")


_WHY_DISJOINT = {
    ("train", "val"): "validation images must be ones the training never sees",
    ("train", "heldout"): "held-out images must be ones the training never sees",
    ("val", "heldout"): "held-out images must not be the ones that choose the checkpoint",
}


def download_hint(dataset: str, dest: pathlib.Path | str) -> str:
  """The command that fetches ``dataset`` into ``dest``."""
  if dataset not in SPECS or SPECS[dataset].download is None:
    return "put your images under DATA/images and masks under DATA/masks (see unet_jax/datasets.py)"
  return f"get it with: python -m unet_jax.data_tool download --dataset {dataset} --dest {dest}"


def data_root(config) -> pathlib.Path:
  """``config.data_dir``, else ``$UNET_JAX_DATA``; must be an existing folder."""
  raw = str(config.data_dir or os.environ.get("UNET_JAX_DATA", ""))
  if not raw:
    raise UserInputError(
        f"no data folder for dataset {config.dataset!r}: set --config.data_dir=DIR or the "
        f"environment variable UNET_JAX_DATA; {download_hint(config.dataset, 'DIR')}")
  root = pathlib.Path(raw).expanduser()
  if not root.is_dir() or not any(root.iterdir()):
    raise UserInputError(
        f"data folder {root} is missing or empty; {download_hint(config.dataset, root)}")
  return root


def read_image_file(path: pathlib.Path) -> np.ndarray:
  """Reads a TIFF (all pages) or PNG file into an array.

  Raises:
    UserInputError: naming the file if it is missing, truncated, unreadable or
      holds NaN/Inf pixels (:func:`unet_jax.image_io.check_finite`).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserInputError(f"file not found: {path}")
  try:
    if path.suffix.lower() in (".tif", ".tiff"):
      import tifffile  # pylint: disable=g-import-not-at-top
      array = np.asarray(tifffile.imread(path))
    else:
      from PIL import Image  # pylint: disable=g-import-not-at-top
      with Image.open(path) as im:
        array = np.asarray(im)
  except Exception as e:  # pylint: disable=broad-except  # any decoder error = bad file
    raise UserInputError(
        f"cannot read {path} (truncated or corrupted file? {type(e).__name__}: {e}); "
        f"download it again") from e
  image_io.check_finite(path, array)
  return array


def normalize(image: np.ndarray) -> np.ndarray:
  """Per-image, per-channel zero mean and unit std (see the module docstring).

  Args:
    image: ``[H, W]`` or ``[H, W, C]``, any numeric dtype; finite (one NaN/Inf
      pixel makes every output NaN: the readers refuse such files).
  Returns:
    float32 ``[H, W, C]``.
  """
  x = np.asarray(image, np.float64)
  x = x[..., None] if x.ndim == 2 else x
  mean = x.mean(axis=(0, 1), keepdims=True)
  std = x.std(axis=(0, 1), keepdims=True)
  return ((x - mean) / np.maximum(std, 1e-6)).astype(np.float32)


def _check_pairs(images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                 names: Sequence[str]) -> None:
  """Same count and same H, W for images and masks."""
  if len(images) != len(masks):
    raise UserInputError(
        f"{len(images)} images but {len(masks)} label images ({names[0] if names else ''}...): "
        f"every image needs exactly one label image")
  for img, mask, name in zip(images, masks, names):
    if img.shape[:2] != mask.shape[:2]:
      raise UserInputError(f"{name}: image is {img.shape[:2]} but its label is "
                           f"{mask.shape[:2]}; they must have the same size")


def _check_integer_mask(mask: np.ndarray, name: str) -> None:
  if not np.issubdtype(mask.dtype, np.integer) or mask.ndim != 2 or mask.min() < 0:
    raise UserInputError(
        f"{name}: expected a 2-D mask of non-negative integers (0 = background, k > 0 = "
        f"cell k), got dtype {mask.dtype}, shape {mask.shape}, min {mask.min()}")


# --------------------------------------------------------------------------
# Readers: each returns (raw images, instance maps or None, labels or None, names).
# CTC and folder readers return file paths instead of arrays, so that only the
# selected split is read (_materialise).
# --------------------------------------------------------------------------

Raw = tuple[list, list | None, list | None, list[str]]


def _read_synthetic(config, split: str) -> Raw:
  del split
  s = config.synthetic
  images, instances = synthetic.generate(s.num_images, s.size, s.cells, config.seed)
  labels = [(inst > 0).astype(np.int32) for inst in instances]
  return images, instances, labels, [f"synthetic:{i:03d}" for i in range(len(images))]


def _find_dir(root: pathlib.Path, candidates: Sequence[str], marker: str) -> pathlib.Path | None:
  """First of ``root/c`` that contains ``marker``."""
  for c in candidates:
    if (root / c / marker).exists():
      return root / c
  return None


def _read_isbi(config, split: str) -> Raw:
  root = data_root(config)
  volume, label_file = ISBI_FILES["test" if split == "test" else "train"]
  folder = _find_dir(root, ("isbi2012", "."), volume)
  if folder is None:
    raise UserInputError(f"{volume} not found in {root} or {root / 'isbi2012'}; "
                         f"{download_hint('isbi2012', root)}")
  stack = read_image_file(folder / volume)
  stack = stack[None] if stack.ndim == 2 else stack
  names = [f"{volume}:{i:02d}" for i in range(len(stack))]
  if label_file is None:
    return list(stack), None, None, names
  raw = read_image_file(folder / label_file)
  raw = raw[None] if raw.ndim == 2 else raw
  _check_pairs(stack, raw, [str(folder / volume)] * len(stack))
  bad = np.setdiff1d(np.unique(raw), [0, 255])
  if bad.size:
    raise UserInputError(
        f"{folder / label_file}: ISBI labels must be 0 (membrane) or 255 (cell interior), "
        f"found also {bad[:5].tolist()}")
  labels = [(lab == 255).astype(np.int32) for lab in raw]
  return list(stack), [instances_from_binary(lab) for lab in labels], labels, names


def _frame_number(path: pathlib.Path) -> int:
  return int(re.findall(r"\d+", path.stem)[-1])


def _read_ctc(name: str, config, split: str) -> Raw:
  """Reader of the Cell Tracking Challenge dataset ``name`` (e.g. DIC-C2DH-HeLa)."""
  if split == "test":
    raise UserInputError(f"dataset {config.dataset!r} has no 'test' split (only ISBI 2012 "
                         f"has one); use 'val'")
  root = data_root(config)
  truth = str(config.ctc_truth).upper()
  images, masks, names = [], [], []
  for seq in str(config.ctc_sequences).split(","):
    seq = seq.strip()
    folder = _find_dir(root, (f"ctc/{name}", name, "."), seq)
    if folder is None:
      raise UserInputError(f"sequence folder {seq}/ of {name} not found under {root}; "
                           f"{download_hint(config.dataset, root)}")
    seg = folder / f"{seq}_{truth}" / "SEG"
    mask_files = sorted(seg.glob("man_seg*.tif"))
    if not mask_files:
      other = "GT" if truth == "ST" else "ST"
      hint = (f" ({seq}_{other}/SEG exists: set --config.ctc_truth={other.lower()})"
              if (folder / f"{seq}_{other}" / "SEG").is_dir() else "")
      raise UserInputError(f"no masks man_segNNN.tif in {seg}{hint}")
    frames = {_frame_number(p): p for p in sorted((folder / seq).glob("t*.tif"))}
    if truth == "ST" and len(frames) != len(mask_files):
      raise UserInputError(
          f"{folder / seq} has {len(frames)} frames but {seg} has {len(mask_files)} masks: "
          f"silver truth needs one mask per frame (download again?)")
    for mp in mask_files:
      frame = frames.get(_frame_number(mp))
      if frame is None:
        raise UserInputError(f"{mp} has no matching frame t{_frame_number(mp):03d}.tif in "
                             f"{folder / seq}")
      images.append(frame)
      masks.append(mp)
      names.append(f"{seq}/{frame.stem}")
  return images, masks, None, names


def _load_ctc_files(config, images: list[pathlib.Path], masks: list[pathlib.Path],
                    names: list[str]) -> tuple[list[np.ndarray], list[np.ndarray], None]:
  """Reads the selected CTC frames and masks (reading is deferred to after the split)."""
  del config, names
  imgs = [read_image_file(p) for p in images]
  insts = [read_image_file(p) for p in masks]
  for m, p in zip(insts, masks):
    _check_integer_mask(m, str(p))
  _check_pairs(imgs, insts, [str(p) for p in images])
  return imgs, [m.astype(np.int32) for m in insts], None


def _folder_files(folder: pathlib.Path) -> list[pathlib.Path]:
  files = image_io.list_images(folder) if folder.is_dir() else []
  stems: dict[str, pathlib.Path] = {}
  for p in files:
    if p.stem in stems:
      raise UserInputError(f"{stems[p.stem]} and {p.name} have the same name: images and masks "
                           "are paired by name, so rename one of them")
    stems[p.stem] = p
  return files


def _read_folder(config, split: str) -> Raw:
  root = data_root(config)
  if split == "test":
    files = _folder_files(root / "test")
    if not files:
      raise UserInputError(f"no images ({image_io.describe()}) in {root / 'test'}")
    return files, None, None, [p.stem for p in files]
  images = _folder_files(root / "images")
  if not images:
    raise UserInputError(f"no images ({image_io.describe()}) in {root / 'images'}; "
                         f"{download_hint('folder', root)}")
  by_stem = {p.stem: p for p in _folder_files(root / "masks")}
  missing = [p.name for p in images if p.stem not in by_stem]
  if missing or len(by_stem) != len(images):
    raise UserInputError(
        f"{len(images)} images in {root / 'images'} but {len(by_stem)} masks in "
        f"{root / 'masks'}; every image needs a mask with the same name"
        + (f" (no mask for {missing[:3]})" if missing else ""))
  return images, [by_stem[p.stem] for p in images], None, [p.stem for p in images]


def _single_page(image: image_io.ImageFile) -> np.ndarray:
  if len(image.pages) != 1:
    raise UserInputError(
        f"{image.path}: {len(image.pages)} pages (axes {image.axes}); the folder dataset takes "
        "one 2-D image per file: save the pages as separate files")
  return image.pages[0]


def _folder_images(paths: Sequence[pathlib.Path], in_channels: int) -> list[np.ndarray]:
  """Reads users' images and converts them to one channel count (``image_io`` rule)."""
  import logging  # pylint: disable=g-import-not-at-top
  read = [image_io.read_image(p) for p in paths]
  counts = {im.channels for im in read}
  channels = int(in_channels or 0)
  if not channels:
    if len(counts) > 1:
      raise UserInputError(
          f"the images have different channel counts {sorted(counts)} (e.g. "
          f"{read[0].path.name}: {read[0].channels}); set --config.in_channels=1 (RGB is "
          "converted to grey) or =3 (grey is repeated)")
    channels = counts.pop()
  out = []
  for im in read:
    page = image_io.to_channels(_single_page(im), channels, im.rgb, str(im.path), im.notes)
    for note in im.notes:
      logging.getLogger(__name__).info("%s: %s", im.path, note)
    out.append(page)
  return out


def folder_mask(path: pathlib.Path, kind: str, num_classes: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """Reads an own-data mask of the declared ``kind`` (see the module docstring).

  Returns:
    ``(instances, labels)``: int32 ``[H, W]`` each.
  Raises:
    UserInputError: naming the file and the values found if the mask does not
      fit ``kind``.
  """
  mask = _single_page(image_io.read_image(path, resolve_palette=False))
  if mask.shape[-1] != 1:
    raise UserInputError(f"{path}: a mask must have one channel, this one has {mask.shape[-1]} "
                         "(save it as a grey or palette image)")
  mask = mask[..., 0]
  if np.issubdtype(mask.dtype, np.floating):
    if not np.all(np.isfinite(mask)) or np.any(mask != np.round(mask)):
      raise UserInputError(f"{path}: a mask must hold integers, found {mask.dtype} values such "
                           f"as {mask[mask != np.round(mask)][:3].tolist()}")
    mask = mask.astype(np.int64)
  if mask.min() < 0:
    raise UserInputError(f"{path}: a mask must hold non-negative integers, found {mask.min()}")
  values = np.unique(mask)
  shown = values[:8].tolist() + (["..."] if len(values) > 8 else [])
  if kind == "binary":
    if len(values[values > 0]) > 1:
      raise UserInputError(
          f"{path}: mask_kind='binary' but the mask holds {len(values)} values {shown}: for "
          "instance maps (0 = background, k = cell k) set --config.mask_kind=instances; for "
          f"class ids set --config.mask_kind=classes --config.num_classes={int(values.max()) + 1}")
    instances = instances_from_binary(mask > 0)
    return instances, (instances > 0).astype(np.int32)
  if kind == "instances":
    instances = mask.astype(np.int32)
    # Touching instances get a background gap (paper Fig. 3); `instances` keep
    # the full masks, the ground truth of the SEG score.
    return instances, (separate_touching(instances) > 0).astype(np.int32)
  if kind == "classes":
    bad = values[values >= num_classes]
    if bad.size:
      raise UserInputError(
          f"{path}: mask_kind='classes' with num_classes={num_classes} but the mask holds "
          f"{bad[:8].tolist()} (values found: {shown}); class ids must be 0..{num_classes - 1}: "
          f"set --config.num_classes={int(values.max()) + 1} or fix the mask")
    labels = mask.astype(np.int32)
    instances = np.zeros(mask.shape, np.int32)
    for k in range(1, num_classes):  # objects of each class, for Eq. 2's border term
      comp = instances_from_binary(labels == k)
      instances = np.where(comp > 0, comp + instances.max(), instances)
    return instances, labels
  raise UserInputError(f"--config.mask_kind={kind!r}: choose one of {', '.join(MASK_KINDS)}")


def _load_folder_files(config, images: list[pathlib.Path], masks: list[pathlib.Path] | None,
                       names: list[str]) -> tuple[list[np.ndarray], list | None, list | None]:
  """Reads the selected images and masks of a ``folder`` dataset (masks as
  ``config.mask_kind`` declares them: binary, instances or classes)."""
  imgs = _folder_images(images, config.in_channels)
  if masks is None:
    return imgs, None, None
  instances, labels = map(list, zip(*[folder_mask(p, config.mask_kind, config.num_classes)
                                       for p in masks]))
  _check_pairs(imgs, instances, names)
  return imgs, instances, labels


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Everything the library needs to know about one dataset.

  Attributes:
    name: the ``config.dataset`` value.
    reader: ``(config, split) -> (images, instances, labels, names)``.
    read_files: None if the reader returns arrays; else the reader returns
      file paths and ``read_files(config, images, instances, names) ->
      (images, instances, labels or None)`` reads those of the selected split
      only.
    train_indices, val_indices, heldout_indices: the default splits
      (docs/conventions.md; a config may take them or set its own, as the
      ISBI configs do): training, validation (picks the checkpoint) and the
      reported held-out block ("" = none), which never chooses anything.
    protocol: "isbi" (label 1 = cell interior, 0 = membrane; scored with the
      ISBI 2012 metrics over thresholds) or "instance" (cell vs background;
      scored with the Cell Tracking Challenge SEG of predicted instances).
    primary_metric: the held-out score that picks the best checkpoint.
    download: key of :data:`unet_jax.download.SOURCES`, or None.
  """
  name: str
  reader: Callable[..., tuple]
  read_files: Callable[..., tuple] | None
  train_indices: str
  val_indices: str
  heldout_indices: str
  protocol: str
  primary_metric: str
  download: str | None


# Read-only: the table is shared by every config and run of the process.
SPECS: Mapping[str, DatasetSpec] = types.MappingProxyType({s.name: s for s in (
    DatasetSpec("synthetic", _read_synthetic, None, "0-5", "6-7", "8-9", "isbi", "vrand", None),
    # Validation 20-24 is carved from the training slices; 25-29 are reported
    # and never choose anything (the held-out protocol, docs/conventions.md).
    DatasetSpec("isbi2012", _read_isbi, None, "0-19", "20-24", "25-29", "isbi", "vrand",
                "isbi2012"),
    DatasetSpec("dic_hela", functools.partial(_read_ctc, "DIC-C2DH-HeLa"), _load_ctc_files,
                "0-49", "50-59", "60-83", "instance", "seg", "DIC-C2DH-HeLa"),
    DatasetSpec("phc_u373", functools.partial(_read_ctc, "PhC-C2DH-U373"), _load_ctc_files,
                "", "", "", "instance", "seg", "PhC-C2DH-U373"),
    DatasetSpec("folder", _read_folder, _load_folder_files, "", "", "", "instance", "seg", None),
)})


def spec(dataset: str) -> DatasetSpec:
  """The :class:`DatasetSpec` of ``config.dataset``.

  Raises:
    UserInputError: for an unknown name, listing the known ones.
  """
  if dataset not in SPECS:
    raise UserInputError(f"unknown dataset {dataset!r}; choose one of {', '.join(SPECS)}")
  return SPECS[dataset]


def _materialise(config, images: list, instances: list | None, labels: list | None,
                 names: list[str]) -> tuple[list[np.ndarray], list | None, list | None]:
  """Reads deferred files (CTC, folder) and derives labels from instances."""
  read_files = spec(config.dataset).read_files
  if read_files is not None and images:
    images, instances, read_labels = read_files(config, images, instances, names)
    labels = read_labels if read_labels is not None else labels
  if instances is not None and labels is None:
    # Touching instances get a background gap (paper Fig. 3); `instances` keep
    # the full masks, the ground truth of the SEG score.
    labels = [(separate_touching(inst) > 0).astype(np.int32) for inst in instances]
  return images, instances, labels


def load_split(config, split: str) -> SegmentationData:
  """Loads one split of ``config.dataset``.

  Args:
    config: needs ``dataset``, ``data_dir``, ``train_indices``, ``val_indices``,
      ``seed``, ``synthetic.*`` and, for CTC data, ``ctc_sequences``/``ctc_truth``.
    split: "train", "val" (picks the checkpoint), "heldout" (reported, never
      used to select; ``heldout_indices``) or "test" (ISBI ``test-volume.tif``
      or the ``test/`` folder of a ``folder`` dataset: images only).
  Returns:
    :class:`SegmentationData`; ``labels``/``instances`` are None for "test".
  Raises:
    UserInputError: unknown dataset or split, missing data, unreadable files,
      mismatched counts/sizes or unexpected label values.
  """
  reader = spec(config.dataset).reader
  if split not in ("train", "val", "heldout", "test"):
    raise UserInputError(f"unknown split {split!r}; choose train, val, heldout or test")
  images, instances, labels, names = reader(config, split)
  if split == "test":
    keep = list(range(len(images)))
  else:
    keep = split_indices(config, len(images), split)
  pick = lambda xs: None if xs is None else [xs[i] for i in keep]
  names = pick(names)
  images, instances, labels = _materialise(config, pick(images), pick(instances),
                                           pick(labels), names)
  images = [normalize(img) for img in images]
  channels = {img.shape[-1] for img in images}
  if len(channels) > 1:
    raise UserInputError(f"{config.dataset}: images have different channel counts {channels}")
  return SegmentationData(images=images, labels=labels, instances=instances, names=names,
                          num_channels=channels.pop() if channels else 1,
                          dataset=config.dataset)
