# perdure: `make demo` runs the durable agent demo, `make test` runs the tests.
# Each target sets up its own virtual environment in .venv (Python >= 3.11 needed).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test browser test-sqlite test-postgres lint bench bench-steps bench-growth bench-postgres chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "perdure needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/perdure demo

test: $(STAMP) browser
	$(PY) -m pytest

# The dashboard test drives Debian's Chromium (never a browser downloaded by a test tool).
# Installed here when missing and this user may (root with apt); otherwise that test says why
# it skips (and fails in CI, where nothing may skip).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get install -y -q chromium >/dev/null 2>&1 \
	      || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null)) \
	  || echo "chromium is not installed: the dashboard test will skip (apt-get install chromium)"; }

# Quicker loops: engine tests on one backend only (`make test` runs them on both).
test-sqlite: $(STAMP)
	PERDURE_TEST_BACKEND=sqlite $(PY) -m pytest

test-postgres: $(STAMP)
	PERDURE_TEST_BACKEND=postgres $(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples
	$(VENV)/bin/mypy

# perdure side by side with DBOS Transact, LangGraph and the raw floors, on SQLite and
# PostgreSQL (SQLite only, loudly, if PostgreSQL is down); installs the pinned peers of
# bench/peers-requirements.txt into bench/.peers/.venv. BENCH_ARGS=--quick: a smoke run.
bench: $(STAMP)
	$(PY) bench/compare.py $(BENCH_ARGS)

# perdure's own per-step overhead next to a plain call and a raw durable SQLite insert.
bench-steps: $(STAMP)
	$(PY) bench/step_overhead.py

# How perdure's cost grows with workflow length, history size (replay) and concurrency.
bench-growth: $(STAMP)
	$(PY) bench/growth.py

# perdure against DBOS Transact on PostgreSQL, 1/2/4 workers (installs dbos into bench/.peers);
# then cross-process wake-up latency (LISTEN/NOTIFY against polling).
bench-postgres: $(STAMP)
	$(PY) bench/pg_workers.py
	$(PY) bench/pg_wakeup.py

# The chaos run, long version (~6 min): 10,000 workflows through worker kills, PostgreSQL
# restarts and a frozen worker; exits non-zero on any violation. It RESTARTS the server of
# CHAOS_URL: point it at a cluster nobody else is using. `make test` runs the short version.
CHAOS_URL ?= postgresql://postgres@127.0.0.1:5432/test
chaos: $(STAMP)
	$(PY) bench/chaos.py --url '$(CHAOS_URL)' $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
