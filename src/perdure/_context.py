"""The running workflow's context: journal positions, replay, and deterministic helpers.

A :class:`WorkflowContext` lives in a context variable while a workflow runs. Each step call
takes the next position; if the journal (read once, when the run starts) holds that position,
the recorded outcome is returned and the step body does not run. Otherwise the body runs and
its outcome is committed (one store write) before the call returns.

Sync and async steps share every decision here; they differ only in how the body is called
and how the single store write is made (directly, or on the I/O executor for async code).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random as _random
import time
import uuid as _uuid
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Executor
from contextvars import ContextVar
from typing import Any

from . import _serialize
from ._decorators import StepSpec
from ._errors import (
    NonDeterminismError,
    PerdureError,
    RecordedStepError,
    SerializationError,
    WorkflowInterrupted,
)
from .store import OwnershipLost, StepRow, StepStatus, Store, WorkflowStatus

_current: ContextVar[WorkflowContext | None] = ContextVar("perdure_workflow", default=None)
_in_step: ContextVar[bool] = ContextVar("perdure_in_step", default=False)


class WorkflowContext:
    """The state of one run of one workflow in this process.

    Args:
        workflow_id: the workflow's id.
        name: the workflow's registered name.
        journal: the steps recorded so far, read once when the run starts.
        store: where new steps are committed.
        owner: this worker's id, the fencing token for every write.
        stopping: tells whether the engine is shutting down (no new step may start).
        io: executor for store writes made from async code (None: write inline).
    """

    def __init__(
        self,
        workflow_id: str,
        name: str,
        journal: list[StepRow],
        store: Store,
        owner: str,
        stopping: Callable[[], bool],
        io: Executor | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.name = name
        self.store = store
        self.owner = owner
        self._journal: dict[int, StepRow] = {row.position: row for row in journal}
        self._stopping = stopping
        self._io = io
        self._next = 0
        self.replayed = 0
        self.executed = 0

    # -- positions and replay --------------------------------------------------------------

    def reserve(self) -> int:
        """Take the next journal position (in call order; never reused in this run)."""
        position = self._next
        self._next += 1
        return position

    def lookup(self, position: int, name: str) -> StepRow | None:
        """The recorded step at ``position``, or None if the run is past the journal.

        Raises:
            NonDeterminismError: a different step was recorded at this position.
        """
        row = self._journal.get(position)
        if row is not None and row.name != name:
            raise NonDeterminismError(self.workflow_id, position, row.name, name)
        return row

    def replay(self, row: StepRow, hint: Any) -> Any:
        """Return a recorded step's value, or raise its recorded exception again."""
        self.replayed += 1
        if row.status is StepStatus.SUCCESS:
            try:
                return _serialize.loads(row.output or "null", hint)
            except SerializationError as exc:
                raise SerializationError(f"{self._where(row.position, row.name)}: {exc}") from exc
        raise rebuild_error(row.error or "{}")

    def check_can_start_step(self) -> None:
        """Raise ``WorkflowInterrupted`` if the engine is stopping: no new step may start."""
        if self._stopping():
            raise WorkflowInterrupted(f"engine stopping; {self.workflow_id!r} resumes later")

    def check_complete(self) -> None:
        """At the end of a run: fail if the journal holds steps the code did not reach.

        Raises:
            NonDeterminismError: the code returned before a recorded position.
        """
        beyond = [p for p in self._journal if p >= self._next]
        if beyond:
            first = min(beyond)
            raise NonDeterminismError(self.workflow_id, first, self._journal[first].name, None)

    # -- recording -------------------------------------------------------------------------

    def success_row(self, position: int, name: str, value: Any, started: float) -> StepRow:
        """Build the journal entry for a step that returned ``value``.

        Raises:
            SerializationError: ``value`` cannot be journaled (names the step and the type).
        """
        try:
            output = _serialize.dumps(value)
        except _serialize.UnserializableValue as exc:
            raise SerializationError(
                f"{self._where(position, name)} returned a value perdure cannot journal: "
                f"{exc.type_name} at {exc.path or 'the top level'}{exc.reason}. Return JSON "
                "data, a dataclass, an Enum or a pydantic model; nothing was committed"
            ) from None
        return StepRow(
            self.workflow_id, position, name, StepStatus.SUCCESS, output, None, started, time.time()
        )

    def failure_row(self, position: int, name: str, exc: BaseException, started: float) -> StepRow:
        """Build the journal entry for a step that raised ``exc``."""
        error = _serialize.dumps_error(exc)
        return StepRow(
            self.workflow_id, position, name, StepStatus.ERROR, None, error, started, time.time()
        )

    def commit(self, row: StepRow) -> None:
        """Write one journal entry durably.

        Raises:
            WorkflowInterrupted: this worker no longer owns the workflow (or is stopping and
                the store is gone); the run must stop here and resume elsewhere.
        """
        try:
            self.store.append_step(row, self.owner)
        except OwnershipLost as exc:
            raise WorkflowInterrupted(str(exc)) from None
        except PerdureError:
            if self._stopping():
                raise WorkflowInterrupted("engine stopped before the step was committed") from None
            raise
        self.executed += 1

    async def commit_async(self, row: StepRow) -> None:
        """:meth:`commit` from async code: on the I/O executor, so the event loop never waits
        on an fsync; inline when no executor was given (commits that do not fsync are
        cheaper than the thread hop)."""
        if self._io is None:
            self.commit(row)
        else:
            await asyncio.get_running_loop().run_in_executor(self._io, self.commit, row)

    def final_outcome(self, result: Any) -> tuple[WorkflowStatus, str | None, str | None]:
        """(status, output, error) to store for a run that returned ``result``."""
        self.check_complete()
        try:
            return WorkflowStatus.SUCCESS, _serialize.dumps(result), None
        except _serialize.UnserializableValue as exc:
            error = SerializationError(
                f"workflow {self.workflow_id!r} ({self.name}) returned a value perdure cannot "
                f"journal: {exc.type_name} at {exc.path or 'the top level'}{exc.reason}"
            )
            return WorkflowStatus.ERROR, None, _serialize.dumps_error(error)

    def _where(self, position: int, name: str) -> str:
        return f"step {name!r} (position {position} of workflow {self.workflow_id!r})"


