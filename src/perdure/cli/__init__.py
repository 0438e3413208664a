"""The ``perdure`` command line: look into a database of workflows, act on them (cancel,
resume, retry, send messages, decide approvals), run a worker, migrate, and run the demo.

::

    perdure list [--status S] [--name N] [--since WHEN] [--limit 50] [--json] [--db URL]
    perdure show ID [--json] [--db URL]
    perdure cancel ID [--json] [--db URL]
    perdure resume ID [--json] [--db URL]
    perdure retry ID [--json] [--db URL]
    perdure fork ID --from-step N [--id NEW_ID] [--output JSON | --output-file FILE] [--json]
    perdure send ID TOPIC JSON [--key IDEMPOTENCY_KEY] [--json] [--db URL]
    perdure approvals [--all] [--limit 100] [--json] [--db URL]
    perdure approve ID NAME [--by WHO] [--comment TEXT] [--json] [--db URL]
    perdure reject ID NAME [--by WHO] [--comment TEXT] [--json] [--db URL]
    perdure worker MODULE [--max-threads N] [--queue NAME ...] [--shutdown-grace S]
                   [--version V] [--compatible-version V ...] [--db URL]
    perdure versions [--json] [--db URL]
    perdure migrate [--json] [--db URL]
    perdure serve [--app MODULE ...] [--host 127.0.0.1] [--port 8000] [--tokens FILE] [--db URL]
    perdure demo [--db URL]

The database is ``--db``, else the ``PERDURE_DB`` environment variable, else
``sqlite:///perdure.db`` (for ``demo``: a fresh database in a temporary folder). The
commands that read or act on workflows go through :class:`perdure._operations.Operations` on
the bare store, as the HTTP API (``serve``, in :mod:`._serve`) does, so the two never
disagree. None of them starts an Engine: they never join as a worker or run anyone's
workflows. ``cancel``, ``resume``, ``retry``, ``send``, ``approve`` and ``reject`` record the
request, and a worker process whose Engine has the workflow registered (``perdure worker
MODULE``, say) acts on it: a message or decision at once on PostgreSQL and within its poll
interval (0.1 s) on SQLite, a cancellation of a running workflow at its next heartbeat (1 s),
a resumed workflow at its next recovery sweep (every 2 s by default).

``show`` prints the workflow, its journal (a step per row, each failed attempt of a retried
step on a line under it) and the steps waiting for their next attempt (``Retrying``; ``Not
retried`` once the workflow ended while they waited). ``show --json`` gives each step its
``key`` and ``failures``, and lists the waiting steps under ``retrying``.

Exit codes scripts can rely on (from :data:`perdure._operations.ERROR_CODES`):

* 0: it worked (``cancel`` of a workflow that already ended too: it is left as it is).
* 1: no such workflow, no pending approval of that name, a workflow not in a state for
  that (resuming a running one), or no such thing (e.g. the demo is not installed).
* 2: usage error (a bad option, a bad database URL, a module ``worker`` cannot import).
* 3: the database is unavailable or unreadable.

Errors go to stderr as one line starting with ``perdure:``. Times are shown in UTC.
"""

from __future__ import annotations

import datetime as dt
import getpass
import importlib
import json
import re
from collections.abc import Callable
from typing import Any, cast

import click

from .. import __version__, _admin
from .._operations import Operations
from ..store import WorkflowStatus
from ._actions import cancel_command, fork_command, resume_command, retry_command
from ._common import (
    DEFAULT_DB,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_STORE,
    EXIT_USAGE,
    F,
    db_option,
    echo_json,
    fail,
    json_option,
    operations,
    reporting_errors,
)
from ._render import (
    approval_table,
    clip,
    header_lines,
    retry_table,
    step_table,
    terminal_width,
    without_password,
    workflow_table,
)
from ._replay import diff_command, export_command, replay_command
from ._serve import serve_command
from ._worker import migrate_command, versions_command, worker_command

__all__ = [
    "DEFAULT_DB",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_STORE",
    "EXIT_USAGE",
    "cli",
    "main",
]

_APPROVALS_LIMIT = 100
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# -- plumbing ------------------------------------------------------------------------------


