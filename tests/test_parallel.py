"""Data parallelism on 2 (forced host) devices equals the single-device result.

``XLA_FLAGS=--xla_force_host_platform_device_count=2`` must be set before jax is
imported, so the two-device side runs in one subprocess: the bare data-parallel
step, then ``train_and_evaluate`` on the tiny config (batch 2, resumed once);
the single-device side runs in the test process.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np

from unet_jax import inference, train_lib

REPO = pathlib.Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from random_nets import random_variables
    from unet_jax import parallel
    from unet_jax.losses import weighted_cross_entropy
    from unet_jax.model import UNet, output_size

    assert len(jax.devices()) == 2, jax.devices()
    model = UNet(features=4, depth=2, dropout_rate=0.0)
    size, out = 44, output_size(44, 2)
    rng = np.random.default_rng(0)
    batch = {"image": rng.standard_normal((2, size, size, 1)).astype(np.float32),
             "label": rng.integers(0, 2, (2, out, out)).astype(np.int32),
             "weight": rng.uniform(0.5, 5.0, (2, out, out)).astype(np.float32)}
    tx = optax.sgd(0.05, momentum=0.99)

    def init_state():
      params = random_variables(model, channels=1)["params"]  # no init compile
      return {"params": params, "opt": tx.init(params)}

    def step(state, batch):
      def loss_fn(p):
        logits = model.apply({"params": p}, batch["image"])
        return weighted_cross_entropy(logits, batch["label"], batch["weight"])
      loss, grads = jax.value_and_grad(loss_fn)(state["params"])
      updates, opt = tx.update(grads, state["opt"], state["params"])
      return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, {"loss": loss}

    single = jax.jit(step, donate_argnums=0)
    s1, m1 = single(init_state(), batch)
    s1, m1 = single(s1, batch)

    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.devices.size == 2
    sharded = parallel.jit_data_parallel(step, mesh)
    state = parallel.replicate(init_state(), mesh)
    b = parallel.shard_batch(batch, mesh)
    assert b["image"].sharding.shard_shape(b["image"].shape) == (1, size, size, 1)
    s2, m2 = sharded(state, b)
    s2, m2 = sharded(s2, b)
    leaf = jax.tree.leaves(s2["params"])[0]
    assert leaf.sharding.is_fully_replicated and len(leaf.devices()) == 2

    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-5)
    for a, c in zip(jax.tree.leaves(s2), jax.tree.leaves(s1)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-4, atol=1e-5)

    try:
      parallel.shard_batch({"x": np.zeros((3, 2))}, mesh)
      raise AssertionError("expected ValueError for a batch of 3 on 2 devices")
    except ValueError as e:
      assert "multiple of the 2 devices" in str(e)

    # The training loop: 2 steps, resume to 4, on the 2 devices.
    import sys
    from configs import tiny
    from unet_jax import train_lib
    from unet_jax.errors import UserInputError
    workdir = sys.argv[1]
    c = tiny.get_config()
    c.eval_every, c.batch_size, c.checkpoint_every = 4, 2, 2  # validation on both devices
    assert train_lib._data_parallel_mesh(c) is not None
    for steps in (2, 4):
      c.num_steps = steps
      train_lib.train_and_evaluate(c, workdir)
    c.batch_size = 3
    try:
      train_lib.train_and_evaluate(c, workdir + "_odd")
      raise AssertionError("expected UserInputError for batch 3 on 2 devices")
    except UserInputError as e:
      assert "multiple of the 2 devices" in str(e)
    print("PARALLEL_OK")
""")

