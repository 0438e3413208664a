"""Public, read-only views of workflows and journal steps, built from store rows.

Payloads are decoded leniently: a value whose class is not importable in this process stays
the tagged dict it was stored as, so a tool that does not have the application's code (the
CLI, a dashboard) can still show it.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass
from typing import Any

from . import _serialize
from ._decorators import WorkflowSpec
from ._errors import ConfigurationError, SerializationError
from .store import AttemptRow, StepRow, StepStatus, WorkflowRow, WorkflowStatus


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
        status: ENQUEUED, PENDING, RUNNING, WAITING, SUCCESS, ERROR, CANCELLED or
            DEAD_LETTER.
        args, kwargs: the inputs it was started with.
        output: the result, when status is SUCCESS.
        error: the exception, when status is ERROR.
        created_at, updated_at: UTC times.
        recoveries: how many times a worker took it over after another stopped or died.
        owner: the worker running it now, if any.
        queue: the queue it was enqueued on, if any.
        version: the version of the code that started it (see docs/change-safety.md).
        forked_from, forked_at: for a fork, the run it was forked from and the journal
            position it executes from.
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
    queue: str | None = None
    version: str | None = None
    forked_from: str | None = None
    forked_at: int | None = None

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
            output=lenient(row.output),
            error=ErrorInfo.from_text(row.error),
            created_at=utc(row.created_at),
            updated_at=utc(row.updated_at),
            recoveries=row.recoveries,
            owner=row.owner,
            queue=row.queue,
            version=row.version,
            forked_from=row.forked_from,
            forked_at=row.forked_at,
        )


@dataclass(frozen=True)
class AttemptInfo:
    """A failed attempt of a step that was retried.

    Attributes:
        key: the step's replay key; attempt: its number (1 = the first try).
        name: the step's name; error: what the attempt raised.
        started_at, failed_at: when it ran (engine clock, UTC).
        retry_at: when the next attempt was due.
    """

    key: str
    attempt: int
    name: str
    error: ErrorInfo
    started_at: dt.datetime
    failed_at: dt.datetime
    retry_at: dt.datetime

    @classmethod
    def from_row(cls, row: AttemptRow) -> AttemptInfo:
        """Build from a store row."""
        error = ErrorInfo.from_text(row.error) or ErrorInfo("unknown", "")
        return cls(row.key, row.attempt, row.name, error, utc(row.started_at),
                   utc(row.failed_at), utc(row.retry_at))  # fmt: skip


@dataclass(frozen=True)
class StepInfo:
    """One journal entry: a step's recorded outcome.

    Attributes:
        workflow_id, name: which step of which run.
        position: the entry's place in commit order.
        key: the call's replay key (its index in the workflow's main line, or ``t0/1``-style
            for a step called in a task the workflow started).
        status: SUCCESS or ERROR.
        output: the recorded return value (SUCCESS).
        error: the recorded exception (ERROR).
        started_at, finished_at: UTC times of the execution that was recorded.
        attempts: how many times the body ran before this outcome was recorded.
        failures: the failed attempts before the last one (each retried), oldest first.
    """

    workflow_id: str
    position: int
    key: str
    name: str
    status: StepStatus
    output: Any
    error: ErrorInfo | None
    started_at: dt.datetime
    finished_at: dt.datetime
    attempts: int
    failures: tuple[AttemptInfo, ...] = ()

    @property
    def duration(self) -> dt.timedelta:
        """How long the recorded execution took."""
        return self.finished_at - self.started_at

    @classmethod
    def from_row(cls, row: StepRow, failures: tuple[AttemptInfo, ...] = ()) -> StepInfo:
        """Build from a store row (and the step's failed attempts)."""
        return cls(
            failures=failures,
            workflow_id=row.workflow_id,
            position=row.position,
            key=row.key,
            name=row.name,
            status=row.status,
            output=lenient(row.output),
            error=ErrorInfo.from_text(row.error),
            started_at=utc(row.started_at),
            finished_at=utc(row.finished_at),
            attempts=row.attempts,
        )


MAX_ID_LENGTH = 255


def validate_workflow_id(workflow_id: str) -> str:
    """Check a caller-chosen workflow id: 1 to 255 characters, no control characters.

    Raises:
        ConfigurationError: the id is not acceptable.
    """
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ConfigurationError(f"a workflow id must be a non-empty string, not {workflow_id!r}")
    if len(workflow_id) > MAX_ID_LENGTH:
        raise ConfigurationError(
            f"workflow id is {len(workflow_id)} characters long; the limit is {MAX_ID_LENGTH}"
        )
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in workflow_id):
        raise ConfigurationError(
            f"workflow id {workflow_id!r} contains a control character or lone surrogate"
        )
    return workflow_id


def validate_name(name: str, what: str) -> str:
    """Check a message topic, an event key or an approval name: a non-empty string without
    control characters or lone surrogates (which no database stores the same way).

    Raises:
        ConfigurationError: the name is not acceptable.
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a {what} must be a non-empty string, not {name!r}")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        raise ConfigurationError(f"{what} {name!r} contains a control character or lone surrogate")
    return name


def bind_inputs(
    spec: WorkflowSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Normalize a call's arguments against the workflow's signature, so equivalent calls
    (by position or by keyword, in any order) journal the same inputs.

    Raises:
        ConfigurationError: the arguments do not fit the signature.
    """
    signature = spec.signature()
    if signature is None:
        return args, dict(sorted(kwargs.items()))
    params = signature.parameters
    if not kwargs and len(args) == len(params) and spec.plain_parameters():
        return (), dict(sorted(zip(params, args, strict=True)))  # what bind() below gives
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ConfigurationError(
            f"workflow {spec.name!r} cannot take these arguments: {exc}"
        ) from None
    if any(p.kind is p.VAR_POSITIONAL for p in params.values()):
        return tuple(bound.args), dict(sorted(bound.kwargs.items()))
    # Named parameters go by name (readable, order-free); positional-only ones by position.
    positional = [bound.arguments[n] for n, p in params.items()
                  if p.kind is p.POSITIONAL_ONLY and n in bound.arguments]  # fmt: skip
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if params[name].kind is params[name].VAR_KEYWORD:
            named.update(value)
        elif params[name].kind is not params[name].POSITIONAL_ONLY:
            named[name] = value
    return tuple(positional), dict(sorted(named.items()))


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


def lenient(text: str | None) -> Any:
    """Decode journal JSON for display: unknown classes stay tagged dicts; garbage stays text."""
    if text is None:
        return None
    try:
        return _serialize.loads(text, strict=False)
    except SerializationError:
        return text


def utc(timestamp: float) -> dt.datetime:
    """An epoch timestamp as an aware UTC datetime."""
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)
