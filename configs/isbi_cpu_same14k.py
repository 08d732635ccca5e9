"""ISBI 2012 on a CPU: configs/isbi_cpu_same.py trained 14000 steps.

    python train.py --config configs/isbi_cpu_same14k.py --workdir W   # 42-50 min on a 2-core CPU
    python evaluate.py --workdir W --mode heldout --checkpoint latest --tta   # slices 25-29

The custom VJP of the SAME 3x3 conv (unet_jax/layers.py) made a 256-tile step
about 1.8x faster on this CPU (3.0-3.6 -> 5.7-6.3 steps/s in the training
loop), so 14000 steps fit in the 60 min that 9000 steps needed before
(isbi_cpu_same9k.py). Chosen on the validation split (train 0-19, validation
20-24, seed 0, no TTA, last checkpoint; results/isbi_cpu_same14k_val/): V_rand
0.890, 0.962, 0.965, 0.967 at steps 3500-14000, V_info 0.970 at the end, in
49.3 min, against 0.943 / 0.970 for 9000 steps. Held-out slices 25-29 (train
0-24, last checkpoint, TTA), seeds 0/1/2: V_rand 0.986 / 0.982 / 0.984 (mean
0.984), V_info 0.985 / 0.982 / 0.985 (mean 0.984), 42-50 min each
(results/isbi_cpu_same14k/, results/README.md). Seeds 3-8, trained later:
V_rand 0.985 / 0.980 / 0.983 / 0.988 / 0.983 / 0.984, V_info 0.986 / 0.979 /
0.984 / 0.987 / 0.985 / 0.985; nine-seed means 0.9840 / 0.9842 (42-53 min each).
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
  c.num_steps = 14000
  c.eval_every = 0         # no validation split to evaluate on
  return c
