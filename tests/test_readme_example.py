"""The README's "Using the library" example runs as written.

The code block is read from README.md and executed as it stands (in a fresh
interpreter, from the repository root as the README says), so the example
and the library cannot drift apart unnoticed.
"""

import os
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# Appended after the example: the shapes its comments promise, and finite results.
_CHECKS = """
assert image.shape == (124, 124, 1) and logits.shape == (1, 84, 84, 2) and b == 20
assert batch["label"].shape == batch["weight"].shape == (1, 84, 84)
assert w.max() > w.min() > 0  # Eq. 2: class weights plus a border term between cells
assert np.isfinite(float(loss)) and int(state.step) == 2
assert all(np.isfinite(float(v)) for v in step_metrics.values())
assert probs.shape == (124, 124, 2) and np.allclose(probs.sum(-1), 1, atol=1e-5)
assert found.shape == (124, 124) and 0 <= seg <= 1 and 0 <= scores["vrand"] <= 1
print("README example ok")
"""


def readme_example() -> str:
  """The one ```python block of the README section "### Using the library"."""
  text = (REPO / "README.md").read_text()
  section = re.search(r"^### Using the library\n(.*?)^#{2,3} ", text, re.S | re.M)
  assert section, "README.md has no '### Using the library' section"
  blocks = re.findall(r"^```python\n(.*?)^```", section.group(1), re.S | re.M)
  assert len(blocks) == 1, f"expected one python block in the section, found {len(blocks)}"
  return blocks[0]


def test_readme_library_example_runs_as_written():
  code = readme_example()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code + _CHECKS], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "README example ok" in proc.stdout
