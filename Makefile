# onnx-snn: the two commands a fresh machine needs.
#   make demo   install the core (onnx, onnxruntime, onnx-graphsurgeon, numpy) and the
#               Fashion-MNIST data, then convert and evaluate the shipped model
#   make test   install everything (torch included) and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

.PHONY: demo test test-all dataset install-core install-dev bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install-core: $(BIN)/python
	$(BIN)/python -m pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[torch,dev,bench]'

# Fashion-MNIST from Debian's package (root), or instructions otherwise
dataset:
	@if [ -f "$(FMNIST)" ] || [ -n "$$ONNX_SNN_DATA" ]; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist; }; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install -y dataset-fashion-mnist'"; \
		echo "(or put its four .gz files in a folder and set ONNX_SNN_DATA to it)"; exit 1; \
	fi

demo: install-core dataset
	$(BIN)/onnx-snn demo

test: install-dev dataset
	$(BIN)/python -m pytest -q

test-all: install-dev dataset
	$(BIN)/python -m pytest -q -m "slow or not slow"

# the side-by-side tables of README (SpikingJelly included); bench-quick: a few minutes
bench: install-dev dataset
	mkdir -p runs/bench
	$(BIN)/python tools/bench.py --json runs/bench/bench.json --markdown runs/bench/bench.md

bench-quick: install-dev dataset
	mkdir -p runs/bench
	$(BIN)/python tools/bench.py --quick --json runs/bench/quick.json --markdown runs/bench/quick.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
