"""The paper's architecture: sizes, parameter count, init, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import UNet, output_size, valid_input_size
from unet_jax.model import border, init_params


def _abstract_params(model, size=188, channels=1):
  x = jnp.zeros((1, size, size, channels))
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))["params"]


def test_paper_parameter_count_and_23_convs():
  params = _abstract_params(UNet())
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(params)) == 31_030_658
  kernels = [p for path, p in jax.tree_util.tree_leaves_with_path(params)
             if path[-1].key == "kernel"]
  assert len(kernels) == 23
  assert all(k.ndim == 4 for k in kernels)  # standard HWIO kernels
  assert sorted({k.shape[:2] for k in kernels}) == [(1, 1), (2, 2), (3, 3)]
  assert params["down0_conv0"]["kernel"].shape == (3, 3, 1, 64)
  assert params["bottleneck_conv1"]["kernel"].shape == (3, 3, 1024, 1024)
  assert params["up3_upconv"]["kernel"].shape == (2, 2, 1024, 512)  # halves channels
  assert params["classifier"]["kernel"].shape == (1, 1, 64, 2)


def test_model_from_the_quick_start_config():
  """configs/synthetic.py: depth 4, 16 features: 1,940,834 parameters (README)."""
  from configs import synthetic
  from unet_jax import model as model_lib
  c = synthetic.get_config()
  model = model_lib.from_config(c)
  assert (model.depth, model.features, model.dropout_rate) == (4, 16, c.dropout_rate)
  params = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.PRNGKey(0), 1))
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(params)) == 1_940_834
  c.tile_size = 250
  with pytest.raises(ValueError, match="252"):
    model_lib.from_config(c)


def test_parameter_count_is_independent_of_input_size_and_grows_with_channels():
  n = lambda p: sum(np.prod(x.shape) for x in jax.tree.leaves(p))  # noqa: E731
  m = UNet(features=8)
  assert n(_abstract_params(m, 188)) == n(_abstract_params(m, 572))
  # first conv gets 3*3*8 more weights per extra input channel
  assert n(_abstract_params(m, 188, 3)) - n(_abstract_params(m, 188, 1)) == 2 * 9 * 8


@pytest.mark.parametrize("size,expected", [(572, 388), (188, 4), (204, 20), (508, 324)])
def test_output_size_depth4(size, expected):
  assert output_size(size) == expected


def test_valid_sizes_are_16k_plus_188():
  valid = [s for s in range(150, 700) if s == valid_input_size(s)]
  assert valid == list(range(188, 700, 16))
  assert border(4) == 92
  assert valid_input_size(573) == 588


@pytest.mark.parametrize("size,near", [(570, "556 or 572"), (573, "572 or 588"), (100, "188")])
def test_invalid_size_names_nearest(size, near):
  with pytest.raises(ValueError, match=near):
    output_size(size)


def test_other_depths():
  assert output_size(44, depth=2) == 4 and output_size(60, depth=2) == 20
  assert [s for s in range(1, 80) if s == valid_input_size(s, 2)] == list(range(44, 80, 4))
  assert output_size(18, depth=1) == 2  # 18-4=14 -> 7 -> 3 -> 6 -> 2


@pytest.mark.parametrize("h,w", [(188, 204), (220, 188)])
def test_forward_shapes_depth4(h, w):
  model = UNet(num_classes=3, features=2)
  x = jnp.ones((2, h, w, 1))
  variables = {"params": init_params(model, jax.random.PRNGKey(0), 1)}
  y = jax.jit(model.apply)(variables, x)  # one program, not ~80 op-by-op compilations
  assert y.shape == (2, output_size(h), output_size(w), 3)
  assert y.dtype == jnp.float32


@pytest.mark.parametrize("padding,size", [("valid", 60), ("same", 16)])
def test_init_params_equal_a_full_init_on_a_real_image(padding, size):
  """init_params (one jitted lazy_init, no forward pass) gives the values of
  ``model.init`` on an actual input, up to XLA's fusion of the He scaling
  (1.2e-7 measured), with 3 input channels.

  The reference runs the forward pass too; it is jitted at XLA:CPU
  optimisation level 0 because run op by op (or optimised) its ~20
  threefry samplers cost ~20 s of compilation, for the same values.
  """
  model = UNet(features=4, depth=2, padding=padding, dropout_rate=0.5)
  rng = jax.random.PRNGKey(7)
  full_init = jax.jit(
      lambda r: model.init({"params": r}, jnp.ones((2, size, size, 3)), train=False)["params"],
      compiler_options={"xla_backend_optimization_level": 0})
  full = full_init(rng)
  lazy = init_params(model, rng, 3)
  assert jax.tree.structure(lazy) == jax.tree.structure(full)
  for a, b in zip(jax.tree.leaves(lazy), jax.tree.leaves(full)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  other = init_params(model, jax.random.PRNGKey(8), 3)  # the key matters
  assert not np.array_equal(other["down0_conv0"]["kernel"], lazy["down0_conv0"]["kernel"])


def test_init_params_compiles_once_per_architecture(caplog):
  """Calls with other keys and an equal model reuse the compiled program; another
  width or channel count compiles anew (JAX logs each compilation)."""
  import logging
  def compiles(*calls):
    keys = [jax.random.PRNGKey(seed) for _, seed, _ in calls]
    caplog.clear()
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
      for (model, _, channels), key in zip(calls, keys):
        init_params(model, key, channels)
    return sum(r.getMessage().startswith("Compiling") for r in caplog.records)
  assert compiles((UNet(features=3, depth=2), 0, 1)) >= 1
  assert compiles((UNet(features=3, depth=2), 1, 1), (UNet(features=3, depth=2), 2, 1)) == 0
  assert compiles((UNet(features=5, depth=2), 0, 1)) >= 1
  assert compiles((UNet(features=3, depth=2), 0, 2)) >= 1


def test_forward_rejects_invalid_input():
  model = UNet(features=2, depth=2)
  variables = {"params": init_params(model, jax.random.PRNGKey(0), 1)}
  with pytest.raises(ValueError, match="56 or 60"):
    model.apply(variables, jnp.ones((1, 58, 60, 1)))
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    model.apply(variables, jnp.ones((60, 60, 1)))


def test_he_normal_init_std():
  params = init_params(UNet(features=16), jax.random.PRNGKey(1), 1)  # = model.init (tested above)
  # paper: std sqrt(2/N), N = incoming nodes of one neuron: 9*C_in for a 3x3 conv,
  # C_in for the 2x2 stride-2 up-conv (one kernel tap reaches each output pixel)
  for name, fan_in in [("down1_conv1", 9 * 32), ("down3_conv0", 9 * 64), ("up2_upconv", 128)]:
    k = np.asarray(params[name]["kernel"])
    assert k.std() == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.06), name
    assert abs(k.mean()) < 0.1 * k.std()
  assert np.all(np.asarray(params["down0_conv0"]["bias"]) == 0)


def test_dropout_only_in_training_and_uses_dropout_stream():
  model = UNet(features=4, depth=2, dropout_rate=0.5)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 60, 60, 1)), jnp.float32)
  v = {"params": init_params(model, jax.random.PRNGKey(0), 1)}
  apply = jax.jit(model.apply, static_argnames="train")
  a = apply(v, x)
  np.testing.assert_array_equal(a, apply(v, x))
  t1 = apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  t2 = apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  assert not np.allclose(t1, a) and not np.allclose(t1, t2)
  no_drop = UNet(features=4, depth=2, dropout_rate=0.0)
  np.testing.assert_allclose(
      jax.jit(no_drop.apply, static_argnames="train")(
          v, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)}), a, atol=1e-6)


def test_input_channels_come_from_x():
  model = UNet(features=2, depth=2)
  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.ones((1, 60, 60, 3))))
  assert v["params"]["down0_conv0"]["kernel"].shape == (3, 3, 3, 2)


def test_bfloat16_compute_keeps_fp32_params_and_logits():
  model = UNet(features=4, depth=2, dtype=jnp.bfloat16)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 60, 60, 1)), jnp.float32)
  v = {"params": init_params(model, jax.random.PRNGKey(0), 1)}
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v))
  y = jax.jit(model.apply)(v, x)
  ref = jax.jit(UNet(features=4, depth=2).apply)(v, x)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, ref, atol=0.05 * float(jnp.abs(ref).max()) + 1e-3)


# --------------------------------------------------------------------------
# padding="same": the non-default ablation variant.
# --------------------------------------------------------------------------


def test_valid_padding_is_the_default():
  from configs import default
  assert UNet().padding == "valid"
  assert default.get_config().padding == "valid"


def test_same_padding_has_the_paper_parameters():
  valid = _abstract_params(UNet())
  same = _abstract_params(UNet(padding="same"), size=16)
  shapes = lambda p: jax.tree.map(lambda x: (x.shape, x.dtype), p)  # noqa: E731
  assert shapes(same) == shapes(valid)  # same names, shapes and dtypes
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(same)) == 31_030_658


@pytest.mark.parametrize("h,w", [(32, 32), (48, 80)])
def test_same_padding_output_size_equals_input_size(h, w):
  model = UNet(features=4, depth=2, dropout_rate=0.0, padding="same")
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, h, w, 1)), jnp.float32)
  variables = {"params": init_params(model, jax.random.PRNGKey(0), 1)}
  assert model.apply(variables, x).shape == (1, h, w, 2)
  # the same parameters run the VALID net too (on a valid size)
  assert UNet(features=4, depth=2).apply(variables, jnp.zeros((1, 44, 44, 1))).shape == (
      1, 4, 4, 2)


def test_same_padding_first_conv_is_a_zero_padded_convolution():
  """`conv3x3_same` against scipy: a zero-padded 3x3 correlation plus bias (the ReLU is the model's)."""
  import scipy.ndimage as ndi
  from unet_jax import layers
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 8, 8, 1)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 1, 2)).astype(np.float32)
  bias = np.array([0.5, -0.25], np.float32)
  got = np.asarray(layers.conv3x3_same(jnp.asarray(x), kernel, bias))
  for o in range(2):
    want = ndi.correlate(x[0, :, :, 0], kernel[:, :, 0, o], mode="constant") + bias[o]
    np.testing.assert_allclose(got[0, :, :, o], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [30, 33, 8])
