"""Checks of an ISBI 2012 challenge submission: a preview PNG and the file's SHA-256.

``evaluate.py --mode submission`` writes the submission TIFF (float32
``[30, 512, 512]``, probability of cell interior) and calls
``describe_submission`` on it, so the preview and hash recorded in
``results/README.md`` come from the same file that is uploaded.
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import Sequence

import numpy as np

from unet_jax.errors import UserInputError

PREVIEW_SLICES = (0, 15, 29)


def sha256_file(path: str | pathlib.Path) -> str:
  """Hex SHA-256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def read_test_volume(path: str | pathlib.Path) -> np.ndarray:
  """The raw slices ``[S, H, W]`` (native dtype) of a grey stack such as ``test-volume.tif``.

  Read with :func:`unet_jax.image_io.read_image`, so the file's axes decide
  what a slice is: a TIFF's pages (``Z``, ``T``, ``I``...), a one-page image is
  one slice, and the ``S``/``C`` axis of an RGB or multi-channel file is never
  read as slices. Such files are refused, not converted to grey: the challenge's
  volume is grey (``[30, 512, 512]`` uint8), and a submission of luminances
  would score something else.

  Raises:
    UserInputError: an unreadable file, more than one channel, slices of
      different sizes.
  """
  from unet_jax import image_io

  image = image_io.read_image(path)
  h, w = image.pages[0].shape[:2]
  if image.channels != 1:
    kind = "RGB" if image.rgb else f"{image.channels}-channel"
    raise UserInputError(f"{path}: a submission needs a grey [S, H, W] stack (the ISBI "
                         f"test-volume.tif is [30, 512, 512] uint8), got {len(image.pages)} "
                         f"{kind} image(s) of {h} x {w} px; pass the challenge's "
                         "test-volume.tif or a grey TIFF stack")
  if len({p.shape for p in image.pages}) > 1:
    raise UserInputError(f"{path}: the slices differ in size; a submission needs a stack "
                         "of equal slices [S, H, W]")
  return np.stack([p[..., 0] for p in image.pages])


def read_submission(path: str | pathlib.Path) -> np.ndarray:
  """The submission stack ``[S, H, W]`` float32; checks the challenge's format.

  Raises:
    UserInputError: if the file is missing, not 3-D/2-D float32, or outside [0, 1].
  """
  import tifffile

  path = pathlib.Path(path)
  if not path.is_file():
    raise UserInputError(f"submission not found: {path} (write it with evaluate.py --mode "
                         f"submission)")
  stack = tifffile.imread(path)
  stack = stack[None] if stack.ndim == 2 else stack
  if stack.ndim != 3 or stack.dtype != np.float32:
    raise UserInputError(f"{path}: expected a float32 [S, H, W] stack, got {stack.dtype} "
                         f"{stack.shape}")
  if stack.size and (np.nanmin(stack) < 0 or np.nanmax(stack) > 1 or np.isnan(stack).any()):
    raise UserInputError(f"{path}: probabilities must lie in [0, 1] (no NaN)")
  return stack


def write_preview(stack: np.ndarray, png: str | pathlib.Path,
                  volume: np.ndarray | None = None,
                  slices: Sequence[int] = PREVIEW_SLICES) -> pathlib.Path:
  """Writes a PNG of a few slices: the test image (if given) above its probability map.

  Args:
    stack: ``[S, H, W]`` cell-interior probabilities.
    png: output path.
    volume: optional ``[S, H, W]`` raw test slices, shown in the first row.
    slices: the slice indices to show (clipped to the stack).
  Returns:
    ``png``.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  picks = sorted({min(max(int(s), 0), len(stack) - 1) for s in slices})
  rows = 1 if volume is None else 2
  fig = Figure(figsize=(3.2 * len(picks), 3.3 * rows))
  FigureCanvasAgg(fig)
  axes = fig.subplots(rows, len(picks), squeeze=False)
  for col, s in enumerate(picks):
    if volume is not None:
      axes[0, col].imshow(volume[s], cmap="gray")
      axes[0, col].set_title(f"test slice {s}", fontsize=9)
    axes[-1, col].imshow(stack[s], cmap="gray", vmin=0, vmax=1)
    axes[-1, col].set_title(f"p(cell interior), slice {s}", fontsize=9)
  for ax in axes.ravel():
    ax.axis("off")
  fig.tight_layout()
  png = pathlib.Path(png)
  png.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(png, dpi=60)
  return png


def describe_submission(path: str | pathlib.Path, volume: np.ndarray | None = None,
                        png: str | pathlib.Path | None = None) -> dict:
  """Checks a submission TIFF, writes its preview PNG and returns what to record.

  Args:
    path: the submission TIFF.
    volume: optional raw test volume ``[S, H, W]`` for the preview.
    png: preview path (default: next to the TIFF, ``<stem>_preview.png``).
  Returns:
    ``{"path", "sha256", "bytes", "shape", "min", "max", "mean", "preview"}``.
  """
  path = pathlib.Path(path)
  stack = read_submission(path)
  png = write_preview(stack, png or path.with_name(f"{path.stem}_preview.png"), volume)
  return {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size,
          "shape": list(stack.shape), "min": float(stack.min()), "max": float(stack.max()),
          "mean": float(stack.mean()), "preview": str(png)}