def rebuild_error(text: str) -> BaseException:
    """The recorded exception, rebuilt if its class is importable here, else a stand-in."""
    exc = _serialize.loads_error(text)
    if exc is None:
        exc = RecordedStepError(*_serialize.error_summary(text))
    return exc


def current() -> WorkflowContext | None:
    """The running workflow's context, or None outside a workflow (or inside a step)."""
    return None if _in_step.get() else _current.get()


def activate(ctx: WorkflowContext | None) -> Any:
    """Make ``ctx`` current; returns a token for :func:`deactivate`."""
    return _current.set(ctx)


def deactivate(token: Any) -> None:
    """Undo :func:`activate`."""
    _current.reset(token)


# -- step calls ----------------------------------------------------------------------------


def call_step_sync(spec: StepSpec, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """Run (or replay) a sync step call."""
    ctx = current()
    if ctx is None:
        return spec.fn(*args, **kwargs)
    position = ctx.reserve()
    row = ctx.lookup(position, spec.name)
    if row is not None:
        return ctx.replay(row, spec.return_hint())
    ctx.check_can_start_step()
    started = time.time()
    token = _in_step.set(True)
    try:
        value = spec.fn(*args, **kwargs)
    except Exception as exc:
        ctx.commit(ctx.failure_row(position, spec.name, exc, started))
        raise
    finally:
        _in_step.reset(token)
    ctx.commit(ctx.success_row(position, spec.name, value, started))
    return value


def call_step_async(
    spec: StepSpec, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Coroutine[Any, Any, Any]:
    """Take the step's position now (call order) and return the coroutine that runs it."""
    ctx = current()
    if ctx is None:
        return spec.fn(*args, **kwargs)  # type: ignore[no-any-return]
    return _run_step_async(ctx, ctx.reserve(), spec, args, kwargs)


async def _run_step_async(
    ctx: WorkflowContext,
    position: int,
    spec: StepSpec,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
) -> Any:
    row = ctx.lookup(position, spec.name)
    if row is not None:
        return ctx.replay(row, spec.return_hint())
    ctx.check_can_start_step()
    started = time.time()
    token = _in_step.set(True)
    try:
        value = await spec.fn(*args, **kwargs)
    except Exception as exc:
        await ctx.commit_async(ctx.failure_row(position, spec.name, exc, started))
        raise
    finally:
        _in_step.reset(token)
    await ctx.commit_async(ctx.success_row(position, spec.name, value, started))
    return value


# -- deterministic helpers -----------------------------------------------------------------


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_NOW = StepSpec("perdure.now", _utc_now, dt.datetime, True)
_RANDOM = StepSpec("perdure.random", _random.random, float, True)
_UUID4 = StepSpec("perdure.uuid4", _uuid.uuid4, _uuid.UUID, True)


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


def workflow_id() -> str:
    """The id of the running workflow.

    Raises:
        PerdureError: called outside a workflow.
    """
    ctx = _current.get()
    if ctx is None:
        raise PerdureError("perdure.workflow_id() was called outside a running workflow")
    return ctx.workflow_id
