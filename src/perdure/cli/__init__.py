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

import datetime as dt
import getpass
import importlib
import json
import os
import shutil
import sys
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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
from .._records import AttemptInfo, ErrorInfo, StepInfo, WorkflowInfo
from .._signals import ApprovalInfo, ApprovalNotPending
from .._usage import REPLAY_EVENT, replay_saved, usage
from ..store import Store, WorkflowStatus, open_store

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
_GAP = "  "
_STEP_PREVIEW = 60  # output preview width when stdout is not a terminal
_HEADER_PREVIEW = 100  # inputs/result preview width when stdout is not a terminal
_ATTEMPT_PREVIEW = 100  # error width of an attempt line when stdout is not a terminal
_ATTEMPT_MIN_ERROR = 24  # narrower than this, an attempt line drops its retry time instead
_DETAILS_MIN = 20  # the details preview an approvals table fit to a terminal keeps if it can
_DETAILS_FLOOR = 12  # ... and the narrowest it gets
_DETAILS_PREVIEW = 60  # details preview width when stdout is not a terminal
_APPROVALS_LIMIT = 100
_STATUS_STYLES: dict[str, dict[str, Any]] = {
    WorkflowStatus.SUCCESS.value: {"fg": "green"},
    WorkflowStatus.ERROR.value: {"fg": "red"},
    WorkflowStatus.RUNNING.value: {"fg": "yellow"},
    WorkflowStatus.PENDING.value: {"fg": "cyan"},  # an approval's PENDING too
    WorkflowStatus.WAITING.value: {"fg": "cyan"},
    WorkflowStatus.CANCELLED.value: {"fg": "yellow"},  # stopped on request: a warning
    WorkflowStatus.DEAD_LETTER.value: {"fg": "red", "bold": True},  # given up: an error
    # Approval statuses.
    "APPROVED": {"fg": "green"},
    "REJECTED": {"fg": "red"},
    "TIMED_OUT": {"fg": "yellow"},
}

F = TypeVar("F", bound=Callable[..., Any])


# -- plumbing ------------------------------------------------------------------------------


def _fail(message: str, code: int) -> NoReturn:
    """Print ``perdure: message`` on one line to stderr and exit with ``code``."""
    click.echo(f"perdure: {_one_line(message)}", err=True)
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


def _terminal_width() -> int | None:
    """Columns to fit output into: the terminal's (or $COLUMNS), None when piped."""
    if "COLUMNS" in os.environ or sys.stdout.isatty():
        return max(40, shutil.get_terminal_size().columns)
    return None


