"""Shared fixtures: a fresh SQLite database per test, an engine on it, child-process helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import perdure

APPS = Path(__file__).parent / "apps"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A database URL for a fresh SQLite file in the test's temporary folder."""
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
