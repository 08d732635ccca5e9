"""Ablation table of the paper's ingredients (results/ablations.md).

    python scripts/ablations.py --config configs/isbi_cpu.py \
        --config.data_dir ~/data/unet --root runs/ablations \
        --num_steps 9000 --seeds 0,1 --out results/ablations.md

Trains every row of ``unet_jax.ablations.ROWS`` (the base config, w0 = 0, no
class balancing, no elastic deformation, SAME padding, momentum 0.9) for each
seed, one run after the other, on slices 0-19; picks the checkpoint on slices
20-24 (``--select best``) or takes the last one (``--select last``); scores it
on the held-out slices 25-29 with and without test-time augmentation; writes
the table. Re-running the same command skips finished runs and resumes
interrupted ones. Expect rows x seeds times the base config's training time.
This file is intentionally kept short: the logic is in unet_jax/ablations.py.
"""

import pathlib
import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from unet_jax import ablations, cli  # noqa: E402
from unet_jax.errors import UserInputError  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Base config file (the paper's recipe).",
                                lock_config=True)
flags.DEFINE_string("root", None, "Directory for the runs (ROOT/<row>/seed<k>).")
flags.DEFINE_integer("num_steps", None, "Training steps per run (the same for every row).")
flags.DEFINE_list("seeds", ["0", "1"], "Seeds; every row is trained once per seed.")
flags.DEFINE_list("rows", list(ablations.ROW_NAMES), "Ablation rows to run.")
flags.DEFINE_enum("select", "best", ["best", "last"],
                  "best: checkpoint with the best V_rand on --val_indices; last: last one.")
flags.DEFINE_string("train_indices", "0-19", "Training slices.")
flags.DEFINE_string("val_indices", "20-24", "Validation slices (checkpoint choice only).")
flags.DEFINE_string("heldout_indices", "25-29", "Held-out slices (scored, never used to choose).")
flags.DEFINE_string("out", "results/ablations.md", "The markdown table to write.")
flags.DEFINE_bool("table_only", False, "Train nothing: tabulate every finished run under "
                  "--root (e.g. after runs made by several invocations).")


def main(argv):
  del argv
  if FLAGS.config is None or not FLAGS.root or not FLAGS.num_steps:
    raise UserInputError("--config, --root and --num_steps are required")
  protocol = dict(train_indices=FLAGS.train_indices, val_indices=FLAGS.val_indices,
                  heldout_indices=FLAGS.heldout_indices, select=FLAGS.select)
  base_name = config_flags.get_config_filename(FLAGS["config"])
  command = shlex.join(["python"] + sys.argv)
  if FLAGS.table_only:
    results = ablations.collect(FLAGS.root)
    if not results:
      raise UserInputError(f"no finished runs under {FLAGS.root}: run without --table_only")
    path = ablations.write_table(results, FLAGS.out, base_name=base_name,
                                 num_steps=FLAGS.num_steps, command=command, **protocol)
    print(f"wrote {path}")
    return
  try:
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError:
    raise UserInputError(f"--seeds must be integers, e.g. 0,1 (got {FLAGS.seeds})") from None
  results = ablations.run_ablations(FLAGS.config, FLAGS.root, num_steps=FLAGS.num_steps,
                                    seeds=seeds, rows=FLAGS.rows, **protocol)
  path = ablations.write_table(results, FLAGS.out, base_name=base_name,
                               num_steps=FLAGS.num_steps, command=command, **protocol)
  print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(app, main)
