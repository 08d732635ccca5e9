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
float32 by the normalisation (``datasets.normalize``); complex and other
pixel types are refused with a message naming the file, and so are NaN/Inf
pixels (one makes the whole normalised image NaN). A file that cannot be
decoded is refused as ``PATH: not a readable TIFF (...)`` (resp. PNG, ...), one
line. tifffile's log messages go into that reason, or into the notes of a file
that could be read, instead of onto stderr.

**Pixel size.** Only a physical calibration is a pixel size:

* OME ``PhysicalSizeX/Y`` (in their ``PhysicalSizeXUnit``, default um);
* ImageJ metadata: the resolution tags in pixels per ``unit`` where ``unit``
  is a length (nm, um/micron, mm, cm, m);
* bare TIFF resolution tags in centimetres (or mm/um) if that gives at most
  ``MAX_TAG_PIXEL_UM`` = 50 um per pixel: larger values are image editors'
  print resolutions stored in px/cm (72 dpi = 352.8 um).

Dots per inch are a print setting, never a pixel size: TIFF ``ResolutionUnit``
inch, an ImageJ ``unit`` of inch, a PNG's pHYs and the dpi of JPEG, BMP and
GIF files are ignored, so that 72 or 96 dpi never becomes 352.8 or 264.6 um
(a dpi of 508 or more, i.e. <= 50 um per pixel, adds a note saying so). The
pixel size is kept in micrometres and written into every output TIFF by
:func:`write_tiff` (ImageJ metadata where ImageJ can hold the dtype, standard
TIFF resolution tags in px/cm otherwise); without one the outputs are
uncalibrated.

**Stacks.** :class:`ImageFile` keeps the page axes (``page_axes``, e.g.
``"T"``, ``"Z"``, ``"TZ"``) and their sizes, the Z spacing (OME
``PhysicalSizeZ``, ImageJ ``spacing`` in a length ``unit``) in um and the frame
interval (OME ``TimeIncrement``, ImageJ ``finterval`` / ``tunit``) in seconds,
so that results can be written with the input's hyperstack layout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pathlib
import re
import warnings
from typing import Iterator, Sequence

import numpy as np

from unet_jax.errors import UserInputError

TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PIL_SUFFIXES
LUMINANCE = np.array([0.2125, 0.7154, 0.0721], np.float32)  # ITU-R BT.709
# Bare TIFF resolution tags above this (um per pixel) are print resolutions
# that an image editor stored in px/cm (600 dpi = 42 um, 300 dpi = 85 um).
MAX_TAG_PIXEL_UM = 50.0
# Length units (lower case) of OME and ImageJ; "inch" is absent on purpose
# (a print unit, see the module docstring), "pixel" means not calibrated.
_UM_PER = {"um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0,
           "micrometer": 1.0, "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3,
           "nanometre": 1e-3, "pm": 1e-6, "å": 1e-4, "angstrom": 1e-4, "mm": 1e3,
           "millimeter": 1e3, "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4,
           "centimetre": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6}
_S_PER = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "msec": 1e-3,
          "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "min": 60.0, "minute": 60.0, "minutes": 60.0,
          "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0}
_TAG_UM_PER = {3: 1e4, 4: 1e3, 5: 1.0}  # TIFF ResolutionUnit cm, mm, um (1 none, 2 inch)


@dataclasses.dataclass
class ImageFile:
  """A decoded file.

  Attributes:
    path: the file.
    pages: one array ``[H, W, C]`` per page (native dtype), alpha dropped and
      palettes resolved (unless read with ``resolve_palette=False``).
    rgb: True if the channels are R, G, B (luminance applies), False if they
      are grey or independent channels (e.g. fluorescence).
    pixel_size: ``(y, x)`` in micrometres, or None if the file does not give a
      physical calibration (see the module docstring).
    axes: the axes as read (e.g. ``"ZCYX"``, ``"YXS"``; ``"YX"`` for Pillow files).
    notes: what was dropped or converted, one line each.
    page_axes: the axes that count pages, in file order (``"T"``, ``"Z"``,
      ``"ZT"``, ``"I"`` for a Pillow animation...; ``""`` for one page).
    page_shape: their sizes; ``pages`` is this grid flattened in C order.
    z_spacing: micrometres between Z slices, or None.
    frame_interval: seconds between T frames, or None.
  """
  path: pathlib.Path
  pages: list[np.ndarray]
  rgb: bool
  pixel_size: tuple[float, float] | None
  axes: str
  notes: list[str] = dataclasses.field(default_factory=list)
  page_axes: str = ""
  page_shape: tuple[int, ...] = ()
  z_spacing: float | None = None
  frame_interval: float | None = None

  @property
  def channels(self) -> int:
    return int(self.pages[0].shape[-1])


