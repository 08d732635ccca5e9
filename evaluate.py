"""Evaluates a trained U-Net: held-out scores, the ISBI submission, or your own images.

    python evaluate.py --workdir DIR                        # held-out split -> DIR/eval
    python evaluate.py --workdir DIR --mode submission      # ISBI test-volume.tif -> submission.tif
    python evaluate.py --workdir DIR --mode predict --input IMAGES --out OUT
    python evaluate.py --onnx MODEL.onnx --mode predict --input IMAGES --out OUT   # exported model

Exit status: 0 = done; 1 = predict mode skipped some files (listed at the end,
the others were written); 2 = a user error before any work (one line), or
predict mode could segment none of its inputs.

Evaluation runs in one process, on all of its host's devices. Launched as
several processes (the flags of train.py, or ``srun -n N``), process 0 does the
work and the others exit 0 at once, before they touch a device.

The config saved in the workdir (``config.json``) is used unless ``--config``
is given (its architecture must match the checkpoint's). This file is
intentionally kept short: the logic is in unet_jax/evaluation.py.
"""

import pathlib

from absl import app, flags

from unet_jax import cli, run_control
from unet_jax.errors import UserInputError

FLAGS = flags.FLAGS
cli.define_config_file("config", None, "Config file (default: the workdir's config.json).")
flags.DEFINE_string("workdir", None, "The training run's directory.")
flags.DEFINE_enum("mode", "heldout", ["heldout", "submission", "predict"],
                  "heldout: score the held-out split (heldout_indices; the val split "
                  "when there is none, or with --split=val); submission: ISBI challenge TIFF; "
                  "predict: probability/label TIFFs and overlays for --input.")
flags.DEFINE_string("input", None, "predict: a file, folder or multi-page TIFF/PNG; "
                    "submission: the test volume (default DATA/isbi2012/test-volume.tif).")
flags.DEFINE_string("out", None, "Output directory (default WORKDIR/eval).")
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint to load.")
flags.DEFINE_bool("param_average", True, "For a run that kept a moving average of the "
                  "parameters (config.ema_decay > 0): use it; --noparam_average: the raw "
                  "parameters (with --checkpoint latest).")
flags.DEFINE_integer("snapshots", 1, "With --checkpoint latest: average the class "
                     "probabilities of the run's last N periodic checkpoints (a snapshot "
                     "ensemble; not in the paper). 1 = the latest checkpoint alone.")
flags.DEFINE_bool("tta", False, "Average the 8 flips/rotations (test-time augmentation).")
flags.DEFINE_integer("tile_size", 0, "Input tile side (0 = the config's eval tile size).")
flags.DEFINE_enum("split", None, ["val", "heldout"], "heldout mode: the split to score "
                  "(default: heldout if the config has heldout_indices, else val).")
flags.DEFINE_enum("postprocess", "none", ["none", "watershed"], "heldout/submission, ISBI "
                  "data: 'watershed' scores/writes the seeded-watershed cell mask (seeds "
                  "p > 0.7, >= 20 px; 1-px lines as boundaries) instead of the probabilities "
                  "(docs/conventions.md).")
flags.DEFINE_string("onnx", None, "predict: run this exported model (python -m "
                    "unet_jax.export) with onnxruntime instead of a workdir's checkpoint.")
flags.DEFINE_float("threshold", None, "predict: p(cell) above which a pixel is cell (mask, "
                   "labels); default: the run's config.instances.threshold (0.5 unless set).")
flags.DEFINE_bool("overwrite", False, "predict: replace existing result files in --out.")
flags.DEFINE_bool("skip_existing", False, "predict: keep the inputs that already have their "
                  "result files in --out (e.g. after Ctrl-C) and segment the others.")
flags.DEFINE_multi_string("instances", [], "Cell data: change how instances are made from "
                          "p(cell), on top of the run's config, e.g. --instances "
                          "method=watershed --instances seed_threshold=0.8 (the fields of "
                          "config.instances in configs/default.py).")
cli.define_distributed_flags()


def _config(saved):
  """The --config (checked against the checkpoint's architecture) or the saved one."""
  from unet_jax import config_lib

  if FLAGS.config is None:
    return saved
  config = config_lib.resolve(FLAGS.config, FLAGS.config.in_channels or saved.in_channels)
  config_lib.check_same_architecture(saved, config, FLAGS.workdir)
  return config


def _test_volume(config) -> pathlib.Path:
  from unet_jax import datasets

  if FLAGS.input:
    return pathlib.Path(FLAGS.input)
  root = datasets.data_root(config)
  for path in (root / "isbi2012" / "test-volume.tif", root / "test-volume.tif"):
    if path.is_file():
      return path
  raise UserInputError(f"test-volume.tif not found in {root} or {root / 'isbi2012'}; "
                        "pass --input PATH")


