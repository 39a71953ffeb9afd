# `make help` lists the targets: each is described by the `##` comment above it.
# Targets that run Python create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help demo test test-slow curve cheaper gpu-checks clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .  # the dynunc package (pyproject.toml), its dependencies installed above
	touch $(STAMP)

## help: list these targets
help:
	@awk '/^## /{sub(/^## /, ""); split($$0, a, ": "); printf "  make %-12s %s\n", a[1], substr($$0, length(a[1]) + 3)}' $(firstword $(MAKEFILE_LIST))

## demo: the whole pipeline on the embedded MNIST sample, on the CPU (a few minutes)
demo: $(STAMP)
	$(PY) scripts/demo.py

## test: the unit and end-to-end tests, without the slow ones (about 10 min on 2 idle cores)
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

## curve: the pruning curves (every method x 4 fractions x 3 seeds) on clean and 20%-flipped labels
curve: $(STAMP)
	$(PY) scripts/pruning_curve.py --output curve_output/clean
	$(PY) scripts/pruning_curve.py --output curve_output/noise0.2 --label-noise 0.2

## cheaper: cheaper scores (docs/cheaper_scoring.md), 3 seeds each; reuses curve_output (make curve first)
cheaper: $(STAMP)
	$(PY) scripts/cheaper_scoring.py --curves curve_output --output cheaper_output

## test-slow: the slow tests: compiles the fused window-process CUDA extension (needs nvcc; minutes)
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

## gpu-checks: the GPU verification script, on a machine with an NVIDIA GPU
gpu-checks: $(STAMP)
	bash tests/gpu/run_gpu_checks.sh

## clean: remove demo_output, curve_output and cheaper_output
clean:
	rm -rf demo_output curve_output cheaper_output
