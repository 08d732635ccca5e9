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
  tifffile.imwrite(tmp_path / "cm.tif", x, resolution=(5000, 2500), resolutionunit="CENTIMETER")
  assert image_io.read_image(tmp_path / "cm.tif").pixel_size == pytest.approx((4, 2))
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


def _dpi_files(folder):
  """Files with a print resolution only, as image editors and Pillow write them."""
  x = np.zeros((20, 24), np.uint8)
  tifffile.imwrite(folder / "72dpi.tif", x, resolution=(72, 72), resolutionunit="INCH")
  tifffile.imwrite(folder / "300dpi.tif", x, resolution=(300, 300))  # TIFF default unit: inch
  tifffile.imwrite(folder / "72dpi_cm.tif", x, resolution=(72 / 2.54, 72 / 2.54),
                   resolutionunit="CENTIMETER")
  # ImageJ opening an editor's TIFF keeps its dpi as unit=inch
  tifffile.imwrite(folder / "ij_inch.tif", x, imagej=True, resolution=(72, 72),
                   metadata={"unit": "inch"})
  Image.fromarray(x).save(folder / "72dpi.png", dpi=(72, 72))  # stored as 72.009 dpi
  Image.fromarray(x).save(folder / "72dpi.jpg", dpi=(72, 72))
  Image.fromarray(x).save(folder / "pillow.bmp")  # Pillow writes 96 dpi
  return ["72dpi.tif", "300dpi.tif", "72dpi_cm.tif", "ij_inch.tif", "72dpi.png", "72dpi.jpg",
          "pillow.bmp"]


def test_dpi_is_not_a_pixel_size(tmp_path):
  """Print resolutions (dpi) leave the image and its results uncalibrated."""
  names = _dpi_files(tmp_path)
  # the files do carry a resolution (else this test would prove nothing)
  with Image.open(tmp_path / "72dpi.png") as im:
    assert im.info["dpi"][0] == pytest.approx(72.009)
  with Image.open(tmp_path / "pillow.bmp") as im:
    assert im.info["dpi"][0] == pytest.approx(96, abs=0.1)
  with tifffile.TiffFile(tmp_path / "72dpi.tif") as tif:
    assert tif.pages[0].tags["XResolution"].value == (72, 1)
  for name in names:
    im = image_io.read_image(tmp_path / name)
    assert im.pixel_size is None, name
    assert not im.notes, name  # common print resolutions are ignored silently
    out = image_io.write_tiff(tmp_path / "out" / (name + ".tif"), np.zeros((20, 24), np.float32),
                              im.pixel_size)
    with tifffile.TiffFile(out) as tif:  # what Fiji reads: no unit, a unitless 1 px/px
      tags = tif.pages[0].tags
      assert "unit" not in tif.imagej_metadata
      assert tags["ResolutionUnit"].value == 1 and tags["XResolution"].value == (1, 1)


def test_a_fine_dpi_is_ignored_with_a_note(tmp_path):
  x = np.zeros((20, 24), np.uint16)
  Image.fromarray(x).save(tmp_path / "x.png", dpi=(2540, 2540))  # 10 um if it were a size
  tifffile.imwrite(tmp_path / "x.tif", x, resolution=(2540, 2540), resolutionunit="INCH")
  for name in ("x.png", "x.tif"):
    im = image_io.read_image(tmp_path / name)
    assert im.pixel_size is None
    assert len(im.notes) == 1 and "2540 dpi ignored" in im.notes[0], im.notes


