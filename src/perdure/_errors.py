"""The exception tree of perdure: every error perdure raises is a ``PerdureError``.

::

    PerdureError
    ├── ConfigurationError            bad arguments or settings, found before anything ran
    ├── SerializationError            a value cannot go into (or come out of) the journal
    ├── NonDeterminismError           replay met a different step than the journal recorded
    │   ├── PatchRemovedError         a run needs the old branch of a deprecated patch
    │   └── CallChangedError          a model call replays with another model, prompt, tools
    ├── WorkflowNotFound              no workflow with that id in the store
    ├── UnknownWorkflowError          the workflow's name is not registered in this process
    ├── WorkflowConflictError         an id reused with another workflow or other inputs
    ├── WorkflowFailedError           a workflow ended in error and its exception cannot be rebuilt
    ├── RecordedStepError             a step failed with an exception that cannot be rebuilt
    ├── StepError                     a step failed in a way the failure taxonomy names
    │   ├── TransientError            retry me (per the step's policy)
    │   │   ├── RateLimitedError      retry me, but not before ``retry_after`` seconds
    │   │   └── StepTimeoutError      the attempt ran past the step's ``timeout``
    │   ├── PermanentError            never retry me
    │   └── StepFailedError           the step's retries are exhausted (raised in the workflow)
    ├── WorkflowCancelledError        result() of a workflow that was cancelled
    ├── DeadlineExceededError         the workflow ran past its deadline
    ├── DeadLetteredError             result() of a workflow given up after too many recoveries
    ├── EngineClosedError             the engine is stopped (or stopping) and takes no new work
    ├── ResultTimeoutError            waiting for a result took longer than the caller allowed
    └── StoreError                    the database failed or holds data perdure cannot read
        ├── StoreUnavailableError     the database cannot be reached or opened
        ├── CorruptRecordError        a row exists but cannot be read (bad JSON, unknown version)
        └── MissingKeyError           a row is encrypted with a key this process does not have

Engine control flow (``WorkflowInterrupted``) derives from ``BaseException`` and not from
``PerdureError``: it unwinds a workflow that must stop running in this process (the engine
is shutting down, or another process owns the workflow now), and a user's ``except
Exception`` must not swallow it.
"""

from __future__ import annotations

import json


class PerdureError(Exception):
    """Root of every error perdure raises."""


class ConfigurationError(PerdureError):
    """Bad arguments or settings, detected before any work was done."""


class SerializationError(PerdureError):
    """A value cannot be written to the journal, or a journaled value cannot be read back.

    Raised before anything is committed: the journal never holds a half-written value.
    """


class NonDeterminismError(PerdureError):
    """Replay reached a recorded position with a different step than the journal holds.

    Attributes:
        workflow_id: the workflow being replayed.
        position: the replay key where the difference appeared (the step's index in the
            workflow's main line, e.g. ``"3"``; ``"t0/1"`` for a step in a task it started).
        recorded: the step name the journal holds at that position (``None`` if the journal
            holds nothing there but the code ended early).
        current: the step name the current code asked for (``None`` if the code returned
            before reaching recorded steps).
    """

    def __init__(
        self, workflow_id: str, position: str, recorded: str | None, current: str | None
    ) -> None:
        self.workflow_id = workflow_id
        self.position = position
        self.recorded = recorded
        self.current = current
        if current is None:
            what = (
                f"the code returned at position {position}, but the journal holds step "
                f"{recorded!r} there"
            )
        else:
            what = (
                f"the code called step {current!r} at position {position}, but the journal "
                f"recorded step {recorded!r} there"
            )
        super().__init__(
            f"workflow {workflow_id!r}: {what}. The workflow's code changed since this run "
            "started. Nothing in the journal was changed: deploy the previous code (or keep "
            "both paths in the code, chosen by perdure.patched(), for runs started before "
            "the change), then engine.resume(id) to finish this run."
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.workflow_id, self.position, self.recorded, self.current))