def _demo_db_option(fn: F) -> F:
    return click.option(
        "--db",
        "db",
        envvar="PERDURE_DB",
        default=None,
        metavar="URL",
        help="Database URL (env: PERDURE_DB). Default: a fresh database in a temporary folder.",
    )(fn)


def _os_user() -> str:
    """Who runs this command, for ``--by``: the OS user name, else ``unknown``."""
    try:
        return getpass.getuser() or "unknown"
    except Exception:  # no user name in the environment nor in the password database
        return "unknown"


def _parse_json(text: str) -> Any:
    """The value of a JSON argument; a usage error (exit 2) if it is not JSON."""
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or a number too long to convert
        fail(
            f"JSON is not valid JSON ({exc}): {clip(text, 40)!r}; quote it for the shell, e.g. "
            """'{"a": 1}', or '"text"' for a string""",
            EXIT_USAGE,
        )


def _parse_since(text: str, now: dt.datetime) -> dt.datetime:
    """The moment ``--since WHEN`` names: an ISO 8601 date or date and time (UTC unless it
    names a zone), or an age before ``now``: a number and a unit, s, m, h, d or w (``30m``,
    ``2h``, ``1.5d``).

    Raises:
        ValueError: ``text`` is neither.
    """
    value = text.strip()
    try:
        age = _AGE.fullmatch(value)
        if age is not None:
            return now - dt.timedelta(seconds=float(age[1]) * _AGE_UNITS[age[2]])
        when = dt.datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        raise ValueError(text) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _since(text: str | None) -> dt.datetime | None:
    """``--since``'s moment; a usage error (exit 2) when it names none."""
    if text is None:
        return None
    try:
        return _parse_since(text, dt.datetime.now(dt.UTC))
    except ValueError:
        fail(
            f"--since {text!r} is neither an ISO date or time (2024-05-01, "
            "2024-05-01T09:30:00+02:00; UTC unless it names a zone) nor an age (90s, 30m, 2h, "
            "3d, 1w)",
            EXIT_USAGE,
        )


def _warn_if_finished(ops: Operations, workflow_id: str, what: str) -> None:
    """Warn on stderr when the workflow has ended, so nothing will ever take ``what``."""
    row = ops.store.get_workflow(workflow_id)
    if row is not None and row.status.finished:
        click.echo(
            f"perdure: warning: workflow {workflow_id!r} has ended ({row.status.value}): "
            f"{what} will never be received",
            err=True,
        )


# -- commands ------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="perdure")
def cli() -> None:
    """Inspect perdure workflows and their step journals; cancel, resume or retry them, send
    them messages and decide their approvals; run a worker for your workflows.

    The database is --db URL, else $PERDURE_DB, else sqlite:///perdure.db. Times are UTC.
    Only `perdure worker` (and `perdure serve --app`) runs workflows: the other commands
    record what they ask, and the worker running the workflow's code acts on it.

    Exit codes: 0 ok, 1 not found (no such workflow, no such pending approval) or not in a
    state for that, 2 usage error, 3 database unavailable or unreadable.
    """


@cli.command("list")
@db_option
@click.option(
    "--status",
    type=click.Choice([s.value for s in WorkflowStatus], case_sensitive=False),
    help="Only workflows with this status.",
)
@click.option("--name", metavar="NAME", help="Only workflows with this registered name.")
@click.option(
    "--since",
    metavar="WHEN",
    help="Only workflows created at or after WHEN: an ISO date or time (UTC unless it names a "
    "zone), e.g. 2024-05-01 or 2024-05-01T09:30+02:00, or an age: 90s, 30m, 2h, 3d, 1w.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=_admin.DEFAULT_LIMIT,
    show_default=True,
    help="At most this many workflows.",
)
@json_option
def list_command(
    db: str, status: str | None, name: str | None, since: str | None, limit: int, as_json: bool
) -> None:
    """List workflows, newest first."""
    after = _since(since)
    with operations(db) as ops:
        infos = ops.list_workflows(status, name, after, limit)
    if as_json:
        echo_json([_admin.workflow_to_dict(info) for info in infos])
    elif not infos:
        which = " matching" if status or name or since else ""
        click.echo(f"No{which} workflows in {without_password(db)}.")
    else:
        for line in workflow_table(infos, terminal_width()):
            click.echo(line)