def test_physical_calibrations_are_pixel_sizes(tmp_path):
  x = np.zeros((20, 24), np.uint8)
  # ImageJ as Fiji writes it: resolution tags in pixels per unit
  tifffile.imwrite(tmp_path / "micron.tif", x, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                   metadata={"unit": "micron"})
  tifffile.imwrite(tmp_path / "nm.tif", x, imagej=True, resolution=(1 / 200, 1 / 200),
                   metadata={"unit": "nm"})
  tifffile.imwrite(tmp_path / "pixel.tif", x, imagej=True, resolution=(1 / 3, 1 / 3),
                   metadata={"unit": "pixel"})
  tifffile.imwrite(tmp_path / "nm.ome.tif", x, metadata={
      "PhysicalSizeX": 65.0, "PhysicalSizeXUnit": "nm",
      "PhysicalSizeY": 130.0, "PhysicalSizeYUnit": "nm"})
  tifffile.imwrite(tmp_path / "inch.ome.tif", x, metadata={
      "PhysicalSizeX": 0.01, "PhysicalSizeXUnit": "in"})
  want = {"micron.tif": (0.5, 0.25), "nm.tif": (0.2, 0.2), "pixel.tif": None,
          "nm.ome.tif": (0.13, 0.065), "inch.ome.tif": None}
  for name, size in want.items():
    got = image_io.read_image(tmp_path / name).pixel_size
    assert got == (None if size is None else pytest.approx(size)), name


def test_stack_axes_spacing_and_frame_interval_are_read(tmp_path):
  t = np.zeros((3, 20, 24), np.uint8)
  tifffile.imwrite(tmp_path / "tyx.tif", t, imagej=True, metadata={"axes": "TYX", "finterval": 5})
  im = image_io.read_image(tmp_path / "tyx.tif")
  assert (im.page_axes, im.page_shape, im.frame_interval, im.z_spacing) == ("T", (3,), 5, None)
  tifffile.imwrite(tmp_path / "zyx.tif", t, imagej=True, resolution=(1 / 100, 1 / 100),
                   metadata={"axes": "ZYX", "spacing": 500, "unit": "nm"})
  im = image_io.read_image(tmp_path / "zyx.tif")
  assert (im.page_axes, im.page_shape) == ("Z", (3,))
  assert im.z_spacing == pytest.approx(0.5) and im.pixel_size == pytest.approx((0.1, 0.1))
  tifffile.imwrite(tmp_path / "tmin.tif", t, imagej=True,
                   metadata={"axes": "TYX", "finterval": 2, "tunit": "min"})
  assert image_io.read_image(tmp_path / "tmin.tif").frame_interval == pytest.approx(120)
  zt = np.arange(2 * 3 * 20 * 24, dtype=np.uint16).reshape(2, 3, 20, 24)
  tifffile.imwrite(tmp_path / "zt.ome.tif", zt, metadata={
      "axes": "ZTYX", "PhysicalSizeX": 0.2, "PhysicalSizeZ": 1.5, "TimeIncrement": 250,
      "TimeIncrementUnit": "ms"})
  im = image_io.read_image(tmp_path / "zt.ome.tif")
  assert (im.page_axes, im.page_shape) == ("ZT", (2, 3))
  assert im.z_spacing == pytest.approx(1.5) and im.frame_interval == pytest.approx(0.25)
  np.testing.assert_array_equal(im.pages[1 * 3 + 2][..., 0], zt[1, 2])  # C order of Z, T


def test_write_tiff_keeps_the_hyperstack(tmp_path):
  x = np.zeros((2, 3, 2, 20, 24), np.float32)
  path = image_io.write_tiff(tmp_path / "tz.tif", x, (0.5, 0.5), "TZCYX", z_spacing=2.0,
                             frame_interval=5.0)
  with tifffile.TiffFile(path) as tif:
    meta = tif.imagej_metadata
    assert tif.series[0].axes == "TZCYX"
    assert (meta["frames"], meta["slices"], meta["channels"]) == (2, 3, 2)
    assert meta["spacing"] == 2.0 and meta["finterval"] == 5.0 and meta["unit"] == "um"


