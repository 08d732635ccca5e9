"""Quick start: a CPU-sized U-Net on built-in synthetic cells (no download needed).

    python train.py --config configs/synthetic.py --workdir /tmp/unet_synthetic

Synthetic EM-like images (Voronoi cells with thin dark membranes, texture and
noise; unet_jax/synthetic.py), 10 images of 256x256: train on 0-5, choose the
best checkpoint on 6-7, report on 8-9 (held out). 1500 steps. Depth 4 as in the
paper but 16 features and 252x252 tiles (output 68x68), so a step takes a
fraction of a second on 2 CPU cores and the loss visibly falls within a few
minutes. Augmentation and weight maps are the paper's. The numbers
only show that the pipeline learns; they say nothing about the benchmarks.
"""

from configs import default
from unet_jax import datasets


def get_config():
  # default.py: dataset "synthetic", 10 images of 256x256 with 40 cells, depth 4.
  c = default.get_config()
  spec = datasets.SPECS[c.dataset]
  c.train_indices = spec.train_indices      # 0-5
  c.val_indices = spec.val_indices          # 6-7
  c.heldout_indices = spec.heldout_indices  # 8-9
  c.tile_size = 252    # depth 4: 16k + 188; output 68
  c.features = 16      # CPU-sized (the paper: 64)
  c.num_steps = 1500
  c.eval_every = 250
  c.eval_tile_size = 252
  return c
