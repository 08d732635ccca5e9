"""ISBI 2012 EM segmentation, paper-faithful (Ronneberger et al. 2015, Sec. 3-4).

    python -m unet_jax.data_tool download --dataset isbi2012 --dest ~/data/unet
    python train.py --config configs/isbi.py --config.data_dir ~/data/unet --workdir W

The paper's setup: 572x572 input tiles (388x388 output), batch of one tile,
64 features, depth 4, SGD momentum 0.99, weight maps w0 = 10, sigma = 5 px,
elastic deformation (3x3 grid, std 10 px). The challenge's test labels are
secret, so we train on slices 0-24 and report on the held-out slices 25-29 (a
contiguous block of serial sections; ``datasets.SPECS``). Needs a GPU.
"""

from configs import default
from unet_jax import datasets


def get_config():
  c = default.get_config()
  c.dataset = "isbi2012"
  c.train_indices = datasets.SPECS[c.dataset].train_indices  # 0-24
  c.val_indices = datasets.SPECS[c.dataset].val_indices  # 25-29
  c.tile_size = 572
  c.batch_size = 1
  c.features = 64
  c.depth = 4
  c.w0 = 10.0
  c.sigma = 5.0
  c.momentum = 0.99
  return c
