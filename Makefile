PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint container-test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: install
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
