"""Times the warping error (and the whole ISBI sweep) on ISBI slices 25-29.

    UNET_JAX_DATA=~/data/unet python benchmarks/warping.py

The prediction is synthetic but realistic: the ground-truth cell mask blurred
(sigma 2 px) plus smoothed Gaussian noise (amplitude 0.6, sigma 1.5 px),
clipped to [0, 1]. Prints the warping error and seconds per threshold, then
the time of ``metrics.isbi_scores`` over all thresholds (docs/metrics.md).
"""

import os
import pathlib
import time

import numpy as np
import scipy.ndimage as ndi
import tifffile

from unet_jax import metrics


def noisy_prediction(cells: np.ndarray, rng: np.random.Generator, noise: float = 0.6) -> np.ndarray:
  """A cell probability map ``[H, W]`` near the ground truth ``cells`` ``[H, W]``."""
  prob = (ndi.gaussian_filter(cells.astype(np.float64), 2.0)
          + ndi.gaussian_filter(rng.normal(0, noise, cells.shape), 1.5))
  return np.clip(prob, 0, 1)


def main():
  root = pathlib.Path(os.environ.get("UNET_JAX_DATA", "../shared/data"))
  cells = tifffile.imread(root / "isbi2012" / "train-labels.tif")[25:30] == 255
  rng = np.random.default_rng(0)
  probs = [noisy_prediction(c, rng) for c in cells]
  print("threshold  warping_error  seconds (5 slices)")
  for t in metrics.DEFAULT_THRESHOLDS[:-1]:
    start = time.perf_counter()
    err = np.mean([metrics.warping_error(p, c, threshold=t) for p, c in zip(probs, cells)])
    print(f"{t:9.1f}  {err:13.6f}  {time.perf_counter() - start:7.2f}")
  start = time.perf_counter()
  scores = metrics.isbi_scores(probs, cells)
  print(f"isbi_scores: warping_error {scores['warping_error']:.6g}, vrand {scores['vrand']:.4f}, "
        f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  main()
