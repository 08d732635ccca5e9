"""The ablation runner: row configs, a tiny end-to-end run, the table."""

import json

import numpy as np
import pytest

from unet_jax import ablations


def _row(name):
  return next(r for r in ablations.ROWS if r.name == name)


def test_row_configs_change_one_ingredient(tiny_config):
  base = tiny_config
  kwargs = dict(train_indices="0-1", val_indices="2", heldout_indices="3", select="best")
  paper = ablations.row_config(base, _row("paper"), 3, 7, **kwargs)
  assert (paper.seed, paper.num_steps, paper.train_indices, paper.val_indices,
          paper.heldout_indices) == (3, 7, "0-1", "2", "3")
  assert paper.padding == "valid" and paper.w0 == base.w0
  assert ablations.row_config(base, _row("w0_0"), 0, 7, **kwargs).w0 == 0.0
  assert ablations.row_config(base, _row("no_class_balance"), 0, 7,
                              **kwargs).class_weights == "none"
  no_elastic = ablations.row_config(base, _row("no_elastic"), 0, 7, **kwargs)
  assert no_elastic.augment.elastic_std == 0.0 and no_elastic.augment.rotate
  assert ablations.row_config(base, _row("momentum_0.9"), 0, 7, **kwargs).momentum == 0.9
  same = ablations.row_config(base, _row("same_padding"), 0, 7, **kwargs)
  assert same.padding == "same" and same.tile_size == 60  # depth 2: multiple of 4 already
  base.tile_size = 62
  assert ablations.row_config(base, _row("same_padding"), 0, 7, **kwargs).tile_size == 64
  last = ablations.row_config(base, _row("paper"), 0, 7, train_indices="0-1", val_indices="2",
                              heldout_indices="3", select="last")
  assert last.val_indices == "" and last.eval_every == 0
  assert base.padding == "valid" and base.seed == 0  # the base is not modified


def test_tiny_ablation_run_and_table(tiny_config, tmp_path):
  """Two rows, two steps each, on synthetic data; then the same call again (resume)."""
  base = tiny_config
  base.eval_every = 1
  kwargs = dict(num_steps=2, seeds=[0], rows=["paper", "same_padding"],
                train_indices="0-1", val_indices="2", heldout_indices="3", select="best")
  results = ablations.run_ablations(base, tmp_path / "runs", **kwargs)
  assert list(results) == ["paper", "same_padding"]
  for runs in results.values():
    run = runs[0]
    assert run["best"]["step"] in (1, 2)  # chosen on the validation image
    for key in ("tta", "no_tta"):
      assert run[key]["num_images"] == 1 and 0 <= run[key]["vrand"] <= 1
      assert np.isfinite(run[key]["warping_error"])
    assert run["train_seconds"] > 0
  same_dir = tmp_path / "runs" / "same_padding" / "seed0"
  assert json.loads((same_dir / "config.json").read_text())["padding"] == "same"
  assert (same_dir / "heldout_tta" / "metrics.json").is_file()
  # finished runs are read back, not retrained
  again = ablations.run_ablations(base, tmp_path / "runs", **kwargs)
  assert again == json.loads((tmp_path / "runs" / "ablations.json").read_text())
  assert again["paper"][0]["train_seconds"] == results["paper"][0]["train_seconds"]
  assert ablations.collect(tmp_path / "runs") == again  # the --table_only path
  path = ablations.write_table(results, tmp_path / "ablations.md", base_name="tiny",
                               num_steps=2, select="best", train_indices="0-1",
                               val_indices="2", heldout_indices="3")
  text = path.read_text()
  assert "**same_padding**" in text and "**no_tta**" in text