def _one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped, safe for a cell."""
    if text.isprintable():
        return text
    return "".join(
        ch if unicodedata.category(ch) != "Cc" else repr(ch)[1:-1] for ch in text
    ).replace("\u2028", "\\u2028")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _without_password(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit to print."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.partition("@")
    if not sep or not at or ":" not in credentials or "/" in credentials:
        return url
    return f"{scheme}://{credentials.partition(':')[0]}:***@{host}"


def _time(value: Any, *, short: bool = False, millis: bool = False) -> str:
    if short:
        return str(value.strftime("%m-%d %H:%M:%S"))
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    if millis:
        text += f".{value.microsecond // 1000:03d}"
    return str(text)


def _time_on(value: dt.datetime, day: dt.date) -> str:
    """``value`` with milliseconds, and with its date only when it is not ``day``."""
    if value.date() == day:
        return f"{value.strftime('%H:%M:%S')}.{value.microsecond // 1000:03d}"
    return _time(value, millis=True)


def _error_text(error: ErrorInfo, width: int) -> str:
    """``Type: message`` on one line, cut to ``width``; perdure's own exceptions go by the name
    they are exported under (``perdure.TransientError``, not ``perdure._errors.…``)."""
    module, _, name = error.type.rpartition(".")
    if module.startswith(f"{_PACKAGE}._"):
        exported = getattr(sys.modules[_PACKAGE], name, None)
        if isinstance(exported, type) and exported.__module__ == module:
            error = ErrorInfo(f"{_PACKAGE}.{name}", error.message)
    return _one_line(_admin.error_text(error, width))


def _millis(ms: float) -> str:
    """A duration in milliseconds: two decimals below 10 ms, one above, thousands grouped."""
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:,.1f} ms"


def _status(text: str) -> str:
    """Color a (padded) status cell; click strips the color when stdout is not a terminal."""
    style = _STATUS_STYLES.get(text.strip())
    return click.style(text, **style) if style else text


# -- tables --------------------------------------------------------------------------------


@dataclass
class _Column:
    header: str
    cells: list[str]
    right: bool = False  # right-aligned (numbers)
    width: int = 0

    def __post_init__(self) -> None:
        self.cells = [_one_line(cell) for cell in self.cells]
        self.width = max([len(self.header), *map(len, self.cells)])


def _total(columns: Sequence[_Column]) -> int:
    return sum(c.width for c in columns) + len(_GAP) * (len(columns) - 1)


def _shrink(columns: Sequence[_Column], header: str, minimum: int, width: int | None) -> None:
    """Narrow the column named ``header`` (not below ``minimum``) until the table fits."""
    if width is None:
        return
    for column in columns:
        if column.header == header:
            excess = _total(columns) - width
            if excess > 0:
                column.width = max(min(minimum, column.width), column.width - excess)


def _render_table(columns: Sequence[_Column], indent: str = "") -> list[str]:
    def line(cells: Sequence[str]) -> str:
        parts = []
        for column, cell in zip(columns, cells, strict=True):
            cell = _clip(cell, column.width)
            padded = cell.rjust(column.width) if column.right else cell.ljust(column.width)
            parts.append(_status(padded) if column.header == "status" else padded)
        return (indent + _GAP.join(parts)).rstrip()

    lines = [line([c.header for c in columns])]
    lines.extend(line(cells) for cells in zip(*(c.cells for c in columns), strict=True))
    return lines


def _workflow_table(infos: Sequence[WorkflowInfo], width: int | None) -> list[str]:
    """The ``list`` table, made to fit ``width``: first times get shorter, then the updated
    column goes, then the name and finally the id are cut with "…"."""

    def columns(short: bool, updated: bool, recoveries: str) -> list[_Column]:
        cols = [
            _Column("id", [i.id for i in infos]),
            _Column("name", [i.name for i in infos]),
            _Column("status", [i.status.value for i in infos]),
            _Column("created (UTC)", [_time(i.created_at, short=short) for i in infos]),
        ]
        if updated:
            cols.append(_Column("updated (UTC)", [_time(i.updated_at, short=short) for i in infos]))
        cols.append(_Column(recoveries, [str(i.recoveries) for i in infos], right=True))
        return cols

    cols = columns(False, True, "recoveries")
    for short, updated, recoveries in (
        (True, True, "recoveries"),
        (True, True, "recov"),
        (True, False, "recov"),
    ):
        if width is None or _total(cols) <= width:
            break
        cols = columns(short, updated, recoveries)
    _shrink(cols, "name", 12, width)
    _shrink(cols, "name", 8, width)
    _shrink(cols, "id", 8, width)
    return _render_table(cols)


def _attempt_line(
    attempt: AttemptInfo, indent: str, day: dt.date, width: int | None, *, due: bool
) -> str:
    """``attempt N failed <time> <Type>: <message> (retried at <time>)``, fit to ``width``
    (times carry their date only when it is not ``day``). With ``due`` the retry has not
    happened (yet): ``(retry due at <time>)``. When the error would get fewer than
    ``_ATTEMPT_MIN_ERROR`` columns, the retry time is left out to make room for it."""
    head = f"{indent}attempt {attempt.attempt} failed {_time_on(attempt.failed_at, day)} "
    retry = "retry due at" if due else "retried at"
    tail = f" ({retry} {_time_on(attempt.retry_at, day)})"
    if width is None:
        return head + _error_text(attempt.error, _ATTEMPT_PREVIEW) + tail
    room = width - len(head) - len(tail)
    error = _error_text(attempt.error, max(room, _ATTEMPT_PREVIEW))
    if len(error) > room and room < _ATTEMPT_MIN_ERROR:
        tail, room = "", width - len(head)
    return _clip(head + _clip(error, max(room, _ATTEMPT_MIN_ERROR)) + tail, width)


def _with_attempts(
    rows: Sequence[str],
    failures: Sequence[Sequence[AttemptInfo]],
    indent: str,
    day: dt.date,
    width: int | None,
    *,
    pending: bool = False,
) -> list[str]:
    """Table ``rows`` (header first), each followed by its failed attempts' lines; with
    ``pending``, each row's last attempt is still waiting for its retry."""
    lines = [rows[0]]
    for row, attempts in zip(rows[1:], failures, strict=True):
        lines.append(row)
        for i, attempt in enumerate(attempts):
            due = pending and i == len(attempts) - 1
            lines.append(_attempt_line(attempt, indent, day, width, due=due))
    return lines


