"""DIC-C2DH-HeLa on a CPU: the dic_hela.py setup with a narrower net and smaller tiles.

    python train.py --config configs/dic_hela_cpu.py --config.data_dir ~/data/unet --workdir W

Same data, split (frames 0-59 train, 60-83 held out), instance weight maps and
augmentation as configs/dic_hela.py, but 16 features and 252x252 training tiles
(output 68x68), so a step takes a fraction of a second on 2 CPU cores; the
held-out frames are predicted with 572 tiles. Reports SEG (CTC) and V_rand.
Expect a lower score than the paper-size net.
"""

from configs import dic_hela


def get_config():
  c = dic_hela.get_config()
  c.features = 16
  c.tile_size = 252    # depth 4: 16k + 188; output 68
  c.eval_tile_size = 572
  c.num_steps = 4000
  c.eval_every = 500
  return c
