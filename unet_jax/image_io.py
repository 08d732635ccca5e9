"""Reading users' microscopy images and writing results with their pixel size.

One reader for every place that takes a user's file (``evaluate.py --mode
predict`` and the ``folder`` dataset). Decoding is left to tifffile (TIFF, OME-
and ImageJ-TIFF) and Pillow (PNG, JPEG, BMP, GIF, ...); this module only decides
what the decoded axes mean and how to reach the model's channels.

**Pages vs channels.** A TIFF is read as its first series; the series' axes
(tifffile reads them from the ImageJ / OME / tifffile metadata) say which axes
are channels: ``C`` (channel) and ``S`` (samples per pixel, e.g. RGB) are
channels, ``Y`` / ``X`` the plane, every other axis (``Z``, ``T``, ``I``, ``Q``
...) counts pages. Nothing is guessed from the shape; the one exception is a
refusal: a TIFF without axes metadata whose pages are at most 4 px wide is
almost surely an ``[H, W, C]`` array written without metadata, and reading it
as H images of W x C pixels would be wrong, so it is an error that says how to
rewrite the file.

**The conversion rule** (:func:`to_channels`), applied per page ``[H, W, C]``:

1. alpha is dropped (RGBA -> RGB, grey+alpha -> grey; TIFF extra samples
   marked as alpha, Pillow modes ``LA``/``PA``/``RGBA``);
2. palette images are resolved through their colour map (a palette whose
   colours are all grey becomes grey, else RGB);
3. to a 1-channel model an RGB image is given as its luminance,
   ``0.2125 R + 0.7154 G + 0.0721 B`` (ITU-R BT.709, as ``skimage.color.rgb2gray``);
   to a 3-channel model a grey image is repeated three times;
   any other channel mismatch is an error naming the file.

Every step that drops or changes something adds one line to the file's
``notes`` (printed once per file by the callers). Integer and float pixel types
of any depth (8/16/32-bit, float16/32/64) are kept as they are and cast to
float32 by the normalisation (``datasets.normalize``).

**Pixel size.** Read from OME ``PhysicalSizeX/Y``, ImageJ (``XResolution`` in
pixels per ``unit``), TIFF ``XResolution`` with ``ResolutionUnit`` inch or
centimetre, or a PNG/JPEG's dpi; kept in micrometres and written into every
output TIFF by :func:`write_tiff` (ImageJ metadata where ImageJ can hold the
dtype, standard TIFF resolution tags in px/cm otherwise).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import warnings
from typing import Sequence

import numpy as np

from unet_jax.errors import UserInputError

TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PIL_SUFFIXES
LUMINANCE = np.array([0.2125, 0.7154, 0.0721], np.float32)  # ITU-R BT.709
_UM_PER = {"um": 1.0, "µm": 1.0, "\\u00B5m": 1.0, "micron": 1.0, "microns": 1.0,
           "micrometer": 1.0, "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3,
           "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6,
           "meter": 1e6, "inch": 25400.0}


@dataclasses.dataclass
class ImageFile:
  """A decoded file.

  Attributes:
    path: the file.
    pages: one array ``[H, W, C]`` per page (native dtype), alpha dropped and
      palettes resolved (unless read with ``resolve_palette=False``).
    rgb: True if the channels are R, G, B (luminance applies), False if they
      are grey or independent channels (e.g. fluorescence).
    pixel_size: ``(y, x)`` in micrometres, or None if the file does not say.
    axes: the axes as read (e.g. ``"ZCYX"``, ``"YXS"``; ``"YX"`` for Pillow files).
    notes: what was dropped or converted, one line each.
  """
  path: pathlib.Path
  pages: list[np.ndarray]
  rgb: bool
  pixel_size: tuple[float, float] | None
  axes: str
  notes: list[str] = dataclasses.field(default_factory=list)

  @property
  def channels(self) -> int:
    return int(self.pages[0].shape[-1])


# --------------------------------------------------------------------------
# TIFF.
# --------------------------------------------------------------------------


def _tiff_pixel_size(tif, page) -> tuple[float, float] | None:
  """Pixel size in um from OME, ImageJ or the resolution tags; None if not given."""
  if tif.is_ome and tif.ome_metadata:
    xml = tif.ome_metadata
    sx = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', xml)
    sy = re.search(r'PhysicalSizeY="([0-9.eE+-]+)"', xml)
    ux = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
    if sx:
      scale = _UM_PER.get(ux.group(1), 1.0) if ux else 1.0  # OME default unit: um
      x = float(sx.group(1)) * scale
      y = float(sy.group(1)) * scale if sy else x
      return (y, x)
  tags = page.tags
  if "XResolution" not in tags:
    return None
  num, den = tags["XResolution"].value
  ynum, yden = tags["YResolution"].value if "YResolution" in tags else (num, den)
  if not num or not ynum:
    return None
  per_x, per_y = den / num, yden / ynum  # units per pixel
  unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
  if tif.is_imagej and tif.imagej_metadata and tif.imagej_metadata.get("unit"):
    scale = _UM_PER.get(str(tif.imagej_metadata["unit"]).lower())
    return None if scale is None else (per_y * scale, per_x * scale)
  if unit == 2 and (num, den) != (1, 1):  # inch; 1 dpi is tifffile's "not set" default
    return (per_y * 25400.0, per_x * 25400.0)
  if unit == 3:  # centimetre
    return (per_y * 1e4, per_x * 1e4)
  return None


def _read_tiff(path: pathlib.Path, resolve_palette: bool) -> ImageFile:
  import tifffile

  notes = []
  with tifffile.TiffFile(path) as tif:
    if not tif.series:
      raise UserInputError(f"{path}: the TIFF holds no image")
    series = tif.series[0]
    if len(tif.series) > 1:
      notes.append(f"{len(tif.series)} image series in the file; read the first "
                   f"({series.axes} {series.shape})")
    page = series.keyframe
    data = series.asarray()
    axes = series.axes
    pixel_size = _tiff_pixel_size(tif, page)
    photometric = int(page.photometric)
    extrasamples = tuple(int(e) for e in page.extrasamples)
    colormap = page.colormap if photometric == 3 else None
    described = tif.is_imagej or tif.is_ome or (tif.is_shaped and "Q" not in axes)
  if data.ndim != len(axes):
    raise UserInputError(f"{path}: axes {axes!r} do not match the data shape {data.shape}")
  if "Y" not in axes or "X" not in axes:
    raise UserInputError(f"{path}: the image has axes {axes!r}, no Y and X plane")
  if not described and "S" not in axes and data.shape[axes.index("X")] <= 4 \
      and data.shape[axes.index("Y")] > 4:
    raise UserInputError(
        f"{path}: pages of {data.shape[axes.index('Y')]} x {data.shape[axes.index('X')]} px "
        f"and no axes metadata: probably an [H, W, C] array saved without axes; rewrite it "
        f"with tifffile.imwrite(path, array, metadata={{'axes': 'YXC'}}) or save it from ImageJ")
  channel_axes = [a for a in axes if a in "CS"]
  page_axes = [a for a in axes if a not in "CSYX"]
  order = [axes.index(a) for a in page_axes + ["Y", "X"] + channel_axes]
  data = np.transpose(data, order)
  n_pages = int(np.prod([data.shape[i] for i in range(len(page_axes))], dtype=np.int64))
  h, w = data.shape[len(page_axes)], data.shape[len(page_axes) + 1]
  data = data.reshape((n_pages, h, w, -1))
  rgb = photometric == 2  # RGB
  if extrasamples and "S" in axes:
    # Extra samples are the last samples; 1 and 2 mark (un)associated alpha.
    n_alpha = sum(1 for e in extrasamples if e in (1, 2))
    if n_alpha:
      keep = data.shape[-1] - len(extrasamples)
      data = data[..., [i for i in range(data.shape[-1])
                        if i < keep or extrasamples[i - keep] not in (1, 2)]]
      notes.append("alpha channel dropped")
  if photometric == 3 and colormap is not None and resolve_palette:
    data, rgb = _apply_palette(data[..., 0], np.asarray(colormap).T, notes)
  return ImageFile(path, list(data), rgb, pixel_size, axes, notes)


def _apply_palette(indices: np.ndarray, palette: np.ndarray, notes: list[str]
                   ) -> tuple[np.ndarray, bool]:
  """Palette indices ``[..., H, W]`` -> colours ``[..., H, W, 1 or 3]``; palette ``[N, 3]``."""
  colours = palette[np.clip(indices, 0, len(palette) - 1)]
  used = palette[np.unique(indices).clip(0, len(palette) - 1)]
  if np.all(used[:, 0] == used[:, 1]) and np.all(used[:, 1] == used[:, 2]):
    notes.append("palette image resolved to its grey values")
    return colours[..., :1], False
  notes.append("palette image resolved to RGB")
  return colours, True


# --------------------------------------------------------------------------
# PNG, JPEG and the other formats Pillow reads.
# --------------------------------------------------------------------------


def _pil_page(im, resolve_palette: bool, notes: list[str]) -> tuple[np.ndarray, bool]:
  """One Pillow frame -> ``[H, W, C]`` and whether it is RGB."""
  mode = im.mode
  if mode == "P" or mode == "PA":
    if not resolve_palette:
      return np.asarray(im.convert("P") if mode == "PA" else im)[..., None], False
    if mode == "PA" or "transparency" in im.info:
      notes.append("alpha channel dropped")
    indices_im = im.convert("P") if mode == "PA" else im
    palette = np.asarray(indices_im.getpalette("RGB") or [0, 0, 0], np.uint8).reshape(-1, 3)
    indices = np.asarray(indices_im)
    return _apply_palette(indices, palette, notes)
  if mode in ("LA", "La"):
    notes.append("alpha channel dropped")
    return np.asarray(im)[..., :1], False
  if mode in ("RGBA", "RGBa"):
    notes.append("alpha channel dropped")
    return np.asarray(im)[..., :3], True
  if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
    notes.append(f"{mode} converted to RGB")
    return np.asarray(im.convert("RGB")), True
  if mode == "1":
    return np.asarray(im, np.uint8)[..., None], False
  array = np.asarray(im)
  if mode == "RGB":
    return array, True
  return (array[..., None] if array.ndim == 2 else array), False


def _read_pil(path: pathlib.Path, resolve_palette: bool) -> ImageFile:
  from PIL import Image, ImageSequence

  notes: list[str] = []
  with Image.open(path) as im:
    dpi = im.info.get("dpi")
    pages, rgb = [], False
    for frame in ImageSequence.Iterator(im):
      page, rgb = _pil_page(frame.copy(), resolve_palette, notes)
      pages.append(page)
  pixel_size = None
  if dpi and dpi[0] and dpi[1] and tuple(dpi) != (72, 72):  # 72 dpi = "not set" default
    pixel_size = (25400.0 / float(dpi[1]), 25400.0 / float(dpi[0]))
  return ImageFile(path, pages, rgb, pixel_size, "YX" + ("S" if pages[0].shape[-1] > 1 else ""),
                   sorted(set(notes), key=notes.index))


# --------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------


def read_image(path: str | pathlib.Path, *, resolve_palette: bool = True) -> ImageFile:
  """Decodes one image file into pages ``[H, W, C]`` (see the module docstring).

  Args:
    path: a TIFF, PNG, JPEG, BMP or GIF file.
    resolve_palette: False for label masks, whose palette indices are the labels.
  Raises:
    UserInputError: naming the file if it is missing, empty, truncated, of an
      unknown format or has axes that cannot be read as images.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserInputError(f"file not found: {path}")
  if path.stat().st_size == 0:
    raise UserInputError(f"{path} is empty (0 bytes)")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # tifffile/Pillow metadata chatter
      if path.suffix.lower() in TIFF_SUFFIXES:
        image = _read_tiff(path, resolve_palette)
      else:
        image = _read_pil(path, resolve_palette)
  except UserInputError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # any decoder error = bad file
    raise UserInputError(f"cannot read {path} (truncated or corrupted file? "
                         f"{type(e).__name__}: {e})") from e
  if not image.pages or min(image.pages[0].shape[:2]) < 1:
    raise UserInputError(f"{path} holds no pixels")
  return image