def _step_table(steps: Sequence[StepInfo], day: dt.date, width: int | None) -> list[str]:
    """The ``show`` timeline: one row per journal step, then a line per failed attempt of
    it (times dated only when not on ``day``). The replay key gets a column when some key
    differs from the position (steps of concurrent branches, or commits out of call order)."""
    cols = [_Column("#", [str(s.position) for s in steps], right=True)]
    if any(s.key != str(s.position) for s in steps):
        cols.append(_Column("key", [s.key for s in steps]))
    cols += [
        _Column("name", [s.name for s in steps]),
        _Column("status", [s.status.value for s in steps]),
        _Column(
            "duration",
            [_millis(s.duration.total_seconds() * 1000) for s in steps],
            right=True,
        ),
        _Column("attempts", [str(s.attempts) for s in steps], right=True),
    ]
    indent = "  "
    name = next(c for c in cols if c.header == "name")
    if width is not None:
        name.width = min(name.width, 30)
        room = width - len(indent) - _total(cols) - len(_GAP)
        preview_width = max(20, room)
    else:
        preview_width = _STEP_PREVIEW
    outcomes = [
        _error_text(s.error, preview_width)
        if s.error is not None
        else _admin.preview(s.output, preview_width)
        for s in steps
    ]
    cols.append(_Column("output / error", outcomes))
    rows = _render_table(cols, indent)
    # Attempt lines start under the name column.
    nested = indent + " " * (_total(cols[: cols.index(name)]) + len(_GAP))
    return _with_attempts(rows, [s.failures for s in steps], nested, day, width)


