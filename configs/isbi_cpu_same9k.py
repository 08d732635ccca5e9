"""ISBI 2012 on a CPU: configs/isbi_cpu_same.py trained 9000 steps instead of 5000.

    python train.py --config configs/isbi_cpu_same9k.py --workdir W   # 50-60 min on a 2-core CPU (committed runs)
    python evaluate.py --workdir W --mode heldout --checkpoint latest --tta   # slices 25-29

Chosen on the validation split carved from the training slices (train 0-19,
validation 20-24, seed 0, no TTA): V_rand 0.943 / V_info 0.970 at step 9000
(results/isbi_cpu_same9k_val/) against 0.938 / 0.963 for 5000 steps
(results/isbi_cpu_same_val/). The poly schedule decays to 0 at the last step,
so this is a longer schedule, not a later checkpoint. Held-out results
(slices 25-29, train 0-24, last checkpoint): results/README.md.
NOT the paper's architecture (SAME padding; see isbi_cpu_same.py).
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
  c.num_steps = 9000
  c.eval_every = 0         # no validation split to evaluate on
  return c
