"""Preview PNG (3 slices) and SHA-256 of an ISBI 2012 submission TIFF.

    python scripts/submission_preview.py runs/isbi/eval/submission.tif \
        [--volume DATA/isbi2012/test-volume.tif] [--png results/submission_preview.png]

``evaluate.py --mode submission`` does the same right after writing the TIFF;
this script re-checks a file that already exists. The logic is in
unet_jax/submission.py.
"""

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from unet_jax import submission  # noqa: E402
from unet_jax.errors import UserInputError  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("tiff", help="the submission TIFF")
  parser.add_argument("--volume", help="test-volume.tif, to show the raw slices too")
  parser.add_argument("--png", help="preview path (default: <tiff stem>_preview.png)")
  args = parser.parse_args(argv)
  try:
    volume = None
    if args.volume:
      from unet_jax.datasets import read_image_file
      volume = read_image_file(pathlib.Path(args.volume))
    info = submission.describe_submission(args.tiff, volume, args.png)
  except UserInputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(info, indent=2))
  print(f"sha256 {info['sha256']}  {info['path']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