class _Unreadable(Exception):
  """A decoder opened the file but found no image in it."""


# --------------------------------------------------------------------------
# Calibration.
# --------------------------------------------------------------------------


def _scaled(value, unit, table: dict[str, float]) -> float | None:
  """``value`` in ``unit`` times the unit's factor in ``table``; None if unknown or <= 0."""
  factor = table.get(str(unit).strip().lower())
  try:
    value = float(value)
  except (TypeError, ValueError):
    return None
  return value * factor if factor is not None and value > 0 else None


def _dpi_note(dpi: float) -> list[str]:
  """A note for a dpi fine enough to be mistaken for a calibration (>= 508 dpi)."""
  if not dpi or 25400.0 / dpi > MAX_TAG_PIXEL_UM:
    return []  # 72, 96, 300 dpi ...: an editor's default, ignored silently
  return [f"resolution of {dpi:g} dpi ignored: dpi is a print setting, not a pixel size "
          "(results are uncalibrated; calibrate in ImageJ or save as OME-TIFF)"]


def _ome_calibration(xml: str) -> dict:
  """``pixel_size``, ``z_spacing``, ``frame_interval`` of the first ``Pixels`` element."""
  pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml)
  attrs = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(0))) if pixels else {}

  def size(name: str, table: dict[str, float], default_unit: str) -> float | None:
    if name not in attrs:
      return None
    return _scaled(attrs[name], attrs.get(name + "Unit", default_unit), table)

  x, y = size("PhysicalSizeX", _UM_PER, "um"), size("PhysicalSizeY", _UM_PER, "um")
  return {"pixel_size": (y or x, x) if x else None,
          "z_spacing": size("PhysicalSizeZ", _UM_PER, "um"),
          "frame_interval": size("TimeIncrement", _S_PER, "s")}


def _tiff_calibration(tif, page, notes: list[str]) -> dict:
  """``pixel_size``, ``z_spacing``, ``frame_interval`` by the module docstring's rule."""
  found = {"pixel_size": None, "z_spacing": None, "frame_interval": None}
  if tif.is_ome and tif.ome_metadata:
    found = _ome_calibration(tif.ome_metadata)
    if found["pixel_size"]:
      return found
  tags = page.tags
  per_x = per_y = None  # resolution-tag units per pixel
  if "XResolution" in tags:
    num, den = tags["XResolution"].value
    ynum, yden = tags["YResolution"].value if "YResolution" in tags else (num, den)
    if num and ynum:
      per_x, per_y = den / num, yden / ynum
  if tif.is_imagej and tif.imagej_metadata:
    meta = tif.imagej_metadata
    if meta.get("finterval"):
      found["frame_interval"] = _scaled(meta["finterval"], meta.get("tunit", "sec"), _S_PER)
    if meta.get("unit"):
      # ImageJ's unit replaces the TIFF ResolutionUnit; "pixel" and "inch"
      # (ImageJ's reading of an editor's dpi) are no calibration.
      if per_x:
        y, x = _scaled(per_y, meta["unit"], _UM_PER), _scaled(per_x, meta["unit"], _UM_PER)
        found["pixel_size"] = (y, x) if x and y else None
      if meta.get("spacing"):
        found["z_spacing"] = _scaled(meta["spacing"], meta["unit"], _UM_PER)
      return found
  if not per_x:
    return found
  unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF default: inch
  if unit == 2:
    notes += _dpi_note(1.0 / per_x)
  elif unit in _TAG_UM_PER:
    y, x = per_y * _TAG_UM_PER[unit], per_x * _TAG_UM_PER[unit]
    if max(y, x) <= MAX_TAG_PIXEL_UM:
      found["pixel_size"] = (y, x)
  return found


