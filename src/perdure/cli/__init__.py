"""The ``perdure`` command line: look into a database of workflows, talk to waiting
workflows, and run the demo.

::

    perdure list [--db URL] [--status S] [--name N] [--limit 50] [--json]
    perdure show ID [--db URL] [--json]
    perdure send ID TOPIC JSON [--key IDEMPOTENCY_KEY] [--db URL]
    perdure approvals [--all] [--limit 100] [--json] [--db URL]
    perdure approve ID NAME [--by WHO] [--comment TEXT] [--db URL]
    perdure reject ID NAME [--by WHO] [--comment TEXT] [--db URL]
    perdure demo [--db URL]

The database is ``--db``, else the ``PERDURE_DB`` environment variable, else
``sqlite:///perdure.db`` (for ``demo``: a fresh database in a temporary folder). ``list`` and
``show`` only read the store through :mod:`perdure._admin`; ``send``, ``approvals``,
``approve`` and ``reject`` go through :mod:`perdure._signals`. None of them starts an Engine,
so they never join as a worker or resume anyone's workflows: ``send``/``approve``/``reject``
record the message or decision, and the workflow resumes in a worker process whose Engine has
it registered (at once on PostgreSQL, within 0.1 s on SQLite).

``show`` prints the workflow, its journal (a step per row, each failed attempt of a retried
step on a line under it) and the steps waiting for their next attempt (``Retrying``; ``Not
retried`` once the workflow ended while they waited). ``show --json`` gives each step its
``key`` and ``failures``, and lists the waiting steps under ``retrying``.

Exit codes scripts can rely on:

* 0: it worked.
* 1: no such workflow, no pending approval of that name (or no such thing, e.g. the demo
  is not installed).
* 2: usage error (a bad option, a bad database URL).
* 3: the database is unavailable or unreadable.

Errors go to stderr as one line starting with ``perdure:``. Times are shown in UTC.
"""

from __future__ import annotations

import getpass
import importlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar, cast

import click

from .. import __version__, _admin, _signals
from .._errors import (
    ConfigurationError,
    PerdureError,
    SerializationError,
    StoreError,
    WorkflowNotFound,
)
from .._signals import ApprovalNotPending
from .._usage import REPLAY_EVENT, replay_saved, usage
from ..store import Store, WorkflowStatus, open_store
from ._render import (
    approval_table,
    clip,
    header_lines,
    one_line,
    pending_retries,
    retry_table,
    step_table,
    terminal_width,
    usage_dict,
    without_password,
    workflow_table,
)

__all__ = [
    "DEFAULT_DB",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_STORE",
    "EXIT_USAGE",
    "cli",
    "main",
]

DEFAULT_DB = "sqlite:///perdure.db"
EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_STORE = 3

_PACKAGE = __name__.partition(".")[0]
_APPROVALS_LIMIT = 100

F = TypeVar("F", bound=Callable[..., Any])


# -- plumbing ------------------------------------------------------------------------------


def _fail(message: str, code: int) -> NoReturn:
    """Print ``perdure: message`` on one line to stderr and exit with ``code``."""
    click.echo(f"perdure: {one_line(message)}", err=True)
    raise click.exceptions.Exit(code)


@contextmanager
def _reporting_errors() -> Iterator[None]:
    """Turn perdure's errors into one-line messages and the documented exit codes."""
    try:
        yield
    except WorkflowNotFound as exc:
        _fail(str(exc), EXIT_NOT_FOUND)
    except ApprovalNotPending as exc:
        _fail(str(exc), EXIT_NOT_FOUND)
    except ConfigurationError as exc:
        _fail(str(exc), EXIT_USAGE)
    except (StoreError, SerializationError) as exc:
        _fail(str(exc), EXIT_STORE)
    except PerdureError as exc:
        _fail(f"{type(exc).__name__}: {exc}", EXIT_NOT_FOUND)


@contextmanager
def _opened(url: str) -> Iterator[Store]:
    """The store ``url`` names, closed on the way out; errors reported as exit codes."""
    with _reporting_errors():
        store = open_store(url)
        try:
            yield store
        finally:
            store.close()


