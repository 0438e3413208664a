"""Talking to workflows from outside: send messages, read events, decide approvals.

Shared by :class:`~perdure.Engine` and the CLI (and later the HTTP API), over a store; none
of this needs to run workflows. A waiting workflow is claimed and resumed by a worker that
notices the message (at once in the sending engine, within its poll interval in others).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from . import _serialize
from ._errors import ConfigurationError, PerdureError, SerializationError, WorkflowNotFound
from ._records import lenient, utc, validate_name, validate_workflow_id
from ._waits import decision_message
from .store import Store


class ApprovalNotPending(PerdureError):
    """There is no pending approval of that name for that workflow (never asked, or already
    decided or timed out)."""


@dataclass(frozen=True)
class ApprovalInfo:
    """An approval request, as ``engine.pending_approvals()`` lists it.

    Attributes:
        workflow_id, workflow_name: who asks.
        name: the approval's name.
        details: what the workflow attached for the human (decoded leniently).
        status: PENDING, APPROVED, REJECTED or TIMED_OUT.
        requested_at, decided_at: UTC times; decided_by, comment: the decision's.
    """

    workflow_id: str
    workflow_name: str
    name: str
    details: Any
    status: str
    requested_at: dt.datetime
    decided_at: dt.datetime | None
    decided_by: str | None
    comment: str | None


def send(
    store: Store, workflow_id: str, topic: str, payload: Any, idempotency_key: str | None
) -> bool:
    """Queue a message for a workflow (see :meth:`perdure.Engine.send`)."""
    validate_workflow_id(workflow_id)
    if payload is None:
        raise ConfigurationError("a message payload cannot be None (receive() returns None "
                                 "on timeout)")  # fmt: skip
    validate_name(topic, "message topic")
    try:
        text = _serialize.dumps(payload)
    except _serialize.UnserializableValue as exc:
        raise SerializationError(
            f"message to {workflow_id!r} on {topic!r} cannot be journaled: {exc.type_name} at "
            f"{exc.path or 'the top level'}{exc.reason}"
        ) from None
    if store.get_workflow(workflow_id) is None:
        raise WorkflowNotFound(workflow_id)
    return store.send_message(workflow_id, topic, text, idempotency_key)


def get_event(store: Store, workflow_id: str, key: str, timeout: float | None) -> Any:
    """A workflow's event value, waiting up to ``timeout`` seconds for it; None if absent."""
    validate_name(key, "event key")
    if store.get_workflow(validate_workflow_id(workflow_id)) is None:
        raise WorkflowNotFound(workflow_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.005
    while True:
        text = store.get_event(workflow_id, key)
        if text is not None:
            return _serialize.loads(text, strict=False)
        if deadline is None or time.monotonic() >= deadline:
            return None
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.1)


def decide(
    store: Store, workflow_id: str, name: str, approved: bool, by: str | None, comment: str | None
) -> None:
    """Approve or reject a pending approval (see :meth:`perdure.Engine.approve`).

    Raises:
        WorkflowNotFound: no such workflow.
        ApprovalNotPending: nothing of that name waits for a decision.
        ConfigurationError: ``workflow_id`` is not a valid workflow id, or ``name`` not a
            valid approval name.
    """
    validate_name(name, "approval name")
    if store.get_workflow(validate_workflow_id(workflow_id)) is None:
        raise WorkflowNotFound(workflow_id)
    status = "APPROVED" if approved else "REJECTED"
    message = decision_message(approved, by, comment)
    if not store.decide_approval(workflow_id, name, status, by, comment, message):
        raise ApprovalNotPending(
            f"workflow {workflow_id!r} has no pending approval named {name!r} (it was never "
            "requested, or is already decided or timed out): see `perdure approvals`"
        )


def list_approvals(store: Store, pending_only: bool = True, limit: int = 100) -> list[ApprovalInfo]:
    """Approval requests, oldest first (by default only those waiting for a human)."""
    return [
        ApprovalInfo(
            row.workflow_id,
            row.workflow_name,
            row.name,
            lenient(row.details),
            row.status,
            utc(row.requested_at),
            None if row.decided_at is None else utc(row.decided_at),
            row.decided_by,
            row.comment,
        )
        for row in store.list_approvals(pending_only, limit)
    ]