def test_corrupt_tiff_is_one_clear_line_and_no_log(tmp_path, caplog):
  path = tmp_path / "bad.tif"
  path.write_bytes(b"II*\x00garbage")  # a TIFF header pointing nowhere
  with pytest.raises(UserInputError) as e:
    image_io.read_image(path)
  message = str(e.value)
  assert message.startswith(f"{path}: not a readable TIFF (") and "\n" not in message
  assert message.count("bad.tif") == 1
  assert not caplog.records  # tifffile's "invalid offset" is in the message, not logged
  path = tmp_path / "bad.png"
  path.write_bytes(b"\x89PNG\r\n\x1a\nxx")
  with pytest.raises(UserInputError, match="not a readable PNG") as e:
    image_io.read_image(path)
  assert str(e.value).count("bad.png") == 1


def test_a_file_of_another_type_says_which_types_are_read(tmp_path):
  """notes.txt is not a "truncated or corrupted" image: it is not one at all. Files of
  other suffixes are still tried (Pillow reads a PNG by its content)."""
  path = tmp_path / "notes.txt"
  path.write_text("cells: 12")
  with pytest.raises(UserInputError) as e:
    image_io.read_image(path)
  assert str(e.value) == (f"{path}: not a file type this tool reads ({image_io.describe()}, "
                          "or what Pillow reads); convert it (Fiji: File > Save As > Tiff)")
  assert "*.tif/*.tiff/*.png" in str(e.value)
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
  Image.fromarray(grey).save(tmp_path / "plain.png")
  for name in ("plain", "plain.webp_but_png"):
    (tmp_path / "plain.png").rename(tmp_path / name) if name == "plain" else (
        (tmp_path / "plain").rename(tmp_path / name))
    np.testing.assert_array_equal(image_io.read_image(tmp_path / name).pages[0][..., 0], grey)


def test_truncated_hyperstack_notes_what_tifffile_found(tmp_path, caplog):
  """tifffile reads a hyperstack cut in half as its first page and logs why: a note."""
  path = tmp_path / "half.tif"
  tifffile.imwrite(path, np.ones((2, 3, 20, 24), np.uint16), imagej=True,
                   metadata={"axes": "TZYX"})
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  im = image_io.read_image(path)
  assert len(im.pages) == 1
  assert "tifffile: ImageJ series metadata invalid or corrupted file" in im.notes
  assert not caplog.records


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_pixels_are_refused(tmp_path, dtype):
  tifffile.imwrite(tmp_path / "c.tif", (np.ones((20, 24)) * (1 + 2j)).astype(dtype))
  with pytest.raises(UserInputError, match=r"c\.tif: complex-valued pixels"):
    image_io.read_image(tmp_path / "c.tif")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_nan_and_inf_pixels_are_refused_with_their_count(tmp_path, dtype):
  """One NaN made every normalised pixel NaN: an all-NaN _prob.tif counted as segmented."""
  image = _rng().random((20, 24)).astype(dtype)
  image[3, 4] = np.nan
  tifffile.imwrite(tmp_path / "one.tif", image)
  with pytest.raises(UserInputError) as e:
    image_io.model_pages(tmp_path / "one.tif", 1)  # evaluate.py --mode predict reads so
  assert str(e.value) == f"{tmp_path / 'one.tif'}: 1 NaN/Inf pixel(s); fix or drop the image"
  # RGB: a pixel counts once, however many channels are bad; pages are named.
  rgb = _rng().random((3, 20, 24, 3)).astype(dtype)
  rgb[1, 0, 0] = np.inf
  rgb[2, 5, 6, 1], rgb[2, 7, 8, 2] = -np.inf, np.nan
  tifffile.imwrite(tmp_path / "stack.tif", rgb, metadata={"axes": "ZYXS"})
  with pytest.raises(UserInputError, match=r"stack\.tif: 3 NaN/Inf pixel\(s\) in page\(s\) 1, 2 "
                     r"of 3 \(counting from 0\); fix or drop the image"):
    image_io.read_image(tmp_path / "stack.tif")
  tifffile.imwrite(tmp_path / "fine.tif", np.nan_to_num(image))
  assert image_io.read_image(tmp_path / "fine.tif").pages[0].dtype == dtype
