# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8080
DATA ?= .karma-data

.PHONY: install run test lint typecheck unit conformance bench clean docs

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

## Start a server on 127.0.0.1:$(PORT) with data in ./$(DATA), WAL on.
run: install
	$(BIN)/karma-trio --bind=127.0.0.1 --port=$(PORT) --directory=$(DATA) --restore=true --wal=true

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check karma

typecheck: install
	$(BIN)/mypy --strict karma

## Two workers, a test file each at a time (its fixtures and servers stay in one process).
unit: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

## ruff, mypy --strict, then the whole pytest suite.
test: lint typecheck unit

## The conformance cases against karma 1.0's golden answers (needs ../shared).
conformance: install
	bash ../shared/conformance/run.sh

## The benchmark table (see benchmarks/README.md): this tree, $(PREVIOUS), trio_min, and
## karma 1.0 when KARMA1=/path/to/its/binary is given (built by you; nothing here builds it).
PREVIOUS ?= HEAD~1
KARMA1 ?=
bench: install
	$(BIN)/python benchmarks/bench.py --rounds 3 --previous $(PREVIOUS) $(if $(KARMA1),--karma1 $(KARMA1))

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info

## Regenerate the reference pages from the tables in the code.
docs: install
	$(BIN)/python scripts/gen_reference.py