@cli.command("show")
@click.argument("workflow_id", metavar="ID")
@db_option
@json_option
def show_command(workflow_id: str, db: str, as_json: bool) -> None:
    """Show one workflow, its step timeline with every failed attempt, and the steps
    waiting to be retried."""
    if as_json:
        with operations(db) as ops:
            data = ops.describe(workflow_id)
        echo_json(data)
        return
    with operations(db) as ops:
        info, steps, _, pending, tokens, saved = ops.inspect(workflow_id)
    width = terminal_width()
    for line in header_lines(info, width):
        click.echo(line)
    if tokens.calls:
        click.echo(f"{'tokens':<12}{tokens.input_tokens:,} in, {tokens.output_tokens:,} out "
                   f"({tokens.calls} model calls)")  # fmt: skip
        if len(tokens.by_model) > 1:
            for model, part in sorted(tokens.by_model.items()):
                click.echo(f"{'':<12}{model}: {part.input_tokens:,} in, "
                           f"{part.output_tokens:,} out ({part.calls} calls)")  # fmt: skip
    if saved.calls:
        click.echo(f"{'replayed':<12}{saved.calls} model calls ({saved.total_tokens:,} tokens) "
                   "came from the journal on resumption instead of being sent again")  # fmt: skip
    click.echo()
    if not steps:
        click.echo("No steps recorded.")
    else:
        click.echo(f"Steps ({len(steps)}):")
        for line in step_table(steps, info.created_at.date(), width):
            click.echo(line)
    if pending:
        click.echo()
        if info.status.finished:
            heading = f"Not retried ({len(pending)}), the workflow ended first:"
        else:
            heading = f"Retrying ({len(pending)}):"
        click.echo(heading)
        for line in retry_table(pending, info.created_at.date(), width):
            click.echo(line)


@cli.command("send", short_help="Send a message to a workflow.")
@click.argument("workflow_id", metavar="ID")
@click.argument("topic")
@click.argument("payload", metavar="JSON")
@click.option(
    "--key",
    "idempotency_key",
    metavar="IDEMPOTENCY_KEY",
    help="Send at most once: a resend with the same key (same workflow and topic) does nothing.",
)
@db_option
@json_option
def send_command(
    workflow_id: str,
    topic: str,
    payload: str,
    idempotency_key: str | None,
    db: str,
    as_json: bool,
) -> None:
    """Send a message to workflow ID on TOPIC, for its perdure.receive(TOPIC).

    JSON is the payload as JSON text, quoted for the shell: '{"a": 1}', or '"text"' for a
    string (null is refused). Messages are delivered exactly once, in send order per topic,
    and kept until the workflow receives them.

    This only records the message: a worker process whose Engine has the workflow registered
    delivers it (at once on PostgreSQL, within 0.1 s on SQLite), or once one starts.
    --json prints {"workflow_id", "topic", "idempotency_key", "sent"} (sent is false when the
    key was used before).
    """
    value = _parse_json(payload)
    with operations(db) as ops:
        sent = ops.send(workflow_id, topic, value, idempotency_key)
        if sent:
            _warn_if_finished(ops, workflow_id, "the message")
    if as_json:
        echo_json({"workflow_id": workflow_id, "topic": topic,
                    "idempotency_key": idempotency_key, "sent": sent})  # fmt: skip
    elif sent:
        click.echo("sent")
    else:
        click.echo(f"already sent (idempotency key {idempotency_key!r}): nothing sent again")


@cli.command("approvals", short_help="List approvals waiting for a human.")
@click.option("--all", "show_all", is_flag=True, help="Include decided and timed-out approvals.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=_APPROVALS_LIMIT,
    show_default=True,
    help="At most this many approvals (oldest first).",
)
@db_option
@json_option
def approvals_command(show_all: bool, limit: int, db: str, as_json: bool) -> None:
    """List the approval requests waiting for a human (perdure.wait_for_approval), oldest
    first, with the details the workflow attached. Decide one with `perdure approve` or
    `perdure reject`."""
    with operations(db) as ops:
        infos = ops.approvals(pending_only=not show_all, limit=limit)
    if as_json:
        echo_json([_admin.approval_to_dict(info) for info in infos])
    elif not infos:
        which = "" if show_all else " pending"
        click.echo(f"No{which} approvals in {without_password(db)}.")
    else:
        for line in approval_table(infos, show_all, terminal_width()):
            click.echo(line)


