# Each target creates .venv on a fresh machine. torch==2.13.0 is installed first so that pip
# never swaps in a multi-GB CUDA build to satisfy the package's own `torch>=2.2` range.
PY := .venv/bin/python
THREADS ?= 2

.venv/ready: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,plots]'
	touch .venv/ready

.PHONY: demo test test-all lint bench
demo: .venv/ready
	$(PY) -m spikecompress demo --threads $(THREADS)

test: .venv/ready
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-all: .venv/ready
	$(PY) -m pytest -q -m ''

bench: .venv/ready
	$(PY) benchmarks/engine_speed.py
	$(PY) benchmarks/dense_accuracy.py
