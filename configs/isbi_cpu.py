"""ISBI 2012 on a CPU: the isbi.py setup with a narrower net and smaller tiles.

    python train.py --config configs/isbi_cpu.py --workdir W      # ~9 min on a free 2-core CPU
    python evaluate.py --workdir W --mode heldout --tta            # slices 25-29

Same data, weight maps (Eq. 2), augmentation and optimiser (SGD, momentum 0.99,
poly decay to 0) as configs/isbi.py, but 16 features, 252x252 tiles (output
68x68) and 5000 steps. Trained on slices 0-24 with the *last* checkpoint kept
(no validation split, so nothing is selected on any scored slice); slices 25-29
are scored once. Seeds, runs and the ablation table: results/README.md and
results/ablations.md. A moving average of the parameters (``ema_decay=0.999``)
did not score higher than the last step's parameters at this budget (V_rand
0.883 against 0.886, mean of three seeds; results/README.md), so it is off.
Kept as the fast check of the paper's architecture; with 428x428 tiles and 14000
steps the same net scores V_rand 0.982 (configs/isbi_cpu_valid428.py, 5 seeds).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.dataset = "isbi2012"
  # Trains on all of 0-24 and keeps the last checkpoint (no validation split), so
  # the reported 25-29 choose nothing (datasets.SPECS: 0-19 / 20-24 / 25-29).
  c.train_indices = "0-24"
  c.heldout_indices = "25-29"
  c.features = 16          # 4x fewer channels than the paper's 64, ~16x fewer FLOPs
  c.tile_size = 252        # depth 4: 16k + 188; output 68
  c.eval_tile_size = 572   # fewer, larger tiles for the held-out images
  c.num_steps = 5000
  c.eval_every = 0         # no validation split to evaluate on
  return c