class PatchRemovedError(NonDeterminismError):
    """``perdure.deprecate_patch(change_id)`` was reached by a run recorded without the
    change: that run still needs the old branch, which the code no longer has.

    Attributes:
        change_id: the change.
    """

    def __init__(self, workflow_id: str, key: str, change_id: str) -> None:
        self.workflow_id = workflow_id
        self.position = key  # the change marker's journal key
        self.recorded = None
        self.current = f"perdure.deprecate_patch({change_id!r})"
        self.change_id = change_id
        PerdureError.__init__(
            self,
            f"workflow {workflow_id!r} started before change {change_id!r} and replays down "
            f"the old branch, but the code calls perdure.deprecate_patch({change_id!r}): the "
            "old branch is gone. Nothing in the journal was changed: deploy code that still "
            f"has `if perdure.patched({change_id!r}): ... else: ...` until runs started before "
            "the change have finished, then engine.resume(id).",
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.workflow_id, self.position, self.change_id))


class CallChangedError(NonDeterminismError):
    """A journaled call (a model call) is replayed with other parameters than it was
    recorded with: another model, prompt or set of tools (``changes`` says which).

    Raised on replay when the call's policy is ``"error"``; with ``"warn"`` it is logged.

    Attributes:
        name: the call's step name.
        changes: what differs, one phrase each (``"model 'a' -> 'b'"``, ``"tools changed"``).
    """

    def __init__(self, workflow_id: str, position: str, name: str, changes: list[str]) -> None:
        self.workflow_id = workflow_id
        self.position = position
        self.recorded = self.current = self.name = name
        self.changes = list(changes)
        PerdureError.__init__(
            self,
            f"workflow {workflow_id!r}: the call {name!r} at position {position} was recorded "
            f"with other parameters than the code now uses ({'; '.join(changes)}). Replaying "
            "returns the recorded answer, which the new prompt might not have produced. "
            "Nothing in the journal was changed: deploy the previous prompt, or accept the "
            "recorded answers with on_change='warn', or fork the run from this position "
            "(engine.fork) to ask the model again.",
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.workflow_id, self.position, self.name, self.changes))

    @staticmethod
    def describe(recorded: str, current: str) -> list[str]:
        """What differs between two call fingerprints (JSON objects of named parts): the
        model by value, other parts by name (they are hashes)."""
        try:
            was, now = json.loads(recorded), json.loads(current)
        except ValueError:
            return ["parameters changed"]
        if not isinstance(was, dict) or not isinstance(now, dict):
            return [] if was == now else ["parameters changed"]
        changes = []
        for part in sorted(set(was) | set(now)):
            before, after = was.get(part), now.get(part)
            if before == after:
                continue
            if part == "model":
                changes.append(f"model {before!r} -> {after!r}")
            else:
                changes.append(f"{part} changed")
        return changes


class WorkflowNotFound(PerdureError):
    """No workflow with this id exists in the store."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"no workflow with id {workflow_id!r} in this database")


class UnknownWorkflowError(PerdureError):
    """The workflow's name is not registered (decorated and imported) in this process."""

    def __init__(self, name: str, detail: str = "") -> None:
        self.name = name
        super().__init__(
            f"no workflow named {name!r} is registered in this process{detail}: import the "
            "module that defines it (decorated with @perdure.workflow) before starting the engine"
        )


class WorkflowConflictError(PerdureError):
    """A workflow id was reused with a different workflow name or different inputs."""


class WorkflowStateError(PerdureError):
    """The workflow is not in a state that allows the operation (resuming a running one)."""


