"""Journal writes of a running workflow: building entries and committing them, fenced.

:class:`JournalWriter` is the part of :class:`~perdure._context.WorkflowContext` that writes:
it turns a step's outcome into a journal entry (with its position, gap-free, and its call
fingerprint), and commits it through the store, fenced on the run's lease. Any failure of the
write (a lost lease, a store error, an unexpected exception) becomes ``WorkflowInterrupted``:
the run stops and the workflow resumes at that step; the workflow's code never sees it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from . import _failpoints, _serialize
from ._clock import Clock
from ._errors import PerdureError, SerializationError, StoreError, WorkflowInterrupted
from .store import AttemptRow, Lease, OwnershipLost, StepRow, StepStatus, Store
from .store._group import Outcome

log = logging.getLogger("perdure")


class BodyFailed(Exception):
    """Carries an exception raised by a ``@transaction`` body out of the store, so it is told
    apart from a failure of the journal write itself (which stops the run)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class JournalWriter:
    """Builds and commits a run's journal entries (a part of ``WorkflowContext``)."""

    workflow_id: str
    store: Store
    lease: Lease
    clock: Clock
    max_entry_bytes: int
    cancel_requested: bool
    _io: Executor | None
    _commits: LoopCommits | None
    _position: int
    _positions: dict[str, int]
    _stopping: Callable[[], bool]

    def _where(self, key: str, name: str) -> str:
        return f"step {name!r} (position {key} of workflow {self.workflow_id!r})"

    # -- recording -------------------------------------------------------------------------

    def success_row(
        self,
        key: str,
        name: str,
        value: Any,
        started: float,
        attempts: int = 1,
        fingerprint: str | None = None,
    ) -> StepRow:
        """Build the journal entry for a step that returned ``value``.

        Raises:
            SerializationError: ``value`` cannot be journaled (names the step and the type).
        """
        try:
            output = _serialize.dumps(value)
        except _serialize.UnserializableValue as exc:
            raise SerializationError(
                f"{self._where(key, name)} returned a value perdure cannot journal: "
                f"{exc.type_name} at {exc.path or 'the top level'}{exc.reason}. Return JSON "
                "data, a dataclass, an Enum or a pydantic model; nothing was committed"
            ) from None
        if len(output) > self.max_entry_bytes:
            raise SerializationError(
                f"{self._where(key, name)} returned {len(output):,} bytes of journal JSON, over "
                f"the {self.max_entry_bytes:,}-byte cap of one entry (Engine(max_entry_bytes=)): "
                "store the payload elsewhere (a file, a bucket) and return a reference to it; "
                "nothing was committed"
            )
        return self._row(key, name, StepStatus.SUCCESS, output, None, started, attempts,
                         fingerprint)  # fmt: skip

    def failure_row(
        self,
        key: str,
        name: str,
        exc: BaseException,
        started: float,
        attempts: int = 1,
        fingerprint: str | None = None,
    ) -> StepRow:
        """Build the journal entry for a step that raised ``exc``."""
        error = _serialize.dumps_error(exc)
        return self._row(key, name, StepStatus.ERROR, None, error, started, attempts,
                         fingerprint)  # fmt: skip

    def _row(
        self,
        key: str,
        name: str,
        status: StepStatus,
        out: str | None,
        err: str | None,
        started: float,
        attempts: int,
        fingerprint: str | None = None,
    ) -> StepRow:
        # A row built again for the same key (a transaction body retried by the store after
        # a lost connection) keeps its position: journal positions stay gap-free.
        position = self._positions.get(key)
        if position is None:
            position = self._positions[key] = self._position
            self._position += 1
        finished = self.clock.time()
        return StepRow(self.workflow_id, position, key, name, status, out, err, started,
                       finished, attempts, fingerprint)  # fmt: skip

    def commit(self, row: StepRow) -> None:
        """Write one journal entry durably.

        Raises:
            WorkflowInterrupted: the run must stop here and resume from the journal: this
                run's lease is no longer current, or the store failed (the workflow is
                released and resumes at this step). Store trouble never reaches user code.
        """
        try:
            if _failpoints.ARMED:
                _failpoints.hit("step.before_commit")
            self.store.append_step(row, self.lease)
            if _failpoints.ARMED:
                _failpoints.hit("step.after_commit")
        except Exception as exc:
            raise self._commit_failed(row, exc) from exc

    def _commit_failed(self, row: StepRow, exc: BaseException) -> WorkflowInterrupted:
        """What a failed journal write of ``row`` becomes: the run stops there."""
        if isinstance(exc, OwnershipLost):
            return WorkflowInterrupted(str(exc))
        where = f"the journal write for {self._where(row.key, row.name)}"
        if isinstance(exc, PerdureError):
            return WorkflowInterrupted(f"{where} failed ({exc}); the workflow resumes at this step")
        return self._write_failed(where, exc)

    def transact(self, key: str, body: Callable[[Any], StepRow]) -> StepRow:
        """Run ``body`` with a database connection inside the transaction that journals the
        row it returns (a ``@transaction`` step); the row as committed (or as journaled
        before, when an earlier commit's acknowledgement was lost). Fenced like
        :meth:`commit`; exceptions from ``body`` roll back and propagate unchanged."""
        try:
            if _failpoints.ARMED:
                _failpoints.hit("step.before_commit")
            row = self.store.append_step_atomically(self.workflow_id, key, self.lease, body)
            if _failpoints.ARMED:
                _failpoints.hit("step.after_commit")
            return row
        except OwnershipLost as exc:
            raise WorkflowInterrupted(str(exc)) from None
        except StoreError as exc:
            raise WorkflowInterrupted(
                f"the transaction of step {key} of workflow {self.workflow_id!r} failed "
                f"({exc}); the workflow resumes at this step"
            ) from exc
        except (BodyFailed, PerdureError):
            raise  # the body's own failure, or a result that cannot be journaled: the step's
        except Exception as exc:
            where = f"the transaction of step {key} of workflow {self.workflow_id!r}"
            raise self._write_failed(where, exc) from exc

    def consume(self, topic: str, step: StepRow) -> str | None:
        """Take the next message on ``topic`` and journal it as ``step`` (one transaction);
        the payload, or None if none is waiting. Fenced like :meth:`commit`."""
        try:
            if _failpoints.ARMED:
                _failpoints.hit("message.consume")
            payload = self.store.consume_message(self.workflow_id, topic, step, self.lease)
            if _failpoints.ARMED and payload is not None:
                _failpoints.hit("step.after_commit")
        except OwnershipLost as exc:
            raise WorkflowInterrupted(str(exc)) from None
        except PerdureError as exc:
            raise WorkflowInterrupted(f"receiving a message failed ({exc})") from exc
        except Exception as exc:
            where = f"receiving a message on {topic!r} in workflow {self.workflow_id!r}"
            raise self._write_failed(where, exc) from exc
        return payload

    def commit_attempt(self, row: AttemptRow) -> None:
        """Journal a failed attempt that will be retried (fenced like :meth:`commit`)."""
        try:
            self.store.append_attempt(row, self.lease)
        except OwnershipLost as exc:
            raise WorkflowInterrupted(str(exc)) from None
        except PerdureError as exc:
            raise WorkflowInterrupted(f"journaling a failed attempt failed ({exc})") from exc
        except Exception as exc:
            where = f"journaling failed attempt {row.attempt} of {self._where(row.key, row.name)}"
            raise self._write_failed(where, exc) from exc

    def _write_failed(self, what: str, exc: BaseException) -> WorkflowInterrupted:
        """A journal write raised something other than a ``PerdureError`` (a bug, an
        ``OSError`` from the blob files): it is the engine's failure, not the workflow's, so
        like a store failure it stops the run, and the workflow resumes at this step. It is
        logged with its traceback; the workflow's code never sees it."""
        log.error("perdure: %s raised an unexpected error; the workflow resumes there", what,
                  exc_info=exc)  # fmt: skip
        return WorkflowInterrupted(f"{what} failed ({exc!r}); the workflow resumes there")

    async def commit_attempt_async(self, row: AttemptRow) -> None:
        """:meth:`commit_attempt` from async code (on the I/O executor when there is one)."""
        if self._io is None:
            self.commit_attempt(row)
        else:
            await self._hop(self.commit_attempt, row)

    async def commit_async(self, row: StepRow) -> None:
        """:meth:`commit` from async code. On the loop the run was given a
        :class:`LoopCommits` for, while other workflows run there too, the entry joins the
        others written in the same pass of the loop (one transaction for all); otherwise it
        is written inline, or on the I/O executor when there is one."""
        commits = self._commits
        if commits is None or commits.alone() or not commits.owns_running_loop():
            if self._io is None:
                self.commit(row)
            else:
                await self._hop(self.commit, row)
            return
        try:
            if _failpoints.ARMED:
                _failpoints.hit("step.before_commit")
            outcome = await self._landing(commits.submit(row, self.lease))
            if outcome is not None:
                raise outcome
            if _failpoints.ARMED:
                _failpoints.hit("step.after_commit")
        except Exception as exc:
            raise self._commit_failed(row, exc) from exc

    async def _landing(self, written: asyncio.Future[Outcome]) -> Outcome:
        """Wait for a journal write handed to :class:`LoopCommits`; a cancellation of the
        workflow waits for it to land (as in :meth:`_hop`)."""
        try:
            return await asyncio.shield(written)
        except asyncio.CancelledError:
            if not self.cancel_requested or self._stopping():
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return await written

    async def _hop(self, write: Callable[[Any], None], row: Any) -> None:
        """Run a journal write on the I/O executor. A cancellation of the workflow arriving
        meanwhile waits for the write to land, so that the cancellation takes effect at the
        next step boundary, the same point a replay reaches (the engine stopping does not
        wait: the run resumes from whatever the journal holds)."""
        write_done = asyncio.get_running_loop().run_in_executor(self._io, write, row)
        try:
            await asyncio.shield(write_done)
        except asyncio.CancelledError:
            if not self.cancel_requested or self._stopping():
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await write_done


