"""Admin operations: what an operator can do to the workflows of one database.

The ``perdure`` command and the HTTP API both go through :class:`Operations`, so the two never
disagree on what "resume" means or on what ``show`` reports. It speaks in the public records
(:class:`~perdure.WorkflowInfo`, :class:`~perdure.StepInfo`, ...) and JSON-ready dicts, and
works on a bare store (the CLI: no engine, so it never joins as a worker) or through an open
engine (``perdure serve``: the engine also runs what it starts or resumes).

Errors are perdure's own and map to stable codes (:func:`error_code`), which the CLI turns
into exit codes and the API into HTTP statuses.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import _admin, _fork, _signals
from ._errors import (
    ConfigurationError,
    SerializationError,
    StoreError,
    StoreUnavailableError,
    UnknownWorkflowError,
    WorkflowConflictError,
    WorkflowNotFound,
    WorkflowStateError,
)
from ._records import AttemptInfo, StepInfo, WorkflowInfo, validate_workflow_id
from ._signals import ApprovalInfo, ApprovalNotPending
from ._usage import REPLAY_EVENT, Usage, replay_saved, usage
from .store import StepRow, StepStatus, Store, WorkflowStatus, failing_step_key

if TYPE_CHECKING:
    from ._engine import Engine

#: keyword arguments ``Engine.start`` takes itself (a workflow's own go in ``args`` instead)
RESERVED_KWARGS = frozenset({"self", "fn", "id"})
#: ... and ``Engine.enqueue``
RESERVED_QUEUE_KWARGS = RESERVED_KWARGS | {"queue", "priority"}
#: statuses a workflow can be resumed or retried from
RESUMABLE = (WorkflowStatus.ERROR, WorkflowStatus.CANCELLED, WorkflowStatus.DEAD_LETTER)


class Operations:
    """The admin operations on one store (see the module docs).

    Args:
        store: the database's store.
        engine: an open engine on the same database, when this process is a worker: starts
            need it (the workflow must be registered here), and resumes run at once in it.
    """

    def __init__(self, store: Store, engine: Engine | None = None) -> None:
        self.store = store
        self.engine = engine

    # -- reading ---------------------------------------------------------------------------

    def list_workflows(
        self,
        status: WorkflowStatus | str | None = None,
        name: str | None = None,
        since: dt.datetime | None = None,
        limit: int = _admin.DEFAULT_LIMIT,
    ) -> list[WorkflowInfo]:
        """Workflows, newest first, filtered by status, exact name and creation time."""
        if limit < 1:
            raise ConfigurationError(f"limit must be at least 1, not {limit}")
        if since is not None and since.tzinfo is None:
            raise ConfigurationError(f"since must carry a time zone, not {since.isoformat()}")
        wanted = _admin.parse_status(status)
        after = None if since is None else since.timestamp()
        rows = self.store.list_workflows(wanted, name, limit, after)
        return [WorkflowInfo.from_row(row) for row in rows]

    def get(self, workflow_id: str) -> WorkflowInfo:
        """One workflow. Raises WorkflowNotFound."""
        return _admin.get_workflow(self.store, workflow_id)

    def describe(self, workflow_id: str) -> dict[str, Any]:
        """A workflow with its journal, failed attempts, steps waiting to be retried and
        token usage, as JSON-ready data (``perdure show --json`` and ``GET
        /api/v1/workflows/{id}``)."""
        info, steps, _, pending, used, saved = self.inspect(workflow_id)
        data = _admin.workflow_to_dict(info)
        data["steps"] = [_admin.step_to_dict(step) for step in steps]
        data["retrying"] = [_admin.retrying_to_dict(failures) for failures in pending]
        data["usage"] = {
            **usage_to_dict(used),
            "saved_by_replay": usage_to_dict(saved),
            "by_model": {m: usage_to_dict(u) for m, u in sorted(used.by_model.items())},
        }
        return data

    def inspect(
        self, workflow_id: str
    ) -> tuple[
        WorkflowInfo, list[StepInfo], list[AttemptInfo], list[list[AttemptInfo]], Usage, Usage
    ]:
        """A workflow, its steps, its failed attempts, the attempts of the steps waiting to
        be retried, the tokens its model calls used, and what replay saved."""
        info = self.get(workflow_id)
        # Attempts first: a step committed in between then counts as done, not as retrying.
        attempts = _admin.list_attempts(self.store, workflow_id)
        steps = _admin.list_steps(self.store, workflow_id)
        saved = replay_saved(self.store.get_event(workflow_id, REPLAY_EVENT))
        return info, steps, attempts, pending_retries(steps, attempts), usage(steps), saved

    def result(self, workflow_id: str) -> dict[str, Any]:
        """The workflow's status and, once it ended, its result or error, as JSON data."""
        info = self.get(workflow_id)
        data: dict[str, Any] = {"id": info.id, "status": info.status.value}
        if info.status is WorkflowStatus.SUCCESS:
            data["output"] = _admin.to_jsonable(info.output)
        elif info.error is not None:
            data["error"] = {"type": info.error.type, "message": info.error.message}
        return data

    def approvals(self, pending_only: bool = True, limit: int = 100) -> list[ApprovalInfo]:
        """Approvals, newest first: only those waiting for a decision unless told otherwise."""
        if limit < 1:
            raise ConfigurationError(f"limit must be at least 1, not {limit}")
        return _signals.list_approvals(self.store, pending_only, limit)

    def diff(self, left_id: str, right_id: str) -> dict[str, Any]:
        """Where two runs diverged: their journals compared entry by entry in position order
        (replay key, step name, status, recorded output and error), as JSON-ready data:
        ``common_steps`` (how many leading entries agree), ``divergence`` (None when the
        journals agree; else the position and each side's entry there, None on the side that
        ended), ``same_inputs``, each side's ``status``, and ``identical``.

        Raises:
            WorkflowNotFound: either workflow does not exist.
        """
        left, right = self.get(left_id), self.get(right_id)
        journals = [self.store.load_steps(left_id), self.store.load_steps(right_id)]
        common = 0
        for a, b in zip(*journals, strict=False):
            if _entry(a) != _entry(b):
                break
            common += 1
        divergence = None
        if common < max(len(j) for j in journals):
            sides = [j[common] if common < len(j) else None for j in journals]
            divergence = {
                "position": common,
                "left": None if sides[0] is None else _step_summary(sides[0]),
                "right": None if sides[1] is None else _step_summary(sides[1]),
            }
        same_inputs = (left.args, left.kwargs) == (right.args, right.kwargs)
        return {
            "left": left_id,
            "right": right_id,
            "same_inputs": same_inputs,
            "status": {"left": left.status.value, "right": right.status.value},
            "common_steps": common,
            "divergence": divergence,
            "identical": divergence is None and same_inputs and left.status == right.status,
        }

    # -- acting ----------------------------------------------------------------------------

    def start(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        workflow_id: str | None = None,
        queue: str | None = None,
    ) -> WorkflowInfo:
        """Start (or, with ``queue``, enqueue) a workflow registered in this process.

        Raises:
            ConfigurationError: no engine here (start needs the workflow's code).
            UnknownWorkflowError: no workflow of that name is registered here.
            WorkflowConflictError: the id exists with another name or other inputs.
        """
        if self.engine is None:
            raise ConfigurationError(
                "starting a workflow needs its code: run the server with --app MODULE so the "
                "workflow is registered in it"
            )
        taken = RESERVED_QUEUE_KWARGS if queue is not None else RESERVED_KWARGS
        clash = sorted(taken & set(kwargs or {}))
        if clash:
            raise ConfigurationError(
                f"workflow argument {clash[0]!r} cannot be passed by keyword here (the name is "
                "taken by the start call itself): pass it positionally in args"
            )
        if queue is not None:
            handle = self.engine.enqueue(queue, name, *args, id=workflow_id, **(kwargs or {}))
        else:
            handle = self.engine.start(name, *args, id=workflow_id, **(kwargs or {}))
        return self.get(handle.id)

    def cancel(self, workflow_id: str) -> WorkflowStatus:
        """Ask a workflow to stop (see :meth:`perdure.Engine.cancel`); returns its status when
        the request was recorded. A finished workflow is left as it is."""
        if self.engine is not None:
            return self.engine.cancel(workflow_id)
        row = self.store.request_cancel(validate_workflow_id(workflow_id))
        if row is None:
            raise WorkflowNotFound(workflow_id)
        return row.status

    def resume(self, workflow_id: str, retry_failed_step: bool = False) -> WorkflowInfo:
        """Run an ERROR, CANCELLED or DEAD_LETTER workflow again from its journal. With
        ``retry_failed_step``, the step whose failure ended it (:func:`failed_step`) is
        forgotten first, so that step runs again instead of replaying its failure; every
        other step replays.

        Raises:
            WorkflowNotFound: no such workflow.
            WorkflowStateError: it is not in one of those states.
        """
        info = self.get(workflow_id)
        if info.status not in RESUMABLE:
            raise WorkflowStateError(
                f"workflow {workflow_id!r} is {info.status.value}: only ERROR, CANCELLED and "
                "DEAD_LETTER workflows can be resumed or retried"
            )
        if self.engine is not None:
            self.engine.resume(workflow_id, retry_failed_step=retry_failed_step)
        elif not self.store.reset_workflow(workflow_id, retry_failed_step):
            raise WorkflowStateError(f"workflow {workflow_id!r} changed state meanwhile")
        return self.get(workflow_id)

    def fork(
        self,
        workflow_id: str,
        from_step: int,
        new_id: str | None = None,
        replace_output: Any = _fork.UNSET,
    ) -> WorkflowInfo:
        """Create a new run of a workflow that replays its journal before ``from_step`` and
        executes from there on (see :meth:`perdure.Engine.fork`); the original is only read.

        With an engine here, the engine forks it (and runs it at once when the workflow is
        registered here, under the engine's code version). Without one, the fork is recorded
        PENDING with the original's code version, and a worker running that version (or
        declaring it compatible) takes it at its next recovery sweep.

        Args:
            workflow_id: the run to fork, in any status.
            from_step: the first journal position the fork executes again.
            new_id: the fork's id (default: ``<id>-fork-<8 hex digits>``).
            replace_output: the value the entry at ``from_step`` records instead of its own;
                the fork then executes from ``from_step + 1``. Absent: no replacement.

        Returns:
            The fork's record.

        Raises:
            WorkflowNotFound: no such workflow.
            ConfigurationError: ``from_step`` is out of the journal's range, or ``new_id`` is
                not a valid id.
            SerializationError: ``replace_output`` cannot be journaled.
            WorkflowConflictError: ``new_id`` names another workflow.
        """
        if self.engine is not None:
            handle = self.engine.fork(workflow_id, from_step, new_id, replace_output)
            return self.get(handle.id)
        original = self.get(workflow_id)
        row, _ = _fork.fork(
            self.store, workflow_id, from_step, new_id=new_id, replace_output=replace_output,
            owner=None, version=original.version,
        )  # fmt: skip
        return WorkflowInfo.from_row(row)

    def send(
        self, workflow_id: str, topic: str, payload: Any, idempotency_key: str | None = None
    ) -> bool:
        """Queue a message for a workflow; False if a message with that key was sent before."""
        return _signals.send(self.store, workflow_id, topic, payload, idempotency_key)

    def decide(
        self,
        workflow_id: str,
        name: str,
        approved: bool,
        by: str | None = None,
        comment: str | None = None,
    ) -> None:
        """Approve or reject a pending approval. Raises ApprovalNotPending."""
        _signals.decide(self.store, workflow_id, name, approved, by, comment)


