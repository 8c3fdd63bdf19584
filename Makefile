# Two commands for a newcomer: `make train` (the main job) and `make test` (the test suite); `make lint` (ruff)
# and `make typecheck` (mypy on sb3_nigt/) are the checks CI also runs.
# Each creates .venv when it is missing and installs into it: torch==2.13.0 first (a CPU build; an unpinned
# torch pulls GBs of CUDA wheels), then the package with its extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install train test lint typecheck benchmark heterogeneous clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[plot,test,zoo,ray,experiments]"
	touch $(STAMP)

install: $(STAMP)

# RennalaNIGT on Hopper, n = 10 agents, h_i = kappa_i = sqrt(i), simulated clock, both cores, 3M environment steps:
# 593 s of training on the engine of 2026-11-29; the lockstep engine's runs of 2026-12-07 ran on a loaded machine, so
# their wall times (README, docs/train.md) are not its speed. Plus the install on a fresh clone.
train: $(STAMP)
	$(PY) -m sb3_nigt.train --out runs/hopper

# The suite in two processes (pytest-xdist); --dist loadgroup keeps each group of tests/conftest.py in one process
# (the Ray tests in two groups, one Ray runtime per process; the tests of a module-scoped fixture).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

lint: $(STAMP)
	$(PY) -m ruff check sb3_nigt tests benchmarks examples

typecheck: $(STAMP)
	$(PY) -m mypy sb3_nigt

# MaleniaNIGT vs RennalaNIGT on two-agent inverted-observation Hopper, h = (1, 10) (docs/malenia_nigt.md).
heterogeneous: $(STAMP)
	$(PY) examples/heterogeneous_hopper.py --out runs/heterogeneous

benchmark: $(STAMP)
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
