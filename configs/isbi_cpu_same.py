"""ISBI 2012 on a CPU with SAME padding and 256 tiles: the first of the isbi_cpu_same*.py recipes.

    python train.py --config configs/isbi_cpu_same.py --workdir W   # 28-36 min on a 2-core CPU (committed runs)
    python evaluate.py --workdir W --mode heldout --checkpoint latest --tta   # slices 25-29

configs/isbi_cpu.py (16 features, 5000 steps, train 0-24, last checkpoint)
with SAME-padded convolutions and ordinary tiling instead of the paper's VALID
convolutions and overlap-tile: every step supervises the whole 256x256 tile
(65,536 pixels) instead of a 68x68 centre. NOT the paper's architecture: the
paper-faithful recipes are isbi_cpu.py and isbi.py. This is the ablation row
``same_padding`` of results/ablations.md as a config of its own.

How it was chosen: on the validation split carved from the training slices
(train 0-19, validation 20-24, seed 0, no TTA) it scored V_rand 0.938 / V_info
0.963 at step 5000 (results/isbi_cpu_same_val/), against 0.879 / 0.934 for
VALID with the paper's 572 tiles at about the same wall time
(isbi_cpu_572.py, results/isbi_cpu_572_val/). Held-out results (slices 25-29,
three seeds): results/README.md.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.dataset = "isbi2012"
  # Trains on all of 0-24 and keeps the last checkpoint (no validation split), so
  # the reported 25-29 choose nothing (datasets.SPECS: 0-19 / 20-24 / 25-29).
  c.train_indices = "0-24"
  c.heldout_indices = "25-29"
  c.features = 16          # as isbi_cpu.py
  c.padding = "same"       # ablation option (unet_jax/model.py); the paper's is "valid"
  c.tile_size = 256        # SAME tiles: a multiple of 2**depth; output = input
  c.eval_tile_size = 576   # fewer, larger tiles for the held-out images
  c.num_steps = 5000
  c.eval_every = 0         # no validation split to evaluate on
  return c
