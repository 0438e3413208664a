"""Row conversion shared by the SQL stores: domain rows to and from database tuples.

A row that cannot be read (an unknown status, a time that is not a number) raises
:class:`~perdure.CorruptRecordError` naming it, whatever the backend.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from .._errors import CorruptRecordError
from ._protocol import AttemptRow, StepRow, StepStatus, WorkflowRow, WorkflowStatus

WF_COLUMNS = (
    "id, name, status, inputs, output, error, owner, created_at, updated_at, recoveries, epoch, "
    "cancel_requested, deadline_at, stalls, wake_at, wait_topic, queue, priority, version, "
    "forked_from, forked_at"
)
APPROVAL_COLUMNS = (
    "approvals.workflow_id, approvals.name, details, approvals.status, requested_at, "
    "decided_at, decided_by, comment, workflows.name"
)
ATTEMPT_COLUMNS = "workflow_id, key, attempt, name, error, started_at, failed_at, retry_at"
#: placeholders for one row of ``STEP_COLUMNS`` (SQLite's; PostgreSQL's is ``PG_STEP_MARKS``)
STEP_MARKS = ",".join("?" * 11)
PG_STEP_MARKS = ", ".join(["%s"] * 11)
STEP_COLUMNS = (
    "workflow_id, position, key, name, status, output, error, started_at, finished_at, attempts, "
    "fingerprint"
)
UNFINISHED = "status IN ('ENQUEUED', 'PENDING', 'RUNNING', 'WAITING')"
#: a queued workflow that holds a slot of its queue (dequeued and not finished)
ACTIVE = "status IN ('PENDING', 'RUNNING', 'WAITING')"
#: the status a reset workflow takes: back in its queue if it never left it, else PENDING
RESET_STATUS = (
    "CASE WHEN queue IS NOT NULL AND dequeued_at IS NULL THEN 'ENQUEUED' ELSE 'PENDING' END"
)
RUNNABLE = "status IN ('PENDING', 'RUNNING')"
#: the only statuses a workflow with an owner can have (WAITING and ENQUEUED rows have none):
#: written exactly like the ``workflows_unfinished (owner)`` partial index's predicate, so
#: "what does this worker hold" reads that index instead of the whole table
OWNED = RUNNABLE


def versions_sql(
    params: dict[str, Any],
    versions: Collection[str] | None,
    column: str,
    mark: Callable[[str], str],
) -> str:
    """A condition keeping rows whose code version is in ``versions`` or unknown (NULL), as
    `` AND (...)`` with its values added to ``params`` (``mark`` turns a parameter name
    into the backend's placeholder); empty when ``versions`` is None (any version)."""
    if versions is None:
        return ""
    marks = []
    for i, version in enumerate(sorted(versions)):
        params[f"ver{i}"] = version
        marks.append(mark(f"ver{i}"))
    return f" AND ({column} IS NULL OR {column} IN ({', '.join(marks) or 'NULL'}))"


def stamp_sql(
    params: dict[str, Any], stamp: Mapping[str, str] | None, mark: Callable[[str], str]
) -> str:
    """``, version = ...``: the code version of each workflow name in ``stamp`` (a worker
    taking queued work records the version that runs it); empty without ``stamp``."""
    if not stamp:
        return ""
    cases = []
    for i, (name, version) in enumerate(sorted(stamp.items())):
        params[f"sn{i}"], params[f"sv{i}"] = name, version
        cases.append(f"WHEN {mark(f'sn{i}')} THEN {mark(f'sv{i}')}")
    return f", version = COALESCE(CASE name {' '.join(cases)} END, version)"


#: a step status as a plain string, for the journal writes: sqlite3 given the StrEnum itself
#: looks for an adapter first (a failed attribute lookup, about 2,000 instructions), and
#: ``.value`` is two Python calls; a dict lookup is cheaper than both
STATUS_TEXT: dict[StepStatus, str] = {status: status.value for status in StepStatus}


def workflow_values(row: WorkflowRow) -> tuple[Any, ...]:
    """The values of ``row`` in ``WF_COLUMNS`` order."""
    return (
        row.id,
        row.name,
        row.status.value,
        row.inputs,
        row.output,
        row.error,
        row.owner,
        row.created_at,
        row.updated_at,
        row.recoveries,
        row.epoch,
        int(row.cancel_requested),
        row.deadline_at,
        row.stalls,
        row.wake_at,
        row.wait_topic,
        row.queue,
        row.priority,
        row.version,
        row.forked_from,
        row.forked_at,
    )


def step_values(row: StepRow) -> tuple[Any, ...]:
    """The values of ``row`` in ``STEP_COLUMNS`` order."""
    return (
        row.workflow_id, row.position, row.key, row.name, row.status.value, row.output,
        row.error, row.started_at, row.finished_at, row.attempts, row.fingerprint,
    )  # fmt: skip


def workflow_row(r: Sequence[Any]) -> WorkflowRow:
    """A workflow row from a tuple in ``WF_COLUMNS`` order."""
    try:
        return WorkflowRow(
            id=r[0],
            name=r[1],
            status=WorkflowStatus(r[2]),
            inputs=r[3],
            output=r[4],
            error=r[5],
            owner=r[6],
            created_at=float(r[7]),
            updated_at=float(r[8]),
            recoveries=int(r[9]),
            epoch=int(r[10]),
            cancel_requested=bool(r[11]),
            deadline_at=None if r[12] is None else float(r[12]),
            stalls=int(r[13]),
            wake_at=None if r[14] is None else float(r[14]),
            wait_topic=r[15],
            queue=r[16],
            priority=int(r[17]),
            version=r[18],
            forked_from=r[19],
            forked_at=None if r[20] is None else int(r[20]),
        )
    except (ValueError, TypeError) as exc:
        raise CorruptRecordError(f"workflow row {r[0]!r} cannot be read: {exc}") from exc


def step_row(r: Sequence[Any]) -> StepRow:
    """A journal row from a tuple in ``STEP_COLUMNS`` order."""
    try:
        return StepRow(
            workflow_id=r[0],
            position=int(r[1]),
            key=str(r[2]),
            name=r[3],
            status=StepStatus(r[4]),
            output=r[5],
            error=r[6],
            started_at=float(r[7]),
            finished_at=float(r[8]),
            attempts=int(r[9]),
            fingerprint=r[10],
        )
    except (ValueError, TypeError) as exc:
        raise CorruptRecordError(
            f"journal row {r[2]!r} of workflow {r[0]!r} cannot be read: {exc}"
        ) from exc


#: the event a PostgreSQL reset leaves its token under (see PostgresStore.reset_workflow)
RESET_EVENT = "perdure.reset"


def failing_step_key(
    workflow_error: str | None, failed: Iterable[tuple[str, str | None]]
) -> str | None:
    """The key of the step whose failure ended a workflow: among its failed steps, given as
    ``(key, error)`` latest first, the first whose error has the workflow error's type and
    message; None when no step failure ended it (its own code raised, or it was cancelled)."""
    wanted = _error_identity(workflow_error)
    if wanted is None:
        return None
    return next((key for key, error in failed if _error_identity(error) == wanted), None)


def forget_failed_step(
    conn: Any,
    mark: str,
    workflow_id: str,
    error: str | None,
    step_error: Callable[[str, str | None], str | None] = lambda key, text: text,
) -> str | None:
    """Inside the caller's transaction: forget the journal entry of the step whose failure
    ended the workflow (:func:`failing_step_key`), with its failed attempts; return its key
    (None: nothing forgotten). ``error`` is the workflow's error as read; ``step_error``
    reads a step's stored error (by key and stored text: decrypted, where the store
    encrypts). Steps journaled after it
    (a concurrent branch's) stay: they replay, so no step that succeeded runs twice."""
    failed = conn.execute(
        f"SELECT key, error FROM steps WHERE workflow_id = {mark} "
        "AND status = 'ERROR' ORDER BY position DESC",
        (workflow_id,),
    ).fetchall()
    key = failing_step_key(error, [(str(r[0]), step_error(str(r[0]), r[1])) for r in failed])
    if key is None:
        return None
    for table in ("steps", "step_attempts"):
        conn.execute(
            f"DELETE FROM {table} WHERE workflow_id = {mark} AND key = {mark}", (workflow_id, key)
        )
    return key


def _error_identity(text: str | None) -> tuple[str, str] | None:
    """(type, message) of a stored error record, or None if it is not one."""
    try:
        record = json.loads(text or "")
        return str(record["type"]), str(record["message"])
    except (ValueError, KeyError, TypeError):
        return None


def attempt_rows(workflow_id: str, rows: Sequence[Sequence[Any]]) -> list[AttemptRow]:
    """Attempt rows from tuples in ``ATTEMPT_COLUMNS`` order."""
    try:
        return [
            AttemptRow(r[0], r[1], int(r[2]), r[3], r[4], float(r[5]), float(r[6]), float(r[7]))
            for r in rows
        ]
    except (TypeError, ValueError) as exc:
        raise CorruptRecordError(
            f"an attempt row of workflow {workflow_id!r} cannot be read: {exc}"
        ) from exc