def _decision_options(fn: F) -> F:
    """The ``approve`` / ``reject`` commands' arguments and options (applied last first, so
    they read ``ID NAME [--by WHO] [--comment TEXT] [--json] [--db URL]``)."""
    fn = db_option(fn)
    fn = json_option(fn)
    fn = click.option("--comment", metavar="TEXT", help="A comment for the workflow.")(fn)
    fn = click.option(
        "--by",
        metavar="WHO",
        help="Who decides (recorded with the decision). Default: your OS user name.",
    )(fn)
    fn = click.argument("name", metavar="NAME")(fn)
    return click.argument("workflow_id", metavar="ID")(fn)


def _decide(
    workflow_id: str,
    name: str,
    approved: bool,
    by: str | None,
    comment: str | None,
    db: str,
    as_json: bool,
) -> None:
    who = _os_user() if by is None else by
    with operations(db) as ops:
        ops.decide(workflow_id, name, approved, who, comment)
        _warn_if_finished(ops, workflow_id, "the decision")
    if as_json:
        status = "APPROVED" if approved else "REJECTED"
        echo_json({"workflow_id": workflow_id, "name": name, "status": status, "by": who,
                    "comment": comment})  # fmt: skip
        return
    verb = "approved" if approved else "rejected"
    click.echo(f"{verb} {name!r} of workflow {workflow_id!r} (by {who})")


@cli.command("approve", short_help="Approve a workflow's pending approval.")
@_decision_options
def approve_command(
    workflow_id: str, name: str, by: str | None, comment: str | None, as_json: bool, db: str
) -> None:
    """Approve the pending approval NAME of workflow ID (its perdure.wait_for_approval(NAME)).

    This only records the decision: the workflow resumes in a worker process whose Engine has
    it registered (at once on PostgreSQL, within 0.1 s on SQLite), or once one starts. Exits
    1 when nothing of that name is pending (see `perdure approvals`). --json prints
    {"workflow_id", "name", "status": "APPROVED", "by", "comment"}.
    """
    _decide(workflow_id, name, True, by, comment, db, as_json)


@cli.command("reject", short_help="Reject a workflow's pending approval.")
@_decision_options
def reject_command(
    workflow_id: str, name: str, by: str | None, comment: str | None, as_json: bool, db: str
) -> None:
    """Reject the pending approval NAME of workflow ID (its perdure.wait_for_approval(NAME)).

    This only records the decision: the workflow resumes in a worker process whose Engine has
    it registered (at once on PostgreSQL, within 0.1 s on SQLite), or once one starts. Exits
    1 when nothing of that name is pending (see `perdure approvals`). --json prints
    {"workflow_id", "name", "status": "REJECTED", "by", "comment"}.
    """
    _decide(workflow_id, name, False, by, comment, db, as_json)


@cli.command("demo")
@_demo_db_option
def demo_command(db: str | None) -> None:
    """Run the durable agent demo: an agent killed mid-run with SIGKILL, then resumed."""
    module_name = f"{__name__}._demo"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        fail(f"the demo is not available in this installation ({module_name} is missing)", 1)
    run_demo = cast(Callable[[str | None], int], module.run_demo)
    with reporting_errors():
        code = run_demo(db)
    raise click.exceptions.Exit(code)


# Commands defined in modules of their own.
cli.add_command(cancel_command)
cli.add_command(resume_command)
cli.add_command(retry_command)
cli.add_command(fork_command)
cli.add_command(worker_command)
cli.add_command(migrate_command)
cli.add_command(versions_command)
cli.add_command(serve_command)
cli.add_command(export_command)
cli.add_command(replay_command)
cli.add_command(diff_command)


def main() -> None:
    """Run the ``perdure`` command line (the console script's entry point)."""
    cli(prog_name="perdure")