def main(argv):
  del argv
  from unet_jax import datasets, distributed, evaluation, inference
  index = distributed.launch_index(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)
  if index:
    print(f"process {index}: evaluate.py runs in process 0 only; nothing to do here")
    return 0
  if FLAGS.postprocess != "none" and FLAGS.mode == "predict":
    raise UserInputError("--postprocess works with --mode heldout or submission; predict "
                         "mode writes the probabilities and --threshold's labels")

  if FLAGS.mode == "predict":  # the checks that need no model first: one line, at once
    if not FLAGS.input:
      raise UserInputError("--mode predict needs --input (a file, folder or multi-page TIFF)")
    if FLAGS.out or FLAGS.workdir:
      from unet_jax import predict
      predict.check_request(FLAGS.input, FLAGS.out or pathlib.Path(FLAGS.workdir) / "eval",
                            FLAGS.threshold, FLAGS.overwrite, FLAGS.skip_existing)
  if FLAGS.config is not None:  # checked as train.py does: a bad field is one line at once
    from unet_jax import config_lib
    config_lib.validate(FLAGS.config)
  if FLAGS.onnx and (FLAGS.mode != "predict" or not FLAGS.out):
    raise UserInputError("--onnx works with --mode predict and needs --out")
  if FLAGS.onnx and FLAGS.workdir:
    raise UserInputError("--onnx and --workdir both name a model: give one of them")
  if not FLAGS.onnx and not FLAGS.workdir:
    raise UserInputError("--workdir is required (the training run's directory)")
  if not FLAGS.onnx and FLAGS.snapshots != 1 and FLAGS.checkpoint != "latest":
    raise UserInputError("--snapshots averages the last periodic checkpoints: use it "
                         "with --checkpoint latest")
  if FLAGS.out:  # last of the checks before any work: it creates the folder
    run_control.writable_dir(FLAGS.out)

  if FLAGS.onnx:
    from unet_jax import onnx_predict
    model, variables = onnx_predict.OnnxUNet(FLAGS.onnx), None
    config = model.config
  elif FLAGS.snapshots != 1:
    saved, model, variables = inference.load_snapshots(
        FLAGS.workdir, FLAGS.snapshots, average=FLAGS.param_average)
    config = _config(saved)
  else:
    saved, model, variables = inference.load_for_inference(
        FLAGS.workdir, FLAGS.checkpoint, average=FLAGS.param_average)
    config = _config(saved)
  if FLAGS.instances:
    from unet_jax import config_lib
    config = config_lib.override_instances(config, FLAGS.instances)
  out = (run_control.writable_dir(FLAGS.out) if FLAGS.out else
         run_control.writable_dir(pathlib.Path(FLAGS.workdir) / "eval", "the default --out"))
  kwargs = dict(tta=FLAGS.tta, tile_size=FLAGS.tile_size or None, progress=True)
  if FLAGS.mode == "heldout":
    split = FLAGS.split or ("heldout" if config.heldout_indices else "val")
    if not config[f"{split}_indices"]:
      raise UserInputError(f"the config has no {split} split: set --config.{split}_indices "
                            "(e.g. 25-29 for ISBI)")
    data = datasets.load_split(config, split)
    print(f"scoring the {split} split ({config[f'{split}_indices']})"
          + (": these frames chose the checkpoint" if split == "val" else ""))
    scores = evaluation.evaluate_split(model, variables, data, config, out_dir=out,
                                       postprocess=FLAGS.postprocess, **kwargs)
    print(evaluation.markdown_report(scores, {}, data.dataset, FLAGS.tta))
    print(f"report: {out / 'metrics.md'}, overlays: {out / 'overlays'}")
  elif FLAGS.mode == "submission":
    from unet_jax import submission

    volume = submission.read_test_volume(_test_volume(config))  # grey [S, H, W] only
    path = evaluation.write_submission(model, variables, volume, out / "submission.tif",
                                       config, postprocess=FLAGS.postprocess, **kwargs)
    info = submission.describe_submission(path, volume)
    what = ("watershed cell mask" if FLAGS.postprocess == "watershed"
            else "cell-interior probability")
    print(f"wrote {path} (float32 {info['shape']}, {what}, "
          f"{info['bytes']} bytes), preview {info['preview']}")
    print(f"sha256 {info['sha256']}")
  else:
    import sys

    from unet_jax import predict
    files = predict.list_inputs(FLAGS.input)
    try:
      result = predict.predict_files(model, variables, FLAGS.input, out, config,
                                     threshold=FLAGS.threshold, overwrite=FLAGS.overwrite,
                                     skip_existing=FLAGS.skip_existing,
                                     echo=lambda line: print(line, file=sys.stderr), **kwargs)
    except KeyboardInterrupt:
      print(f"interrupted: the files segmented so far are in {out}; add --skip_existing "
            "to the same command to segment the rest", file=sys.stderr)
      return 130
    print(result.summary(len(files), out))
    return result.exit_code


if __name__ == "__main__":
  cli.run(app, main, interrupted="stopped before the end; re-run the same command to start "
          "again")
