"""The public API is exactly this list: adding or removing a name is a deliberate change."""

from __future__ import annotations

import perdure

PUBLIC = {
    "Approval", "ApprovalInfo", "ApprovalNotPending", "AsyncEngine", "AsyncWorkflowHandle",
    "AttemptInfo", "ConfigurationError", "CorruptRecordError", "DEFAULT_RETRY",
    "DeadLetteredError", "DeadlineExceededError", "Engine", "EngineClosedError", "ErrorInfo",
    "Encryption", "MissingKeyError",
    "Failure", "FailureKind", "NO_RETRY", "NonDeterminismError", "PerdureError",
    "JsonLogFormatter", "LogContextFilter",
    "PermanentError", "Queue",
    "RateLimitedError", "RecordedStepError", "ResultTimeoutError", "RetryPolicy",
    "SerializationError", "StepError", "StepFailedError", "StepInfo", "StepStatus",
    "StepTimeoutError", "StoreError", "StoreUnavailableError", "TransientError",
    "UnknownWorkflowError", "WorkflowCancelled", "WorkflowCancelledError",
    "WorkflowConflictError", "WorkflowStateError", "WorkflowFailedError", "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowInterrupted", "WorkflowNotFound", "WorkflowStatus", "WorkflowSuspended",
    "CallChangedError", "PatchRemovedError", "patched", "deprecate_patch",
    "__version__", "compensate", "connection", "idempotency_key", "now", "random",
    "receive", "receive_async", "register_classifier", "set_event", "sleep", "sleep_async",
    "sleep_until", "sleep_until_async", "step", "transaction", "uuid4", "wait_for_approval",
    "wait_for_approval_async",
    "workflow", "workflow_id",
}  # fmt: skip


def test_all_is_the_public_api() -> None:
    assert set(perdure.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(perdure, name), name


def test_errors_form_one_tree() -> None:
    errors = [getattr(perdure, n) for n in PUBLIC if n.endswith(("Error", "NotFound", "Pending"))]
    assert not issubclass(perdure.WorkflowCancelled, Exception)
    assert not issubclass(perdure.WorkflowSuspended, Exception)
    for error in errors:
        assert issubclass(error, perdure.PerdureError), error
    # Engine control flow must not be caught by `except Exception`.
    assert not issubclass(perdure.WorkflowInterrupted, Exception)
    assert issubclass(perdure.ResultTimeoutError, TimeoutError)


def test_public_callables_have_docstrings() -> None:
    for name in PUBLIC - {"__version__", "DEFAULT_RETRY", "NO_RETRY"}:
        obj = getattr(perdure, name)
        assert obj.__doc__ and obj.__doc__.strip(), name