def to_channels(page: np.ndarray, channels: int, rgb: bool, name: str,
                notes: list[str] | None = None) -> np.ndarray:
  """Converts one page ``[H, W, C]`` to ``[H, W, channels]`` by the module's rule.

  Args:
    page: ``[H, W, C]`` (alpha already dropped).
    channels: the model's input channels.
    rgb: whether the C = 3 channels are R, G, B.
    name: the file, for messages.
    notes: list to which a one-line note is appended when something changes.
  Returns:
    ``[H, W, channels]``, float32 if converted, else the input dtype.
  Raises:
    UserInputError: for a channel count that the rule cannot convert.
  """
  c = page.shape[-1]
  if c == channels:
    return page
  if channels == 1 and c == 3 and rgb:
    if notes is not None:
      notes.append("RGB converted to grey (luminance 0.2125 R + 0.7154 G + 0.0721 B)")
    return (page.astype(np.float32) @ LUMINANCE)[..., None]
  if channels == 3 and c == 1:
    if notes is not None:
      notes.append("grey image repeated into 3 channels for an RGB model")
    return np.repeat(page, 3, axis=-1)
  raise UserInputError(f"{name}: the image has {c} channel(s) but the model takes {channels}; "
                       "convert it (e.g. split or merge channels in ImageJ) first")