def failed_step(store: Store, workflow_id: str) -> StepRow | None:
    """The journal entry of the step whose failure ended the workflow (the one a retry runs
    again), or None if no step failure ended it."""
    workflow = store.get_workflow(workflow_id)
    if workflow is None:
        return None
    failed = sorted((row for row in store.load_steps(workflow_id)
                     if row.status is StepStatus.ERROR), key=lambda row: -row.position)  # fmt: skip
    key = failing_step_key(workflow.error, [(row.key, row.error) for row in failed])
    return next((row for row in failed if row.key == key), None)


def _entry(row: StepRow) -> tuple[Any, ...]:
    """What must agree for two journal entries to be the same step with the same outcome."""
    return row.key, row.name, row.status, row.output, row.error


def _step_summary(row: StepRow) -> dict[str, Any]:
    info = StepInfo.from_row(row, ())
    return {"position": row.position, "key": row.key, "name": row.name,
            "status": row.status.value, "output": _admin.to_jsonable(info.output),
            "error": None if info.error is None else
            {"type": info.error.type, "message": info.error.message}}  # fmt: skip


def pending_retries(
    steps: Sequence[StepInfo], attempts: Sequence[AttemptInfo]
) -> list[list[AttemptInfo]]:
    """The failed attempts of each step that has no journal entry yet (it waits for its next
    attempt, or waited when the workflow ended), in the order they first failed."""
    done = {s.key for s in steps}
    pending: dict[str, list[AttemptInfo]] = {}
    for attempt in attempts:
        if attempt.key not in done:
            pending.setdefault(attempt.key, []).append(attempt)
    return list(pending.values())


