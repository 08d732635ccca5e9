"""ONNX export, the bioimage.io package and ONNX prediction (unet_jax.export).

Needs the optional packages of requirements-export.txt; skipped with a reason
without them. The model is the tiny config's net (depth 2, 4 features) with
He-normal parameters stored as a "best" checkpoint, so nothing is trained.
"""

import importlib.util
import logging
import pathlib
import re
import subprocess
import sys
import types

import numpy as np
import pytest


def _installed(name: str) -> bool:
  # find_spec("a.b") imports "a" and raises if "a" itself is missing
  try:
    return importlib.util.find_spec(name) is not None
  except ModuleNotFoundError:
    return False


MISSING = [m for m in ("jax2onnx", "onnx", "onnxruntime", "bioimageio.core")
           if not _installed(m)]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"export packages missing ({', '.join(MISSING)}): "
    "make export-deps (requirements-export.txt, then pip install --no-deps jax2onnx)")

REPO = pathlib.Path(__file__).resolve().parents[1]


def _make_workdir(workdir: pathlib.Path, config, with_checkpoint: bool = True):
  import jax

  from unet_jax import checkpoint, config_lib
  from unet_jax import model as model_lib

  with config.unlocked():
    config.in_channels = 1
  workdir.mkdir(parents=True, exist_ok=True)
  config_lib.save(workdir, config)
  if with_checkpoint:
    model = model_lib.from_config(config)
    params = model_lib.init_params(model, jax.random.PRNGKey(3), 1)
    checkpoint.save_best(workdir, 6, params, {"v_rand": 0.5, "pixel_error": 0.25, "step": 6})
  return workdir


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  from configs import tiny

  from unet_jax import export, inference

  workdir = _make_workdir(tmp_path_factory.mktemp("run"), tiny.get_config())
  out = tmp_path_factory.mktemp("export")
  result = export.export_workdir(workdir, out)
  _, model, variables = inference.load_for_inference(workdir, "best")
  return result, model, variables, workdir


def _jax_probabilities(model, variables, x):
  import jax
  return np.asarray(jax.nn.softmax(model.apply(variables, x, train=False), -1))


def _code_blocks(markdown: str) -> list[str]:
  return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def _raw_image(h: int = 101, w: int = 130) -> np.ndarray:
  """A raw uint16-range image whose sides are not valid input sides (44 + 4k)."""
  rng = np.random.default_rng(7)
  return (rng.normal(size=(h, w)) * 300 + 2000).astype(np.float32)


def _jax_tiled(model, variables, image):
  """The JAX model's overlap-tile prediction [H, W, K] of a raw image (the reference)."""
  from unet_jax import tiling
  from unet_jax.datasets import normalize
  return tiling.predict_tiled(model, variables, normalize(image), tile_size=60, method="host")


def test_onnx_matches_jax_at_every_valid_size(exported):
  """The graph takes any side min + k*step (and any batch) and equals the JAX net."""
  from unet_jax import export, model as model_lib

  result, model, variables, _ = exported
  assert result.fixed_tile is None
  lo, step = export.size_rule(model.depth)
  assert (lo, step) == (model_lib.valid_input_size(1, 2), 4)
  rng = np.random.default_rng(0)
  for batch, h, w in ((1, lo, lo), (2, lo + 3 * step, lo + 7 * step), (1, lo + 10 * step, lo)):
    x = rng.normal(size=(batch, h, w, 1)).astype(np.float32)
    got = export.onnx_probabilities(result.onnx_path, x)
    want = _jax_probabilities(model, variables, x)
    assert got.shape == (batch, model_lib.output_size(h, 2), model_lib.output_size(w, 2), 2)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  assert result.max_abs_diff < 1e-4


def test_package_contents(exported):
  import yaml

  from unet_jax import model as model_lib

  result, model, variables, _ = exported
  pkg = result.package_dir
  with __import__("zipfile").ZipFile(result.package_path) as zf:
    names = set(zf.namelist())
  assert {"rdf.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy",
          result.onnx_path.name} <= names
  rdf = yaml.safe_load((pkg / "rdf.yaml").read_text())
  assert rdf["format_version"].startswith("0.5")
  (inp,), (outp,) = rdf["inputs"], rdf["outputs"]
  assert [a["type"] for a in inp["axes"]] == ["batch", "space", "space", "channel"]
  assert inp["axes"][1]["size"] == {"min": model_lib.valid_input_size(1, 2), "step": 4}
  b = model_lib.border(2)
  assert outp["axes"][1]["size"]["offset"] == -2 * b
  assert inp["preprocessing"][0]["id"] == "zero_mean_unit_variance"
  assert inp["preprocessing"][0]["kwargs"]["axes"] == ["y", "x"]
  dois = {c["doi"] for c in rdf["cite"]}
  assert "10.1007/978-3-319-24574-4_28" in dois  # the U-Net paper
  assert rdf["weights"]["onnx"]["opset_version"] >= 7
  # The stored test output is the net's output on the normalised test input.
  from unet_jax.datasets import normalize
  x = np.load(pkg / "test_input.npy")
  y = np.load(pkg / "test_output.npy")
  np.testing.assert_allclose(y, _jax_probabilities(model, variables, normalize(x[0])[None]),
                             atol=1e-4, rtol=0)
  doc = (pkg / "README.md").read_text()
  assert "v_rand = 0.5000" in doc and "Ronneberger" in doc


