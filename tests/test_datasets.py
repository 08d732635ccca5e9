"""Readers, splits, normalisation, synthetic data and user-facing errors."""

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from configs import default
from tests import data_helpers
from unet_jax import datasets, synthetic
from unet_jax.errors import UserInputError


def _config(dataset, data_dir="", train="", val=""):
  c = default.get_config()
  c.dataset, c.data_dir, c.train_indices, c.val_indices = dataset, str(data_dir), train, val
  return c


# ----------------------------------------------------------------------------- real data


def test_isbi_real_files(data_root):
  c = _config("isbi2012", data_root, "0-24", "25-29")
  train, val, test = (datasets.load_split(c, s) for s in ("train", "val", "test"))
  assert (len(train), len(val), len(test)) == (25, 5, 30)
  assert test.labels is None and test.instances is None
  raw = tifffile.imread(data_root / "isbi2012" / "train-labels.tif")
  vol = tifffile.imread(data_root / "isbi2012" / "train-volume.tif")
  np.testing.assert_array_equal(val.labels[0], raw[25] == 255)
  img = val.images[4]
  assert img.shape == (512, 512, 1) and img.dtype == np.float32
  np.testing.assert_allclose(img[..., 0], (vol[29] - vol[29].mean()) / vol[29].std(), atol=1e-4)
  assert train.labels[0].dtype == np.int32 and train.instances[0].dtype == np.int32
  # Instances: 4-connected cell components; every cell pixel has an instance.
  n = ndimage.label(raw[0] == 255)[1]
  assert train.instances[0].max() == n > 20
  np.testing.assert_array_equal(train.instances[0] > 0, raw[0] == 255)
  assert train.names[3] == "train-volume.tif:03" and train.num_channels == 1


def test_dic_hela_real_files(data_root):
  c = _config("dic_hela", data_root, "0-59", "60-83")
  train, val = datasets.load_split(c, "train"), datasets.load_split(c, "val")
  assert (len(train), len(val)) == (60, 24)
  seg = data_root / "ctc" / "DIC-C2DH-HeLa" / "01_ST" / "SEG"
  mask = np.asarray(Image.open(seg / "man_seg060.tif"))  # Pillow decodes LZW on its own
  np.testing.assert_array_equal(val.instances[0], mask)
  # labels: the cells with a background gap where two of them touch (paper Fig. 3)
  touching = val.labels[0] != (mask > 0)
  assert 0 < touching.sum() < 0.02 * mask.size
  assert np.all(mask[touching] > 0) and np.all(val.labels[0][~touching] == (mask > 0)[~touching])
  comps, n = ndimage.label(val.labels[0] == 1)
  assert n >= len(np.unique(mask)) - 1
  assert all(len(np.unique(mask[comps == c])) == 1 for c in range(1, n + 1))
  assert val.names[0] == "01/t060" and val.images[0].shape == (512, 512, 1)
  assert 10 <= len(np.unique(train.instances[0])) - 1 <= 18  # the data README: 10-18 cells per frame


# ----------------------------------------------------------------------------- helpers


@pytest.mark.parametrize("spec,n,empty_all,want", [
    ("0,3,5-7", 10, True, [0, 3, 5, 6, 7]), ("25-29", 30, False, [25, 26, 27, 28, 29]),
    ("", 4, True, [0, 1, 2, 3]), ("", 4, False, []), (" 2 - 3 ,1", 4, True, [1, 2, 3])])
def test_parse_indices(spec, n, empty_all, want):
  assert datasets.parse_indices(spec, n, empty_means_all=empty_all) == want


@pytest.mark.parametrize("spec,match", [("5-3", "expected indices"), ("a", "expected indices"),
                                        ("0-30", "index 30.*only 30 images")])
def test_parse_indices_errors(spec, match):
  with pytest.raises(UserInputError, match=match):
    datasets.parse_indices(spec, 30, empty_means_all=True, field="train_indices")


def _split_config(train, val, heldout):
  import ml_collections
  return ml_collections.ConfigDict(
      {"train_indices": train, "val_indices": val, "heldout_indices": heldout})