_INFERENCE_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from random_nets import random_variables
    from unet_jax import parallel, tiling
    from unet_jax.model import UNet

    assert len(jax.devices()) == 2, jax.devices()
    model = UNet(features=4, depth=2, dropout_rate=0.0)
    variables = random_variables(model, channels=1)
    image = np.random.default_rng(0).standard_normal((61, 47)).astype(np.float32)
    full = tiling.full_image_reference(model, variables, image, 44)
    # 44-px tiles (20-px outputs, stride 16) on an odd-sized image: 4 x 3 tiles per
    # view; 5 per device and call (10 in all), so the last batch is filled up.
    for method in ("device", "host"):
      for tta in (False, True):
        kw = dict(tile_size=44, batch_size=5, tta=tta, method=method)
        one = tiling.predict_tiled(model, variables, image, devices=jax.devices()[:1], **kw)
        two = tiling.predict_tiled(model, variables, image, **kw)  # default: both devices
        np.testing.assert_allclose(two, one, rtol=0, atol=1e-6)
        if not tta:  # and both are the one forward pass over the padded image
          np.testing.assert_allclose(two, full, rtol=0, atol=1e-5)

    # The compiled program runs the net on 5 tiles per device (a global batch of 10).
    mesh = tiling.inference_mesh()
    assert mesh.devices.size == 2 and tiling.inference_mesh(jax.devices()[:1]) is None
    v, x = parallel.replicate(variables, mesh), parallel.replicate(image[..., None], mesh)
    hlo = tiling.predict_sum.lower(model, v, x, tile_size=44, batch_size=5,
                                   views=((0, False),), mesh=mesh).compile().as_text()
    assert "f32[5,44,44,1]" in hlo and "f32[10,44,44,1]" not in hlo, hlo[:2000]

    # predict_images copies the parameters onto the devices once, not once per image.
    import ml_collections
    from unet_jax import evaluation
    moved, replicate = [], parallel.replicate
    def counting_replicate(tree, m):
      target = parallel.replicated_sharding(m)
      leaves = jax.tree_util.tree_leaves(tree)
      if isinstance(tree, dict) and "params" in tree:  # not the images
        moved.append(any(not (isinstance(l, jax.Array) and l.sharding == target)
                         for l in leaves))
      return replicate(tree, m)
    parallel.replicate = counting_replicate
    images = [image, image[:50, :40], image.T]
    config = ml_collections.ConfigDict(dict(eval_tile_size=44, eval_batch_size=5))
    probs = evaluation.predict_images(model, variables, images, config)
    parallel.replicate = replicate
    for im, p in zip(images, probs):
      ref = tiling.predict_tiled(model, variables, im, tile_size=44, devices=jax.devices()[:1])
      np.testing.assert_allclose(p, ref, rtol=0, atol=1e-6)
    assert moved.count(True) == 1 and len(moved) == 1 + len(images), moved
    print("INFERENCE_OK")
""")


def _two_device_env() -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"),
                                       env.get("PYTHONPATH", "")])
  return env


def test_tiled_inference_over_two_devices_equals_one():
  """predict_tiled splits its tile batches over both devices; same probabilities."""
  proc = subprocess.run([sys.executable, "-c", _INFERENCE_SCRIPT], env=_two_device_env(),
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "INFERENCE_OK" in proc.stdout


def test_two_devices_match_one(tiny_config, tmp_path, monkeypatch):
  """The data-parallel step and a resumed data-parallel training run equal one device."""
  monkeypatch.setenv("UNET_JAX_CACHE", str(tmp_path / "cache"))
  proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "two")],
                        env=_two_device_env(),
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "PARALLEL_OK" in proc.stdout
  c = tiny_config
  c.eval_every, c.batch_size, c.checkpoint_every, c.num_steps = 0, 2, 2, 4
  train_lib.train_and_evaluate(c, str(tmp_path / "one"))
  two = inference.load_for_inference(tmp_path / "two", "latest")[2]["params"]
  one = inference.load_for_inference(tmp_path / "one", "latest")[2]["params"]
  for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(one)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_make_mesh_single_device():
  from unet_jax import parallel
  import jax
  mesh = parallel.make_mesh(jax.devices()[:1])
  assert mesh.axis_names == ("data",) and mesh.devices.size == 1


_DRY_RUN_SCRIPT = textwrap.dedent("""
    import jax
    from configs import tiny
    from unet_jax import config_lib, train_lib
    assert jax.device_count() == 2
    c = config_lib.resolve(tiny.get_config(), 1)
    c.batch_size = 2
    report = train_lib.dry_run(c)
    print("PEAK", report["estimated_peak_memory_bytes"], report["devices"])
""")


def test_dry_run_estimates_memory_per_device(tiny_config):
  """--dry_run compiles the step as the training runs it: on 2 devices a batch of 2 needs
  about the memory of a batch of 1 on one device, not that of a batch of 2."""
  from unet_jax import config_lib, train_lib
  proc = subprocess.run([sys.executable, "-c", _DRY_RUN_SCRIPT], env=_two_device_env(),
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  (line,) = [l for l in proc.stdout.splitlines() if l.startswith("PEAK")]
  two_devices, devices = map(int, line.split()[1:])
  assert devices == 2
  one = {}
  for b in (1, 2):
    c = config_lib.resolve(tiny_config.copy_and_resolve_references(), 1)
    c.batch_size = b
    one[b] = train_lib.dry_run(c)["estimated_peak_memory_bytes"]
  assert abs(two_devices - one[1]) < 0.05 * one[1], (two_devices, one)
  assert two_devices < 0.75 * one[2], (two_devices, one)
