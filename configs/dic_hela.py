"""Cell Tracking Challenge DIC-C2DH-HeLa (paper Sec. 4, "IoU 77.5 %").

    python -m unet_jax.data_tool download --dataset dic_hela --dest ~/data/unet
    python train.py --config configs/dic_hela.py --config.data_dir ~/data/unet --workdir W

Sequence 01 (84 frames, 512x512): train on frames 0-49, choose the checkpoint
(and the instance method) on frames 50-59, report frames 60-83 (held out,
never used to choose anything; docs/cells.md; the splits of ``datasets.SPECS``).
Labels: cell (mask > 0) vs background; the weight map's
border term uses the instance masks, which matters for the touching HeLa cells.
Masks: silver truth ``01_ST/SEG`` (every frame). With the CTC gold truth,
``--config.ctc_truth=gt`` uses only the frames of ``01_GT/SEG`` and the split
indices then count those frames. Same network and tile as the paper (572).
"""

from configs import default
from unet_jax import datasets


def get_config():
  # default.py: the paper's network and tile (572), sequence 01, silver truth.
  c = default.get_config()
  c.dataset = "dic_hela"
  spec = datasets.SPECS[c.dataset]          # the held-out protocol of docs/cells.md
  c.train_indices = spec.train_indices      # 0-49
  c.val_indices = spec.val_indices          # 50-59
  c.heldout_indices = spec.heldout_indices  # 60-83
  return c
