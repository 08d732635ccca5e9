"""Trains the U-Net: ``python train.py --config configs/isbi.py --workdir DIR``.

This file is intentionally kept short: flags in, library call out. The logic is
in unet_jax/train_lib.py. Re-running the same command resumes from the latest
checkpoint in DIR. ``--dry_run`` prints sizes, memory and one step's time (no
data needed).
"""

from absl import app, flags

from unet_jax import cli
from unet_jax.errors import UserInputError

FLAGS = flags.FLAGS
cli.define_config_file("config", "configs/synthetic.py", "Training config file.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and curves.")
flags.DEFINE_bool("dry_run", False, "Print config, sizes, memory and one step's time; "
                  "write nothing.")
cli.define_distributed_flags()


def main(argv):
  del argv
  from unet_jax import config_lib, train_lib  # after flag parsing: bad flags exit fast

  config = FLAGS.config
  config_lib.validate(config)
  cli.initialize_distributed()  # before anything touches the devices
  if FLAGS.dry_run:
    channels, note = train_lib.dry_run_channels(config)
    config = config_lib.resolve(config, channels)
    print(config)
    if note:
      print(note)
    report = train_lib.dry_run(config)
    print(f"parameters:            {report['parameters']:,}")
    devices = report["devices"]
    print(f"input tile:            {report['input_tile']} x {report['input_tile']} "
          f"(batch {report['batch_size']}"
          + (f", {report['batch_size'] // devices} on each of {devices} devices)"
             if devices > 1 else ")"))
    print(f"output tile:           {report['output_tile']} x {report['output_tile']}")
    peak = report["estimated_peak_memory_bytes"]
    print("estimated peak memory: " + (f"{peak / 2**20:,.1f} MiB per device (XLA buffer "
                                       "assignment)"
                                       if peak is not None else "unknown on this backend"))
    print(f"one train step:        {report['step_seconds']:.3f} s on {report['backend']}")
    return
  if not FLAGS.workdir:
    raise UserInputError("--workdir is required (where checkpoints and logs go)")
  train_lib.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(app, main)
