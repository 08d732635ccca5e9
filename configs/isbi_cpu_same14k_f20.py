"""ISBI 2012 on a CPU: configs/isbi_cpu_same14k.py with 20 features instead of 16.

    python train.py --config configs/isbi_cpu_same14k_f20.py --workdir W   # 42-48 min on the AMD EPYC 2-core CPU
    python evaluate.py --workdir W --mode heldout --checkpoint latest --tta   # slices 25-29

Our best CPU recipe for ISBI 2012: it meets the held-out goal of V_rand >= 0.980
and V_info >= 0.985 (three-seed mean), which the 16-feature recipe misses in V_info
(0.9842 over nine seeds). The 16-feature recipe's validation model
loses V_info to splits and merges alike (results/isbi_cpu_same14k_snapshots_val/
vinfo_split_merge.md), so thresholds and post-processing cannot lift it; a wider
net is the lever left that keeps the 14000 steps. 20 features: 3.03 M instead of
1.94 M parameters; a step costs 1.5-1.6x the 16-feature step on this CPU
(0.16-0.18 s against 0.105-0.116 s at 256², benchmarks/train_step.py, 2026-12-03),
so 14000 steps take 42-48 min on the AMD EPYC machine of this project and
would exceed 60 min on the slower Intel machines of earlier sessions (42-53 min
for the 16-feature recipe there). Chosen on the validation split (train 0-19,
validation 20-24, seed 0, last checkpoint, 8-fold TTA; rule written before the
run, results/isbi_cpu_same14k_f20_val/): V_rand 0.9648 / V_info 0.9791 against
0.9659 / 0.9753 for 16 features. Held-out slices 25-29 (train 0-24, last
checkpoint, 8-fold TTA), the three declared seeds 0 / 1 / 2: V_rand 0.9871 / 0.9859 /
0.9825 (mean 0.9852), V_info 0.9862 / 0.9864 / 0.9850 (mean 0.9859), so the goal
(mean V_rand >= 0.980, V_info >= 0.985) is met; without TTA the mean is 0.979 / 0.982.
47.3 / 47.8 / 43.8 min of training on the AMD EPYC machine (results/isbi_cpu_same14k_f20/).
Seeds 3 and 4, run after that decision as a check: 0.9847 / 0.9867 and 0.9844 /
0.9851; five-seed mean 0.9849 / 0.9859, 42-48 min per run.
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
  c.features = 20          # 16 in isbi_cpu_same14k.py; 3.03 M parameters, not 1.94 M
  c.padding = "same"       # ablation option (unet_jax/model.py); the paper's is "valid"
  c.tile_size = 256        # SAME tiles: a multiple of 2**depth; output = input
  c.eval_tile_size = 576   # fewer, larger tiles for the held-out images
  c.num_steps = 14000
  c.eval_every = 0         # no validation split to evaluate on
  return c
