# The README's two commands: `make demo` (the main job) and `make test` (the tests).
# Each creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export JAX_PLATFORMS ?= cpu

.PHONY: demo test lint bench bench-objectives clean

# The tests' install: align_jax, the references they compare against (torch, transformers)
# and pytest. The demo's: align_jax and matplotlib for its plots, nothing else.
$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@ $(VENV)/.demo-installed

$(VENV)/.demo-installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[demo]"
	touch $@

demo: $(VENV)/.demo-installed
	$(PY) experiments/demo.py --workdir=runs/demo

# Two tiers, every test in one of them, each on a pytest-xdist worker per core (up to 4). The
# quick tier compiles many small programs once each (single-threaded), so it keeps the tests'
# LLVM -O0 (tests/conftest.py): 445 s -> 279 s on 2 cores with two workers. The end-to-end
# tier (`slow`: whole training runs and subprocesses) spends its time running programs, so it
# asks for -O2 (its 14 longest runs: 538 s -> 395 s); two workers took it from about 810 s to
# 606 s on 2 cores, each building the session's shared runs once. Both exit statuses count.
# PYTEST_ARGS passes options to both, e.g. `make test PYTEST_ARGS="-x --durations=20"`.
WORKERS := -n auto --maxprocesses=4
test: $(VENV)/.installed
	@status=0; \
	$(PY) -m pytest -q $(WORKERS) -m "not slow" $(PYTEST_ARGS) tests || status=$$?; \
	XLA_FLAGS="$$XLA_FLAGS --xla_backend_optimization_level=2" \
		$(PY) -m pytest -q $(WORKERS) -m slow $(PYTEST_ARGS) tests || status=$$?; \
	exit $$status

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check align_jax tests tools experiments configs

bench: $(VENV)/.installed
	$(PY) tools/bench_train.py

# The train step of every objective (pretrain, SFT, reward, DPO, GRPO and PPO updates).
bench-objectives: $(VENV)/.installed
	$(PY) tools/bench_objectives.py

clean:
	rm -rf runs .pytest_cache
