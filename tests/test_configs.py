"""Every shipped config loads as ``--config`` loads it and passes train.py's checks.

Configs are variants of configs/default.py that override a few fields
(docs/design.md); a variant whose field was renamed or whose tile size no
longer fits its padding would only fail when someone starts a long run.
"""

import ast
import pathlib

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
