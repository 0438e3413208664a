"""Waiting inside a workflow: durable timers, messages, events and human approval.

Every wait is journaled so a replay reaches the same point: a timer records its wake time
(``perdure.sleep``), a receive with a timeout records its deadline, a received message is
consumed and journaled in one transaction (exactly once), an approval request is recorded
before the wait. A wait that cannot be satisfied at once unloads the workflow (unless it is
shorter than the engine's ``suspend_after``): the run unwinds with :class:`WorkflowSuspended`,
the workflow becomes WAITING with no owner and no thread, and it is claimed and replayed to
the wait point when its timer is due, its message arrives, or it is cancelled.

Sync workflows call ``sleep``/``receive``/...; async workflows ``await`` the ``*_async``
forms.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from . import _serialize
from ._context import WorkflowContext, current
from ._decorators import StepSpec
from ._errors import PerdureError, SerializationError, WorkflowSuspended
from ._records import validate_name
from ._retry import NO_RETRY
from ._steps import call_step_async, call_step_sync
from .store import ApprovalRow, approval_topic


@dataclass(frozen=True)
class Approval:
    """A human's decision on a ``wait_for_approval`` request.

    Attributes:
        name: the approval's name.
        approved: True if approved; False if rejected or timed out.
        by: who decided (None on timeout).
        comment: their comment.
        at: when it was decided (None on timeout).
        timed_out: True when nobody decided before the timeout.
    """

    name: str
    approved: bool
    by: str | None = None
    comment: str | None = None
    at: dt.datetime | None = None
    timed_out: bool = False


def _seconds(duration: float | dt.timedelta) -> float:
    return duration.total_seconds() if isinstance(duration, dt.timedelta) else float(duration)


def _in_workflow(what: str) -> WorkflowContext:
    ctx = current()
    if ctx is None:
        raise PerdureError(f"perdure.{what}() works only inside a running workflow")
    return ctx


def _timer_spec(ctx: WorkflowContext, name: str, seconds: float) -> StepSpec:
    return StepSpec(name, lambda: ctx.clock.time() + seconds, float, True, retry=NO_RETRY)


async def _async_value(value: float) -> float:
    return value


def _async_timer_spec(ctx: WorkflowContext, name: str, seconds: float) -> StepSpec:
    return StepSpec(name, lambda: _async_value(ctx.clock.time() + seconds), float, True,
                    retry=NO_RETRY)  # fmt: skip


# -- timers --------------------------------------------------------------------------------


def sleep(duration: float | dt.timedelta) -> None:
    """Wait durably: the wake time is journaled; after a restart a due timer fires at once
    and one not yet due fires on time, never early. Outside a workflow: ``time.sleep``.

    Args:
        duration: seconds, or a timedelta.
    """
    ctx = current()
    if ctx is None:
        time.sleep(max(0.0, _seconds(duration)))
        return
    wake_at = call_step_sync(_timer_spec(ctx, "perdure.sleep", _seconds(duration)), (), {})
    _wait_sync(ctx, float(wake_at))


def sleep_until(when: dt.datetime) -> None:
    """Wait durably until ``when`` (a timezone-aware datetime, read as engine-clock time)."""
    ctx = current()
    target = _timestamp(when)
    if ctx is None:
        time.sleep(max(0.0, target - time.time()))
        return
    spec = StepSpec("perdure.sleep", lambda: target, float, True, retry=NO_RETRY)
    _wait_sync(ctx, float(call_step_sync(spec, (), {})))


async def sleep_async(duration: float | dt.timedelta) -> None:
    """:func:`sleep` for async workflows."""
    ctx = current()
    if ctx is None:
        import asyncio

        await asyncio.sleep(max(0.0, _seconds(duration)))
        return
    spec = _async_timer_spec(ctx, "perdure.sleep", _seconds(duration))
    wake_at = await call_step_async(spec, (), {})
    await _wait_async(ctx, float(wake_at))


async def sleep_until_async(when: dt.datetime) -> None:
    """:func:`sleep_until` for async workflows."""
    ctx = current()
    target = _timestamp(when)
    if ctx is None:
        import asyncio

        await asyncio.sleep(max(0.0, target - time.time()))
        return
    spec = StepSpec("perdure.sleep", lambda: _async_value(target), float, True, retry=NO_RETRY)
    await _wait_async(ctx, float(await call_step_async(spec, (), {})))


def _timestamp(when: dt.datetime) -> float:
    if when.tzinfo is None:
        raise PerdureError("sleep_until needs a timezone-aware datetime (e.g. with tz=UTC)")
    return when.timestamp()


def _wait_sync(ctx: WorkflowContext, wake_at: float) -> None:
    remaining = wake_at - ctx.clock.time()
    if remaining <= 0:
        return
    ctx.check_can_start_step()  # a cancelled or stopping run does not start waiting
    if remaining <= ctx.suspend_after:
        ctx.clock.sleep(remaining, ctx.wake)
        ctx.check_can_start_step()
        if ctx.clock.time() >= wake_at:
            return
    raise ctx.suspend(WorkflowSuspended(wake_at, None, ctx.deadline_at))


async def _wait_async(ctx: WorkflowContext, wake_at: float) -> None:
    remaining = wake_at - ctx.clock.time()
    if remaining <= 0:
        return
    ctx.check_can_start_step()
    if remaining <= ctx.suspend_after:
        await ctx.clock.sleep_async(remaining)
        ctx.check_can_start_step()
        if ctx.clock.time() >= wake_at:
            return
    raise ctx.suspend(WorkflowSuspended(wake_at, None, ctx.deadline_at))


# -- messages ------------------------------------------------------------------------------


def receive(topic: str, timeout: float | dt.timedelta | None = None) -> Any:
    """Wait for the next message sent to this workflow on ``topic`` (``engine.send``).

    Messages are delivered exactly once, in send order per topic; one sent before the
    workflow waits is kept for it. While nothing has arrived the workflow is unloaded.

    Args:
        topic: the topic to receive from.
        timeout: how long to wait (seconds or timedelta); None waits as long as it takes.

    Returns:
        The message's payload, or None when the timeout passed first (so payloads are never
        None: ``send`` refuses None).

    Raises:
        ConfigurationError: ``topic`` is empty or holds control characters or lone
            surrogates.
    """
    ctx = _in_workflow("receive")
    validate_name(topic, "message topic")
    deadline = None
    if timeout is not None:
        spec = _timer_spec(ctx, "perdure.receive.deadline", _seconds(timeout))
        deadline = float(call_step_sync(spec, (), {}))
    key = ctx.reserve()
    row = ctx.lookup(key, "perdure.receive")
    if row is not None:
        return ctx.replay(row, None)
    ctx.check_can_start_step()
    got, value = _try_receive(ctx, key, topic, deadline)
    if got:
        return value
    raise ctx.suspend(WorkflowSuspended(deadline, topic, ctx.deadline_at))


async def receive_async(topic: str, timeout: float | dt.timedelta | None = None) -> Any:
    """:func:`receive` for async workflows."""
    ctx = _in_workflow("receive_async")
    validate_name(topic, "message topic")
    deadline = None
    if timeout is not None:
        spec = _async_timer_spec(ctx, "perdure.receive.deadline", _seconds(timeout))
        deadline = float(await call_step_async(spec, (), {}))
    key = ctx.reserve()
    row = ctx.lookup(key, "perdure.receive")
    if row is not None:
        return ctx.replay(row, None)
    ctx.check_can_start_step()
    got, value = _try_receive(ctx, key, topic, deadline)  # one short write, like a commit
    if got:
        return value
    raise ctx.suspend(WorkflowSuspended(deadline, topic, ctx.deadline_at))


def _try_receive(
    ctx: WorkflowContext, key: str, topic: str, deadline: float | None
) -> tuple[bool, Any]:
    """Consume a waiting message (journaled in the same transaction), or journal the
    timeout if it passed; (False, None) when the workflow must wait."""
    started = ctx.clock.time()
    step = ctx.success_row(key, "perdure.receive", None, started)
    payload = ctx.consume(topic, step)
    if payload is not None:
        return True, ctx.decode(dataclasses.replace(step, output=payload), None)
    if deadline is not None and ctx.clock.time() >= deadline:
        ctx.commit(step)  # output null: the timeout, journaled so replay agrees
        return True, None
    return False, None


# -- events --------------------------------------------------------------------------------


def set_event(key: str, value: Any) -> None:
    """Publish a value from the workflow for the outside (``engine.get_event``): progress,
    partial results. Setting a key again replaces its value.

    Raises:
        SerializationError: ``value`` cannot be journaled (nothing is published).
        ConfigurationError: ``key`` is empty or holds control characters or lone surrogates.
    """
    ctx = _in_workflow("set_event")
    validate_name(key, "event key")
    text = _encode(value, f"event {key!r}")
    spec = StepSpec("perdure.set_event", lambda: ctx.store.set_event(ctx.workflow_id, key, text),
                    None, True, retry=NO_RETRY)  # fmt: skip
    call_step_sync(spec, (), {})


def _encode(value: Any, what: str) -> str:
    try:
        return _serialize.dumps(value)
    except _serialize.UnserializableValue as exc:
        raise SerializationError(
            f"{what} cannot be journaled: {exc.type_name} at {exc.path or 'the top level'}"
            f"{exc.reason}"
        ) from None


# -- approvals -----------------------------------------------------------------------------


def wait_for_approval(
    name: str, timeout: float | dt.timedelta | None = None, details: Any = None
) -> Approval:
    """Ask a human to approve or reject, and wait (unloaded) for the decision.

    The request, with ``details``, appears in ``engine.pending_approvals()`` and
    ``perdure approvals``; ``engine.approve(id, name, by=, comment=)`` or ``engine.reject``
    decides it.

    Args:
        name: the approval's name, unique within the workflow run.
        timeout: how long to wait; then the result has ``timed_out=True`` (escalate or fail).
        details: what the human needs to see to decide (journaled; JSON-friendly).

    Returns:
        The decision.

    Raises:
        SerializationError: ``details`` cannot be journaled (nothing is requested).
        ConfigurationError: ``name`` is empty or holds control characters or lone surrogates.
    """
    ctx = _in_workflow("wait_for_approval")
    validate_name(name, "approval name")
    _record_request(ctx, name, details)
    decision = receive(approval_topic(name), timeout)
    return _decision(ctx, name, decision)


async def wait_for_approval_async(
    name: str, timeout: float | dt.timedelta | None = None, details: Any = None
) -> Approval:
    """:func:`wait_for_approval` for async workflows."""
    ctx = _in_workflow("wait_for_approval_async")
    validate_name(name, "approval name")
    _record_request(ctx, name, details)
    decision = await receive_async(approval_topic(name), timeout)
    return _decision(ctx, name, decision)


def _record_request(ctx: WorkflowContext, name: str, details: Any) -> None:
    row = ApprovalRow(ctx.workflow_id, name, _encode(details, f"approval {name!r} details"),
                      "PENDING", time.time())  # fmt: skip
    spec = StepSpec("perdure.approval.request", lambda: ctx.store.request_approval(row), None,
                    True, retry=NO_RETRY)  # fmt: skip
    call_step_sync(spec, (), {})


def _decision(ctx: WorkflowContext, name: str, decision: Any) -> Approval:
    if decision is None:
        # The receive timed out; a decision may still have landed just before the request is
        # closed. The close step journals which, so a replay returns the same answer.
        spec = StepSpec("perdure.approval.timeout", lambda: _close(ctx, name), None, True,
                        retry=NO_RETRY)  # fmt: skip
        decision = call_step_sync(spec, (), {})
        if decision is None:
            return Approval(name, approved=False, timed_out=True)
    return Approval(
        name,
        approved=bool(decision["approved"]),
        by=decision.get("by"),
        comment=decision.get("comment"),
        at=decision.get("at"),
    )


def _close(ctx: WorkflowContext, name: str) -> dict[str, Any] | None:
    row = ctx.store.close_approval(ctx.workflow_id, name, "TIMED_OUT")
    if row is None or row.status not in ("APPROVED", "REJECTED"):
        return None
    at = None if row.decided_at is None else dt.datetime.fromtimestamp(row.decided_at, dt.UTC)
    return {"approved": row.status == "APPROVED", "by": row.decided_by, "comment": row.comment,
            "at": at}  # fmt: skip


def decision_message(approved: bool, by: str | None, comment: str | None) -> str:
    """The message an approval decision is delivered as."""
    return _serialize.dumps({"approved": approved, "by": by, "comment": comment,
                             "at": dt.datetime.now(dt.UTC)})  # fmt: skip
