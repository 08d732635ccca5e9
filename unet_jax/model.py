"""The U-Net of Ronneberger et al. (MICCAI 2015, Fig. 1) as a Flax linen module.

Faithful to the paper: unpadded (VALID) 3x3 convolutions each followed by ReLU,
2x2 max-pooling, dropout at the end of the contracting path, 2x2 up-convolutions
that halve the channels, concatenation with the centre-cropped encoder map, and
a final 1x1 convolution: 23 convolutions in all (depth 4). He-normal init
(std = sqrt(2 / fan_in), paper Sec. 3).

Dropout placement (the paper only says "at the end of the contracting path";
we follow the authors' released Caffe model): dropout with ``dropout_rate`` is
applied to the output of the deepest encoder level (512 channels at depth 4)
*before* it is used both as skip connection and pooled, and to the output of
the bottleneck (1024 channels). It is active only with ``train=True`` and draws
from the PRNG stream ``"dropout"``.

``padding="same"`` is a non-default variant for ablations: zero-padded 3x3
convolutions (as in most later reimplementations), so the output has the
input's size and skip connections need no cropping. The parameters (names,
shapes, count) are those of the paper's net; only the convolutions' border
handling differs. Inputs must then be multiples of ``2**depth``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from unet_jax import layers

Dtype = Any

def he_normal(fan_in: int, scale: float = 1.0) -> Callable:
  """Gaussian init with std scale * sqrt(2 / fan_in) (paper Sec. 3; He et al. 2015)."""
  return nn.initializers.normal(stddev=scale * (2.0 / fan_in) ** 0.5)


# --------------------------------------------------------------------------
# Valid tile sizes.
# --------------------------------------------------------------------------


def _output_size_or_none(input_size: int, depth: int) -> int | None:
  """Traces one spatial side through the net; None if some layer does not fit."""
  s = int(input_size)
  for _ in range(depth):
    s -= 4  # two VALID 3x3 convs
    if s <= 0 or s % 2:
      return None
    s //= 2  # 2x2 max-pool
  s -= 4  # bottleneck
  if s <= 0:
    return None
  for _ in range(depth):
    s = 2 * s - 4  # up-conv, then two VALID 3x3 convs
    if s <= 0:
      return None
  return s


def nearest_valid_sizes(input_size: int, depth: int = 4) -> tuple[int | None, int]:
  """The closest valid input sizes below (None if none) and above ``input_size``."""
  below = next((s for s in range(int(input_size) - 1, 0, -1)
                if _output_size_or_none(s, depth) is not None), None)
  above = valid_input_size(int(input_size) + 1, depth)
  return below, above


def output_size(input_size: int, depth: int = 4) -> int:
  """Output side of the U-Net for an input side ``input_size``.

  For depth 4, valid inputs are 16k + 188 and the output is input - 184
  (572 -> 388).

  Raises:
    ValueError: if ``input_size`` is not a valid size; the message names the
      nearest valid sizes.
  """
  out = _output_size_or_none(input_size, depth)
  if out is None:
    below, above = nearest_valid_sizes(input_size, depth)
    near = f"{below} or {above}" if below else f"{above}"
    raise ValueError(
        f"input size {input_size} is not valid for a depth-{depth} U-Net with "
        f"unpadded convolutions (every pooled map must have an even size); "
        f"nearest valid sizes: {near}")
  return out


def valid_input_size(min_size: int, depth: int = 4) -> int:
  """Smallest valid input side >= ``min_size``."""
  s = max(int(min_size), 1)
  while _output_size_or_none(s, depth) is None:
    s += 1
  return s


PADDINGS = ("valid", "same")


def check_padding(padding: str) -> str:
  if padding not in PADDINGS:
    raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
  return padding


def tile_output_size(input_size: int, depth: int = 4, padding: str = "valid") -> int:
  """Output side for an input side ``input_size`` with either padding.

  VALID (the paper): ``output_size``. SAME: the input side itself, which must
  be a multiple of ``2**depth`` (every pooled map even).

  Raises:
    ValueError: for an invalid size, naming the nearest valid ones.
  """
  if check_padding(padding) == "valid":
    return output_size(input_size, depth)
  grid = 2**depth
  if input_size < grid or input_size % grid:
    below, above = input_size // grid * grid, -(-input_size // grid) * grid
    near = f"{below} or {above}" if below else f"{above}"
    raise ValueError(f"input size {input_size} is not valid for a depth-{depth} U-Net with "
                     f"SAME-padded convolutions (must be a multiple of {grid}); "
                     f"nearest valid sizes: {near}")
  return int(input_size)


def smallest_input_size(depth: int = 4, padding: str = "valid") -> int:
  """Smallest valid input side (188 VALID, 16 SAME at depth 4), e.g. to init parameters."""
  return valid_input_size(1, depth) if check_padding(padding) == "valid" else 2**depth


def border(depth: int = 4) -> int:
  """Pixels lost on each side of the input (92 for depth 4)."""
  s = valid_input_size(1, depth)
  return (s - output_size(s, depth)) // 2


# --------------------------------------------------------------------------
# Layers with standard Flax kernels.
# --------------------------------------------------------------------------


class ConvKernel(nn.Module):
  """A conv layer holding a standard ``[k, k, C_in, C_out]`` kernel and a bias.

  ``op(x, kernel, bias)`` is the formulation used in the forward pass. The init
  std is sqrt(2/N) with N the incoming nodes of one output neuron (paper Sec.
  3): k*k*C_in for a convolution, but C_in for the stride-2 up-convolution
  (``upsampling=True``), where each output pixel sees a single kernel tap.
  """
  features: int
  kernel_size: int
  op: Callable[..., jax.Array]
  dtype: Dtype = jnp.float32
  upsampling: bool = False
  init_scale: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    fan_in = x.shape[-1] * (1 if self.upsampling else k * k)
    kernel = self.param("kernel", he_normal(fan_in, self.init_scale),
                        (k, k, x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return self.op(x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype))


class UNet(nn.Module):
  """The paper's U-Net.

  Attributes:
    num_classes: K, number of output classes (2 in the paper).
    features: channels of the first level (64); doubled at every level.
    depth: number of pooling steps (4).
    dropout_rate: dropout at the end of the contracting path (0.5).
    dtype: computation dtype (float32, or bfloat16 for mixed precision);
      parameters are always float32 and logits are returned in float32.
    reference_ops: use the textbook ops (VALID conv, reduce_window pooling,
      conv_transpose) instead of the fast formulations; same parameters, same
      outputs up to float tolerance. For tests and benchmarks.
    classifier_init_scale: multiplies the init std of the final 1x1 conv
      (1 = the paper's sqrt(2/N)). At the paper's init the activations grow
      through the four max-poolings and the logits start with std ~10, so the
      first steps only shrink them; 0 starts from p = 1/K everywhere
      (docs/cells.md). Only the initial values change, not the parameters.
    padding: "valid" (the paper, default) or "same" (zero-padded 3x3
      convolutions, output size = input size; for ablations). Same parameters.
  """
  num_classes: int = 2
  features: int = 64
  depth: int = 4
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  reference_ops: bool = False
  classifier_init_scale: float = 1.0
  padding: str = "valid"

  def _ops(self):
    if self.reference_ops:
      ops = (layers.conv_valid_reference, layers.upconv2x2_reference,
             layers.max_pool2x2_reference, layers.conv_valid_reference)
    else:
      ops = layers.conv3x3_valid, layers.upconv2x2, layers.max_pool2x2, layers.conv1x1
    if check_padding(self.padding) == "same":
      conv = layers.conv_same_reference if self.reference_ops else layers.conv3x3_same
      ops = (conv,) + ops[1:]
    return ops

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Applies the net.

    Args:
      x: ``[N, H, W, C]`` with H, W valid input sizes (see ``tile_output_size``).
      train: enables dropout (needs the ``"dropout"`` PRNG stream).
    Returns:
      logits ``[N, H', W', num_classes]`` in float32, H' =
      ``tile_output_size(H, depth, padding)`` (H itself for SAME).
    """
    if x.ndim != 4:
      raise ValueError(f"UNet expects input [N, H, W, C], got shape {x.shape}")
    for side in x.shape[1:3]:
      # Symbolic sides (jax.export shape polymorphism, used by unet_jax.export)
      # are valid by construction; concrete ones get a clear error.
      if isinstance(side, int):
        tile_output_size(side, self.depth, self.padding)
    conv3, upconv, pool, conv1 = self._ops()
    dt = self.dtype

    def double_conv(h, feats, name):
      for i in range(2):
        h = nn.relu(ConvKernel(feats, 3, conv3, dt, name=f"{name}_conv{i}")(h))
      return h

    def dropout(h):
      return nn.Dropout(self.dropout_rate, deterministic=not train)(h)

    h = x.astype(dt)
    skips = []
    for level in range(self.depth):
      h = double_conv(h, self.features * 2**level, f"down{level}")
      if level == self.depth - 1:
        h = dropout(h)
      skips.append(h)
      h = pool(h)
    h = dropout(double_conv(h, self.features * 2**self.depth, "bottleneck"))
    for level in reversed(range(self.depth)):
      feats = self.features * 2**level
      h = ConvKernel(feats, 2, upconv, dt, upsampling=True, name=f"up{level}_upconv")(h)
      skip = layers.center_crop(skips[level], h.shape[1], h.shape[2])
      h = jnp.concatenate([skip, h], axis=-1)
      h = double_conv(h, feats, f"up{level}")
    logits = ConvKernel(self.num_classes, 1, conv1, dt, init_scale=self.classifier_init_scale,
                        name="classifier")(h)
    return logits.astype(jnp.float32)


def from_config(config) -> UNet:
  """The UNet of a training config (after checking its tile size).

  Args:
    config: uses ``tile_size``, ``num_classes``, ``features``, ``depth``,
      ``dropout_rate``, ``dtype``, ``classifier_init_scale`` and ``padding``
      (see configs/default.py).
  Raises:
    ValueError: if ``config.tile_size`` is not a valid input size.
  """
  tile_output_size(config.tile_size, config.depth, config.padding)  # clear error
  return UNet(num_classes=config.num_classes, features=config.features, depth=config.depth,
              dropout_rate=config.dropout_rate, dtype=jnp.dtype(config.dtype),
              classifier_init_scale=config.classifier_init_scale, padding=config.padding)


def _lazy_init(model: UNet, rng: jax.Array, in_channels: int):
  t = smallest_input_size(model.depth, model.padding)
  x = jax.ShapeDtypeStruct((1, t, t, in_channels), jnp.float32)
  return model.lazy_init({"params": rng}, x, train=False)["params"]


# Module-level jits with the architecture static: JAX's cache then compiles
# once per architecture and channel count, not once per call.
_init_cpu = jax.jit(_lazy_init, static_argnums=(0, 2),
                    compiler_options={"xla_backend_optimization_level": 0})
_init_other = jax.jit(_lazy_init, static_argnums=(0, 2))


def init_params(model: UNet, rng: jax.Array, in_channels: int):
  """He-normal parameters (paper Sec. 3) for ``in_channels`` input channels.

  Flax's ``lazy_init`` on the shape of the smallest valid input (the forward
  pass is not computed), as one jitted program that XLA:CPU builds at backend
  optimisation level 0, compiled once per architecture. Why: run op by op,
  ``model.init`` compiles ~150 small programs, about 20 s of CPU per new
  architecture on a 2-core machine; one optimised program takes ~14 s to
  build; at level 0 it takes 2-4 s and runs in at most 3 s at 31 M
  parameters. The values equal ``model.init``'s up to 1.2e-7 (XLA fuses the
  He scaling into the sampler; tests/test_model.py). Under a trace
  (``jax.eval_shape``, a caller's jit) nothing is compiled here.
  """
  if isinstance(jnp.zeros(()), jax.core.Tracer):  # being traced: JAX refuses nested options
    return _lazy_init(model, rng, int(in_channels))
  init = _init_cpu if jax.default_backend() == "cpu" else _init_other
  return init(model, rng, int(in_channels))
