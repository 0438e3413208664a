"""The engine's read and signal operations: inspecting runs, sending messages, reading
events, deciding approvals. Thin, documented delegations to :mod:`perdure._admin` and
:mod:`perdure._signals`, kept apart from the orchestration in :mod:`perdure._engine`.
"""

from __future__ import annotations

import threading
from typing import Any

from . import _admin, _signals
from ._records import AttemptInfo, StepInfo, WorkflowInfo
from ._signals import ApprovalInfo
from .store import Store, WorkflowStatus


class EngineOperations:
    """Operations every engine offers on the database (see :class:`perdure.Engine`)."""

    _wake: threading.Event  # set to look for work at once (a message or decision was sent)

    @property
    def store(self) -> Store:
        """The open store."""
        raise NotImplementedError

    # -- messages, events, approvals -------------------------------------------------------

    def send(
        self, workflow_id: str, topic: str, payload: Any, idempotency_key: str | None = None
    ) -> bool:
        """Send a message to a workflow, from anywhere (another process included).

        Delivered exactly once, in send order per topic, to ``perdure.receive(topic)``; kept
        until the workflow receives it.

        Args:
            workflow_id: the receiving workflow.
            topic: the topic it receives on.
            payload: any journal-serializable value but None.
            idempotency_key: a resend with the same key (same workflow and topic) is a no-op.

        Returns:
            False if the idempotency key was used before (nothing sent), else True.

        Raises:
            WorkflowNotFound: no such workflow. SerializationError: the payload cannot be
            journaled. ConfigurationError: the payload is None, or ``workflow_id`` or
            ``topic`` is not valid (empty, control characters, lone surrogates).
        """
        sent = _signals.send(self.store, workflow_id, topic, payload, idempotency_key)
        self._wake.set()
        return sent

    def get_event(self, workflow_id: str, key: str, timeout: float | None = None) -> Any:
        """The latest value the workflow published under ``key`` (``perdure.set_event``),
        waiting up to ``timeout`` seconds for it to appear; None if it has not.

        Raises:
            WorkflowNotFound: no such workflow.
            ConfigurationError: ``workflow_id`` or ``key`` is not valid.
        """
        return _signals.get_event(self.store, workflow_id, key, timeout)

    def approve(
        self, workflow_id: str, name: str, by: str | None = None, comment: str | None = None
    ) -> None:
        """Approve a workflow's pending ``wait_for_approval(name)``; it resumes.

        Raises:
            WorkflowNotFound: no such workflow.
            ApprovalNotPending: nothing of that name waits for a decision.
            ConfigurationError: ``workflow_id`` or ``name`` is not valid.
        """
        _signals.decide(self.store, workflow_id, name, True, by, comment)
        self._wake.set()

    def reject(
        self, workflow_id: str, name: str, by: str | None = None, comment: str | None = None
    ) -> None:
        """Reject a workflow's pending approval (see :meth:`approve`)."""
        _signals.decide(self.store, workflow_id, name, False, by, comment)
        self._wake.set()

    def pending_approvals(self, limit: int = 100) -> list[ApprovalInfo]:
        """Approval requests waiting for a human, oldest first, with their details."""
        return _signals.list_approvals(self.store, pending_only=True, limit=limit)

    # -- inspecting ------------------------------------------------------------------------

    def get_workflow(self, workflow_id: str) -> WorkflowInfo:
        """The workflow's record.

        Raises:
            WorkflowNotFound: no such workflow.
        """
        return _admin.get_workflow(self.store, workflow_id)

    def list_workflows(
        self,
        status: WorkflowStatus | str | None = None,
        name: str | None = None,
        limit: int = 100,
    ) -> list[WorkflowInfo]:
        """Workflows, newest first, optionally filtered by status and name."""
        return _admin.list_workflows(self.store, status, name, limit)

    def list_steps(self, workflow_id: str) -> list[StepInfo]:
        """The workflow's journal, by position, each step with its failed attempts.

        Raises:
            WorkflowNotFound: no such workflow.
        """
        return _admin.list_steps(self.store, workflow_id)

    def list_attempts(self, workflow_id: str) -> list[AttemptInfo]:
        """Every failed attempt of the workflow's steps (also of a step still retrying).

        Raises:
            WorkflowNotFound: no such workflow.
        """
        return _admin.list_attempts(self.store, workflow_id)
