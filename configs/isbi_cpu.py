"""ISBI 2012 on a CPU: the isbi.py setup with a narrower net.

    python train.py --config configs/isbi_cpu.py --workdir W       # ~15 min on 2 cores
    python evaluate.py --workdir W --mode heldout                  # slices 25-29

Same data, weight maps (Eq. 2) and augmentation as configs/isbi.py, with 16
features instead of 64, and the optimisation of configs/dic_hela_cpu.py: the
paper's 572 tile (388x388 output, the least noisy gradient per CPU second),
the final 1x1 conv initialised at zero, learning rate 0.002 after 300 warmup
steps, poly decay. The checkpoint is chosen on validation slices 20-24 (carved
from the training slices); slices 25-29 are reported only.
Results (three seeds): results/README.md.
"""

from configs import isbi


def get_config():
  c = isbi.get_config()
  c.features = 16
  c.tile_size = 572           # output 388
  c.train_indices = "0-19"
  c.val_indices = "20-24"     # picks the checkpoint
  c.heldout_indices = "25-29"  # reported only
  c.classifier_init_scale = 0.0
  c.learning_rate = 0.002
  c.warmup_steps = 300
  c.num_steps = 1000
  c.eval_every = 250
  c.checkpoint_every = 250
  return c
