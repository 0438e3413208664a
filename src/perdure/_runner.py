"""Running one workflow body: the outcome of a run, cancellation, and compensation (sagas).

The engine prepares a context and hands the body here; what comes back is the outcome to
store: SUCCESS with the result, ERROR with the exception, or CANCELLED. When the body fails
or is cancelled, the compensations it registered (``perdure.compensate``) run first, newest
first, as ordinary journaled steps: a crash in the middle of compensating replays the body to
the same point and resumes the compensations where they stopped.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from . import _context, _serialize
from ._context import WorkflowContext
from ._decorators import WorkflowSpec
from ._errors import (
    ConfigurationError,
    NonDeterminismError,
    PerdureError,
    WorkflowCancelled,
    WorkflowCancelledError,
    WorkflowSuspended,
)
from .store import WorkflowStatus

log = logging.getLogger("perdure")

Outcome = tuple[WorkflowStatus, str | None, str | None]


def compensate(step: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Register an undo step, to run if the workflow later fails or is cancelled.

    Call it right after the step it undoes succeeded. Compensations run newest first, each
    as a journaled step (with its own retry policy); one that fails is logged and the others
    still run. Outside a workflow this does nothing.

    Args:
        step: a function decorated with ``@perdure.step`` (async steps need an async
            workflow).
        *args, **kwargs: its arguments.

    Raises:
        ConfigurationError: ``step`` is not a step, or is async in a sync workflow.
    """
    ctx = _context.current()
    if ctx is None:
        return
    if getattr(step, "__perdure_step__", None) is None:
        raise ConfigurationError(
            f"perdure.compensate() needs a @perdure.step function, not {step!r}: the undo "
            "must be journaled so it runs once"
        )
    ctx.compensations.append((ctx.registration_key(), step, args, dict(kwargs)))


def run_sync(ctx: WorkflowContext, spec: WorkflowSpec, args: Any, kwargs: Any) -> Outcome:
    """Run a sync workflow body to its outcome (raises ``WorkflowInterrupted`` to stop)."""
    tokens = _context.activate(ctx)
    try:
        try:
            return ctx.final_outcome(spec.fn(*args, **kwargs))
        except WorkflowCancelled:
            _compensate_sync(ctx)
            return _cancelled(ctx)
        except Exception as exc:
            if _should_compensate(ctx, exc):
                _compensate_sync(ctx)
            return ctx.failed_outcome(exc)
    finally:
        _context.deactivate(tokens)


async def run_async(
    ctx: WorkflowContext, spec: WorkflowSpec, args: Any, kwargs: Any, closing: Callable[[], bool]
) -> Outcome:
    """Run an async workflow body to its outcome (raises ``WorkflowInterrupted`` or
    ``CancelledError`` when the engine stops it)."""
    tokens = _context.activate(ctx)
    try:
        try:
            return ctx.final_outcome(await spec.fn(*args, **kwargs))
        except WorkflowSuspended:
            await _settle_tasks(ctx)
            raise
        except (WorkflowCancelled, asyncio.CancelledError) as exc:
            if closing() or not ctx.cancel_requested:
                if isinstance(exc, asyncio.CancelledError) and not closing():
                    return ctx.failed_outcome(exc)  # the workflow's own cancellation
                raise
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.uncancel()
            await _compensate_async(ctx)
            return _cancelled(ctx)
        except Exception as exc:
            if _should_compensate(ctx, exc):
                await _compensate_async(ctx)
            return ctx.failed_outcome(exc)
    finally:
        _context.deactivate(tokens)


async def _settle_tasks(ctx: WorkflowContext) -> None:
    """Before unloading, let the workflow's other tasks reach their next step boundary (the
    latched suspension stops them there), so no step of theirs is left half done."""
    current = asyncio.current_task()
    pending = [task for task in ctx.tasks if task is not current and not task.done()]
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


def _should_compensate(ctx: WorkflowContext, exc: Exception) -> bool:
    # Changed code must not undo work on the strength of a journal it no longer matches.
    return bool(ctx.compensations) and not isinstance(exc, NonDeterminismError)


def _cancelled(ctx: WorkflowContext) -> Outcome:
    error = WorkflowCancelledError(f"workflow {ctx.workflow_id!r} was cancelled")
    return WorkflowStatus.CANCELLED, None, _serialize.dumps_error(error)


def _ordered(ctx: WorkflowContext) -> list[tuple[Any, Any, Any]]:
    """Compensations newest first, by where they were registered (not by when: branches
    interleave differently on replay)."""
    ordered = sorted(ctx.compensations, key=lambda c: c[0], reverse=True)
    return [(step, args, kwargs) for _, step, args, kwargs in ordered]


def _compensate_sync(ctx: WorkflowContext) -> None:
    ctx.begin_compensation()
    for step, args, kwargs in _ordered(ctx):
        if inspect.iscoroutinefunction(step):
            log.error("perdure: %r: async compensation %r skipped in a sync workflow",
                      ctx.workflow_id, step)  # fmt: skip
            continue
        try:
            step(*args, **kwargs)
        except (PerdureError, Exception) as exc:
            log.error("perdure: %r: compensation %s failed: %s", ctx.workflow_id, step, exc)


async def _compensate_async(ctx: WorkflowContext) -> None:
    ctx.begin_compensation()
    for step, args, kwargs in _ordered(ctx):
        try:
            result = step(*args, **kwargs)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            log.error("perdure: %r: compensation %s failed: %s", ctx.workflow_id, step, exc)
