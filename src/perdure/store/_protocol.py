"""The storage boundary: the ``Store`` protocol and the rows that cross it.

Stores speak in domain terms (a workflow, a journal step, a worker) and take and return the
frozen dataclasses below. Payloads (inputs, outputs, errors) cross as journal JSON text that
the engine encoded; a store never interprets them. Stores never import the engine.

Ownership: every unfinished workflow is owned by at most one worker (an engine instance),
under a :class:`Lease`: the owner's id and an epoch that grows with every claim. Writes that
only the owner may make (a step, the final result, a release) carry the lease and fail with
``OwnershipLost`` unless it is still the workflow's current lease: that is the fencing that
keeps a run which lost its workflow from committing anything after another took over, even if
the same worker later claims the workflow again.

Liveness: each worker's heartbeat row says until when it is alive (``expires_at``, set from
the worker's own lease length by the database's clock); its workflows become claimable when
that time passes, or when the claimer knows the worker's process is gone.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from .._errors import StoreError
from ._frozen import fast_init


class WorkflowStatus(StrEnum):
    """Where a workflow stands.

    ENQUEUED: waiting in a queue for a worker to admit it (see ``perdure.Queue``).
    PENDING: recorded, not running anywhere (never claimed, or released by a stopping engine).
    RUNNING: owned by a worker that runs it (or did, if that worker died: recovery takes it).
    WAITING: suspended on a timer, a message or an approval; no worker holds it.
    SUCCESS: finished with a result. ERROR: finished with an exception.
    CANCELLED: stopped by ``engine.cancel`` (its compensations ran).
    DEAD_LETTER: given up after too many recoveries (a poison workflow); never retried.
    """

    ENQUEUED = "ENQUEUED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"
    DEAD_LETTER = "DEAD_LETTER"

    @property
    def finished(self) -> bool:
        """True once the workflow will not run again (not ENQUEUED, PENDING, RUNNING or
        WAITING)."""
        return self not in _UNFINISHED


_UNFINISHED = frozenset(
    {WorkflowStatus.ENQUEUED, WorkflowStatus.PENDING, WorkflowStatus.RUNNING,
     WorkflowStatus.WAITING}
)  # fmt: skip


class StepStatus(StrEnum):
    """How a journaled step ended."""

    SUCCESS = "SUCCESS"
    ERROR = "ERROR"


def approval_topic(name: str) -> str:
    """The message topic an approval's decision is delivered on."""
    return f"perdure.approval:{name}"


class OwnershipLost(StoreError):
    """The writing worker no longer owns the workflow: another worker took it over."""


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """What a queue admits: see ``perdure.Queue``. None means no limit."""

    concurrency: int | None = None
    worker_concurrency: int | None = None
    rate_limit: tuple[int, float] | None = None


@dataclass(frozen=True, slots=True)
class RateGrant:
    """The answer of ``Store.take_rate``: the call recorded (``call_id``, and ``wait`` 0.0),
    or no room (``call_id`` None) and the seconds to ``wait`` before asking again."""

    call_id: int | None
    wait: float


@fast_init
@dataclass(frozen=True, slots=True)
class Lease:
    """The right to write a workflow's journal: its owner and the claim's epoch."""

    owner: str
    epoch: int


@fast_init
@dataclass(frozen=True, slots=True)
class WorkflowRow:
    """One workflow as stored. ``inputs``/``output``/``error`` are journal JSON text."""

    id: str
    name: str
    status: WorkflowStatus
    inputs: str
    output: str | None
    error: str | None
    owner: str | None
    created_at: float
    updated_at: float
    recoveries: int = 0
    epoch: int = 1
    cancel_requested: bool = False
    deadline_at: float | None = None
    stalls: int = 0
    wake_at: float | None = None
    wait_topic: str | None = None
    queue: str | None = None
    priority: int = 0
    #: the version of the code that started it (None: any version may run it)
    version: str | None = None
    #: a fork: the run it was copied from, and the journal position it re-executes from
    forked_from: str | None = None
    forked_at: int | None = None

    @property
    def lease(self) -> Lease | None:
        """The current lease, if an owner holds the workflow."""
        return None if self.owner is None else Lease(self.owner, self.epoch)


