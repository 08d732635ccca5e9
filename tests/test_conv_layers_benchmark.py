"""benchmarks/conv_layers.py: its layer list against the model, and a tiny run (no timing)."""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import pytest

from unet_jax import UNet, layers

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import conv_layers  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.mark.parametrize("size,features,depth", [(572, 64, 4), (188, 4, 4), (140, 8, 3)])
def test_layer_list_is_the_models_convolutions(monkeypatch, size, features, depth):
  """Records the shapes every 3x3 conv of UNet() sees (abstract evaluation only)."""
  seen = []
  conv = layers.conv3x3_valid

  def recording(x, kernel, bias=None):
    seen.append((x.shape[1], kernel.shape[2], kernel.shape[3]))
    assert x.shape[1] == x.shape[2] and x.shape[3] == kernel.shape[2]
    return conv(x, kernel, bias)

  monkeypatch.setattr(layers, "conv3x3_valid", recording)
  model = UNet(features=features, depth=depth)
  x = jnp.zeros((1, size, size, 1))
  jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
  assert len(seen) == 4 * depth + 2  # init traces the net once
  assert conv_layers.conv_layers(size, features, depth) == seen


def test_disagreeing_workers_are_named():
  checks = {"a": {"0/fwd": [1.0, 10.0], "0/dw": [2.0, 10.0]},
            "b": {"0/fwd": [1.0 + 5e-4, 10.0], "0/dw": [2.0 + 5e-3, 10.0]}}
  bad = conv_layers._disagreements(checks)
  assert len(bad) == 1 and bad[0].startswith("0/dw")


def _tiny(tmp_path, variants):
  conv_layers.main(["--size", "188", "--features", "4", "--reps", "1", "--variants", variants,
                    "--out-dir", str(tmp_path), "--tag", "t"])
  r = json.loads((tmp_path / "conv_layers_188_f4_t.json").read_text())
  table = (tmp_path / "conv_layers_188_f4_t.md").read_text().splitlines()
  return r, [line for line in table if line.startswith("| ")]


def test_tiny_run_of_both_xla_libraries(tmp_path):
  """Both workers start, agree on every output (else run() raises) and are timed on
  every layer: 18 forward, 17 input-gradient (none for the 1-channel input), 18 weight-gradient."""
  r, rows = _tiny(tmp_path, "jax_eigen,jax_ynnpack")
  for v in ("jax_eigen", "jax_ynnpack"):
    keys = r["median_s"][v]
    assert sum(k.endswith("/fwd") for k in keys) == 18
    assert sum(k.endswith("/dx") for k in keys) == 17 and "0/dx" not in keys
    assert sum(k.endswith("/dw") for k in keys) == 18
  assert len(rows) == 1 + 18 + 1  # header, layers, totals
  assert rows[1].startswith("| 188², 1→4 |") and rows[-1].startswith("| **all** |")


def test_tiny_run_against_pytorch(tmp_path):
  """PyTorch's NCHW outputs, transposed back, agree with XLA's (else run() raises)."""
  pytest.importorskip("torch", reason="PyTorch is a benchmark-only dependency "
                      "(requirements-bench.txt)")
  r, _ = _tiny(tmp_path, "jax_eigen,torch")
  assert set(r["median_s"]["torch"]) == set(r["median_s"]["jax_eigen"])


def test_tiny_run_of_the_plain_valid_forward(tmp_path):
  """The plain VALID forward agrees with ``layers.conv3x3_valid`` (else run() raises) and
  is timed for the forward only: it gets a forward column and no dX/dW columns."""
  r, rows = _tiny(tmp_path, "jax_eigen,jax_eigen_valid")
  keys = r["median_s"]["jax_eigen_valid"]
  assert len(keys) == 18 and all(k.endswith("/fwd") for k in keys)
  head = [c.strip() for c in rows[0].strip("|").split("|")]
  assert "fwd Eigen VALID" in head and "dx Eigen VALID" not in head
  assert "fwd best" in head and len(head) == 1 + 4 + 3  # layer, 4 timed columns, 3 best
