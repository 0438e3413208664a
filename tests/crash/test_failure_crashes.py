"""Failures across real process deaths: retries, cancellation, compensation, poison workflows.

Child processes (``tests/apps/failure_app.py``) run the workflows and are killed with SIGKILL
(from here, or by their own step); new children on the same database resume the work. Every
step body writes a ledger line "<tag> <pid> <time>", so the ledger shows how often each body
ran, in which process and when. This process reads the database as another process would:
straight from the SQLite file, or through an Engine opened with ``recover=False`` (it never
takes a workflow over).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import perdure
from conftest import query_db, run_app, wait_until

pytestmark = pytest.mark.crash


@dataclass(frozen=True)
class Line:
    tag: str
    pid: int
    at: float


def read_ledger(path: Path) -> list[Line]:
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        tag, pid, at = raw.split()
        lines.append(Line(tag, int(pid), float(at)))
    return lines


def tags(path: Path) -> list[str]:
    return [line.tag for line in read_ledger(path)]


def attempt_rows(db: Path, workflow_id: str) -> list[tuple[Any, ...]]:
    return query_db(
        db,
        "SELECT attempt, name, error, started_at, failed_at, retry_at FROM step_attempts "
        "WHERE workflow_id = ? ORDER BY attempt",
        workflow_id,
    )


def step_names(db: Path, workflow_id: str) -> list[str]:
    rows = query_db(
        db, "SELECT name FROM steps WHERE workflow_id = ? ORDER BY position", workflow_id
    )
    return [r[0] for r in rows]


class Child:
    """One run of failure_app.py."""

    def __init__(self, db: Path, ledger: Path, workflow_id: str, mode: str, *extra: str) -> None:
        self.proc = run_app("failure_app", "--db", f"sqlite:///{db}", "--ledger", str(ledger),
                            "--id", workflow_id, "--mode", mode, *extra)  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL

    def died(self) -> None:
        """Wait for a child that must kill itself with SIGKILL."""
        _, err = self.finish_raw()
        assert self.proc.returncode == -signal.SIGKILL, err

    def outcome(self) -> dict[str, Any]:
        """Wait for a child that must exit normally; return its final JSON line."""
        out, err = self.finish_raw()
        assert self.proc.returncode == 0, err
        lines = out.strip().splitlines()
        assert lines, err
        return json.loads(lines[-1])  # type: ignore[no-any-return]

    def finish_raw(self) -> tuple[str, str]:
        try:
            return self.proc.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=10)
            pytest.fail(f"child did not exit in time\nstdout: {out}\nstderr: {err}")


@contextmanager
def observer(db: Path) -> Iterator[perdure.Engine]:
    """An engine that only looks (and cancels): it never takes a workflow over."""
    with perdure.Engine(f"sqlite:///{db}", recover=False, shutdown_grace=0.5) as eng:
        yield eng


# -- 1. the attempt count and the backoff wait survive a SIGKILL between attempts ----------


def test_attempt_count_and_backoff_survive_a_sigkill_between_attempts(tmp_path: Path) -> None:
    db, ledger = tmp_path / "p.db", tmp_path / "ledger.txt"
    first = Child(db, ledger, "r1", "retry")
    # Attempt 2 failed and is journaled: the child now waits 3 s before attempt 3.
    wait_until(lambda: len(attempt_rows(db, "r1")) == 2, timeout=20)
    first.kill()
    journaled = attempt_rows(db, "r1")
    assert [row[0] for row in journaled] == [1, 2]
    assert all(row[1] == "fail_flaky_step" for row in journaled)
    assert "attempt 2 failed" in journaled[1][2]
    retry_at = journaled[1][5]
    assert retry_at - journaled[1][4] == pytest.approx(3.0)  # no jitter: the second wait
    assert tags(ledger) == ["attempt", "attempt"]  # killed in the wait, not in an attempt

    time.sleep(1.0)  # a third of the wait passes while no process runs the workflow
    recovery_began = time.time()
    second = Child(db, ledger, "r1", "retry", "--recover")
    assert second.outcome() == {"result": 3}

    lines = read_ledger(ledger)
    assert [line.tag for line in lines] == ["attempt"] * 3  # one more attempt, not a new count
    assert [line.pid for line in lines] == [first.pid, first.pid, second.pid]
    with observer(db) as eng:
        [step] = eng.list_steps("r1")
        assert step.name == "fail_flaky_step"
        assert step.status is perdure.StepStatus.SUCCESS
        assert step.attempts == 3
        info = eng.get_workflow("r1")
        assert info.status is perdure.WorkflowStatus.SUCCESS
        assert info.recoveries == 1
        assert eng.handle("r1").result(timeout=5) == 3
    third = lines[2].at
    # The wait resumed with the time left: attempt 3 started no earlier than the journaled
    # retry_at, and sooner than a full 3 s wait counted from the new process's start.
    assert third >= retry_at
    assert third < recovery_began + 3.0
    assert attempt_rows(db, "r1") == journaled  # the failures stay in the journal as they were


# -- 2. cancel from another process ----------------------------------------------------------


def test_cancel_a_sync_workflow_from_another_process(tmp_path: Path) -> None:
    db, ledger = tmp_path / "p.db", tmp_path / "ledger.txt"
    child = Child(db, ledger, "c1", "cancel-sync")
    wait_until(lambda: step_names(db, "c1").count("fail_cancel_work") >= 2, timeout=20)
    with observer(db) as eng:
        status = eng.cancel("c1")
        cancelled_at = time.monotonic()
        ran_at_cancel = sum(1 for t in tags(ledger) if t.startswith("work"))
        assert status is perdure.WorkflowStatus.RUNNING
        wait_until(lambda: eng.get_workflow("c1").status.finished, timeout=10)
        stopped_after = time.monotonic() - cancelled_at
        assert eng.get_workflow("c1").status is perdure.WorkflowStatus.CANCELLED
        with pytest.raises(perdure.WorkflowCancelledError):
            eng.handle("c1").result(timeout=5)
        steps = eng.list_steps("c1")
    assert stopped_after < 3.0
    assert child.outcome()["error"] == "WorkflowCancelledError"

    ledger_tags = tags(ledger)
    work = [t for t in ledger_tags if t.startswith("work")]
    # It stopped at a step boundary: at most the step in flight when it saw the request
    # finished; nothing after it ran. Every body that ran was journaled.
    assert len(work) <= ran_at_cancel + 1
    assert work == [f"work{i}" for i in range(len(work))]
    assert len(work) < 30
    assert ledger_tags == [*work, "undo"]  # the compensation ran once, after the last step
    assert [s.name for s in steps] == ["fail_cancel_work"] * len(work) + ["fail_cancel_undo"]
    assert all(s.status is perdure.StepStatus.SUCCESS for s in steps)


def test_cancel_an_async_workflow_from_another_process(tmp_path: Path) -> None:
    db, ledger = tmp_path / "p.db", tmp_path / "ledger.txt"
    child = Child(db, ledger, "c2", "cancel-async")
    wait_until(lambda: "long-start" in tags(ledger), timeout=20)  # awaits asyncio.sleep(30)
    with observer(db) as eng:
        eng.cancel("c2")
        cancelled_at = time.monotonic()
        wait_until(lambda: eng.get_workflow("c2").status.finished, timeout=10)
        stopped_after = time.monotonic() - cancelled_at
        assert eng.get_workflow("c2").status is perdure.WorkflowStatus.CANCELLED
        with pytest.raises(perdure.WorkflowCancelledError):
            eng.handle("c2").result(timeout=5)
        steps = eng.list_steps("c2")
    assert stopped_after < 3.0
    assert child.outcome()["error"] == "WorkflowCancelledError"

    # The in-flight step was cancelled (it never finished, nothing recorded it), no step after
    # it ran, and the compensation ran exactly once.
    assert tags(ledger) == ["work0", "work1", "work2", "long-start", "undo"]
    assert [s.name for s in steps] == ["fail_acancel_work"] * 3 + ["fail_acancel_undo"]


def test_a_cancel_during_compensation_does_not_interrupt_the_undo(tmp_path: Path) -> None:
    """The workflow failed and is undoing its booking when a cancel arrives from another
    process: the undo in flight must finish (cancelling it half-way defeats its purpose)
    and run once; the workflow ends with its own error."""
    db, ledger = tmp_path / "p.db", tmp_path / "ledger.txt"
    child = Child(db, ledger, "cc1", "cancel-compensating")
    wait_until(lambda: "undo-start" in tags(ledger), timeout=20)
    with observer(db) as eng:
        eng.cancel("cc1")
        wait_until(lambda: eng.get_workflow("cc1").status.finished, timeout=10)
        assert eng.get_workflow("cc1").status is perdure.WorkflowStatus.ERROR
        with pytest.raises(ValueError, match="failed after booking"):
            eng.handle("cc1").result(timeout=5)
    child.outcome()
    assert tags(ledger) == ["book", "undo-start", "undo-end"]


# -- 3. a crash in the middle of compensating resumes the compensations -------------------


def test_compensation_resumes_after_a_crash_in_the_middle_of_it(tmp_path: Path) -> None:
    db, ledger = tmp_path / "p.db", tmp_path / "ledger.txt"
    marker = tmp_path / "undo_b_killed"
    first = Child(db, ledger, "s1", "saga", "--marker", str(marker))
    first.died()  # undo_B killed it
    assert marker.exists()
    assert tags(ledger) == ["book-A", "book-B", "book-C", "undo-C", "undo-B"]
    # undo_C is journaled; undo_B, in flight at the kill, is not.
    assert step_names(db, "s1") == ["fail_saga_book"] * 3 + ["fail_saga_undo_c"]

    second = Child(db, ledger, "s1", "saga", "--recover", "--marker", str(marker))
    outcome = second.outcome()
    assert outcome["error"] == "ValueError"
    assert "cannot be completed" in outcome["message"]

    lines = read_ledger(ledger)
    # Newest first: C, B (killed), B again (the step in flight), then A. The bookings and
    # undo_C were replayed from the journal, not run again.
    assert [line.tag for line in lines] == [
        "book-A", "book-B", "book-C", "undo-C", "undo-B", "undo-B", "undo-A",
    ]  # fmt: skip
    assert [line.pid for line in lines[-2:]] == [second.pid, second.pid]
    assert all(line.pid == first.pid for line in lines[:-2])
    with observer(db) as eng:
        info = eng.get_workflow("s1")
        assert info.status is perdure.WorkflowStatus.ERROR
        assert info.error is not None
        assert info.error.type.endswith("ValueError")
        assert info.recoveries == 1
        with pytest.raises(ValueError, match="cannot be completed after booking A, B and C"):
            eng.handle("s1").result(timeout=5)
        assert [s.name for s in eng.list_steps("s1")] == [
            "fail_saga_book", "fail_saga_book", "fail_saga_book",
            "fail_saga_undo_c", "fail_saga_undo_b", "fail_saga_undo_a",
        ]  # fmt: skip


# -- 4. a poison workflow is dead-lettered after N recoveries --------------------------------


def test_crashes_with_progress_in_between_are_not_poison(tmp_path: Path) -> None:
    """Three crashes, each after one more step was journaled: with max_recoveries=2 the
    workflow still completes, because every takeover found new progress."""
    db, ledger = tmp_path / "p.db", tmp_path / "ledger.txt"
    Child(db, ledger, "g1", "progress").died()  # killed in step 0
    Child(db, ledger, "g1", "progress", "--recover").died()  # step 0 again, killed in step 1
    Child(db, ledger, "g1", "progress", "--recover").died()  # ... killed in step 2
    outcome = Child(db, ledger, "g1", "progress", "--recover").outcome()
    assert outcome == {"result": 3}
    assert tags(ledger) == ["progress-0", "progress-0", "progress-1", "progress-1",
                            "progress-2", "progress-2"]  # fmt: skip


def test_poison_workflow_is_dead_lettered_after_max_recoveries(tmp_path: Path) -> None:
    db, ledger = tmp_path / "p.db", tmp_path / "ledger.txt"
    Child(db, ledger, "x1", "poison").died()  # the first run
    for recovery in (1, 2):  # max_recoveries=2: two takeovers still run it
        Child(db, ledger, "x1", "poison", "--recover").died()
        assert tags(ledger) == ["poison"] * (recovery + 1)
        assert query_db(db, "SELECT recoveries FROM workflows WHERE id = 'x1'") == [(recovery,)]

    # The third takeover exceeds the limit: that process marks it instead of running it.
    outcome = Child(db, ledger, "x1", "poison", "--recover").outcome()
    assert outcome["error"] == "DeadLetteredError"
    assert tags(ledger) == ["poison"] * 3  # the first run and 2 recoveries, nothing more

    with observer(db) as eng:
        info = eng.get_workflow("x1")
        assert info.status is perdure.WorkflowStatus.DEAD_LETTER
        assert info.recoveries == 3
        with pytest.raises(perdure.DeadLetteredError) as caught:
            eng.handle("x1").result(timeout=5)
    message = str(caught.value)
    assert "x1" in message and "fail_poison_flow" in message
    assert "3 times" in message and "limit 2" in message
    assert "fix the cause" in message  # it says what to do

    # Another engine start leaves it alone.
    again = Child(db, ledger, "x1", "poison", "--recover").outcome()
    assert again["error"] == "DeadLetteredError"
    assert tags(ledger) == ["poison"] * 3
    assert query_db(db, "SELECT status, recoveries FROM workflows WHERE id = 'x1'") == [
        ("DEAD_LETTER", 3)
    ]
