"""The store conformance suite: what every backend behind the ``Store`` protocol must do.

One parametrised fixture yields a fresh, migrated store per backend; the PostgreSQL backend
joins the list when it exists. Tests speak only the protocol's domain terms.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import perdure
from perdure.store import (
    Lease,
    OwnershipLost,
    StepRow,
    StepStatus,
    Store,
    WorkerRow,
    WorkflowRow,
    WorkflowStatus,
    open_store,
)

BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'conformance.db'}")
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


# -- SQLite specifics ----------------------------------------------------------------------


def test_sqlite_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    open_store(url).close()
    open_store(url).close()  # a second open applies nothing twice
    conn = sqlite3.connect(tmp_path / "m.db")
    versions = conn.execute("SELECT version, name FROM perdure_schema").fetchall()
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert versions == [(1, "0001_initial.sql"), (2, "0002_failures.sql"), (3, "0003_waiting.sql")]
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