def _pending_retries(
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


def _retry_table(
    pending: Sequence[Sequence[AttemptInfo]], day: dt.date, width: int | None
) -> list[str]:
    """Steps waiting for their next attempt: one row each, then a line per failed attempt
    (times dated only when not on ``day``)."""
    cols = [
        _Column("key", [a[-1].key for a in pending]),
        _Column("name", [a[-1].name for a in pending]),
        _Column("next attempt", [str(a[-1].attempt + 1) for a in pending], right=True),
        _Column("due (UTC)", [_time(a[-1].retry_at, millis=True) for a in pending]),
    ]
    indent = "  "
    _shrink(cols, "name", 12, None if width is None else width - len(indent))
    rows = _render_table(cols, indent)
    nested = indent + " " * (cols[0].width + len(_GAP))
    return _with_attempts(rows, pending, nested, day, width, pending=True)


def _header_lines(info: WorkflowInfo, width: int | None) -> list[str]:
    """The ``show`` header: one ``label  value`` line per fact about the workflow."""
    label_width = 12
    room = _HEADER_PREVIEW if width is None else max(20, width - label_width)
    rows: list[tuple[str, str]] = [
        ("id", info.id),
        ("name", info.name),
        ("status", info.status.value),
        ("inputs", _admin.preview_call(info.args, info.kwargs, room)),
    ]
    if info.error is not None:
        rows.append(("error", _error_text(info.error, room)))
    elif info.status is WorkflowStatus.SUCCESS:
        rows.append(("result", _admin.preview(info.output, room)))
    rows += [
        ("created", _time(info.created_at, millis=True) + " UTC"),
        ("updated", _time(info.updated_at, millis=True) + " UTC"),
        ("recoveries", str(info.recoveries)),
    ]
    if info.owner is not None:
        rows.append(("owner", info.owner))
    if info.queue:
        rows.append(("queue", info.queue))
    lines = []
    for label, value in rows:
        value = _one_line(value)
        if width is not None:
            value = _clip(value, max(20, width - label_width))
        lines.append(f"{label:<{label_width}}{_status(value) if label == 'status' else value}")
    return lines


def _approval_table(infos: Sequence[ApprovalInfo], decided: bool, width: int | None) -> list[str]:
    """The ``approvals`` table, made to fit ``width``; with ``decided`` it has the status and
    the decision's columns. The details preview comes last and takes the room that is left.
    To leave it ``_DETAILS_MIN`` columns, first times get shorter, then the decided column
    goes, then (with the decisions) the requested column; then the comment, the workflow
    name and the approval name are cut with "…" (to 12). Still too wide, the details narrow
    to ``_DETAILS_FLOOR`` and those columns, then the id, are cut to 8."""

    def columns(short: bool, decided_at: bool, requested: bool = True) -> list[_Column]:
        cols = [
            _Column("workflow id", [a.workflow_id for a in infos]),
            _Column("workflow", [a.workflow_name for a in infos]),
            _Column("approval", [a.name for a in infos]),
        ]
        if decided:
            cols.append(_Column("status", [a.status for a in infos]))
        if requested or not decided:
            times = [_time(a.requested_at, short=short) for a in infos]
            cols.append(_Column("requested (UTC)", times))
        if decided:
            if decided_at:
                times = ["" if a.decided_at is None else _time(a.decided_at, short=short)
                         for a in infos]  # fmt: skip
                cols.append(_Column("decided (UTC)", times))
            cols.append(_Column("decided by", [a.decided_by or "" for a in infos]))
            cols.append(_Column("comment", [a.comment or "" for a in infos]))
        return cols

    # Room the columns before the details may take, the details keeping _DETAILS_MIN.
    fixed = None if width is None else width - len(_GAP) - _DETAILS_MIN
    cols = columns(False, True)
    for short, decided_at, requested in ((True, True, True), (True, False, True),
                                         (True, False, False)):  # fmt: skip
        if fixed is None or _total(cols) <= fixed:
            break
        cols = columns(short, decided_at, requested)
    for header, minimum in (("comment", 12), ("workflow", 12), ("approval", 12)):
        _shrink(cols, header, minimum, fixed)
    # Still too wide: the details make do with _DETAILS_FLOOR, the names and the id get shorter.
    floor = None if width is None else width - len(_GAP) - _DETAILS_FLOOR
    for header in ("comment", "decided by", "workflow", "approval", "workflow id"):
        _shrink(cols, header, 8, floor)
    room = (
        _DETAILS_PREVIEW if width is None else max(_DETAILS_FLOOR, width - _total(cols) - len(_GAP))
    )
    details = ["" if a.details is None else _admin.preview(a.details, room) for a in infos]
    cols.append(_Column("details", details))
    cols[-1].width = min(cols[-1].width, room)
    return _render_table(cols)


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
            f"JSON is not valid JSON ({exc}): {_clip(text, 40)!r}; quote it for the shell, e.g. "
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
        click.echo(f"No{which} workflows in {_without_password(db)}.")
    else:
        for line in _workflow_table(infos, _terminal_width()):
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
    pending = _pending_retries(steps, attempts)
    tokens = usage(steps)
    saved = replay_saved(store_event)
    if as_json:
        data = _admin.workflow_to_dict(info)
        data["steps"] = [_admin.step_to_dict(step) for step in steps]
        data["retrying"] = [_admin.retrying_to_dict(failures) for failures in pending]
        data["usage"] = {"model_calls": tokens.calls, "input_tokens": tokens.input_tokens,
                         "output_tokens": tokens.output_tokens,
                         "saved_by_replay": {"model_calls": saved.calls,
                                             "input_tokens": saved.input_tokens,
                                             "output_tokens": saved.output_tokens}}  # fmt: skip
        _echo_json(data)
        return
    width = _terminal_width()
    for line in _header_lines(info, width):
        click.echo(line)
    if tokens.calls:
        click.echo(f"{'tokens':<12}{tokens.input_tokens:,} in, {tokens.output_tokens:,} out "
                   f"({tokens.calls} model calls)")  # fmt: skip
    if saved.calls:
        click.echo(f"{'replayed':<12}{saved.calls} model calls ({saved.total_tokens:,} tokens) "
                   "came from the journal on resumption instead of being sent again")  # fmt: skip
    click.echo()
    if not steps:
        click.echo("No steps recorded.")
    else:
        click.echo(f"Steps ({len(steps)}):")
        for line in _step_table(steps, info.created_at.date(), width):
            click.echo(line)
    if pending:
        click.echo()
        if info.status.finished:
            heading = f"Not retried ({len(pending)}), the workflow ended first:"
        else:
            heading = f"Retrying ({len(pending)}):"
        click.echo(heading)
        for line in _retry_table(pending, info.created_at.date(), width):
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
        click.echo(f"No{which} approvals in {_without_password(db)}.")
    else:
        for line in _approval_table(infos, show_all, _terminal_width()):
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
