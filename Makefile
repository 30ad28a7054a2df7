# Two commands do all the set-up on a fresh machine with Python 3.11+:
#   make run    installs what the app needs into .venv and starts it
#   make test   installs the test tools too (and Debian's Chromium for the browser test, when apt-get is there) and runs the tests
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: run test fuzz bench clean-cache

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -c "from backend.theory.momentum_lanes import warm_up; warm_up()"
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt requirements-oracle.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-oracle.txt
	touch $@

# the app listens on the loopback only (also .streamlit/config.toml); README "Serving to a network" for ADDRESS=0.0.0.0
ADDRESS ?= 127.0.0.1
run: $(VENV)/.runtime
	$(VENV)/bin/streamlit run app.py --server.address $(ADDRESS)

test: $(VENV)/.dev
	bash scripts/ensure_chromium.sh
	$(PY) -m pytest -q

# the property-based tests with the longer, random hypothesis profile (local fuzzing; CI uses the derandomized one)
fuzz: $(VENV)/.dev
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/test_fuzz_config.py

bench: $(VENV)/.dev
	$(PY) benchmarks/bench_linreg.py
	$(PY) benchmarks/bench_deep_linear.py
	$(PY) benchmarks/bench_mlp.py
	$(PY) benchmarks/bench_sequence.py
	$(PY) benchmarks/bench_torch_model.py
	$(PY) benchmarks/bench_advisor.py
	$(PY) benchmarks/bench_cbs.py
	$(PY) benchmarks/bench_momentum.py
	$(PY) benchmarks/bench_sweep.py
	$(PY) benchmarks/bench_estimates.py
	$(PY) benchmarks/bench_load.py

clean-cache:
	rm -rf cache/results cache/locks
