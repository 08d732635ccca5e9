"""Each fast op of unet_jax.layers against its textbook reference: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import layers
from unet_jax.losses import weighted_cross_entropy
from unet_jax.model import UNet, output_size
from random_nets import random_variables


def _rand(key, shape, scale=1.0):
  """Seeded normal values ``[*shape]`` float32. NumPy, not ``jax.random``: every new
  shape of a threefry sampler costs XLA:CPU ~1 s of compilation."""
  return jnp.asarray(scale * np.random.default_rng(key).standard_normal(shape), jnp.float32)


def _assert_close(a, b, rtol=2e-5, atol=2e-5):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  assert a.shape == b.shape
  scale = max(float(np.abs(b).max()), 1.0)
  np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * scale)


def _check_op_and_vjp(fast, ref, args, out_key=99):
  """Same output and same vjp w.r.t. every argument for a random cotangent."""

  def value_and_vjp(f):
    def run(*a):
      y, vjp = jax.vjp(f, *a)
      return y, vjp(_rand(out_key, y.shape))
    return jax.jit(run)(*args)  # one compilation instead of one per eager op

  (y, grads), (y_ref, grads_ref) = value_and_vjp(fast), value_and_vjp(ref)
  _assert_close(y, y_ref)
  for d, d_ref in zip(grads, grads_ref):
    _assert_close(d, d_ref)


@pytest.mark.parametrize("n,h,w,c,o", [(1, 9, 9, 3, 5), (2, 10, 7, 4, 20), (3, 6, 8, 1, 2)])
def test_conv3x3_valid_matches_reference(n, h, w, c, o):
  args = (_rand(0, (n, h, w, c)), _rand(1, (3, 3, c, o), 0.3), _rand(2, (o,)))
  _check_op_and_vjp(layers.conv3x3_valid, layers.conv_valid_reference, args)


def test_conv3x3_valid_without_bias_and_second_order_free_of_errors():
  x, k = _rand(0, (1, 8, 8, 2)), _rand(1, (3, 3, 2, 3))
  _check_op_and_vjp(layers.conv3x3_valid, layers.conv_valid_reference, (x, k))
  assert layers.conv3x3_valid(x, k).shape == (1, 6, 6, 3)


def test_conv3x3_valid_weight_grad_large_batch():
  # more than 16 images: the weight-gradient conv then has more than 16 input features
  args = (_rand(0, (18, 5, 5, 2)), _rand(1, (3, 3, 2, 3)), _rand(2, (3,)))
  _check_op_and_vjp(layers.conv3x3_valid, layers.conv_valid_reference, args)


@pytest.mark.parametrize("n,h,w,c,o", [(1, 9, 9, 3, 5), (2, 10, 7, 4, 20), (18, 5, 6, 2, 3)])
def test_conv3x3_same_matches_reference(n, h, w, c, o):
  """The custom VJP (weight gradient from the padded input) against JAX's own
  autodiff of the SAME conv; 18 images: > 16 input features in the dW conv."""
  args = (_rand(0, (n, h, w, c)), _rand(1, (3, 3, c, o), 0.3), _rand(2, (o,)))
  _check_op_and_vjp(layers.conv3x3_same, layers.conv_same_reference, args)
  _check_op_and_vjp(layers.conv3x3_same, layers.conv_same_reference, args[:2])


def test_conv3x3_valid_bfloat16_close_to_float32():
  x, k, b = _rand(0, (1, 12, 12, 8)), _rand(1, (3, 3, 8, 16), 0.2), _rand(2, (16,))
  y16 = layers.conv3x3_valid(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                             b.astype(jnp.bfloat16))
  assert y16.dtype == jnp.bfloat16
  _assert_close(y16, layers.conv_valid_reference(x, k, b), rtol=3e-2, atol=3e-2)
  loss = lambda k: jnp.sum(layers.conv3x3_valid(  # noqa: E731
      x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)).astype(jnp.float32) ** 2)
  loss_ref = lambda k: jnp.sum(layers.conv_valid_reference(x, k) ** 2)  # noqa: E731
  dk = jax.grad(loss)(k)
  assert dk.dtype == jnp.float32
  _assert_close(dk, jax.grad(loss_ref)(k), rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("n,h,w,c,o", [(1, 4, 5, 3, 2), (2, 3, 3, 6, 4)])
def test_upconv2x2_matches_reference(n, h, w, c, o):
  args = (_rand(0, (n, h, w, c)), _rand(1, (2, 2, c, o)), _rand(2, (o,)))
  _check_op_and_vjp(layers.upconv2x2, layers.upconv2x2_reference, args)
  assert layers.upconv2x2(*args).shape == (n, 2 * h, 2 * w, o)


def test_upconv2x2_convention():
  # y[n, 2h+a, 2w+b, o] = sum_c x[n, h, w, c] k[a, b, c, o]
  x, k = _rand(0, (1, 2, 3, 4)), _rand(1, (2, 2, 4, 5))
  y = np.asarray(layers.upconv2x2(x, k))
  expected = np.einsum("nhwc,abco->nhawbo", np.asarray(x), np.asarray(k)).reshape(1, 4, 6, 5)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 4, 6, 3), (2, 8, 2, 5)])
def test_max_pool2x2_matches_reference(shape):
  _check_op_and_vjp(layers.max_pool2x2, layers.max_pool2x2_reference, (_rand(0, shape),))


def test_max_pool2x2_rejects_odd_sizes():
  with pytest.raises(ValueError, match="even"):
    layers.max_pool2x2(jnp.zeros((1, 5, 4, 1)))


def test_conv1x1_matches_reference():
  args = (_rand(0, (2, 5, 4, 6)), _rand(1, (1, 1, 6, 2)), _rand(2, (2,)))
  _check_op_and_vjp(layers.conv1x1, layers.conv_valid_reference, args)


def test_center_crop():
  x = jnp.arange(2 * 6 * 8 * 1.0).reshape(2, 6, 8, 1)
  np.testing.assert_array_equal(layers.center_crop(x, 2, 4), x[:, 2:4, 2:6])
  with pytest.raises(ValueError, match="cannot crop"):
    layers.center_crop(x, 7, 4)


def test_xla_compiler_options_compile_and_keep_results():
  opts = layers.xla_compiler_options()
  if jax.default_backend() == "cpu":
    assert opts, "expected the XLA:CPU options on a CPU backend"
  assert layers.xla_compiler_options("gpu") == {}
  x, k = _rand(0, (1, 8, 8, 2)), _rand(1, (3, 3, 2, 3))
  f = lambda x, k: jax.grad(lambda k: jnp.sum(layers.conv3x3_valid(x, k) ** 2))(k)  # noqa: E731
  _assert_close(jax.jit(f, compiler_options=opts or None)(x, k), jax.jit(f)(x, k))


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_unet_fast_ops_match_reference_ops(padding):
  """Depth-2, 4-feature UNet: logits and parameter gradients of the weighted loss."""
  size = 44
  out = output_size(size, 2) if padding == "valid" else size
  x = _rand(0, (2, size, size, 1))
  labels = jnp.asarray(np.random.default_rng(1).integers(0, 2, (2, out, out)), jnp.int32)
  weights = jnp.asarray(np.random.default_rng(2).uniform(0.5, 5.0, (2, out, out)), jnp.float32)
  fast = UNet(features=4, depth=2, dropout_rate=0.0, padding=padding)
  ref = UNet(features=4, depth=2, dropout_rate=0.0, reference_ops=True, padding=padding)
  # He-normal kernels, non-zero biases; compiling model.init would take ~15 s
  params = random_variables(fast, channels=1, seed=3)["params"]

  def loss(model, p):
    logits = model.apply({"params": p}, x)
    return weighted_cross_entropy(logits, labels, weights), logits

  # jitted: one compilation each instead of one per op (seconds instead of tens)
  (l_fast, logits_fast), g_fast = jax.jit(jax.value_and_grad(
      lambda p: loss(fast, p), has_aux=True))(params)
  (l_ref, logits_ref), g_ref = jax.jit(jax.value_and_grad(
      lambda p: loss(ref, p), has_aux=True))(params)
  _assert_close(logits_fast, logits_ref)
  _assert_close(l_fast, l_ref)
  assert jax.tree.structure(g_fast) == jax.tree.structure(g_ref)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
    _assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_unet_jax_jit_compiles_with_the_fast_options():
  """`unet_jax.jit` = jax.jit + xla_compiler_options(), as a call or a decorator."""
  import functools
  import unet_jax

  def options(lowered):  # what jax.jit hands to the compiler
    return dict(lowered._lowering._compiler_options_kvs)  # pylint: disable=protected-access

  x = jnp.arange(6.0)
  step = unet_jax.jit(lambda a, n: a * n, static_argnums=1)
  np.testing.assert_array_equal(step(x, 3), np.arange(6.0) * 3)
  assert options(step.lower(x, 3)) == layers.xla_compiler_options()
  deco = functools.partial(unet_jax.jit, compiler_options={"xla_cpu_enable_fast_math": False})
  merged = options(deco(lambda a: a + 1).lower(x))
  assert merged == {**layers.xla_compiler_options(), "xla_cpu_enable_fast_math": False}
  assert options(jax.jit(lambda a: a).lower(x)) == {}
