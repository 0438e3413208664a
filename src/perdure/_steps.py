"""Step calls: replay or run, with durable retries and timeouts; the deterministic helpers.

A step call inside a workflow takes a key, returns the journaled outcome if there is one, and
otherwise runs attempts until one succeeds or the retry policy gives up. Every failed attempt
that will be retried is journaled (with when the next may start) before the backoff wait, so
a crash between attempts keeps the count and resumes the wait with the time left. The final
outcome is one journal entry. Sync and async calls share every decision (:func:`_plan`); they
differ only in how the body is called and how they wait.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import random as _random
import threading
import uuid as _uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from . import _serialize, _tracing
from ._context import WorkflowContext, _in_step, current
from ._decorators import StepSpec
from ._errors import (
    ConfigurationError,
    NonDeterminismError,
    StepFailedError,
    StepTimeoutError,
    WorkflowCancelled,
)
from ._journal import BodyFailed
from ._retry import NO_RETRY, decide
from .store import AttemptRow, StepRow


@dataclass
class _Retry:
    """Record ``attempt`` and try again once the clock reaches its ``retry_at``."""

    attempt: AttemptRow


@dataclass
class _GiveUp:
    """Commit ``row`` (the step's final ERROR entry) and raise ``error`` in the workflow."""

    row: StepRow
    error: BaseException


def _plan(
    ctx: WorkflowContext,
    key: str,
    spec: StepSpec,
    exc: Exception,
    earlier: list[AttemptRow],
    started: float,
) -> _Retry | _GiveUp:
    """What to do after an attempt raised ``exc``: retry (and when), or give up (with what)."""
    policy = spec.retry or ctx.default_retry
    attempt = len(earlier) + 1
    now = ctx.clock.time()
    first = earlier[0].started_at if earlier else started
    decision = decide(policy, exc, attempt, now - first, _random.random())
    retry_at = now + decision.delay
    final: BaseException = exc
    if decision.retry:
        if ctx.deadline_at is None or retry_at < ctx.deadline_at or ctx.compensating:
            error = _serialize.dumps_error(exc)
            return _Retry(AttemptRow(ctx.workflow_id, key, attempt, spec.name, error, started,
                                     now, retry_at))  # fmt: skip
        final = ctx.deadline_exceeded()  # the next attempt would start past the deadline
        final.__cause__ = exc
    elif attempt > 1:  # retried, then gave up: the workflow sees that the policy is spent
        type_name, message = _serialize.error_summary(_serialize.dumps_error(exc))
        final = StepFailedError(spec.name, attempt, type_name, message)
        final.__cause__ = exc
    row = ctx.failure_row(key, spec.name, final, started, attempt, spec.fingerprint)
    return _GiveUp(row, final)


def _earlier_attempts(ctx: WorkflowContext, key: str, spec: StepSpec) -> list[AttemptRow]:
    """The journaled failed attempts of this call, checked to belong to this step."""
    earlier = ctx.attempts(key)
    if earlier and earlier[0].name != spec.name:
        raise NonDeterminismError(ctx.workflow_id, key, earlier[0].name, spec.name)
    return earlier


# -- sync ----------------------------------------------------------------------------------


def call_step_sync(spec: StepSpec, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """Run (or replay) a sync step call."""
    ctx = current()
    if ctx is None:
        return spec.fn(*args, **kwargs)
    key = ctx.reserve()
    row = ctx.lookup(key, spec.name)
    if row is not None:
        ctx.check_call(row, spec)
        return ctx.replay(row, spec.return_hint())
    earlier = _earlier_attempts(ctx, key, spec)
    while True:
        if earlier:
            ctx.clock.sleep(earlier[-1].retry_at - ctx.clock.time(), ctx.wake)
        ctx.check_can_start_step()
        started = ctx.clock.time()
        with _tracing.attempt(ctx.workflow_id, key, spec.name, len(earlier) + 1) as attempt:
            token = _in_step.set(key)
            try:
                if spec.transactional:
                    committed = _run_transaction(ctx, key, spec, args, kwargs, started, earlier)
                    attempt.succeeded(committed.output)
                    return ctx.decode(committed, spec.return_hint())
                if spec.timeout is None and ctx.deadline_at is None:  # nothing to time
                    value = spec.fn(*args, **kwargs)
                else:
                    value = _invoke_sync(spec, args, kwargs, ctx.step_timeout(spec))
            except Exception as exc:
                if isinstance(exc, BodyFailed):
                    exc = exc.error
                elif spec.transactional:
                    raise  # not the body's failure (its result cannot be journaled, say)
                plan = _plan(ctx, key, spec, exc, earlier, started)
                attempt.failed(exc, retrying=isinstance(plan, _Retry))
                if isinstance(plan, _GiveUp):
                    ctx.commit(plan.row)
                    raise plan.error from exc
                ctx.commit_attempt(plan.attempt)
                earlier = [*earlier, plan.attempt]
                continue
            finally:
                _in_step.reset(token)
            row = ctx.success_row(
                key, spec.name, value, started, len(earlier) + 1, spec.fingerprint
            )
            ctx.commit(row)
            attempt.succeeded(row.output)
            return ctx.first_value(value, row, spec.return_hint())


def _run_transaction(
    ctx: WorkflowContext,
    key: str,
    spec: StepSpec,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    started: float,
    earlier: list[AttemptRow],
) -> StepRow:
    """One attempt of a ``@transaction`` step: its body runs on the store's connection inside
    the transaction that journals its result, so both commit or neither does."""

    def body(connection: Any) -> StepRow:
        token = _connection.set(connection)
        try:
            value = spec.fn(*args, **kwargs)
        except Exception as exc:
            raise BodyFailed(exc) from exc
        finally:
            _connection.reset(token)
        return ctx.success_row(key, spec.name, value, started, len(earlier) + 1, spec.fingerprint)

    row = ctx.transact(key, body)
    if row.name != spec.name:  # journaled by an earlier commit whose acknowledgement was lost
        raise NonDeterminismError(ctx.workflow_id, key, row.name, spec.name)
    return row


_connection: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "perdure_connection", default=None
)


def connection() -> Any:
    """The database connection of the running ``@perdure.transaction`` step: a
    ``sqlite3.Connection`` on SQLite, a ``psycopg.Connection`` on PostgreSQL, already inside
    the transaction that will journal the step's result. Run your statements on it; never
    commit or roll back (perdure does, with the journal entry).

    Raises:
        ConfigurationError: no transaction step is running in this context.
    """
    conn = _connection.get()
    if conn is None:
        raise ConfigurationError(
            "perdure.connection() was called outside a @perdure.transaction step running in "
            "a workflow"
        )
    return conn


def _invoke_sync(
    spec: StepSpec, args: tuple[Any, ...], kwargs: Mapping[str, Any], timeout: float | None
) -> Any:
    """Call the body; with a timeout, on a daemon thread that is abandoned if it overruns."""
    if timeout is None:
        return spec.fn(*args, **kwargs)
    outcome: list[Any] = []
    context = contextvars.copy_context()

    def attempt() -> None:
        try:
            outcome.append((True, context.run(spec.fn, *args, **kwargs)))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=attempt, name=f"perdure-step-{spec.name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise StepTimeoutError(
            f"step {spec.name!r} ran longer than its {timeout} s timeout; its thread is left "
            "behind and whatever it returns later is discarded"
        )
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


