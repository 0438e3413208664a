"""Suspend and resume in one process: timers, messages, events, approvals, on a fake clock.
(Crash variants live in tests/crash/test_wait_crashes.py.)"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import perdure
from conftest import wait_until
from perdure.testing import FakeClock

calls: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(db_url: str, clock: FakeClock) -> Iterator[perdure.Engine]:
    with perdure.Engine(db_url, clock=clock, max_threads=4, shutdown_grace=0.3) as eng:
        yield eng


@perdure.step
def mark(label: str) -> str:
    calls[label] += 1
    return label


@perdure.workflow(name="wait_long_sleep")
def long_sleep() -> str:
    mark("before")
    perdure.sleep(dt.timedelta(days=3))
    return mark("after")


def test_a_long_sleep_unloads_the_workflow_and_fires_when_due(
    engine: perdure.Engine, clock: FakeClock
) -> None:
    handle = engine.start(long_sleep)
    wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
    assert calls["after"] == 0
    clock.advance(3 * 86400 - 60)  # a minute early: still waiting, never early
    with pytest.raises(perdure.ResultTimeoutError):
        handle.result(timeout=0.4)
    clock.advance(60)
    assert handle.result(timeout=10) == "after"
    assert calls == Counter(before=1, after=1)  # the step before the sleep replayed
    names = [s.name for s in engine.list_steps(handle.id)]
    assert names == ["mark", "perdure.sleep", "mark"]


@perdure.workflow(name="wait_short_sleep")
def short_sleep() -> str:
    perdure.sleep(0.05)  # below suspend_after: waits in place
    perdure.sleep_until(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))  # in the past: at once
    return mark("done")


def test_short_and_past_sleeps_do_not_unload(engine: perdure.Engine, clock: FakeClock) -> None:
    assert engine.run(short_sleep, timeout=10) == "done"
    assert clock.sleeps == [pytest.approx(0.05, abs=0.01)]


@perdure.workflow(name="wait_receiver")
def receiver(count: int) -> list[Any]:
    return [perdure.receive("inbox") for _ in range(count)]


def test_waiting_workflows_hold_no_thread(engine: perdure.Engine) -> None:
    # 4 threads, 40 sync workflows blocked on a message: all must be waiting at once.
    handles = [engine.start(receiver, 1) for _ in range(40)]
    wait_until(lambda: len(engine.list_workflows(status="WAITING", limit=100)) == 40, timeout=20)
    for i, handle in enumerate(handles):
        engine.send(handle.id, "inbox", i)
    assert [h.result(timeout=20) for h in handles] == [[i] for i in range(40)]


def test_messages_are_kept_ordered_and_deduplicated(engine: perdure.Engine) -> None:
    handle = engine.start(receiver, 3)
    assert engine.send(handle.id, "inbox", "first")
    assert engine.send(handle.id, "inbox", "second", idempotency_key="k")
    assert not engine.send(handle.id, "inbox", "second again", idempotency_key="k")
    assert engine.send(handle.id, "other-topic", "not for receive('inbox')")
    assert engine.send(handle.id, "inbox", {"third": [1, 2]})
    assert handle.result(timeout=10) == ["first", "second", {"third": [1, 2]}]
    with pytest.raises(perdure.ConfigurationError, match="cannot be None"):
        engine.send(handle.id, "inbox", None)
    with pytest.raises(perdure.WorkflowNotFound):
        engine.send("nobody", "inbox", 1)


@perdure.workflow(name="wait_receive_timeout")
def receive_timeout() -> Any:
    return perdure.receive("never", timeout=3600)


def test_a_receive_timeout_returns_none(engine: perdure.Engine, clock: FakeClock) -> None:
    handle = engine.start(receive_timeout)
    wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
    clock.advance(3600)
    assert handle.result(timeout=10) is None
    engine.send(handle.id, "never", "too late")  # kept, but the workflow has moved on


@perdure.workflow(name="wait_events")
def events_flow() -> str:
    perdure.set_event("progress", {"done": 1, "of": 2})
    perdure.receive("continue")
    perdure.set_event("progress", {"done": 2, "of": 2})
    return "finished"


def test_events_publish_progress(engine: perdure.Engine) -> None:
    handle = engine.start(events_flow)
    assert engine.get_event(handle.id, "progress", timeout=10) == {"done": 1, "of": 2}
    assert engine.get_event(handle.id, "missing", timeout=0.05) is None
    engine.send(handle.id, "continue", True)
    assert handle.result(timeout=10) == "finished"
    assert engine.get_event(handle.id, "progress") == {"done": 2, "of": 2}


@perdure.workflow(name="wait_approval")
def approval_flow(amount: int) -> dict[str, Any]:
    decision = perdure.wait_for_approval(
        "payment", timeout=dt.timedelta(days=3), details={"amount": amount, "to": "ACME"}
    )
    if decision.timed_out:
        return {"outcome": "escalated"}
    return {"outcome": "paid" if decision.approved else "refused", "by": decision.by,
            "comment": decision.comment, "at": decision.at}  # fmt: skip


def test_approval_lists_details_and_resumes_on_approve(engine: perdure.Engine) -> None:
    handle = engine.start(approval_flow, 250)
    wait_until(lambda: len(engine.pending_approvals()) == 1)
    [pending] = engine.pending_approvals()
    assert (pending.workflow_id, pending.name) == (handle.id, "payment")
    assert pending.details == {"amount": 250, "to": "ACME"}
    engine.approve(handle.id, "payment", by="alice", comment="ok")
    result = handle.result(timeout=10)
    assert result["outcome"] == "paid" and result["by"] == "alice"
    assert result["comment"] == "ok" and isinstance(result["at"], dt.datetime)
    assert engine.pending_approvals() == []
    with pytest.raises(perdure.ApprovalNotPending, match="no pending approval named"):
        engine.approve(handle.id, "payment")


def test_rejection_is_returned_to_the_workflow(engine: perdure.Engine) -> None:
    handle = engine.start(approval_flow, 9_000)
    wait_until(lambda: len(engine.pending_approvals()) == 1)
    engine.reject(handle.id, "payment", by="bob", comment="too much")
    result = handle.result(timeout=10)
    assert (result["outcome"], result["by"], result["comment"]) == ("refused", "bob", "too much")


def test_an_unanswered_approval_times_out_in_three_days_of_fake_time(
    engine: perdure.Engine, clock: FakeClock
) -> None:
    handle = engine.start(approval_flow, 1)
    # WAITING, not just "requested": the receive's deadline is journaled only after the request
    wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
    clock.advance(3 * 86400)
    assert handle.result(timeout=10) == {"outcome": "escalated"}
    assert engine.pending_approvals() == []


@perdure.step
def undo(label: str) -> None:
    calls[f"undo {label}"] += 1


@perdure.workflow(name="wait_cancellable")
def cancellable() -> str:
    perdure.compensate(undo, mark("booked"))
    perdure.receive("never")
    return "unreachable"


def test_cancelling_a_waiting_workflow_runs_its_compensation(engine: perdure.Engine) -> None:
    handle = engine.start(cancellable)
    wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
    engine.cancel(handle.id)
    with pytest.raises(perdure.WorkflowCancelledError):
        handle.result(timeout=10)
    assert calls == Counter({"booked": 1, "undo booked": 1})


def test_an_approval_of_a_cancelled_workflow_is_closed(engine: perdure.Engine) -> None:
    handle = engine.start(approval_flow, 5)
    wait_until(lambda: len(engine.pending_approvals()) == 1)
    engine.cancel(handle.id)
    with pytest.raises(perdure.WorkflowCancelledError):
        handle.result(timeout=10)
    assert engine.pending_approvals() == []
    with pytest.raises(perdure.ApprovalNotPending):
        engine.approve(handle.id, "payment")


@perdure.workflow(name="wait_swallower")
def swallower() -> str:
    try:
        perdure.receive("x")
    except Exception:  # user code cannot swallow the suspension
        return "swallowed"
    return "received"


def test_suspension_cannot_be_swallowed(engine: perdure.Engine) -> None:
    handle = engine.start(swallower)
    wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
    engine.send(handle.id, "x", 1)
    assert handle.result(timeout=10) == "received"


@perdure.step
async def amark(label: str) -> str:
    calls[label] += 1
    return label


@perdure.workflow(name="wait_async")
async def async_waits() -> list[Any]:
    await amark("start")
    await perdure.sleep_async(7200)
    got = await perdure.receive_async("go", timeout=60)
    decision = await perdure.wait_for_approval_async("ship")
    return [got, decision.approved, await amark("end")]


def test_async_workflows_wait_the_same_way(engine: perdure.Engine, clock: FakeClock) -> None:
    handle = engine.start(async_waits)
    wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
    clock.advance(7200)
    engine.send(handle.id, "go", "now")
    wait_until(lambda: len(engine.pending_approvals()) == 1)
    engine.approve(handle.id, "ship")
    assert handle.result(timeout=10) == ["now", True, "end"]
    assert calls == Counter(start=1, end=1)


def test_waits_outside_a_workflow() -> None:
    perdure.sleep(0)  # plain sleep
    with pytest.raises(perdure.PerdureError, match="only inside a running workflow"):
        perdure.receive("x")


@perdure.workflow(name="wait_with_deadline", deadline=600)
def waits_past_deadline() -> Any:
    return perdure.receive("never")  # no timeout of its own: the deadline must still end it


def test_a_waiting_workflow_wakes_at_its_deadline_to_fail(
    engine: perdure.Engine, clock: FakeClock
) -> None:
    handle = engine.start(waits_past_deadline)
    wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
    clock.advance(600)
    with pytest.raises(perdure.DeadlineExceededError):
        handle.result(timeout=10)


def test_an_approval_landing_just_after_the_timeout_is_not_lost(
    engine: perdure.Engine, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_class = type(engine.store)  # SQLite, or PostgreSQL under make test-postgres
    real_close = store_class.close_approval

    def approve_first(self: Any, workflow_id: str, name: str, status: str) -> Any:
        # The receive has timed out; a human approves in the gap before the request closes.
        engine.approve(workflow_id, name, by="late carol")
        return real_close(self, workflow_id, name, status)

    monkeypatch.setattr(store_class, "close_approval", approve_first)
    handle = engine.start(approval_flow, 3)
    wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
    clock.advance(3 * 86400)
    result = handle.result(timeout=10)
    assert (result["outcome"], result["by"]) == ("paid", "late carol")  # accepted and seen
