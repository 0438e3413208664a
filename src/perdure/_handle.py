"""Handles on workflow runs: status and result, for sync and async callers.

A handle holds only the engine and the workflow id; it works for runs this process started,
runs another process started, and runs that moved between processes during recovery.
Waiting is event-driven for runs in this process and polls the store (1 ms growing to 100 ms)
for runs elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _serialize
from ._decorators import registered
from ._errors import (
    ResultTimeoutError,
    SerializationError,
    WorkflowCancelledError,
    WorkflowFailedError,
    WorkflowNotFound,
)
from ._records import WorkflowInfo
from .store import WorkflowRow, WorkflowStatus

if TYPE_CHECKING:
    from ._engine import Engine

R = TypeVar("R")

_FIRST_POLL = 0.001
_MAX_POLL = 0.1


class WorkflowHandle(Generic[R]):
    """A reference to one workflow run, from :meth:`Engine.start` or :meth:`Engine.handle`."""

    def __init__(self, engine: Engine, workflow_id: str) -> None:
        self._engine = engine
        self._id = workflow_id

    @property
    def id(self) -> str:
        """The workflow id."""
        return self._id

    def __repr__(self) -> str:
        return f"WorkflowHandle({self._id!r})"

    def status(self) -> WorkflowStatus:
        """The workflow's current status, read from the store.

        Raises:
            WorkflowNotFound: the workflow does not exist.
        """
        return self._row().status

    def info(self) -> WorkflowInfo:
        """The workflow's full record."""
        return WorkflowInfo.from_row(self._row())

    def result(self, timeout: float | None = None) -> R:
        """Wait for the workflow to finish and return its result.

        Args:
            timeout: seconds to wait; None waits as long as it takes.

        Returns:
            The workflow's return value (rebuilt from the journal if it finished elsewhere).

        Raises:
            The workflow's exception (rebuilt), or ``WorkflowFailedError`` when its class is
            not available here; ``ResultTimeoutError`` when ``timeout`` passes first;
            ``SerializationError`` (naming the workflow) when its stored result cannot be
            read back.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _FIRST_POLL
        while True:
            run = self._engine._local_run(self._id)
            if run is not None:
                run.done.wait(_remaining(deadline))
            row = self._row()
            if row.status.finished:
                return outcome(row)  # type: ignore[no-any-return]
            left = _remaining(deadline)
            if left is not None and left <= 0:
                raise ResultTimeoutError(
                    f"workflow {self._id!r} did not finish within {timeout} s (it is "
                    f"{row.status.value}); it goes on running"
                )
            time.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, _MAX_POLL)

    def _row(self) -> WorkflowRow:
        row = self._engine.store.get_workflow(self._id)
        if row is None:
            raise WorkflowNotFound(self._id)
        return row


class AsyncWorkflowHandle(Generic[R]):
    """The async twin of :class:`WorkflowHandle`, from :class:`~perdure.AsyncEngine`."""

    def __init__(self, engine: Engine, workflow_id: str) -> None:
        self._sync: WorkflowHandle[R] = WorkflowHandle(engine, workflow_id)
        self._engine = engine

    @property
    def id(self) -> str:
        """The workflow id."""
        return self._sync.id

    def __repr__(self) -> str:
        return f"AsyncWorkflowHandle({self.id!r})"

    async def status(self) -> WorkflowStatus:
        """The workflow's current status."""
        return await asyncio.to_thread(self._sync.status)

    async def info(self) -> WorkflowInfo:
        """The workflow's full record."""
        return await asyncio.to_thread(self._sync.info)

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the workflow to finish and return its result (see
        :meth:`WorkflowHandle.result`), without blocking the event loop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _FIRST_POLL
        while True:
            run = self._engine._local_run(self.id)
            if run is None or run.done.is_set():
                row = await asyncio.to_thread(self._sync._row)
                if row.status.finished:
                    return outcome(row)  # type: ignore[no-any-return]
            left = _remaining(deadline)
            if left is not None and left <= 0:
                raise ResultTimeoutError(f"workflow {self.id!r} did not finish within {timeout} s")
            await asyncio.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, _MAX_POLL if run is None else 0.01)


def outcome(row: WorkflowRow) -> Any:
    """The result of a finished workflow, or raise its exception."""
    spec = registered(row.name)
    if row.status is WorkflowStatus.SUCCESS:
        hint = spec.hints().get("return") if spec is not None else None
        try:
            if row.output is None:
                raise SerializationError("the row records a success but no result")
            return _serialize.loads(row.output, hint)
        except SerializationError as unreadable:
            raise SerializationError(
                f"the result of workflow {row.id!r} cannot be read: {unreadable}"
            ) from unreadable
    if row.status is WorkflowStatus.CANCELLED and row.error is None:  # cancelled in its queue
        raise WorkflowCancelledError(f"workflow {row.id!r} was cancelled before it started")
    exc = _serialize.loads_error(row.error or "{}")
    if exc is None:
        raise WorkflowFailedError(row.id, *_serialize.error_summary(row.error or "{}"))
    raise exc


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()