def test_package_passes_bioimageio_model_test(exported):
  """bioimageio.core's own test: runs the ONNX weights on the test input."""
  from bioimageio.core import test_model

  result = exported[0]
  summary = test_model(result.package_path)
  failed = [d.name for d in summary.details if d.status == "failed"]
  assert summary.status == "passed", failed


def test_onnx_predict_gives_the_jax_masks_on_an_isbi_slice(exported, data_root, tmp_path):
  """evaluate.py --mode predict --onnx: same probabilities and masks as the JAX model."""
  import tifffile

  from unet_jax import onnx_predict, predict

  _, model, variables, workdir = exported
  from unet_jax import config_lib
  config = config_lib.load_saved(workdir)
  slice0 = tifffile.imread(data_root / "isbi2012" / "train-volume.tif", key=0)[:150, :130]
  tifffile.imwrite(tmp_path / "slice.tif", slice0)
  onnx_model = onnx_predict.OnnxUNet(exported[0].onnx_path)
  assert onnx_model.in_channels == 1 and onnx_model.depth == 2
  predict.predict_files(model, variables, tmp_path / "slice.tif", tmp_path / "jax", config,
                        progress=False)
  predict.predict_files(onnx_model, None, tmp_path / "slice.tif", tmp_path / "onnx",
                        onnx_model.config, progress=False)

  def read(folder, kind):
    (path,) = sorted((tmp_path / folder).glob(f"*{kind}*.tif"))
    return tifffile.imread(path)

  p_jax, p_onnx = read("jax", "prob")[1], read("onnx", "prob")[1]  # [K, H, W]: class 1
  assert p_jax.shape == slice0.shape
  np.testing.assert_allclose(p_onnx, p_jax, atol=1e-4, rtol=0)
  decided = np.abs(p_jax - 0.5) > 1e-4  # pixels a float rounding cannot flip
  np.testing.assert_array_equal(read("onnx", "labels")[decided] > 0,
                                read("jax", "labels")[decided] > 0)


def test_package_readme_python_recipes_give_the_aligned_prediction(exported, monkeypatch):
  """The package README's bioimageio.core and unet_jax snippets, run as written,
  give the tiled JAX prediction of an image of a non-valid size, pixel for pixel."""
  import bioimageio.core

  result, model, variables, _ = exported
  doc = (result.package_dir / "README.md").read_text()
  bio, helper = [c for c in _code_blocks(doc) if "predict" in c or "segment_image" in c]
  assert "bioimageio.core.predict" in bio and "segment_image" in helper
  img = _raw_image()
  want = _jax_tiled(model, variables, img)
  # What the recipe works around: bioimageio.core refuses a non-valid size.
  with pytest.raises(ValueError, match="does not map to axes"):
    bioimageio.core.predict(model=str(result.package_path), inputs=img[None, ..., None])

  monkeypatch.chdir(result.package_path.parent)  # the snippets name the files relatively
  scope = {"img": img}
  exec(bio, scope)  # pylint: disable=exec-used
  assert scope["probs"].shape == img.shape + (2,)
  np.testing.assert_allclose(scope["probs"], want, atol=1e-4, rtol=0)

  shown = {}
  viewer = types.SimpleNamespace(add_image=lambda a, name: shown.update({name: a}),
                                 add_labels=lambda a, name: shown.update({name: a}))
  scope = {"img": img, "viewer": viewer}
  exec(helper, scope)  # pylint: disable=exec-used
  np.testing.assert_allclose(shown["p(cell)"], want[..., 1], atol=1e-4, rtol=0)
  assert shown["cells"].shape == img.shape


def test_segment_image_gives_the_runs_instances(exported):
  from unet_jax import config_lib, instances, onnx_predict

  result, model, variables, workdir = exported
  img = _raw_image(77, 150)
  probs, labels = onnx_predict.segment_image(result.onnx_path, img)
  want = _jax_tiled(model, variables, img)
  np.testing.assert_allclose(probs, want, atol=1e-4, rtol=0)
  params = instances.InstanceParams.from_config(config_lib.load_saved(workdir))
  np.testing.assert_array_equal(labels, instances.from_probability(probs[..., 1], params))
  assert labels.shape == img.shape and labels.max() > 0


