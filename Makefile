# Two commands on a fresh clone (only python3 needed):
#   make demo   - creates .venv if missing, trains on built-in synthetic data
#   make test   - creates .venv if missing, runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/demo

.PHONY: venv export-deps demo test test-fast clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

# Optional: ONNX export and bioimage.io packages (python -m unet_jax.export).
export-deps: venv
	$(PY) -m pip install -q -r requirements-export.txt
	$(PY) -m pip install -q --no-deps jax2onnx==0.17.1

demo: venv
	$(PY) train.py --config configs/synthetic.py --workdir $(WORKDIR)
	$(PY) evaluate.py --workdir $(WORKDIR) --mode heldout

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) workdirs