@fast_init
@dataclass(frozen=True, slots=True)
class StepRow:
    """One journal entry: the outcome of the step with replay key ``key`` of a workflow.

    ``key`` identifies the call on replay: the call's index for steps of the workflow's main
    line (``"0"``, ``"1"``...), prefixed with the task path for steps called in tasks the
    workflow started (``"t0/0"``). ``position`` orders entries by commit, for display.
    """

    workflow_id: str
    position: int
    key: str
    name: str
    status: StepStatus
    output: str | None
    error: str | None
    started_at: float
    finished_at: float
    attempts: int = 1
    #: what the call was made with (a model call's model, prompt and tools), JSON; or None
    fingerprint: str | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class AttemptRow:
    """A failed attempt of a step that was (or is being) retried.

    ``retry_at`` is when the next attempt may start (by the engine's clock): after a crash
    the backoff resumes with the time left.
    """

    workflow_id: str
    key: str
    attempt: int
    name: str
    error: str
    started_at: float
    failed_at: float
    retry_at: float


@dataclass(frozen=True, slots=True)
class ApprovalRow:
    """A request for a human decision made by a workflow (``details`` is journal JSON)."""

    workflow_id: str
    name: str
    details: str
    status: str  # PENDING, APPROVED, REJECTED, TIMED_OUT, CLOSED (the workflow ended first)
    requested_at: float
    decided_at: float | None = None
    decided_by: str | None = None
    comment: str | None = None
    workflow_name: str = ""


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """A live (or lately live) engine instance, known by its heartbeat.

    ``host`` identifies the machine and process namespace, so a pid check is meaningful only
    between workers with the same ``host``.
    """

    id: str
    host: str
    pid: int
    heartbeat_at: float = 0.0
    expires_at: float = 0.0


