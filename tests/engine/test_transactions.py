"""Exactly-once database steps (``@perdure.transaction``) and ``perdure.idempotency_key()``.

Each test runs on the backend the ``db_url`` fixture gives (SQLite, or PostgreSQL). The
application's table lives in the same database as the journal; it is created by a
transaction step, and read back through the store's own connection.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import perdure
from conftest import wait_until
from perdure import RetryPolicy

FAST = RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=0)
calls: dict[str, int] = {}
keys_seen: list[str] = []


def table_rows(engine: perdure.Engine, sql: str) -> list[tuple[Any, ...]]:
    """Rows read through the engine's store connection (the database the steps write)."""
    store: Any = engine.store
    return [tuple(r) for r in store._run(lambda conn: conn.execute(sql).fetchall())]


@perdure.transaction
def create_ledger() -> None:
    perdure.connection().execute(
        "CREATE TABLE IF NOT EXISTS ledger (entry TEXT PRIMARY KEY, amount INTEGER NOT NULL)"
    )


def _param(conn: Any) -> str:
    return "?" if type(conn).__module__.startswith("sqlite3") else "%s"


@perdure.transaction
def book(entry: str, amount: int) -> int:
    """Write one ledger row; the first call of a 'flaky' entry fails after writing."""
    conn = perdure.connection()
    mark = _param(conn)
    conn.execute(f"INSERT INTO ledger VALUES ({mark}, {mark})", (entry, amount))
    calls[entry] = calls.get(entry, 0) + 1
    if entry.startswith("flaky") and calls[entry] == 1:
        raise perdure.TransientError("failing after the write: it must roll back")
    return amount


@perdure.workflow
def bookkeeping(entries: list[str]) -> int:
    create_ledger()
    total = 0
    for i, entry in enumerate(entries):
        total += book.options(retry=FAST)(entry, i + 1)
    return total


def test_writes_and_journal_commit_together(engine: perdure.Engine) -> None:
    assert engine.run(bookkeeping, ["a", "b", "c"], timeout=20) == 6
    assert sorted(table_rows(engine, "SELECT entry, amount FROM ledger")) == [
        ("a", 1), ("b", 2), ("c", 3),
    ]  # fmt: skip
    steps = engine.list_steps(engine.list_workflows()[0].id)
    assert [s.name for s in steps] == ["create_ledger", "book", "book", "book"]


def test_a_failed_attempt_rolls_its_writes_back(engine: perdure.Engine) -> None:
    calls.clear()
    assert engine.run(bookkeeping, ["x", "flaky-y"], timeout=20) == 3
    # the first attempt inserted flaky-y and raised: had it not rolled back, the retry's
    # INSERT would hit the primary key and fail for good
    assert calls["flaky-y"] == 2
    assert table_rows(engine, "SELECT entry FROM ledger WHERE entry = 'flaky-y'") == [("flaky-y",)]
    wf = engine.list_workflows()[0].id
    assert [s.attempts for s in engine.list_steps(wf) if s.name == "book"] == [1, 2]


def test_replay_does_not_run_the_body_again(engine: perdure.Engine) -> None:
    calls.clear()
    handle = engine.start(bookkeeping, ["r1", "r2"], id="replayed")
    assert handle.result(timeout=20) == 3
    # Make the finished workflow resumable by hand: resuming replays its whole journal.
    store: Any = engine.store
    store._run(
        lambda conn: conn.execute("UPDATE workflows SET status = 'ERROR' WHERE id = 'replayed'")
    )
    assert engine.resume("replayed").result(timeout=20) == 3
    assert calls == {"r1": 1, "r2": 1}
    assert len(table_rows(engine, "SELECT entry FROM ledger")) == 2


reached = threading.Event()
resume = threading.Event()


@perdure.workflow
def fenced() -> int:
    create_ledger()
    reached.set()
    resume.wait(10)  # meanwhile the test takes the workflow away, as a new owner would
    return book("fenced", 7)


def test_a_run_that_lost_its_lease_writes_nothing(engine: perdure.Engine) -> None:
    calls.clear()
    reached.clear()  # set by the run on the other backend
    resume.clear()
    engine.start(fenced, id="fenced")
    assert reached.wait(10)
    store: Any = engine.store
    store._run(
        lambda conn: conn.execute("UPDATE workflows SET epoch = epoch + 1 WHERE id = 'fenced'")
    )
    resume.set()
    wait_until(lambda: engine.store.get_workflow("fenced") is not None and fenced_stopped(engine))
    assert calls.get("fenced") is None  # the body never ran: the fence is checked first
    assert table_rows(engine, "SELECT entry FROM ledger WHERE entry = 'fenced'") == []
    assert [s.name for s in engine.list_steps("fenced")] == ["create_ledger"]


def fenced_stopped(engine: perdure.Engine) -> bool:
    """The run has stopped: the engine no longer runs it locally."""
    return engine._local_run("fenced") is None


@perdure.transaction
def commits_itself() -> None:
    conn = perdure.connection()
    conn.execute("INSERT INTO ledger VALUES ('rogue', 1)")
    conn.commit()


@perdure.workflow
def rogue() -> None:
    create_ledger()
    commits_itself()


def test_a_body_that_commits_itself_fails_the_step(engine: perdure.Engine) -> None:
    with pytest.raises(Exception, match=r"(?i)commit"):
        engine.run(rogue, timeout=20)


@perdure.step
def charge(amount: int) -> str:
    keys_seen.append(perdure.idempotency_key())
    if len(keys_seen) < 3:
        raise perdure.TransientError("payment API timed out")
    return f"charged {amount}"


@perdure.workflow
def pay() -> list[str]:
    first = charge.options(retry=RetryPolicy(max_attempts=5, initial_interval=0.01))(5)
    return [first]


def test_idempotency_key_is_stable_across_retries(engine: perdure.Engine) -> None:
    keys_seen.clear()
    assert engine.run(pay, id="payment-1", timeout=20) == ["charged 5"]
    assert keys_seen == ["payment-1:0"] * 3


def test_idempotency_key_and_connection_need_a_running_step() -> None:
    with pytest.raises(perdure.ConfigurationError, match="outside a step"):
        perdure.idempotency_key()
    with pytest.raises(perdure.ConfigurationError, match=r"outside a @perdure\.transaction"):
        perdure.connection()


def test_transaction_steps_are_plain_defs_without_timeouts() -> None:
    with pytest.raises(perdure.ConfigurationError, match="plain def"):

        @perdure.transaction
        async def nope() -> None: ...

    with pytest.raises(perdure.ConfigurationError, match="timeout"):
        book.options(timeout=1.0)
