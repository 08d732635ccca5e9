"""Prediction on users' folders: unique names, skips, dtypes, pixel size, overlays, progress."""

import functools

import numpy as np
import pytest
import tifffile
from PIL import Image

from random_nets import random_net, tta_by_hand
from unet_jax import config_lib, evaluation, image_io, predict, tiling
from unet_jax.errors import UserInputError

_net = functools.lru_cache(maxsize=None)(random_net)


def _folder(tmp_path):
  """The mixed folder of a microscopist (see the file names)."""
  rng = np.random.default_rng(0)
  folder = tmp_path / "in"
  folder.mkdir()
  grey = rng.integers(0, 255, (33, 41), dtype=np.uint8)
  Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), "LA").save(folder / "a.png")
  tifffile.imwrite(folder / "a.tif", grey, imagej=True, resolution=(2.0, 2.0),
                   metadata={"unit": "um"})
  Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).quantize(8).save(
      folder / "palette.png")
  tifffile.imwrite(folder / "two.tif", rng.integers(0, 255, (30, 40, 2), dtype=np.uint8),
                   metadata={"axes": "YXC"})
  (folder / "zero.tif").write_bytes(b"")
  return folder, grey


def test_mixed_folder(tiny_config, tmp_path):
  model, variables = _net(2, 4)
  folder, grey = _folder(tmp_path)
  out = tmp_path / "out"
  lines = []
  result = predict.predict_files(model, variables, folder, out, tiny_config, progress=False,
                                 echo=lines.append)
  failed = {p.name: reason for p, reason in result.failed}
  assert set(failed) == {"two.tif", "zero.tif"}
  assert "2 channel(s)" in failed["two.tif"] and "empty" in failed["zero.tif"]
  assert result.exit_code == 1
  summary = result.summary(5, out)
  assert "3 of 5 files segmented" in summary and "zero.tif" in summary
  notes = {(p.name, n) for p, n in result.notes}
  assert ("a.png", "alpha channel dropped") in notes
  assert not any("subfolder" in n for _, n in notes)  # this folder has none
  assert ("palette.png", "palette image resolved to RGB") in notes
  assert any("RGB converted to grey" in n for p, n in notes if p == "palette.png")
  assert any("alpha channel dropped" in line for line in lines)
  # a.png and a.tif hold the same pixels and get their own, equal results.
  prob_png = tifffile.imread(out / "a.png_prob.tif")
  prob_tif = tifffile.imread(out / "a.tif_prob.tif")
  assert prob_png.shape == (2, 33, 41) and prob_png.dtype == np.float32
  np.testing.assert_array_equal(prob_png, prob_tif)
  # The same as predicting the normalised grey image directly.
  from unet_jax.datasets import normalize
  direct = tiling.predict_tiled(model, variables, normalize(grey),
                                tile_size=config_lib.resolve(tiny_config, 1).eval_tile_size)
  np.testing.assert_allclose(prob_tif, np.moveaxis(direct, -1, 0), atol=1e-6)
  mask = tifffile.imread(out / "a.tif_mask.tif")
  np.testing.assert_array_equal(mask, np.where(direct[..., 1] > 0.5, 255, 0))
  labels = tifffile.imread(out / "a.tif_labels.tif")
  assert labels.dtype == np.uint16
  # the default instances: the paper's threshold + 4-connected components (min_size 0),
  # on the mask's pixels the same partition as scikit-image's labelling of the mask
  # (outside it, fill_gaps hands the 1-px separation borders to the cells)
  from skimage.measure import label
  ref = label(mask > 0, connectivity=1)
  assert ref.max() > 1  # several objects, so a one-object labelling would fail
  assert (labels > 0)[mask > 0].all()
  pairs = set(zip(labels[mask > 0].tolist(), ref[mask > 0].tolist()))
  assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}) == ref.max()
  # The input's pixel size (0.5 um) is in the results.
  assert image_io.read_image(out / "a.tif_prob.tif").pixel_size == pytest.approx((0.5, 0.5))
  assert image_io.read_image(out / "a.tif_labels.tif").pixel_size == pytest.approx((0.5, 0.5))
  overlay = Image.open(out / "a.tif_overlay.png")
  assert overlay.size == (41, 33)  # the image's own size and aspect
  assert not any(p.name.startswith("two.tif") for p in out.iterdir())


