# TCMS: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export TCMS_TEST_PG_URL ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: setup demo test test-fast lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install TCMS with its test tools

demo: $(STAMP)  ## run certified exchanges in-process, print the evidence and verify it
	$(BIN)/tcms demo --out demo-out

test: $(STAMP)  ## lint, type-check and run the whole test suite (needs PostgreSQL)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q

test-fast: $(STAMP)  ## every test, with 200 instead of 3000 property-based schedules each
	TCMS_PROPERTY_EXAMPLES=200 $(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache .hypothesis