def test_package_readme_states_the_components_rule(exported):
  doc = (exported[0].package_dir / "README.md").read_text()
  assert "threshold and connected\ncomponents" in doc
  assert 'config.instances.method = "components"' in doc
  assert "ndimage.label(p > 0.5)" in doc and "watershed" not in doc


def test_package_readme_states_the_watershed_rule(tmp_path):
  """A run with config.instances.method = "watershed": the README names it with
  its parameters, and its exact unet_jax call is the run's rule."""
  from configs import tiny

  from unet_jax import config_lib, export, instances

  config = tiny.get_config()
  config.instances.method = "watershed"
  config.instances.threshold = 0.4
  config.instances.seed_threshold = 0.8
  config.instances.seed_radius = 3
  config.instances.min_size = 15
  workdir = _make_workdir(tmp_path / "run", config)
  result = export.export_workdir(workdir, tmp_path / "out")
  doc = (result.package_dir / "README.md").read_text()
  assert "seeded watershed" in doc and "connected components for instances" not in doc
  for text in ("threshold 0.4", "seed threshold 0.8", "seed radius 3 px", "min size 15 px",
               "> 0.8, eroded by a disk of radius 3 px", "seeds smaller than 15 px",
               "structure=disk(3)", "mask=p > 0.4", "--threshold 0.4"):
    assert text in doc, text
  (exact,) = [c for c in _code_blocks(doc) if "from_probability" in c]
  p = np.load(result.package_dir / "test_output.npy")[0, ..., 1]
  scope = {"p": p}
  exec(exact, scope)  # pylint: disable=exec-used
  want = instances.from_probability(
      p, instances.InstanceParams.from_config(config_lib.load_saved(workdir)))
  np.testing.assert_array_equal(scope["labels"], want)


def test_conversion_does_not_print_missing_plugin_tracebacks(exported, tmp_path, caplog,
                                                              monkeypatch):
  """jax2onnx's first conversion imports all its plugins; those needing packages
  that are not installed (equinox, dm_pix) used to log ~50 tracebacks."""
  from jax2onnx.plugins import plugin_system

  from unet_jax import export

  if all(_installed(m) for m in ("equinox", "dm_pix")):
    pytest.skip("equinox and dm_pix are installed: jax2onnx has nothing to complain about")
  _, model, variables, _ = exported
  monkeypatch.setattr(plugin_system, "_already_imported_plugins", False)  # a first conversion
  with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="unet_jax"):
    # A fixed tile: in one process only the first symbolic-size conversion works
    # (the fixture's); later ones fall back to a fixed tile anyway.
    export.to_onnx(model, variables, 1, tmp_path / "m.onnx", fixed_tile=60)
  noise = [r for r in caplog.records if r.name == "jax2onnx.plugins.plugin_system"]
  assert not noise, noise[0].getMessage()
  assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
  assert any("jax2onnx skipped" in r.getMessage() for r in caplog.records)  # kept at debug


@pytest.mark.slow
def test_cli_export_prints_one_line(exported, tmp_path):
  """python -m unet_jax.export: the summary line, no tracebacks."""
  workdir = exported[3]
  proc = subprocess.run([sys.executable, "-m", "unet_jax.export", "--workdir", str(workdir),
                         "--out", str(tmp_path / "out")],
                        cwd=REPO, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "Traceback" not in proc.stdout + proc.stderr
  assert proc.stdout.startswith("wrote ") and proc.stdout.count("\n") == 1
  assert proc.stderr.count("\n") <= 5, proc.stderr[-2000:]


def test_refuses_an_existing_package_and_unwritable_out(exported, tmp_path):
  from unet_jax import export
  from unet_jax.errors import UserInputError

  result, _, _, workdir = exported
  with pytest.raises(UserInputError, match="--overwrite"):
    export.export_workdir(workdir, result.onnx_path.parent)
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(UserInputError, match="--out .* is a file, not a folder"):
    export.export_workdir(workdir, blocker)
  # --overwrite replaces what is there (checked without exporting again).
  assert export._check_out(result.onnx_path.parent, result.name, overwrite=True)


def test_clear_errors_for_missing_workdir_and_checkpoint(tmp_path, tiny_config):
  from unet_jax import export
  from unet_jax.errors import UserInputError

  with pytest.raises(UserInputError, match="does not exist"):
    export.export_workdir(tmp_path / "nope", tmp_path / "out")
  empty = _make_workdir(tmp_path / "empty", tiny_config, with_checkpoint=False)
  with pytest.raises(UserInputError, match="no checkpoint"):
    export.export_workdir(empty, tmp_path / "out")


@pytest.mark.slow
def test_cli_error_is_one_line_exit_2(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "unet_jax.export", "--workdir",
                         str(tmp_path / "missing"), "--out", str(tmp_path / "out")],
                        cwd=REPO, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 2
  assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
