"""Shared fixtures: the real data folder, a tiny config, and one trained tiny run."""

import fcntl
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # so `import configs...` works from any cwd


_XLA_CACHE = pytest.StashKey[str]()


_SHARED = "UNET_JAX_TEST_SHARED_DIR"  # set by the main pytest process, inherited by workers


def pytest_configure(config):
  """One XLA compilation cache for the session, shared with the CLI subprocesses
  and the pytest-xdist workers.

  Many tests train the same tiny net; JAX's persistent cache turns the second
  and later compilations of the same program into a disk read. It only
  reuses identical programs, so results are unchanged.
  """
  if _SHARED not in os.environ:  # the main process (workers inherit its environment)
    os.environ[_SHARED] = tempfile.mkdtemp(prefix="unet_jax_test_")
    config.stash[_XLA_CACHE] = os.environ[_SHARED]
    _fast_xla_compilation()
  import jax
  cache = os.path.join(os.environ[_SHARED], "xla_cache")
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = cache  # for train.py / evaluate.py subprocesses
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


def _fast_xla_compilation():
  """Tests compile with XLA's backend (LLVM) optimisation level 0 instead of 3.

  Why: the suite builds hundreds of small programs and runs each a few times, so
  compiling, not running, is most of its CPU time (measured on 2 cores: 9.0 min
  of CPU and 4 min 49 s at level 3, 7.0 min and 3 min 41 s at level 0, all
  tests passing both ways). The level changes only how the HLO is turned into
  machine code, not what it computes; speed is measured by the benchmarks, at
  XLA's defaults. Set before JAX starts a backend; inherited by the pytest-xdist
  workers and the CLI subprocesses. ``XLA_FLAGS=--xla_backend_optimization_level=3
  pytest`` runs the suite at XLA's default level.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_optimization_level" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()


def pytest_unconfigure(config):
  if _XLA_CACHE in config.stash:
    shutil.rmtree(config.stash[_XLA_CACHE], ignore_errors=True)


@pytest.fixture(autouse=True)
def _serial_tests_run_alone(request):
  """A readers-writer lock across the pytest-xdist workers: every test holds it
  shared, a test marked ``serial`` holds it exclusively, so it starts only when
  no other test is running and none starts beside it. Without workers it is a no-op
  in effect (one process, one test at a time).

  Why: the 2-process training test's processes must reach their collective
  set-up within gloo's fixed 30-s deadline; beside another test on a 2-core
  machine one of them can starve past it.
  """
  exclusive = request.node.get_closest_marker("serial") is not None
  with open(os.path.join(os.environ[_SHARED], "serial.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> pathlib.Path:
  """A workdir trained once per session on the tiny config: 9 steps, checkpoints
  at 3, 6, 9 (all kept), validation at the same steps, the best checkpoint.

  Read-only for the tests: copy it before changing anything.
  """
  from configs import tiny
  from unet_jax import train_lib
  c = tiny.get_config()
  c.num_steps, c.eval_every, c.checkpoint_every, c.keep_checkpoints = 9, 3, 3, 5
  c.cache_dir = str(tmp_path_factory.mktemp("tiny_run_cache"))
  workdir = tmp_path_factory.mktemp("tiny_run")
  train_lib.train_and_evaluate(c, str(workdir))
  shutil.rmtree(c.cache_dir)
  return workdir
