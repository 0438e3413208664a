"""Read-only admin operations over a store, shared by the CLI and (later) the HTTP API.

Everything here takes an open :class:`~perdure.store.Store` (from
:func:`perdure.store.open_store`) and speaks in the public records, :class:`WorkflowInfo` and
:class:`StepInfo`. Nothing here runs workflows, registers a worker or writes SQL: inspecting a
database must never start recovering the workflows in it.

Two renderings of recorded values live here too:

* :func:`workflow_to_dict` / :func:`step_to_dict` / :func:`attempt_to_dict` /
  :func:`retrying_to_dict` / :func:`approval_to_dict` give JSON-ready dicts (ISO 8601 times,
  plain JSON values; see :func:`to_jsonable` for how richer types map).
* :func:`preview` gives a one-line, width-limited, JSON-ish text for tables.

Records decode payloads leniently: a value of a class this process does not know stays the
tagged dict it was stored as (``{"$dataclass": "app:Ticket", "fields": {...}}``). Both
renderings treat such a dict like an instance of the class, so output does not depend on
whether the application's code happens to be imported.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import json
import math
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

from ._errors import ConfigurationError, WorkflowNotFound
from ._records import AttemptInfo, ErrorInfo, StepInfo, WorkflowInfo, validate_workflow_id
from ._signals import ApprovalInfo
from .store import Store, WorkflowStatus

__all__ = [
    "DEFAULT_LIMIT",
    "approval_to_dict",
    "attempt_to_dict",
    "error_text",
    "get_workflow",
    "list_attempts",
    "list_steps",
    "list_workflows",
    "parse_status",
    "preview",
    "preview_call",
    "retrying_to_dict",
    "step_to_dict",
    "to_jsonable",
    "workflow_to_dict",
]

DEFAULT_LIMIT = 50
"""How many workflows a listing returns unless told otherwise."""

_MAX_DEPTH = 200
# The tags of class instances whose class was unknown when decoding, and the key of the body.
_CLASS_TAGS = {"$dataclass": "fields", "$model": "data", "$enum": "value"}


# -- operations ----------------------------------------------------------------------------


def parse_status(status: WorkflowStatus | str | None) -> WorkflowStatus | None:
    """Turn a status name (any case) into a :class:`WorkflowStatus`; None stays None.

    Raises:
        ConfigurationError: not a status name.
    """
    if status is None or isinstance(status, WorkflowStatus):
        return status
    try:
        return WorkflowStatus(status.strip().upper())
    except ValueError:
        choices = ", ".join(s.value for s in WorkflowStatus)
        raise ConfigurationError(f"unknown status {status!r}: use one of {choices}") from None


def list_workflows(
    store: Store,
    status: WorkflowStatus | str | None = None,
    name: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[WorkflowInfo]:
    """Workflows, newest first, optionally filtered by status and by exact name.

    Raises:
        ConfigurationError: ``status`` is not a status name or ``limit`` is below 1.
        StoreError: the database failed or holds a row that cannot be read.
        SerializationError: a workflow's stored inputs are malformed.
    """
    if limit < 1:
        raise ConfigurationError(f"limit must be at least 1, not {limit}")
    wanted = parse_status(status)
    return [WorkflowInfo.from_row(row) for row in store.list_workflows(wanted, name, limit)]


def get_workflow(store: Store, workflow_id: str) -> WorkflowInfo:
    """The workflow with this id.

    Raises:
        WorkflowNotFound: no such workflow.
        StoreError: the database failed or the row cannot be read.
        SerializationError: the workflow's stored inputs are malformed.
        ConfigurationError: ``workflow_id`` is not a valid workflow id (empty, too long,
            control characters or lone surrogates): no workflow can have it.
    """
    row = store.get_workflow(validate_workflow_id(workflow_id))
    if row is None:
        raise WorkflowNotFound(workflow_id)
    return WorkflowInfo.from_row(row)


def list_steps(store: Store, workflow_id: str) -> list[StepInfo]:
    """The workflow's journal, by position.

    Raises:
        WorkflowNotFound: no such workflow.
        StoreError: the database failed or a row cannot be read.
        ConfigurationError: ``workflow_id`` is not a valid workflow id.
    """
    if store.get_workflow(validate_workflow_id(workflow_id)) is None:
        raise WorkflowNotFound(workflow_id)
    failures: dict[str, list[AttemptInfo]] = {}
    for attempt in store.load_attempts(workflow_id):
        failures.setdefault(attempt.key, []).append(AttemptInfo.from_row(attempt))
    return [
        StepInfo.from_row(row, tuple(failures.get(row.key, ())))
        for row in store.load_steps(workflow_id)
    ]


def list_attempts(store: Store, workflow_id: str) -> list[AttemptInfo]:
    """Every failed attempt of the workflow's steps, oldest first, including those of a
    step still being retried (which has no journal entry yet).

    Raises:
        WorkflowNotFound: no such workflow.
        ConfigurationError: ``workflow_id`` is not a valid workflow id.
    """
    if store.get_workflow(validate_workflow_id(workflow_id)) is None:
        raise WorkflowNotFound(workflow_id)
    return [AttemptInfo.from_row(row) for row in store.load_attempts(workflow_id)]


# -- JSON ----------------------------------------------------------------------------------


def workflow_to_dict(info: WorkflowInfo) -> dict[str, Any]:
    """A workflow record as JSON-ready data (times as ISO 8601 UTC strings), with its
    lineage: ``version`` (the code version that started it), ``forked_from`` and
    ``forked_at`` (for a fork: the original run and the journal position it was forked at;
    else null)."""
    return {
        "id": info.id,
        "name": info.name,
        "status": info.status.value,
        "args": to_jsonable(list(info.args)),
        "kwargs": to_jsonable(info.kwargs),
        "output": to_jsonable(info.output),
        "error": _error_to_dict(info.error),
        "created_at": info.created_at.isoformat(),
        "updated_at": info.updated_at.isoformat(),
        "recoveries": info.recoveries,
        "owner": info.owner,
        "version": info.version,
        "forked_from": info.forked_from,
        "forked_at": info.forked_at,
    }


def step_to_dict(info: StepInfo) -> dict[str, Any]:
    """A journal step as JSON-ready data (times as ISO 8601 UTC strings, duration in ms), with
    its failed attempts (each retried) under ``failures``, oldest first."""
    return {
        "workflow_id": info.workflow_id,
        "position": info.position,
        "key": info.key,
        "name": info.name,
        "status": info.status.value,
        "output": to_jsonable(info.output),
        "error": _error_to_dict(info.error),
        "started_at": info.started_at.isoformat(),
        "finished_at": info.finished_at.isoformat(),
        "duration_ms": round(info.duration.total_seconds() * 1000, 3),
        "attempts": info.attempts,
        "failures": [attempt_to_dict(attempt) for attempt in info.failures],
    }


def attempt_to_dict(info: AttemptInfo) -> dict[str, Any]:
    """A failed attempt as JSON-ready data (times as ISO 8601 UTC strings)."""
    return {
        "key": info.key,
        "attempt": info.attempt,
        "name": info.name,
        "error": _error_to_dict(info.error),
        "started_at": info.started_at.isoformat(),
        "failed_at": info.failed_at.isoformat(),
        "retry_at": info.retry_at.isoformat(),
    }


def retrying_to_dict(failures: Sequence[AttemptInfo]) -> dict[str, Any]:
    """A step waiting for its next attempt (it has no journal entry yet), from its failed
    attempts (one key, oldest first), as JSON-ready data: ``next_attempt`` is the number of
    the attempt due at ``retry_at``.

    Raises:
        ValueError: ``failures`` is empty.
    """
    if not failures:
        raise ValueError("a retrying step has at least one failed attempt")
    last = failures[-1]
    return {
        "key": last.key,
        "name": last.name,
        "next_attempt": last.attempt + 1,
        "retry_at": last.retry_at.isoformat(),
        "failures": [attempt_to_dict(attempt) for attempt in failures],
    }


def approval_to_dict(info: ApprovalInfo) -> dict[str, Any]:
    """An approval request as JSON-ready data (times as ISO 8601 UTC strings; ``decided_at``,
    ``decided_by`` and ``comment`` are None until it is decided)."""
    return {
        "workflow_id": info.workflow_id,
        "workflow_name": info.workflow_name,
        "name": info.name,
        "status": info.status,
        "details": to_jsonable(info.details),
        "requested_at": info.requested_at.isoformat(),
        "decided_at": None if info.decided_at is None else info.decided_at.isoformat(),
        "decided_by": info.decided_by,
        "comment": info.comment,
    }


def _error_to_dict(error: ErrorInfo | None) -> dict[str, str] | None:
    return None if error is None else {"type": error.type, "message": error.message}


def to_jsonable(value: Any) -> Any:
    """Turn a decoded journal value into plain JSON data (what ``json.dumps`` accepts with
    ``allow_nan=False``).

    JSON values stay as they are. Tuples and sets become lists (sets sorted), dicts with
    non-string keys get their keys rendered as JSON text, datetimes/dates/times become ISO
    strings, timedeltas seconds, UUIDs and Decimals strings, bytes base64 strings, NaN and
    infinities the strings ``"nan"``/``"inf"``/``"-inf"``. An enum becomes its value, a
    dataclass or pydantic model a dict of its fields, known class or not. Anything else
    becomes its ``repr``.
    """
    return _jsonable(value, 0)


def _jsonable(value: Any, depth: int) -> Any:
    t = type(value)
    if value is None or t is str or t is int or t is bool:
        return value
    if depth > _MAX_DEPTH:
        return "…"
    d = depth + 1
    if t is float:
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        tagged = _tagged_instance(value)
        if tagged is not None:
            return _jsonable(tagged[1], d)
        return {_json_key(k, d): _jsonable(v, d) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, d) for v in value]
    if isinstance(value, set | frozenset):
        items = [_jsonable(v, d) for v in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    if isinstance(value, enum.Enum):
        return _jsonable(value.value, d)
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, float | int):  # subclasses
        return _jsonable(float(value) if isinstance(value, float) else int(value), d)
    if isinstance(value, str):
        return str(value)
    fields = _fields(value)
    if fields is not None:
        return {k: _jsonable(v, d) for k, v in fields.items()}
    return repr(value)


def _json_key(key: Any, depth: int) -> str:
    if isinstance(key, str):
        return key
    return json.dumps(_jsonable(key, depth), ensure_ascii=False, separators=(",", ":"))


def _tagged_instance(value: dict[Any, Any]) -> tuple[str, Any] | None:
    """(qualified class name, body) of an instance that stayed a tagged dict, or None."""
    if len(value) != 2:
        return None
    tag = next(iter(value))
    body_key = _CLASS_TAGS.get(tag) if isinstance(tag, str) else None
    if body_key is None or body_key not in value or not isinstance(value[tag], str):
        return None
    return value[tag].partition(":")[2] or value[tag], value[body_key]


def _fields(value: Any) -> dict[str, Any] | None:
    """The fields of a dataclass instance or pydantic model, or None for other objects."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
    dump = getattr(type(value), "model_dump", None)
    if callable(dump) and hasattr(type(value), "model_fields"):
        try:
            data = value.model_dump()
        except Exception:  # a broken model: fall back to its repr
            return None
        return data if isinstance(data, dict) else None
    return None


