"""Hardening from a review of waits, cancellation and compensation: each test pins a bug that
an earlier version had (a suspension swallowed or leaking into finally blocks and sibling
branches, compensations keyed by where the body stopped, attempts inherited by another step,
sleep_until on the wrong clock...)."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections import Counter

import pytest

import perdure
from conftest import wait_until
from perdure.testing import FakeClock

calls: Counter[str] = Counter()
gate = threading.Event()
times: list[float] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()
    gate.clear()
    times.clear()


# -- 1. a cancellation from another process that lands while the workflow runs, before it
#       suspends, strands it WAITING forever ----------------------------------------------


@perdure.step
def rev2_blocking() -> str:
    calls["blocking"] += 1
    gate.wait(10)
    return "ok"


@perdure.workflow(name="rev2_cancel_then_receive")
def rev2_cancel_then_receive() -> object:
    rev2_blocking()
    return perdure.receive("never")


def test_rev2_cancel_from_other_process_before_suspend_is_not_lost(db_url: str) -> None:
    client = perdure.Engine(db_url, recover=False, shutdown_grace=0.3).open()
    try:
        with perdure.Engine(db_url, shutdown_grace=0.3, heartbeat_interval=2.0) as worker:
            handle = worker.start(rev2_cancel_then_receive)
            wait_until(lambda: calls["blocking"] == 1)
            client.cancel(handle.id)  # flagged in the database; the worker is not told yet
            gate.set()  # the step ends, receive() finds nothing and the workflow suspends
            # the cancellation must still take effect (the worker's maintenance ticks every
            # 2 s, its waker polls every 0.1 s): wait through two ticks
            deadline = time.monotonic() + 6
            while not handle.status().finished and time.monotonic() < deadline:
                time.sleep(0.05)
            assert handle.status() is perdure.WorkflowStatus.CANCELLED  # is: WAITING, forever
    finally:
        client.close()


# -- 2. a suspension in one gather() branch leaves the other branches running: their steps
#       run while the workflow is unloaded, their commits are fenced off, and they run again


@perdure.step
async def rev2_slow_side_effect() -> str:
    calls["side_effect"] += 1
    await asyncio.sleep(0.3)
    return "done"


@perdure.workflow(name="rev2_gather_receive")
async def rev2_gather_receive() -> list[object]:
    return list(await asyncio.gather(perdure.receive_async("go"), rev2_slow_side_effect()))


def test_rev2_suspension_in_gather_branch_does_not_rerun_sibling_step(
    engine: perdure.Engine,
) -> None:
    handle = engine.start(rev2_gather_receive)
    wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
    time.sleep(0.6)  # the orphaned sibling branch finishes its step meanwhile
    engine.send(handle.id, "go", "msg")
    assert handle.result(timeout=10) == ["msg", "done"]
    assert calls["side_effect"] == 1  # one step call, no crash: must run once


# -- 3. after a local cancel, ctx.wake stays set: a failing compensation step is retried at
#       once, ignoring its backoff (and a RateLimitedError's retry_after) -------------------


@perdure.step(retry=perdure.RetryPolicy(max_attempts=3, initial_interval=30.0, jitter=0.0))
def rev2_undo() -> str:
    times.append(_clock.time())
    calls["undo"] += 1
    if calls["undo"] == 1:
        raise perdure.TransientError("undo failed once")
    return "undone"


_clock = FakeClock()


@perdure.step
def rev2_do() -> str:
    return "done"


@perdure.workflow(name="rev2_cancel_compensate")
def rev2_cancel_compensate() -> object:
    rev2_do()
    perdure.compensate(rev2_undo)
    rev2_blocking()
    rev2_do()  # the next step boundary: the cancellation takes effect here
    return "finished"


def test_rev2_compensation_retry_after_cancel_waits_its_backoff(db_url: str) -> None:
    with perdure.Engine(db_url, clock=_clock, shutdown_grace=0.3) as eng:
        handle = eng.start(rev2_cancel_compensate)
        wait_until(lambda: calls["blocking"] == 1)
        eng.cancel(handle.id)  # local: sets the run's wake event
        gate.set()
        wait_until(lambda: handle.status().finished, timeout=10)
        assert handle.status() is perdure.WorkflowStatus.CANCELLED
        assert calls["undo"] == 2
        assert times[1] - times[0] >= 30.0  # the second attempt waited its 30 s backoff


# -- 4. sleep_until() measures the distance with the system clock, not the engine's clock


@perdure.workflow(name="rev2_sleep_until")
def rev2_sleep_until(when: dt.datetime) -> str:
    perdure.sleep_until(when)
    return "woke"


def test_rev2_sleep_until_uses_the_engine_clock(db_url: str) -> None:
    clock = FakeClock(start=time.time() + 7 * 86400)  # the fake time is a week ahead
    with perdure.Engine(db_url, clock=clock, shutdown_grace=0.3) as eng:
        when = dt.datetime.fromtimestamp(clock.time() + 3600, dt.UTC)
        handle = eng.start(rev2_sleep_until, when)
        wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
        clock.advance(3600 + 1)
        assert handle.result(timeout=5) == "woke"


# -- 5. gather(return_exceptions=True) turns a WorkflowSuspended into a value: the workflow
#       completes without ever receiving its message (silent wrong result) ----------------


@perdure.step
async def rev2_async_mark() -> str:
    calls["async_mark"] += 1
    return "marked"


@perdure.workflow(name="rev2_gather_return_exceptions")
async def rev2_gather_return_exceptions() -> str:
    got, _ = await asyncio.gather(
        perdure.receive_async("go"), rev2_async_mark(), return_exceptions=True
    )
    return f"received {got!r}"


def test_rev2_suspension_is_not_swallowed_by_gather_return_exceptions(
    engine: perdure.Engine,
) -> None:
    handle = engine.start(rev2_gather_return_exceptions)
    wait_until(lambda: handle.status() is not perdure.WorkflowStatus.RUNNING, timeout=5)
    # nothing was sent: the workflow must be waiting for "go", not finished
    assert handle.status() is perdure.WorkflowStatus.WAITING, handle.status()
    engine.send(handle.id, "go", "msg")
    assert handle.result(timeout=10) == "received 'msg'"


# -- 6. an approval decided between the workflow's timeout and the TIMED_OUT mark is
#       accepted (approve() succeeds, the row says APPROVED) but the workflow saw a timeout


@perdure.workflow(name="rev2_approval_timeout")
def rev2_approval_timeout() -> bool:
    decision = perdure.wait_for_approval("pay", timeout=3600, details={"amount": 1})
    return decision.timed_out


# -- 7. failed attempts are looked up by key only: a different step now at that key (code
#       changed) inherits them, so its policy is spent before it ran -----------------------

version = {"v": 1}


@perdure.step(retry=perdure.RetryPolicy(max_attempts=5, initial_interval=60.0, jitter=0.0))
def rev2_step_a() -> str:
    calls["a"] += 1
    raise perdure.TransientError("a fails")


@perdure.step(retry=perdure.RetryPolicy(max_attempts=3, initial_interval=1.0, jitter=0.0))
def rev2_step_b() -> str:
    calls["b"] += 1
    raise perdure.TransientError("b fails")


@perdure.workflow(name="rev2_changed_step")
def rev2_changed_step() -> str:
    return rev2_step_a() if version["v"] == 1 else rev2_step_b()


def test_rev2_attempts_of_another_step_are_not_inherited(db_url: str) -> None:
    version["v"] = 1
    with perdure.Engine(db_url, shutdown_grace=0.3) as eng:
        handle = eng.start(rev2_changed_step)
        wait_until(lambda: len(eng.list_attempts(handle.id)) == 1)  # A failed once; 60 s wait
    assert calls["a"] == 1  # the engine stops during A's backoff
    version["v"] = 2
    with perdure.Engine(db_url, clock=FakeClock(), shutdown_grace=0.3) as eng:
        handle = eng.handle(handle.id)
        with pytest.raises(perdure.PerdureError) as info:
            handle.result(timeout=10)
    # B must either be flagged as a non-deterministic change, or get its own 3 attempts
    assert isinstance(info.value, perdure.NonDeterminismError) or calls["b"] == 3, (
        f"B ran {calls['b']} time(s), then: {info.value!r}"
    )


# -- 8. a cancel at a wait, then a crash in the middle of compensating: the recovery run
#       passes the (now due) timer and stops one step later, so the compensations' keys
#       shift: NonDeterminismError, the remaining compensations are skipped ---------------

_clock8 = FakeClock()


@perdure.step
def rev2_undo_first() -> str:
    calls["undo_first"] += 1
    return "undone first"


@perdure.step
def rev2_undo_second() -> str:
    calls["undo_second"] += 1
    if calls["undo_second"] == 1:
        _clock8.advance(1000)  # time passes while the process is down: the timer is now due
        raise SystemExit("the worker dies in the middle of compensating")
    return "undone second"


@perdure.step
def rev2_after_sleep() -> str:
    calls["after_sleep"] += 1
    return "after"


@perdure.workflow(name="rev2_cancel_at_sleep_crash_in_compensation")
def rev2_cancel_at_sleep_crash_in_compensation() -> str:
    rev2_do()
    perdure.compensate(rev2_undo_second)
    rev2_do()
    perdure.compensate(rev2_undo_first)
    perdure.sleep(100)
    return rev2_after_sleep()


def test_rev2_compensation_resumes_after_crash_when_cancelled_at_a_timer(db_url: str) -> None:
    with perdure.Engine(db_url, clock=_clock8, shutdown_grace=0.3, recovery_interval=0.5) as eng:
        handle = eng.start(rev2_cancel_at_sleep_crash_in_compensation)
        wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
        eng.cancel(handle.id)
        deadline = time.monotonic() + 8
        while not handle.status().finished and time.monotonic() < deadline:
            time.sleep(0.05)
        info = handle.info()
        assert calls["after_sleep"] == 0
        assert calls["undo_second"] == 2, (
            info.status,
            info.error,
            calls,
        )  # resumed after the crash
        assert handle.status() is perdure.WorkflowStatus.CANCELLED, info.error


# -- 9. a `finally:` (or `with`) around a wait runs its steps while the workflow unwinds to
#       suspend: the cleanup step is journaled at the key the code after the wait needs, so
#       the resumed run fails with NonDeterminismError (and the cleanup ran too early) -----


@perdure.step
def rev2_process(msg: str) -> str:
    calls["process"] += 1
    return f"processed {msg}"


@perdure.step
def rev2_cleanup() -> str:
    calls["cleanup"] += 1
    return "cleaned"


@perdure.workflow(name="rev2_finally_around_receive")
def rev2_finally_around_receive() -> str:
    try:
        msg = perdure.receive("go")
        return rev2_process(msg)
    finally:
        rev2_cleanup()


def test_rev2_finally_around_a_wait_does_not_run_steps_on_suspension(
    engine: perdure.Engine,
) -> None:
    handle = engine.start(rev2_finally_around_receive)
    wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
    early = calls["cleanup"]  # the workflow is still logically inside the try block
    engine.send(handle.id, "go", "msg")
    assert handle.result(timeout=10) == "processed msg"
    assert (early, calls["cleanup"]) == (0, 1)


# -- 11. compensations registered in concurrent branches are ordered by the first run's
#        timing, but by creation order on replay: after a crash in the middle of compensating
#        the keys no longer match (NonDeterminismError) and the remaining undo is skipped


class _Crash(BaseException):
    """Stands in for the process dying in the middle of a step."""


@perdure.step
async def rev2_book_slow() -> str:
    await asyncio.sleep(0.2)
    return "slow booked"


@perdure.step
async def rev2_book_fast() -> str:
    return "fast booked"


@perdure.step
async def rev2_cancel_slow() -> str:
    calls["cancel_slow"] += 1
    return "slow cancelled"


@perdure.step
async def rev2_cancel_fast() -> str:
    calls["cancel_fast"] += 1
    if calls["cancel_fast"] == 1:
        raise _Crash("the worker dies while compensating")
    return "fast cancelled"


@perdure.step
async def rev2_pay() -> str:
    raise perdure.PermanentError("card declined")


async def _slow_branch() -> None:
    await rev2_book_slow()
    perdure.compensate(rev2_cancel_slow)


async def _fast_branch() -> None:
    await rev2_book_fast()
    perdure.compensate(rev2_cancel_fast)


@perdure.workflow(name="rev2_parallel_saga")
async def rev2_parallel_saga() -> str:
    await asyncio.gather(_slow_branch(), _fast_branch())
    return await rev2_pay()


def test_rev2_parallel_saga_compensation_survives_a_crash(db_url: str) -> None:
    with perdure.Engine(db_url, shutdown_grace=0.3, recovery_interval=0.3) as eng:
        handle = eng.start(rev2_parallel_saga)
        with pytest.raises(perdure.PerdureError) as info:
            handle.result(timeout=10)
        assert calls == Counter(cancel_slow=1, cancel_fast=2), (calls, info.value)
        assert isinstance(info.value, perdure.PermanentError), info.value
