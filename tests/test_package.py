"""The package's structure: a light import, no import cycles, no global state."""

import ast
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "unet_jax"
HEAVY = ("orbax", "grain", "optax", "matplotlib", "skimage")

_LIGHT_SCRIPT = """
import sys
import numpy as np
import unet_jax
model = unet_jax.UNet(num_classes=2, features=4, depth=2)
assert unet_jax.output_size(572) == 388
inst = np.zeros((20, 20), np.int32); inst[2:8, 2:8] = 1; inst[10:18, 10:18] = 2
w = unet_jax.weight_map(inst, [1.0, 1.0], 10.0, 5.0)
assert w.shape == (20, 20) and w.max() > 1.0
print(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:])))
"""


def test_light_import_loads_no_training_stack():
  """Building a UNet and a weight map loads none of orbax, grain, optax, matplotlib, skimage."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _LIGHT_SCRIPT, *HEAVY], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "[]", proc.stdout


def test_lazy_names_resolve_to_their_modules():
  import unet_jax
  from unet_jax import datasets, metrics, model, train_lib
  assert unet_jax.UNet is model.UNet and unet_jax.metrics is metrics
  assert unet_jax.make_train_step is train_lib.make_train_step
  assert unet_jax.normalize is datasets.normalize  # inference applies the training's normalisation
  assert set(unet_jax.__all__) <= set(dir(unet_jax))


def _parsed():
  return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def _internal_imports(tree: ast.Module) -> set[str]:
  """unet_jax modules a module imports, at any level (function bodies too)."""
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
      node.body = []  # never executed
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module == "unet_jax":
        out.update(a.name for a in node.names)
      elif node.module.startswith("unet_jax."):
        out.add(node.module.split(".")[1])
    elif isinstance(node, ast.Import):
      out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("unet_jax."))
  return out


def test_no_import_cycles():
  trees = _parsed()
  graph = {name: _internal_imports(tree) & set(trees) for name, tree in trees.items()
           if name != "__init__"}
  state = {}

  def visit(node, path):
    if state.get(node) == "done":
      return
    assert state.get(node) != "open", f"import cycle: {' -> '.join(path + [node])}"
    state[node] = "open"
    for dep in sorted(graph[node]):
      visit(dep, path + [node])
    state[node] = "done"

  for name in graph:
    visit(name, [])


def test_library_leaves_global_state_alone():
  """No matplotlib.use / pyplot, no sys.path or os.environ edits in unet_jax/."""
  for name, tree in _parsed().items():
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        text = ast.unparse(node)
        assert "pyplot" not in text, (name, text)
      elif isinstance(node, ast.Call):
        func = ast.unparse(node.func)
        assert func == "os.environ.get" or not func.startswith(("os.environ", "sys.path")), (
            name, func)
        assert func not in ("matplotlib.use", "os.putenv"), (name, func)
      elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        for t in targets:
          assert not ast.unparse(t).startswith(("os.environ", "sys.path")), (name, ast.unparse(t))