class Store(Protocol):
    """What the engine needs from a database. Every method is safe to call from any thread.

    Large payloads are the store's business: a step output, workflow inputs or result above
    the store's blob threshold is kept out of the journal row (see ``perdure.store._blobs``)
    and every method that returns rows returns them with the payload itself, so the engine
    never sees a blob reference. So is encryption at rest: a store opened with an
    ``Encryption`` encrypts every payload it writes and decrypts every payload it returns
    (``perdure.store._codec``), so the engine never sees ciphertext either.
    """

    def migrate(self) -> None:
        """Create or upgrade the schema to the version this code knows."""

    def database_time(self) -> float | None:
        """The database server's clock (seconds since the epoch), or None when the database
        shares this machine's clock (an embedded file)."""

    def subscribe(self, wake: Callable[[], None]) -> bool:
        """Have ``wake`` called (from any thread) when another process records something a
        worker may act on: a message, a decision, a cancellation, an enqueued workflow, a
        freed queue slot, released work. Returns False when the backend cannot notify (the
        engine then polls more often)."""

    def close(self) -> None:
        """Release connections. Later calls raise ``StoreUnavailableError``."""

    def create_workflow(self, row: WorkflowRow) -> tuple[WorkflowRow, bool]:
        """Insert ``row`` durably unless its id exists; return (stored row, created)."""

    def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        """Return the workflow with this id, or None."""

    def list_workflows(
        self,
        status: WorkflowStatus | None,
        name: str | None,
        limit: int,
        created_after: float | None = None,
    ) -> list[WorkflowRow]:
        """Newest first, filtered by status, name and creation time (at or after
        ``created_after``) when given."""

    def load_steps(self, workflow_id: str) -> list[StepRow]:
        """The workflow's journal, by position."""

    def append_step(self, row: StepRow, lease: Lease) -> None:
        """Commit one journal entry durably, if ``lease`` is the workflow's current lease.

        Raises:
            OwnershipLost: the lease is not current, or the key is taken.
        """

    def append_steps(self, entries: Sequence[tuple[StepRow, Lease]]) -> list[BaseException | None]:
        """Commit several journal entries (of any workflows) together, each fenced on its own
        lease, as :meth:`append_step` would one by one; what happened to each, in order:
        None (committed) or the exception ``append_step`` would have raised (``OwnershipLost``
        when its lease is not current or its key is taken). Returns only once the entries
        are durable. Stores commit concurrent writers' entries in shared transactions (group
        commit); this is how one caller hands over a batch it gathered itself.
        """

    def append_step_atomically(
        self, workflow_id: str, key: str, lease: Lease, body: Callable[[Any], StepRow]
    ) -> StepRow:
        """Journal a step whose own writes must commit with its entry (a transaction step).

        In one transaction: check that ``lease`` is current; if the step ``key`` is already
        journaled (a commit whose acknowledgement was lost), return that row without calling
        ``body``; else call ``body`` with this backend's connection (inside the transaction),
        insert the row it returns, and commit. An exception from ``body`` rolls everything
        back and propagates unchanged.

        Raises:
            OwnershipLost: the lease is not current.
        """

    def append_attempt(self, row: AttemptRow, lease: Lease) -> None:
        """Record a failed attempt durably, if ``lease`` is the workflow's current lease.

        Raises:
            OwnershipLost: the lease is not current, or this attempt is already recorded.
        """

    def load_attempts(self, workflow_id: str) -> list[AttemptRow]:
        """Every recorded failed attempt of the workflow, by key and attempt."""

    def load_run(self, workflow_id: str) -> tuple[list[StepRow], list[AttemptRow]]:
        """What a run needs to resume: ``load_steps`` and ``load_attempts`` together, in one
        round trip where the database allows (a resumption pays it once per workflow)."""

    def suspend_workflow(
        self, workflow_id: str, lease: Lease, wake_at: float | None, topic: str | None
    ) -> None:
        """Unload a waiting workflow: WAITING, no owner, until ``wake_at`` (engine clock) or a
        message on ``topic``, if ``lease`` is current.

        Raises:
            OwnershipLost: the lease is not current.
        """

    def claim_ready(
        self,
        worker_id: str,
        names: Collection[str],
        now: float,
        limit: int,
        versions: Collection[str] | None = None,
    ) -> list[WorkflowRow]:
        """Take WAITING workflows that can go on: timer due (``wake_at <= now``), a message
        on their topic, or a cancellation asked. They become RUNNING under a new lease.
        ``versions``: only workflows of these code versions (or of none recorded); None:
        any version."""

    def next_wake(
        self, names: Collection[str], versions: Collection[str] | None = None
    ) -> float | None:
        """The earliest ``wake_at`` among WAITING workflows of these names and versions (as
        in :meth:`claim_ready`); None if none."""

    def dequeue(
        self,
        worker_id: str,
        queue: str,
        names: Collection[str],
        limit: int,
        limits: QueueLimits,
        stamp: Mapping[str, str] | None = None,
    ) -> list[WorkflowRow]:
        """Take up to ``limit`` ENQUEUED workflows of ``queue`` (of these names) that the
        queue's limits admit now, lowest priority number first, then oldest; they become
        RUNNING under a new lease owned by ``worker_id``, and a workflow whose name is in
        ``stamp`` records that code version (it has run nothing yet: the version that takes
        it is the version that runs it).

        The limits hold across every worker of the database, atomically: a workflow taken
        off the queue holds a slot until it finishes (``limits.concurrency``), at most
        ``limits.worker_concurrency`` run on this worker, and at most
        ``limits.rate_limit[0]`` are taken off per ``limits.rate_limit[1]`` seconds
        (database clock).
        """

    def send_message(
        self, workflow_id: str, topic: str, payload: str, idempotency_key: str | None
    ) -> bool:
        """Queue a message for a workflow; False if that idempotency key was sent before."""

    def consume_message(
        self, workflow_id: str, topic: str, step: StepRow, lease: Lease
    ) -> str | None:
        """Atomically take the oldest unconsumed message on ``topic`` and journal it as
        ``step`` (its ``output`` replaced by the payload), fenced on ``lease``; return the
        payload. None (and nothing written) when no message is waiting.

        Raises:
            OwnershipLost: the lease is not current.
        """

    def set_event(self, workflow_id: str, key: str, value: str) -> None:
        """Publish (or replace) a workflow's event value."""

    def get_event(self, workflow_id: str, key: str) -> str | None:
        """A workflow's event value, or None."""

    def request_approval(self, row: ApprovalRow) -> None:
        """Record a pending approval (a no-op if it is already recorded)."""

    def decide_approval(
        self,
        workflow_id: str,
        name: str,
        status: str,
        by: str | None,
        comment: str | None,
        message: str,
    ) -> bool:
        """Decide a PENDING approval and queue ``message`` to the workflow on the approval's
        topic, in one transaction; False if there is no pending approval of that name."""

    def close_approval(self, workflow_id: str, name: str, status: str) -> ApprovalRow | None:
        """Mark a pending approval as ended without a decision (e.g. TIMED_OUT); return the
        row as it then is: a decision that landed just before stays, and is returned."""

    def list_approvals(self, pending_only: bool, limit: int) -> list[ApprovalRow]:
        """PENDING approvals oldest first, or (``pending_only`` false) all, newest first."""

    def request_cancel(self, workflow_id: str) -> WorkflowRow | None:
        """Flag an unfinished workflow for cancellation; return its row (None if unknown)."""

    def owned(self, worker_id: str) -> list[WorkflowRow]:
        """Unfinished workflows ``worker_id`` holds (PENDING or RUNNING: no other status has
        an owner)."""

    def cancel_requests(self, worker_id: str) -> list[str]:
        """Ids of unfinished workflows held by ``worker_id`` whose cancellation is asked."""

    def finish_workflow(
        self,
        workflow_id: str,
        lease: Lease,
        status: WorkflowStatus,
        output: str | None,
        error: str | None,
    ) -> None:
        """Record the final outcome durably and drop ownership, if ``lease`` is current.

        Raises:
            OwnershipLost: the lease is not current.
        """

    def reset_workflow(
        self, workflow_id: str, retry_failed_step: bool = False, version: str | None = None
    ) -> bool:
        """Make an ERROR, CANCELLED or DEAD_LETTER workflow runnable again: PENDING (back in
        its queue if it never left it), no owner, no outcome, no pending cancel, stalls
        cleared; with ``version``, it records that code version (the code resuming it).
        Its journal is untouched, unless ``retry_failed_step``: then, in the same
        transaction, the entry of the step whose failure ended the workflow (see
        ``perdure.store.failing_step_key``) is forgotten, with its failed attempts, so that
        step runs again when the workflow resumes. Nothing else is forgotten: every other
        step replays.

        Returns whether it was reset (False: unknown, or not in one of those states).
        """

    def release_workflow(self, workflow_id: str, lease: Lease, stalled: bool = False) -> bool:
        """Give one unfinished workflow back (PENDING, no owner) if ``lease`` is current.

        Returns whether it was released.
        """

    def heartbeat(self, worker: WorkerRow, lease_seconds: float) -> None:
        """Record that ``worker`` is alive for ``lease_seconds`` from now (database clock)."""

    def list_workers(self) -> list[WorkerRow]:
        """Every worker row, live or not."""

    def claim(
        self,
        worker_id: str,
        names: Collection[str],
        dead_workers: Sequence[str],
        limit: int,
        workflow_id: str | None = None,
        versions: Collection[str] | None = None,
    ) -> list[WorkflowRow]:
        """Take over unfinished workflows whose owner is gone, atomically.

        A workflow is claimable when its name is in ``names`` (its id is ``workflow_id`` and
        its code version in ``versions`` or unrecorded, when given) and its owner is NULL,
        is in ``dead_workers``, or has no worker row whose
        ``expires_at`` is still ahead. Claimed rows become RUNNING, owned by ``worker_id``,
        with a new epoch; ``recoveries`` grows by one for rows taken from another worker (not
        for rows a stopping worker released), and ``stalls`` counts such takeovers in a row
        with no new journal entry since the previous claim (it restarts at 1 on progress);
        a release with ``stalled=True`` (a run that crashed in-process) counts as one too.
        """

    def orphaned_names(self, worker_id: str, dead_workers: Sequence[str]) -> dict[str, int]:
        """Count claimable workflows by name, whatever their name (for reporting)."""

    def version_counts(self) -> list[tuple[str, str | None, int]]:
        """(name, code version, count) of unfinished workflows, by name then version."""

    def fork_workflow(self, row: WorkflowRow, steps: Sequence[StepRow]) -> tuple[WorkflowRow, bool]:
        """Create workflow ``row`` with ``steps`` as its journal, in one transaction (a fork:
        see ``Engine.fork``); return (stored row, created). If the id exists nothing is
        written and the existing row is returned."""

    def release(self, worker_id: str) -> int:
        """Give up every unfinished workflow ``worker_id`` owns (back to PENDING, no owner)
        and forget the worker. Returns how many workflows were released."""

    def forget_workers(self, worker_ids: Sequence[str]) -> None:
        """Delete worker rows that own nothing any more."""

    def take_rate(
        self, key: str, requests: int | None, tokens: int | None, per: float
    ) -> RateGrant:
        """Take room for one model call under the rate limit ``key`` (``"<provider>:<model>"``),
        atomically across every worker of the database, by the database's clock.

        There is room when the key is not blocked (see :meth:`block_rate`), fewer than
        ``requests`` calls were taken in the last ``per`` seconds, and the tokens charged in
        the last ``per`` seconds are fewer than ``tokens`` (None: no such limit). Then one
        call is recorded (0 tokens until :meth:`charge_rate`) and its id returned; otherwise
        nothing is written and the grant says how long until room may free. Rows of ``key``
        older than the window are deleted on the way.
        """

    def charge_rate(self, key: str, call_id: int, tokens: int) -> None:
        """Record the tokens a call taken by :meth:`take_rate` used (its reported usage); they
        count against ``key``'s token limit for ``per`` seconds from now. A call already
        pruned is ignored."""

    def block_rate(self, key: str, seconds: float) -> None:
        """Give ``key`` no room for ``seconds`` from now (database clock), for every worker: a
        provider's 429 with Retry-After. A block already reaching further is kept."""
