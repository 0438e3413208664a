"""The HTTP API's request bodies and the documented shapes of its responses.

Request models validate what clients send (unknown fields are refused). Response models only
document: the routes return the JSON that :mod:`perdure._admin` and
:mod:`perdure._operations` build (the same as ``perdure show --json``), and the models allow
extra fields, so a field added there shows up in the API without being filtered out.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .._operations import RESERVED_KWARGS, RESERVED_QUEUE_KWARGS
from ..store import WorkflowStatus

__all__ = [
    "ApprovalList",
    "ApprovalOut",
    "CancelOut",
    "DecisionRequest",
    "ErrorOut",
    "ForkRequest",
    "HealthOut",
    "MessageRequest",
    "OkOut",
    "ResultOut",
    "SentOut",
    "StartRequest",
    "WhoAmIOut",
    "WorkflowDetail",
    "WorkflowList",
    "WorkflowOut",
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _valid_unicode(self) -> Self:
        """Refuse lone surrogates (JSON lets ``"\\ud800"`` through; no database takes it)."""
        for name in type(self).model_fields:
            if not _is_unicode(getattr(self, name)):
                raise ValueError(f"{name} holds a lone surrogate: text must be valid Unicode")
        return self


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


def _is_unicode(value: Any) -> bool:
    """Whether every string in a JSON value (keys included) encodes as UTF-8."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


# -- requests ------------------------------------------------------------------------------


#: what a text parameter may not hold: NUL, which PostgreSQL refuses in text
NO_NUL = r"^[^\x00]*$"
#: a workflow id: no control character (and 1 to 255 characters)
WORKFLOW_ID = r"^[^\x00-\x1f\x7f-\x9f]+$"


class StartRequest(_Request):
    """Start (or, with ``queue``, enqueue) a workflow registered in the server."""

    name: str = Field(min_length=1, pattern=NO_NUL, description="the workflow's registered name")
    args: list[Any] = Field(default_factory=list, description="positional arguments")
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments (a parameter named self, fn or id, or with a queue "
        "also queue or priority, goes in args instead)",
    )
    id: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        pattern=WORKFLOW_ID,
        description="the workflow id, its idempotency key: 1 to 255 characters, no control "
        "character (default: a new UUID)",
    )
    queue: str | None = Field(
        default=None,
        min_length=1,
        pattern=NO_NUL,
        description="enqueue on this perdure.Queue instead",
    )

    @model_validator(mode="after")
    def _no_reserved_kwargs(self) -> Self:
        reserved = RESERVED_QUEUE_KWARGS if self.queue is not None else RESERVED_KWARGS
        clash = sorted(reserved & set(self.kwargs))
        if clash:
            raise ValueError(
                f"kwargs cannot hold {', '.join(clash)} (the engine's own arguments): pass "
                "that argument by position in args"
            )
        return self


class MessageRequest(_Request):
    """A message for the workflow's ``perdure.receive(topic)``."""

    topic: str = Field(min_length=1, pattern=NO_NUL)
    payload: Any = Field(description="any JSON value but null")
    key: str | None = Field(
        default=None,
        pattern=NO_NUL,
        description="idempotency key: a second message with it (same workflow and topic) is "
        "not queued",
    )


class ForkRequest(_Request):
    """Fork a workflow: a new run that replays its journal before ``from_step`` and executes
    from there on."""

    from_step: int = Field(
        ge=0,
        strict=True,
        description="the first journal position the fork executes again (positions as in the "
        "workflow's steps); the entries before it replay",
    )
    new_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        pattern=WORKFLOW_ID,
        description="the fork's id: 1 to 255 characters, no control character (default: "
        "<id>-fork-<8 hex digits>)",
    )
    replace_output: Any = Field(
        default=None,
        description="a value (any JSON, null included) the entry at from_step records as its "
        "result instead of its own: the fork then executes from from_step + 1. Absent: no "
        "replacement",
    )

    @property
    def replaces(self) -> bool:
        """Whether the request gave ``replace_output`` (null is a value; absence is not)."""
        return "replace_output" in self.model_fields_set


class DecisionRequest(_Request):
    """An approve or reject decision."""

    comment: str | None = Field(default=None, pattern=NO_NUL, description="passed to the workflow")


# -- responses -----------------------------------------------------------------------------


class ErrorDetail(_Response):
    code: str = Field(description="a stable code, e.g. workflow_not_found")
    message: str


class ErrorOut(_Response):
    """Every error: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


class ErrorInfoOut(_Response):
    type: str = Field(description="the exception's qualified class name")
    message: str


class HealthOut(_Response):
    ok: bool


class WhoAmIOut(_Response):
    name: str
    role: Literal["read", "operator"]


class WorkflowOut(_Response):
    """A workflow record (times are ISO 8601 UTC)."""

    id: str
    name: str
    status: WorkflowStatus
    args: list[Any]
    kwargs: dict[str, Any]
    output: Any = Field(description="the result once SUCCESS, else null")
    error: ErrorInfoOut | None
    created_at: str
    updated_at: str
    recoveries: int
    owner: str | None
    version: str | None = Field(
        default=None, description="the code version that started it (null: unknown)"
    )
    forked_from: str | None = Field(
        default=None, description="for a fork: the id of the run it was forked from"
    )
    forked_at: int | None = Field(
        default=None, description="for a fork: the journal position it was forked at"
    )


class UsageOut(_Response):
    model_calls: int
    input_tokens: int
    output_tokens: int


class WorkflowDetail(WorkflowOut):
    """A workflow with its journal (``steps``), the steps waiting for their next attempt
    (``retrying``) and the tokens its model calls used (``usage``)."""

    steps: list[dict[str, Any]]
    retrying: list[dict[str, Any]]
    usage: dict[str, Any]


class WorkflowList(_Response):
    workflows: list[WorkflowOut]


class ResultOut(_Response):
    """The status, with ``output`` once SUCCESS or ``error`` once it failed."""

    id: str
    status: WorkflowStatus
    output: Any = None
    error: ErrorInfoOut | None = None


class CancelOut(_Response):
    id: str
    status: WorkflowStatus = Field(
        description="the workflow's status when the request was recorded"
    )


class SentOut(_Response):
    sent: bool = Field(description="false if a message with that key was sent before")


class ApprovalOut(_Response):
    """An approval request (times are ISO 8601 UTC; the decision's fields are null until
    it is decided)."""

    workflow_id: str
    workflow_name: str
    name: str
    status: str = Field(description="PENDING, APPROVED, REJECTED, TIMED_OUT or CLOSED")
    details: Any
    requested_at: str
    decided_at: str | None
    decided_by: str | None
    comment: str | None


class ApprovalList(_Response):
    approvals: list[ApprovalOut]


class OkOut(_Response):
    ok: bool
