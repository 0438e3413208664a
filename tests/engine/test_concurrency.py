"""Many workflows at once in one engine; stopping promptly; fencing after a takeover."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest

import perdure
from conftest import wait_until

calls: Counter[str] = Counter()
release = threading.Event()


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()
    release.clear()


SYNC_N = 16
ASYNC_N = 200
barrier = threading.Barrier(SYNC_N)


@perdure.step
def meet() -> int:
    # Every sync workflow must be inside this step at the same time, or the barrier breaks.
    return barrier.wait(timeout=10)


@perdure.workflow(name="conc_sync")
def conc_sync() -> int:
    return meet()


in_flight = {"now": 0, "peak": 0}


@perdure.step
async def overlap() -> int:
    in_flight["now"] += 1
    in_flight["peak"] = max(in_flight["peak"], in_flight["now"])
    await asyncio.sleep(0.2)
    in_flight["now"] -= 1
    return 1


@perdure.workflow(name="conc_async")
async def conc_async() -> int:
    return await overlap()


@perdure.workflow(name="conc_stuck")
def conc_stuck() -> str:
    return stuck_step()


@perdure.step
def stuck_step() -> str:
    calls["stuck"] += 1
    release.wait(60)
    return "released"


def test_sync_and_async_workflows_progress_together(engine: perdure.Engine) -> None:
    stuck = engine.start(conc_stuck)  # holds one thread forever: must not block the rest
    sync_handles = [engine.start(conc_sync) for _ in range(SYNC_N)]
    async_handles = [engine.start(conc_async) for _ in range(ASYNC_N)]
    assert sorted(h.result(timeout=20) for h in sync_handles) == list(range(SYNC_N))
    assert sum(h.result(timeout=20) for h in async_handles) == ASYNC_N
    assert in_flight["peak"] > ASYNC_N // 2  # they ran concurrently on the loop
    assert stuck.status() is perdure.WorkflowStatus.RUNNING
    release.set()
    assert stuck.result(timeout=10) == "released"


def test_close_is_prompt_and_releases_unfinished_work(db_url: str) -> None:
    engine = perdure.Engine(db_url, shutdown_grace=0.3).open()
    handle = engine.start(conc_stuck, id="stuck")
    wait_until(lambda: calls["stuck"] == 1)
    started = time.monotonic()
    engine.close()
    assert time.monotonic() - started < 2.0
    with pytest.raises(perdure.EngineClosedError):
        engine.start(conc_stuck)
    with perdure.Engine(db_url, recover=False) as reader:
        info = reader.get_workflow(handle.id)
    assert info.status is perdure.WorkflowStatus.PENDING
    assert info.owner is None
    release.set()  # the abandoned thread wakes; it must not commit anything
    time.sleep(0.1)
    with perdure.Engine(db_url) as next_engine:
        assert next_engine.handle("stuck").result(timeout=10) == "released"
        steps = next_engine.list_steps("stuck")
    assert [s.name for s in steps] == ["stuck_step"]
    assert calls["stuck"] == 2


def test_engine_requires_registered_workflows(engine: perdure.Engine) -> None:
    def plain() -> None:
        return None

    with pytest.raises(perdure.ConfigurationError, match=r"decorate it with @perdure\.workflow"):
        engine.start(plain)
    with pytest.raises(perdure.UnknownWorkflowError, match="no_such_flow"):
        engine.start("no_such_flow")
    with pytest.raises(perdure.WorkflowNotFound):
        engine.handle("missing")


@pytest.mark.parametrize("bad", ["", "x" * 256, "a\nb", "tab\there", "nul\x00"])
def test_invalid_workflow_ids_are_rejected(engine: perdure.Engine, bad: str) -> None:
    with pytest.raises(perdure.ConfigurationError):
        engine.start(conc_async, id=bad)
    assert engine.list_workflows() == []


def test_async_engine_front_end(db_url: str) -> None:
    async def main() -> tuple[int, perdure.WorkflowStatus, int]:
        async with perdure.AsyncEngine(db_url) as engine:
            handle = await engine.start(conc_async, id="a1")
            result = await handle.result(timeout=10)
            status = await handle.status()
            again = await engine.run(conc_async, id="a1")
            return result, status, again

    assert asyncio.run(main()) == (1, perdure.WorkflowStatus.SUCCESS, 1)


@perdure.step(name="backlog_hold")
def backlog_hold(i: int) -> int:
    calls["backlog"] += 1
    release.wait(30)
    return i


@perdure.workflow(name="backlog_flow")
def backlog_flow(i: int) -> int:
    return backlog_hold(i) * 2


def test_a_recovery_backlog_is_taken_as_runs_end_not_one_sweep_per_heartbeat(
    db_url: str,
) -> None:
    """A sweep takes only what can start at once (max_threads); the rest of a dead or
    stopped worker's workflows must be taken as runs end, not one batch per heartbeat."""
    first = perdure.Engine(db_url, recover=False, shutdown_grace=0.1).open()
    ids = [first.start(backlog_flow, i, id=f"backlog-{i}").id for i in range(12)]
    wait_until(lambda: calls["backlog"] == 12)
    first.close()  # every workflow released, mid-step; its abandoned threads are fenced out
    release.set()
    # Sweeps only at open and every 10 minutes, heartbeats every minute: with a sweep per
    # heartbeat, 4 at a time, the last 8 would wait minutes.
    with perdure.Engine(db_url, max_threads=4, heartbeat_interval=60, lease_seconds=120,
                        recovery_interval=600) as engine:  # fmt: skip
        for i, workflow_id in enumerate(ids):
            assert engine.handle(workflow_id).result(timeout=15) == i * 2
        assert all(engine.get_workflow(w).status is perdure.WorkflowStatus.SUCCESS for w in ids)