def model_pages(path: str | pathlib.Path, channels: int) -> tuple[ImageFile, list[np.ndarray]]:
  """Reads ``path`` and converts every page to ``[H, W, channels]``."""
  image = read_image(path)
  pages = [to_channels(p, channels, image.rgb, str(image.path), image.notes if i == 0 else None)
           for i, p in enumerate(image.pages)]
  return image, pages


def write_tiff(path: str | pathlib.Path, array: np.ndarray,
               pixel_size: tuple[float, float] | None = None, axes: str | None = None
               ) -> pathlib.Path:
  """Writes an array with its pixel size.

  Args:
    path: the TIFF to write (its folder is created).
    array: ``[H, W]``, or with leading page/channel axes as named by ``axes``.
    pixel_size: ``(y, x)`` in micrometres, or None.
    axes: ImageJ axes ending in ``YX`` (e.g. ``"CYX"``, ``"ZCYX"``); default
      ``"YX"`` / ``"ZYX"`` by the number of dimensions.

  uint8/uint16/float32 are written as ImageJ hyperstacks (``unit = um``, pixel
  size in the resolution tags, which Fiji and napari read); other dtypes
  (uint32 labels) get the standard TIFF resolution tags in pixels per cm.
  """
  import tifffile

  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  array = np.asarray(array)
  if axes is None:
    axes = {2: "YX", 3: "ZYX", 4: "ZCYX"}[array.ndim]
  kwargs: dict = {"photometric": "minisblack"}
  imagej = array.dtype in (np.uint8, np.uint16, np.float32)
  kwargs["metadata"] = {"axes": axes}
  if imagej:
    kwargs["imagej"] = True
  if pixel_size is not None:
    y, x = (float(v) for v in pixel_size)
    if imagej:
      kwargs.update(resolution=(1.0 / x, 1.0 / y))
      kwargs["metadata"]["unit"] = "um"
    else:
      kwargs.update(resolution=(1e4 / x, 1e4 / y), resolutionunit="CENTIMETER")
  tifffile.imwrite(path, array, **kwargs)
  return path


def list_images(folder: str | pathlib.Path) -> list[pathlib.Path]:
  """Image files of a folder (by suffix, sorted; hidden files skipped)."""
  return sorted(p for p in pathlib.Path(folder).iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def describe(suffixes: Sequence[str] = IMAGE_SUFFIXES) -> str:
  return "/".join(f"*{s}" for s in suffixes)
