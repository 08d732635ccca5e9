"""benchmarks/checkpoint_cost.py on the tiny config (no timing asserted)."""

import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import checkpoint_cost  # noqa: E402  pylint: disable=g-import-not-at-top


def test_every_variant_is_timed_once_per_round(tmp_path, monkeypatch):
  monkeypatch.setenv("UNET_JAX_CACHE", str(tmp_path / "cache"))
  times, mib = checkpoint_cost.measure(
      "tiny", 2, str(tmp_path), str(REPO / "results/synthetic/metrics.jsonl"))
  assert set(times) == {"save, waiting", "save, background: returns",
                        "save, background: written", "curves.png in the loop",
                        "curves.png, background: plot() returns"}
  assert all(len(v) == 2 and all(t > 0 for t in v) for v in times.values())
  # a background save is written after it returned
  for returned, written in zip(times["save, background: returns"],
                               times["save, background: written"]):
    assert written >= returned
  assert 0 < mib < 1
  assert len(list(tmp_path.glob("*/curves.png"))) == 4  # 2 drawn in the loop, 2 in the background
