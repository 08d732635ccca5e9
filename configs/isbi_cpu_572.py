"""ISBI 2012 on a CPU with the paper's tile size: 572x572 inputs, 16 features.

    python train.py --config configs/isbi_cpu_572.py --workdir W   # ~35 min on a 2-core CPU (about 36 measured)
    python evaluate.py --workdir W --mode heldout --tta             # slices 25-29

configs/isbi_cpu.py with the paper's 572x572 input tiles (388x388 output)
instead of 252x252 (68x68 output): each step supervises 150,544 pixels instead
of 4,624, at about 6x the time per step, so 2500 steps instead of 5000. Why:
the SAME-padding ablation (results/ablations.md), which supervises 14x more
pixels per step than the 252 recipe, scored far higher, so the small output
tile, not the paper's ingredients, limited the 252 recipe.

Checked on a validation split carved from the training slices (train 0-19,
validation 20-24, seed 0; results/isbi_cpu_572_val/): validation V_rand 0.847,
0.835, 0.891, 0.856, 0.879 at steps 500...2500 (no TTA): far from the goal
(0.98) and within the spread of the 252 recipe's held-out scores, so it was
not run on the held-out slices 25-29. Kept as the
record of that check; configs/isbi_cpu.py stays the CPU recipe.

Later (2026-12-04): with --config.tile_size=428 --config.eval_tile_size=428 (244x244
output, about the SAME recipe's labelled pixels per step) and --config.num_steps=14000,
the VALID net matched the SAME recipe on validation and scored held-out V_rand / V_info
0.9822 / 0.9839 with TTA over 5 seeds (results/isbi_cpu_428_14k_val/,
results/isbi_cpu_428_14k/): that is configs/isbi_cpu_valid428.py now.
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
  # tile_size: default.py's 572, the paper's tile (output 388x388), not isbi_cpu.py's 252
  c.eval_tile_size = 572
  c.num_steps = 2500       # ~6x the time of a 252-tile step
  c.eval_every = 0         # no validation split to evaluate on
  return c
