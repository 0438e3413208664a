"""Faults under the journal never become the workflow's failure (on both backends).

Regression tests for what the crash matrix (``tests/crash/test_crash_matrix.py``) found:

- an exception other than a ``PerdureError`` raised by a journal write (a bug in a store, an
  ``OSError`` from the SQLite blob files) went up into the workflow's code, and the workflow
  ended in ERROR with it: a store failure reached user code. Now it stops the run like any
  store failure, the workflow is given back, and it resumes at that step;
- an engine whose first recovery sweep failed (the database briefly unavailable) refused to
  open. Now the failure is logged and the sweep made again at the next heartbeat.

The faults are injected with failpoints armed in this process (``perdure._failpoints``), and,
for the blob files, by a file standing where the blob folder must be created.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import perdure
from conftest import wait_until
from perdure import _failpoints

calls: Counter[str] = Counter()
gate = threading.Event()
BIG = 300 * 1024  # above the default blob threshold: goes to the blob store


@pytest.fixture
def arm() -> Iterator[Callable[[str], None]]:
    """Arm failpoints in this process for one test, as a test run would; disarm after."""
    yield lambda spec: _failpoints.configure({"PERDURE_TESTING": "1", "PERDURE_FAILPOINTS": spec})
    _failpoints.configure({})


def fast_engine(url: str) -> perdure.Engine:
    """An engine that takes a given-back workflow again within a fraction of a second."""
    return perdure.Engine(url, heartbeat_interval=0.1, recovery_interval=0.1, shutdown_grace=0.2)


@perdure.step
def fault_note(tag: str) -> str:
    calls[tag] += 1
    return tag


@perdure.transaction
def fault_book(tag: str) -> str:
    calls[tag] += 1
    perdure.connection().execute("SELECT 1")
    return tag


@perdure.workflow(name="store_fault_flow")
def store_fault_flow() -> list[str]:
    return [fault_note("a"), fault_book("b"), perdure.receive("go"), fault_note("c")]


@pytest.mark.parametrize(
    "point",
    [
        "step.before_commit",
        "step.after_commit",
        "store.append_step",
        "store.append_transaction",
        "message.consume",
        "store.consume",
    ],
)
def test_an_unexpected_error_in_a_journal_write_does_not_fail_the_workflow(
    db_url: str, arm: Callable[[str], None], point: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls.clear()
    arm(f"{point}=raise@1")
    with caplog.at_level(logging.ERROR, logger="perdure"), fast_engine(db_url) as engine:
        handle = engine.start(store_fault_flow, id="faulty")
        engine.send("faulty", "go", "message")
        assert handle.result(timeout=20) == ["a", "b", "message", "c"]
        assert _failpoints.hits(point) >= 1
    assert "raised an unexpected error; the workflow resumes there" in caplog.text
    assert "FailpointError" in caplog.text  # logged with its traceback, not swallowed
    assert calls["a"] <= 2 and calls["c"] == 1  # at most the step in flight ran again


@perdure.step
def big_document() -> str:
    calls["big"] += 1
    return "x" * BIG


@perdure.workflow(name="store_fault_big")
def store_fault_big() -> int:
    return len(big_document())


def test_a_blob_file_that_cannot_be_written_pauses_the_workflow(tmp_path: Path) -> None:
    """The real-world face of the bug: on SQLite a large result is written as a file beside
    the database; an ``OSError`` there (a full disk, here a file where the blob folder goes)
    ended the workflow in ERROR. It now waits for the disk, and resumes."""
    calls.clear()
    db = tmp_path / "perdure.db"
    blocker = Path(f"{db}.blobs")
    blocker.write_text("not a folder")
    with fast_engine(f"sqlite:///{db}") as engine:
        handle = engine.start(store_fault_big, id="big")
        # the step runs, its result cannot be written, the run stops and resumes: again
        wait_until(lambda: calls["big"] >= 3 or engine.get_workflow("big").status.finished)
        info = engine.get_workflow("big")
        assert not info.status.finished, f"the workflow ended {info.status}: {info.error}"
        blocker.unlink()
        assert handle.result(timeout=10) == BIG


@perdure.step
def gated(tag: str) -> str:
    calls[tag] += 1
    gate.wait(10)
    return tag


@perdure.workflow(name="store_fault_gated")
def store_fault_gated() -> str:
    return gated("gated")


@pytest.mark.parametrize("action", ["raise", "drop"])
def test_an_engine_opens_when_its_first_recovery_sweep_fails(
    db_url: str, arm: Callable[[str], None], action: str
) -> None:
    calls.clear()
    gate.clear()
    with fast_engine(db_url) as first:  # stops while the step runs: the workflow is released
        first.start(store_fault_gated, id="released")
        wait_until(lambda: calls["gated"] == 1)
    gate.set()
    arm(f"recovery.claim={action}@1")
    with fast_engine(db_url) as engine:  # its first sweep fails; it opens all the same
        assert engine.handle("released").result(timeout=10) == "gated"
        assert _failpoints.hits("recovery.claim") >= 2  # the sweep was made again
