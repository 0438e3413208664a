"""Bad input gets a clear error and loses nothing: a missing database, corrupt journal rows."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

import perdure

gate = threading.Event()
bodies: list[str] = []


@perdure.step
def first() -> int:
    bodies.append("first")
    return 1


@perdure.step
def wait_for_gate() -> int:
    bodies.append("wait")
    gate.wait(30)
    return 2


@perdure.workflow(name="bad_input_flow")
def bad_input_flow() -> int:
    return first() + wait_for_gate()


def test_a_database_in_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "perdure.db"
    with pytest.raises(perdure.StoreUnavailableError, match="does not exist"):
        perdure.Engine(f"sqlite:///{missing}").open()


def test_a_corrupt_journal_row_fails_the_run_clearly_and_is_kept(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    with perdure.Engine(f"sqlite:///{db}", shutdown_grace=0.1) as engine:
        engine.start(bad_input_flow, id="c1")
        while bodies.count("wait") < 1:
            threading.Event().wait(0.005)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE steps SET output = '{\"trunc' WHERE workflow_id = 'c1'")
    conn.commit()
    conn.close()
    gate.set()
    with perdure.Engine(f"sqlite:///{db}") as engine:
        with pytest.raises(perdure.SerializationError) as info:
            engine.handle("c1").result(timeout=10)
        assert engine.get_workflow("c1").status is perdure.WorkflowStatus.ERROR
    message = str(info.value)
    assert "step 'first'" in message
    assert "position 0" in message
    assert "'c1'" in message
    conn = sqlite3.connect(db)
    kept = conn.execute("SELECT output FROM steps WHERE workflow_id = 'c1'").fetchall()
    conn.close()
    assert kept == [('{"trunc',)]  # the row is left as it was, for a human to inspect
    assert bodies == ["first", "wait"]  # the corrupt step was not silently re-run


@perdure.step
def huge(n: int) -> str:
    return "x" * n


@perdure.workflow(name="bad_input_huge")
def returns_huge(n: int) -> int:
    try:
        huge(n)
    except perdure.SerializationError as exc:
        return len(str(exc))
    return -1


def test_a_result_over_the_entry_cap_fails_clearly_and_commits_nothing(db_url: str) -> None:
    with perdure.Engine(db_url, max_entry_bytes=1000, shutdown_grace=0.5) as engine:
        assert engine.run(returns_huge, 500, id="small", timeout=10) == -1
        assert engine.run(returns_huge, 5000, id="big", timeout=10) > 0
        assert [s.name for s in engine.list_steps("big")] == []  # nothing journaled
        with pytest.raises(perdure.SerializationError, match="1,000-byte cap"):
            engine.run(huge_flow, id="raised", timeout=10)


@perdure.workflow(name="bad_input_huge_flow")
def huge_flow() -> str:
    return huge(2000)
