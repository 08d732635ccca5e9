"""grain pipeline (shapes, determinism, state, orbax) and the weight-map cache."""

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from unet_jax import datasets, weight_maps
from unet_jax import input_pipeline as data


@pytest.fixture
def config(tiny_config, tmp_path):
  tiny_config.cache_dir = str(tmp_path / "cache")
  return tiny_config


@pytest.fixture
def train(config):
  return datasets.load_split(config, "train")


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    for k in ("image", "label", "weight"):
      np.testing.assert_array_equal(a[k], b[k])


def test_batch_shapes_and_values(config, train):
  config.batch_size = 2
  batch = next(data.make_train_iterator(config, train))
  assert batch["image"].shape == (2, 60, 60, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (2, 20, 20) and batch["label"].dtype == np.int32
  assert batch["weight"].shape == (2, 20, 20) and batch["weight"].dtype == np.float32
  assert set(np.unique(batch["label"])) <= {0, 1} and batch["weight"].min() > 0
  assert abs(batch["image"].mean()) < 1.0  # normalised input


def test_same_seed_same_sequence_and_repeat(config, train):
  a = _take(data.make_train_iterator(config, train), 8)  # 8 > 3 images: repeats
  _assert_same(a, _take(data.make_train_iterator(config, train), 8))
  config.seed = 1
  c = next(data.make_train_iterator(config, train))
  assert not np.array_equal(a[0]["image"], c["image"])


def test_get_state_set_state_continues_exactly(config, train):
  it = data.make_train_iterator(config, train)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 4)
  fresh = data.make_train_iterator(config, train)
  fresh.set_state(state)
  _assert_same(expected, _take(fresh, 4))


def test_orbax_save_restore_continues_exactly(config, train, tmp_path):
  it = data.make_train_iterator(config, train)
  _take(it, 2)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
  expected = _take(it, 3)
  fresh = data.make_train_iterator(config, train)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  _assert_same(expected, _take(fresh, 3))


def test_weight_map_cache_hit_and_miss(config, train, monkeypatch):
  calls = []
  real = weight_maps.weight_map
  monkeypatch.setattr(weight_maps, "weight_map", lambda *a, **k: calls.append(1) or real(*a, **k))
  first = data.weights_for(config, train)
  assert len(calls) == 3
  second = data.weights_for(config, train)
  assert len(calls) == 3  # all from the cache
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)
  config.w0 = 5.0
  data.weights_for(config, train)
  assert len(calls) == 6  # a changed parameter recomputes
  config.class_weights = "none"
  data.weights_for(config, train)
  assert len(calls) == 9
  monkeypatch.setattr(data, "WEIGHT_MAP_VERSION", data.WEIGHT_MAP_VERSION + 1)
  data.weights_for(config, train)
  assert len(calls) == 12  # maps of an older computation are not reused


def test_cached_weights_match_eq2_with_balanced_class_weights(config, train):
  labels = np.stack(train.labels)
  n_k = np.array([(labels == 0).sum(), (labels == 1).sum()])
  balanced = labels.size / (2 * n_k)  # N / (K n_k), docs/conventions.md
  np.testing.assert_allclose(data.class_weights_for(config, train), balanced, rtol=1e-6)
  got = data.weights_for(config, train)[1]
  want = weight_maps.weight_map(train.instances[1], balanced, config.w0, config.sigma)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  config.class_weights = "none"
  np.testing.assert_array_equal(data.class_weights_for(config, train), [1, 1])


@pytest.mark.slow
def test_worker_processes_give_the_same_sequence(config, train):
  expected = _take(data.make_train_iterator(config, train), 4)
  config.num_workers = 2
  it = data.make_train_iterator(config, train)
  try:
    _assert_same(expected, _take(it, 4))
  finally:
    it.close()


def _eq2_brute_force(inst, labels, w0, sigma):
  """Eq. 2 by the convention (docs/conventions.md): w_c by each pixel's label with
  balanced weights N / (K n_k), plus w0 exp(-(d1 + d2)^2 / (2 sigma^2)) on background
  pixels, d1 <= d2 the two smallest distance_transform_edt(inst != k) over the cells k."""
  from scipy import ndimage
  n_k = np.array([(labels == 0).sum(), (labels == 1).sum()])
  w_c = (labels.size / (2 * n_k))[labels]
  d = np.sort([ndimage.distance_transform_edt(inst != k) for k in np.unique(inst) if k > 0], 0)
  border = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
  return w_c + np.where(inst == 0, border, 0.0)


def test_weights_of_touching_cells_use_the_instances_of_the_cell_class(config):
  """Cell tracking data: two cells touch, the label map has a 1-px background gap on
  each side of their contact (paper Fig. 3). The cached training weight maps equal
  Eq. 2 brute-forced on the instances restricted to label 1: the gap is background,
  with w_c of the background and the border term of the two cells across it."""
  inst = np.zeros((30, 32), np.int32)
  inst[4:14, 3:10] = 1
  inst[4:14, 10:18] = 2           # touches cell 1 between columns 9 and 10
  inst[20:27, 6:14] = 3
  labels = (inst > 0).astype(np.int32)
  labels[4:14, 9:11] = 0          # the separation gap, drawn by hand
  split = datasets.SegmentationData(
      images=[np.zeros((30, 32, 1), np.float32)], labels=[labels], instances=[inst],
      names=["touching"], num_channels=1, dataset="touching")
  got = data.weights_for(config, split)[0]
  cells = np.where(labels == 1, inst, 0)
  want = _eq2_brute_force(cells, labels, config.w0, config.sigma)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # the gap pixels carry the background weight plus a border term near w0
  assert np.all(got[4:14, 9:11] > want[0, 0] + 0.5 * config.w0)


def test_weights_of_real_dic_hela_frame_use_the_instances_of_the_cell_class(config, data_root):
  """A DIC-HeLa frame with touching cells (its label map has separation gaps): the
  cached weight map against the brute-force Eq. 2 on the instances restricted to label 1."""
  config.dataset, config.data_dir, config.train_indices, config.val_indices = (
      "dic_hela", str(data_root), "60", "")
  split = datasets.load_split(config, "train")
  inst, labels = split.instances[0], split.labels[0]
  gaps = (inst > 0) & (labels == 0)
  assert gaps.sum() > 50  # the frame has touching cells
  got = data.weights_for(config, split)[0]
  want = _eq2_brute_force(np.where(labels == 1, inst, 0), labels, config.w0, config.sigma)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_every_epoch_visits_each_training_image_once(config, train):
  """Consecutive blocks of len(train) samples are permutations of the images (an
  epoch), in a new order each epoch. Each image is replaced by a constant 100 * index,
  which every crop, flip, rotation and elastic warp keeps (intensity variation off)."""
  import dataclasses
  config.augment.intensity = 0.0
  n = len(train)
  marked = dataclasses.replace(train, images=[np.full_like(im, 100.0 * k)
                                              for k, im in enumerate(train.images)])
  it = data.make_train_iterator(config, marked)
  seen = [int(round(float(np.median(next(it)["image"])) / 100)) for _ in range(4 * n)]
  epochs = [seen[e * n:(e + 1) * n] for e in range(4)]
  for order in epochs:
    assert sorted(order) == list(range(n)), seen
  assert len({tuple(order) for order in epochs}) > 1, seen  # reshuffled between epochs
