"""The image reader: pages vs channels from metadata, alpha, palettes, bit depths, pixel size."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_jax import image_io
from unet_jax.errors import UserInputError


def _rng():
  return np.random.default_rng(0)


def test_grey_alpha_png_is_one_grey_image(tmp_path):
  grey = _rng().integers(0, 255, (30, 40), dtype=np.uint8)
  Image.fromarray(np.stack([grey, np.full_like(grey, 200)], -1), "LA").save(tmp_path / "a.png")
  im = image_io.read_image(tmp_path / "a.png")
  assert len(im.pages) == 1 and im.pages[0].shape == (30, 40, 1)
  np.testing.assert_array_equal(im.pages[0][..., 0], grey)
  assert im.notes == ["alpha channel dropped"]


def test_palette_png_is_resolved_through_its_colours(tmp_path):
  rgb = _rng().integers(0, 255, (30, 40, 3), dtype=np.uint8)
  pal = Image.fromarray(rgb).quantize(colors=16)
  pal.save(tmp_path / "p.png")
  expected = np.asarray(pal.convert("RGB"))  # Pillow's own resolution of the palette
  im = image_io.read_image(tmp_path / "p.png")
  assert im.rgb and "palette image resolved to RGB" in im.notes
  np.testing.assert_array_equal(im.pages[0], expected)
  # For a grey model: luminance of the resolved colours (skimage's rgb2gray weights).
  from skimage.color import rgb2gray
  grey = image_io.to_channels(im.pages[0], 1, im.rgb, "p.png")
  np.testing.assert_allclose(grey[..., 0], rgb2gray(expected) * 255, atol=1e-3)


def test_palette_mask_keeps_its_indices(tmp_path):
  labels = (np.arange(30 * 40).reshape(30, 40) % 3).astype(np.uint8)
  im = Image.fromarray(labels, "P")
  im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
  im.save(tmp_path / "m.png")
  read = image_io.read_image(tmp_path / "m.png", resolve_palette=False)
  np.testing.assert_array_equal(read.pages[0][..., 0], labels)


def test_tiff_channels_and_pages_come_from_the_axes(tmp_path):
  two = _rng().integers(0, 255, (30, 40, 2), dtype=np.uint8)
  tifffile.imwrite(tmp_path / "yxc.tif", two, metadata={"axes": "YXC"})
  im = image_io.read_image(tmp_path / "yxc.tif")
  assert len(im.pages) == 1 and im.pages[0].shape == (30, 40, 2)
  np.testing.assert_array_equal(im.pages[0], two)
  # ImageJ hyperstack: 3 z-slices of 2 channels.
  zcyx = _rng().integers(0, 60000, (3, 2, 30, 40), dtype=np.uint16)
  tifffile.imwrite(tmp_path / "ij.tif", zcyx, imagej=True, metadata={"axes": "ZCYX"})
  im = image_io.read_image(tmp_path / "ij.tif")
  assert len(im.pages) == 3 and im.pages[0].shape == (30, 40, 2)
  np.testing.assert_array_equal(im.pages[2], np.moveaxis(zcyx[2], 0, -1))
  # A plain stack of pages.
  stack = _rng().integers(0, 255, (5, 30, 40), dtype=np.uint8)
  tifffile.imwrite(tmp_path / "stack.tif", stack)
  im = image_io.read_image(tmp_path / "stack.tif")
  assert len(im.pages) == 5 and im.pages[4].shape == (30, 40, 1)


def test_hwc_tiff_without_axes_is_refused_not_misread(tmp_path):
  tifffile.imwrite(tmp_path / "q.tif", np.zeros((30, 40, 2), np.uint8))
  with pytest.raises(UserInputError, match="axes"):
    image_io.read_image(tmp_path / "q.tif")


def test_rgba_tiff_drops_alpha(tmp_path):
  rgba = _rng().integers(0, 255, (30, 40, 4), dtype=np.uint8)
  tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
  im = image_io.read_image(tmp_path / "rgba.tif")
  assert im.rgb and im.notes == ["alpha channel dropped"]
  np.testing.assert_array_equal(im.pages[0], rgba[..., :3])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32, np.float64])
def test_bit_depths_round_trip(tmp_path, dtype):
  x = (_rng().random((20, 24)) * 1000).astype(dtype)
  tifffile.imwrite(tmp_path / "x.tif", x)
  np.testing.assert_array_equal(image_io.read_image(tmp_path / "x.tif").pages[0][..., 0], x)


def test_16_bit_png_and_jpeg(tmp_path):
  x = (_rng().random((20, 24)) * 60000).astype(np.uint16)
  Image.fromarray(x).save(tmp_path / "x.png")
  np.testing.assert_array_equal(image_io.read_image(tmp_path / "x.png").pages[0][..., 0], x)
  Image.fromarray((x // 256).astype(np.uint8)).save(tmp_path / "x.jpg")
  assert image_io.read_image(tmp_path / "x.jpg").pages[0].shape == (20, 24, 1)


def test_pixel_size_is_read_and_written(tmp_path):
  x = np.zeros((20, 24), np.uint16)
  tifffile.imwrite(tmp_path / "ij.tif", x, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                   metadata={"unit": "um"})
  assert image_io.read_image(tmp_path / "ij.tif").pixel_size == pytest.approx((0.5, 0.25))
  tifffile.imwrite(tmp_path / "ome.ome.tif", x, metadata={"PhysicalSizeX": 0.3,
                                                          "PhysicalSizeY": 0.3})
  assert image_io.read_image(tmp_path / "ome.ome.tif").pixel_size == pytest.approx((0.3, 0.3))
  Image.fromarray(x).save(tmp_path / "x.png", dpi=(2540, 2540))
  assert image_io.read_image(tmp_path / "x.png").pixel_size == pytest.approx((10, 10), rel=1e-3)
  for dtype in (np.float32, np.uint32):  # ImageJ metadata and plain resolution tags
    path = image_io.write_tiff(tmp_path / f"out_{np.dtype(dtype).name}.tif", x.astype(dtype),
                               (0.5, 0.25))
    assert image_io.read_image(path).pixel_size == pytest.approx((0.5, 0.25))
  assert image_io.read_image(tmp_path / "out_float32.tif").pixel_size is not None


@pytest.mark.parametrize("content", [b"", b"II*\x00garbage", b"\x89PNG\r\n\x1a\nxx"])
def test_broken_files_name_the_file(tmp_path, content):
  path = tmp_path / "bad.tif"
  path.write_bytes(content)
  with pytest.raises(UserInputError, match="bad.tif"):
    image_io.read_image(path)


def test_channel_rule(tmp_path):
  grey = np.ones((4, 5, 1), np.uint8)
  assert image_io.to_channels(grey, 3, False, "g").shape == (4, 5, 3)
  with pytest.raises(UserInputError, match="2 channel"):
    image_io.to_channels(np.ones((4, 5, 2)), 1, False, "two.tif")
  with pytest.raises(UserInputError, match="3 channel"):  # not RGB: no luminance
    image_io.to_channels(np.ones((4, 5, 3)), 1, False, "three.tif")
