"""The public API is exactly this list: adding or removing a name is a deliberate change."""

from __future__ import annotations

import perdure

PUBLIC = {
    "AttemptInfo",
    "AsyncEngine", "AsyncWorkflowHandle", "ConfigurationError", "CorruptRecordError",
    "DEFAULT_RETRY", "DeadLetteredError", "DeadlineExceededError", "Engine", "EngineClosedError",
    "ErrorInfo", "Failure", "FailureKind", "NO_RETRY", "NonDeterminismError", "PerdureError",
    "PermanentError", "RateLimitedError", "RecordedStepError", "ResultTimeoutError",
    "RetryPolicy", "SerializationError", "StepError", "StepFailedError", "StepInfo", "StepStatus",
    "StepTimeoutError", "StoreError", "StoreUnavailableError", "TransientError",
    "UnknownWorkflowError", "WorkflowCancelled", "WorkflowCancelledError",
    "WorkflowConflictError", "WorkflowFailedError", "WorkflowHandle", "WorkflowInfo",
    "WorkflowInterrupted", "WorkflowNotFound", "WorkflowStatus", "__version__", "compensate",
    "now", "random", "register_classifier", "step", "uuid4", "workflow", "workflow_id",
}  # fmt: skip


def test_all_is_the_public_api() -> None:
    assert set(perdure.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(perdure, name), name


def test_errors_form_one_tree() -> None:
    errors = [getattr(perdure, n) for n in PUBLIC if n.endswith(("Error", "NotFound"))]
    assert not issubclass(perdure.WorkflowCancelled, Exception)
    for error in errors:
        assert issubclass(error, perdure.PerdureError), error
    # Engine control flow must not be caught by `except Exception`.
    assert not issubclass(perdure.WorkflowInterrupted, Exception)
    assert issubclass(perdure.ResultTimeoutError, TimeoutError)


def test_public_callables_have_docstrings() -> None:
    for name in PUBLIC - {"__version__", "DEFAULT_RETRY", "NO_RETRY"}:
        obj = getattr(perdure, name)
        assert obj.__doc__ and obj.__doc__.strip(), name