def _db_option(fn: F) -> F:
    return click.option(
        "--db",
        "db",
        envvar="PERDURE_DB",
        default=DEFAULT_DB,
        show_default=True,
        metavar="URL",
        help="Database URL (env: PERDURE_DB), e.g. sqlite:///path/to/perdure.db.",
    )(fn)


def _demo_db_option(fn: F) -> F:
    return click.option(
        "--db",
        "db",
        envvar="PERDURE_DB",
        default=None,
        metavar="URL",
        help="Database URL (env: PERDURE_DB). Default: a fresh database in a temporary folder.",
    )(fn)


def _json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False))


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
        _fail(
            f"JSON is not valid JSON ({exc}): {clip(text, 40)!r}; quote it for the shell, e.g. "
            """'{"a": 1}', or '"text"' for a string""",
            EXIT_USAGE,
        )


def _warn_if_finished(store: Store, workflow_id: str, what: str) -> None:
    """Warn on stderr when the workflow has ended, so nothing will ever take ``what``."""
    row = store.get_workflow(workflow_id)
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
    """Inspect perdure workflows and their step journals, send them messages and decide
    their approvals.

    The database is --db URL, else $PERDURE_DB, else sqlite:///perdure.db. Times are UTC.
    These commands never run workflows: a workflow resumes in the worker process that runs it.

    Exit codes: 0 ok, 1 not found (no such workflow, no such pending approval), 2 usage error,
    3 database unavailable or unreadable.
    """


@cli.command("list")
@_db_option
@click.option(
    "--status",
    type=click.Choice([s.value for s in WorkflowStatus], case_sensitive=False),
    help="Only workflows with this status.",
)
@click.option("--name", metavar="NAME", help="Only workflows with this registered name.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=_admin.DEFAULT_LIMIT,
    show_default=True,
    help="At most this many workflows.",
)
@_json_option
def list_command(db: str, status: str | None, name: str | None, limit: int, as_json: bool) -> None:
    """List workflows, newest first."""
    with _opened(db) as store, _reporting_errors():
        infos = _admin.list_workflows(store, status, name, limit)
    if as_json:
        _echo_json([_admin.workflow_to_dict(info) for info in infos])
    elif not infos:
        which = " matching" if status or name else ""
        click.echo(f"No{which} workflows in {without_password(db)}.")
    else:
        for line in workflow_table(infos, terminal_width()):
            click.echo(line)


@cli.command("show")
@click.argument("workflow_id", metavar="ID")
@_db_option
@_json_option
def show_command(workflow_id: str, db: str, as_json: bool) -> None:
    """Show one workflow, its step timeline with every failed attempt, and the steps
    waiting to be retried."""
    with _opened(db) as store, _reporting_errors():
        info = _admin.get_workflow(store, workflow_id)
        # Attempts first: a step committed in between then counts as done, not as retrying.
        attempts = _admin.list_attempts(store, workflow_id)
        steps = _admin.list_steps(store, workflow_id)
        store_event = store.get_event(workflow_id, REPLAY_EVENT)
    pending = pending_retries(steps, attempts)
    tokens = usage(steps)
    saved = replay_saved(store_event)
    if as_json:
        data = _admin.workflow_to_dict(info)
        data["steps"] = [_admin.step_to_dict(step) for step in steps]
        data["retrying"] = [_admin.retrying_to_dict(failures) for failures in pending]
        per_model = {model: usage_dict(part) for model, part in sorted(tokens.by_model.items())}
        data["usage"] = {**usage_dict(tokens), "saved_by_replay": usage_dict(saved),
                         "by_model": per_model}  # fmt: skip
        _echo_json(data)
        return
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
@_db_option
def send_command(
    workflow_id: str, topic: str, payload: str, idempotency_key: str | None, db: str
) -> None:
    """Send a message to workflow ID on TOPIC, for its perdure.receive(TOPIC).

    JSON is the payload as JSON text, quoted for the shell: '{"a": 1}', or '"text"' for a
    string (null is refused). Messages are delivered exactly once, in send order per topic,
    and kept until the workflow receives them.

    This only records the message: a worker process whose Engine has the workflow registered
    delivers it (at once on PostgreSQL, within 0.1 s on SQLite), or once one starts.
    """
    value = _parse_json(payload)
    with _opened(db) as store, _reporting_errors():
        sent = _signals.send(store, workflow_id, topic, value, idempotency_key)
        if sent:
            _warn_if_finished(store, workflow_id, "the message")
    if sent:
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
@_db_option
@_json_option
def approvals_command(show_all: bool, limit: int, db: str, as_json: bool) -> None:
    """List the approval requests waiting for a human (perdure.wait_for_approval), oldest
    first, with the details the workflow attached. Decide one with `perdure approve` or
    `perdure reject`."""
    with _opened(db) as store, _reporting_errors():
        infos = _signals.list_approvals(store, pending_only=not show_all, limit=limit)
    if as_json:
        _echo_json([_admin.approval_to_dict(info) for info in infos])
    elif not infos:
        which = "" if show_all else " pending"
        click.echo(f"No{which} approvals in {without_password(db)}.")
    else:
        for line in approval_table(infos, show_all, terminal_width()):
            click.echo(line)


