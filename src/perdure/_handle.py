"""Handles on workflow runs: status and result, for sync and async callers.

A handle holds only the engine and the workflow id; it works for runs this process started,
runs another process started, and runs that moved between processes during recovery.
Waiting is event-driven for runs in this process and polls the store (1 ms growing to 100 ms)
for runs elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import Future
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
    from ._runs import Run

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
                local, value = _local_outcome(run)
                if local:
                    return value  # type: ignore[no-any-return]
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
            if run is not None and run.future is not None and not run.done.is_set():
                await _run_ended(run.future, _remaining(deadline))  # an async run: no polling
            local, value = _local_outcome(run)
            if local:
                return value  # type: ignore[no-any-return]
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
    return _outcome(row.id, row.name, row.status, row.output, row.error)


async def _run_ended(future: Future[Any], timeout: float | None) -> None:
    """Wait up to ``timeout`` seconds for a local async run to end (its task's future).
    Shielded: a caller giving up on the result does not cancel the workflow."""
    # the caller's deadline, or a run that ended badly: the store says the rest
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout)


def _local_outcome(run: Run | None) -> tuple[bool, Any]:
    """(True, the outcome) of a run that finished in this engine and stored its outcome (what
    reading its row back would give, without the read); (False, None) otherwise."""
    if run is None or run.finished is None or not run.done.is_set():
        return False, None
    name, (status, output, error) = run.finished
    return True, _outcome(run.workflow_id, name, status, output, error)


def _outcome(
    workflow_id: str, name: str, status: WorkflowStatus, output: str | None, error: str | None
) -> Any:
    spec = registered(name)
    if status is WorkflowStatus.SUCCESS:
        hint = spec.hints().get("return") if spec is not None else None
        try:
            if output is None:
                raise SerializationError("the row records a success but no result")
            return _serialize.loads(output, hint)
        except SerializationError as unreadable:
            raise SerializationError(
                f"the result of workflow {workflow_id!r} cannot be read: {unreadable}"
            ) from unreadable
    if status is WorkflowStatus.CANCELLED and error is None:  # cancelled in its queue
        raise WorkflowCancelledError(f"workflow {workflow_id!r} was cancelled before it started")
    exc = _serialize.loads_error(error or "{}")
    if exc is None:
        raise WorkflowFailedError(workflow_id, *_serialize.error_summary(error or "{}"))
    raise exc


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()
