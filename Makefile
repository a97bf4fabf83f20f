# spinelab: two commands do all the set-up. `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TASK ?= all

.PHONY: setup nnunet ray test demo bench bench-accuracy lint clean

setup: $(STAMP)

# Torch and torchvision come first and alone, at the versions in constraints.txt: this machine serves
# exactly that pair from a local wheel cache; any other pair downloads gigabytes or leaves torchvision
# broken (see README). Everything else: pyproject.toml's ranges, pinned by constraints.txt (what CI runs).
# A change to either file reinstalls.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch torchvision
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# The optional extra spinelab[nnunet]: constraints.txt's last block, with --no-deps (its timm note says why).
NNUNET_STAMP := $(VENV)/.nnunet-installed
NNUNET_PKGS = $(shell sed -n '/^\# --- extra nnunet/,$$p' constraints.txt | grep -v '^\#' | cut -d= -f1)
nnunet: $(NNUNET_STAMP)

$(NNUNET_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps $(NNUNET_PKGS)
	touch $(NNUNET_STAMP)

# The optional extra spinelab[ray] (--engine ray): constraints.txt's ray block, which ends where the nnunet one starts.
RAY_STAMP := $(VENV)/.ray-installed
RAY_PKGS = $(shell sed -n '/^\# --- extra ray/,/^\# --- extra nnunet/p' constraints.txt | grep -v '^\#' | cut -d= -f1)
ray: $(RAY_STAMP)

$(RAY_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt $(RAY_PKGS)
	touch $(RAY_STAMP)

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