def test_same_padding_rejects_sizes_off_the_pooling_grid(size):
  from unet_jax.model import tile_output_size
  with pytest.raises(ValueError, match="multiple of 16"):
    tile_output_size(size, 4, "same")
  with pytest.raises(ValueError, match="multiple of 16"):
    UNet(padding="same").init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 1)))


# --------------------------------------------------------------------------
# The whole net against a forward pass written here from the paper (Fig. 1).
# --------------------------------------------------------------------------


def _np_conv_valid(x, kernel, bias):
  """Unpadded (VALID) correlation of ``x`` [H, W, C] with an HWIO kernel, plus bias."""
  k = kernel.shape[0]
  windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(0, 1))  # [H', W', C, k, k]
  return np.einsum("hwcij,ijco->hwo", windows, kernel) + bias


def _np_unet(params, x, depth, dropout_masks=None):
  """The paper's U-Net on one image ``x`` [H, W, C] in float64 NumPy, from the Flax
  parameter names: per level two VALID 3x3 conv + ReLU, 2x2 max-pool; bottleneck;
  2x2 stride-2 up-conv (``y[2h+a, 2w+b] = x[h, w] @ k[a, b]``, the documented kernel
  convention), centre crop of the skip, concatenation [skip, up], two conv + ReLU;
  final 1x1 conv. Dropout is absent (inference) unless ``dropout_masks`` = (deepest
  encoder level's, bottleneck's) multiplicative masks: the authors' Caffe placement,
  the encoder one before that map is both skip and pooled."""
  p = {name: {k: np.asarray(v, np.float64) for k, v in layer.items()}
       for name, layer in params.items()}

  def double_conv(h, name):
    for i in range(2):
      layer = p[f"{name}_conv{i}"]
      h = np.maximum(_np_conv_valid(h, layer["kernel"], layer["bias"]), 0.0)
    return h

  h = np.asarray(x, np.float64)
  skips = []
  for level in range(depth):
    h = double_conv(h, f"down{level}")
    if dropout_masks is not None and level == depth - 1:
      h = h * dropout_masks[0]
    skips.append(h)
    rows, cols, c = h.shape
    h = h.reshape(rows // 2, 2, cols // 2, 2, c).max(axis=(1, 3))
  h = double_conv(h, "bottleneck")
  if dropout_masks is not None:
    h = h * dropout_masks[1]
  for level in reversed(range(depth)):
    kernel, bias = p[f"up{level}_upconv"]["kernel"], p[f"up{level}_upconv"]["bias"]
    up = np.zeros((2 * h.shape[0], 2 * h.shape[1], kernel.shape[-1]))
    for a in range(2):
      for b in range(2):
        up[a::2, b::2] = h @ kernel[a, b] + bias
    skip = skips[level]
    top, left = (skip.shape[0] - up.shape[0]) // 2, (skip.shape[1] - up.shape[1]) // 2
    assert top > 0 and left > 0  # the crop really cuts something
    skip = skip[top:top + up.shape[0], left:left + up.shape[1]]
    h = double_conv(np.concatenate([skip, up], axis=-1), f"up{level}")
  return h @ p["classifier"]["kernel"][0, 0] + p["classifier"]["bias"]


@pytest.mark.parametrize("depth,features,shape,reference_ops", [
    (2, 3, (60, 52), False),
    (2, 3, (60, 52), True),
    (3, 2, (100, 108), False),
])
def test_forward_equals_a_numpy_unet_written_from_the_paper(depth, features, shape,
                                                            reference_ops):
  """``UNet.apply`` (dropout 0.5 configured, off with train=False) against ``_np_unet``:
  an independent float64 forward of the whole net, on random weights and biases,
  2 input channels, 3 classes, a non-square input and a batch of 2."""
  from random_nets import random_variables
  model = UNet(num_classes=3, features=features, depth=depth, dropout_rate=0.5,
               reference_ops=reference_ops)
  variables = random_variables(model, 2, seed=depth)
  x = np.random.default_rng(0).normal(size=(2,) + shape + (2,)).astype(np.float32)
  got = np.asarray(jax.jit(model.apply)(variables, x))
  assert got.shape == (2, output_size(shape[0], depth), output_size(shape[1], depth), 3)
  for n in range(2):
    want = _np_unet(variables["params"], x[n], depth)
    np.testing.assert_allclose(got[n], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_dropout_sits_at_the_end_of_the_contracting_path():
  """Training mode: exactly two dropouts, on the deepest encoder level's output and on
  the bottleneck's (paper: "at the end of the contracting path"; the Caffe model's
  placement), with rate p. Their masks, read from the captured dropout outputs, put
  into the NumPy net at those two places reproduce the training-mode logits."""
  import flax.linen as nn
  from random_nets import random_variables
  depth, p = 2, 0.5
  model = UNet(num_classes=3, features=3, depth=depth, dropout_rate=p)
  variables = random_variables(model, 1, seed=3)
  x = np.random.default_rng(1).normal(size=(1, 60, 52, 1)).astype(np.float32)
  logits, state = model.apply(variables, x, train=True,
                              rngs={"dropout": jax.random.PRNGKey(5)},
                              capture_intermediates=lambda m, _: isinstance(m, nn.Dropout))
  outs = [v["__call__"][0] for _, v in sorted(state["intermediates"].items())]
  assert [o.shape[-1] for o in outs] == [3 * 2**(depth - 1), 3 * 2**depth]
  # y = x m / (1 - p): where x = 0 any mask value gives the same product; a wrong rate
  # (another scale of the kept values) would not reproduce the logits below
  masks = [np.where(np.asarray(o[0]) != 0, 1.0 / (1.0 - p), 0.0) for o in outs]
  want = _np_unet(variables["params"], x[0], depth, dropout_masks=masks)
  np.testing.assert_allclose(np.asarray(logits[0]), want, rtol=1e-5,
                             atol=1e-5 * np.abs(want).max())
  inference = np.asarray(model.apply(variables, x, train=False)[0])
  assert np.abs(inference - want).max() > 1e-3  # the masks matter


def _operand_dtypes(jaxpr, names=("conv_general_dilated", "dot_general"), found=None):
  """``{primitive: [operand dtypes, ...]}`` of every conv / dot in a jaxpr, sub-jaxprs
  (jit, custom_vjp, scan) included."""
  found = {n: [] for n in names} if found is None else found
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in found:
      found[eqn.primitive.name].append(tuple(str(v.aval.dtype) for v in eqn.invars))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
        if hasattr(sub, "eqns"):
          _operand_dtypes(sub, names, found)
  return found


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_compute_dtype_reaches_every_convolution(dtype):
  """The traced program of ``UNet(dtype=...)``: all 10 3x3 convolutions (depth 2) and
  the 3 matmuls (2 up-convolutions, the 1x1 classifier) take operands of the compute
  dtype, not float32 copies; the float32 net is the control of the count."""
  from random_nets import random_variables
  model = UNet(features=4, depth=2, dropout_rate=0.0, dtype=jnp.dtype(dtype))
  variables = random_variables(model, 1)
  jaxpr = jax.make_jaxpr(model.apply)(variables, jnp.zeros((1, 44, 44, 1))).jaxpr
  ops = _operand_dtypes(jaxpr)
  assert len(ops["conv_general_dilated"]) == 2 * (2 * 2 + 1)
  assert len(ops["dot_general"]) == 2 + 1
  for operands in ops["conv_general_dilated"] + ops["dot_general"]:
    assert operands == (dtype, dtype)
