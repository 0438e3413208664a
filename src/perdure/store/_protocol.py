"""The storage boundary: the ``Store`` protocol and the rows that cross it.

Stores speak in domain terms (a workflow, a journal step, a worker) and take and return the
frozen dataclasses below. Payloads (inputs, outputs, errors) cross as journal JSON text that
the engine encoded; a store never interprets them. Stores never import the engine.

Ownership: every unfinished workflow is owned by at most one worker (an engine instance).
Writes that only the owner may make (a step, the final result) name the owner and fail with
``OwnershipLost`` when it no longer owns the workflow: that is the fencing that keeps a worker
which lost its lease from committing anything after another worker took over.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from .._errors import StoreError


class WorkflowStatus(StrEnum):
    """Where a workflow stands.

    PENDING: recorded, not running anywhere (never claimed, or released by a stopping engine).
    RUNNING: owned by a worker that runs it (or did, if that worker died: recovery takes it).
    SUCCESS: finished with a result. ERROR: finished with an exception.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"

    @property
    def finished(self) -> bool:
        """True for SUCCESS and ERROR: the workflow will not run again."""
        return self in (WorkflowStatus.SUCCESS, WorkflowStatus.ERROR)


class StepStatus(StrEnum):
    """How a journaled step ended."""

    SUCCESS = "SUCCESS"
    ERROR = "ERROR"


class OwnershipLost(StoreError):
    """The writing worker no longer owns the workflow: another worker took it over."""


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


@dataclass(frozen=True, slots=True)
class StepRow:
    """One journal entry: the outcome of the step at ``position`` of a workflow."""

    workflow_id: str
    position: int
    name: str
    status: StepStatus
    output: str | None
    error: str | None
    started_at: float
    finished_at: float
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """A live (or lately live) engine instance, known by its heartbeat."""

    id: str
    host: str
    pid: int
    heartbeat_at: float


class Store(Protocol):
    """What the engine needs from a database. Every method is safe to call from any thread."""

    def migrate(self) -> None:
        """Create or upgrade the schema to the version this code knows."""

    def close(self) -> None:
        """Release connections. Later calls raise ``StoreUnavailableError``."""

    def create_workflow(self, row: WorkflowRow) -> tuple[WorkflowRow, bool]:
        """Insert ``row`` durably unless its id exists; return (stored row, created)."""

    def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        """Return the workflow with this id, or None."""

    def list_workflows(
        self, status: WorkflowStatus | None, name: str | None, limit: int
    ) -> list[WorkflowRow]:
        """Newest first, filtered by status and name when given."""

    def load_steps(self, workflow_id: str) -> list[StepRow]:
        """The workflow's journal, by position."""

    def append_step(self, row: StepRow, owner: str) -> None:
        """Commit one journal entry durably, if ``owner`` still owns the workflow.

        Raises:
            OwnershipLost: ``owner`` does not own the workflow, or the position is taken.
        """

    def finish_workflow(
        self,
        workflow_id: str,
        owner: str,
        status: WorkflowStatus,
        output: str | None,
        error: str | None,
    ) -> None:
        """Record the final outcome durably and drop ownership, if ``owner`` owns it.

        Raises:
            OwnershipLost: ``owner`` does not own the workflow.
        """

    def heartbeat(self, worker: WorkerRow) -> None:
        """Record that ``worker`` is alive now (by the database's clock)."""

    def list_workers(self) -> list[WorkerRow]:
        """Every worker row, live or not."""

    def claim(
        self,
        worker_id: str,
        names: Collection[str],
        lease_seconds: float,
        dead_workers: Sequence[str],
        limit: int,
    ) -> list[WorkflowRow]:
        """Take over unfinished workflows whose owner is gone, atomically.

        A workflow is claimable when its name is in ``names`` and its owner is NULL, is in
        ``dead_workers``, or has no heartbeat newer than ``lease_seconds`` ago. Claimed rows
        become RUNNING, owned by ``worker_id``, with ``recoveries`` incremented.
        """

    def orphaned_names(
        self, worker_id: str, lease_seconds: float, dead_workers: Sequence[str]
    ) -> dict[str, int]:
        """Count claimable workflows by name, whatever their name (for reporting)."""

    def release(self, worker_id: str) -> int:
        """Give up every unfinished workflow ``worker_id`` owns (back to PENDING, no owner)
        and forget the worker. Returns how many workflows were released."""

    def forget_workers(self, worker_ids: Sequence[str]) -> None:
        """Delete worker rows that own nothing any more."""
