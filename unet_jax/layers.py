"""Primitive ops of the U-Net, each in a formulation that XLA runs well.

Every op here computes exactly what the paper's layer computes; only the
formulation differs from the textbook one (see docs/performance.md and
../shared/docs/PERFORMANCE-NOTES.md for the measurements behind each choice).
Kernels keep the standard Flax layouts so parameters stay portable:

* 3x3 conv kernel ``[3, 3, C_in, C_out]`` (HWIO), VALID (unpadded).
* 2x2 stride-2 up-convolution kernel ``[2, 2, C_in, C_out]`` with the convention
  ``y[n, 2h+a, 2w+b, o] = sum_c x[n, h, w, c] * k[a, b, c, o] + bias[o]``.
  (Note: ``flax.linen.ConvTranspose`` uses the spatially flipped kernel.)

On XLA:CPU the backward pass is fastest when the enclosing ``jax.jit`` is given
``compiler_options=xla_compiler_options()`` (every convolution on Eigen rather
than YNNPACK: about 25 % off a paper-size train step).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")

# XLA:CPU (jax >= 0.8 or so) hands dots and convolutions to YNNPACK by default.
# YNNPACK runs the forward and input-gradient convolutions of this net well but
# the weight-gradient convolutions (an [H', W'] "kernel" the size of the image)
# 2-5x slower than XLA's Eigen convolution; keeping YNNPACK for dots only sends
# every convolution to Eigen. See docs/performance.md.
_CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}


@functools.lru_cache(maxsize=None)
def _cpu_options_supported() -> bool:
  try:
    jax.jit(lambda a: a + 1, compiler_options=_CPU_COMPILER_OPTIONS).lower(
        jnp.zeros((), jnp.float32)).compile()
    return True
  except Exception:  # an XLA without this option: fall back to its defaults
    return False


def xla_compiler_options(backend: str | None = None) -> dict[str, str]:
  """Per-executable XLA options under which these ops run fastest.

  Pass them to ``jax.jit(fn, compiler_options=xla_compiler_options() or None)``.
  Only XLA:CPU gets options (every convolution on Eigen instead of YNNPACK);
  other backends, or an XLA that does not know the option, get ``{}``.

  Args:
    backend: "cpu", "gpu", ...; default ``jax.default_backend()``.
  Returns:
    option name -> value, possibly empty.
  """
  backend = jax.default_backend() if backend is None else backend
  if backend != "cpu" or not _cpu_options_supported():
    return {}
  return dict(_CPU_COMPILER_OPTIONS)


def jit(fun: Callable | None = None, **kwargs) -> Callable:
  """``jax.jit`` with ``xla_compiler_options()``: the fast path for your own functions.

  A train or predict step of your own around ``unet_jax.UNet`` jitted with
  plain ``jax.jit`` gets XLA:CPU's default convolution path, 1.3-2.2x slower
  per paper-size train step on a 2-core CPU (docs/performance.md). Use this instead;
  it takes every ``jax.jit`` argument, and works as a decorator with or without
  arguments::

    step = unet_jax.jit(train_step, donate_argnums=0)

    @unet_jax.jit
    def predict(variables, x): ...

    @functools.partial(unet_jax.jit, static_argnames="train")
    def loss(params, batch, train): ...

  ``compiler_options`` given here are added to (and override) the project's.
  On GPU/TPU it is plain ``jax.jit``.
  """
  if fun is None:
    return functools.partial(jit, **kwargs)
  options = dict(xla_compiler_options())
  options.update(kwargs.pop("compiler_options", None) or {})
  return jax.jit(fun, compiler_options=options or None, **kwargs)


def center_crop(x: jax.Array, height: int, width: int) -> jax.Array:
  """Crops ``x`` ``[N, H, W, C]`` to ``[N, height, width, C]`` around its centre.

  The paper crops the encoder map symmetrically before concatenation; with
  valid input sizes the difference ``H - height`` is always even.
  """
  dh, dw = x.shape[1] - height, x.shape[2] - width
  if dh < 0 or dw < 0:
    raise ValueError(f"cannot crop {x.shape[1:3]} to ({height}, {width})")
  top, left = dh // 2, dw // 2
  return x[:, top:top + height, left:left + width, :]


# --------------------------------------------------------------------------
# Reference formulations: the textbook ops, used by tests as the definition.
# --------------------------------------------------------------------------


def conv_valid_reference(x: jax.Array, kernel: jax.Array,
                         bias: jax.Array | None = None) -> jax.Array:
  """VALID 2-D convolution, stride 1. ``x`` [N, H, W, C_in] -> [N, H-kh+1, W-kw+1, C_out]."""
  y = lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), "VALID",
                               dimension_numbers=_DN)
  return y if bias is None else y + bias.astype(y.dtype)


def conv_same_reference(x: jax.Array, kernel: jax.Array,
                        bias: jax.Array | None = None) -> jax.Array:
  """SAME (zero-padded) 2-D convolution, stride 1, autodiff'd by JAX. ``x`` [N, H, W, C_in]
  -> [N, H, W, C_out]."""
  y = lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), "SAME",
                               dimension_numbers=_DN)
  return y if bias is None else y + bias.astype(y.dtype)


def upconv2x2_reference(x: jax.Array, kernel: jax.Array,
                        bias: jax.Array | None = None) -> jax.Array:
  """2x2 stride-2 up-convolution via ``lax.conv_transpose`` [N, H, W, C] -> [N, 2H, 2W, O]."""
  # conv_transpose applies the kernel flipped relative to our convention.
  y = lax.conv_transpose(x, kernel[::-1, ::-1].astype(x.dtype), (2, 2), "VALID",
                         dimension_numbers=_DN)
  return y if bias is None else y + bias.astype(y.dtype)


def max_pool2x2_reference(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2, via ``reduce_window``. [N, H, W, C] -> [N, H/2, W/2, C]."""
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


