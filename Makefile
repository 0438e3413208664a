# perdure: `make demo` runs the durable agent demo, `make test` runs the tests.
# Each target sets up its own virtual environment in .venv (Python >= 3.11 needed).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-sqlite test-postgres lint bench bench-postgres clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "perdure needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/perdure demo

test: $(STAMP)
	$(PY) -m pytest

# Quicker loops: engine tests on one backend only (`make test` runs them on both).
test-sqlite: $(STAMP)
	PERDURE_TEST_BACKEND=sqlite $(PY) -m pytest

test-postgres: $(STAMP)
	PERDURE_TEST_BACKEND=postgres $(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/step_overhead.py

# perdure against DBOS Transact on PostgreSQL, 1/2/4 workers (installs dbos into bench/.peers);
# then cross-process wake-up latency (LISTEN/NOTIFY against polling).
bench-postgres: $(STAMP)
	$(PY) bench/pg_workers.py
	$(PY) bench/pg_wakeup.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
