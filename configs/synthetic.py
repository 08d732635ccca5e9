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
  c = default.get_config()
  c.dataset = "synthetic"
  c.data_dir = ""
  c.synthetic.num_images = 10
  c.synthetic.size = 256
  c.synthetic.cells = 40
  c.train_indices = datasets.SPECS[c.dataset].train_indices  # 0-5
  c.val_indices = datasets.SPECS[c.dataset].val_indices  # 6-7
  c.heldout_indices = datasets.SPECS[c.dataset].heldout_indices  # 8-9
  c.tile_size = 252    # depth 4: 16k + 188; output 68
  c.features = 16
  c.depth = 4
  c.num_steps = 1500
  c.eval_every = 250
  c.eval_tile_size = 252
  return c
