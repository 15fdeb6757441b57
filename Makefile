# Two commands do all set-up on a fresh machine with Python >= 3.10 and pip:
#   make demo   pretrain a tiny VideoMAE on the synthetic demo videos (CPU or GPU)
#   make test   run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test test-slow test-gpu demo bench clean

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: DeepSpeed's build step imports it
	$(PY) -m pip install --quiet "torch>=2.1"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# the everyday suite; the slow drills (many end-to-end runs each) are their own tier, run by CI too
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=15 tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --durations=15 tests

# On a GPU machine whose Python already has the dependencies (docs/gpu.md): installs nothing, and
# fails at once if torch sees no GPU; the tools under test run on cuda.
test-gpu:
	VIDEOMAE_REQUIRE_CUDA=1 $(PYTHON) -m pytest -q tests

demo: $(STAMP)
	$(PY) tools/demo.py

bench: $(STAMP)
	$(PY) benchmarks/model_step.py

clean:
	rm -rf $(VENV) demo_runs .pytest_cache
