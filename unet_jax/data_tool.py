"""Command-line tool for the data: download a dataset, preview what training sees.

    python -m unet_jax.data_tool download --dataset isbi2012 --dest ~/data/unet
    python -m unet_jax.data_tool preview --config configs/isbi.py --out preview/

``download`` fetches a dataset of :data:`unet_jax.datasets.SPECS` that has a
download source (isbi2012, dic_hela, phc_u373) from its official site and
verifies it (:mod:`unet_jax.download`). Please cite the data providers: ISBI
2012 (Arganda-Carreras et al., Front. Neuroanat. 2015; Cardona et al., PLoS
Biol. 2010) and the Cell Tracking Challenge (Ulman et al., Nat. Methods 2017).

``preview`` writes ``preview.png``: the first training image, its label, its
weight map (paper Eq. 2) and a few augmented training tiles. Run it from the
repository root (the configs import ``configs.default``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
from typing import Sequence

import numpy as np

from unet_jax import augment, cli, datasets, download, input_pipeline, run_control
from unet_jax import model as model_lib
from unet_jax.errors import UserInputError

# Old spellings of dataset names, still accepted on this command line.
ALIASES = {"dic-hela": "dic_hela", "phc-u373": "phc_u373"}


def downloadable() -> list[str]:
  """Dataset names (``config.dataset``) that have a download source."""
  return [name for name, s in datasets.SPECS.items() if s.download is not None]


def preview(config, out_dir: str | pathlib.Path, num_samples: int = 3) -> pathlib.Path:
  """Writes ``preview.png``: first training image, label, weight map, augmented samples.

  Args:
    config: a training config.
    out_dir: output folder (created).
    num_samples: augmented tiles to draw.
  Returns:
    Path of the PNG.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.patches import Rectangle

  train = datasets.load_split(config, "train")
  one = dataclasses.replace(train, images=train.images[:1], labels=train.labels[:1],
                            instances=train.instances[:1], names=train.names[:1])
  weight = input_pipeline.weights_for(
      config, one, class_weights=input_pipeline.class_weights_for(config, train))[0]
  tile, out = config.tile_size, model_lib.tile_output_size(config.tile_size, config.depth, config.padding)
  params = augment.AugmentParams.from_config(config.augment)
  rng = np.random.default_rng(config.seed)
  samples = [augment.augment_sample(rng, one.images[0], one.labels[0], weight, tile, out, params)
             for _ in range(num_samples)]
  cols = max(3, num_samples)
  fig = Figure(figsize=(4 * cols, 8))
  FigureCanvasAgg(fig)  # an own canvas: no pyplot state, the user's backend untouched
  axes = fig.subplots(2, cols, squeeze=False)
  b = (tile - out) // 2
  top = [(one.images[0][..., 0], f"{one.names[0]} (normalised)", "gray"),
         (one.labels[0], "label (1 = cell)", "gray"),
         (weight, f"weight map (w0={config.w0}, sigma={config.sigma})", "jet")]
  for ax, (arr, title, cmap) in zip(axes[0], top):
    ax.imshow(arr, cmap=cmap)
    ax.set_title(title)
  for ax, (img, lab, _) in zip(axes[1], samples):
    ax.imshow(img[..., 0], cmap="gray")
    ax.imshow(np.pad(lab.astype(float), b, constant_values=np.nan), cmap="autumn", alpha=0.25)
    ax.add_patch(Rectangle((b - 0.5, b - 0.5), out, out, fill=False, color="yellow"))
    ax.set_title(f"augmented {tile}x{tile} tile, label on {out}x{out}")
  for ax in axes.ravel():
    ax.axis("off")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / "preview.png"
  fig.tight_layout()
  fig.savefig(path, dpi=60)
  return path


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m unet_jax.data_tool {download,preview} ...``; returns the exit code."""
  parser = argparse.ArgumentParser(prog="python -m unet_jax.data_tool",
                                   description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  d = sub.add_parser("download", help="fetch a dataset from its official source",
                     description=__doc__.split("\n\n")[2].replace("\n", " "),
                     epilog=download.citations_text(),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
  d.add_argument("--dataset", required=True, choices=downloadable() + sorted(ALIASES),
                 help="config.dataset name of the dataset")
  d.add_argument("--dest", required=True, help="data folder (then --config.data_dir=DEST)")
  d.add_argument("--url-base", default=os.environ.get("UNET_JAX_DOWNLOAD_URL"),
                 help="fetch FILE from URL_BASE/FILE instead of the official URL (a mirror); "
                      "env UNET_JAX_DOWNLOAD_URL")
  p = sub.add_parser("preview", help="PNG of an image, its label, weight map and augmented samples")
  p.add_argument("--config", required=True, help="config file, e.g. configs/synthetic.py")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--data_dir", default=None, help="overrides config.data_dir")
  args = parser.parse_args(argv)
  try:  # the user's mistakes first (config, output folder): one line, before any work
    if args.command == "preview":
      config = cli.load_config_file(args.config)  # checked as train.py's --config
      if args.data_dir is not None:
        config.data_dir = args.data_dir
      print(preview(config, run_control.writable_dir(args.out)))
    else:
      source = datasets.spec(ALIASES.get(args.dataset, args.dataset)).download
      print(download.download(source, run_control.writable_dir(args.dest, "--dest"),
                              url_base=args.url_base))
  except UserInputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # disk full, read-only...: one line (cli.USER_ERRNOS); else traceback
    message = cli.os_error_message(e)
    if message is None:
      raise
    print(f"error: {message}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
