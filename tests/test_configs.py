"""Every shipped config loads as ``--config`` loads it and passes train.py's checks.

Configs are variants of configs/default.py that override a few fields
(docs/design.md); a variant whose field was renamed or whose tile size no
longer fits its padding would only fail when someone starts a long run.
Variants import default.py directly (a chain of variants hides what a run
used), set only what differs from it, and never choose on the reported split.
"""

import ast
import math
import pathlib
import re

import pytest

from configs import default
from unet_jax import config_lib, datasets
from unet_jax.errors import UserInputError

REPO = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = sorted(p for p in (REPO / "configs").glob("*.py")
                  if p.name not in ("__init__.py", "default.py"))


def test_there_are_variants():
  assert len(VARIANTS) >= 5, VARIANTS


@pytest.mark.parametrize("path", VARIANTS, ids=lambda p: p.stem)
def test_config_is_valid(path, monkeypatch):
  monkeypatch.chdir(REPO)  # `from configs import ...` resolves from the repo root
  c = config_lib.load_file(path)
  # Raises UserInputError naming the bad field, tile sizes against padding included.
  config_lib.validate(c)
  # Every field comes from default.py: a variant adds none of its own.
  assert set(c.keys()) == set(default.get_config().keys()), path.name


def _bases(path: pathlib.Path) -> list[str]:
  """The configs a config file imports (``from configs import X``)."""
  tree = ast.parse(path.read_text())
  return [a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
          and node.module == "configs" for a in node.names]


@pytest.mark.parametrize("path", VARIANTS, ids=lambda p: p.stem)
def test_config_imports_one_base_and_says_what_it_is(path):
  assert ast.get_docstring(ast.parse(path.read_text())), f"{path.name}: no docstring"
  bases = _bases(path)
  assert len(bases) == 1, (path.name, bases)
  assert (REPO / "configs" / f"{bases[0]}.py").is_file(), (path.name, bases)
  # default.py, or one family base that itself imports only default.py: two levels at most.
  assert bases[0] == "default" or _bases(REPO / "configs" / f"{bases[0]}.py") == ["default"], (
      path.name, bases)


def _default_value(dotted: str):
  value = default.get_config()
  for key in dotted.split("."):
    value = value[key]
  return value


@pytest.mark.parametrize("path", VARIANTS, ids=lambda p: p.stem)
def test_config_sets_only_what_differs_from_its_base(path):
  """``c.FIELD = <literal>`` never repeats default.py's value (a comment says so instead)."""
  if _bases(path) != ["default"]:
    pytest.skip("a family variant: its base's values are checked there")
  for node in ast.walk(ast.parse(path.read_text())):
    if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)):
      continue
    target = ast.unparse(node.targets[0])
    if target.startswith("c."):
      value = node.value.value
      old = _default_value(target[2:])
      assert not (value == old and type(value) is type(old)), (
          f"{path.name}:{node.lineno}: {target} = {value!r} is default.py's value")


@pytest.mark.parametrize("path", VARIANTS, ids=lambda p: p.stem)
def test_config_never_chooses_on_its_reported_split(path, monkeypatch):
  """Training and validation indices stay out of the held-out (reported) block."""
  monkeypatch.chdir(REPO)
  c = config_lib.load_file(path)
  split = {f: set(datasets.parse_indices(c[f], 10_000, empty_means_all=False, field=f))
           for f in ("train_indices", "val_indices", "heldout_indices")}
  assert not split["heldout_indices"] & (split["train_indices"] | split["val_indices"]), path.name
  assert not split["val_indices"] & split["train_indices"], path.name


def test_dataset_specs_keep_the_reported_block_out_of_selection():
  """The default splits follow the held-out protocol (docs/conventions.md, Data splits)."""
  isbi = datasets.SPECS["isbi2012"]
  # validation carved from the 25 training slices; 25-29 only reported
  assert (isbi.train_indices, isbi.val_indices, isbi.heldout_indices) == ("0-19", "20-24", "25-29")
  for spec in datasets.SPECS.values():
    train, val, heldout = (set(datasets.parse_indices(s, 10_000, empty_means_all=False))
                           for s in (spec.train_indices, spec.val_indices, spec.heldout_indices))
    assert not (train & val or train & heldout or val & heldout), spec.name
  with pytest.raises(TypeError):  # read-only: no run can change another's defaults
    datasets.SPECS["isbi2012"] = datasets.SPECS["synthetic"]


