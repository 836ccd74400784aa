# galtools: `make test` and `make demo` work from a fresh clone (they create .venv and install everything).
#
# Variables (e.g. `make test TORCH_INDEX=`):
#   TORCH_INDEX   where torch comes from; default PyTorch's CPU wheel index, so a machine without a GPU downloads
#                 no CUDA. Empty: the default index (PyPI's Linux build of torch bundles CUDA: use it on a GPU
#                 node), or another of PyTorch's indexes, e.g. https://download.pytorch.org/whl/cu126.
#                 When the index cannot be reached, torch comes from the default index, and the install says so.
#   CONSTRAINTS   the exact versions CI was tested with; empty to install the newest versions allowed.
#   TEST_WORKERS  pytest-xdist processes for `make test` (default auto: one per CPU this job may use, its affinity
#                 mask capped by SLURM_CPUS_PER_TASK); each runs torch and ONNX work on one thread.
PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed
TORCH       := torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
CONSTRAINTS ?= constraints.txt
TEST_WORKERS ?= auto
PYPI        := https://pypi.org/simple
DEMO        := demo-output
PIP         := $(BIN)/python -m pip
PIN         := $(if $(CONSTRAINTS),--constraint $(CONSTRAINTS))

.PHONY: test test-fast demo install man bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, from TORCH_INDEX: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install --quiet --upgrade pip
	@if [ -n "$(TORCH_INDEX)" ] && $(BIN)/python -c "import sys, urllib.request; \
	    urllib.request.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=10)" "$(TORCH_INDEX)" 2>/dev/null; then \
	  echo "installing $(TORCH) from $(TORCH_INDEX)"; \
	  echo $(PIP) install --quiet --index-url $(TORCH_INDEX) --extra-index-url $(PYPI) $(PIN) $(TORCH); \
	  $(PIP) install --quiet --index-url $(TORCH_INDEX) --extra-index-url $(PYPI) $(PIN) $(TORCH); \
	else \
	  if [ -n "$(TORCH_INDEX)" ]; then echo "$(TORCH_INDEX) cannot be reached: installing $(TORCH) from the default index"; fi; \
	  echo $(PIP) install --quiet $(PIN) $(TORCH); \
	  $(PIP) install --quiet $(PIN) $(TORCH); \
	fi
	$(PIP) install --quiet $(PIN) -e '.[all,test]'
	$(BIN)/python -c "import torch; print('torch', torch.__version__, '(CUDA ' + str(torch.version.cuda) + ')')"
	touch $(STAMP)

install: $(STAMP)

# The tests start about 900 Python processes (each tool run as a user runs it). Where PYTHONDONTWRITEBYTECODE is
# set (many containers set it), each would compile the package's modules again, and each pytest worker the test
# modules: the tests let Python keep its bytecode cache (__pycache__ folders, ignored by git).
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=

test: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile

test-fast: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

man: $(STAMP)
	$(BIN)/python -m galtools.cli.manpage man

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh $(DEMO)

clean:
	rm -rf $(DEMO) .pytest_cache
