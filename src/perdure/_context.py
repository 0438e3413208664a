"""The running workflow's context: journal positions, replay, and deterministic helpers.

A :class:`WorkflowContext` lives in a context variable while a workflow runs. Each step call
takes the next replay key of its branch (the workflow's main line, or a task the workflow
started); if the journal (read once, when the run starts) holds that key, the recorded outcome
is returned and the step body does not run. Otherwise the body runs and its outcome is
committed (one store write) before the call returns.

Sync and async steps share every decision here; they differ only in how the body is called
and how the single store write is made (directly, or on the I/O executor for async code).
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import logging
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Executor
from contextvars import ContextVar
from typing import Any

from . import _serialize
from ._clock import Clock, SystemClock
from ._decorators import StepSpec
from ._errors import (
    CallChangedError,
    ConfigurationError,
    CorruptRecordError,
    DeadlineExceededError,
    NonDeterminismError,
    PatchRemovedError,
    PerdureError,
    RecordedStepError,
    SerializationError,
    WorkflowCancelled,
    WorkflowInterrupted,
    WorkflowSuspended,
)
from ._journal import JournalWriter, LoopCommits
from ._retry import DEFAULT_RETRY, RetryPolicy
from .store import AttemptRow, Lease, StepRow, StepStatus, Store, WorkflowStatus

#: journal keys of change markers (``perdure.patched``) start with this; they take no
#: position in a branch, so adding a ``patched()`` call moves no step's key
PATCH_PREFIX = "patch:"

log = logging.getLogger("perdure")

_current: ContextVar[WorkflowContext | None] = ContextVar("perdure_workflow", default=None)
#: the replay key of the step whose body is running (None outside step bodies)
_in_step: ContextVar[str | None] = ContextVar("perdure_in_step", default=None)
#: the name of the step whose attempt is running (None outside steps): log records carry it
_step_name: ContextVar[str | None] = ContextVar("perdure_step_name", default=None)
_branch: ContextVar[Branch | None] = ContextVar("perdure_branch", default=None)


class Branch:
    """A line of execution inside a workflow: the main line, or a task it started.

    Steps take replay keys from their branch's own counter, so tasks that run concurrently
    never take each other's keys, whatever order they run in. A task's branch is fixed when
    the task is created (creation order is deterministic: it is the workflow's code order).
    """

    __slots__ = ("children", "prefix", "seq")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.seq = 0
        self.children = 0

    def child(self) -> Branch:
        """The branch of the next task this branch creates."""
        branch = Branch(f"{self.prefix}t{self.children}/")
        self.children += 1
        return branch


#: types whose journal JSON decodes to an equal value of the same type (see ``first_value``)
_SCALARS = frozenset({str, int, bool, type(None)})


class WorkflowContext(JournalWriter):
    """The state of one run of one workflow in this process.

    Args:
        workflow_id: the workflow's id.
        name: the workflow's registered name.
        journal: the steps recorded so far, read once when the run starts.
        store: where new steps are committed.
        lease: this run's lease, the fencing token for every write.
        stopping: tells whether the engine is shutting down (no new step may start).
        io: executor for store writes made from async code (None: write inline).
        commits: the batcher of the loop the run's async code runs on (group commit), if any.
        clock: the engine's clock (backoff waits, retry times, deadlines).
        default_retry: the policy of steps that name none.
        attempts: failed attempts recorded so far (of steps being retried).
        deadline_at: when the workflow must have finished (clock time), or None.
        cancel_requested: whether cancellation was already asked when the run started.
    """

    def __init__(
        self,
        workflow_id: str,
        name: str,
        journal: list[StepRow],
        store: Store,
        lease: Lease,
        stopping: Callable[[], bool],
        io: Executor | None = None,
        *,
        commits: LoopCommits | None = None,
        clock: Clock | None = None,
        default_retry: RetryPolicy = DEFAULT_RETRY,
        attempts: list[AttemptRow] | None = None,
        deadline_at: float | None = None,
        cancel_requested: bool = False,
        suspend_after: float = 0.5,
        max_entry_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.workflow_id = workflow_id
        self.name = name
        self.store = store
        self.lease = lease
        self.clock: Clock = clock or SystemClock()
        self.default_retry = default_retry
        self.deadline_at = deadline_at
        self.cancel_requested = cancel_requested
        self.wake = threading.Event()  # interrupts a sync backoff wait (cancel, shutdown)
        self.compensating = False
        self.suspend_after = suspend_after
        self.max_entry_bytes = max_entry_bytes
        self.suspended: WorkflowSuspended | None = None  # latched: the run is unloading
        self.tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self.compensations: list[tuple[tuple[Any, ...], Any, tuple[Any, ...], dict[str, Any]]] = []
        self._attempts: dict[str, list[AttemptRow]] = {}
        for attempt in sorted(attempts or [], key=lambda a: a.attempt):
            self._attempts.setdefault(attempt.key, []).append(attempt)
        self.root = Branch("")
        _check_positions(workflow_id, journal)
        self._journal: dict[str, StepRow] = {row.key: row for row in journal}
        self._used: set[str] = set()
        self._stopping = stopping
        self._io = io
        self._commits = commits
        self._position = max((row.position for row in journal), default=-1) + 1
        self._positions: dict[str, int] = {}  # key -> the position its entry was given
        #: latched: a non-determinism, or a recorded entry that cannot be read back
        self._broken: PerdureError | None = None
        self._patches: dict[str, bool] = {}  # change marker key -> the branch taken
        #: calls replayed with another fingerprint than recorded (policy "warn"), by key
        self.call_changes: dict[str, CallChangedError] = {}
        #: the journal is a finished run's (a replay check): nothing is past it
        self.journal_complete = False
        self._late: DeadlineExceededError | None = None

    # -- keys and replay -------------------------------------------------------------------

    def reserve(self) -> str:
        """Take the next replay key of the calling branch (call order within the branch)."""
        branch = _branch.get() or self.root
        key = f"{branch.prefix}{branch.seq}"
        branch.seq += 1
        self._used.add(key)
        return key

    def lookup(self, key: str, name: str) -> StepRow | None:
        """The recorded step with this key, or None if the run is past the journal there.

        Raises:
            NonDeterminismError: a different step was recorded under this key (and every
                later call of this run raises it again: user code cannot swallow it).
        """
        if self._broken is not None:
            raise self._broken
        if self.suspended is not None:
            raise self.suspended  # unloading: no step runs (a finally, a sibling branch)
        row = self._journal.get(key)
        if row is not None and row.name != name:
            self._broken = NonDeterminismError(self.workflow_id, key, row.name, name)
            raise self._broken
        return row

    def replay(self, row: StepRow, hint: Any) -> Any:
        """Return a recorded step's value, or raise its recorded exception again.

        Raises:
            SerializationError: the entry cannot be read back (latched, see :meth:`decode`).
        """
        if row.status is StepStatus.SUCCESS:
            return self.decode(row, hint)
        if not _serialize.is_error_record(row.error):
            raise self._unreadable(row, "it records a failure but its error record is damaged")
        raise rebuild_error(row.error or "{}")

    def check_call(self, row: StepRow, spec: StepSpec) -> None:
        """Before a recorded call is replayed: compare the fingerprint it was recorded with
        (a model call's model, prompt and tools) with the current call's, and report a
        difference by the call's policy: logged (``"warn"``, once per call per run), raised
        (``"error"``: :class:`CallChangedError`, latched like non-determinism), or not at
        all (``"ignore"``). Calls recorded without a fingerprint are not compared."""
        current, recorded = spec.fingerprint, row.fingerprint
        if current is None or recorded is None or current == recorded:
            return
        if spec.on_change == "ignore":
            return
        changes = CallChangedError.describe(recorded, current)
        if not changes:
            return
        error = CallChangedError(self.workflow_id, row.key, row.name, changes)
        if spec.on_change == "error":
            self._broken = error
            raise error
        if row.key not in self.call_changes:
            self.call_changes[row.key] = error
            log.warning(
                "perdure: workflow %r: the call %r at position %s was recorded with other "
                "parameters than the code now uses (%s); its recorded answer is replayed. "
                "on_change='error' stops such runs instead; engine.fork(id, %d) asks again",
                self.workflow_id, row.name, row.key, "; ".join(changes), row.position,
                extra={"perdure_call_change": error},
            )  # fmt: skip

    def first_value(self, value: Any, row: StepRow, hint: Any) -> Any:
        """What a step that just returned ``value`` (journaled as ``row``) gives its caller:
        the value as a replay will rebuild it. A string, an int, a bool or None comes back
        from the journal as itself, so it is returned as it is; anything else is decoded
        from ``row``."""
        if type(value) in _SCALARS:
            return value
        return self.decode(row, hint)

    def decode(self, row: StepRow, hint: Any) -> Any:
        """A recorded step's value, rebuilt (the first run returns this too, not the original
        object, so the first run and every replay see the same value).

        Raises:
            SerializationError: the value cannot be rebuilt (a damaged row, a class unknown
                here). Latched like non-determinism: workflow code that catches it cannot
                go on with a value the journal does not hold; the run ends with it.
        """
        if row.output is None:
            raise self._unreadable(row, "it records a success but holds no value")
        try:
            return _serialize.loads(row.output, hint)
        except SerializationError as exc:
            raise self._unreadable(row, str(exc)) from exc

    def _unreadable(self, row: StepRow, why: str) -> SerializationError:
        """Latch (and return, to be raised) the error of an entry that cannot be read back."""
        error = SerializationError(f"{self._where(row.key, row.name)}: {why}")
        self._broken = error
        return error

    def attempts(self, key: str) -> list[AttemptRow]:
        """The failed attempts already journaled for the step with this key."""
        return self._attempts.get(key, [])

    def step_timeout(self, spec: StepSpec) -> float | None:
        """The time one attempt of ``spec`` may take: its timeout, capped by the deadline."""
        limit = spec.timeout
        if self.deadline_at is not None and not self.compensating:
            left = max(0.001, self.deadline_at - self.clock.time())
            limit = left if limit is None else min(limit, left)
        return limit

    def check_can_start_step(self) -> None:
        """Stop here if no new step attempt may start: the engine is stopping
        (``WorkflowInterrupted``), the workflow was cancelled (``WorkflowCancelled``), or
        its deadline passed (``DeadlineExceededError``, latched like non-determinism).
        Compensations still run after a cancellation or a missed deadline."""
        if self._stopping():
            raise WorkflowInterrupted(f"engine stopping; {self.workflow_id!r} resumes later")
        if self.compensating:
            return
        if self.cancel_requested:
            raise WorkflowCancelled(f"workflow {self.workflow_id!r} was cancelled")
        late = self._late is not None
        if late or (self.deadline_at is not None and self.clock.time() >= self.deadline_at):
            raise self.deadline_exceeded()

    def deadline_exceeded(self) -> DeadlineExceededError:
        """The (latched) error of a run past its deadline."""
        if self._late is None:
            when = dt.datetime.fromtimestamp(self.deadline_at or 0, dt.UTC).isoformat()
            self._late = DeadlineExceededError(
                f"workflow {self.workflow_id!r} ran past its deadline ({when})"
            )
        return self._late

    def request_cancel(self) -> None:
        """Ask this run to stop at its next step boundary or wait (thread-safe)."""
        self.cancel_requested = True
        self.wake.set()

    def suspend(self, wait: WorkflowSuspended) -> WorkflowSuspended:
        """Latch the run's suspension (the first wait wins) and return it, to be raised."""
        if self.suspended is None:
            self.suspended = wait
        return self.suspended

    def patched(self, change_id: str, deprecated: bool = False) -> bool:
        """Whether this run takes the new branch of change ``change_id`` (see
        :func:`perdure.patched`): True if the journal holds the change's marker, or if the run
        is past its journal here (new code is running: the marker is committed first);
        False if the run replays entries recorded by code without the change.

        Raises:
            NonDeterminismError: ``deprecated`` and the run needs the old branch.
        """
        key = f"{PATCH_PREFIX}{change_id}"
        self._used.add(key)
        if key in self._journal:
            return True
        decided = self._patches.get(key)
        if decided is not None:
            return decided
        branch = _branch.get() or self.root
        replaying = self.journal_complete or f"{branch.prefix}{branch.seq}" in self._journal
        if replaying and deprecated:
            self._broken = PatchRemovedError(self.workflow_id, key, change_id)
            raise self._broken
        if not replaying:
            started = self.clock.time()
            self.commit(self._row(key, "perdure.patched", StepStatus.SUCCESS,
                                  _serialize.dumps(change_id), None, started, 1))  # fmt: skip
        self._patches[key] = not replaying
        return not replaying

    def check_complete(self) -> None:
        """At the end of a run: fail if the journal holds steps the code did not reach.

        Raises:
            NonDeterminismError: the code returned before a recorded step.
            WorkflowSuspended: the run waits (the code swallowed the suspension).
        """
        if self._broken is not None:
            raise self._broken
        if self.suspended is not None:
            raise self.suspended
        missed = [
            row
            for key, row in self._journal.items()
            if key not in self._used and not key.startswith(PATCH_PREFIX)
        ]
        if missed:
            first = min(missed, key=lambda row: row.position)
            self._broken = NonDeterminismError(self.workflow_id, first.key, first.name, None)
            raise self._broken

    def registration_key(self) -> tuple[Any, ...]:
        """Where in the run a compensation is registered: the calling branch's path and the
        count of its step calls so far. Deterministic across replays, whatever the branches'
        interleaving, so compensations can run in an order a replay reproduces."""
        branch = _branch.get() or self.root
        return (*(_natural(part) for part in branch.prefix.split("/") if part), branch.seq)

    def begin_compensation(self) -> None:
        """Compensations take keys from their own branch (``c/0``, ``c/1``...), independent
        of where the body stopped, and are not cut short by the cancellation itself."""
        self.compensating = True
        self.wake.clear()
        _branch.set(Branch("c/"))

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

    def failed_outcome(self, exc: BaseException) -> tuple[WorkflowStatus, str | None, str | None]:
        """(status, output, error) for a run that raised ``exc``; a non-determinism found
        earlier in the run wins over whatever the code raised after it."""
        return WorkflowStatus.ERROR, None, _serialize.dumps_error(self._broken or self._late or exc)


def _check_positions(workflow_id: str, journal: list[StepRow]) -> None:
    """Refuse a journal whose positions are not distinct and non-negative: the engine never
    writes such a journal (no constraint of the schema forbids it), and forks, retries and
    ``list_steps`` address entries by position.

    Raises:
        CorruptRecordError: naming the rows.
    """
    seen: dict[int, str] = {}
    for row in journal:
        other = seen.setdefault(row.position, row.key)
        if row.position >= 0 and other == row.key:
            continue
        what = f"position {row.position}" + (f", as row {other!r} does" if other != row.key else "")
        raise CorruptRecordError(
            f"journal row {row.key!r} ({row.name}) of workflow {workflow_id!r} has {what}: "
            "the journal was altered outside perdure"
        )


def rebuild_error(text: str) -> BaseException:
    """The recorded exception, rebuilt if its class is importable here, else a stand-in."""
    exc = _serialize.loads_error(text)
    if exc is None:
        exc = RecordedStepError(*_serialize.error_summary(text))
    return exc


def current() -> WorkflowContext | None:
    """The running workflow's context, or None outside a workflow (or inside a step)."""
    return None if _in_step.get() is not None else _current.get()


def activate(ctx: WorkflowContext) -> tuple[Any, Any]:
    """Make ``ctx`` current, on its main line; returns tokens for :func:`deactivate`."""
    return _current.set(ctx), _branch.set(ctx.root)


def deactivate(tokens: tuple[Any, Any]) -> None:
    """Undo :func:`activate`."""
    _current.reset(tokens[0])
    _branch.reset(tokens[1])


def task_factory(previous: Any = None) -> Any:
    """An asyncio task factory giving each task a workflow creates its own :class:`Branch`.

    ``previous`` is the loop's earlier factory, which still creates the task.
    """

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        ctx = _current.get()
        owned = ctx is not None and _in_step.get() is None
        if ctx is not None and owned:
            parent = _branch.get() or ctx.root
            context = kwargs.get("context") or contextvars.copy_context()
            context.run(_branch.set, parent.child())
            kwargs["context"] = context
        if previous is not None:
            task = previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        if ctx is not None and owned:
            ctx.tasks.add(task)
        return task

    return factory


def _natural(part: str) -> tuple[int, int]:
    """A branch path element (``t3``) as a sortable pair."""
    digits = part.lstrip("t")
    return (0 if part.startswith("t") else 1, int(digits) if digits.isdigit() else 0)


# -- helpers -----------------------------------------------------------------------------


def idempotency_key() -> str:
    """A key for the running step's side effect, stable across its retries and across
    recovery in another process: ``"<workflow id>:<step key>"``. Pass it to an external API
    that deduplicates requests (a payment provider's ``Idempotency-Key``, say), so an attempt
    that ran but was not journaled before a crash is not applied twice.

    Raises:
        ConfigurationError: called outside a step running in a workflow.
    """
    key = _in_step.get()
    ctx = _current.get()
    if key is None or ctx is None:
        raise ConfigurationError(
            "perdure.idempotency_key() was called outside a step: call it in the body of a "
            "@perdure.step running in a workflow"
        )
    return f"{ctx.workflow_id}:{key}"


def workflow_id() -> str:
    """The id of the running workflow.

    Raises:
        PerdureError: called outside a workflow.
    """
    ctx = _current.get()
    if ctx is None:
        raise PerdureError("perdure.workflow_id() was called outside a running workflow")
    return ctx.workflow_id
