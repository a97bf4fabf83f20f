# spinelab: two commands do all the set-up. `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TASK ?= all

.PHONY: setup test demo bench bench-accuracy lint clean

setup: $(STAMP)

# Torch and torchvision come first and alone: this machine serves exactly these two from a local
# wheel cache; any other pair downloads gigabytes or leaves torchvision broken (see README).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

demo: setup
	$(BIN)/python -m spinelab.demo --task $(TASK) --out demo_out

# Timing benchmarks (minutes); each rewrites its own block of BENCHMARKS.md.
bench: setup
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/synth.py --task all --studies 20 --write
	$(BIN)/python bench/predict.py --write

# Accuracy benchmarks: 100 synthetic studies per task, trained on CPU (tens of minutes each).
bench-accuracy: setup
	$(BIN)/python bench/cervical_accuracy.py --write
	$(BIN)/python bench/lumbar_accuracy.py --write

lint: setup
	$(BIN)/ruff check src tests bench

clean:
	rm -rf demo_out .pytest_cache
