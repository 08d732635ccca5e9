"""Shared fixtures: the real data folder and a tiny config."""

import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # so `import configs...` works from any cwd


def shared_data_dir() -> pathlib.Path:
  """../shared/data relative to the repo root, or $UNET_JAX_DATA."""
  return pathlib.Path(os.environ.get("UNET_JAX_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> pathlib.Path:
  root = shared_data_dir()
  if not (root / "isbi2012").is_dir():
    pytest.skip(f"real datasets not found at {root} (set UNET_JAX_DATA to the shared data folder)")
  return root


@pytest.fixture
def tiny_config():
  """The real default config, shrunk: depth 2, 4 features, synthetic data."""
  from configs import tiny
  return tiny.get_config()
