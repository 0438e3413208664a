"""The engine's runner: where workflow runs execute, and how each run ends.

Sync workflows run on a bounded pool of daemon threads; async ones on an event loop (a
loop thread the runner owns, or the caller's loop under ``AsyncEngine``). Each run gets a
context (journal, failed attempts, lease), executes its body (``_runner``), and stores its
outcome fenced on its lease. A run that ends without storing an outcome gives its workflow
back so a recovery sweep resumes it. The :class:`~perdure.Engine` owns one runner and is the
only caller.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from . import _context, _failpoints, _runner, _tracing
from ._clock import Clock
from ._context import WorkflowContext
from ._decorators import WorkflowSpec
from ._errors import (
    CorruptRecordError,
    DeadLetteredError,
    EngineClosedError,
    MissingKeyError,
    PerdureError,
    WorkflowInterrupted,
    WorkflowSuspended,
)
from ._journal import LoopCommits
from ._retry import RetryPolicy
from ._serialize import dumps_error
from ._threads import DaemonPool
from ._usage import REPLAY_EVENT, note_replay
from .store import Lease, Store, WorkflowRow, WorkflowStatus

T = TypeVar("T")

log = logging.getLogger("perdure")

Outcome = _runner.Outcome


@dataclass
class Run:
    """A workflow running in this engine."""

    workflow_id: str
    done: threading.Event = field(default_factory=threading.Event)
    future: Future[Any] | None = None
    ctx: WorkflowContext | None = None
    fresh: bool = False  # just created: no journal to read
    queue: str | None = None  # the queue it was taken from: its end frees a slot
    caller: Any = None  # the OpenTelemetry context of whoever started it (first run only)
    trace: _tracing.RunSpan | None = None  # this run's span, when tracing is on
    #: (workflow name, outcome) once the outcome is stored: a local caller waiting for the
    #: result decodes it from here instead of reading the row back
    finished: tuple[str, Outcome] | None = None


class Runner:
    """Executes workflow runs for one engine.

    Args:
        durability: the store's durability ("full" makes async commits on a caller's loop
            hop to the I/O thread).
        max_threads: the cap on concurrently running sync workflows.
        clock: the engine's clock.
        retry: the default retry policy.
        closing: set when the engine stops.
        give_back: called with (workflow id, lease, crashed) for a run that ended without an
            outcome; ``crashed`` when it died on an engine-level error (counts as a stall).
        loop: the caller's event loop (AsyncEngine), or None to start a loop thread.
    """

    def __init__(
        self,
        *,
        durability: Literal["full", "normal"],
        max_threads: int,
        clock: Clock,
        retry: RetryPolicy,
        closing: threading.Event,
        give_back: Callable[[str, Lease, bool], None],
        loop: asyncio.AbstractEventLoop | None,
        suspend_after: float = 0.5,
        max_entry_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.store: Store | None = None
        self._durability = durability
        self._clock = clock
        self._retry = retry
        self._closing = closing
        self._give_back = give_back
        self._suspend_after = suspend_after
        self._max_entry_bytes = max_entry_bytes
        self._threads = DaemonPool(max_threads, "perdure-workflow")
        self._io = DaemonPool(1, "perdure-io")
        self._loop = loop
        self._loop_thread: threading.Thread | None = None
        #: the loop's group commit of async workflows' journal entries (set by ``start``)
        self._commits: LoopCommits | None = None
        self._runs: dict[str, Run] = {}
        #: workflows whose owned row is being committed here, their run not yet registered
        self._launching: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.on_suspend: Callable[[], None] | None = None
        #: called when a run ends (a slot is free), with whether it was taken from a queue
        self.on_slot: Callable[[bool], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, store: Store) -> None:
        """Start running against ``store`` (and start a loop thread if there is no loop)."""
        self.store = store
        if self._loop is not None:
            # an application's loop (AsyncEngine): durable commits go to the I/O thread
            io = self._io if self._durability == "full" else None
            self._commits = LoopCommits(store, io, self._loop, self.running)
            return
        loop = asyncio.new_event_loop()
        loop.set_task_factory(_context.task_factory())
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop_thread = threading.Thread(target=serve, name="perdure-loop", daemon=True)
        self._loop_thread.start()
        ready.wait()
        self._loop = loop
        self._commits = LoopCommits(store, None, loop, self.running)

    def drain(self, grace: float) -> None:
        """Give in-flight runs ``grace`` seconds, then cancel async ones; abandon the rest."""
        deadline = time.monotonic() + grace
        for run in self._snapshot():
            if run.ctx is not None:
                run.ctx.wake.set()  # a sync run in a backoff wait stops waiting
        for run in self._snapshot():
            run.done.wait(max(0.0, deadline - time.monotonic()))
        leftover = [run for run in self._snapshot() if not run.done.is_set()]
        for run in leftover:
            if run.future is not None:
                run.future.cancel()  # an async workflow: cancel its task
        for run in leftover:
            run.done.wait(0.2)
            run.done.set()  # waiters stop waiting on an abandoned run: the store says the rest

    def stop(self) -> None:
        """Stop the loop thread (if this runner owns one) and the pools; never waits long."""
        if self._loop_thread is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(timeout=1.0)
            if not self._loop_thread.is_alive():
                self._loop.close()
        self._threads.shutdown(wait=False)
        self._io.shutdown(wait=False)

    def _snapshot(self) -> list[Run]:
        with self._lock:
            return list(self._runs.values())

    def running(self) -> int:
        """How many runs this engine has in flight."""
        with self._lock:
            return len(self._runs)

    def local(self, workflow_id: str) -> Run | None:
        """The run of this workflow in this engine, if any."""
        with self._lock:
            return self._runs.get(workflow_id)

    @contextmanager
    def launching(self, workflow_id: str) -> Iterator[None]:
        """While the block runs, ``workflow_id`` counts as run here (:meth:`held`): around a
        start that commits a row owned by this engine and then registers its run."""
        with self._lock:
            self._launching[workflow_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._launching[workflow_id] -= 1
                if not self._launching[workflow_id]:
                    del self._launching[workflow_id]

    def held(self, workflow_id: str) -> bool:
        """Whether this engine runs ``workflow_id`` or is about to (see :meth:`launching`)."""
        with self._lock:
            return workflow_id in self._runs or workflow_id in self._launching

    def signal_cancel(self, workflow_id: str) -> None:
        """Make a local run stop at its next step boundary (and cancel its awaited step)."""
        run = self.local(workflow_id)
        if run is None or run.ctx is None or run.ctx.cancel_requested:
            return
        ctx = run.ctx
        ctx.request_cancel()
        task_future = run.future
        if task_future is not None and self._loop is not None:
            # An async workflow: cancel what it awaits now, unless it is compensating (an
            # undo in flight must finish). Checked on the loop, where compensating is set.
            def cancel_unless_compensating() -> None:
                if not ctx.compensating:
                    task_future.cancel()

            self._loop.call_soon_threadsafe(cancel_unless_compensating)

    # -- running ---------------------------------------------------------------------------

    def launch(
        self,
        spec: WorkflowSpec,
        row: WorkflowRow,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        fresh: bool = False,
    ) -> None:
        """Run a workflow this engine holds (``row.lease``); ``fresh`` when it was just
        created, so its journal is known to be empty and is not read.

        Raises:
            EngineClosedError: the engine stopped meanwhile (the workflow stays recorded).
        """
        lease = row.lease
        assert lease is not None
        run = Run(row.id, fresh=fresh, queue=row.queue)
        if fresh:
            run.caller = _tracing.caller_context()
        with self._lock:
            # A run still here for this id lost its lease (another worker took the workflow,
            # then this one claimed it back): it is fenced off and finishes on its own.
            self._runs[row.id] = run
        try:
            if spec.is_async:
                assert self._loop is not None
                coro = self._run_async(spec, row, lease, args, kwargs, run)
                run.future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            else:
                self._threads.submit(self._run_sync, spec, row, lease, args, kwargs, run)
        except RuntimeError:  # the pool or the loop is shut down: the engine is closing
            self._forget(run)
            raise EngineClosedError(
                f"the engine closed while starting {row.id!r}; it is recorded and resumes "
                "in the next engine"
            ) from None

    def _context(self, row: WorkflowRow, lease: Lease, run: Run) -> WorkflowContext:
        assert self.store is not None
        journal, attempts = ([], []) if run.fresh else self.store.load_run(row.id)
        if journal:
            self._note_replay(row.id, journal)
        # Async steps' journal entries are committed together per pass of the loop
        # (``LoopCommits``): inline on the runner's own loop (it runs only workflows) and
        # without fsync (durability "normal"), which cost less than a hop to an I/O thread; on
        # a caller's loop (AsyncEngine) a durable batch hops, so the application's loop never
        # waits on an fsync. Attempts and other rare writes keep the ``io`` path.
        hop = self._durability == "full" and self._loop_thread is None
        ctx = WorkflowContext(
            row.id, row.name, journal, self.store, lease, self._closing.is_set,
            self._io if hop else None, commits=self._commits, clock=self._clock,
            default_retry=self._retry,
            attempts=attempts, deadline_at=row.deadline_at,
            cancel_requested=row.cancel_requested, suspend_after=self._suspend_after,
            max_entry_bytes=self._max_entry_bytes,
        )  # fmt: skip
        run.ctx = ctx
        run.trace = _tracing.begin_run(
            self.store, row, fresh=run.fresh, replayed=len(journal), caller=run.caller
        )
        return ctx

    def _note_replay(self, workflow_id: str, journal: list[Any]) -> None:
        """Count the model calls this resumption replays instead of sending again."""
        assert self.store is not None
        try:
            store = self.store
            value = note_replay(lambda: store.get_event(workflow_id, REPLAY_EVENT), journal)
            if value is not None:
                self.store.set_event(workflow_id, REPLAY_EVENT, value)
        except PerdureError as exc:  # accounting must never stop a run
            log.warning("perdure: could not record replay savings of %r: %s", workflow_id, exc)

    def _run_sync(
        self,
        spec: WorkflowSpec,
        row: WorkflowRow,
        lease: Lease,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        run: Run,
    ) -> None:
        finished = crashed = False
        try:
            ctx = self._context(row, lease, run)
            outcome = _tracing.traced(run.trace, _runner.run_sync, ctx, spec, args, kwargs)
            self.finish(row.id, lease, outcome)
            run.finished = (row.name, outcome)
            finished = True
        except WorkflowSuspended as wait:
            finished = self._suspend(row.id, lease, wait)
        except WorkflowInterrupted:
            pass
        except CorruptRecordError as exc:
            finished = self._unreadable(row.id, lease, exc)
        except MissingKeyError as exc:  # this process lacks a key: given back, unstalled
            log.error("perdure: workflow %r cannot be run here: %s", row.id, exc)
        except BaseException:
            crashed = True
            self._log_crash(row.id)
        finally:
            self._end(run, lease, finished, crashed)

    async def _run_async(
        self,
        spec: WorkflowSpec,
        row: WorkflowRow,
        lease: Lease,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        run: Run,
    ) -> None:
        finished = crashed = False
        try:
            ctx = await self._off_loop(self._context, row, lease, run)
            try:
                body = _runner.run_async(ctx, spec, args, kwargs, self._closing.is_set)
                outcome = await _tracing.traced_async(run.trace, body)
            except WorkflowSuspended as wait:
                finished = await self._off_loop(self._suspend, row.id, lease, wait)
                return
            await self._off_loop(self.finish, row.id, lease, outcome)
            run.finished = (row.name, outcome)
            finished = True
        except (WorkflowInterrupted, asyncio.CancelledError):
            pass
        except CorruptRecordError as exc:
            finished = await self._off_loop(self._unreadable, row.id, lease, exc)
        except MissingKeyError as exc:  # this process lacks a key: given back, unstalled
            log.error("perdure: workflow %r cannot be run here: %s", row.id, exc)
        except BaseException:
            crashed = True
            self._log_crash(row.id)
        finally:
            self._end(run, lease, finished, crashed)

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """A store call of an async run (load its journal, store its outcome): inline on the
        runner's own loop, which runs nothing but workflows (their journal entries are
        written inline there too), and on the I/O thread on an application's loop
        (AsyncEngine), which must not wait on the database."""
        if self._loop_thread is not None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def finish(self, workflow_id: str, lease: Lease, outcome: Outcome) -> None:
        """Store a run's outcome, fenced on its lease.

        Raises:
            WorkflowInterrupted: the outcome could not be stored (the lease is gone, or the
                store failed); the workflow resumes elsewhere or later.
        """
        status, output, error = outcome
        assert self.store is not None
        try:
            if _failpoints.ARMED:
                _failpoints.hit("workflow.finish")
            self.store.finish_workflow(workflow_id, lease, status, output, error)
        except PerdureError as exc:
            raise WorkflowInterrupted(
                f"{workflow_id!r} could not record its outcome: {exc}"
            ) from exc

    def _suspend(self, workflow_id: str, lease: Lease, wait: WorkflowSuspended) -> bool:
        """Unload a waiting run: WAITING, no owner; returns whether it was stored."""
        assert self.store is not None
        try:
            self.store.suspend_workflow(workflow_id, lease, wait.wake_at, wait.topic)
        except PerdureError as exc:
            log.warning("perdure: could not suspend %r (%s); it resumes", workflow_id, exc)
            return False
        if self.on_suspend is not None:
            self.on_suspend()
        return True

    def _unreadable(self, workflow_id: str, lease: Lease, exc: CorruptRecordError) -> bool:
        """A run whose journal cannot be read stops for good (DEAD_LETTER, with the reason),
        instead of being retried into the poison-workflow limit: running it again cannot
        help, and no step may run on the strength of a damaged journal. The journal is left
        as it is; once it is repaired, ``engine.resume(id)`` runs the workflow again."""
        error = DeadLetteredError(
            f"workflow {workflow_id!r} cannot be resumed: its journal cannot be read ({exc}). "
            "Nothing was run or changed; repair the data, then engine.resume(id)"
        )
        log.error("perdure: %s", error)
        try:
            self.finish(workflow_id, lease, (WorkflowStatus.DEAD_LETTER, None, dumps_error(error)))
        except WorkflowInterrupted:
            return False
        return True

    def _log_crash(self, workflow_id: str) -> None:
        if self._closing.is_set():
            return  # the store went away under a run abandoned at shutdown: resumes later
        log.exception("perdure: workflow %r stopped on an engine error; it resumes", workflow_id)

    def _end(self, run: Run, lease: Lease, finished: bool, crashed: bool = False) -> None:
        """A run ended: if it left its workflow unfinished (interrupted, crashed), give the
        workflow back so a sweep resumes it, unless the whole engine is releasing."""
        if not finished and not self._closing.is_set():
            self._give_back(run.workflow_id, lease, crashed)
        self._forget(run)
        if self.on_slot is not None:
            self.on_slot(run.queue is not None)

    def _forget(self, run: Run) -> None:
        with self._lock:
            if self._runs.get(run.workflow_id) is run:
                del self._runs[run.workflow_id]
        run.done.set()
