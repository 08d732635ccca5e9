"""Own data with K = 3 classes: weight maps per class, training and evaluation end to end."""

import json

import jax
import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_jax import input_pipeline as data_lib
from unet_jax import datasets, train_lib, weight_maps
from unet_jax.errors import UserInputError


def _three_class_folder(root, n=3, size=64):
  """Discs of class 1 and squares of class 2 on background 0."""
  rng = np.random.default_rng(0)
  (root / "images").mkdir(parents=True)
  (root / "masks").mkdir()
  yy, xx = np.mgrid[:size, :size]
  for i in range(n):
    mask = np.zeros((size, size), np.uint8)
    for _ in range(4):
      cy, cx = rng.integers(8, size - 8, 2)
      mask[(yy - cy)**2 + (xx - cx)**2 < 25] = 1
      cy, cx = rng.integers(4, size - 8, 2)
      mask[cy:cy + 6, cx:cx + 6] = 2
    image = (60 * mask + rng.normal(0, 10, mask.shape) + 50).clip(0, 255).astype(np.uint8)
    Image.fromarray(image).save(root / "images" / f"img{i}.png")
    tifffile.imwrite(root / "masks" / f"img{i}.tif", mask)


def _config(tiny_config, root, tmp_path):
  c = tiny_config
  c.dataset, c.data_dir, c.mask_kind, c.num_classes = "folder", str(root), "classes", 3
  c.train_indices, c.val_indices = "0-1", "2"
  c.cache_dir = str(tmp_path / "cache")
  return c


def test_class_weights_of_three_classes_reach_the_weight_map(tiny_config, tmp_path):
  _three_class_folder(tmp_path / "d")
  c = _config(tiny_config, tmp_path / "d", tmp_path)
  train = datasets.load_split(c, "train")
  cw = data_lib.class_weights_for(c, train)
  n = np.bincount(np.concatenate([lab.ravel() for lab in train.labels]), minlength=3)
  np.testing.assert_allclose(cw, n.sum() / (3 * n), rtol=1e-6)  # "balanced": N / (K n_k)
  w = data_lib.weights_for(c, train)[0]
  lab = train.labels[0]
  inst = np.where((lab >= 1) & (lab < 3), train.instances[0], 0)
  border = weight_maps.weight_map(inst, np.zeros(2), c.w0, c.sigma)
  np.testing.assert_allclose(w, cw[lab] + border, rtol=1e-6)
  for k in range(3):  # class 2 is weighted as class 2, not truncated away
    far = (lab == k) & (border < 1e-6)
    np.testing.assert_allclose(w[far], cw[k], atol=2e-6)


def test_three_classes_train_and_evaluate(tiny_config, tmp_path):
  _three_class_folder(tmp_path / "d")
  c = _config(tiny_config, tmp_path / "d", tmp_path)
  c.num_steps, c.eval_every = 4, 4
  state = train_lib.train_and_evaluate(c, str(tmp_path / "w"))
  assert state.params["classifier"]["kernel"].shape[-1] == 3
  rows = [json.loads(l) for l in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in rows if r["split"] == "val"]
  assert evals and {"iou_class_1", "iou_class_2", "mean_iou", "seg"} <= set(evals[-1])


def test_more_classes_than_the_dataset_has_is_refused(tiny_config):
  from unet_jax import config_lib
  c = tiny_config
  c.num_classes = 3
  with pytest.raises(UserInputError, match="2 classes"):
    config_lib.validate(c)
  c.dataset = "folder"
  with pytest.raises(UserInputError, match="mask_kind=classes"):
    config_lib.validate(c)


def test_class_iou_against_a_confusion_matrix():
  """Per-class IoU from a confusion matrix over all images' pixels, labels outside
  [0, K) ignored; the mean is over the foreground classes 1..K-1."""
  from unet_jax import evaluation
  rng = np.random.default_rng(3)
  k = 3
  probs = [rng.random((20, 30, k)), rng.random((16, 16, k))]
  labels = [rng.integers(0, k, (20, 30)), rng.integers(0, k, (16, 16))]
  labels[1][:4] = 255  # ignored
  cm = np.zeros((k, k))
  for p, lab in zip(probs, labels):
    for t, q in zip(lab.ravel(), np.argmax(p, -1).ravel()):
      if t < k:
        cm[t, q] += 1
  want = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
  got = evaluation.class_iou([evaluation.class_counts(p, lab, k) for p, lab in zip(probs, labels)])
  np.testing.assert_allclose([got[f"iou_class_{i}"] for i in range(k)], want, rtol=1e-12)
  assert got["mean_iou"] == pytest.approx(want[1:].mean())


def test_instance_data_keep_the_checkpoint_with_the_best_seg(tiny_config, tmp_path,
                                                            monkeypatch):
  """Instance data (primary metric SEG, not V_rand): the best checkpoint is the step whose
  validation SEG is highest, not the latest. The real scores of a tiny run rise step by
  step, so the SEG each evaluation returns is replaced by a scripted 0.3, 0.7, 0.5; the
  best checkpoint must then hold step 4's parameters."""
  from unet_jax import checkpoint, evaluation, inference
  rng = np.random.default_rng(1)
  root, size = tmp_path / "d", 64
  (root / "images").mkdir(parents=True)
  (root / "masks").mkdir()
  yy, xx = np.mgrid[:size, :size]
  for i in range(3):
    mask = np.zeros((size, size), np.uint16)
    for cell in range(1, 6):
      cy, cx = rng.integers(8, size - 8, 2)
      mask[((yy - cy)**2 + (xx - cx)**2 < 30) & (mask == 0)] = cell
    image = (80 * (mask > 0) + rng.normal(0, 10, mask.shape) + 50).clip(0, 255)
    Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"img{i}.png")
    tifffile.imwrite(root / "masks" / f"img{i}.tif", mask)
  c = _config(tiny_config, root, tmp_path)
  c.mask_kind, c.num_classes = "instances", 2
  c.num_steps, c.eval_every, c.checkpoint_every, c.keep_checkpoints = 6, 2, 2, 5
  scripted = iter([0.3, 0.7, 0.5])
  real = evaluation.evaluate_split
  def scored(*args, **kwargs):
    scores = real(*args, **kwargs)
    assert "seg" in scores and "vrand" in scores  # both computed; SEG must decide
    return dict(scores, seg=next(scripted), vrand=1.0 - scores["vrand"])
  monkeypatch.setattr(evaluation, "evaluate_split", scored)
  work = tmp_path / "w"
  train_lib.train_and_evaluate(c, str(work))
  rows = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["seg"]) for r in rows if r["split"] == "val"] == [(2, 0.3), (4, 0.7),
                                                                          (6, 0.5)]
  assert checkpoint.best_score(work)["step"] == 4
  config, model, best = inference.load_for_inference(work, "best")
  abstract = jax.eval_shape(
      lambda: train_lib.create_train_state(config, model, jax.random.PRNGKey(0)))
  at_4 = checkpoint.restore_state(work, abstract, 4)
  for a, b in zip(jax.tree.leaves(best["params"]), jax.tree.leaves(at_4.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
