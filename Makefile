# Two commands on a fresh machine with only Python and make:
#   make train   set up .venv, install, train the default MLP on bundled digits with hand VJPs
#   make test    set up .venv, install, lint, build the docs, run the whole test suite (notebooks included)
#   make docs    build the documentation site into site/ (strict: a broken link or reference fails)
PYTHON ?= python3
PYTEST_ARGS ?= -n auto --durations=20
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: train test lint docs check bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/funcbp train $(ARGS)

test: $(STAMP) lint docs
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check funcbp tests benchmarks notebooks docs
	$(BIN)/ruff format --check funcbp tests benchmarks notebooks docs
	$(BIN)/lint-imports

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

check: $(STAMP)
	$(BIN)/funcbp check

bench: $(STAMP)
	$(BIN)/funcbp bench $(ARGS)

clean:
	rm -rf $(VENV) runs site .cache .pytest_cache .hypothesis .jax_cache