def test_run_with_a_parameter_average_scores_raw_and_average(tiny_config, tmp_path,
                                                            monkeypatch):
  """ema_decay > 0, last checkpoint: "tta"/"no_tta" score the raw last parameters,
  "ema_tta" their average (which parameters each evaluation received is recorded)."""
  import jax
  from unet_jax import evaluation, inference

  seen = []
  evaluate = evaluation.evaluate_split

  def recording(model, variables, data, config, **kwargs):
    scores = evaluate(model, variables, data, config, **kwargs)
    seen.append((variables["params"], kwargs["tta"], scores))
    return scores

  monkeypatch.setattr(evaluation, "evaluate_split", recording)
  c = ablations.row_config(tiny_config, _row("paper"), 0, 2, train_indices="0-1",
                           val_indices="", heldout_indices="3", select="last")
  c.ema_decay = 0.5
  run = ablations.run_one(c, tmp_path / "run", select="last")
  raw = inference.load_for_inference(tmp_path / "run", "latest", average=False)[2]["params"]
  avg = inference.load_for_inference(tmp_path / "run", "latest")[2]["params"]
  same = lambda a, b: all(np.array_equal(x, y) for x, y in  # noqa: E731
                          zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert not same(raw, avg)
  assert [(same(p, raw), same(p, avg), tta) for p, tta, _ in seen] == [
      (True, False, False), (True, False, True), (False, True, True)]
  assert [run[k] for k in ("no_tta", "tta", "ema_tta")] == [s for _, _, s in seen]


def test_interrupted_run_keeps_its_training_time(tiny_config, tmp_path):
  """A run stopped mid-training (Ctrl-C, SIGTERM) records the seconds it trained,
  and its resumption adds to them, so train_seconds.json is the whole run's time."""
  import time

  def interrupted(config, workdir):
    time.sleep(0.05)
    raise KeyboardInterrupt

  for attempt in (1, 2):
    with pytest.raises(KeyboardInterrupt):
      ablations.run_one(tiny_config, tmp_path / "run", select="last", train_fn=interrupted)
    seconds = json.loads((tmp_path / "run" / "train_seconds.json").read_text())["seconds"]
    assert seconds >= 0.05 * attempt
  assert not (tmp_path / "run" / "heldout.json").exists()


def _fake_run(seed, vrand, minutes=10.0):
  scores = {"vrand": vrand, "vinfo": vrand + 0.01, "pixel_error": 0.05,
            "warping_error": 0.001}
  return {"seed": seed, "train_seconds": 60 * minutes, "best": {"step": 100},
          "tta": dict(scores), "no_tta": dict(scores, vrand=vrand - 0.01)}


def test_table_mean_range_and_seed_spread():
  results = {"paper": [_fake_run(0, 0.95), _fake_run(1, 0.97)],
             "w0_0": [_fake_run(0, 0.90), _fake_run(1, 0.93)],
             "momentum_0.9": [_fake_run(0, 0.96), _fake_run(1, 0.99)]}
  lines = ablations.table_lines(results)
  by_name = {line.split("**")[1]: line for line in lines[2:]}
  assert list(by_name) == ["paper", "no_tta", "w0_0", "momentum_0.9"]
  v = np.array([0.95, 0.97])
  assert f"{v.mean():.4f} [{v.min():.4f}, {v.max():.4f}]" in by_name["paper"]
  assert "0.9500 [0.9400, 0.9600]" in by_name["no_tta"]  # the no-TTA scores
  assert "lower, beyond the seed spread" in by_name["w0_0"]
  assert "within the seed spread" in by_name["momentum_0.9"]
  assert "10.0 [10.0, 10.0]" in by_name["paper"]  # wall time in minutes


def test_table_rows_scored_on_the_same_runs():
  """no_tta and ema: other scores of the base recipe's runs, compared with its range."""
  paper = [_fake_run(0, 0.95), _fake_run(1, 0.97), _fake_run(2, 0.96)]
  for r, averaged in zip(paper, (0.90, 0.91, 0.92)):
    r["ema_tta"] = dict(r["tta"], vrand=averaged)
  lines = ablations.table_lines({"paper": paper, "w0_0": [_fake_run(0, 0.9), _fake_run(1, 0.9)]})
  by_name = {line.split("**")[1]: line for line in lines[2:]}
  assert list(by_name) == ["paper", "no_tta", "ema", "w0_0"]
  assert "| 0,1,2 |" in by_name["paper"] and "0.9100 [0.9000, 0.9200]" in by_name["ema"]
  assert "lower, beyond the seed spread" in by_name["ema"]
  assert "within the seed spread" in by_name["no_tta"]  # 0.94-0.96 overlaps 0.95-0.97
