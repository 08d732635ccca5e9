# Two commands on a fresh clone (only python3 needed):
#   make demo   - creates .venv if missing, trains on built-in synthetic data
#   make test   - creates .venv if missing, runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/demo

.PHONY: venv demo test test-fast clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) train.py --config configs/synthetic.py --workdir $(WORKDIR)
	$(PY) evaluate.py --workdir $(WORKDIR) --mode heldout

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) workdirs
