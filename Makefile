# `make demo` and `make test` each create .venv when missing and install into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo --root runs

# Test files run in parallel (pytest-xdist), each file on one worker so that
# its module fixtures are built once.
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist loadfile tests

# Every benchmark (benchmarks/README.md); needs the bench extra (torch, transformers).
bench: $(STAMP)
	$(PY) -m pip install -q -e ".[dev,bench]"
	$(PY) benchmarks/run_all.py

clean:
	rm -rf runs .pytest_cache
