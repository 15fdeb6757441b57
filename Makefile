# Two commands do all set-up on a fresh machine with Python >= 3.10 and pip:
#   make demo   pretrain a tiny VideoMAE on the synthetic demo videos (CPU or GPU)
#   make test   run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test test-slow test-gpu demo compare bench clean

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

# tube vs random vs frame masking at 0.9, 3 seeds each, on the synthetic demo set: recon + k-NN + probe
# (docs/compare.md). 288 steps per cell instead of the demo's 480, so 9 cells fit ~20 min on 2 CPU cores.
compare: $(STAMP)
	$(PY) tools/compare_masking.py --config configs/demo/pretrain.yaml --strategies tube,random,frame \
		--ratios 0.9 --seeds 0,1,2 --eval recon,knn,probe --out compare_runs TRAIN.EPOCHS 12

bench: $(STAMP)
	$(PY) benchmarks/model_step.py

clean:
	rm -rf $(VENV) demo_runs compare_runs .pytest_cache
