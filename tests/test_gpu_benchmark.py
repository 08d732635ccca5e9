"""benchmarks/gpu.py: its FLOP count against XLA's, and a --tiny run on this machine."""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import pytest

from unet_jax import UNet

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.mark.parametrize("size,features,batch", [(188, 4, 2)])
def test_unet_flops_matches_xla_cost_analysis(size, features, batch):
  """The analytic count (convolutions only) against XLA's for the textbook ops."""
  model = UNet(features=features, depth=4, dropout_rate=0.0, reference_ops=True)
  x = jnp.zeros((batch, size, size, 1))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x[:1]))  # shapes suffice
  cost = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  if not cost or "flops" not in cost:
    pytest.skip("this XLA backend reports no FLOP count")
  ours = gpu.unet_flops(size, batch, features)
  # XLA also counts ReLU, pooling and bias adds: ~3 % of a 4-feature net, < 1 % at 64.
  assert abs(ours - cost["flops"]) / cost["flops"] < 0.05, (ours, cost["flops"])


def test_peak_table_lookup():
  assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0
  assert gpu.peak_tflops("NVIDIA A100-SXM4-40GB") == 312.0
  assert gpu.peak_tflops("cpu") is None


@pytest.mark.slow
def test_tiny_run_writes_the_tables(tmp_path, monkeypatch):
  monkeypatch.setenv("UNET_JAX_CACHE", str(tmp_path / "cache"))
  # One toy case (each case costs two compilations on this CPU); --cases picks it.
  run = gpu.main(["--tiny", "--cases=204x2xbfloat16", "--variants=jax,jax_reference",
                  "--workers=0", "--reps=1", "--loader_batches=1", f"--out_dir={tmp_path}"])
  assert [(c["size"], c["batch"], c["dtype"]) for c in run["cases"]] == [(204, 2, "bfloat16")]
  for name in ("jax", "jax_reference"):
    v = run["cases"][0]["variants"][name]
    assert "error" not in v and v["step_s"] > 0 and v["forward_s"] > 0, name
  assert run["cases"][0]["train_flops"] == 3 * gpu.unet_flops(204, 2, 8)
  assert [r["num_workers"] for r in run["loader"]] == [0]
  md = next(tmp_path.glob("gpu_*_tiny.md")).read_text()
  assert md.count("| jax |") == 1 and md.count("| jax_reference |") == 1 and "samples/s" in md
  assert json.loads(next(tmp_path.glob("gpu_*_tiny.json")).read_text())["tiny"] is True