def test_instance_overrides_change_only_the_instances_block():
  """evaluate.py --instances: typed FIELD=VALUE on a copy of the run's config."""
  from configs import dic_hela_cpu
  from unet_jax import config_lib, instances
  from unet_jax.errors import UserInputError

  base = dic_hela_cpu.get_config()
  new = config_lib.override_instances(base, ["method=components", "seed_threshold=0.8",
                                             "seed_radius=5", "fill_gaps=false"])
  params = instances.InstanceParams.from_config(new)
  assert (params.method, params.seed_threshold, params.seed_radius, params.fill_gaps) == \
      ("components", 0.8, 5, False)
  assert base.instances.method == "watershed" and base.instances.seed_radius == 2  # a copy
  assert new.features == base.features and new.instances.min_size == base.instances.min_size
  for item, needle in [("seed_radius=2.5", "takes an integer"), ("colour=red", "FIELD one of"),
                       ("method=magic", "must be one of components, watershed"),
                       ("threshold=1.5", "--instances threshold=1.5: must be in [0, 1)"),
                       ("min_size=-1", "--instances min_size=-1: must be >= 0"),
                       ("min_size", "FIELD=VALUE")]:
    with pytest.raises(UserInputError, match=re.escape(needle)):
      config_lib.override_instances(base, [item])


def _set(config, dotted: str, value) -> None:
  *parents, field = dotted.split(".")
  for key in parents:
    config = config[key]
  config[field] = value


@pytest.mark.parametrize("field, value, allowed", [
    ("eval_batch_size", 0, "must be >= 1"),  # was a ZeroDivisionError at the first validation
    ("seed", -1, "must be in [0, 2**63)"),  # was a ValueError of grain after setup
    ("seed", 2**63, "must be in [0, 2**63)"),  # jax.random.PRNGKey: OverflowError
    ("seed", 10**400, "must be in [0, 2**63)"),  # math.isfinite: OverflowError
    ("augment.elastic_grid", 0, "must be >= 2"),  # np.stack of no grid nodes
    ("augment.elastic_grid", 1, "must be >= 2"),  # a constant shift, no deformation
    ("sigma", math.inf, "must be a finite number > 0"),  # OverflowError in the weight maps
    ("learning_rate", math.nan, "must be a finite number > 0"),  # NaN < 0 is False
    ("learning_rate", math.inf, "must be a finite number > 0"),
    ("w0", math.nan, "must be a finite number >= 0"),
    ("w0", -1.0, "must be >= 0"),
    ("grad_clip_norm", math.nan, "must be a finite number >= 0"),
    ("classifier_init_scale", -1.0, "must be >= 0"),
    ("augment.elastic_std", math.inf, "must be a finite number >= 0"),
    ("augment.intensity", 1.0, "must be in [0, 1)"),
    ("warmup_steps", -1, "must be >= 0"),
    ("num_workers", -1, "must be >= 0"),
    ("eval_every", -1, "must be >= 0"),
    ("in_channels", -1, "must be >= 0"),
    ("synthetic.num_images", 0, "must be >= 1"),
    ("instances.threshold", math.nan, "must be a finite number in [0, 1)"),
    ("instances.min_size", -1, "must be >= 0"),
    ("dropout_rate", math.nan, "must be a finite number in [0, 1)"),
])
def test_bad_numbers_are_refused_naming_field_value_and_range(field, value, allowed):
  c = default.get_config()
  _set(c, field, value)
  with pytest.raises(UserInputError) as e:
    config_lib.validate(c)
  assert str(e.value).startswith(f"--config.{field}={value!r}: {allowed}"), str(e.value)


def test_every_number_of_the_default_config_is_checked():
  """A new numeric field needs its range in config_lib.NUMBERS (or a check of its own)."""
  def leaves(d, prefix=""):
    for k, v in d.items():
      yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)]

  numeric = {k for k, v in leaves(default.get_config().to_dict())
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
  checked = {field for field, *_ in config_lib.NUMBERS} | {"tile_size", "eval_tile_size"}
  assert numeric <= checked, sorted(numeric - checked)
  for field, integer, _, _ in config_lib.NUMBERS:  # and accepts the default
    assert field in numeric, field
    c = default.get_config()
    value = c
    for key in field.split("."):
      value = value[key]
    assert isinstance(value, int) == integer, field
  config_lib.validate(default.get_config())


@pytest.mark.parametrize("content, needle", [
    ('{"depth": 4, "featu', "is not valid JSON (Unterminated string"),  # truncated
    ("", "is not valid JSON (Expecting value"),
    ("[4]", "holds a JSON list"),
])
def test_a_damaged_saved_config_names_the_file(tmp_path, content, needle):
  (tmp_path / "config.json").write_text(content)
  with pytest.raises(UserInputError) as e:
    config_lib.load_saved(tmp_path)
  message = str(e.value)
  assert message.startswith(str(tmp_path / "config.json")) and needle in message, message
  assert message.endswith("restore it or use a new --workdir"), message