class WorkflowFailedError(PerdureError):
    """A workflow ended in error and its original exception could not be rebuilt here.

    Attributes:
        workflow_id: the failed workflow.
        error_type: the recorded exception's qualified type name.
        error_message: the recorded exception's message.
    """

    def __init__(self, workflow_id: str, error_type: str, error_message: str) -> None:
        self.workflow_id = workflow_id
        self.error_type = error_type
        self.error_message = error_message
        super().__init__(f"workflow {workflow_id!r} failed: {error_type}: {error_message}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.workflow_id, self.error_type, self.error_message))


class RecordedStepError(PerdureError):
    """A step's recorded exception whose type cannot be rebuilt in this process.

    Replay raises this in place of the original exception when the original class is not
    importable here or cannot be constructed from its recorded arguments.
    """

    def __init__(self, error_type: str, error_message: str) -> None:
        self.error_type = error_type
        self.error_message = error_message
        super().__init__(f"{error_type}: {error_message}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.error_type, self.error_message))


class StepError(PerdureError):
    """Base of the failure taxonomy a step may raise to tell the engine what to do."""


class TransientError(StepError):
    """A failure worth retrying (per the step's retry policy): raise it from a step."""


class RateLimitedError(TransientError):
    """The service asked us to slow down: retried, but not before ``retry_after`` seconds.

    Args:
        message: what happened.
        retry_after: seconds to wait at least (a server's Retry-After), or None.
    """

    def __init__(self, message: str = "rate limited", *, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(message)


class StepTimeoutError(TransientError):
    """A step attempt ran longer than its ``timeout``; its late result is discarded."""


class PermanentError(StepError):
    """A failure that will never succeed on retry (bad input, 4xx): raise it from a step."""


class StepFailedError(StepError):
    """A step failed after its retries: raised in the workflow, which may catch it.

    Attributes:
        step: the step's name.
        attempts: how many attempts ran.
        error_type: the last attempt's exception type (qualified name).
        error_message: the last attempt's message.
    """

    def __init__(self, step: str, attempts: int, error_type: str, error_message: str) -> None:
        self.step = step
        self.attempts = attempts
        self.error_type = error_type
        self.error_message = error_message
        super().__init__(
            f"step {step!r} failed after {attempts} attempt(s): {error_type}: {error_message}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.step, self.attempts, self.error_type, self.error_message))


class WorkflowCancelledError(PerdureError):
    """The workflow was cancelled (``engine.cancel``); raised by ``result()``."""


class DeadlineExceededError(PerdureError):
    """The workflow ran past its deadline; it ends in ERROR with this error."""


class DeadLetteredError(PerdureError):
    """The workflow was given up after too many recoveries (a poison workflow)."""


class EngineClosedError(PerdureError):
    """The engine is stopped or stopping and takes no new work."""


class ResultTimeoutError(PerdureError, TimeoutError):
    """Waiting for a workflow's result took longer than the timeout; the workflow goes on."""


class StoreError(PerdureError):
    """The database failed, or holds data perdure cannot read."""


class StoreUnavailableError(StoreError):
    """The database cannot be opened or reached."""


class CorruptRecordError(StoreError):
    """A journal or workflow row exists but cannot be read."""


class MissingKeyError(StoreError):
    """A row is encrypted with a key id this process does not have (see docs/security.md).

    A configuration problem of the reading process, not damage: the row is intact, and a
    process given the key reads it. An engine gives such a workflow back for a worker that
    has the key, instead of failing or dead-lettering it.

    Attributes:
        key_id: the key id the row names.
    """

    def __init__(self, message: str, key_id: str = "?") -> None:
        super().__init__(message)
        self.key_id = key_id


class WorkflowCancelled(BaseException):
    """Unwinds a workflow whose cancellation was requested, at a step boundary or a wait.

    Derives from ``BaseException`` so ``except Exception`` in workflow code cannot swallow it;
    the engine then runs the workflow's compensations and marks it CANCELLED.
    """


class WorkflowInterrupted(BaseException):
    """Unwinds a workflow that must stop running in this process; never caught by users.

    Raised inside a workflow when the engine shuts down or when another process has taken
    the workflow over. Nothing is recorded: the workflow resumes from its journal elsewhere.
    """


class WorkflowSuspended(BaseException):
    """Unwinds a workflow that waits: it is unloaded until ``wake_at`` or a message."""

    def __init__(
        self, wake_at: float | None, topic: str | None, deadline_at: float | None = None
    ) -> None:
        if deadline_at is not None:  # a run past its deadline must wake to fail
            wake_at = deadline_at if wake_at is None else min(wake_at, deadline_at)
        self.wake_at = wake_at
        self.topic = topic
        super().__init__(f"suspended until {wake_at} / a message on {topic!r}")
