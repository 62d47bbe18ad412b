# The two commands a new machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := examples/demo.py:app
DEMO_DB ?= sqlite:///examples/demo.db

.PHONY: run test check fmt bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: start the example app on SQLite (HTTP API on http://127.0.0.1:8642)
run: $(STAMP)
	$(BIN)/nonstop migrate --db $(DEMO_DB)
	$(BIN)/nonstop run researcher --app $(DEMO) --db $(DEMO_DB) --input '{"topic": "durable agents"}'
	$(BIN)/nonstop run triage --app $(DEMO) --db $(DEMO_DB) --input '{"tickets": 12}'
	$(BIN)/nonstop serve $(DEMO) --db $(DEMO_DB)

## check: formatting, lint and types
check: $(STAMP)
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy

## test: check, then the whole test suite (PostgreSQL tests included where available)
test: check
	$(BIN)/pytest

fmt: $(STAMP)
	$(BIN)/ruff format src tests bench examples
	$(BIN)/ruff check --fix src tests bench examples

## bench: the benchmarks, writing bench/results/*.json and printing the table
bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache examples/demo.db*