def test_no_clobbering(tiny_config, tmp_path):
  model, variables = _net(2, 4)
  folder, _ = _folder(tmp_path)
  (folder / "two.tif").unlink()
  (folder / "zero.tif").unlink()
  for out in (folder, folder / "results"):
    with pytest.raises(UserInputError, match="input folder"):
      predict.predict_files(model, variables, folder, out, tiny_config, progress=False)
  out = tmp_path / "out"
  first = predict.predict_files(model, variables, folder / "a.tif", out, tiny_config,
                                progress=False)
  assert first.exit_code == 0 and len(first.written) == 4
  before = (out / "a.tif_prob.tif").read_bytes()
  with pytest.raises(UserInputError, match="--overwrite"):
    predict.predict_files(model, variables, folder, out, tiny_config, progress=False)
  assert (out / "a.tif_prob.tif").read_bytes() == before
  again = predict.predict_files(model, variables, folder, out, tiny_config, progress=False,
                                overwrite=True)
  assert again.exit_code == 0 and len(again.written) == 12


def test_a_batch_stopped_by_ctrl_c_resumes_with_skip_existing(tiny_config, tmp_path,
                                                              monkeypatch):
  """Ctrl-C while the second of three files is being written: the first file's results
  are complete, nothing of the second is in OUT (its files wait in OUT/.partial and are
  removed), and --skip_existing then segments the second and third only, leaving the
  first as it was. The results equal those of a batch never stopped."""
  model, variables = _net(2, 4)
  folder, _ = _folder(tmp_path)
  for name in ("two.tif", "zero.tif", "palette.png"):
    (folder / name).unlink()
  tifffile.imwrite(folder / "b.tif", np.random.default_rng(5).integers(0, 255, (36, 30),
                                                                       dtype=np.uint8))
  files = predict.list_inputs(folder)
  assert [f.name for f in files] == ["a.png", "a.tif", "b.tif"]
  whole = tmp_path / "whole"
  predict.predict_files(model, variables, folder, whole, tiny_config, progress=False)

  out = tmp_path / "out"
  real = predict.save_overlays
  calls = []

  def stop_in_the_second(stem, *args, **kwargs):
    calls.append(stem.name)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real(stem, *args, **kwargs)

  monkeypatch.setattr(predict, "save_overlays", stop_in_the_second)
  with pytest.raises(KeyboardInterrupt):
    predict.predict_files(model, variables, folder, out, tiny_config, progress=False)
  monkeypatch.setattr(predict, "save_overlays", real)
  first = sorted(p.name for p in out.iterdir())
  assert first == sorted(predict.output_names(files[0]))  # nothing of the second file
  stamps = {name: (out / name).stat().st_mtime_ns for name in first}

  with pytest.raises(UserInputError, match="--skip_existing"):
    predict.predict_files(model, variables, folder, out, tiny_config, progress=False)
  with pytest.raises(UserInputError, match="choose one"):
    predict.predict_files(model, variables, folder, out, tiny_config, progress=False,
                          overwrite=True, skip_existing=True)
  (out / ".partial" / "left_by_a_kill").mkdir(parents=True)  # SIGKILL mid-file: no cleanup
  result = predict.predict_files(model, variables, folder, out, tiny_config, progress=False,
                                 skip_existing=True)
  assert result.done_before == [files[0]] and result.exit_code == 0
  assert not (out / ".partial").exists()
  assert "1 of them done by an earlier run" in result.summary(3, out)
  assert sorted(p.name for p in result.written) == sorted(
      predict.output_names(files[1]) + predict.output_names(files[2]))
  assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps
  assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in whole.iterdir())
  for f in whole.glob("*.tif"):
    np.testing.assert_array_equal(tifffile.imread(out / f.name), tifffile.imread(f))


def test_subfolders_of_an_input_folder_are_named_not_searched(tiny_config, tmp_path):
  model, variables = _net(2, 4)
  folder = tmp_path / "in"
  (folder / "day2").mkdir(parents=True)
  (folder / ".hidden").mkdir()
  image = np.random.default_rng(0).integers(0, 255, (30, 30), dtype=np.uint8)
  tifffile.imwrite(folder / "a.tif", image)
  tifffile.imwrite(folder / "day2" / "b.tif", image)
  lines = []
  result = predict.predict_files(model, variables, folder, tmp_path / "out", tiny_config,
                                 progress=False, echo=lines.append)
  assert result.summary(1, tmp_path / "out").startswith("1 of 1 files segmented")
  note = ("1 subfolder(s) not searched (day2): give them as --input to segment their images")
  assert result.notes == [(folder, note)] and lines == [f"{folder}: {note}"]