# --------------------------------------------------------------------------
# Fast formulations (the defaults of the model).
# --------------------------------------------------------------------------


def _conv_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DN)


# Weight gradient of a VALID conv as one convolution over the whole image:
# dW[i, j, c, o] = sum_{n, h, w} x[n, h+i, w+j, c] * g[n, h, w, o], i.e. x with its
# batch and feature axes swapped ([C, H, W, N]) convolved with g used as an
# [H', W', N, O] kernel. Same formulation as XLA's own transpose rule, written out
# so that the backward pass does not depend on how the forward is formulated.
# The kernel is handed over as g transposed to [H', W', N, O] (HWIO), not as g with
# dimension numbers that name its axes: for N = 1 the transpose is a free bitcast,
# while the dimension numbers made XLA copy every output gradient into that layout
# (18 copies, about 420 MB per paper-size train step; docs/performance.md).
_DW_DN = lax.ConvDimensionNumbers(lhs_spec=(3, 0, 1, 2), rhs_spec=(3, 2, 0, 1),
                                  out_spec=(2, 3, 0, 1))


def _weight_grad(x: jax.Array, g: jax.Array) -> jax.Array:
  """Weight gradient of a VALID conv.

  Args:
    x: conv input ``[N, H, W, C]``.
    g: gradient w.r.t. the conv output ``[N, H', W', O]``.
  Returns:
    ``[H - H' + 1, W - W' + 1, C, O]``.
  """
  g_hwio = jnp.transpose(g, (1, 2, 0, 3))  # [H', W', N, O]
  return lax.conv_general_dilated(x, g_hwio, (1, 1), "VALID", dimension_numbers=_DW_DN)


@jax.custom_vjp
def _conv3x3_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """VALID 3x3 conv ``[N, H, W, C] -> [N, H-2, W-2, O]`` without bias (see conv3x3_valid)."""
  y = lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DN)
  return y[:, 1:-1, 1:-1, :]


def _conv3x3_valid_fwd(x, kernel):
  return _conv3x3_valid(x, kernel), (x, kernel)


def _input_grad(conv: Callable, x: jax.Array, kernel: jax.Array, g: jax.Array) -> jax.Array:
  """XLA's own transpose of ``conv(., kernel)`` applied to ``g`` (a conv with the
  flipped kernel, as fast as the forward)."""
  _, x_vjp = jax.vjp(lambda x_: conv(x_, kernel), x)
  return x_vjp(g)[0]


def _conv3x3_valid_bwd(res, g):
  # Weight gradient: the VALID formulation, not the transpose of SAME+crop,
  # which pads g back to H x W and is slower on both YNNPACK and Eigen
  # (docs/performance.md).
  x, kernel = res
  return _input_grad(_conv_valid, x, kernel, g), _weight_grad(x, g).astype(kernel.dtype)


_conv3x3_valid.defvjp(_conv3x3_valid_fwd, _conv3x3_valid_bwd)