def _decision_options(fn: F) -> F:
    """The ``approve`` / ``reject`` commands' arguments and options (applied last first, so
    they read ``ID NAME [--by WHO] [--comment TEXT] [--db URL]``)."""
    fn = _db_option(fn)
    fn = click.option("--comment", metavar="TEXT", help="A comment for the workflow.")(fn)
    fn = click.option(
        "--by",
        metavar="WHO",
        help="Who decides (recorded with the decision). Default: your OS user name.",
    )(fn)
    fn = click.argument("name", metavar="NAME")(fn)
    return click.argument("workflow_id", metavar="ID")(fn)


def _decide(
    workflow_id: str, name: str, approved: bool, by: str | None, comment: str | None, db: str
) -> None:
    who = _os_user() if by is None else by
    with _opened(db) as store, _reporting_errors():
        _signals.decide(store, workflow_id, name, approved, who, comment)
        _warn_if_finished(store, workflow_id, "the decision")
    verb = "approved" if approved else "rejected"
    click.echo(f"{verb} {name!r} of workflow {workflow_id!r} (by {who})")


@cli.command("approve", short_help="Approve a workflow's pending approval.")
@_decision_options
def approve_command(
    workflow_id: str, name: str, by: str | None, comment: str | None, db: str
) -> None:
    """Approve the pending approval NAME of workflow ID (its perdure.wait_for_approval(NAME)).

    This only records the decision: the workflow resumes in a worker process whose Engine has
    it registered (at once on PostgreSQL, within 0.1 s on SQLite), or once one starts. Exits
    1 when nothing of that name is pending (see `perdure approvals`).
    """
    _decide(workflow_id, name, True, by, comment, db)


@cli.command("reject", short_help="Reject a workflow's pending approval.")
@_decision_options
def reject_command(
    workflow_id: str, name: str, by: str | None, comment: str | None, db: str
) -> None:
    """Reject the pending approval NAME of workflow ID (its perdure.wait_for_approval(NAME)).

    This only records the decision: the workflow resumes in a worker process whose Engine has
    it registered (at once on PostgreSQL, within 0.1 s on SQLite), or once one starts. Exits
    1 when nothing of that name is pending (see `perdure approvals`).
    """
    _decide(workflow_id, name, False, by, comment, db)


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
        _fail(f"the demo is not available in this installation ({module_name} is missing)", 1)
    run_demo = cast(Callable[[str | None], int], module.run_demo)
    with _reporting_errors():
        code = run_demo(db)
    raise click.exceptions.Exit(code)


def main() -> None:
    """Run the ``perdure`` command line (the console script's entry point)."""
    cli(prog_name="perdure")
