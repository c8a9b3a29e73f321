# `make demo` and `make test` each create .venv when missing and install into
# it the exact versions of requirements/*.lock (hash-checked), then the
# package itself. pyproject.toml keeps version ranges for those who install
# r3jax into an environment of their own.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q
LIBTPU := $(VENV)/libtpu
# The TPU compiler, kept out of the venv's site-packages: where it is
# importable, every JAX program on a host without TPUs starts with libtpu's
# complaints on stderr. Only compile-for-TPU commands point JAX at it.
TPU_ENV := TPU_LIBRARY_PATH=$(CURDIR)/$(LIBTPU)/libtpu/libtpu.so
# Where the lock files find torch's CPU build (`make lock`); elsewhere e.g.
# LOCK_FLAGS="--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match"
LOCK_FLAGS ?= $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
UV_VERSION := 0.13.9
TOPOLOGY ?= v5e:2x2
CONFIG ?= configs/joint.py

.PHONY: demo test test-tpu tpu-check bench lock install clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

# The demo's environment: the package's own dependencies, no test tools.
$(VENV)/.demo: requirements/demo.lock pyproject.toml | $(VENV)/bin/python
	$(PIP) --require-hashes --no-deps -r requirements/demo.lock
	$(PIP) --no-deps -e .
	touch $@

# The test suite's: the demo's plus the test extra (torch, transformers and
# the reference metrics the tests compare against).
$(VENV)/.test: requirements/test.lock pyproject.toml | $(VENV)/bin/python
	$(PIP) --require-hashes --no-deps -r requirements/test.lock
	$(PIP) --no-deps -e .
	touch $@ $(VENV)/.demo

$(LIBTPU)/.installed: requirements/tpu.lock
	$(PIP) --require-hashes --no-deps --upgrade --target $(LIBTPU) -r requirements/tpu.lock
	touch $@

install: $(VENV)/.test

demo: $(VENV)/.demo
	$(PY) -m experiments.demo --root runs

# Test files run in parallel (pytest-xdist), each file on one worker so that
# its module fixtures are built once. The TPU compile tests are left to
# test-tpu (libtpu, 684 MB, and minutes of compilation).
test: $(VENV)/.test
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist loadfile -m "not tpu" tests

# Compiles the training step for TPU slices on this host (no TPU needed).
test-tpu: $(VENV)/.test $(LIBTPU)/.installed
	$(TPU_ENV) R3JAX_REQUIRE_TPU_COMPILER=1 $(PY) -m pytest -q -n auto \
	  --maxprocesses=2 --dist loadgroup -m tpu tests

# Per-device bytes of CONFIG's training step on any TPU topology:
#   make tpu-check TOPOLOGY=v5p:2x2x2 [CONFIG=configs/joint.py] [MESH=fsdp=4,tensor=2]
# (without MESH: the state's bytes as compiled, tile padding included, over
# fsdp = 1, 2, 4, ... up to the chips; with MESH: the whole step's report).
tpu-check: $(VENV)/.demo $(LIBTPU)/.installed
	$(TPU_ENV) $(PY) scripts/aot_compile.py --config $(CONFIG) \
	  --topology tpu:$(TOPOLOGY) $(if $(MESH),--mesh $(MESH),--state-table)

# Every benchmark (benchmarks/README.md).
bench: $(VENV)/.test
	$(PY) benchmarks/run_all.py

# Re-resolves the lock files from pyproject.toml (libtpu: the version the
# installed jax asks for): after changing a dependency there, or to move to
# newer releases (then run `make test` and `make test-tpu`).
lock: | $(VENV)/bin/python
	$(PIP) uv==$(UV_VERSION)
	cd requirements && for x in demo:"" test:"--extra test"; do \
	  ../$(VENV)/bin/uv pip compile ../pyproject.toml $${x#*:} $(LOCK_FLAGS) \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_31 \
	    --generate-hashes --no-header -q -o $${x%%:*}.lock || exit 1; done
	$(PY) -c "import importlib.metadata as m; print(next(r.split(';')[0] \
	  for r in m.requires('jax') if r.startswith('libtpu')))" | \
	  $(VENV)/bin/uv pip compile - --generate-hashes \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_31 \
	  --no-header -q -o requirements/tpu.lock

clean:
	rm -rf runs .pytest_cache
