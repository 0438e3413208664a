"""The engine end to end on PostgreSQL, each test on a fresh schema: replay after a restart,
retries on a fake clock, a message round trip, cancellation of a waiting workflow, and two
engines sharing one database. (The whole engine suite also runs on PostgreSQL with
``PERDURE_TEST_BACKEND=postgres``.)"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import perdure
from conftest import wait_until
from perdure.testing import FakeClock

calls: Counter[str] = Counter()
gate = threading.Event()


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    calls.clear()
    gate.clear()
    yield
    gate.set()


@perdure.step
def pg_charge(amount: int) -> str:
    calls["charge"] += 1
    return f"charged {amount}"


@perdure.step
def pg_block() -> str:
    calls["block"] += 1
    gate.wait(60)  # a step still running when its engine stops
    return "unblocked"


@perdure.workflow(name="pg_replay_flow")
def replay_flow(amount: int) -> dict[str, Any]:
    receipt = pg_charge(amount)
    token = perdure.uuid4()
    last = pg_block()
    return {"receipt": receipt, "token": token, "last": last}


def test_steps_replay_after_the_engine_is_closed_and_reopened(pg_url: str) -> None:
    with perdure.Engine(pg_url, shutdown_grace=0.1) as first:
        first.start(replay_flow, 5, id="r1")
        wait_until(lambda: calls["block"] == 1)
        token = {s.name: s.output for s in first.list_steps("r1")}["perdure.uuid4"]
    gate.set()
    with perdure.Engine(pg_url) as second:
        result = second.handle("r1").result(timeout=10)
        steps = second.list_steps("r1")
        info = second.handle("r1").status()
    assert calls == Counter(charge=1, block=2)  # the step before the restart replayed
    assert result == {"receipt": "charged 5", "token": token, "last": "unblocked"}
    assert [s.name for s in steps] == ["pg_charge", "perdure.uuid4", "pg_block"]
    assert info is perdure.WorkflowStatus.SUCCESS


FAST = perdure.RetryPolicy(
    max_attempts=4, initial_interval=10, backoff=2, jitter=0, max_elapsed=None
)


@perdure.step(retry=FAST)
def pg_flaky(fail_times: int) -> str:
    calls["flaky"] += 1
    if calls["flaky"] <= fail_times:
        raise perdure.TransientError(f"flake {calls['flaky']}")
    return f"ok after {calls['flaky']}"


@perdure.workflow(name="pg_retry_flow")
def retry_flow(fail_times: int) -> str:
    return pg_flaky(fail_times)


def test_transient_failures_are_retried_on_a_fake_clock(pg_url: str) -> None:
    clock = FakeClock()
    with perdure.Engine(pg_url, clock=clock, shutdown_grace=0.3) as engine:
        handle = engine.start(retry_flow, 2)
        assert handle.result(timeout=10) == "ok after 3"
        [step] = engine.list_steps(handle.id)
    assert calls["flaky"] == 3
    assert clock.sleeps == [10.0, 20.0]
    assert (step.status, step.attempts) == (perdure.StepStatus.SUCCESS, 3)


@perdure.workflow(name="pg_receiver")
def receiver(count: int) -> list[Any]:
    return [perdure.receive("inbox") for _ in range(count)]


def test_messages_round_trip_through_a_waiting_workflow(pg_url: str) -> None:
    with perdure.Engine(pg_url, clock=FakeClock(), shutdown_grace=0.3) as engine:
        handle = engine.start(receiver, 3)
        wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
        assert engine.send(handle.id, "inbox", "first")
        assert engine.send(handle.id, "inbox", "second", idempotency_key="k")
        assert not engine.send(handle.id, "inbox", "second again", idempotency_key="k")
        assert engine.send(handle.id, "inbox", {"third": [1, 2]})
        assert handle.result(timeout=10) == ["first", "second", {"third": [1, 2]}]


@perdure.step
def pg_mark(label: str) -> str:
    calls[label] += 1
    return label


@perdure.step
def pg_undo(label: str) -> None:
    calls[f"undo {label}"] += 1


@perdure.workflow(name="pg_cancellable")
def cancellable() -> str:
    perdure.compensate(pg_undo, pg_mark("booked"))
    perdure.receive("never")
    return "unreachable"


def test_cancelling_a_waiting_workflow_runs_its_compensation(pg_url: str) -> None:
    with perdure.Engine(pg_url, clock=FakeClock(), shutdown_grace=0.3) as engine:
        handle = engine.start(cancellable)
        wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
        engine.cancel(handle.id)
        with pytest.raises(perdure.WorkflowCancelledError):
            handle.result(timeout=10)
        assert handle.status() is perdure.WorkflowStatus.CANCELLED
    assert calls == Counter({"booked": 1, "undo booked": 1})


@perdure.workflow(name="pg_shared_flow")
def shared_flow(n: int) -> int:
    pg_mark(f"s{n}")
    return n * 2


def test_two_engines_share_one_database(pg_url: str) -> None:
    with (
        perdure.Engine(pg_url, shutdown_grace=0.3) as a,
        perdure.Engine(pg_url, shutdown_grace=0.3) as b,
    ):
        handles = [(a if i % 2 else b).start(shared_flow, i) for i in range(20)]
        assert [h.result(timeout=20) for h in handles] == [i * 2 for i in range(20)]
        assert a.handle(handles[0].id).result(timeout=5) == 0  # visible from either engine
    assert all(calls[f"s{i}"] == 1 for i in range(20))


# -- transient database failures ------------------------------------------------------------


def _cut_connections(application_name: str) -> int:
    """Terminate every server process serving connections of that application name (a real
    connection cut, as a failover or a proxy restart does); returns how many were cut."""
    import psycopg

    from conftest import POSTGRES_URL

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        ).fetchall()
    return len(rows)


@perdure.step
def pg_slow_step(i: int) -> int:
    calls[f"slow-{i}"] += 1
    if i == 10:
        gate.wait(10)  # the test cuts the connections while this step runs
    return i


@perdure.workflow(name="pg_cut_flow")
def cut_flow(n: int) -> int:
    return sum(pg_slow_step(i) for i in range(n))


def test_cut_connections_are_retried_and_never_journaled_as_failures(pg_url: str) -> None:
    name = f"perdure-cut-{pg_url[-16:]}"  # only this test's connections are cut
    with perdure.Engine(f"{pg_url}&application_name={name}", shutdown_grace=0.5) as engine:
        handle = engine.start(cut_flow, 20, id="cut")
        wait_until(lambda: calls["slow-10"] == 1)
        assert _cut_connections(name) >= 1
        gate.set()
        assert handle.result(timeout=30) == sum(range(20))
        steps = engine.list_steps("cut")
        assert len(steps) == 20
        assert all(s.attempts == 1 and s.status == "SUCCESS" for s in steps)
        assert engine.list_attempts("cut") == []
        assert all(calls[f"slow-{i}"] == 1 for i in range(20))  # nothing re-ran


@perdure.transaction(name="pg_cut_book")
def pg_cut_book(i: int) -> int:
    conn = perdure.connection()
    calls[f"book-{i}"] += 1
    conn.execute("SELECT 1")
    if i == 1 and calls["book-1"] == 1:
        # Cut this body's own connection after its work: the journal insert and the commit
        # that follow fail, and the store runs the whole transaction again.
        [(pid,)] = conn.execute("SELECT pg_backend_pid()").fetchall()
        import psycopg

        from conftest import POSTGRES_URL

        with psycopg.connect(POSTGRES_URL, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
    return i


@perdure.workflow(name="pg_cut_book_flow")
def cut_book_flow(n: int) -> int:
    return sum(pg_cut_book(i) for i in range(n))


def test_a_transaction_body_cut_off_runs_again_and_keeps_its_journal_position(
    pg_url: str,
) -> None:
    with perdure.Engine(pg_url, shutdown_grace=0.5) as engine:
        assert engine.start(cut_book_flow, 4, id="cut-book").result(timeout=30) == 6
        steps = engine.list_steps("cut-book")
    assert calls["book-1"] == 2  # the cut body ran again, in a new transaction
    assert [(s.position, s.key, s.attempts) for s in steps] == [
        (p, str(p), 1)
        for p in range(4)  # no gap where the first try built its entry
    ]


def test_a_failing_database_call_that_is_not_transient_is_not_retried(pg_url: str) -> None:
    from perdure.store.postgres import PostgresStore

    store = PostgresStore(pg_url, outage_timeout=30)
    try:
        store.migrate()
        started = __import__("time").monotonic()
        with pytest.raises(perdure.StoreError, match="syntax"):
            store._fetchall("SELEC 1")
        assert __import__("time").monotonic() - started < 5
    finally:
        store.close()


def test_an_outage_longer_than_the_budget_is_reported(pg_url: str) -> None:
    from perdure.store.postgres import PostgresStore

    store = PostgresStore(pg_url, outage_timeout=0.5)
    try:
        store.migrate()
        store._pool.close()  # every later borrow fails like an unreachable server
        with pytest.raises(perdure.StoreUnavailableError, match=r"unavailable|closed"):
            store.get_workflow("x")
    finally:
        store.close()


# -- LISTEN/NOTIFY wake-ups -----------------------------------------------------------------


@perdure.workflow(name="pg_notified_flow")
def notified_flow() -> str:
    return str(perdure.receive("go"))


def test_a_message_from_another_engine_wakes_an_idle_worker_at_once(pg_url: str) -> None:
    """The worker polls only every 30 s: the message must reach it by NOTIFY."""
    import time

    with (
        perdure.Engine(pg_url, poll_interval=30, suspend_after=0.05, shutdown_grace=0.5) as worker,
        perdure.Engine(pg_url, recover=False) as client,
    ):
        handle = worker.start(notified_flow, id="notified")
        wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
        time.sleep(0.2)  # the waker is now in its 30 s wait
        sent = time.monotonic()
        client.send("notified", "go", "hello")
        assert handle.result(timeout=5) == "hello"
        assert time.monotonic() - sent < 1.0


@perdure.workflow(name="pg_notified_queued")
def notified_queued(x: int) -> int:
    return x * 2


NOTIFIED_QUEUE = perdure.Queue("pg-notified")


def test_an_enqueued_workflow_reaches_an_idle_worker_at_once(pg_url: str) -> None:
    import time

    with (
        perdure.Engine(pg_url, poll_interval=30, shutdown_grace=0.5),
        perdure.Engine(pg_url, recover=False) as client,
    ):
        time.sleep(0.3)  # the worker's waker is idle in its 30 s wait
        sent = time.monotonic()
        assert client.enqueue(NOTIFIED_QUEUE, notified_queued, 21).result(timeout=5) == 42
        assert time.monotonic() - sent < 1.0


def test_url_parameters_set_the_pool_and_the_outage_budget(pg_url: str) -> None:
    from perdure.store.postgres import PostgresStore

    store = PostgresStore(f"{pg_url}&pool_size=3&outage_timeout=7.5")
    try:
        assert store.outage_timeout == 7.5
        assert store._pool.max_size == 3
        assert "pool_size" not in store._conninfo and "outage" not in store._conninfo
    finally:
        store.close()
    with pytest.raises(perdure.ConfigurationError, match="pool_size"):
        PostgresStore(f"{pg_url}&pool_size=zero")


def test_the_default_clock_follows_the_database_server(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timers are set by one worker and fired by another: on a machine whose clock is an hour
    behind, the engine's clock still agrees with the server's (and so with other workers')."""
    import time

    real = time.time
    with perdure.Engine(pg_url) as engine:
        assert abs(engine.clock.time() - real()) < 0.5  # this machine and the server agree
    monkeypatch.setattr(time, "time", lambda: real() - 3600.0)
    with perdure.Engine(pg_url) as skewed:
        assert abs(skewed.clock.time() - real()) < 0.5
        assert abs(skewed.clock.time() - time.time() - 3600.0) < 0.5