def test_bad_inputs_are_user_errors(tiny_config, tmp_path):
  model, variables = _net(2, 4)
  with pytest.raises(UserInputError, match="not found"):
    predict.list_inputs(tmp_path / "missing.tif")
  with pytest.raises(UserInputError, match="no images"):
    predict.list_inputs(tmp_path)
  with pytest.raises(UserInputError, match="threshold"):
    predict.predict_files(model, variables, tmp_path, tmp_path / "o", tiny_config, threshold=1.5)


def test_unwritable_out_is_a_user_error(tiny_config, tmp_path):
  """An output folder that is a file or lies under one: UserInputError, not an OSError."""
  model, variables = _net(2, 4)
  image = tmp_path / "cells.tif"
  tifffile.imwrite(image, np.zeros((37, 45), np.uint8))
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(UserInputError, match="is a file, not a folder"):
    predict.predict_files(model, variables, image, blocker, tiny_config, progress=False)
  with pytest.raises(UserInputError, match=r"not writable \(Not a directory\)"):
    predict.predict_files(model, variables, image, blocker / "o", tiny_config, progress=False)


def test_stack_and_threshold(tiny_config, tmp_path):
  model, variables = _net(2, 4)
  stack = np.random.default_rng(1).integers(0, 255, (3, 25, 31), dtype=np.uint8)
  tifffile.imwrite(tmp_path / "stack.tif", stack, metadata={"axes": "ZYX"})
  for t in (0.3, 0.7):
    out = tmp_path / f"out{t}"
    predict.predict_files(model, variables, tmp_path / "stack.tif", out, tiny_config,
                          threshold=t, progress=False)
    probs = tifffile.imread(out / "stack.tif_prob.tif")
    assert probs.shape == (3, 2, 25, 31)
    np.testing.assert_array_equal(tifffile.imread(out / "stack.tif_mask.tif"),
                                  np.where(probs[:, 1] > t, 255, 0))
    assert (out / "stack.tif_overlay_p002.png").is_file()


def test_label_dtype_past_65535_objects():
  assert predict.label_dtype(65535) == np.uint16
  assert predict.label_dtype(65536) == np.uint32


def test_large_image_overlay_is_downscaled_plus_full_resolution_crop(tmp_path):
  rng = np.random.default_rng(0)
  image = rng.random((300, 900, 1)).astype(np.float32)
  labels = np.zeros((300, 900), np.int32)
  labels[100:140, 100:140] = 1
  written = predict.save_overlays(tmp_path / "big", image, labels, max_side=200)
  assert [p.name for p in written] == ["big.png", "big_crop.png"]
  assert Image.open(written[0]).size == (200, 67)  # aspect 3:1 kept
  assert Image.open(written[1]).size == (200, 200)  # full resolution


def test_tile_progress_moves_during_one_image(tiny_config):
  model, variables = _net(2, 4)
  calls = []
  image = np.random.default_rng(0).normal(size=(150, 170)).astype(np.float32)
  tiling.predict_tiled(model, variables, image, tile_size=60, batch_size=2,
                       on_tiles=lambda done, total: calls.append((done, total)))
  plan = tiling.plan_tiles(150, 170, 60, 2)
  assert calls[-1] == (plan.num_tiles, plan.num_tiles) and plan.num_tiles > 4
  assert [d for d, _ in calls] == sorted({d for d, _ in calls}) and len(calls) > 2