# -- previews ------------------------------------------------------------------------------


def preview(value: Any, width: int = 60) -> str:
    """A one-line, JSON-ish rendering of a decoded value, cut to ``width`` with "…".

    Strings are quoted and escaped as JSON, so the result never spans lines. Dataclasses
    and models read ``Ticket(id=1, title="x")``, enums ``Color.RED`` (or ``Color(1)`` when
    the class is unknown here), bytes ``<12 bytes>``. Rendering stops once ``width`` is
    exceeded, so huge values are cheap to preview.
    """
    return _cut(_render(value, 0, width), width)


def preview_call(args: tuple[Any, ...], kwargs: dict[str, Any], width: int = 60) -> str:
    """A workflow's inputs as a call's argument list: ``("alice", retries=3)``."""

    def chunks() -> Iterator[str]:
        yield "("
        first = True
        for value in args:
            if not first:
                yield ", "
            first = False
            yield from _render(value, 1, width)
        for key, value in kwargs.items():
            if not first:
                yield ", "
            first = False
            yield f"{key}="
            yield from _render(value, 1, width)
        yield ")"

    return _cut(chunks(), width)


def error_text(error: ErrorInfo, width: int = 60) -> str:
    """``Type: message`` on one line, cut to ``width``; builtin types lose "builtins."."""
    kind = error.type.removeprefix("builtins.")
    message = " ".join(error.message.split())
    text = f"{kind}: {message}" if message else kind
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _cut(chunks: Iterator[str], width: int) -> str:
    width = max(1, width)
    parts: list[str] = []
    length = 0
    for chunk in chunks:
        parts.append(chunk)
        length += len(chunk)
        if length > width:
            break
    text = "".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