# --------------------------------------------------------------------------
# TIFF.
# --------------------------------------------------------------------------


@contextlib.contextmanager
def _tifffile_log() -> Iterator[list[str]]:
  """Collects tifffile's log messages instead of printing them on stderr."""
  messages: list[str] = []

  class Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
      # "<tifffile.TiffPages @8> invalid offset ..." -> "invalid offset ..."
      messages.extend(re.sub(r"^<[^>]*>\s*", "", record.getMessage()).splitlines()[:1])

  log = logging.getLogger("tifffile")
  handler, propagate = Collect(logging.WARNING), log.propagate  # not its debug chatter
  log.addHandler(handler)
  log.propagate = False
  try:
    yield messages
  finally:
    log.removeHandler(handler)
    log.propagate = propagate


def _read_tiff(path: pathlib.Path, resolve_palette: bool) -> ImageFile:
  import tifffile

  notes = []
  with tifffile.TiffFile(path) as tif:
    if not tif.series:
      raise _Unreadable("no image in it")
    series = tif.series[0]
    if len(tif.series) > 1:
      notes.append(f"{len(tif.series)} image series in the file; read the first "
                   f"({series.axes} {series.shape})")
    page = series.keyframe
    data = series.asarray()
    axes = series.axes
    calibration = _tiff_calibration(tif, page, notes)
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
  # Positions, not letters: unnamed axes may repeat (tifffile's "Q").
  channel_dims = [i for i, a in enumerate(axes) if a in "CS"]
  page_dims = [i for i, a in enumerate(axes) if a not in "CSYX"]
  data = np.transpose(data, page_dims + [axes.index("Y"), axes.index("X")] + channel_dims)
  page_shape = tuple(int(n) for n in data.shape[:len(page_dims)])
  h, w = data.shape[len(page_dims)], data.shape[len(page_dims) + 1]
  data = data.reshape((int(np.prod(page_shape, dtype=np.int64)), h, w, -1))
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
  return ImageFile(path, list(data), rgb, calibration["pixel_size"], axes, notes,
                   page_axes="".join(axes[i] for i in page_dims), page_shape=page_shape,
                   z_spacing=calibration["z_spacing"],
                   frame_interval=calibration["frame_interval"])


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
  if dpi:  # PNG pHYs, JPEG/BMP density: print settings, no pixel size
    notes += _dpi_note(float(dpi[0]))
  many = len(pages) > 1
  return ImageFile(path, pages, rgb, None, "YX" + ("S" if pages[0].shape[-1] > 1 else ""),
                   sorted(set(notes), key=notes.index), page_axes="I" if many else "",
                   page_shape=(len(pages),) if many else ())


# --------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------


