"""Journal and replay: completed steps never run again; ids are idempotency keys;
changed code is caught; deterministic helpers replay identically.

To force a replay in-process, a workflow blocks inside a step, the engine is closed (which
releases the workflow), and a second engine on the same database resumes it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import perdure
from conftest import wait_until

calls: Counter[str] = Counter()
gate = threading.Event()


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()
    gate.clear()


class Refused(Exception):
    pass


@perdure.step
def charge(amount: int) -> str:
    calls["charge"] += 1
    return f"charged {amount}"


@perdure.step
def flaky_lookup(key: str) -> str:
    calls["lookup"] += 1
    raise Refused(f"no {key}")


@perdure.step
def blocker() -> str:
    calls["blocker"] += 1
    gate.wait(60)  # stands for a step still running when the engine stops
    return "unblocked"


@perdure.workflow(name="replay_flow")
def replay_flow(amount: int) -> dict[str, Any]:
    receipt = charge(amount)
    try:
        flaky_lookup("k")
        lookup = "found"
    except Refused as exc:
        lookup = f"refused: {exc}"
    stamp = perdure.now()
    token = perdure.uuid4()
    dice = perdure.random()
    last = blocker()
    return {"receipt": receipt, "lookup": lookup, "stamp": stamp, "token": token,
            "dice": dice, "last": last}  # fmt: skip


def test_completed_steps_replay_instead_of_running_again(db_url: str) -> None:
    with perdure.Engine(db_url, shutdown_grace=0.1) as first:
        first.start(replay_flow, 5, id="r1")
        wait_until(lambda: calls["blocker"] == 1)
        recorded = {s.name: s.output for s in first.list_steps("r1")}
    gate.set()
    with perdure.Engine(db_url) as second:
        result = second.handle("r1").result(timeout=10)
        steps = second.list_steps("r1")
    assert calls == Counter(charge=1, lookup=1, blocker=2)
    assert result["receipt"] == "charged 5"
    assert result["lookup"] == "refused: no k"  # recorded exception raised again on replay
    assert result["stamp"] == recorded["perdure.now"]
    assert result["token"] == recorded["perdure.uuid4"]
    assert result["dice"] == recorded["perdure.random"]
    assert [s.name for s in steps] == [
        "charge", "flaky_lookup", "perdure.now", "perdure.uuid4", "perdure.random", "blocker",
    ]  # fmt: skip
    assert steps[1].status is perdure.StepStatus.ERROR
    assert steps[1].error == perdure.ErrorInfo("test_replay.Refused", "no k")


def test_workflow_id_is_an_idempotency_key(engine: perdure.Engine) -> None:
    @perdure.workflow(name="idem_flow")
    def idem_flow(amount: int) -> str:
        return charge(amount)

    first = engine.start(idem_flow, 7, id="order-7")
    assert first.result(timeout=10) == "charged 7"
    again = engine.start(idem_flow, 7, id="order-7")
    assert again.id == "order-7"
    assert again.result(timeout=10) == "charged 7"
    assert calls["charge"] == 1
    with pytest.raises(perdure.WorkflowConflictError, match="other inputs"):
        engine.start(idem_flow, 8, id="order-7")
    with pytest.raises(perdure.WorkflowConflictError, match="another workflow"):
        engine.start(replay_flow, 7, id="order-7")
    assert calls["charge"] == 1


def test_idempotent_start_while_running_returns_the_same_run(engine: perdure.Engine) -> None:
    engine.start(replay_flow, 1, id="busy")
    wait_until(lambda: calls["blocker"] == 1)
    handle = engine.start(replay_flow, 1, id="busy")
    assert handle.status() is perdure.WorkflowStatus.RUNNING
    gate.set()
    assert len(engine.list_workflows(name="replay_flow")) == 1


def make_versioned(version: int) -> Callable[..., Any]:
    """Two versions of one workflow (same registered name, same qualname)."""

    @perdure.step(name=f"prepare_v{version}")
    def prepare() -> int:
        calls[f"prepare_v{version}"] += 1
        return version

    @perdure.workflow(name="changing_flow")
    def changing_flow() -> int:
        prepare()
        blocker()
        return version

    return changing_flow


def test_changed_code_raises_non_determinism_and_keeps_the_journal(db_url: str) -> None:
    old = make_versioned(1)
    with perdure.Engine(db_url, shutdown_grace=0.1) as first:
        first.start(old, id="nd")
        wait_until(lambda: calls["blocker"] == 1)
        before = first.list_steps("nd")
    make_versioned(2)  # a deployment changed the first step
    # declared compatible (the default leaves another source version alone): replay must
    # then catch the change before any new side effect
    with perdure.Engine(db_url, compatible_versions="any") as second:
        handle = second.handle("nd")
        with pytest.raises(perdure.NonDeterminismError) as info:
            handle.result(timeout=10)
        after = second.list_steps("nd")
        status = handle.status()
    err = info.value
    assert (err.workflow_id, err.position, err.recorded, err.current) == (
        "nd", "0", "prepare_v1", "prepare_v2",
    )  # fmt: skip
    assert "deploy the previous code" in str(err) and "engine.resume(id)" in str(err)
    assert calls["prepare_v2"] == 0
    assert after == before
    assert status is perdure.WorkflowStatus.ERROR


def test_code_that_returns_before_recorded_steps_is_non_deterministic(db_url: str) -> None:
    @perdure.workflow(name="shrinking_flow")
    def shrinking_flow() -> str:
        charge(1)
        charge(2)
        return blocker()

    with perdure.Engine(db_url, shutdown_grace=0.1) as first:
        first.start(shrinking_flow, id="shrink")
        wait_until(lambda: calls["blocker"] == 1)

    @perdure.workflow(name="shrinking_flow")
    def shrinking_flow() -> str:  # type: ignore[no-redef]
        return charge(1)

    with (
        perdure.Engine(db_url, compatible_versions="any") as second,
        pytest.raises(perdure.NonDeterminismError) as info,
    ):
        second.handle("shrink").result(timeout=10)
    assert info.value.position == "1"
    assert info.value.current is None


@perdure.step
async def fetch(i: int, delay: float) -> int:
    calls[f"fetch{i}"] += 1
    await asyncio.sleep(delay)
    return i * 10


@perdure.step
async def async_blocker() -> str:
    calls["async_blocker"] += 1
    while not gate.is_set():
        await asyncio.sleep(0.01)
    return "done"


@perdure.workflow(name="gather_flow")
async def gather_flow() -> list[int]:
    # Later calls finish first: positions must follow call order, not completion order.
    results = await asyncio.gather(*(fetch(i, 0.05 - i * 0.01) for i in range(5)))
    await async_blocker()
    return list(results)


def test_concurrent_async_steps_take_positions_in_call_order(db_url: str) -> None:
    with perdure.Engine(db_url, shutdown_grace=0.1) as first:
        first.start(gather_flow, id="g")
        wait_until(lambda: calls["async_blocker"] == 1)
        steps = first.list_steps("g")
    # Keys follow call order; positions follow commit order (the later calls finished first).
    assert {s.key: s.output for s in steps} == {str(i): i * 10 for i in range(5)}
    assert [s.key for s in steps] == ["4", "3", "2", "1", "0"]
    gate.set()
    with perdure.Engine(db_url) as second:
        assert second.handle("g").result(timeout=10) == [0, 10, 20, 30, 40]
    assert all(calls[f"fetch{i}"] == 1 for i in range(5))
    assert calls["async_blocker"] == 2


@perdure.step
async def llm(branch: str, turn: int, delay: float) -> str:
    calls[f"llm-{branch}{turn}"] += 1
    await asyncio.sleep(delay)
    return f"{branch}-{turn}"


async def conversation(branch: str, first_delay: float) -> list[str]:
    # A helper coroutine (not a step) making several step calls: run as a task, it gets its
    # own replay branch, so its calls keep their keys whatever the other branch does.
    return [await llm(branch, 1, first_delay), await llm(branch, 2, 0.0)]


@perdure.workflow(name="branches_flow")
async def branches_flow() -> list[list[str]]:
    results = await asyncio.gather(conversation("x", 0.05), conversation("y", 0.0))
    await async_blocker()
    return list(results)


def test_concurrent_branches_replay_their_own_results(db_url: str) -> None:
    with perdure.Engine(db_url, shutdown_grace=0.1) as first:
        first.start(branches_flow, id="b")
        wait_until(lambda: calls["async_blocker"] == 1)
        keys = {s.key: s.output for s in first.list_steps("b")}
    assert keys["t0/0"] == "x-1" and keys["t0/1"] == "x-2"
    assert keys["t1/0"] == "y-1" and keys["t1/1"] == "y-2"
    gate.set()
    with perdure.Engine(db_url) as second:
        # On replay every step returns at once, in a different interleaving than the first
        # run: each branch must still get its own answers.
        assert second.handle("b").result(timeout=10) == [["x-1", "x-2"], ["y-1", "y-2"]]
    assert all(calls[f"llm-{b}{t}"] == 1 for b in "xy" for t in (1, 2))


def test_steps_outside_a_workflow_simply_run() -> None:
    assert charge(3) == "charged 3"
    assert asyncio.run(fetch(2, 0)) == 20
    assert isinstance(perdure.now().year, int)
    with pytest.raises(perdure.PerdureError, match="outside a running workflow"):
        perdure.workflow_id()
