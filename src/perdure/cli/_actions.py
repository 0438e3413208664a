"""``perdure cancel``, ``perdure resume`` and ``perdure retry``: act on one workflow.

They go through :class:`perdure._operations.Operations` on the bare store, with no engine: the
command records the request and returns, and a worker whose Engine has the workflow
registered acts on it (the one running it stops it at its next step; a waiting one is woken
to stop; a resumed one is picked up by the next recovery sweep of any such worker).
"""

from __future__ import annotations

from typing import Any

import click

from .. import _admin
from .._operations import failed_step
from ..store import StepRow, WorkflowStatus
from ._common import db_option, echo_json, json_option, operations

_PICKED_UP = "a worker running this workflow's code picks it up"


@click.command("cancel", short_help="Ask a workflow to stop.")
@click.argument("workflow_id", metavar="ID")
@db_option
@json_option
def cancel_command(workflow_id: str, db: str, as_json: bool) -> None:
    """Ask workflow ID to stop: at its next step or wait it stops, runs its compensations
    and ends CANCELLED. A queued workflow that never started is cancelled at once.

    This only records the request: the worker running the workflow stops it (a waiting one
    is woken by a worker with its code). A workflow that already ended is left as it is
    (exit 0). --json prints the workflow record with "cancel_requested" (false when it had
    already ended).
    """
    with operations(db) as ops:
        before = ops.get(workflow_id).status
        status = ops.cancel(workflow_id)
        info = ops.get(workflow_id)
    requested = not before.finished and (status is WorkflowStatus.CANCELLED or not status.finished)
    if as_json:
        echo_json({**_admin.workflow_to_dict(info), "cancel_requested": requested})
    else:
        click.echo(_cancelled(workflow_id, before, status))


def _cancelled(workflow_id: str, before: WorkflowStatus, status: WorkflowStatus) -> str:
    """What ``cancel`` did, in words, from the status before the request and the status the
    request was recorded in."""
    if before.finished or (status.finished and status is not WorkflowStatus.CANCELLED):
        return f"workflow {workflow_id!r} has already ended ({status.value}): nothing to cancel"
    if status is WorkflowStatus.CANCELLED:
        return f"cancelled workflow {workflow_id!r}: it was {before.value} and never started"
    then = {
        WorkflowStatus.RUNNING: "the worker running it stops it at its next step",
        WorkflowStatus.WAITING: "a worker running this workflow's code wakes it to stop it",
    }.get(status, "the worker that picks it up stops it at once")
    return f"cancel requested: workflow {workflow_id!r} is {status.value}; {then}"


@click.command("resume", short_help="Run an ended workflow again from its journal.")
@click.argument("workflow_id", metavar="ID")
@db_option
@json_option
def resume_command(workflow_id: str, db: str, as_json: bool) -> None:
    """Run workflow ID (ERROR, CANCELLED or DEAD_LETTER) again from its journal: its
    recorded steps replay, the rest runs (after a code fix, say). A recorded step failure
    replays as a failure: to run the failed step again, use `perdure retry`.

    This makes the workflow PENDING; a worker running its code picks it up at its next
    recovery sweep. Exits 1 when the workflow is in another state. --json prints the
    workflow record.
    """
    _resume(workflow_id, db, as_json, retry=False)


@click.command("retry", short_help="Resume a workflow, running its failed step again.")
@click.argument("workflow_id", metavar="ID")
@db_option
@json_option
def retry_command(workflow_id: str, db: str, as_json: bool) -> None:
    """Resume workflow ID (ERROR, CANCELLED or DEAD_LETTER), running again the step whose
    failure ended it: that step's journal entry is forgotten, while every other step replays
    from the journal (none runs again). When no step failure ended it (its own code raised,
    or it was cancelled) this is `perdure resume`.

    This makes the workflow PENDING; a worker running its code picks it up at its next
    recovery sweep. Exits 1 when the workflow is in another state. --json prints the
    workflow record with "retried_step": {"position", "name"} (null without a failed step).
    """
    _resume(workflow_id, db, as_json, retry=True)


def _resume(workflow_id: str, db: str, as_json: bool, *, retry: bool) -> None:
    with operations(db) as ops:
        failed = failed_step(ops.store, workflow_id)
        info = ops.resume(workflow_id, retry_failed_step=retry)
    if as_json:
        data: dict[str, Any] = _admin.workflow_to_dict(info)
        if retry:
            data["retried_step"] = None if failed is None else _step_ref(failed)
        echo_json(data)
        return
    state = f"{info.status.value}, {_PICKED_UP}"
    if not retry:
        click.echo(f"resumed workflow {workflow_id!r}: {state} and replays its journal")
        if failed is not None:
            click.echo(f"note: step {failed.position} ({failed.name}) failed: its failure "
                       f"replays; `perdure retry {workflow_id}` runs it again instead")  # fmt: skip
    elif failed is None:
        click.echo(f"no step of workflow {workflow_id!r} failed: resumed as it is: {state} "
                   "and replays its journal")  # fmt: skip
    else:
        click.echo(f"retrying workflow {workflow_id!r}: step {failed.position} "
                   f"({failed.name}) runs again, the other steps replay: {state}")  # fmt: skip


def _step_ref(step: StepRow) -> dict[str, Any]:
    return {"position": step.position, "name": step.name}
