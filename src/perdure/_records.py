"""Public, read-only views of workflows and journal steps, built from store rows.

Payloads are decoded leniently: a value whose class is not importable in this process stays
the tagged dict it was stored as, so a tool that does not have the application's code (the
CLI, a dashboard) can still show it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from . import _serialize
from ._errors import SerializationError
from .store import StepRow, StepStatus, WorkflowRow, WorkflowStatus


@dataclass(frozen=True)
class ErrorInfo:
    """A recorded exception: its qualified type name and message."""

    type: str
    message: str

    @classmethod
    def from_text(cls, text: str | None) -> ErrorInfo | None:
        """Summarize stored error JSON (None stays None)."""
        return None if text is None else cls(*_serialize.error_summary(text))


@dataclass(frozen=True)
class WorkflowInfo:
    """One workflow run as recorded.

    Attributes:
        id: the workflow id (its idempotency key).
        name: the registered workflow name.
        status: PENDING, RUNNING, SUCCESS or ERROR.
        args, kwargs: the inputs it was started with.
        output: the result, when status is SUCCESS.
        error: the exception, when status is ERROR.
        created_at, updated_at: UTC times.
        recoveries: how many times a worker took it over after another stopped or died.
        owner: the worker running it now, if any.
    """

    id: str
    name: str
    status: WorkflowStatus
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any
    error: ErrorInfo | None
    created_at: dt.datetime
    updated_at: dt.datetime
    recoveries: int
    owner: str | None

    @classmethod
    def from_row(cls, row: WorkflowRow) -> WorkflowInfo:
        """Build from a store row."""
        try:
            args, kwargs = decode_inputs(row.inputs, None, strict=False)
        except SerializationError:
            args, kwargs = (f"<unreadable inputs: {row.inputs[:200]!r}>",), {}
        return cls(
            id=row.id,
            name=row.name,
            status=row.status,
            args=args,
            kwargs=kwargs,
            output=_lenient(row.output),
            error=ErrorInfo.from_text(row.error),
            created_at=_utc(row.created_at),
            updated_at=_utc(row.updated_at),
            recoveries=row.recoveries,
            owner=row.owner,
        )


@dataclass(frozen=True)
class StepInfo:
    """One journal entry: a step's recorded outcome.

    Attributes:
        workflow_id, position, name: which step of which run.
        status: SUCCESS or ERROR.
        output: the recorded return value (SUCCESS).
        error: the recorded exception (ERROR).
        started_at, finished_at: UTC times of the execution that was recorded.
        attempts: how many times the body ran before this outcome was recorded.
    """

    workflow_id: str
    position: int
    name: str
    status: StepStatus
    output: Any
    error: ErrorInfo | None
    started_at: dt.datetime
    finished_at: dt.datetime
    attempts: int

    @property
    def duration(self) -> dt.timedelta:
        """How long the recorded execution took."""
        return self.finished_at - self.started_at

    @classmethod
    def from_row(cls, row: StepRow) -> StepInfo:
        """Build from a store row."""
        return cls(
            workflow_id=row.workflow_id,
            position=row.position,
            name=row.name,
            status=row.status,
            output=_lenient(row.output),
            error=ErrorInfo.from_text(row.error),
            started_at=_utc(row.started_at),
            finished_at=_utc(row.finished_at),
            attempts=row.attempts,
        )


def encode_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Journal JSON for a workflow's inputs.

    Raises:
        UnserializableValue: an argument cannot be journaled.
    """
    return _serialize.dumps({"args": list(args), "kwargs": kwargs})


def decode_inputs(
    text: str, hints: dict[str, Any] | None, *, strict: bool = True
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Read back a workflow's inputs; ``hints`` (parameter annotations) name the classes."""
    for hint in (hints or {}).values():
        _serialize.remember_hint(hint)
    try:
        data = _serialize.loads(text, strict=strict)
        return tuple(data["args"]), dict(data["kwargs"])
    except (KeyError, TypeError) as exc:
        raise SerializationError(f"stored workflow inputs are malformed: {exc}") from exc


def _lenient(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return _serialize.loads(text, strict=False)
    except SerializationError:
        return text


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)
