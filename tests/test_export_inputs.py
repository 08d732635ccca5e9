"""export.test_image: which real image the bioimage.io package's test crop comes from.

Needs none of the export extra (``unet_jax.export`` imports NumPy only at the top).
"""

import numpy as np

from unet_jax import datasets, export


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
