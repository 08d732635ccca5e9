"""Overlap-tile inference: seamless stitching, tile-size checks, TTA, memory estimate."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from random_nets import random_net, tta_by_hand
from unet_jax import UNet, model as model_lib, tiling
from unet_jax.errors import UserInputError

_net = functools.lru_cache(maxsize=None)(random_net)


def _image(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_smallest_usable_tile():
  assert tiling.smallest_usable_tile(4) == 204
  assert model_lib.output_size(204, 4) == 20
  assert tiling.smallest_usable_tile(2) == 44


@pytest.mark.parametrize("depth,features,tile,shape", [
    (2, 4, 44, (37, 53)),        # smallest usable tile at depth 2, many tiles
    (2, 4, 60, (30, 21, 2)),     # two channels, image smaller than a tile
    (4, 2, 204, (37, 53)),       # smallest usable tile at depth 4, image < tile
    (4, 2, 220, (300, 211)),     # several overlapping tiles, odd sizes
])
@pytest.mark.parametrize("method", ["device", "host"])
def test_tiled_equals_full_forward(depth, features, tile, shape, method):
  channels = shape[2] if len(shape) == 3 else 1
  model, variables = _net(depth, features, channels)
  image = _image(*shape)
  tiled = tiling.predict_tiled(model, variables, image, tile_size=tile, batch_size=3,
                               method=method)
  full = tiling.full_image_reference(model, variables, image, tile)
  assert tiled.shape == shape[:2] + (2,) and tiled.dtype == np.float32
  np.testing.assert_allclose(tiled, full, atol=1e-5)
  np.testing.assert_allclose(tiled.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("depth,features,tile,shape", [
    (2, 4, 44, (37, 53)),
    (4, 2, 220, (300, 211)),
])
def test_tiled_equals_one_forward_over_the_mirrored_image(depth, features, tile, shape):
  """Against a reference built here, without the tile plan: the paper's overlap-tile
  strategy (Fig. 2) equals one forward pass over the image mirrored by the net's border
  on every side (and by whatever more on the bottom/right makes a valid input size)."""
  model, variables = _net(depth, features)
  image = _image(*shape, seed=2)
  b = {2: 20, 4: 92}[depth]  # (input - output) / 2: 572 - 388 = 184 at depth 4 (paper)
  # valid outputs are 4 + k * 2**depth (inputs 188 + 16k at depth 4, 44 + 4k at depth 2)
  out = [s + (-(s - 4)) % 2**depth for s in shape]
  padded = np.pad(image, ((b, out[0] - shape[0] + b), (b, out[1] - shape[1] + b)), "reflect")
  logits = model.apply(variables, jnp.asarray(padded)[None, ..., None], train=False)[0]
  full = np.asarray(jax.nn.softmax(logits, -1))[:shape[0], :shape[1]]
  tiled = tiling.predict_tiled(model, variables, image, tile_size=tile, batch_size=2)
  np.testing.assert_allclose(tiled, full, atol=1e-5)


@pytest.mark.parametrize("depth,features,tile,shape,batch,tta", [
    (2, 4, 44, (37, 53), 3, False),      # 6 x 5 tiles, last batch partly filled
    (2, 4, 52, (61, 29, 2), 4, True),    # H != W: two view shapes under TTA
    (2, 4, 76, (33, 33), 1, True),       # square: all 8 views share one plan
    (4, 2, 220, (300, 211), 2, False),   # depth 4, several overlapping tiles
])
def test_device_program_equals_host_tiling(depth, features, tile, shape, batch, tta):
  """The one-program path (vmap + dynamic_slice, lax.map, on-device stitch) against
  the NumPy tiling loop, on odd sizes and several tile sizes."""
  channels = shape[2] if len(shape) == 3 else 1
  model, variables = _net(depth, features, channels)
  image = _image(*shape, seed=1)
  kw = dict(tile_size=tile, batch_size=batch, tta=tta)
  device = tiling.predict_tiled(model, variables, image, method="device", **kw)
  host = tiling.predict_tiled(model, variables, image, method="host", **kw)
  assert device.shape == host.shape == shape[:2] + (2,)
  np.testing.assert_allclose(device, host, atol=1e-6, rtol=0)
  if tta:  # a budget for one view per call gives the same mean
    one = tiling.predict_tiled(model, variables, image, method="device", memory_budget=1, **kw)
    np.testing.assert_allclose(one, device, atol=1e-6, rtol=0)


def test_device_method_refuses_same_padding_with_a_clear_error():
  """The one-program path plans VALID tiles only: a SAME net gets a message naming the
  method that works (before: a ValueError about an invalid VALID input size)."""
  model, variables = _net(2, 4)
  same = model.clone(padding="same")
  image = _image(40, 36)
  with pytest.raises(UserInputError, match="method='host'"):
    tiling.predict_tiled(same, variables, image, tile_size=32, method="device")
  host = tiling.predict_tiled(same, variables, image, tile_size=32, method="host")
  assert host.shape == (40, 36, 2)
  np.testing.assert_array_equal(
      tiling.predict_tiled(same, variables, image, tile_size=32), host)  # "auto" = host


def test_off_grid_tiles_are_not_seamless():
  """The negative control: shifting a tile by less than 2**depth changes its output."""
  model, variables = _net(2, 4)
  padded = _image(60, 60)[None, ..., None]
  a = model.apply(variables, padded[:, :48, :48], train=False)[0]
  b = model.apply(variables, padded[:, 2:50, :48], train=False)[0]  # shift 2, not 4
  assert np.abs(np.asarray(a[2:]) - np.asarray(b[:-2])).max() > 1e-4


def test_plan_is_on_the_grid_and_covers_the_image():
  plan = tiling.plan_tiles(300, 211, 220, 4)
  assert plan.out == 36 and plan.stride == 32
  assert all(r % 16 == 0 for r in plan.rows + plan.cols)
  assert plan.padded_out[0] >= 300 and plan.padded_out[1] >= 211
  assert plan.padded_out[0] - 300 < plan.stride


@pytest.mark.parametrize("size,names", [(572 + 3, ("572", "588")), (301, ("300", "316")), (500, ("492", "508"))])
def test_invalid_tile_size_names_nearest(size, names):
  model, variables = _net(4, 2)
  with pytest.raises(UserInputError) as err:
    tiling.predict_tiled(model, variables, _image(20, 20), tile_size=size)
  for n in names:
    assert n in str(err.value)


def test_too_small_tile_names_smallest_usable():
  model, variables = _net(4, 2)
  with pytest.raises(ValueError, match="smallest usable tile_size is 204"):
    tiling.predict_tiled(model, variables, _image(20, 20), tile_size=188)


def test_wrong_channel_count_is_a_user_error():
  model, variables = _net(2, 4)
  with pytest.raises(UserInputError, match="channel"):
    tiling.predict_tiled(model, variables, _image(20, 20, 3), tile_size=44)


def test_tta_is_equivariant_under_the_dihedral_group():
  model, variables = _net(2, 4)
  image = _image(29, 35)
  base = tiling.predict_tiled(model, variables, image, tile_size=48, tta=True)
  assert base.shape == (29, 35, 2)
  np.testing.assert_allclose(base.sum(-1), 1.0, atol=1e-5)
  flipped = tiling.predict_tiled(model, variables, image[:, ::-1], tile_size=48, tta=True)
  np.testing.assert_allclose(flipped[:, ::-1], base, atol=1e-5)
  rotated = tiling.predict_tiled(model, variables, np.rot90(image), tile_size=48, tta=True)
  np.testing.assert_allclose(np.rot90(rotated, -1), base, atol=1e-5)
  plain = tiling.predict_tiled(model, variables, image, tile_size=48)
  assert np.abs(plain - base).max() > 1e-6  # TTA really averages several views


@pytest.mark.parametrize("k,flip", tiling.DIHEDRAL)
def test_inverse_transform(k, flip):
  x = _image(5, 7, 2)
  np.testing.assert_array_equal(tiling.inverse_transform(tiling.transform(x, k, flip), k, flip), x)


def test_param_count_formula_matches_the_model():
  assert tiling.architecture_param_count(features=64, depth=4, num_classes=2,
                                         in_channels=1) == 31_030_658
  _, variables = _net(2, 4)
  n = sum(x.size for x in jax.tree.leaves(variables))
  assert tiling.architecture_param_count(features=4, depth=2, num_classes=2, in_channels=1) == n


def test_tile_size_for_memory():
  kw = dict(features=64, depth=4, num_classes=2, in_channels=1, batch_size=4)
  small = tiling.tile_size_for_memory(1 << 30, **kw)
  large = tiling.tile_size_for_memory(8 << 30, **kw)
  assert 204 <= small < large
  for t in (small, large):
    model_lib.output_size(t, 4)
  assert tiling.estimate_memory(small, **kw) <= 1 << 30 < tiling.estimate_memory(small + 16, **kw)
  assert tiling.tile_size_for_memory(8 << 30, max_tile=700, **kw) <= 700
  with pytest.raises(UserInputError, match="too small"):
    tiling.tile_size_for_memory(1 << 20, **kw)


def test_default_tile_covers_small_images():
  model, variables = _net(2, 4)
  t = tiling.choose_tile_size(model, 30, 21, 1, batch_size=2, memory_budget=1 << 30)
  assert t == model_lib.valid_input_size(30 + 2 * model_lib.border(2), 2)
  out = tiling.predict_tiled(model, variables, _image(30, 21), batch_size=2, memory_budget=1 << 30)
  assert out.shape == (30, 21, 2)


def _tile_sizes_used(monkeypatch) -> list[int]:
  """The tile size of every ``tiling.plan_tiles`` call from now on, in call order."""
  used = []
  real_plan = tiling.plan_tiles
  monkeypatch.setattr(tiling, "plan_tiles",
                      lambda h, w, tile, *a: used.append(tile) or real_plan(h, w, tile, *a))
  return used


def test_a_tile_far_larger_than_the_image_needs_is_halved(monkeypatch):
  """A 100 000-px VALID tile on a 30 x 21 image (a user's --tile_size) is not a 100 000²
  forward (37 GiB): it is halved while it still covers the image, and the probabilities
  are the full-image forward's. A tile below twice the covering one is kept."""
  model, variables = _net(2, 4)
  image = _image(30, 21)
  cover = tiling.covering_tile(30, 21, 2)
  assert cover == model_lib.valid_input_size(30 + 2 * model_lib.border(2), 2)
  used = _tile_sizes_used(monkeypatch)
  huge = model_lib.valid_input_size(100_000, 2)
  got = tiling.predict_tiled(model, variables, image, tile_size=huge, method="host")
  assert cover <= used[-1] < 2 * cover + 16, used
  np.testing.assert_allclose(got, tiling.full_image_reference(model, variables, image, cover),
                             atol=1e-5)
  for tile in (cover, model_lib.valid_input_size(2 * cover - 8, 2)):
    tiling.predict_tiled(model, variables, image, tile_size=tile, method="host")
    assert used[-1] == tile
  # one tile size for images of several sizes (one compilation), not one per size
  sizes = set()
  for side in (20, 24, 28, 33):
    tiling.predict_tiled(model, variables, _image(side, side), tile_size=huge, method="host")
    sizes.add(used[-1])
  assert len(sizes) <= 2, sizes


def test_same_padding_and_fixed_tiles_keep_the_given_tile(monkeypatch):
  """SAME tiles are reflect-padded, so their size changes the probabilities: kept as given."""
  model = UNet(features=4, depth=2, dropout_rate=0.0, padding="same")
  variables = {"params": model_lib.init_params(model, jax.random.PRNGKey(0), 1)}
  used = _tile_sizes_used(monkeypatch)
  tiling.predict_tiled(model, variables, _image(30, 21), tile_size=256)
  assert used == [256]


def test_bfloat16_model_gives_float32():
  model = UNet(features=4, depth=2, dropout_rate=0.0, dtype=jax.numpy.bfloat16)
  _, variables = _net(2, 4)
  out = tiling.predict_tiled(model, variables, _image(20, 20), tile_size=44)
  assert out.dtype == np.float32
  full = tiling.predict_tiled(_net(2, 4)[0], variables, _image(20, 20), tile_size=44)
  assert np.abs(out - full).max() < 0.05


def test_same_padding_uses_ordinary_non_overlapping_tiles():
  """Each 32-px tile of a reflect-padded image goes through the net on its own."""
  model = UNet(features=4, depth=2, dropout_rate=0.0, padding="same")
  variables = {"params": model_lib.init_params(model, jax.random.PRNGKey(0), 1)}
  image = np.random.default_rng(0).normal(size=(50, 70)).astype(np.float32)
  plan = tiling.plan_tiles(50, 70, 32, 2, "same")
  assert (plan.border, plan.stride, plan.out, plan.rows, plan.cols) == (
      0, 32, 32, (0, 32), (0, 32, 64))
  got = tiling.predict_tiled(model, variables, image, tile_size=32, batch_size=4)
  assert got.shape == (50, 70, 2)
  padded = np.pad(image, ((0, 14), (0, 26)), mode="reflect")[..., None]
  want = np.zeros((64, 96, 2), np.float32)
  for r in range(0, 64, 32):
    for c in range(0, 96, 32):
      logits = model.apply(variables, jnp.asarray(padded[None, r:r + 32, c:c + 32]))
      want[r:r + 32, c:c + 32] = np.asarray(jax.nn.softmax(logits, -1))[0]
  np.testing.assert_allclose(got, want[:50, :70], rtol=1e-5, atol=1e-6)
  # TTA and the automatic tile size work as well
  assert tiling.predict_tiled(model, variables, image, tta=True).shape == (50, 70, 2)
  with pytest.raises(UserInputError, match="multiple of 4"):
    tiling.predict_tiled(model, variables, image, tile_size=30)


def _conv_operand_dtypes(jaxpr, found=None):
  """Operand dtypes of every ``conv_general_dilated`` in a jaxpr and its sub-jaxprs
  (jit, custom_vjp, the scan of ``lax.map``)."""
  found = [] if found is None else found
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
        if hasattr(sub, "eqns"):
          _conv_operand_dtypes(sub, found)
  return found


def test_bfloat16_tiled_inference_convolves_in_bfloat16():
  """Both inference programs of a bfloat16 net (the device program ``predict_sum``
  under TTA, the host loop's batch call) trace every 3x3 convolution of the net
  (10 at depth 2) with bfloat16 operands; the probabilities differ from the float32
  net's by bfloat16 rounding, not by zero."""
  model = UNet(features=4, depth=2, dropout_rate=0.0, dtype=jnp.bfloat16)
  _, variables = _net(2, 4)
  image = jnp.asarray(_image(20, 20)[..., None])
  device = jax.make_jaxpr(lambda v, x: tiling.predict_sum(
      model, v, x, tile_size=44, batch_size=2, views=tiling.DIHEDRAL))(variables, image)
  probabilities = tiling._probabilities  # pylint: disable=protected-access
  host = jax.make_jaxpr(lambda v, x: probabilities(model, v, x))(  # the host loop's call
      variables, jnp.zeros((2, 44, 44, 1)))
  for jaxpr in (device.jaxpr, host.jaxpr):
    convs = _conv_operand_dtypes(jaxpr)
    assert len(convs) == 10 and set(convs) == {("bfloat16", "bfloat16")}
  f32 = tiling.predict_tiled(_net(2, 4)[0], variables, _image(20, 20), tile_size=44)
  for method in ("device", "host"):
    bf16 = tiling.predict_tiled(model, variables, _image(20, 20), tile_size=44, method=method)
    assert 1e-4 < np.abs(bf16 - f32).max() < 0.05


@pytest.mark.parametrize("method", ["device", "host"])
def test_tta_is_the_mean_probability_of_the_eight_dihedral_views(method):
  """``predict_tiled(tta=True)`` against the mean, built here, of the non-TTA
  probabilities of the 8 transformed images mapped back (a random, asymmetric net;
  H != W, so rotated views have their own tile plans). The mean is over
  probabilities: the softmax of the mean logits, and any single view, differ."""
  model, variables = _net(2, 4)
  image = _image(29, 35, seed=3)
  plain = functools.partial(tiling.predict_tiled, model, variables, tile_size=48, method=method)
  want, views = tta_by_hand(plain, image)
  got = tiling.predict_tiled(model, variables, image, tile_size=48, tta=True, method=method)
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
  assert min(np.abs(got - v).max() for v in views) > 1e-3  # no view alone is the mean
  mean_logits = np.asarray(jax.nn.softmax(np.mean(np.log(views), axis=0), -1))
  assert np.abs(got - mean_logits).max() > 1e-4


@pytest.mark.parametrize("depth,features,tile,batch,dtype", [
    (4, 8, 204, 4, "float32"),    # a row of the table in tile_size_for_memory's docstring (1.26)
    (2, 16, 140, 2, "float32"),   # measured 0.98
    (4, 8, 204, 4, "bfloat16"),   # 0.72 with 2 bytes per activation
    (2, 16, 140, 2, "bfloat16"),  # 0.77 with 2 bytes per activation
])
def test_memory_estimate_agrees_with_xla_memory_analysis(depth, features, tile, batch, dtype):
  """``estimate_memory`` against XLA's own figure for the compiled batched inference
  call on CPU (argument + output + temp bytes of ``memory_analysis()``, as
  benchmarks/inference.py): the documented 10-25 % safety margin, within
  [0.8, 1.6] (an activation peak off by 3x either way is outside). bfloat16 nets
  with the bytes per activation that the tiling uses here (``activation_bytes``)."""
  model, variables = _net(depth, features)
  model = model.clone(dtype=jnp.dtype(dtype))
  x = jax.ShapeDtypeStruct((batch, tile, tile, 1), jnp.float32)
  probabilities = tiling._probabilities  # pylint: disable=protected-access
  with jax.default_device(jax.devices("cpu")[0]):
    stats = probabilities.lower(model, variables, x).compile().memory_analysis()
  xla = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
  estimate = tiling.estimate_memory(tile, features=features, depth=depth, num_classes=2,
                                    in_channels=1, batch_size=batch,
                                    dtype_bytes=tiling.activation_bytes(model))
  assert 0.8 < estimate / xla < 1.6, (estimate, xla)
