"""Tiny config for tests: depth 2, 4 features, small synthetic images, few steps.

    python train.py --config configs/tiny.py --workdir /tmp/unet_tiny

Runs in seconds on a CPU; the numbers mean nothing beyond "the pipeline works".
"""

from configs import default


def get_config():
  c = default.get_config()  # dataset "synthetic", batch 1
  c.synthetic.num_images = 4
  c.synthetic.size = 96
  c.synthetic.cells = 12
  c.train_indices = "0-2"
  c.val_indices = "3"
  c.tile_size = 60     # depth 2: valid sizes 4k + 44 ... output 20
  c.features = 4
  c.depth = 2
  c.dropout_rate = 0.0
  c.learning_rate = 0.01
  c.lr_schedule = "constant"
  c.num_steps = 6
  c.log_every = 1
  c.checkpoint_every = 3
  c.eval_every = 3
  c.eval_batch_size = 2
  return c
