"""Failpoints (``perdure._failpoints``): the syntax, the test-run guard, the actions, and the
list of points kept in step with the calls in the source.

Failpoints are a private test facility, so these tests reach into ``perdure._failpoints``;
the crash matrix (``tests/crash/test_crash_matrix.py``) drives them from child processes.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from perdure import ConfigurationError, PerdureError, _failpoints
from perdure._failpoints import FailpointError
from perdure.store import open_store

SRC = Path(_failpoints.__file__).parent
TESTING = {"PERDURE_TESTING": "1"}


@pytest.fixture
def arm() -> Iterator[Callable[[str], None]]:
    """Arm failpoints in this process for one test (as a test run would), then disarm."""

    def arm_with(spec: str, **extra: str) -> None:
        _failpoints.configure({**TESTING, "PERDURE_FAILPOINTS": spec, **extra})

    yield arm_with
    _failpoints.configure({})


def test_disarmed_by_default() -> None:
    assert _failpoints.ARMED is False
    _failpoints.check()  # nothing to refuse


def test_the_syntax() -> None:
    plan = _failpoints.parse(
        " step.after_commit=kill@3 , message.consume=raise, store.finish=drop@2,"
        "store.finish=raise@5,"
    )
    assert plan == {
        "step.after_commit": {3: "kill"},
        "message.consume": {1: "raise"},
        "store.finish": {2: "drop", 5: "raise"},
    }


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("step.after_comit=kill@1", "known name"),  # a typo must not pass silently
        ("step.after_commit=explode@1", "actions: kill, raise, drop"),
        ("step.after_commit", "name=action@hit"),
        ("step.after_commit=kill@0", "whole number >= 1"),
        ("step.after_commit=kill@x", "whole number >= 1"),
    ],
)
def test_malformed_entries_are_refused(spec: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(complaint)):
        _failpoints.parse(spec)


def test_a_malformed_list_refuses_to_open_a_store(arm: Callable[..., None], tmp_path: Path) -> None:
    arm("store.finish=kaboom")
    assert _failpoints.ARMED is False
    with pytest.raises(ConfigurationError, match="kaboom"):
        open_store(f"sqlite:///{tmp_path / 'x.db'}")


def test_outside_a_test_run_failpoints_refuse_to_start(tmp_path: Path) -> None:
    _failpoints.configure({"PERDURE_FAILPOINTS": "store.finish=kill@1"})
    try:
        assert _failpoints.ARMED is False  # never acts
        with pytest.raises(ConfigurationError, match="PERDURE_TESTING is not 1") as info:
            open_store(f"sqlite:///{tmp_path / 'x.db'}")
        assert "Unset PERDURE_FAILPOINTS" in str(info.value)
    finally:
        _failpoints.configure({})


def test_an_inherited_variable_stops_a_production_process_at_open(tmp_path: Path) -> None:
    """A real process: ``import perdure`` works; opening an engine is refused, clearly."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    code = f"import perdure, sys\nwith perdure.Engine({url!r}):\n    sys.exit(0)\n"
    env = {"PATH": "/usr/bin:/bin", "PERDURE_FAILPOINTS": "step.after_commit=kill@1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert "perdure._errors.ConfigurationError: PERDURE_FAILPOINTS is set" in done.stderr


def test_raise_acts_on_the_nth_hit_only(arm: Callable[..., None]) -> None:
    arm("store.finish=raise@2,store.finish=raise@4")
    assert _failpoints.ARMED is True
    _failpoints.hit("store.finish")
    with pytest.raises(FailpointError, match=r"store.finish \(hit 2\)"):
        _failpoints.hit("store.finish")
    _failpoints.hit("store.finish")
    with pytest.raises(FailpointError):
        _failpoints.hit("store.finish")
    for _ in range(10):
        _failpoints.hit("store.finish")
    assert _failpoints.hits("store.finish") == 14
    assert not issubclass(FailpointError, PerdureError)  # an unexpected failure, to perdure


def test_drop_on_sqlite_is_a_disk_io_error_at_that_point(arm: Callable[..., None]) -> None:
    conn = sqlite3.connect(":memory:")
    arm("store.append_step=drop@1")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        _failpoints.hit("store.append_step", conn)
    conn.close()


def test_drop_at_an_engine_point_cuts_the_next_store_call_of_that_thread(
    arm: Callable[..., None],
) -> None:
    conn = sqlite3.connect(":memory:")
    arm("step.after_commit=drop@1")
    _failpoints.hit("step.after_commit")  # no connection in hand: the cut waits
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        _failpoints.connection_used(conn)
    _failpoints.connection_used(conn)  # once only
    conn.close()


def test_kill_is_a_real_sigkill(tmp_path: Path) -> None:
    code = "from perdure import _failpoints\n_failpoints.hit('lease.renew')\nprint('alive')\n"
    env = {
        "PATH": "/usr/bin:/bin",
        "PERDURE_TESTING": "1",
        "PERDURE_FAILPOINTS": "lease.renew=kill",
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == -9 and done.stdout == ""
    assert done.stderr == "perdure failpoint: lease.renew hit 1: kill\n"


def test_every_point_is_in_the_source_and_every_call_names_a_point() -> None:
    called: set[str] = set()
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        called |= set(re.findall(r'_failpoints\.hit\(\s*"([^"]+)"', text))
        called |= set(re.findall(r'_claiming\([^)]*"([a-z_.]+)"\)', text))
    assert called == set(_failpoints.POINTS)
