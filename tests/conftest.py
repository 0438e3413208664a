"""Shared fixtures: a fresh SQLite database per test, an engine on it, child-process helpers."""

from __future__ import annotations

import functools
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import perdure

APPS = Path(__file__).parent / "apps"


def _backends() -> list[str]:
    """The backends engine tests run on: both by default; ``PERDURE_TEST_BACKEND=sqlite`` or
    ``=postgres`` picks one (a quicker local loop)."""
    chosen = os.environ.get("PERDURE_TEST_BACKEND", "").strip().lower()
    if chosen in ("sqlite", "postgres"):
        return [chosen]
    if chosen not in ("", "both"):
        raise pytest.UsageError(f"PERDURE_TEST_BACKEND is sqlite, postgres or both, not {chosen!r}")
    return ["sqlite", "postgres"]


@pytest.fixture(params=_backends())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database for one test, once per backend: a SQLite file in the test's temporary
    folder, and a fresh schema of the test PostgreSQL (skipped with the reason printed when
    it is unreachable outside CI; a failure in CI)."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'perdure.db'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[perdure.Engine]:
    """An open engine on a fresh database, with a short shutdown grace."""
    with perdure.Engine(db_url, shutdown_grace=0.5) as eng:
        yield eng


def run_app(app: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``tests/apps/<app>.py`` in a child process with the same interpreter."""
    return subprocess.Popen(
        [sys.executable, str(APPS / f"{app}.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` every 5 ms until it holds; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


# -- PostgreSQL ------------------------------------------------------------------------------

POSTGRES_URL = os.environ.get(
    "PERDURE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@functools.cache
def _postgres_unavailable() -> str | None:
    """Why the test PostgreSQL cannot be used (checked once per session), or None."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - dev installs have it
        return f"psycopg is not installed: {exc}"
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc}"
    return None


def _postgres_or_skip() -> None:
    """Skip (or, in CI, fail) the test when the test PostgreSQL cannot be reached."""
    reason = _postgres_unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    print(f"skipping: {reason}")
    pytest.skip(reason)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose ``?schema=`` is a fresh schema, dropped after the test."""
    _postgres_or_skip()
    import uuid

    import psycopg

    schema = f"perdure_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}schema={schema}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def query_db(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows read straight from a SQLite file, as another process sees them ([] before the
    file or its schema exists)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # schema not created yet
        return []
    finally:
        conn.close()