def usage_to_dict(used: Usage) -> dict[str, int]:
    """Token figures as JSON data."""
    return {"model_calls": used.calls, "input_tokens": used.input_tokens,
            "output_tokens": used.output_tokens}  # fmt: skip


#: stable error codes, most specific first: (exception class, code, HTTP status, CLI exit code)
ERROR_CODES: tuple[tuple[type[BaseException], str, int, int], ...] = (
    (WorkflowNotFound, "workflow_not_found", 404, 1),
    (ApprovalNotPending, "approval_not_pending", 409, 1),
    (UnknownWorkflowError, "unknown_workflow", 404, 1),
    (WorkflowConflictError, "workflow_conflict", 409, 1),
    (WorkflowStateError, "invalid_state", 409, 1),
    (SerializationError, "invalid_payload", 400, 2),
    (ConfigurationError, "invalid_request", 400, 2),
    (StoreUnavailableError, "store_unavailable", 503, 3),
    (StoreError, "store_error", 500, 3),
)


def error_code(exc: BaseException) -> tuple[str, int, int]:
    """The stable (code, HTTP status, CLI exit code) of an error an operation raised."""
    for cls, code, status, exit_code in ERROR_CODES:
        if isinstance(exc, cls):
            return code, status, exit_code
    return "error", 500, 1
