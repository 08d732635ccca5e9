"""Cell Tracking Challenge (CTC) result folders.

The challenge's segmentation results are one 2-D uint16 TIFF per frame,
``<seq>_RES/maskTTT.tif`` (``TTT`` the frame number, 3 digits, 4 for sequences
of 1000 frames or more), 0 = background and one id per cell. Its SEG measure
compares them with ``<seq>_GT/SEG/man_segTTT.tif`` (or ``_ST`` for the silver
truth): a reference cell counts its Jaccard index with the result object that
holds more than half of its pixels, 0 if there is none.
"""

from __future__ import annotations

import pathlib
import re
from typing import Sequence

import numpy as np

from unet_jax import instances

_NAME = re.compile(r"^(?P<seq>[^/]+)/t(?P<frame>\d+)$")


def parse_name(name: str) -> tuple[str, int]:
  """``"01/t060"`` (the names of CTC splits) -> ``("01", 60)``."""
  m = _NAME.match(name)
  if m is None:
    raise ValueError(f"{name!r} is not a CTC frame name like '01/t060'")
  return m.group("seq"), int(m.group("frame"))


def is_frame_name(name: str) -> bool:
  """Whether ``name`` is a CTC frame name like ``"01/t060"``."""
  return _NAME.match(name) is not None


def mask_name(frame: int, digits: int = 3) -> str:
  """``maskTTT.tif`` of a frame."""
  return f"mask{frame:0{digits}d}.tif"


def to_uint16(labels: np.ndarray) -> np.ndarray:
  """Instance labels as uint16 (the challenge's type); ids are renumbered 1..n."""
  labels = np.asarray(labels)
  if labels.ndim != 2:
    raise ValueError(f"a CTC mask is 2-D [H, W], got shape {labels.shape}")
  labels = instances.relabel_consecutive(labels)
  if labels.max(initial=0) > np.iinfo(np.uint16).max:
    raise ValueError(f"{labels.max()} objects do not fit the CTC uint16 masks")
  return labels.astype(np.uint16)


def write_results(out_dir: str | pathlib.Path, names: Sequence[str],
                  labels: Sequence[np.ndarray]) -> list[pathlib.Path]:
  """Writes ``out_dir/<seq>_RES/maskTTT.tif`` for every frame.

  Args:
    out_dir: the folder that gets one ``<seq>_RES`` folder per sequence.
    names: CTC frame names, e.g. ``"01/t060"``.
    labels: int ``[H, W]`` instances per frame, 0 = background.
  Returns:
    The written files.
  """
  import tifffile

  parsed = [parse_name(n) for n in names]
  last = max((f for _, f in parsed), default=0)
  digits = 4 if last >= 1000 else 3
  written = []
  for (seq, frame), lab in zip(parsed, labels):
    path = pathlib.Path(out_dir) / f"{seq}_RES" / mask_name(frame, digits)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, to_uint16(lab), compression="zlib")
    written.append(path)
  return written
