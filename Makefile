# hieros developer commands. Every target works from a fresh clone: `install` creates .venv on first use and
# reinstalls only when pyproject.toml changed (the stamp file below), so `make test` twice installs once.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hieros-install.stamp
# pytest -m expression for `make test`; empty = every test, `slow` included (CI runs slow tests at small sizes).
# SLURM tests skip themselves when no cluster answers (tests/conftest.py).
MARKERS ?=
PYTEST_ARGS ?=
# pytest-xdist workers of `make test` (one test file per worker at a time: module fixtures are built once, the SLURM
# tests stay in one process); 1 runs the suite in one process. CI's machine has 2 cores.
TEST_WORKERS ?= 2
XDIST := $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)
# extra arguments of `make bench`, e.g. BENCH_ARGS="--device cuda --precision bf16-mixed --only agent"
BENCH_ARGS ?=

.PHONY: install test test-fast bench lint run

install: $(STAMP)

# constraints.txt pins torch==2.13.0, the local CPU wheel from pip's configured find-links.
# Never install an unpinned torch: it pulls gigabytes of CUDA packages.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --progress-bar off --upgrade pip
	$(PY) -m pip install --progress-bar off -c constraints.txt -e '.[test,hpo]'
	@touch $@

test: install
	$(PY) -m pytest -x -q $(XDIST) $(if $(MARKERS),-m "$(MARKERS)") $(PYTEST_ARGS)

test-fast: install  ## everything except the slow end-to-end checks
	$(PY) -m pytest -x -q $(XDIST) -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) -m hieros.bench --out bench.json $(BENCH_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The README's main job: a short real HIEROS run on Atari Pong (3 levels, tiny model, the smoke overlay):
# environment interaction, every level training in imagination, evaluation, checkpoints, and MLflow (local sqlite
# store under hieros-runs/) with the imagination and subgoal videos. The run prints the dashboard command at the end.
run: install
	$(PY) -m hieros +experiment=smoke env.game=pong
