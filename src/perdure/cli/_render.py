"""How the ``perdure`` command shows things in a terminal: tables that fit its width, times,
statuses in colour, previews of payloads and errors. Pure functions of the public records;
the commands in :mod:`perdure.cli` print what these return."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click

from .. import _admin
from .._records import AttemptInfo, ErrorInfo, StepInfo, WorkflowInfo
from .._signals import ApprovalInfo
from ..store import WorkflowStatus

_PACKAGE = __name__.partition(".")[0]
_GAP = "  "
_STEP_PREVIEW = 60  # output preview width when stdout is not a terminal
_HEADER_PREVIEW = 100  # inputs/result preview width when stdout is not a terminal
_ATTEMPT_PREVIEW = 100  # error width of an attempt line when stdout is not a terminal
_ATTEMPT_MIN_ERROR = 24  # narrower than this, an attempt line drops its retry time instead
_DETAILS_MIN = 20  # the details preview an approvals table fit to a terminal keeps if it can
_DETAILS_FLOOR = 12  # ... and the narrowest it gets
_DETAILS_PREVIEW = 60  # details preview width when stdout is not a terminal
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


def terminal_width() -> int | None:
    """Columns to fit output into: the terminal's (or $COLUMNS), None when piped."""
    if "COLUMNS" in os.environ or sys.stdout.isatty():
        return max(40, shutil.get_terminal_size().columns)
    return None


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped, safe for a cell."""
    if text.isprintable():
        return text
    return "".join(
        ch if unicodedata.category(ch) != "Cc" else repr(ch)[1:-1] for ch in text
    ).replace("\u2028", "\\u2028")


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def without_password(url: str) -> str:
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
    return one_line(_admin.error_text(error, width))


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
        self.cells = [one_line(cell) for cell in self.cells]
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
            cell = clip(cell, column.width)
            padded = cell.rjust(column.width) if column.right else cell.ljust(column.width)
            parts.append(_status(padded) if column.header == "status" else padded)
        return (indent + _GAP.join(parts)).rstrip()

    lines = [line([c.header for c in columns])]
    lines.extend(line(cells) for cells in zip(*(c.cells for c in columns), strict=True))
    return lines


def workflow_table(infos: Sequence[WorkflowInfo], width: int | None) -> list[str]:
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
    return clip(head + clip(error, max(room, _ATTEMPT_MIN_ERROR)) + tail, width)


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


def step_table(steps: Sequence[StepInfo], day: dt.date, width: int | None) -> list[str]:
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


def retry_table(
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


def header_lines(info: WorkflowInfo, width: int | None) -> list[str]:
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
    if info.version is not None:
        rows.append(("version", info.version))
    if info.forked_from is not None:
        rows.append(("forked from", f"{info.forked_from} at position {info.forked_at}"))
    lines = []
    for label, value in rows:
        value = one_line(value)
        if width is not None:
            value = clip(value, max(20, width - label_width))
        lines.append(f"{label:<{label_width}}{_status(value) if label == 'status' else value}")
    return lines


def approval_table(infos: Sequence[ApprovalInfo], decided: bool, width: int | None) -> list[str]:
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