# -- async ---------------------------------------------------------------------------------


def call_step_async(
    spec: StepSpec, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Coroutine[Any, Any, Any]:
    """Take the step's key now (call order) and return the coroutine that runs it."""
    ctx = current()
    if ctx is None:
        return spec.fn(*args, **kwargs)  # type: ignore[no-any-return]
    return _run_step_async(ctx, ctx.reserve(), spec, args, kwargs)


async def _run_step_async(
    ctx: WorkflowContext,
    key: str,
    spec: StepSpec,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
) -> Any:
    row = ctx.lookup(key, spec.name)
    if row is not None:
        ctx.check_call(row, spec)
        return ctx.replay(row, spec.return_hint())
    earlier = _earlier_attempts(ctx, key, spec)
    while True:
        try:
            if earlier:
                await ctx.clock.sleep_async(earlier[-1].retry_at - ctx.clock.time())
        except asyncio.CancelledError:
            _cancelled_here(ctx)
        ctx.check_can_start_step()
        started = ctx.clock.time()
        with _tracing.attempt(ctx.workflow_id, key, spec.name, len(earlier) + 1) as attempt:
            token = _in_step.set(key)
            try:
                value = await _invoke_async(spec, args, kwargs, ctx.step_timeout(spec))
            except asyncio.CancelledError:
                _cancelled_here(ctx)
            except Exception as exc:
                plan = _plan(ctx, key, spec, exc, earlier, started)
                attempt.failed(exc, retrying=isinstance(plan, _Retry))
                if isinstance(plan, _GiveUp):
                    await ctx.commit_async(plan.row)
                    raise plan.error from exc
                await ctx.commit_attempt_async(plan.attempt)
                earlier = [*earlier, plan.attempt]
                continue
            finally:
                _in_step.reset(token)
            row = ctx.success_row(
                key, spec.name, value, started, len(earlier) + 1, spec.fingerprint
            )
            await ctx.commit_async(row)
            attempt.succeeded(row.output)
            return ctx.first_value(value, row, spec.return_hint())


def _cancelled_here(ctx: WorkflowContext) -> NoReturn:
    """An await of this step was cancelled: if the workflow's cancellation was asked, it
    takes effect here, at this step (nothing of it is journaled); otherwise (the engine is
    stopping) the cancellation goes on up.

    Raises:
        WorkflowCancelled or asyncio.CancelledError, always.
    """
    if not ctx.cancel_requested:
        raise asyncio.CancelledError
    _uncancel()
    raise WorkflowCancelled(f"workflow {ctx.workflow_id!r} was cancelled") from None


async def _invoke_async(
    spec: StepSpec, args: tuple[Any, ...], kwargs: Mapping[str, Any], timeout: float | None
) -> Any:
    if timeout is None:
        return await spec.fn(*args, **kwargs)
    task = asyncio.ensure_future(spec.fn(*args, **kwargs))
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except BaseException:
        task.cancel()  # the workflow was cancelled while waiting: so is the attempt
        raise
    if not done:
        task.cancel()
        raise StepTimeoutError(f"step {spec.name!r} ran longer than its {timeout} s timeout")
    return task.result()


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


# -- deterministic helpers -----------------------------------------------------------------


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_NOW = StepSpec("perdure.now", _utc_now, dt.datetime, True, retry=NO_RETRY)
_RANDOM = StepSpec("perdure.random", _random.random, float, True, retry=NO_RETRY)
_UUID4 = StepSpec("perdure.uuid4", _uuid.uuid4, _uuid.UUID, True, retry=NO_RETRY)


def now() -> dt.datetime:
    """The current time (UTC, timezone-aware), journaled: replay returns the same instant.

    Outside a workflow it is simply the current time.
    """
    return call_step_sync(_NOW, (), {})  # type: ignore[no-any-return]


def random() -> float:
    """A random float in [0, 1), journaled: replay returns the same number."""
    return call_step_sync(_RANDOM, (), {})  # type: ignore[no-any-return]


def uuid4() -> _uuid.UUID:
    """A random UUID, journaled: replay returns the same UUID."""
    return call_step_sync(_UUID4, (), {})  # type: ignore[no-any-return]


# -- changes of workflow code ----------------------------------------------------------------


def patched(change_id: str) -> bool:
    """Whether this run takes the new code of change ``change_id``: a compatible way to
    change a workflow while runs started by the old code are in flight.

    ``if perdure.patched("send-receipt"): new() else: old()``: a run that reaches this point
    while executing new code takes the new branch, and a marker recording that is
    committed first; a run replaying what older code recorded (its next step at this point
    is in the journal, with no marker) takes the old branch, so its replay still meets the
    steps it recorded. Both answers are deterministic: every replay of a run gets the same
    one. The marker takes no step position, so adding the call moves no other step.

    Once no run started before the change is unfinished, replace the ``if`` with
    :func:`deprecate_patch` and the new branch; later, remove that call too. See
    docs/change-safety.md. Outside a workflow (and inside a step body) it returns True.

    Raises:
        ConfigurationError: ``change_id`` is not a non-empty string of printable characters.
    """
    _check_change_id(change_id)
    ctx = current()
    return True if ctx is None else ctx.patched(change_id)


def deprecate_patch(change_id: str) -> None:
    """Mark that the old branch of change ``change_id`` is gone from the code (step two of
    removing a :func:`patched` call). New runs record the change's marker as with
    ``patched``; a run recorded without the change (it would need the old branch) fails at
    once with :class:`~perdure.PatchRemovedError`, before any step of the new branch runs.

    Raises:
        PatchRemovedError: inside such a run.
        ConfigurationError: ``change_id`` is not a non-empty string of printable characters.
    """
    _check_change_id(change_id)
    ctx = current()
    if ctx is not None:
        ctx.patched(change_id, deprecated=True)


def _check_change_id(change_id: str) -> None:
    if not isinstance(change_id, str) or not change_id or not change_id.isprintable():
        raise ConfigurationError(
            f"a change id is a non-empty string of printable characters, not {change_id!r}"
        )
    if len(change_id) > 200:
        raise ConfigurationError(f"a change id has at most 200 characters ({change_id[:20]}...)")
