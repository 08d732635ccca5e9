"""unet_jax: the U-Net of Ronneberger et al. (MICCAI 2015) in JAX/Flax."""

from unet_jax import metrics
from unet_jax.layers import jit, xla_compiler_options
from unet_jax.losses import weighted_cross_entropy
from unet_jax.model import UNet, output_size, valid_input_size
from unet_jax.tiling import predict_tiled, tile_size_for_memory
from unet_jax.train_lib import TrainState, create_train_state, make_train_step
from unet_jax.weight_maps import balanced_class_weights, instances_from_binary, weight_map

__all__ = [
    "UNet", "output_size", "valid_input_size",
    "weight_map", "instances_from_binary", "balanced_class_weights",
    "weighted_cross_entropy",
    "predict_tiled", "tile_size_for_memory", "metrics",
    "TrainState", "create_train_state", "make_train_step",
    "jit", "xla_compiler_options",
]
