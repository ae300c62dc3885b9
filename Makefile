PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SERVE_STAMP := $(VENV)/.installed-serve

.PHONY: install install-serve serve test lint container-test clean

install: $(STAMP)
install-serve: $(SERVE_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Serving: Clipwise, torch and the graph backends it serves with (the serve extra). Not byte-compiled at
# install (torch alone is thousands of modules): the modules serving imports compile on first import.
$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-compile -e '.[serve]'
	touch $(SERVE_STAMP)

# Development: serving plus training, Ray and the tools and peers the tests use (the dev extra).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $(SERVE_STAMP)

serve: install-serve
	$(BIN)/clipwise serve

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest -q

# Build the CPU image and the compose stack from local parts only, run and check them (root, Docker engine).
container-test:
	scripts/container_test.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
