"""benchmarks/train_step.py: its markdown table and the ``+thp`` variants (no timing)."""

import json
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import train_step  # noqa: E402  pylint: disable=g-import-not-at-top


def _variant(forward: float, step: float, faults: int | None) -> dict:
  v = {"warmup": {"first_step_s": 1.0}, "peak_rss_mb": 1024.0, "forward_median_s": forward,
       "step_median_s": step, "step_cpu_median_s": 2 * step}
  if faults is not None:
    v["step_faults_median"] = faults
  return v


def _run(variants: dict) -> dict:
  return {"date": "2026-12-03T13:38:00", "size": 572, "features": 64, "depth": 4, "batch": 1,
          "dtype": "float32", "padding": "valid", "reps": {}, "cpu_count": 2,
          "machine": "test", "xla_flags": "", "load_before": "0", "load_after": "0",
          "variants": variants}


def _table(tmp_path, run: dict) -> dict[str, list[str]]:
  """Writes ``run`` as the only JSON beside the table; returns the table's rows by label."""
  (tmp_path / "train_step_572_f64_float32_t.json").write_text(json.dumps(run))
  out = tmp_path / "table.md"
  train_step.write_markdown(str(out))
  # cells: label, forward, ratio, step, ratio, step CPU, ratio, faults, RSS, first step
  return {cells[0]: cells for cells in
          ([c.strip() for c in line.strip("|").split("|")]
           for line in out.read_text().splitlines() if line.startswith("| unet_jax")
           or line.startswith("| PyTorch"))}


def test_thp_rows_are_compared_with_pytorch_under_the_same_setting(tmp_path):
  rows = _table(tmp_path, _run({
      "jax": _variant(1.2, 4.0, 300_000), "jax+thp": _variant(1.0, 3.0, 2_000),
      "torch": _variant(1.0, 4.0, 450_000), "torch+thp": _variant(0.8, 2.0, 16_000)}))
  thp = f", `GLIBC_TUNABLES={train_step.THP_TUNABLE}`"
  jax = "unet_jax `UNet()`, `layers.xla_compiler_options()`"
  assert rows[jax][1:5] == ["1.2", "1.20×", "4", "1.00×"]  # against plain PyTorch
  assert rows[jax + thp][1:5] == ["1", "1.25×", "3", "1.50×"]  # against PyTorch +thp
  assert rows["PyTorch eager" + thp][2] == "1.00×"
  assert [rows[k][7] for k in (jax, jax + thp, "PyTorch eager", "PyTorch eager" + thp)] == \
      ["300k", "2k", "450k", "16k"]


def test_runs_from_before_page_faults_were_recorded_still_render(tmp_path):
  rows = _table(tmp_path, _run({"jax": _variant(1.0, 1.0, None),
                                "torch": _variant(1.0, 2.0, None)}))
  assert rows["PyTorch eager"][7] == "–" and rows["PyTorch eager"][4] == "1.00×"


def test_thp_variant_names_are_accepted_and_unknown_ones_refused(capsys):
  with pytest.raises(SystemExit) as e:
    train_step.main(["--variants", "jax,nope+thp"])
  assert e.value.code == 2 and "nope+thp" in capsys.readouterr().err


def test_paired_ratios_are_per_round(tmp_path):
  """Each JAX call over the PyTorch call of the same round: [2/1, 4/4, 6/3] -> median 2."""
  jax, torch = _variant(1.0, 4.0, None), _variant(1.0, 4.0, None)
  jax.update(step_s=[2.0, 4.0, 6.0], forward_s=[1.0, 1.0, 3.0])
  torch.update(step_s=[1.0, 4.0, 3.0], forward_s=[2.0, 1.0, 1.0])
  (tmp_path / "train_step_572_f64_float32_t.json").write_text(
      json.dumps(_run({"jax": jax, "torch": torch})))
  train_step.write_markdown(str(tmp_path / "table.md"))
  line = [x for x in (tmp_path / "table.md").read_text().splitlines()
          if x.startswith("Paired (")]
  assert line and line[0].endswith(": `jax` step 2.00× (1.00–2.00, 3 pairs), "
                                   "forward 1.00× (0.50–3.00, 3 pairs).")


def test_pooled_ratios_span_runs(tmp_path):
  """Rounds of two runs pooled: ratios [2, 1, 2] and [0.5] -> median 1.5, 2 of 4 <= 1.0."""
  paths = []
  for i, (js, ts) in enumerate([([2.0, 4.0, 6.0], [1.0, 4.0, 3.0]), ([1.0], [2.0])]):
    jax, torch = _variant(1.0, 1.0, None), _variant(1.0, 1.0, None)
    jax.update(step_s=js, forward_s=js)
    torch.update(step_s=ts, forward_s=ts)
    paths.append(tmp_path / f"run{i}.json")
    paths[-1].write_text(json.dumps(_run({"jax": jax, "torch": torch})))
  q = train_step.pooled([str(p) for p in paths])
  assert q["step"]["runs"] == 2 and q["step"]["rounds"] == 4 and q["step"]["median"] == 1.5
  assert q["step"]["at_or_under_1"] == 0.5 and q["step"]["q1"] == 1.0 and q["step"]["q3"] == 2.0


def test_every_variant_gets_a_row(tmp_path):
  """A variant without a label would fail after a long run, when the table is written."""
  rows = _table(tmp_path, _run({v: _variant(1.0, 2.0, 1000) for v in train_step.VARIANTS}))
  assert len(rows) == len(train_step.VARIANTS)