def test_split_indices_train_empty_means_the_rest():
  """An empty train_indices trains on every image not in validation or held out, so that
  setting only a validation split never trains on it."""
  def splits(train, val, heldout, n):
    c = _split_config(train, val, heldout)
    return {s: datasets.split_indices(c, n, s) for s in datasets.SPLITS}

  assert splits("", "3,5", "7-8", 10) == {
      "train": [0, 1, 2, 4, 6, 9], "val": [3, 5], "heldout": [7, 8]}
  assert splits("", "", "", 3)["train"] == [0, 1, 2]
  assert splits("1", "", "0", 3) == {"train": [1], "val": [], "heldout": [0]}
  # an explicit training split does not need the others to fit this dataset
  assert datasets.split_indices(_split_config("0-5", "6-7", "8-9"), 6, "train") == list(range(6))
  with pytest.raises(UserInputError, match="val_indices = '6-7' asks for index 7"):
    datasets.split_indices(_split_config("", "6-7", ""), 6, "train")
  with pytest.raises(UserInputError, match="no images left to train on: config.val_indices = "
                     "'0-3' and config.heldout_indices = '4-5' take all 6"):
    datasets.split_indices(_split_config("", "0-3", "4-5"), 6, "train")


def test_check_splits_refuses_exactly_the_overlapping_specs():
  """Against sets of the parsed indices (brute force), over random specs; the message
  names both fields and the first shared indices."""
  rng = np.random.default_rng(0)

  def spec():
    parts = []
    for _ in range(rng.integers(0, 3)):
      lo = int(rng.integers(0, 30))
      parts.append(str(lo) if rng.random() < 0.4 else f"{lo}-{lo + int(rng.integers(0, 9))}")
    return ",".join(parts)

  refused = 0
  for _ in range(300):
    specs = [spec() for _ in range(3)]
    sets = [set(datasets.parse_indices(x, 100, empty_means_all=False)) for x in specs]
    pairs = [(0, 1), (0, 2), (1, 2)]
    overlap = next(((a, b) for a, b in pairs if sets[a] & sets[b]), None)
    if overlap is None:
      datasets.check_splits(_split_config(*specs))
      continue
    refused += 1
    a, b = overlap
    with pytest.raises(UserInputError) as e:
      datasets.check_splits(_split_config(*specs))
    fields = ("train_indices", "val_indices", "heldout_indices")
    shared = sorted(sets[a] & sets[b])
    assert f"config.{fields[a]} = {specs[a]!r} and config.{fields[b]} = {specs[b]!r}" in str(e.value)
    assert f"share image(s) {', '.join(map(str, shared[:5]))}" in str(e.value)
    assert ("..." in str(e.value)) == (len(shared) > 5)
  assert 30 < refused < 270  # both outcomes exercised


def test_check_splits_needs_no_memory_for_huge_ranges():
  with pytest.raises(UserInputError, match="share image.s. 5: validation"):
    datasets.check_splits(_split_config("0-99999999999999", "5", ""))


def test_normalize_per_channel():
  x = np.random.default_rng(0).integers(0, 65535, (16, 12, 3)).astype(np.uint16)
  y = datasets.normalize(x)
  assert y.dtype == np.float32 and y.shape == (16, 12, 3)
  np.testing.assert_allclose(y.mean(axis=(0, 1)), 0, atol=1e-5)
  np.testing.assert_allclose(y.std(axis=(0, 1)), 1, atol=1e-4)
  assert datasets.normalize(np.zeros((4, 4))).max() == 0  # constant image: no NaN


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_cells_and_membranes():
  images, instances = synthetic.generate(2, 256, 40, seed=3)
  img, inst = images[1], instances[1]
  assert img.shape == inst.shape == (256, 256) and img.dtype == np.uint8
  assert 34 <= inst.max() <= 40 and set(np.unique(inst)) == set(range(inst.max() + 1))
  # Membranes separate the cells: no two 4-neighbours belong to different cells, so
  # the connected components of the cell mask are exactly the instances.
  for a, b in ((inst[1:], inst[:-1]), (inst[:, 1:], inst[:, :-1])):
    assert not np.any((a > 0) & (b > 0) & (a != b))
  assert ndimage.label(inst > 0)[1] == inst.max()
  assert img[inst == 0].mean() + 40 < img[inst > 0].mean()  # dark membranes
  assert 0.05 < (inst == 0).mean() < 0.3


