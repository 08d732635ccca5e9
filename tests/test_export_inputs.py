"""unet_jax.export without the export extra: the package's test crop, the messages.

Which real image the bioimage.io package's test crop comes from; the install
hint when the export packages are missing; the filter that silences
jax2onnx's missing-plugin warnings. Needs none of the export extra
(``unet_jax.export`` imports NumPy only at the top).
"""

import importlib.util
import logging
import pathlib
import re
import sys

import numpy as np
import pytest

from unet_jax import datasets, export
from unet_jax.errors import UserInputError

REPO = pathlib.Path(__file__).resolve().parents[1]


def _crop(image: np.ndarray, tile: int) -> np.ndarray:
  top, left = (image.shape[0] - tile) // 2, (image.shape[1] - tile) // 2
  return image[top:top + tile, left:left + tile]


def test_the_test_crop_is_a_held_out_image_when_there_is_one(tiny_config):
  c = tiny_config  # synthetic, 4 images of 96 px
  c.train_indices, c.val_indices, c.heldout_indices = "0-1", "2", "3"
  crop, source = export.test_image(c, 60, 1)
  assert "heldout image synthetic:003" in source
  expected = _crop(datasets.load_split(c, "heldout").images[0], 60)
  np.testing.assert_array_equal(crop, expected)
  assert crop.shape == (60, 60, 1) and crop.dtype == np.float32


def test_without_a_held_out_split_it_falls_back_to_validation_then_training(tiny_config):
  c = tiny_config
  c.train_indices, c.val_indices, c.heldout_indices = "0-1", "2", ""
  assert "val image synthetic:002" in export.test_image(c, 60, 1)[1]
  c.val_indices = ""
  assert "train image synthetic:000" in export.test_image(c, 60, 1)[1]


# --------------------------------------------------------------------------
# Messages around the optional export packages.
# --------------------------------------------------------------------------

def test_missing_jax2onnx_hint_installs_it(monkeypatch):
  """requirements-export.txt cannot install jax2onnx (it goes in with --no-deps,
  as the Makefile's export-deps target does), so the hint must say so."""
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "jax2onnx" else real(name, *a))
  with pytest.raises(UserInputError, match="missing package.*jax2onnx") as info:
    export.require_export_packages()
  message = str(info.value)
  assert "make export-deps" in message
  make_line = re.search(r"pip install -q --no-deps (jax2onnx==\S+)",
                        (REPO / "Makefile").read_text())
  assert f"pip install --no-deps {make_line.group(1)}" in message


def test_onnx_predict_without_onnxruntime_gives_the_working_hint(monkeypatch, tmp_path):
  from unet_jax import onnx_predict

  monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
  with pytest.raises(UserInputError, match="needs onnxruntime") as info:
    onnx_predict.OnnxUNet(tmp_path / "m.onnx")
  assert "make export-deps" in str(info.value) and "--no-deps jax2onnx" in str(info.value)


def test_missing_plugin_warnings_are_dropped_and_other_records_kept(caplog):
  plugin_log = logging.getLogger(export.JAX2ONNX_PLUGIN_LOGGER)

  def skip(module, exc):  # what jax2onnx's plugin_system logs for a failed plugin import
    try:
      raise exc
    except Exception as e:
      plugin_log.warning("Skipping import of %s due to error: %s", module, e, exc_info=True)

  with caplog.at_level(logging.DEBUG):
    with export.quiet_missing_plugins() as quiet:
      skip("jax2onnx.plugins.examples.eqx.mlp", ModuleNotFoundError("no", name="equinox"))
      skip("jax2onnx.plugins.jax.lax.conv", RuntimeError("a real bug in a plugin"))
      plugin_log.warning("some other warning")
    skip("jax2onnx.plugins.examples.eqx.mlp", ModuleNotFoundError("no", name="equinox"))
  kept = [r.getMessage() for r in caplog.records if r.name == export.JAX2ONNX_PLUGIN_LOGGER]
  assert quiet.skipped == {"jax2onnx.plugins.examples.eqx.mlp": "equinox"}
  assert kept == ["Skipping import of jax2onnx.plugins.jax.lax.conv due to error: "
                  "a real bug in a plugin", "some other warning",
                  # outside the block nothing is filtered
                  "Skipping import of jax2onnx.plugins.examples.eqx.mlp due to error: no"]

  caplog.clear()
  with pytest.raises(ValueError), caplog.at_level(logging.WARNING):
    with export.quiet_missing_plugins():
      skip("jax2onnx.plugins.examples.nnx.depth_to_space",
           ModuleNotFoundError("no", name="dm_pix"))
      raise ValueError("conversion failed")
  # When the conversion fails, the skipped plugins are named in one line.
  (line,) = [r.getMessage() for r in caplog.records if r.name == "unet_jax.export"]
  assert "need the missing package(s) dm_pix" in line and "nnx.depth_to_space" in line
