"""Every shipped config loads as ``--config`` loads it and passes train.py's checks.

Configs are variants of configs/default.py that override a few fields
(docs/design.md); a variant whose field was renamed or whose tile size no
longer fits its padding would only fail when someone starts a long run.
"""

import ast
import pathlib
import re

import pytest

from configs import default
from unet_jax import config_lib

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


@pytest.mark.parametrize("path", VARIANTS, ids=lambda p: p.stem)
def test_config_imports_one_base_and_says_what_it_is(path):
  tree = ast.parse(path.read_text())
  assert ast.get_docstring(tree), f"{path.name}: no docstring"
  bases = [a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
           and node.module == "configs" for a in node.names]
  assert len(bases) == 1, (path.name, bases)
  assert (REPO / "configs" / f"{bases[0]}.py").is_file(), (path.name, bases)


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
                       ("threshold=1.5", "must be in [0, 1)"), ("min_size", "FIELD=VALUE")]:
    with pytest.raises(UserInputError, match=re.escape(needle)):
      config_lib.override_instances(base, [item])
