"""Group commit: concurrent writers share transactions, and nobody returns before its entry is
durable (``perdure.store._group``), on a fake write and on both real stores."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import perdure
from perdure._errors import StoreUnavailableError
from perdure.store import (
    Lease,
    OwnershipLost,
    StepRow,
    StepStatus,
    Store,
    WorkflowRow,
    WorkflowStatus,
    open_store,
)
from perdure.store._group import GroupCommit, Outcome


class FakeWrite:
    """A write that takes ``delay`` seconds, records every batch and what became durable."""

    def __init__(self, delay: float = 0.0, bad: frozenset[int] = frozenset()) -> None:
        self.delay = delay
        self.bad = bad
        self.batches: list[list[int]] = []
        self.durable: set[int] = set()
        self.lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[Outcome]:
        with self.lock:
            self.batches.append(list(items))
        time.sleep(self.delay)
        if self.bad & set(items):
            raise ValueError(f"bad entry in {sorted(self.bad & set(items))}")
        with self.lock:
            self.durable.update(items)
        return [None] * len(items)


def test_a_lone_writer_commits_alone_with_no_wait() -> None:
    write = FakeWrite()
    group = GroupCommit(write)
    for i in range(10):
        assert group.submit([i]) == [None]
    assert write.batches == [[i] for i in range(10)]
    assert (group.batches, group.entries) == (10, 10)


def test_concurrent_writers_share_commits_and_return_only_once_durable() -> None:
    write = FakeWrite(delay=0.005)
    group = GroupCommit(write)
    returned_before_durable: list[int] = []

    def writer(i: int) -> None:
        for n in range(5):
            item = i * 100 + n
            assert group.submit([item]) == [None]
            with write.lock:
                if item not in write.durable:
                    returned_before_durable.append(item)

    with ThreadPoolExecutor(40) as pool:
        list(pool.map(writer, range(40)))

    assert returned_before_durable == []
    assert write.durable == {i * 100 + n for i in range(40) for n in range(5)}
    assert sum(len(b) for b in write.batches) == 200  # every entry written exactly once
    assert len(write.batches) < 200 / 4, f"{len(write.batches)} commits for 200 entries"


def test_a_bad_entry_fails_only_its_own_writer() -> None:
    write = FakeWrite(delay=0.002, bad=frozenset({13}))
    group = GroupCommit(write)
    outcomes: dict[int, Outcome] = {}
    barrier = threading.Barrier(20)

    def writer(i: int) -> None:
        barrier.wait()
        outcomes[i] = group.submit([i])[0]

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(writer, range(20)))

    assert isinstance(outcomes.pop(13), ValueError)
    assert all(outcome is None for outcome in outcomes.values())
    assert write.durable == set(range(20)) - {13}


def test_an_unavailable_database_fails_the_whole_batch_without_retrying_each() -> None:
    calls: list[list[int]] = []

    def write(items: list[int]) -> list[Outcome]:
        calls.append(items)
        raise StoreUnavailableError("the database is gone")

    outcomes = GroupCommit(write).submit([1, 2, 3])
    assert all(isinstance(o, StoreUnavailableError) for o in outcomes)
    assert calls == [[1, 2, 3]]


def test_many_writers_never_deadlock_on_the_leader_handoff() -> None:
    write = FakeWrite()
    group = GroupCommit(write, max_batch=7)
    with ThreadPoolExecutor(64) as pool:
        futures = [pool.submit(group.submit, [i, i + 10_000]) for i in range(3000)]
        results = [f.result(timeout=30) for f in futures]
    assert all(r == [None, None] for r in results)
    assert len(write.durable) == 6000
    assert max(len(b) for b in write.batches) <= 7


# -- the real stores ---------------------------------------------------------------------------


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = open_store(db_url)
    yield s
    s.close()


def _owned(store: Store, workflow_id: str) -> Lease:
    """A workflow row owned by worker w1 at epoch 1 (as a claim leaves it)."""
    now = time.time()
    inputs = '{"args":[],"kwargs":{}}'
    store.create_workflow(WorkflowRow(workflow_id, "flow", WorkflowStatus.RUNNING, inputs,
                                      None, None, "w1", now, now))  # fmt: skip
    return Lease("w1", 1)


def _step(workflow_id: str, position: int, key: str | None = None) -> StepRow:
    now = time.time()
    return StepRow(workflow_id, position, key or str(position), "s", StepStatus.SUCCESS,
                   str(position), None, now, now)  # fmt: skip


def _group(store: Store) -> GroupCommit[object]:
    group = getattr(store, "_group", None)
    assert isinstance(group, GroupCommit), "both stores commit journal entries in groups"
    return group


def test_concurrent_appends_to_a_real_store_share_transactions(store: Store) -> None:
    leases = {f"wf{i}": _owned(store, f"wf{i}") for i in range(24)}
    group = _group(store)
    before = (group.batches, group.entries)

    def writer(workflow_id: str) -> None:
        for position in range(15):
            store.append_step(_step(workflow_id, position), leases[workflow_id])

    with ThreadPoolExecutor(24) as pool:
        list(pool.map(writer, leases))

    for workflow_id in leases:
        assert [row.position for row in store.load_steps(workflow_id)] == list(range(15))
    batches, entries = group.batches - before[0], group.entries - before[1]
    assert entries == 24 * 15
    assert batches < entries, "no two concurrent entries ever shared a transaction"


def test_append_steps_fences_each_entry_on_its_own_lease(store: Store) -> None:
    good, other = _owned(store, "good"), _owned(store, "other")
    store.append_step(_step("other", 0), other)
    outcomes = store.append_steps([
        (_step("good", 0), good),
        (_step("good", 1), Lease("w2", 1)),  # not the owner
        (_step("other", 0), other),  # the key is taken
        (_step("good", 2), Lease("w1", 7)),  # a stale epoch
        (_step("good", 3, key="3"), good),
    ])  # fmt: skip
    assert outcomes[0] is None and outcomes[4] is None
    for lost in (outcomes[1], outcomes[2], outcomes[3]):
        assert isinstance(lost, OwnershipLost), lost
    assert [row.position for row in store.load_steps("good")] == [0, 3]
    assert [row.position for row in store.load_steps("other")] == [0]


# -- the engine ------------------------------------------------------------------------------


@perdure.step
def bump(x: int) -> int:
    return x + 1


@perdure.workflow
def count_sync(n: int) -> int:
    x = 0
    for _ in range(n):
        x = bump(x)
    return x


@perdure.step
async def bump_async(x: int) -> int:
    await asyncio.sleep(0)
    return x + 1


@perdure.workflow
async def count_async(n: int) -> int:
    x = 0
    for _ in range(n):
        x = await bump_async(x)
    return x


@pytest.mark.parametrize("flow", [count_sync, count_async], ids=["sync", "async"])
def test_concurrent_workflows_group_their_steps(db_url: str, flow: object) -> None:
    with perdure.Engine(db_url, max_threads=32, shutdown_grace=0.5) as engine:
        group = _group(engine.store)
        before = (group.batches, group.entries)
        handles = [engine.start(flow, 12) for _ in range(30)]  # type: ignore[call-overload]
        assert [h.result(timeout=60) for h in handles] == [12] * 30
        batches, entries = group.batches - before[0], group.entries - before[1]
        for handle in handles:
            assert [r.position for r in engine.store.load_steps(handle.id)] == list(range(12))
    # SQLite also groups the workflows' rows and outcomes with the journal entries
    assert entries == 30 * 12 + (60 if db_url.startswith("sqlite") else 0)
    assert batches < entries * 0.8, f"{batches} transactions for {entries} writes"


def test_async_engine_groups_concurrent_workflows(tmp_path: Path) -> None:
    async def main() -> tuple[list[int], int, int]:
        async with perdure.AsyncEngine(f"sqlite:///{tmp_path / 'a.db'}") as engine:
            group = _group(engine._engine.store)  # the engine AsyncEngine drives
            before = (group.batches, group.entries)
            results = await asyncio.gather(*(engine.run(count_async, 10) for _ in range(20)))
            return list(results), group.batches - before[0], group.entries - before[1]

    results, batches, entries = asyncio.run(main())
    assert results == [10] * 20
    assert entries == 200 + 40  # the steps, and 20 workflow rows and outcomes
    assert batches < entries * 0.8, f"{batches} transactions for {entries} steps"


def test_concurrent_creates_and_finishes_keep_their_own_outcomes(store: Store) -> None:
    now = time.time()
    inputs = '{"args":[],"kwargs":{}}'
    barrier = threading.Barrier(16)

    def create(i: int) -> bool:  # sixteen workers start the same id at once
        row = WorkflowRow("same", "flow", WorkflowStatus.RUNNING, inputs, None, None, f"w{i}",
                          now, now)  # fmt: skip
        barrier.wait()
        return store.create_workflow(row)[1]

    with ThreadPoolExecutor(16) as pool:
        created = list(pool.map(create, range(16)))
    assert created.count(True) == 1  # one run per id, whoever shared whose commit

    leases = {f"f{i}": _owned(store, f"f{i}") for i in range(16)}
    leases["f7"] = Lease("w1", 99)  # stale: its outcome must be refused, alone

    def finish(workflow_id: str) -> str:
        barrier.wait()
        try:
            store.finish_workflow(workflow_id, leases[workflow_id], WorkflowStatus.SUCCESS,
                                  "1", None)  # fmt: skip
        except OwnershipLost:
            return "lost"
        return "ok"

    with ThreadPoolExecutor(16) as pool:
        results = dict(zip(leases, pool.map(finish, leases), strict=True))
    assert results.pop("f7") == "lost"
    assert set(results.values()) == {"ok"}
    for workflow_id in results:
        stored = store.get_workflow(workflow_id)
        assert stored is not None and stored.status is WorkflowStatus.SUCCESS
    stale = store.get_workflow("f7")
    assert stale is not None and stale.status is WorkflowStatus.RUNNING
