# Two commands set up a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CORES ?= 2
# torch is pinned here (the build this machine carries; an open range would pull several GB of
# CUDA wheels); the package itself only asks for a range.
TORCH := torch==2.13.0
# Optional: an index for torch alone, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: install run test test-fast bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -e ".[test,bench,export,workflow]"
	# The benchmarks' baseline: PyPI's elasticdeform 0.5.1 wheels were built against NumPy 1 and
	# fail to import under NumPy 2, so it is compiled from source against the installed NumPy.
	$(BIN)/python -m pip install --no-binary elasticdeform "elasticdeform>=0.5,<0.6"
	touch $(STAMP)

run: $(STAMP)
	PATH="$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES)

test: $(STAMP)
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest

test-fast: $(STAMP)
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow and not slurm"

bench: $(STAMP)
	for script in benchmarks/*.py; do PATH="$(BIN):$$PATH" $(BIN)/python $$script || exit 1; done

lint: $(STAMP)
	PATH="$(BIN):$$PATH" $(BIN)/snakemake --lint

clean:
	rm -rf results .snakemake report.html