def read_image(path: str | pathlib.Path, *, resolve_palette: bool = True) -> ImageFile:
  """Decodes one image file into pages ``[H, W, C]`` (see the module docstring).

  Args:
    path: a TIFF, PNG, JPEG, BMP or GIF file.
    resolve_palette: False for label masks, whose palette indices are the labels.
  Raises:
    UserInputError: one line naming the file if it is missing, empty, not
      decodable (truncated, corrupted, of an unknown format), has axes that
      cannot be read as images, a pixel type other than integer or float, or
      NaN/Inf pixels (:func:`check_finite`).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserInputError(f"file not found: {path}")
  if path.stat().st_size == 0:
    raise UserInputError(f"{path} is empty (0 bytes)")
  tiff = path.suffix.lower() in TIFF_SUFFIXES
  with warnings.catch_warnings(), _tifffile_log() as log:
    warnings.simplefilter("ignore")  # tifffile/Pillow metadata chatter
    try:
      image = _read_tiff(path, resolve_palette) if tiff else _read_pil(path, resolve_palette)
    except UserInputError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # any decoder error = bad file
      why = str(e) if isinstance(e, _Unreadable) else f"{type(e).__name__}: {e}"
      # Decoders name the file too (Pillow: "cannot identify image file '/a/b.png'").
      why = why.replace(f" {str(path)!r}", "").replace(str(path), path.name)
      why += "".join(f"; {m}" for m in log[:1])  # e.g. "invalid offset to first page"
      if path.suffix and path.suffix.lower() not in IMAGE_SUFFIXES:  # e.g. notes.txt
        raise UserInputError(
            f"{path}: not a file type this tool reads ({describe()}, or what Pillow "
            "reads); convert it (Fiji: File > Save As > Tiff)") from e
      kind = "TIFF" if tiff else path.suffix[1:].upper() or "image"
      raise UserInputError(f"{path}: not a readable {kind} "
                           f"(truncated or corrupted file? {why})") from e
  # What tifffile logged about a file it could read (e.g. "ImageJ series metadata
  # invalid or corrupted file": fewer pages than written) is reported with it.
  image.notes += [f"tifffile: {m}" for m in dict.fromkeys(log)]
  if not image.pages or min(image.pages[0].shape[:2]) < 1:
    raise UserInputError(f"{path} holds no pixels")
  dtype = image.pages[0].dtype
  if dtype.kind == "c":
    raise UserInputError(f"{path}: complex-valued pixels ({dtype}) are not supported; save a "
                         "real image (e.g. the magnitude or real part as float32)")
  if dtype.kind not in "biuf":
    raise UserInputError(f"{path}: pixel type {dtype} is not supported; save integer "
                         "(8/16/32-bit) or float pixels")
  check_finite(path, image.pages)
  return image


def check_finite(path: str | pathlib.Path, pixels: np.ndarray | Sequence[np.ndarray]) -> None:
  """Refuses NaN/Inf pixels: one of them makes the whole normalised image NaN.

  Args:
    path: the file, for the message.
    pixels: the pages ``[H, W, C]`` of a file (a pixel counts once, however
      many of its channels are bad), or one array whose values are pixels (the
      grey stacks and frames of ``datasets.read_image_file``).
  Raises:
    UserInputError: ``PATH: N NaN/Inf pixel(s); fix or drop the image``.
  """
  if isinstance(pixels, np.ndarray):
    bad = [int(np.size(pixels) - np.count_nonzero(np.isfinite(pixels)))
           if pixels.dtype.kind == "f" else 0]
  else:
    bad = [int(np.count_nonzero(~np.isfinite(p).all(axis=-1))) if p.dtype.kind == "f" else 0
           for p in pixels]
  if not sum(bad):
    return
  pages = [i for i, n in enumerate(bad) if n]
  where = (f" in page(s) {', '.join(map(str, pages[:5]))}{', ...' if len(pages) > 5 else ''}"
           f" of {len(bad)} (counting from 0)" if len(bad) > 1 else "")
  raise UserInputError(f"{path}: {sum(bad)} NaN/Inf pixel(s){where}; fix or drop the image")


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
               pixel_size: tuple[float, float] | None = None, axes: str | None = None, *,
               z_spacing: float | None = None, frame_interval: float | None = None
               ) -> pathlib.Path:
  """Writes an array with its pixel size.

  Args:
    path: the TIFF to write (its folder is created).
    array: ``[H, W]``, or with leading page/channel axes as named by ``axes``.
    pixel_size: ``(y, x)`` in micrometres, or None.
    axes: ImageJ axes ending in ``YX`` (e.g. ``"CYX"``, ``"ZCYX"``, ``"TZCYX"``);
      default ``"YX"`` / ``"ZYX"`` / ``"ZCYX"`` by the number of dimensions.
    z_spacing: micrometres between Z slices (ImageJ ``spacing``); written with
      a ``pixel_size`` only, since ImageJ gives it in the pixel size's unit.
    frame_interval: seconds between T frames (ImageJ ``finterval``).

  uint8/uint16/float32 are written as ImageJ hyperstacks (``unit = um``, pixel
  size in the resolution tags, which Fiji and napari read); other dtypes
  (uint32 labels) get the standard TIFF resolution tags in pixels per cm and
  keep ``axes`` in tifffile's metadata, without Z spacing or frame interval.
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
    if frame_interval and "T" in axes:
      kwargs["metadata"]["finterval"] = float(frame_interval)
  if pixel_size is not None:
    y, x = (float(v) for v in pixel_size)
    if imagej:
      kwargs.update(resolution=(1.0 / x, 1.0 / y))
      kwargs["metadata"]["unit"] = "um"
      if z_spacing and "Z" in axes:
        kwargs["metadata"]["spacing"] = float(z_spacing)
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
