"""SIGKILL at chosen instants loses at most the step in flight (real child processes).

A child runs a 10-step workflow whose step bodies write a ledger line each; it is killed with
SIGKILL, then a new process on the same database resumes the workflow. The ledger shows how
often each body ran: once for every step committed before the kill, at most twice for the one
in flight, once for every step after.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import run_app

pytestmark = pytest.mark.crash

STEPS = 10


def ledger_counts(path: Path, workflow_id: str) -> Counter[int]:
    counts: Counter[int] = Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            wid, position = line.split()
            if wid == workflow_id:
                counts[int(position)] += 1
    return counts


def journal_positions(db: Path, workflow_id: str) -> list[int]:
    """Committed positions, read straight from the file (as another process sees them)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT position FROM steps WHERE workflow_id = ? ORDER BY position", (workflow_id,)
        ).fetchall()
    except sqlite3.OperationalError:  # schema not created yet
        return []
    finally:
        conn.close()
    return [r[0] for r in rows]


def recover(db: Path, ledger: Path, workflow_id: str) -> tuple[str, float]:
    started = time.monotonic()
    child = run_app("crash_app", "--db", f"sqlite:///{db}", "--ledger", str(ledger),
                    "--id", workflow_id, "--mode", "recover")  # fmt: skip
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    return out.strip(), time.monotonic() - started


@pytest.mark.parametrize("kill_at", [0, 1, 4, 9])
def test_sigkill_inside_a_step_reruns_only_that_step(tmp_path: Path, kill_at: int) -> None:
    db, ledger = tmp_path / "p.db", tmp_path / "ledger.txt"
    child = run_app("crash_app", "--db", f"sqlite:///{db}", "--ledger", str(ledger),
                    "--id", "wf", "--steps", str(STEPS), "--kill-at", str(kill_at))  # fmt: skip
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert journal_positions(db, "wf") == list(range(kill_at))

    result, elapsed = recover(db, ledger, "wf")

    assert result == str(sum(range(STEPS)))
    counts = ledger_counts(ledger, "wf")
    expected = {p: 1 for p in range(STEPS)}
    expected[kill_at] = 2  # the step in flight ran again; nothing else did
    assert dict(counts) == expected
    assert journal_positions(db, "wf") == list(range(STEPS))
    assert elapsed < 10


@pytest.mark.parametrize("kill_after", [1, 5, 9])
def test_sigkill_between_steps_from_outside(tmp_path: Path, kill_after: int) -> None:
    db, ledger = tmp_path / "p.db", tmp_path / "ledger.txt"
    child = run_app("crash_app", "--db", f"sqlite:///{db}", "--ledger", str(ledger),
                    "--id", "wf", "--steps", str(STEPS), "--step-sleep", "0.05")  # fmt: skip
    deadline = time.monotonic() + 30
    while len(journal_positions(db, "wf")) < kill_after:
        assert time.monotonic() < deadline, "child made no progress"
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    committed = journal_positions(db, "wf")
    assert len(committed) >= kill_after

    result, _ = recover(db, ledger, "wf")

    assert result == str(sum(range(STEPS)))
    counts = ledger_counts(ledger, "wf")
    assert set(counts) == set(range(STEPS))
    for position in committed:
        assert counts[position] == 1, f"committed step {position} ran again"
    assert sum(1 for c in counts.values() if c == 2) <= 1
    assert max(counts.values()) <= 2
    assert journal_positions(db, "wf") == list(range(STEPS))
