"""``perdure cancel``, ``perdure resume``, ``perdure retry`` and ``perdure fork``: act on one
workflow.

They go through :class:`perdure._operations.Operations` on the bare store, with no engine: the
command records the request and returns, and a worker whose Engine has the workflow
registered acts on it (the one running it stops it at its next step; a waiting one is woken
to stop; a resumed one, or a fork, is picked up by the next recovery sweep of any such
worker).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .. import _admin
from .._fork import UNSET
from .._operations import failed_step
from .._records import WorkflowInfo
from ..store import StepRow, WorkflowStatus
from ._common import EXIT_USAGE, db_option, echo_json, fail, json_option, operations
from ._render import clip

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


@click.command("fork", short_help="Run a workflow again from a journal position, as a new run.")
@click.argument("workflow_id", metavar="ID")
@click.option(
    "--from-step",
    "from_step",
    type=int,
    required=True,
    metavar="N",
    help="The first journal position to execute again (positions as `perdure show` numbers "
    "them); the entries before it replay.",
)
@click.option("--id", "new_id", metavar="NEW_ID", help="The fork's id. Default: ID-fork-<hex>.")
@click.option(
    "--output",
    "output",
    metavar="JSON",
    help="Record this value (JSON text) as the result of the entry at N instead of its own: "
    "the fork executes from N+1.",
)
@click.option(
    "--output-file",
    "output_file",
    metavar="FILE",
    help="As --output, with the JSON read from FILE (- for standard input).",
)
@db_option
@json_option
def fork_command(
    workflow_id: str,
    from_step: int,
    new_id: str | None,
    output: str | None,
    output_file: str | None,
    db: str,
    as_json: bool,
) -> None:
    """Fork workflow ID at journal position N: a new run of the same workflow with the same
    inputs, whose journal entries before N are copied from ID (those steps replay, they do
    not run again) and which executes from N on. With --output (or --output-file), the
    entry at N is copied too, recording that value as its result (a corrected model answer,
    say), and the fork executes from N+1. ID itself is only read, in any status.

    This records the fork PENDING with ID's code version: a worker running that version of
    the workflow's code (or declaring it compatible) picks it up at its next recovery sweep.
    Exits 1 when ID does not exist or NEW_ID is taken, 2 for a position out of the journal's
    range or an output that is not JSON. --json prints the fork's workflow record.
    """
    replacement = _replacement(output, output_file)
    with operations(db) as ops:
        info = ops.fork(workflow_id, from_step, new_id, replacement)
    if as_json:
        echo_json(_admin.workflow_to_dict(info))
        return
    click.echo(_forked(workflow_id, from_step, info, replaced=replacement is not UNSET))


def _replacement(output: str | None, output_file: str | None) -> Any:
    """The value ``--output`` or ``--output-file`` gives, parsed as JSON; UNSET without
    either. Exits 2 (usage) for both at once, an unreadable file or text that is not JSON."""
    if output is not None and output_file is not None:
        fail("--output and --output-file both give the replaced output: pass only one", EXIT_USAGE)
    where = "--output"
    hint = """quote it for the shell, e.g. '{"answer": 42}', or '"text"' for a string"""
    if output_file is not None:
        output = _read_text(output_file)
        where = "standard input" if output_file == "-" else f"--output-file {output_file}"
        hint = 'it must hold one JSON value, e.g. {"answer": 42}, or "text" for a string'
    if output is None:
        return UNSET
    try:
        return json.loads(output)
    except ValueError as exc:  # JSONDecodeError, or a number too long to convert
        fail(f"{where} is not valid JSON ({exc}): {clip(output.strip(), 40)!r}; {hint}", EXIT_USAGE)


def _read_text(path: str) -> str:
    """The text of ``path`` (``-``: standard input); exits 2 when it cannot be read."""
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"--output-file {path}: cannot read it ({exc})", EXIT_USAGE)


def _forked(workflow_id: str, from_step: int, info: WorkflowInfo, *, replaced: bool) -> str:
    """What ``fork`` did, in words: what the fork replays and who runs the rest."""
    if from_step == 0:
        replays = "nothing replays"
    elif from_step == 1:
        replays = "position 0 replays from the journal"
    else:
        replays = f"positions 0 to {from_step - 1} replay from the journal"
    if replaced:
        replays += f", position {from_step} records the given output"
    who = "a worker with its code"
    if info.version is not None:
        who += f" at version {info.version} (or declaring it compatible)"
    runs_from = from_step + 1 if replaced else from_step
    return (
        f"forked {workflow_id!r} at position {from_step} as {info.id!r} ({info.status.value}): "
        f"{replays}; it runs from position {runs_from} when {who} picks it up"
    )