def test_cell_model_writes_instance_labels_of_the_input_size(tiny_config, tmp_path):
  """A cell config (watershed instances): uint16 instance labels [H, W] of the input's
  size, equal to instances.from_probability of the written p(cell), and a colour overlay."""
  from unet_jax import instances
  model, variables = _net(2, 4)
  c = tiny_config
  c.instances.method, c.instances.min_size, c.instances.seed_threshold = "watershed", 3, 0.6
  image = np.random.default_rng(1).integers(0, 255, (70, 53), dtype=np.uint8)
  tifffile.imwrite(tmp_path / "cells.tif", image)
  predict.predict_files(model, variables, tmp_path / "cells.tif", tmp_path / "out", c,
                        progress=False)
  labels = tifffile.imread(tmp_path / "out" / "cells.tif_labels.tif")
  assert labels.shape == (70, 53) and labels.dtype == np.uint16 and labels.max() > 0
  prob = tifffile.imread(tmp_path / "out" / "cells.tif_prob.tif")[1]
  expected = instances.from_probability(prob, instances.InstanceParams.from_config(c))
  np.testing.assert_array_equal(labels, expected)
  with Image.open(tmp_path / "out" / "cells.tif_overlay.png") as overlay:
    assert overlay.size == (53, 70)  # the image's own aspect
    rgb = np.asarray(overlay.convert("RGB"))
  # objects are tinted in different colours
  colours = {tuple(rgb[labels == k].mean(0).round()) for k in np.unique(labels)[1:4]}
  assert len(colours) == min(3, labels.max())


def _direct_prob(model, variables, config, page):
  """``[K, H, W]`` p of one page, predicted directly (the reference for a stack's pages)."""
  from unet_jax.datasets import normalize
  tile = config_lib.resolve(config, 1).eval_tile_size
  return np.moveaxis(tiling.predict_tiled(model, variables, normalize(page), tile_size=tile), -1, 0)


def test_stacks_keep_their_axes_spacing_and_frame_interval(tiny_config, tmp_path):
  """A time-lapse stays T with its finterval, a Z stack Z with its spacing, a Z x T
  stack becomes ImageJ's T x Z with each page at its place."""
  model, variables = _net(2, 4)
  rng = np.random.default_rng(2)
  folder = tmp_path / "in"
  folder.mkdir()
  tyx = rng.integers(0, 255, (3, 25, 31), dtype=np.uint8)
  tifffile.imwrite(folder / "tyx.tif", tyx, imagej=True, resolution=(2.0, 2.0),
                   metadata={"axes": "TYX", "finterval": 5, "unit": "um"})
  zyx = rng.integers(0, 255, (2, 25, 31), dtype=np.uint8)
  tifffile.imwrite(folder / "zyx.tif", zyx, imagej=True, resolution=(4.0, 4.0),
                   metadata={"axes": "ZYX", "spacing": 2.0, "unit": "um"})
  zt = rng.integers(0, 255, (2, 3, 25, 31), dtype=np.uint8)  # OME: Z slower than T
  tifffile.imwrite(folder / "zt.ome.tif", zt, metadata={
      "axes": "ZTYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 1.5,
      "TimeIncrement": 10.0})
  out = tmp_path / "out"
  result = predict.predict_files(model, variables, folder, out, tiny_config, progress=False)
  assert result.exit_code == 0, result.failed
  want = {"tyx.tif": ("TCYX", "TYX", {"frames": 3, "finterval": 5.0}),
          "zyx.tif": ("ZCYX", "ZYX", {"slices": 2, "spacing": 2.0}),
          "zt.ome.tif": ("TZCYX", "TZYX", {"frames": 3, "slices": 2, "spacing": 1.5,
                                           "finterval": 10.0})}
  for name, (prob_axes, mask_axes, meta) in want.items():
    for suffix, axes in (("_prob.tif", prob_axes), ("_mask.tif", mask_axes),
                         ("_labels.tif", mask_axes)):
      with tifffile.TiffFile(out / (name + suffix)) as tif:
        assert tif.series[0].axes == axes, (name, suffix)
        assert {k: tif.imagej_metadata.get(k) for k in meta} == meta, (name, suffix)
        assert tif.imagej_metadata["unit"] == "um"
  probs = tifffile.imread(out / "tyx.tif_prob.tif")
  np.testing.assert_allclose(probs[2], _direct_prob(model, variables, tiny_config, tyx[2]),
                             atol=1e-6)
  probs = tifffile.imread(out / "zt.ome.tif_prob.tif")  # [T, Z, K, H, W]
  assert probs.shape == (3, 2, 2, 25, 31)
  for t, z in ((0, 1), (2, 0)):
    np.testing.assert_allclose(probs[t, z], _direct_prob(model, variables, tiny_config,
                                                         zt[z, t]), atol=1e-6)
  masks = tifffile.imread(out / "zt.ome.tif_mask.tif")
  np.testing.assert_array_equal(masks, np.where(probs[:, :, 1] > 0.5, 255, 0))


