"""The store conformance suite: what every backend behind the ``Store`` protocol must do.

One parametrised fixture yields a fresh, migrated store per backend: a SQLite file, and a fresh
PostgreSQL schema (skipped when PostgreSQL is unreachable, failed in CI). Tests speak only the
protocol's domain terms.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import perdure
from conftest import wait_until
from perdure.store import (
    ApprovalRow,
    AttemptRow,
    Lease,
    OwnershipLost,
    StepRow,
    StepStatus,
    Store,
    WorkerRow,
    WorkflowRow,
    WorkflowStatus,
    approval_topic,
    open_store,
)

# each backend also with encryption at rest: the codec must be invisible behind the protocol
BACKENDS = ["sqlite", "postgres", "sqlite+encryption", "postgres+encryption"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param.startswith("postgres"):
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'conformance.db'}"
    encrypted = request.param.endswith("+encryption")
    s = open_store(url, encryption=perdure.Encryption({"k1": bytes(32)}) if encrypted else None)
    yield s
    s.close()


def new_row(workflow_id: str, owner: str | None = "w1", name: str = "flow") -> WorkflowRow:
    now = time.time()
    status = WorkflowStatus.RUNNING if owner else WorkflowStatus.PENDING
    return WorkflowRow(workflow_id, name, status, '{"args":[],"kwargs":{}}', None, None,
                       owner, now, now)  # fmt: skip


def step(workflow_id: str, position: int, name: str = "s") -> StepRow:
    now = time.time()
    return StepRow(workflow_id, position, str(position), name, StepStatus.SUCCESS,
                   str(position), None, now, now)  # fmt: skip


def worker(worker_id: str, pid: int | None = None) -> WorkerRow:
    return WorkerRow(worker_id, "host-a", pid or os.getpid())


def lease(owner: str, epoch: int = 1) -> Lease:
    return Lease(owner, epoch)


def test_create_is_idempotent_and_returns_the_stored_row(store: Store) -> None:
    row = new_row("a")
    assert store.create_workflow(row) == (row, True)
    other = new_row("a", owner="w2", name="other")
    stored, created = store.create_workflow(other)
    assert not created
    assert stored == row
    assert store.get_workflow("a") == row
    assert store.get_workflow("missing") is None


def test_steps_are_fenced_on_ownership_and_positions_are_unique(store: Store) -> None:
    store.create_workflow(new_row("a", owner="w1"))
    store.append_step(step("a", 0), lease("w1"))
    with pytest.raises(OwnershipLost):
        store.append_step(step("a", 1), lease("w2"))
    with pytest.raises(OwnershipLost):
        store.append_step(step("a", 1), lease("w1", epoch=2))
    with pytest.raises(OwnershipLost):
        store.append_step(step("a", 0, "again"), lease("w1"))
    with pytest.raises(OwnershipLost):
        store.append_step(step("nope", 0), lease("w1"))
    assert [(r.position, r.name) for r in store.load_steps("a")] == [(0, "s")]


def test_rows_round_trip_with_every_pattern_of_nulls(store: Store) -> None:
    """Optional columns hold None or a value in any combination (SQLite writes None as a
    NULL literal in the statement; each pattern is its own statement), and the fence still
    holds for each pattern."""
    import itertools

    now = time.time()
    full = WorkflowRow(
        "full", "flow", WorkflowStatus.RUNNING, "{}", "out", "err", "w1", now, now,
        deadline_at=now + 60, wake_at=now + 30, wait_topic="t", queue="q", priority=3,
        version="v1", forked_from="orig", forked_at=2,
    )  # fmt: skip
    assert store.create_workflow(full) == (full, True)
    assert store.get_workflow("full") == full
    bare = new_row("bare")
    assert store.create_workflow(bare) == (bare, True)
    assert store.get_workflow("bare") == bare
    patterns = list(itertools.product([None, "x"], repeat=3))
    for position, (output, error, fingerprint) in enumerate(patterns):
        status = StepStatus.SUCCESS if error is None else StepStatus.ERROR
        row = StepRow("bare", position, str(position), "s", status, output, error, now, now,
                      attempts=position + 1, fingerprint=fingerprint)  # fmt: skip
        with pytest.raises(OwnershipLost):
            store.append_step(row, lease("w2"))
        store.append_step(row, lease("w1"))
        assert store.load_steps("bare")[-1] == row
    assert len(store.load_steps("bare")) == len(patterns)
    store.finish_workflow("bare", lease("w1"), WorkflowStatus.ERROR, None, "boom")
    finished = store.get_workflow("bare")
    assert finished is not None
    assert (finished.status, finished.output, finished.error) == (
        WorkflowStatus.ERROR, None, "boom",
    )  # fmt: skip


def test_finish_is_fenced_and_drops_ownership(store: Store) -> None:
    store.create_workflow(new_row("a", owner="w1"))
    with pytest.raises(OwnershipLost):
        store.finish_workflow("a", lease("w2"), WorkflowStatus.SUCCESS, "1", None)
    store.finish_workflow("a", lease("w1"), WorkflowStatus.SUCCESS, "1", None)
    done = store.get_workflow("a")
    assert done is not None
    assert (done.status, done.output, done.owner) == (WorkflowStatus.SUCCESS, "1", None)
    with pytest.raises(OwnershipLost):  # finished: nobody owns it any more
        store.append_step(step("a", 0), lease("w1"))


def test_claim_takes_only_orphans_of_known_names(store: Store) -> None:
    store.heartbeat(worker("live"), 60)
    store.heartbeat(worker("dead"), 60)
    store.create_workflow(new_row("live-wf", owner="live"))
    store.create_workflow(new_row("dead-wf", owner="dead"))
    store.create_workflow(new_row("ghost-wf", owner="dead", name="ghost"))
    store.create_workflow(new_row("free-wf", owner=None))
    store.create_workflow(new_row("vanished-wf", owner="never-heartbeat"))
    store.create_workflow(new_row("mine", owner="me"))
    claimed = store.claim("me", ["flow"], dead_workers=["dead"], limit=100)
    assert sorted(r.id for r in claimed) == ["dead-wf", "free-wf", "vanished-wf"]
    assert all(r.owner == "me" and r.epoch == 2 for r in claimed)
    # taken from a worker: a recovery; released (no owner): not one
    assert {r.id: r.recoveries for r in claimed} == {"dead-wf": 1, "free-wf": 0, "vanished-wf": 1}
    assert all(r.status is WorkflowStatus.RUNNING for r in claimed)
    assert store.orphaned_names("me", ["dead"]) == {"ghost": 1}
    again = store.claim("me", ["flow"], dead_workers=["dead"], limit=100)
    assert again == []


def test_claim_can_target_one_workflow(store: Store) -> None:
    store.create_workflow(new_row("one", owner=None))
    store.create_workflow(new_row("two", owner=None))
    claimed = store.claim("me", ["flow"], [], 10, workflow_id="two")
    assert [r.id for r in claimed] == ["two"]


def test_a_claim_fences_off_the_previous_lease_even_of_the_same_worker(store: Store) -> None:
    store.create_workflow(new_row("a", owner=None))
    [first] = store.claim("w1", ["flow"], [], 10)
    assert first.lease is not None
    assert store.release_workflow("a", first.lease)
    assert not store.release_workflow("a", first.lease)  # already released
    [second] = store.claim("w1", ["flow"], [], 10)
    assert second.lease is not None and second.lease != first.lease
    with pytest.raises(OwnershipLost):  # the run holding the first lease is fenced off
        store.append_step(step("a", 0), first.lease)
    with pytest.raises(OwnershipLost):
        store.finish_workflow("a", first.lease, WorkflowStatus.SUCCESS, "1", None)
    store.append_step(step("a", 0), second.lease)


def test_claim_takes_workflows_of_silent_workers_after_their_lease(store: Store) -> None:
    store.heartbeat(worker("quiet"), 0.2)
    store.create_workflow(new_row("q", owner="quiet"))
    assert store.claim("me", ["flow"], dead_workers=[], limit=10) == []
    time.sleep(0.3)  # past the quiet worker's own lease
    claimed = store.claim("me", ["flow"], dead_workers=[], limit=10)
    assert [r.id for r in claimed] == ["q"]


def test_finished_workflows_are_never_claimed(store: Store) -> None:
    store.create_workflow(new_row("f", owner="gone"))
    store.finish_workflow("f", lease("gone"), WorkflowStatus.ERROR, None, '{"type":"x:Y"}')
    assert store.claim("me", ["flow"], ["gone"], 10) == []


def test_release_returns_work_to_pending_and_forgets_the_worker(store: Store) -> None:
    store.heartbeat(worker("w1"), 60)
    store.create_workflow(new_row("a", owner="w1"))
    store.create_workflow(new_row("b", owner="w1"))
    store.finish_workflow("b", lease("w1"), WorkflowStatus.SUCCESS, "1", None)
    assert store.release("w1") == 1
    released = store.get_workflow("a")
    assert released is not None
    assert (released.status, released.owner) == (WorkflowStatus.PENDING, None)
    assert [w.id for w in store.list_workers()] == []


def test_forget_workers_keeps_those_that_still_own_work(store: Store) -> None:
    store.heartbeat(worker("busy"), 60)
    store.heartbeat(worker("idle"), 60)
    store.create_workflow(new_row("a", owner="busy"))
    store.forget_workers(["busy", "idle"])
    assert [w.id for w in store.list_workers()] == ["busy"]


def test_list_workflows_filters_and_orders_newest_first(store: Store) -> None:
    for i in range(5):
        store.create_workflow(new_row(f"w{i}", owner=None, name="even" if i % 2 == 0 else "odd"))
        time.sleep(0.002)
    assert [r.id for r in store.list_workflows(None, None, 3)] == ["w4", "w3", "w2"]
    assert [r.id for r in store.list_workflows(None, "odd", 10)] == ["w3", "w1"]
    pending = store.list_workflows(WorkflowStatus.PENDING, None, 10)
    assert len(pending) == 5
    assert store.list_workflows(WorkflowStatus.SUCCESS, None, 10) == []


def test_heartbeat_is_an_upsert(store: Store) -> None:
    store.heartbeat(worker("w"), 60)
    first = store.list_workers()[0].heartbeat_at
    time.sleep(0.01)
    store.heartbeat(worker("w"), 60)
    workers = store.list_workers()
    assert len(workers) == 1
    assert workers[0].heartbeat_at > first


def test_closed_store_refuses_calls_clearly(store: Store) -> None:
    store.close()
    with pytest.raises(perdure.StoreUnavailableError, match="closed"):
        store.get_workflow("a")


def test_attempts_are_fenced_and_listed(store: Store) -> None:
    store.create_workflow(new_row("a", owner="w1"))
    now = time.time()
    first = AttemptRow("a", "0", 1, "s", '{"type":"x:Y"}', now, now + 1, now + 2)
    store.append_attempt(first, lease("w1"))
    with pytest.raises(OwnershipLost):
        store.append_attempt(AttemptRow("a", "0", 2, "s", "{}", now, now, now), lease("w2"))
    with pytest.raises(OwnershipLost):  # already recorded
        store.append_attempt(first, lease("w1"))
    second = AttemptRow("a", "0", 2, "s", "{}", now + 3, now + 4, now + 5)
    store.append_attempt(second, lease("w1"))
    assert store.load_attempts("a") == [first, second]
    entry = step("a", 0)
    store.append_step(entry, lease("w1"))
    # what a resumption reads: the journal and the attempts together (one round trip on
    # PostgreSQL), the same rows as read apart
    assert (
        store.load_run("a")
        == ([entry], [first, second])
        == (
            store.load_steps("a"),
            store.load_attempts("a"),
        )
    )
    assert store.load_run("missing") == ([], [])


def test_claims_count_stalls_until_the_journal_grows(store: Store) -> None:
    store.create_workflow(new_row("a", owner="gone1"))
    [one] = store.claim("w1", ["flow"], ["gone1"], 10)
    assert (one.recoveries, one.stalls) == (1, 1)
    [two] = store.claim("w2", ["flow"], ["w1"], 10)  # no progress since the last claim
    assert (two.recoveries, two.stalls) == (2, 2)
    assert two.lease is not None
    store.append_step(step("a", 0), two.lease)
    [three] = store.claim("w3", ["flow"], ["w2"], 10)  # progress: the count restarts
    assert (three.recoveries, three.stalls, three.epoch) == (3, 1, 4)


def test_suspended_workflows_wake_on_timer_message_or_cancel(store: Store) -> None:
    for wf in ("timer", "msg", "cancel", "other"):
        store.create_workflow(new_row(wf, owner="w1"))
    store.suspend_workflow("timer", lease("w1"), 100.0, None)
    store.suspend_workflow("msg", lease("w1"), None, "t")
    store.suspend_workflow("cancel", lease("w1"), 500.0, None)
    store.suspend_workflow("other", lease("w1"), None, "t")
    with pytest.raises(OwnershipLost):
        store.suspend_workflow("timer", lease("w1"), 100.0, None)  # no owner any more
    waiting = store.get_workflow("timer")
    assert waiting is not None
    assert (waiting.status, waiting.owner, waiting.wake_at) == (WorkflowStatus.WAITING, None, 100)
    assert store.next_wake(["flow"]) == 100.0
    assert store.next_wake(["nothing"]) is None
    assert store.claim_ready("w2", ["flow"], now=50.0, limit=10) == []
    assert store.claim("w2", ["flow"], ["w1"], 10) == []  # waiting rows are not orphans
    assert store.send_message("msg", "t", '"hi"', "k1")
    assert not store.send_message("msg", "t", '"again"', "k1")  # same idempotency key
    assert store.send_message("other", "elsewhere", '"x"', None)  # not the awaited topic
    cancelled = store.request_cancel("cancel")
    assert cancelled is not None and cancelled.cancel_requested and cancelled.wake_at == 0
    assert store.request_cancel("missing") is None
    ready = store.claim_ready("w2", ["flow"], now=150.0, limit=10)
    assert sorted(r.id for r in ready) == ["cancel", "msg", "timer"]
    assert all(r.status is WorkflowStatus.RUNNING and r.owner == "w2" for r in ready)
    assert all(r.epoch == 2 and r.wake_at is None and r.wait_topic is None for r in ready)
    assert store.claim_ready("w3", ["flow"], now=150.0, limit=10) == []
    assert store.cancel_requests("w2") == ["cancel"]


def test_a_cancel_asked_before_the_suspension_still_wakes_the_workflow(store: Store) -> None:
    store.create_workflow(new_row("a", owner="w1"))
    store.request_cancel("a")  # while it runs: the owner has not seen it yet
    store.suspend_workflow("a", lease("w1"), 1000.0, "t")
    [ready] = store.claim_ready("w2", ["flow"], now=10.0, limit=10)
    assert (ready.id, ready.cancel_requested, ready.owner) == ("a", True, "w2")


def test_consume_message_journals_it_atomically_and_fenced(store: Store) -> None:
    store.create_workflow(new_row("a", owner="w1"))
    store.send_message("a", "t", '"first"', None)
    store.send_message("a", "t", '"second"', None)
    with pytest.raises(OwnershipLost):
        store.consume_message("a", "t", step("a", 0, "recv"), lease("w2"))
    assert store.consume_message("a", "t", step("a", 0, "recv"), lease("w1")) == '"first"'
    assert store.consume_message("a", "t", step("a", 1, "recv"), lease("w1")) == '"second"'
    assert store.consume_message("a", "t", step("a", 2, "recv"), lease("w1")) is None
    journal = store.load_steps("a")
    assert [(r.key, r.name, r.output) for r in journal] == [
        ("0", "recv", '"first"'),
        ("1", "recv", '"second"'),
    ]


def test_events_are_upserted(store: Store) -> None:
    assert store.get_event("a", "k") is None
    store.set_event("a", "k", "1")
    store.set_event("a", "k", "2")
    assert store.get_event("a", "k") == "2"


def test_approvals_are_decided_once_and_closed_with_the_workflow(store: Store) -> None:
    store.create_workflow(new_row("a", owner="w1"))
    now = time.time()
    store.request_approval(ApprovalRow("a", "ok", '{"x":1}', "PENDING", now))
    store.request_approval(ApprovalRow("a", "ok", '{"x":2}', "PENDING", now))  # a no-op
    store.request_approval(ApprovalRow("a", "later", "{}", "PENDING", now + 1))
    store.request_approval(ApprovalRow("a", "timer", "{}", "PENDING", now + 2))
    pending = store.list_approvals(pending_only=True, limit=10)
    assert [(r.name, r.details, r.workflow_name) for r in pending] == [
        ("ok", '{"x":1}', "flow"),
        ("later", "{}", "flow"),
        ("timer", "{}", "flow"),
    ]
    assert store.decide_approval("a", "ok", "APPROVED", "ann", "fine", '"yes"')
    assert not store.decide_approval("a", "ok", "REJECTED", "bob", None, '"no"')
    assert not store.decide_approval("a", "missing", "APPROVED", None, None, '"yes"')
    store.close_approval("a", "timer", "TIMED_OUT")
    topic = approval_topic("ok")
    assert store.consume_message("a", topic, step("a", 0, "ok"), lease("w1")) == '"yes"'
    with pytest.raises(OwnershipLost):  # a stale worker's finish changes nothing at all
        store.finish_workflow("a", lease("w2"), WorkflowStatus.SUCCESS, "1", None)
    assert [r.name for r in store.list_approvals(pending_only=True, limit=10)] == ["later"]
    store.finish_workflow("a", lease("w1"), WorkflowStatus.SUCCESS, "1", None)
    everything = {r.name: r for r in store.list_approvals(pending_only=False, limit=10)}
    assert {name: r.status for name, r in everything.items()} == {
        "ok": "APPROVED",
        "later": "CLOSED",
        "timer": "TIMED_OUT",
    }
    assert (everything["ok"].decided_by, everything["ok"].comment) == ("ann", "fine")
    assert everything["ok"].decided_at is not None


def test_reset_makes_a_failed_workflow_pending_again(store: Store) -> None:
    store.create_workflow(new_row("a", owner="w1"))
    assert not store.reset_workflow("a")  # still running
    store.request_cancel("a")
    store.finish_workflow("a", lease("w1"), WorkflowStatus.ERROR, None, '{"type":"x:Y"}')
    assert store.reset_workflow("a")
    row = store.get_workflow("a")
    assert row is not None
    assert (row.status, row.owner, row.error, row.cancel_requested, row.stalls) == (
        WorkflowStatus.PENDING, None, None, False, 0,
    )  # fmt: skip
    assert not store.reset_workflow("missing")


def test_concurrent_claims_never_take_the_same_workflow(store: Store) -> None:
    for i in range(40):
        store.create_workflow(new_row(f"c{i}", owner=None))
    for i in range(4):
        store.heartbeat(worker(f"w{i}"), 60)  # live: their claims are not orphans
    taken: list[list[str]] = []

    def claimer(worker_id: str) -> None:
        got: list[str] = []
        for _ in range(10):
            got += [r.id for r in store.claim(worker_id, ["flow"], [], 3)]
        taken.append(got)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [wf for got in taken for wf in got]
    assert sorted(everything) == sorted(f"c{i}" for i in range(40))


# -- SQLite specifics ----------------------------------------------------------------------


def test_sqlite_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    open_store(url).close()
    open_store(url).close()  # a second open applies nothing twice
    conn = sqlite3.connect(tmp_path / "m.db")
    versions = conn.execute("SELECT version, name FROM perdure_schema").fetchall()
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert versions == [
        (1, "0001_initial.sql"),
        (2, "0002_failures.sql"),
        (3, "0003_waiting.sql"),
        (4, "0004_queues.sql"),
        (5, "0005_blobs.sql"),
        (6, "0006_rate_limits.sql"),
        (7, "0007_versions.sql"),
    ]
    assert mode == "wal"


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    open_store(url).close()
    conn = sqlite3.connect(tmp_path / "m.db")
    conn.execute("INSERT INTO perdure_schema VALUES (999, '0999_future.sql', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(perdure.StoreError, match="newer than this perdure"):
        open_store(url)


def test_sqlite_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(perdure.StoreUnavailableError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}")
    with pytest.raises(perdure.ConfigurationError, match="three slashes"):
        open_store("sqlite://relative.db")
    with pytest.raises(perdure.ConfigurationError, match="not supported"):
        open_store("mongodb://localhost/x")


def test_sqlite_url_query_is_refused_not_taken_as_a_file_name(tmp_path: Path) -> None:
    # it used to create a file named "x.db?durability=normal", silently with durability full
    with pytest.raises(perdure.ConfigurationError, match="durability='normal'"):
        open_store(f"sqlite:///{tmp_path / 'x.db'}?durability=normal")
    assert list(tmp_path.iterdir()) == []
    store = open_store(f"sqlite:///{tmp_path / 'what%3F.db'}")  # a literal "?", encoded
    store.close()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".db"] == ["what?.db"]


def test_sqlite_corrupt_rows_raise_typed_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    s = open_store(url)
    s.create_workflow(new_row("a", owner="w1"))
    s.append_step(step("a", 0), lease("w1"))
    conn = sqlite3.connect(tmp_path / "c.db")
    conn.execute("UPDATE workflows SET status = 'BOGUS' WHERE id = 'a'")
    conn.execute("UPDATE steps SET started_at = 'yesterday' WHERE workflow_id = 'a'")
    conn.commit()
    conn.close()
    with pytest.raises(perdure.CorruptRecordError, match="workflow row 'a'"):
        s.get_workflow("a")
    with pytest.raises(perdure.CorruptRecordError, match="journal row '0' of workflow 'a'"):
        s.load_steps("a")
    s.close()


# -- PostgreSQL specifics ------------------------------------------------------------------


def _pg_exec(pg_url: str, query: str) -> list[tuple[object, ...]]:
    import psycopg

    from perdure.store.postgres import split_url

    conninfo, schema = split_url(pg_url)
    with psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}") as c:
        cur = c.execute(query.encode())
        return cur.fetchall() if cur.description else []


def test_postgres_migrations_are_recorded_once_even_when_racing(pg_url: str) -> None:
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            open_store(pg_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    open_store(pg_url).close()  # a later open applies nothing twice
    versions = _pg_exec(pg_url, "SELECT version, name FROM perdure_schema ORDER BY version")
    assert versions == [
        (1, "0001_initial.sql"),
        (2, "0002_failures.sql"),
        (3, "0003_waiting.sql"),
        (4, "0004_queues.sql"),
        (5, "0005_blobs.sql"),
        (6, "0006_rate_limits.sql"),
        (7, "0007_versions.sql"),
    ]


def test_postgres_creates_the_schema_it_is_given(pg_url: str) -> None:
    fresh = pg_url.replace("schema=perdure_test_", "schema=perdure_test_new_")
    try:
        s = open_store(fresh)
        s.create_workflow(new_row("a"))
        assert s.get_workflow("a") is not None
        s.close()
    finally:
        schema = fresh.rpartition("schema=")[2]
        _pg_exec(pg_url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_postgres_refuses_a_newer_schema(pg_url: str) -> None:
    open_store(pg_url).close()
    _pg_exec(pg_url, "INSERT INTO perdure_schema VALUES (999, '0999_future.sql', 0)")
    with pytest.raises(perdure.StoreError, match="newer than this perdure"):
        open_store(pg_url)


def test_postgres_corrupt_rows_raise_typed_errors(pg_url: str) -> None:
    s = open_store(pg_url)
    s.create_workflow(new_row("a", owner="w1"))
    s.append_step(step("a", 0), lease("w1"))
    _pg_exec(pg_url, "UPDATE workflows SET status = 'BOGUS' WHERE id = 'a'")
    _pg_exec(pg_url, "UPDATE steps SET status = 'MAYBE' WHERE workflow_id = 'a'")
    with pytest.raises(perdure.CorruptRecordError, match="workflow row 'a'"):
        s.get_workflow("a")
    with pytest.raises(perdure.CorruptRecordError, match="journal row '0' of workflow 'a'"):
        s.load_steps("a")
    s.close()


def test_postgres_configuration_errors_are_clear(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(perdure.ConfigurationError, match="schema name"):
        open_store(pg_url.rpartition("schema=")[0] + "schema=Bad-Name")
    with pytest.raises(perdure.StoreUnavailableError, match="cannot open PostgreSQL"):
        open_store("postgresql://postgres@127.0.0.1:1/test?connect_timeout=1")
    monkeypatch.setitem(sys.modules, "psycopg", None)
    for module in ("postgres", "_pg_waiting", "_pg_base"):
        monkeypatch.delitem(sys.modules, f"perdure.store.{module}", raising=False)
    with pytest.raises(perdure.ConfigurationError, match=r"perdure\[postgres\]"):
        open_store("postgres://postgres@127.0.0.1/test")


def test_postgres_a_fenced_off_writer_commits_nothing_while_a_claim_waits(pg_url: str) -> None:
    """A step append that checked the lease holds the row: a claim cannot slip in between."""
    s = open_store(pg_url)
    s.create_workflow(new_row("a", owner="old"))
    s.append_step(step("a", 0), lease("old"))
    [taken] = s.claim("new", ["flow"], ["old"], 10)
    assert taken.lease == Lease("new", 2)
    with pytest.raises(OwnershipLost):
        s.append_step(step("a", 1), lease("old"))
    with pytest.raises(OwnershipLost):
        s.finish_workflow("a", lease("old"), WorkflowStatus.SUCCESS, "1", None)
    s.append_step(step("a", 1), taken.lease)
    assert [r.key for r in s.load_steps("a")] == ["0", "1"]
    s.close()


def test_postgres_recovers_from_lost_connections(pg_url: str) -> None:
    s = open_store(pg_url + "&application_name=perdure_conn_test")
    s.create_workflow(new_row("a"))
    _pg_exec(
        pg_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'perdure_conn_test'",
    )
    for _ in range(3):  # a call on a dead connection fails cleanly; the pool replaces it
        try:
            found = s.get_workflow("a")
            break
        except perdure.StoreUnavailableError:
            continue
    assert found is not None and found.id == "a"
    s.close()


def test_postgres_no_step_of_a_fenced_off_writer_lands_after_a_takeover(pg_url: str) -> None:
    s = open_store(pg_url)
    s.create_workflow(new_row("a", owner="old"))  # "old" has no heartbeat: claimable
    appended: list[int] = []

    def old_writer() -> None:
        for position in range(10_000):
            try:
                s.append_step(step("a", position), lease("old"))
            except OwnershipLost:
                return
            appended.append(position)

    writer = threading.Thread(target=old_writer)
    writer.start()
    wait_until(lambda: len(appended) >= 20)
    claimed: list[WorkflowRow] = []
    while not claimed:  # SKIP LOCKED: retried while an append holds the row
        claimed = s.claim("new", ["flow"], [], 1)
    journal = s.load_steps("a")  # what the new owner replays
    writer.join()
    assert len(journal) == len(appended)  # nothing landed after the takeover
    new_lease = claimed[0].lease
    assert new_lease is not None
    s.append_step(step("a", len(journal)), new_lease)
    s.close()


def test_postgres_an_append_waits_for_a_claim_in_progress_and_is_fenced(pg_url: str) -> None:
    """Deterministic: a claim holds the row; the append checking the old lease must wait for it
    and then fail, not commit on the snapshot it started with."""
    import psycopg

    from perdure.store.postgres import split_url

    s = open_store(pg_url)
    s.create_workflow(new_row("a", owner="old"))
    conninfo, schema = split_url(pg_url)
    with psycopg.connect(conninfo, options=f"-c search_path={schema}") as claimer:
        claimer.execute("SELECT 1 FROM workflows WHERE id = 'a' FOR UPDATE")  # claim begins
        outcome: list[BaseException | None] = []

        def append() -> None:
            try:
                s.append_step(step("a", 0), lease("old"))
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        writer = threading.Thread(target=append)
        writer.start()
        time.sleep(0.3)
        assert outcome == []  # blocked behind the claim
        claimer.execute("UPDATE workflows SET owner = 'new', epoch = epoch + 1 WHERE id = 'a'")
        claimer.commit()
        writer.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], OwnershipLost)
    assert s.load_steps("a") == []
    s.close()