class LoopCommits:
    """The journal entries async workflows write during one pass of an event loop, committed
    together.

    Each entry's writer gets a future and waits on it; the first entry of a pass schedules a
    flush at the end of that pass (``call_soon``), which hands every entry gathered by then to
    ``store.append_steps`` as one batch: fifty workflows stepping at once share one
    transaction and one fsync, and a lone workflow waits one extra pass of the loop (a few
    microseconds, no thread). The flush runs inline on the loop (the engine's own loop, or
    any loop when commits do not fsync), or on ``io`` (an application's loop under
    ``AsyncEngine``, which must not block on an fsync): then one batch is in flight at a time
    and the entries arriving meanwhile ride the next. Each future's result is the entry's
    outcome (None, or why it was not written); nobody is released before its batch is
    durable.
    """

    def __init__(
        self,
        store: Store,
        io: Executor | None,
        loop: asyncio.AbstractEventLoop,
        in_flight: Callable[[], int],
    ) -> None:
        self._store = store
        self._in_flight_runs = in_flight
        self._io = io
        self._loop = loop
        self._pending: list[tuple[StepRow, Lease, asyncio.Future[Outcome]]] = []
        self._scheduled = False  # a flush is queued on the loop
        self._in_flight = False  # a batch is being written on ``io``

    def alone(self) -> bool:
        """Whether a single run is in flight in the engine: nothing to group its entries
        with, so they skip the extra pass of the loop (written as without a batcher)."""
        return self._in_flight_runs() < 2

    def owns_running_loop(self) -> bool:
        """Whether the calling coroutine runs on this batcher's loop."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def submit(self, row: StepRow, lease: Lease) -> asyncio.Future[Outcome]:
        """Queue ``row`` (from this batcher's loop); the future of its outcome."""
        written: asyncio.Future[Outcome] = self._loop.create_future()
        self._pending.append((row, lease, written))
        if not self._scheduled and not self._in_flight:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        return written

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        entries = [(row, lease) for row, lease, _ in batch]
        if self._io is None:
            try:
                outcomes = self._store.append_steps(entries)
            except Exception as exc:
                outcomes = [exc] * len(batch)
            _resolve(batch, outcomes)
            return
        self._in_flight = True
        try:
            writing = self._loop.run_in_executor(self._io, self._store.append_steps, entries)
        except RuntimeError as exc:  # the executor is shut down: the engine is stopping
            self._in_flight = False
            _resolve(batch, [exc] * len(batch))
            return
        writing.add_done_callback(lambda done: self._landed(batch, done))

    def _landed(
        self,
        batch: list[tuple[StepRow, Lease, asyncio.Future[Outcome]]],
        done: asyncio.Future[list[Outcome]],
    ) -> None:
        self._in_flight = False
        if done.cancelled():
            _resolve(batch, [asyncio.CancelledError()] * len(batch))
        elif (exc := done.exception()) is not None:
            _resolve(batch, [exc] * len(batch))
        else:
            _resolve(batch, done.result())
        if self._pending and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)


def _resolve(
    batch: list[tuple[StepRow, Lease, asyncio.Future[Outcome]]], outcomes: list[Outcome]
) -> None:
    for (_, _, written), outcome in zip(batch, outcomes, strict=True):
        if not written.done():
            written.set_result(outcome)
