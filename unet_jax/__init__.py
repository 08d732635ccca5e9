"""unet_jax: the U-Net of Ronneberger et al. (MICCAI 2015) in JAX/Flax.

The names below are loaded on first use (module ``__getattr__``), so that
``import unet_jax`` and building a ``UNet`` load only JAX and Flax; the
training stack (optax, orbax, grain), matplotlib and scikit-image are
imported by the modules that need them. docs/design.md has the module map.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# public name -> the submodule that defines it
_EXPORTS = {
    "UNet": "model", "output_size": "model", "valid_input_size": "model",
    "weight_map": "weight_maps", "instances_from_binary": "weight_maps",
    "balanced_class_weights": "weight_maps",
    "weighted_cross_entropy": "losses",
    "normalize": "datasets",
    "predict_tiled": "tiling", "tile_size_for_memory": "tiling",
    "TrainState": "train_lib", "create_train_state": "train_lib",
    "make_train_step": "train_lib",
    "jit": "layers", "xla_compiler_options": "layers",
}
_SUBMODULES = (
    "ablations", "augment", "checkpoint", "cli", "config_lib", "ctc_format", "data_tool",
    "datasets", "distributed", "download", "errors", "evaluation", "export", "image_io",
    "inference", "input_pipeline", "instances", "layers", "losses", "metrics", "model",
    "monitoring", "onnx_predict", "parallel", "predict", "run_control", "submission",
    "synthetic", "tiling", "train_lib", "weight_maps",
)

__all__ = [*_EXPORTS, "metrics"]

if TYPE_CHECKING:  # for type checkers and IDEs; not executed
  from unet_jax import metrics
  from unet_jax.datasets import normalize
  from unet_jax.layers import jit, xla_compiler_options
  from unet_jax.losses import weighted_cross_entropy
  from unet_jax.model import UNet, output_size, valid_input_size
  from unet_jax.tiling import predict_tiled, tile_size_for_memory
  from unet_jax.train_lib import TrainState, create_train_state, make_train_step
  from unet_jax.weight_maps import balanced_class_weights, instances_from_binary, weight_map


def __getattr__(name: str):
  if name in _EXPORTS:
    value = getattr(importlib.import_module(f"unet_jax.{_EXPORTS[name]}"), name)
  elif name in _SUBMODULES:
    value = importlib.import_module(f"unet_jax.{name}")
  else:
    raise AttributeError(f"module 'unet_jax' has no attribute {name!r}")
  globals()[name] = value  # later lookups skip __getattr__
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *_EXPORTS, *_SUBMODULES})