def test_synthetic_deterministic_and_split():
  c = _config("synthetic", train="0-2", val="3")
  c.synthetic.num_images, c.synthetic.size, c.synthetic.cells = 4, 48, 6
  a, b = datasets.load_split(c, "train"), datasets.load_split(c, "train")
  val = datasets.load_split(c, "val")
  assert len(a) == 3 and len(val) == 1 and val.names == ["synthetic:003"]
  np.testing.assert_array_equal(a.images[2], b.images[2])
  np.testing.assert_array_equal(a.labels[0], a.instances[0] > 0)
  c.seed = 1
  assert not np.array_equal(datasets.load_split(c, "val").instances[0], val.instances[0])


# ----------------------------------------------------------------------------- other layouts


def test_ctc_reader_u373_layout_16bit_lzw(tmp_path):
  images, masks = data_helpers.write_ctc(tmp_path / "ctc", "PhC-C2DH-U373", frames=4)
  data = datasets.load_split(_config("phc_u373", tmp_path, "1-3"), "train")
  assert data.names == ["01/t001", "01/t002", "01/t003"]
  np.testing.assert_array_equal(data.instances[1], masks[2])
  np.testing.assert_allclose(data.images[0][..., 0], datasets.normalize(images[1])[..., 0])


def test_ctc_gold_truth_uses_annotated_frames(tmp_path):
  data_helpers.write_ctc(tmp_path, "DIC-C2DH-HeLa", frames=6, truth="GT", mask_frames=[1, 4])
  c = _config("dic_hela", tmp_path)
  with pytest.raises(UserInputError, match="ctc_truth=gt"):
    datasets.load_split(c, "train")
  c.ctc_truth = "gt"
  assert datasets.load_split(c, "train").names == ["01/t001", "01/t004"]


def _folder(tmp_path, masks, images=None):
  rng = np.random.default_rng(0)
  (tmp_path / "images").mkdir(parents=True, exist_ok=True)
  (tmp_path / "masks").mkdir(exist_ok=True)
  for name, mask in masks.items():
    image = rng.integers(0, 255, mask.shape + (3,), dtype=np.uint8) if images is None \
        else images[name]
    Image.fromarray(image).save(tmp_path / "images" / f"{name}.png")
    tifffile.imwrite(tmp_path / "masks" / f"{name}.tif", mask)