def test_dpi_input_gives_uncalibrated_results(tiny_config, tmp_path):
  """A 72-dpi TIFF (an image editor's default) is not 352.8 um per pixel."""
  model, variables = _net(2, 4)
  image = np.random.default_rng(0).integers(0, 255, (25, 31), dtype=np.uint8)
  tifffile.imwrite(tmp_path / "editor.tif", image, resolution=(72, 72), resolutionunit="INCH")
  out = tmp_path / "out"
  predict.predict_files(model, variables, tmp_path / "editor.tif", out, tiny_config,
                        progress=False)
  for suffix in ("_prob.tif", "_mask.tif", "_labels.tif"):
    with tifffile.TiffFile(out / ("editor.tif" + suffix)) as tif:
      assert "unit" not in tif.imagej_metadata, suffix
      assert tif.pages[0].tags["XResolution"].value == (1, 1), suffix


def test_corrupt_tiff_is_skipped_with_one_clear_line(tiny_config, tmp_path, caplog):
  model, variables = _net(2, 4)
  folder = tmp_path / "in"
  folder.mkdir()
  tifffile.imwrite(folder / "good.tif", np.zeros((25, 31), np.uint8))
  (folder / "bad.tif").write_bytes(b"II*\x00garbage")
  (folder / "empty.tif").write_bytes(b"")
  lines = []
  out = tmp_path / "out"
  result = predict.predict_files(model, variables, folder, out, tiny_config, progress=False,
                                 echo=lines.append)
  failed = dict(result.failed)
  assert failed[folder / "bad.tif"].startswith("not a readable TIFF (")
  assert result.exit_code == 1  # the folder's other files were segmented
  nothing = predict.predict_files(model, variables, [folder / "bad.tif", folder / "empty.tif"],
                                  tmp_path / "none", tiny_config, progress=False)
  assert len(nothing.failed) == 2 and not nothing.written
  assert nothing.exit_code == 2  # none could be segmented: the CLIs' code for bad input
  skips = [line for line in lines if line.startswith("skipped")]
  summary = result.summary(3, out).splitlines()
  assert f"skipped {folder / 'bad.tif'}: not a readable TIFF (" in skips[0]
  assert f"  {folder / 'bad.tif'}: not a readable TIFF (" in summary[2]
  assert f"  {folder / 'empty.tif'} is empty (0 bytes)" == summary[3]
  for line in skips + summary[2:]:  # the path once per line
    assert line.count(str(folder)) == 1, line
  assert not caplog.records  # no tifffile warning besides the line


def test_tta_probabilities_written_are_the_mean_of_the_eight_views(tiny_config, tmp_path):
  """``predict_files(tta=True)``: the written ``_prob.tif`` against the mean, built here,
  of the non-TTA probabilities of the 8 flipped/rotated normalised images mapped back
  (random asymmetric net, H != W); the mask is that mean's p(cell) > 0.5; without
  ``tta`` the file differs."""
  from unet_jax.datasets import normalize
  model, variables = _net(2, 4)
  grey = np.random.default_rng(1).integers(0, 255, (33, 41), dtype=np.uint8)
  tifffile.imwrite(tmp_path / "a.tif", grey)
  plain = functools.partial(tiling.predict_tiled, model, variables, tile_size=48)
  want = np.moveaxis(tta_by_hand(plain, normalize(grey))[0], -1, 0)
  predict.predict_files(model, variables, tmp_path / "a.tif", tmp_path / "tta", tiny_config,
                        tta=True, tile_size=48, progress=False)
  got = tifffile.imread(tmp_path / "tta" / "a.tif_prob.tif")
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
  mask = tifffile.imread(tmp_path / "tta" / "a.tif_mask.tif")
  np.testing.assert_array_equal(mask, np.where(want[1] > 0.5, 255, 0))
  predict.predict_files(model, variables, tmp_path / "a.tif", tmp_path / "plain", tiny_config,
                        tile_size=48, progress=False)
  assert np.abs(tifffile.imread(tmp_path / "plain" / "a.tif_prob.tif") - got).max() > 1e-3