def _render(value: Any, depth: int, budget: int) -> Iterator[str]:
    t = type(value)
    if value is None:
        yield "null"
    elif t is bool:
        yield "true" if value else "false"
    elif isinstance(value, enum.Enum):
        yield f"{type(value).__name__}.{value.name}"
    elif isinstance(value, str):
        yield json.dumps(str(value[: budget + 1]), ensure_ascii=False)
    elif isinstance(value, int | float):
        yield repr(float(value) if isinstance(value, float) else int(value))
    elif depth > _MAX_DEPTH:
        yield "…"
    elif isinstance(value, dict):
        tagged = _tagged_instance(value)
        if tagged is not None:
            yield from _render_instance(tagged[0], tagged[1], depth, budget)
        else:
            yield from _render_items(
                "{", "}", ((k, v) for k, v in value.items()), depth, budget, mapping=True
            )
    elif isinstance(value, list | tuple):
        yield from _render_items("[", "]", ((None, v) for v in value), depth, budget)
    elif isinstance(value, set | frozenset):
        yield from _render_items("{", "}", ((None, v) for v in value), depth, budget)
    elif isinstance(value, dt.datetime | dt.date | dt.time):
        yield value.isoformat()
    elif isinstance(value, dt.timedelta | uuid.UUID | Decimal):
        yield str(value)
    elif isinstance(value, bytes | bytearray):
        yield f"<{len(value)} bytes>"
    else:
        fields = _fields(value)
        if fields is not None:
            yield from _render_instance(type(value).__qualname__, fields, depth, budget)
        else:
            yield repr(value)[: budget + 1]


def _render_instance(qualname: str, body: Any, depth: int, budget: int) -> Iterator[str]:
    """``Name(a=1, b=2)`` for fields, ``Name(value)`` for an unknown enum's value."""
    yield qualname.rpartition(".")[2] or qualname
    if isinstance(body, dict) and all(isinstance(k, str) for k in body):
        yield "("
        for i, (key, value) in enumerate(body.items()):
            if i:
                yield ", "
            yield f"{key}="
            yield from _render(value, depth + 1, budget)
        yield ")"
    else:
        yield "("
        yield from _render(body, depth + 1, budget)
        yield ")"


def _render_items(
    opening: str,
    closing: str,
    items: Iterator[tuple[Any, Any]],
    depth: int,
    budget: int,
    *,
    mapping: bool = False,
) -> Iterator[str]:
    yield opening
    for i, (key, value) in enumerate(items):
        if i:
            yield ", "
        if mapping:
            yield from _render(key, depth + 1, budget)
            yield ": "
        yield from _render(value, depth + 1, budget)
    yield closing
