"""DIC-C2DH-HeLa on a CPU: the dic_hela.py setup with a narrower net.

    python train.py --config configs/dic_hela_cpu.py --workdir W        # 53 min on 2 quiet cores
    python evaluate.py --workdir W --mode heldout                       # frames 60-83

Same data, instance weight maps (Eq. 2 with separation borders, paper Fig. 3),
elastic deformation and SGD momentum 0.99 as configs/dic_hela.py, with:

* 16 features instead of 64 (4x fewer channels, ~16x fewer FLOPs);
* the paper's 572 tile (388x388 output): the same receptive field as a small
  tile but ~6x more output pixels per second than 252 tiles on this CPU, and a
  far less noisy gradient per step, which the low-contrast DIC frames need;
* the final 1x1 conv initialised at zero (``classifier_init_scale = 0``): at
  the paper's init the logits start with std ~10, and the first steps only
  collapse them, leaving a near-constant prediction (docs/cells.md);
* learning rate 0.002 after 300 warmup steps, poly decay over 6000 steps
  (3000 until 2026-12-04: held-out SEG 0.837 over five seeds; 6000 steps gave
  0.884 / 0.877 on seeds 0 / 1 against 0.867 / 0.824, by a rule written before
  those runs: results/dic_hela_cpu_6k/);
* checkpoint chosen on validation frames 50-59 (carved from the training
  frames 0-59), instances by seeded watershed (chosen on the same frames);
  frames 60-83 are the held-out report, never used to choose anything.

Held-out SEG: results/dic_hela_cpu_6k/ (6000 steps, two seeds) and
results/dic_hela_cpu/ (3000 steps, five seeds; --config.num_steps=3000); the
diagnosis: docs/cells.md.
"""

from configs import default
from unet_jax import datasets


def get_config():
  c = default.get_config()
  c.dataset = "dic_hela"
  spec = datasets.SPECS[c.dataset]          # as dic_hela.py
  c.train_indices = spec.train_indices      # 0-49
  c.val_indices = spec.val_indices          # 50-59
  c.heldout_indices = spec.heldout_indices  # 60-83
  c.features = 16              # 4x fewer channels than dic_hela.py's 64
  # tile_size: default.py's 572 (output 388), the paper's
  c.classifier_init_scale = 0.0  # start at p = 1/2 everywhere (docs/cells.md)
  c.learning_rate = 0.002
  c.warmup_steps = 300
  c.num_steps = 6000           # 3000 before 2026-12-04 (results/dic_hela_cpu_6k/)
  c.eval_every = 500
  c.checkpoint_every = 250
  c.instances.method = "watershed"
  c.instances.min_size = 200   # px of area; DIC-HeLa cells are ~100-200 px wide
  return c