@perdure.workflow(name="pg_many_steps")
def pg_many_steps(n: int) -> list[str]:
    return [pg_charge(i) for i in range(n)]


def test_journal_writes_reuse_one_cursor_per_connection(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's pooled connections keep one cursor for statements read at once
    (``store._pg_base.run``): psycopg's ``Connection.execute`` would build a new cursor per
    statement, a measured 18 µs of CPU on every journal write. Counted on the connection
    that writes the journal (other threads' statements, heartbeats say, are not counted): a
    40-step workflow opens at most one cursor there, and its journal is intact."""
    from perdure.store._pg_base import KeptCursorConnection

    opened: Counter[int] = Counter()
    cursor = KeptCursorConnection.cursor

    def counting(self: KeptCursorConnection, *args: Any, **kwargs: Any) -> Any:
        opened[id(self)] += 1
        return cursor(self, *args, **kwargs)

    with perdure.Engine(pg_url) as engine:
        engine.run(pg_many_steps, 2)  # the journal connection is taken by now
        monkeypatch.setattr(KeptCursorConnection, "cursor", counting)
        result = engine.run(pg_many_steps, 40, id="forty")
        monkeypatch.setattr(KeptCursorConnection, "cursor", cursor)
        journal = engine.store._journal  # type: ignore[attr-defined]
        assert journal is not None, "no connection was kept for journal writes"
        steps = engine.list_steps("forty")
    assert result == [f"charged {i}" for i in range(40)]
    assert [s.output for s in steps] == result
    assert opened[id(journal)] <= 1, f"{opened[id(journal)]} cursors for 40 journal writes"