def test_folder_dataset_binary_and_instances(tmp_path):
  binary = np.zeros((20, 30), np.uint8)
  binary[2:6, 2:6] = binary[10:15, 10:25] = 255
  _folder(tmp_path / "b", {"a": binary, "b": binary // 255})
  data = datasets.load_split(_config("folder", tmp_path / "b"), "train")
  assert data.names == ["a", "b"] and data.num_channels == 3
  assert data.instances[0].max() == 2
  np.testing.assert_array_equal(data.labels[1], binary > 0)
  inst = np.zeros((20, 30), np.uint16)
  inst[0:10, 0:10], inst[10:20, 0:10] = 5, 9  # touching instances stay separate
  _folder(tmp_path / "i", {"a": inst})
  c = _config("folder", tmp_path / "i")
  c.mask_kind = "instances"
  data = datasets.load_split(c, "train")
  assert set(np.unique(data.instances[0])) == {0, 5, 9}
  gap = np.zeros_like(inst, bool)
  gap[9:11, 0:10] = True  # rows 9 and 10: where instances 5 and 9 touch
  np.testing.assert_array_equal(data.labels[0], (inst > 0) & ~gap)


def test_folder_mask_of_three_values_is_not_silently_binary(tmp_path):
  mask = np.zeros((20, 30), np.uint8)
  mask[2:8, 2:8], mask[10:15, 10:25] = 1, 2
  _folder(tmp_path, {"cells": mask})
  with pytest.raises(UserInputError, match=r"cells.tif: mask_kind='binary' but the mask holds 3 "
                     r"values \[0, 1, 2\].*mask_kind=instances.*num_classes=3"):
    datasets.load_split(_config("folder", tmp_path), "train")
  c = _config("folder", tmp_path)
  c.mask_kind, c.num_classes = "classes", 3
  data = datasets.load_split(c, "train")
  np.testing.assert_array_equal(data.labels[0], mask)
  assert data.instances[0].max() == 2  # one object per class here
  c.num_classes = 2
  with pytest.raises(UserInputError, match=r"num_classes=2 but the mask holds \[2\]"):
    datasets.load_split(c, "train")


def test_folder_mixed_channels_and_palette_images(tmp_path):
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 255, (20, 30), dtype=np.uint8)
  rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
  mask = np.zeros((20, 30), np.uint8)
  mask[3:9, 3:9] = 1
  _folder(tmp_path, {"g": mask, "c": mask}, images={"g": grey, "c": rgb})
  with pytest.raises(UserInputError, match=r"different channel counts \[1, 3\].*in_channels"):
    datasets.load_split(_config("folder", tmp_path), "train")
  c = _config("folder", tmp_path)
  c.in_channels = 1
  data = datasets.load_split(c, "train")
  from skimage.color import rgb2gray
  np.testing.assert_allclose(data.images[0][..., 0], datasets.normalize(rgb2gray(rgb))[..., 0],
                             atol=1e-4)  # "c" sorts first; RGB -> luminance
  # A palette mask: its indices are the labels, not its colours.
  pal = Image.fromarray(mask, "P")
  pal.putpalette([0, 0, 0, 255, 0, 255] + [0] * 762)
  (tmp_path / "masks" / "g.tif").unlink()
  pal.save(tmp_path / "masks" / "g.png")
  np.testing.assert_array_equal(datasets.load_split(c, "train").labels[1], mask)


def test_training_and_validation_images_of_different_channel_counts(tmp_path, tiny_config):
  """RGB training images and a grey validation image (in_channels 0: each split takes its
  own count) are refused before any step, naming both counts, a file and the fix; not
  found at the first validation as a mismatch with the model."""
  from unet_jax import train_lib
  rng = np.random.default_rng(0)
  mask = np.zeros((20, 30), np.uint8)
  mask[3:9, 3:9] = 1
  _folder(tmp_path / "d", {"c": mask, "g": mask},
          images={"c": rng.integers(0, 255, (20, 30, 3), dtype=np.uint8),
                  "g": rng.integers(0, 255, (20, 30), dtype=np.uint8)})
  c = tiny_config
  c.dataset, c.data_dir, c.mask_kind = "folder", str(tmp_path / "d"), "binary"
  c.train_indices, c.val_indices, c.heldout_indices, c.eval_every = "0", "1", "", 1
  with pytest.raises(UserInputError, match=r"training images have 3 channel\(s\) and the "
                     r"validation images 1 \(e\.g\. g\); set --config\.in_channels=1"):
    train_lib.train_and_evaluate(c, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "checkpoints").exists() or not any(
      (tmp_path / "w" / "checkpoints").iterdir())


def test_in_channels_the_grey_built_in_data_cannot_have(tmp_path, tiny_config):
  """--config.in_channels=3 on grey built-in data was ignored (the run recorded 1): now
  refused before any step."""
  from unet_jax import train_lib
  tiny_config.in_channels = 3
  with pytest.raises(UserInputError, match=r"--config\.in_channels=3, but the synthetic "
                     r"images have 1 channel\(s\): set it to 0 \(taken from the data\) or 1"):
    train_lib.train_and_evaluate(tiny_config, str(tmp_path / "w"))


# ----------------------------------------------------------------------------- errors


def test_missing_data_dir_says_how_to_download(tmp_path, monkeypatch):
  monkeypatch.delenv("UNET_JAX_DATA", raising=False)
  with pytest.raises(UserInputError, match="UNET_JAX_DATA.*download --dataset isbi2012"):
    datasets.load_split(_config("isbi2012"), "train")
  with pytest.raises(UserInputError, match="missing or empty.*data_tool download --dataset dic_hela"):
    datasets.load_split(_config("dic_hela", tmp_path / "nope"), "train")
  (tmp_path / "other.txt").write_text("x")
  with pytest.raises(UserInputError, match="train-volume.tif not found"):
    datasets.load_split(_config("isbi2012", tmp_path), "train")


def test_truncated_tiff_names_the_file(tmp_path):
  data_helpers.write_isbi(tmp_path / "isbi2012")
  bad = tmp_path / "isbi2012" / "train-labels.tif"
  bad.write_bytes(bad.read_bytes()[:1500])
  with pytest.raises(UserInputError, match="cannot read .*train-labels.tif"):
    datasets.load_split(_config("isbi2012", tmp_path), "train")


def test_nan_pixels_are_refused_where_every_reader_reads(tmp_path):
  """Own data, ISBI and CTC: one NaN pixel made the normalised image all NaN (silent seg 0
  on validation, a NaN loss "lower the learning rate" in training)."""
  rng = np.random.default_rng(0)
  # folder dataset: the NaN image is the validation image
  image = rng.random((20, 30)).astype(np.float32)
  image[1, 2] = np.nan
  mask = np.zeros((20, 30), np.uint8)
  mask[3:9, 3:9] = 1
  _folder(tmp_path / "own", {"a": mask}, images={"a": np.full((20, 30), 7, np.uint8)})
  tifffile.imwrite(tmp_path / "own/images/b.tif", image)
  tifffile.imwrite(tmp_path / "own/masks/b.tif", mask)
  c = _config("folder", tmp_path / "own", "0", "1")
  assert len(datasets.load_split(c, "train")) == 1
  with pytest.raises(UserInputError, match=r"images/b\.tif: 1 NaN/Inf pixel\(s\); fix or drop"):
    datasets.load_split(c, "val")
  # ISBI volume (one array for all slices) and a CTC frame: datasets.read_image_file
  volume, _ = data_helpers.write_isbi(tmp_path / "isbi", n=3)
  volume = volume.astype(np.float32)
  volume[1, 0, :2] = [np.nan, np.inf]
  tifffile.imwrite(tmp_path / "isbi/train-volume.tif", volume)
  with pytest.raises(UserInputError, match=r"train-volume\.tif: 2 NaN/Inf pixel\(s\); fix"):
    datasets.load_split(_config("isbi2012", tmp_path / "isbi", "0"), "train")
  images, _ = data_helpers.write_ctc(tmp_path / "ctc", "DIC-C2DH-HeLa", frames=3)
  frame = images[2].astype(np.float64)
  frame[5, 5] = -np.inf
  tifffile.imwrite(tmp_path / "ctc/DIC-C2DH-HeLa/01/t002.tif", frame)
  c = _config("dic_hela", tmp_path / "ctc", "0-1", "2")
  assert len(datasets.load_split(c, "train")) == 2  # files are read once the split is chosen
  with pytest.raises(UserInputError, match=r"01/t002\.tif: 1 NaN/Inf pixel\(s\); fix"):
    datasets.load_split(c, "val")


def test_count_and_value_mismatch(tmp_path):
  volume, labels = data_helpers.write_isbi(tmp_path, n=3)  # files directly in data_dir
  assert len(datasets.load_split(_config("isbi2012", tmp_path), "train")) == 3
  tifffile.imwrite(tmp_path / "train-labels.tif", labels[:2])
  with pytest.raises(UserInputError, match="3 images but 2 label images"):
    datasets.load_split(_config("isbi2012", tmp_path), "train")
  labels[1, 0, 0] = 7
  tifffile.imwrite(tmp_path / "train-labels.tif", labels)
  with pytest.raises(UserInputError, match=r"0 \(membrane\) or 255.*\[7\]"):
    datasets.load_split(_config("isbi2012", tmp_path), "train")


def test_folder_mismatches(tmp_path):
  (tmp_path / "images").mkdir()
  (tmp_path / "masks").mkdir()
  tifffile.imwrite(tmp_path / "images/a.tif", np.zeros((8, 8), np.uint8))
  tifffile.imwrite(tmp_path / "images/b.tif", np.zeros((8, 8), np.uint8))
  tifffile.imwrite(tmp_path / "masks/a.tif", np.zeros((8, 9), np.uint8))
  with pytest.raises(UserInputError, match=r"2 images .* 1 masks.*no mask for \['b.tif'\]"):
    datasets.load_split(_config("folder", tmp_path), "train")
  tifffile.imwrite(tmp_path / "masks/b.tif", np.zeros((8, 8), np.uint8))
  with pytest.raises(UserInputError, match=r"a: image is \(8, 8\) but its label is \(8, 9\)"):
    datasets.load_split(_config("folder", tmp_path, "0"), "train")


def test_unknown_dataset_and_split():
  with pytest.raises(UserInputError, match="unknown dataset 'isbi'.*isbi2012"):
    datasets.load_split(_config("isbi"), "train")
  with pytest.raises(UserInputError, match="unknown split"):
    datasets.load_split(_config("synthetic"), "training")
