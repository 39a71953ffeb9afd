# `make demo`: the whole pipeline on the embedded MNIST sample, on the CPU.
# `make test`: unit and end-to-end tests. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow curve cheaper gpu-checks clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .  # the dynunc package (pyproject.toml), its dependencies installed above
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The pruning curves (every method x 4 fractions x 3 seeds) on clean and 20%-flipped labels.
curve: $(STAMP)
	$(PY) scripts/pruning_curve.py --output curve_output/clean
	$(PY) scripts/pruning_curve.py --output curve_output/noise0.2 --label-noise 0.2

# Cheaper scores (docs/cheaper_scoring.md): prefixes of the curves' produce runs and cheaper
# proxies, each coreset trained with 3 seeds; reuses curve_output (make curve first).
cheaper: $(STAMP)
	$(PY) scripts/cheaper_scoring.py --curves curve_output --output cheaper_output

# Compiles the fused window-process CUDA extension (needs nvcc; minutes).
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# On a machine with an NVIDIA GPU.
gpu-checks: $(STAMP)
	bash tests/gpu/run_gpu_checks.sh

clean:
	rm -rf demo_output curve_output cheaper_output