def conv3x3_valid(x: jax.Array, kernel: jax.Array,
                  bias: jax.Array | None = None) -> jax.Array:
  """VALID 3x3 conv as a SAME conv followed by a 1-px crop on each side.

  Under XLA's default options (YNNPACK) a SAME convolution runs 2-4x faster than
  the VALID one; the border pixels of the SAME output are simply discarded, so
  the result equals the VALID convolution exactly (up to float summation order).
  Eigen (``xla_compiler_options()``) runs the plain VALID convolution faster per
  layer, but a whole forward pass gained only ~3 % from it, and a plain ``jax.jit``
  would then get YNNPACK's slow VALID path (docs/performance.md). The backward
  pass is a custom VJP (see ``_conv3x3_valid_bwd``); it is fastest when the
  enclosing ``jax.jit`` gets ``compiler_options=xla_compiler_options()``.

  Args:
    x: ``[N, H, W, C_in]``.
    kernel: ``[3, 3, C_in, C_out]``.
    bias: ``[C_out]`` or None.
  Returns:
    ``[N, H-2, W-2, C_out]``.
  """
  y = _conv3x3_valid(x, kernel.astype(x.dtype))
  return y if bias is None else y + bias.astype(y.dtype)


def _conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DN)


@jax.custom_vjp
def _conv3x3_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """SAME 3x3 conv ``[N, H, W, C] -> [N, H, W, O]`` without bias (see conv3x3_same)."""
  return _conv_same(x, kernel)


def _conv3x3_same_fwd(x, kernel):
  return _conv3x3_same(x, kernel), (x, kernel)


def _conv3x3_same_bwd(res, g):
  # A SAME conv is the VALID conv of the zero-padded input, so its weight
  # gradient is the VALID weight-gradient conv of that padded input. Autodiff
  # writes it with the padding inside the conv (pad=1_1), which Eigen runs
  # slower: a 256x256, 16-feature SAME train step took 294 ms with it and
  # 196 ms with this (docs/performance.md).
  x, kernel = res
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return _input_grad(_conv_same, x, kernel, g), _weight_grad(xp, g).astype(kernel.dtype)


_conv3x3_same.defvjp(_conv3x3_same_fwd, _conv3x3_same_bwd)


def conv3x3_same(x: jax.Array, kernel: jax.Array,
                 bias: jax.Array | None = None) -> jax.Array:
  """SAME (zero-padded) 3x3 conv, for the non-default ``UNet(padding="same")``.

  Equal to :func:`conv_same_reference`; the backward pass is a custom VJP
  (see ``_conv3x3_same_bwd``).

  Args:
    x: ``[N, H, W, C_in]``.
    kernel: ``[3, 3, C_in, C_out]``.
    bias: ``[C_out]`` or None.
  Returns:
    ``[N, H, W, C_out]``.
  """
  y = _conv3x3_same(x, kernel.astype(x.dtype))
  return y if bias is None else y + bias.astype(y.dtype)


def conv1x1(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
  """1x1 conv as a channel matmul. ``kernel`` [1, 1, C_in, C_out]."""
  y = jnp.einsum("nhwc,co->nhwo", x, kernel[0, 0].astype(x.dtype))
  return y if bias is None else y + bias.astype(y.dtype)


def upconv2x2(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
  """2x2 stride-2 up-convolution as one per-pixel matmul (einsum + reshape).

  ``y[n, 2h+a, 2w+b, o] = sum_c x[n, h, w, c] k[a, b, c, o]``. Its backward pass
  is two matmuls, against XLA:CPU's slow ``ConvTranspose`` gradient.

  Args:
    x: ``[N, H, W, C_in]``.
    kernel: ``[2, 2, C_in, C_out]``.
    bias: ``[C_out]`` or None.
  Returns:
    ``[N, 2H, 2W, C_out]``.
  """
  n, h, w, _ = x.shape
  y = jnp.einsum("nhwc,abco->nhawbo", x, kernel.astype(x.dtype))
  y = y.reshape(n, 2 * h, 2 * w, kernel.shape[-1])
  return y if bias is None else y + bias.astype(y.dtype)


def max_pool2x2(x: jax.Array) -> jax.Array:
  """2x2 stride-2 max-pool as reshape + max (its gradient avoids select-and-scatter).

  Args:
    x: ``[N, H, W, C]`` with even H and W.
  Returns:
    ``[N, H/2, W/2, C]``.
  """
  n, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"max-pool input must have even size, got {h}x{w}")
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
