"""Small fixture writers shared by the data tests (tiny TIFF/PNG datasets on disk)."""

from __future__ import annotations

import pathlib

import numpy as np
import tifffile


def write_isbi(folder: pathlib.Path, n: int = 3, size: int = 32, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
  """Writes train-volume.tif / train-labels.tif / test-volume.tif; returns (volume, labels)."""
  rng = np.random.default_rng(seed)
  volume = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
  labels = np.where(rng.random((n, size, size)) < 0.7, 255, 0).astype(np.uint8)
  folder.mkdir(parents=True, exist_ok=True)
  tifffile.imwrite(folder / "train-volume.tif", volume)
  tifffile.imwrite(folder / "train-labels.tif", labels)
  tifffile.imwrite(folder / "test-volume.tif", volume[::-1])
  return volume, labels


def write_ctc(root: pathlib.Path, name: str, frames: int = 4, size: int = 24,
              truth: str = "ST", mask_frames: list[int] | None = None, seq: str = "01"
              ) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
  """CTC layout NAME/01/tNNN.tif (uint16, LZW) and NAME/01_<truth>/SEG/man_segNNN.tif."""
  rng = np.random.default_rng(1)
  base = root / name
  (base / seq).mkdir(parents=True, exist_ok=True)
  (base / f"{seq}_{truth}" / "SEG").mkdir(parents=True, exist_ok=True)
  images = [rng.integers(0, 4000, (size, size), dtype=np.uint16) for _ in range(frames)]
  masks = {}
  for t, img in enumerate(images):
    tifffile.imwrite(base / seq / f"t{t:03d}.tif", img, compression="lzw")
  for t in (range(frames) if mask_frames is None else mask_frames):
    m = np.zeros((size, size), np.uint16)
    m[2:8, 2:8] = 3 + t
    m[10:20, 5:9] = 40
    masks[t] = m
    tifffile.imwrite(base / f"{seq}_{truth}" / "SEG" / f"man_seg{t:03d}.tif", m, compression="lzw")
  return images, masks
