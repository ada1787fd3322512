# Each target creates .venv on a fresh machine. torch==2.13.0 is installed first so that pip
# never swaps in a multi-GB CUDA build to satisfy the package's own `torch>=2.2` range.
PY := .venv/bin/python
THREADS ?= 2
export THREADS  # the tests pin torch to it (tests/conftest.py)

.venv/ready: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,plots]'
	touch .venv/ready

# Reference implementations the counter is cross-checked against (tests/measure/test_oracles.py)
# and the frameworks the converters and NIR round trips are checked against (tests/interop/).
# --no-deps: their declared dependencies would pull ~30 heavy packages (tonic, torchaudio, ...);
# torch stays pinned in the second line so pip never swaps it.
.venv/oracles: .venv/ready
	$(PY) -m pip install -q --no-deps spikingjelly==2.0.0 neurobench==2.3.0 snntorch==1.0.0 \
		norse==1.1.0 nir==1.0.8 nirtorch==2.6
	$(PY) -m pip install -q torch==2.13.0 'loguru>=0.7,<1' tqdm h5py
	touch .venv/oracles

.PHONY: demo test test-all lint bench
demo: .venv/ready
	$(PY) -m spikecompress demo --threads $(THREADS)

test: .venv/oracles
	$(PY) -m ruff check .
	SPIKECOMPRESS_REQUIRE_ORACLES=1 $(PY) -m pytest -q

test-all: .venv/oracles
	$(PY) -m pytest -q -m ''

bench: .venv/ready
	$(PY) benchmarks/engine_speed.py
	$(PY) benchmarks/dense_accuracy.py
