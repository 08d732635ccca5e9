"""ISBI 2012 on a CPU: the isbi.py setup with a narrower net and smaller tiles.

    python train.py --config configs/isbi_cpu.py --config.data_dir ~/data/unet --workdir W

Same data, split (train 0-24, held-out 25-29), weight maps and augmentation as
configs/isbi.py, but 16 features and 252x252 tiles (output 68x68) so that a
step takes well under a second on a few CPU cores. For trying things out on a
laptop; expect a lower score than the GPU config.
"""

from configs import isbi


def get_config():
  c = isbi.get_config()
  c.features = 16
  c.tile_size = 252    # depth 4: 16k + 188; output 68
  c.eval_tile_size = 572  # fewer, larger tiles for the held-out images
  c.num_steps = 9000    # ~15 min on a free 2-core CPU; held-out V_rand 0.974 (results/isbi_cpu_9k)
  c.eval_every = 1000
  return c
