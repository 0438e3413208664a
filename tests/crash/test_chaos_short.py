"""The short chaos run: ``bench/chaos.py --short`` against the test PostgreSQL must end without
a violation (nothing lost, no transaction applied twice, no gap in a journal...).

Three worker processes run 300 workflows of 6 steps while workers are SIGKILLed every
0.5-2 s, PostgreSQL is restarted every 6-12 s and one worker is frozen past its lease; about
25 s. The long version is ``make chaos``; the method is in ``bench/chaos.py``'s docstring.

This test restarts the PostgreSQL server it runs against (as ``test_pg_workers.py`` does). The
server is ``PERDURE_CHAOS_URL`` if set (say, a private cluster during development), else the
suite's test PostgreSQL; ``PERDURE_CHAOS_RESTART_CMD`` overrides how it is restarted (by
default ``pg_ctlcluster`` on the local cluster listening on the URL's port). Each run gets a
fresh schema, dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import POSTGRES_URL

try:
    import psycopg
except ImportError:  # pragma: no cover - dev installs have it
    pytest.skip("psycopg is not installed", allow_module_level=True)

pytestmark = pytest.mark.crash

CHAOS = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"
URL = os.environ.get("PERDURE_CHAOS_URL", POSTGRES_URL)
RESTART_CMD = os.environ.get("PERDURE_CHAOS_RESTART_CMD", "")
RUN_TIMEOUT = 100.0


def skip_unless_runnable() -> None:
    """Skip (in CI: fail) when the server cannot be reached; skip when it cannot be
    restarted from here."""
    try:
        psycopg.connect(URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        reason = f"PostgreSQL at {URL} is unreachable: {exc}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    local = urlsplit(URL).hostname in ("127.0.0.1", "localhost", "::1")
    if not RESTART_CMD and not (local and shutil.which("pg_ctlcluster")):
        pytest.skip("needs a local pg_ctlcluster cluster, or PERDURE_CHAOS_RESTART_CMD")


def run_chaos(url: str) -> tuple[int, str]:
    """Run ``chaos.py --short`` in its own session (so that a timeout kills its workers too);
    its exit status and output."""
    command = [sys.executable, str(CHAOS), "--short", "--url", url]
    if RESTART_CMD:
        command += ["--restart-cmd", RESTART_CMD]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return -1, f"{output}\n(timed out after {RUN_TIMEOUT:.0f} s)"
    return proc.returncode, output


def drop_schema(schema: str) -> None:
    """Drop the run's schema (the server may still be coming back from a restart)."""
    for _ in range(30):
        try:
            with psycopg.connect(URL, autocommit=True, connect_timeout=3) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())
            return
        except psycopg.OperationalError:
            time.sleep(1)


@pytest.mark.timeout(150)
def test_short_chaos_run_has_no_violation() -> None:
    skip_unless_runnable()
    schema = f"chaos_test_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in URL else "?"
    try:
        code, output = run_chaos(f"{URL}{sep}schema={schema}")
    finally:
        drop_schema(schema)
    print(output)
    assert code == 0, f"the chaos run failed (exit status {code}):\n{output}"
    assert "PASS: 0 violation(s)" in output
