# The README's two commands: `make demo` (the main job) and `make test` (the tests).
# Each creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export JAX_PLATFORMS ?= cpu

.PHONY: demo test lint bench clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(PY) experiments/demo.py --workdir=runs/demo

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check align_jax tests tools experiments configs

bench: $(VENV)/.installed
	$(PY) tools/bench_train.py

clean:
	rm -rf runs .pytest_cache
