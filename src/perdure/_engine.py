"""The Engine: starts, recovers and runs workflows. The only orchestrator.

Sync workflows run on a bounded pool of daemon threads; async workflows run as tasks on an
event loop (the engine's own loop thread for :class:`Engine`, the caller's loop for
:class:`~perdure.AsyncEngine`). Both go through the same context and the same store calls.

Ownership: each engine is a worker with an id and a heartbeat row. A workflow it starts or
claims is owned by it; every journal write is fenced on that ownership. A maintenance thread
renews the heartbeat and periodically claims workflows whose owner died (its heartbeat is
older than the lease, or its process is gone from this host) or that a stopping engine
released.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, overload

from . import _runner
from ._clock import Clock, DatabaseClock
from ._decorators import WorkflowSpec, registered, spec_of
from ._encryption import Encryption
from ._engine_ops import EngineOperations
from ._errors import (
    ConfigurationError,
    EngineClosedError,
    PerdureError,
    SerializationError,
    UnknownWorkflowError,
    WorkflowConflictError,
    WorkflowNotFound,
    WorkflowStateError,
)
from ._fork import UNSET, fork, fork_id_for
from ._handle import WorkflowHandle
from ._queues import Queue, resolve_queue
from ._records import (
    bind_inputs,
    encode_inputs,
    validate_workflow_id,
)
from ._recovery import Recovery
from ._retry import DEFAULT_RETRY, RetryPolicy
from ._runs import Run, Runner
from ._serialize import UnserializableValue
from ._versions import Compatible, Versions
from ._workers import this_worker
from .store import DEFAULT_BLOB_THRESHOLD, Lease, Store, WorkflowRow, WorkflowStatus, open_store

log = logging.getLogger("perdure")

R = TypeVar("R")
Outcome = _runner.Outcome


class Engine(Recovery, EngineOperations):
    """Runs durable workflows against one database.

    Use it as a context manager (``with Engine(url) as engine:``); entering it opens the
    database, registers this process as a worker and resumes unfinished workflows; leaving it
    stops promptly (see :meth:`close`).

    Args:
        url: the database, e.g. ``sqlite:///perdure.db`` (a file beside the program).
        durability: ``"full"`` (default: a committed step survives power loss) or
            ``"normal"`` (survives a process crash; saves an fsync per step on SQLite).
        max_threads: how many sync workflows run at once; more wait their turn.
        lease_seconds: how long a silent worker keeps its workflows before others take them.
        heartbeat_interval: how often this worker renews its heartbeat.
        recovery_interval: how often this worker looks for workflows to take over.
        shutdown_grace: seconds :meth:`close` gives in-flight steps to finish.
        recover: whether this engine takes over workflows it did not start itself: those of
            dead or stopped workers, and waiting ones whose timer or message came. False
            makes a client (a web app that only starts, sends and approves); its own waiting
            workflows then resume in a worker.
        retry: the retry policy of steps that name none (see ``docs/failures.md``).
        max_recoveries: takeovers after which a workflow that keeps killing its workers is
            dead-lettered (status DEAD_LETTER) instead of being run again.
        clock: the time source for backoff, retry times, timers and deadlines (tests pass
            ``perdure.testing.FakeClock()``). Default: this machine's clock, corrected to agree
            with the database server's clock on PostgreSQL.
        suspend_after: a wait longer than this (seconds) unloads the workflow: it holds no
            thread until its timer is due or its message arrives.
        poll_interval: how often the database is checked for messages, decisions and
            queued work from other processes. Default: 0.1 s on SQLite; 1 s on PostgreSQL,
            where those arrive at once by LISTEN/NOTIFY and the poll is only a fallback.
            (A send from this engine, and a due timer, wake it at once either way.)
        max_entry_bytes: the largest journal entry (a step's result as JSON) accepted; a
            bigger result fails the step with ``SerializationError`` before anything is
            committed, instead of a journal that later cannot be loaded back into memory.
        blob_threshold: a payload (a step's result, a workflow's inputs or result) whose
            journal JSON is larger than this many bytes is stored once in the blob store
            (files beside a SQLite database, a table on PostgreSQL) and the journal keeps a
            reference to it; reads fetch it back. See docs/serialization.md.
        version: the application version recorded by every workflow started here (say, a
            release number). Default: per workflow, a hash of its source and the names of
            its steps. See docs/change-safety.md.
        compatible_versions: versions of workflows started by other code that this engine
            resumes too (their journals replay with this code), or ``"any"``. Runs of other
            versions are left for a process running their version.
        encryption: encrypt every payload stored (inputs, results, errors, messages, events,
            approval details; blobs too) with AES-256-GCM: ``perdure.Encryption(keys={...},
            current=...)``, or ``perdure.Encryption.from_env()``. Default: stored in clear.
            See docs/security.md.
    """

    def __init__(
        self,
        url: str = "sqlite:///perdure.db",
        *,
        durability: Literal["full", "normal"] = "full",
        max_threads: int = 64,
        lease_seconds: float = 10.0,
        heartbeat_interval: float = 1.0,
        recovery_interval: float = 2.0,
        shutdown_grace: float = 2.0,
        recover: bool = True,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_recoveries: int = 5,
        clock: Clock | None = None,
        suspend_after: float = 0.5,
        poll_interval: float | None = None,
        max_entry_bytes: int = 32 * 1024 * 1024,
        blob_threshold: int = DEFAULT_BLOB_THRESHOLD,
        version: str | None = None,
        compatible_versions: Compatible = (),
        encryption: Encryption | None = None,
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if heartbeat_interval * 2 > lease_seconds:
            raise ConfigurationError("lease_seconds must be at least twice heartbeat_interval")
        self.url = url
        self.versions = Versions(version, compatible_versions)
        self._durability: Literal["full", "normal"] = durability
        self._blob_threshold = blob_threshold
        self._encryption = encryption
        self._lease = lease_seconds
        self._heartbeat_interval = heartbeat_interval
        self._recovery_interval = recovery_interval
        self._grace = shutdown_grace
        self._auto_recover = recover
        self._default_retry = retry
        self._max_recoveries = max_recoveries
        self.clock: Clock = clock or DatabaseClock()
        # Row timestamps (updated_at, heartbeats) are the database's time, whatever clock the
        # workflows get: a test's FakeClock jumps ahead, so comparisons with rows use this one.
        self._database_clock = self.clock if type(self.clock) is DatabaseClock \
            else DatabaseClock()  # fmt: skip
        self.worker = this_worker()
        self._closing = threading.Event()
        self._poll_interval = poll_interval
        self._wake = threading.Event()
        self._waker: threading.Thread | None = None
        self._runner = Runner(
            durability=durability, max_threads=max_threads, clock=self.clock, retry=retry,
            closing=self._closing, give_back=self._give_back, loop=_loop,
            suspend_after=suspend_after, max_entry_bytes=max_entry_bytes,
        )  # fmt: skip
        self._runner.on_suspend = self._wake.set
        self._runner.on_slot = self._slot_freed
        self._max_threads = max_threads
        self._backlog = False  # the last recovery sweep took all it could: take more soon
        self._dead: list[str] = []  # the dead workers the last sweep found (their backlog)
        self._claiming = threading.Lock()  # one claim of the backlog at a time
        self._store: Store | None = None
        self._maintenance: threading.Thread | None = None
        self._reported: dict[str, float] = {}
        # runs that stopped early, whose release failed: retried by the maintenance loop
        self._unreleased: dict[str, tuple[Lease, bool]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Engine:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> Engine:
        """Open the database, join as a worker, resume what is unfinished. Idempotent."""
        if self._store is not None:
            return self
        if self._closing.is_set():
            raise EngineClosedError("this engine was closed; create a new Engine")
        self._store = open_store(
            self.url, durability=self._durability, blob_threshold=self._blob_threshold,
            encryption=self._encryption,
        )  # fmt: skip
        try:
            notified = self._auto_recover and self._store.subscribe(self._wake.set)
            if self._poll_interval is None:
                self._poll_interval = 1.0 if notified else 0.1
            self._store.heartbeat(self.worker, self._lease)
            self._measure_clock()
            self._runner.start(self._store)
            if self._auto_recover:
                self._first_recovery()
        except BaseException:
            self.close()
            raise
        self._maintenance = threading.Thread(
            target=self._maintain, name="perdure-maintenance", daemon=True
        )
        self._maintenance.start()
        if self._auto_recover:
            self._waker = threading.Thread(
                target=self._wake_loop, name="perdure-waker", daemon=True
            )
            self._waker.start()
        return self

    def close(self) -> None:
        """Stop promptly: take no new work, let in-flight steps finish within the grace
        period, and release every unfinished workflow for the next engine to resume.

        A workflow that is waiting (or a step that outlives the grace period) does not hold
        the engine: its thread is abandoned, and fencing keeps it from writing anything.
        """
        if self._closing.is_set():
            return
        self._closing.set()
        if self._store is None:
            return
        self._wake.set()
        for thread in (self._maintenance, self._waker):
            if thread is not None:
                thread.join(timeout=self._grace)
        self._runner.drain(self._grace)
        # Another process may hold the database's write lock: give the release a bounded
        # time and move on (the lease then expires and another worker resumes the work).
        finisher = threading.Thread(target=self._release_all, name="perdure-release", daemon=True)
        finisher.start()
        finisher.join(timeout=max(self._grace, 0.5))
        self._runner.stop()

    def _measure_clock(self) -> None:
        """Align the database clock (the default workflow clock) with the database server's:
        timers set here must fire on time in a worker on another machine, whose own clock may
        be off, and row timestamps are compared with it."""
        self._database_clock.measure(self.store.database_time)
        if isinstance(self.clock, DatabaseClock) and self.clock is not self._database_clock:
            self.clock.measure(self.store.database_time)  # a subclass of it, given by the user

    def _release_all(self) -> None:
        assert self._store is not None
        try:
            released = self._store.release(self.worker.id)
            if released:
                log.info("perdure: released %d unfinished workflow(s) for resumption", released)
        except PerdureError as exc:
            log.warning("perdure: could not release workflows on close: %s", exc)
        self._store.close()

    @property
    def store(self) -> Store:
        """The open store.

        Raises:
            EngineClosedError: the engine is not open.
        """
        if self._store is None or self._closing.is_set():
            raise EngineClosedError(
                "the engine is not running: use `with perdure.Engine(...) as engine:` "
                "(or call engine.open())"
            )
        return self._store

    # -- starting --------------------------------------------------------------------------

    @overload
    def start(
        self, fn: Callable[..., Awaitable[R]], *args: Any, id: str | None = None, **kwargs: Any
    ) -> WorkflowHandle[R]: ...

    @overload
    def start(
        self, fn: Callable[..., R], *args: Any, id: str | None = None, **kwargs: Any
    ) -> WorkflowHandle[R]: ...

    @overload
    def start(
        self, fn: str, *args: Any, id: str | None = None, **kwargs: Any
    ) -> WorkflowHandle[Any]: ...

    def start(
        self, fn: Callable[..., Any] | str, *args: Any, id: str | None = None, **kwargs: Any
    ) -> WorkflowHandle[Any]:
        """Start a workflow; return once it and its inputs are durably recorded.

        Args:
            fn: a function decorated with ``@perdure.workflow``, or its registered name.
            *args, **kwargs: the workflow's arguments (journaled).
            id: the workflow id, an idempotency key (default: a new UUID).

        Returns:
            A handle on the run.

        Raises:
            WorkflowConflictError: ``id`` exists with another workflow or other inputs.
            SerializationError: an argument cannot be journaled.
            UnknownWorkflowError / ConfigurationError: ``fn`` is not a registered workflow.
            EngineClosedError: the engine is not running.
        """
        store = self.store
        spec = _resolve_spec(fn)
        row, args, kwargs = self._new_row(spec, id, args, kwargs)
        with self._runner.launching(row.id):  # the stray sweep leaves it alone meanwhile
            stored, created = store.create_workflow(row)
            if created:
                self._runner.launch(spec, stored, args, kwargs, fresh=True)
        if not created:
            _same_run(stored, row)
            if not stored.status.finished and stored.owner is None:
                self._claim_and_launch(row.id)  # released by a stopped engine: resume now
        return WorkflowHandle(self, row.id)

    def enqueue(
        self,
        queue: Queue | str,
        fn: Callable[..., Any] | str,
        *args: Any,
        id: str | None = None,
        priority: int | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[Any]:
        """Put a workflow in a queue; return once it is durably recorded (ENQUEUED).

        A worker that declares the queue takes it off the queue when the queue's limits
        (concurrency, per-worker concurrency, rate) allow, lowest ``priority`` first, and
        runs it like any workflow. Any process may enqueue, a client engine included.

        Args:
            queue: a :class:`perdure.Queue`, or its name.
            fn: a function decorated with ``@perdure.workflow``, or its registered name
                (which may be unknown here: a client without the workflow's code journals the
                arguments as given, and the worker binds them to the function).
            *args, **kwargs: the workflow's arguments (journaled).
            id: the workflow id; enqueueing the same id again (same workflow and inputs)
                returns the existing run instead of queueing a duplicate.
            priority: for a queue declared with ``priority=True``: lower runs first.

        Raises:
            WorkflowConflictError: ``id`` exists with another workflow or other inputs.
            ConfigurationError: a priority for a queue without ``priority=True``.
            SerializationError, UnknownWorkflowError, EngineClosedError: as :meth:`start`.
        """
        store = self.store
        name, declared = resolve_queue(queue)
        if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
            raise ConfigurationError(f"a priority is an integer, not {priority!r}")
        if priority is not None and declared is not None and not declared.priority:
            raise ConfigurationError(
                f"queue {name!r} is not a priority queue: declare it with priority=True"
            )
        spec = _resolve_spec(fn, elsewhere=True)
        row, _, _ = self._new_row(spec, id, args, kwargs)
        row = dataclasses.replace(row, status=WorkflowStatus.ENQUEUED, owner=None, queue=name,
                                  priority=priority or 0)  # fmt: skip
        stored, created = store.create_workflow(row)
        if created:
            self._wake.set()
        else:
            _same_run(stored, row)
        return WorkflowHandle(self, row.id)

    def _new_row(
        self, spec: WorkflowSpec, id: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[WorkflowRow, tuple[Any, ...], dict[str, Any]]:
        """The row of a new run owned by this engine, and its bound arguments."""
        workflow_id = validate_workflow_id(id) if id is not None else str(uuid.uuid4())
        args, kwargs = bind_inputs(spec, args, kwargs)
        try:
            inputs = encode_inputs(args, kwargs)
        except UnserializableValue as exc:
            raise SerializationError(
                f"workflow {spec.name!r} cannot journal its input {exc.path}: "
                f"{exc.type_name}{exc.reason}; pass JSON data, dataclasses, enums or pydantic "
                "models. Nothing was recorded."
            ) from None
        now = time.time()
        deadline_at = None if spec.deadline is None else self.clock.time() + spec.deadline
        version = None if spec.fn is _defined_elsewhere else self.versions.of(spec)
        row = WorkflowRow(
            workflow_id, spec.name, WorkflowStatus.RUNNING, inputs, None, None,
            self.worker.id, now, now, deadline_at=deadline_at, version=version,
        )  # fmt: skip
        return row, args, kwargs

    def run(self, fn: Callable[..., Any] | str, *args: Any, id: str | None = None,
            timeout: float | None = None, **kwargs: Any) -> Any:  # fmt: skip
        """Start a workflow (see :meth:`start`) and wait for its result.

        Raises:
            Whatever the workflow raised, or ``ResultTimeoutError`` after ``timeout`` seconds.
        """
        return self.start(fn, *args, id=id, **kwargs).result(timeout=timeout)

    def handle(self, workflow_id: str) -> WorkflowHandle[Any]:
        """A handle on an existing workflow.

        Raises:
            WorkflowNotFound: no such workflow.
        """
        self.get_workflow(workflow_id)
        return WorkflowHandle(self, workflow_id)

    def cancel(self, workflow_id: str) -> WorkflowStatus:
        """Cancel a workflow, from any process: it stops at its next step boundary or wait
        (an in-flight async step is cancelled; a sync one finishes first), runs its
        compensations, and ends CANCELLED. A finished workflow is left as it is.

        Returns:
            The workflow's status when the request was recorded.

        Raises:
            WorkflowNotFound: no such workflow.
            ConfigurationError: ``workflow_id`` is not a valid workflow id.
        """
        row = self.store.request_cancel(validate_workflow_id(workflow_id))
        if row is None:
            raise WorkflowNotFound(workflow_id)
        if not row.status.finished:
            self._signal_cancel(workflow_id)
        return row.status

    def resume(self, workflow_id: str, retry_failed_step: bool = False) -> WorkflowHandle[Any]:
        """Run a workflow that ended in ERROR, CANCELLED or DEAD_LETTER again, from its journal:
        recorded steps replay, the rest runs (after a code fix, say, or for a poison workflow
        whose cause is gone). A recorded step failure replays as a failure, unless
        ``retry_failed_step``: then the step whose failure ended the workflow is forgotten
        first (in the same transaction), and that step runs again; every other step replays.

        Resuming here is a deliberate choice of this code: the run adopts this engine's code
        version (see docs/change-safety.md), so this engine, and any worker of its version,
        runs it whatever version started it. (``perdure resume`` from the command line, with
        no code, keeps the run's version.)

        Raises:
            WorkflowNotFound: no such workflow.
            WorkflowStateError: it is running, pending or succeeded.
        """
        info = self.get_workflow(workflow_id)
        spec = registered(info.name)
        version = None if spec is None else self.versions.of(spec)
        if not self.store.reset_workflow(workflow_id, retry_failed_step, version):
            raise WorkflowStateError(
                f"workflow {workflow_id!r} is {info.status}: only ERROR, CANCELLED and "
                "DEAD_LETTER workflows can be resumed"
            )
        self._claim_and_launch(workflow_id)
        self._wake.set()  # back in its queue, if it never left it: the dispatcher takes it
        return WorkflowHandle(self, workflow_id)

    def fork(
        self,
        workflow_id: str,
        from_step: int,
        new_id: str | None = None,
        replace_output: Any = UNSET,
    ) -> WorkflowHandle[Any]:
        """Start a new run of a workflow that replays ``workflow_id``'s journal before
        position ``from_step`` and executes from there on: fix step N (its code, or its
        recorded answer with ``replace_output``) and go on, without running steps 0..N-1
        again. The original run is never written to.

        Args:
            workflow_id: the run to fork, in any status (a running one included: its journal
                as committed now).
            from_step: the first journal position to execute again (positions as
                ``perdure show`` and ``list_steps`` number them).
            new_id: the fork's id (default: ``<id>-fork-<8 hex digits>``).
            replace_output: a value recorded as the result of the entry at ``from_step``
                (a corrected model answer, a tool result); the fork goes on from the next
                position.

        Returns:
            A handle on the fork. It runs here when its workflow is registered here (under
            this engine's code version), else it waits for a worker that has it.

        Raises:
            WorkflowNotFound, ConfigurationError (``from_step`` out of range),
            SerializationError (``replace_output``), WorkflowConflictError (``new_id`` taken).
        """
        # the row (no inputs to decode); an invalid id is a ConfigurationError, as everywhere
        original = self.store.get_workflow(validate_workflow_id(workflow_id))
        if original is None:
            raise WorkflowNotFound(workflow_id)
        spec = registered(original.name)
        fork_id = new_id if new_id is not None else fork_id_for(workflow_id)
        with self._runner.launching(fork_id):  # owned once created: see start
            row, created = fork(
                self.store, workflow_id, from_step, new_id=fork_id,
                replace_output=replace_output, original=original,
                owner=self.worker.id if spec is not None else None,
                version=self.versions.of(spec) if spec is not None else original.version,
                deadline_at=None if spec is None or spec.deadline is None
                else self.clock.time() + spec.deadline,
            )  # fmt: skip
            if created and spec is not None:
                self._resume(row)
        if created and spec is None:
            self._wake.set()
        return WorkflowHandle(self, row.id)

    def _local_run(self, workflow_id: str) -> Run | None:
        return self._runner.local(workflow_id)

    def _signal_cancel(self, workflow_id: str) -> None:
        self._runner.signal_cancel(workflow_id)
        self._wake.set()  # a WAITING workflow is claimed to run its cancellation


def _same_run(stored: WorkflowRow, row: WorkflowRow) -> None:
    """Check that an existing workflow is the run ``row`` asks for (same name and inputs).

    Raises:
        WorkflowConflictError: it is another run.
    """
    if stored.name != row.name or stored.inputs != row.inputs:
        raise WorkflowConflictError(
            f"workflow id {row.id!r} already belongs to a run of {stored.name!r} "
            f"with {'other inputs' if stored.name == row.name else 'another workflow'}; "
            "an id names one run: pick a new id to start a new run"
        )


def _resolve_spec(fn: Callable[..., Any] | str, elsewhere: bool = False) -> WorkflowSpec:
    """The spec of a workflow given as a function or a name. ``elsewhere``: a name not
    registered here stands for a workflow whose code only the workers have."""
    if isinstance(fn, str):
        spec = registered(fn)
        if spec is None and elsewhere and fn:
            return WorkflowSpec(fn, _defined_elsewhere, is_async=False)
        if spec is None:
            raise UnknownWorkflowError(fn)
        return spec
    spec = spec_of(fn)
    if spec is None:
        raise ConfigurationError(
            f"{getattr(fn, '__qualname__', fn)!r} is not a workflow: decorate it with "
            "@perdure.workflow"
        )
    return spec


def _defined_elsewhere(*args: Any, **kwargs: Any) -> Any:
    """Stands for a workflow whose code is not in this process (never called)."""
    raise AssertionError("a workflow defined elsewhere cannot run here")
