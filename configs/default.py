"""Paper defaults for the U-Net (Ronneberger et al. 2015). Base of all configs.

Not meant to be run directly: the variants (synthetic.py, isbi.py, dic_hela.py,
...) import it and override a few fields. Every field can be overridden on the
command line, e.g. ``--config.tile_size=252``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # --- data ------------------------------------------------------------------
  c.dataset = "synthetic"       # synthetic | isbi2012 | dic_hela | phc_u373 | folder
  c.data_dir = ""               # "" = built-in synthetic data or $UNET_JAX_DATA
  c.train_indices = ""          # slice/frame indices, e.g. "0-24"; "" = all not in val/heldout
  c.val_indices = ""            # validation: picks the best checkpoint; "" = none
  c.heldout_indices = ""        # reported held-out split (never used to select); "" = none
  c.ctc_sequences = "01"        # Cell Tracking Challenge sequences, e.g. "01,02"
  c.ctc_truth = "st"            # CTC masks: st (silver truth, all frames) | gt (gold, sparse)
  c.mask_kind = "binary"        # folder dataset masks: binary | instances | classes (K = num_classes)
  c.cache_dir = ""              # weight-map cache; "" = $UNET_JAX_CACHE or ~/.cache/unet_jax
  c.num_workers = 0             # grain worker processes (0 = in the main process)
  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.num_images = 10   # generated images (train + val + held-out)
  c.synthetic.size = 256        # side of each generated image
  c.synthetic.cells = 40        # cells per image (Voronoi seeds)

  # --- network (paper Fig. 1) ---------------------------------------------------
  c.tile_size = 572             # input tile side; valid: 16k + 188 at depth 4
  c.features = 64               # channels of the first level
  c.depth = 4                   # pooling steps
  c.num_classes = 2             # K
  c.dropout_rate = 0.5          # end of contracting path (see unet_jax/model.py)
  c.dtype = "float32"           # float32 | bfloat16 (fp32 params and loss)
  c.in_channels = 0             # input channels; 0 = taken from the data
  c.classifier_init_scale = 1.0  # init std of the final 1x1 conv x this (docs/cells.md)
  c.padding = "valid"           # valid (paper: unpadded convs, overlap-tile) | same (ablation)

  # --- loss (paper Eq. 1-2) ----------------------------------------------------
  c.w0 = 10.0                   # border weight
  c.sigma = 5.0                 # border width, pixels
  c.class_weights = "balanced"  # balanced (N / (K n_k)) | none

  # --- augmentation (paper Sec. 3.1) ---------------------------------------------
  c.augment = ml_collections.ConfigDict()
  c.augment.elastic_std = 10.0  # px, std of displacements on the coarse grid
  c.augment.elastic_grid = 3    # coarse grid points per side
  c.augment.rotate = True       # random rotation (any angle)
  c.augment.flip = True         # random flips / 90-degree rotations
  c.augment.intensity = 0.1     # grey-value variation (scale/offset amplitude)

  # --- optimisation (paper Sec. 3) -----------------------------------------------
  c.batch_size = 1              # the paper: one large tile per step
  c.learning_rate = 0.003       # SGD on the pixel-mean loss (README: "Learning rate")
  c.momentum = 0.99             # paper
  c.lr_schedule = "poly"        # poly (power 0.9) | constant
  c.warmup_steps = 100          # linear warmup from 0 (a safety margin, see README)
  c.grad_clip_norm = 5.0        # global-norm clipping (0 = off); see README
  c.ema_decay = 0.0             # >0: evaluate/keep a moving average of the params (not in the paper)
  c.num_steps = 20000
  c.seed = 0

  # --- bookkeeping -------------------------------------------------------------
  c.log_every = 50              # metrics.jsonl / TensorBoard / curves.png
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.async_checkpoints = "auto"  # auto (GPU/TPU: write in the background; CPU: wait) | on | off
  c.eval_every = 1000           # validation (val_indices) every N steps (0 = off)
  c.eval_tile_size = 0          # 0 = tile_size
  c.eval_batch_size = 4
  c.profile_steps = ""          # e.g. "20-24": jax.profiler trace of those steps -> WORKDIR/profile
  # --- instances from p(cell) (cell data; unet_jax/instances.py) -------------------
  c.instances = ml_collections.ConfigDict()
  c.instances.method = "components"  # components (paper: threshold + components) | watershed
  c.instances.threshold = 0.5        # cell where p(cell) > threshold
  c.instances.seed_threshold = 0.9   # watershed seeds: p(cell) > seed_threshold ...
  c.instances.seed_radius = 2        # ... eroded by a disk of this radius (px)
  c.instances.min_size = 0           # drop objects (and seeds) smaller than this (px)
  c.instances.fill_gaps = True       # give the separation borders back to the cells
  return c
