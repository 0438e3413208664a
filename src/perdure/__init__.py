"""perdure: durable execution for AI agents.

Workflows made of steps survive crashes, restarts and long pauses: every step's outcome is
journaled before the workflow moves on, and a resumed workflow replays finished steps from
the journal instead of running them again. This module is the public API; everything else
is private.
"""

from ._async_engine import AsyncEngine
from ._context import idempotency_key, workflow_id
from ._decorators import step, transaction, workflow
from ._encryption import Encryption
from ._engine import Engine
from ._errors import (
    CallChangedError,
    ConfigurationError,
    CorruptRecordError,
    DeadLetteredError,
    DeadlineExceededError,
    EngineClosedError,
    MissingKeyError,
    NonDeterminismError,
    PatchRemovedError,
    PerdureError,
    PermanentError,
    RateLimitedError,
    RecordedStepError,
    ResultTimeoutError,
    SerializationError,
    StepError,
    StepFailedError,
    StepTimeoutError,
    StoreError,
    StoreUnavailableError,
    TransientError,
    UnknownWorkflowError,
    WorkflowCancelled,
    WorkflowCancelledError,
    WorkflowConflictError,
    WorkflowFailedError,
    WorkflowInterrupted,
    WorkflowNotFound,
    WorkflowStateError,
    WorkflowSuspended,
)
from ._handle import AsyncWorkflowHandle, WorkflowHandle
from ._logging import JsonLogFormatter, LogContextFilter
from ._queues import Queue
from ._records import AttemptInfo, ErrorInfo, StepInfo, WorkflowInfo
from ._retry import DEFAULT_RETRY, NO_RETRY, Failure, FailureKind, RetryPolicy, register_classifier
from ._runner import compensate
from ._signals import ApprovalInfo, ApprovalNotPending
from ._steps import connection, deprecate_patch, now, patched, random, uuid4
from ._waits import (
    Approval,
    receive,
    receive_async,
    set_event,
    sleep,
    sleep_async,
    sleep_until,
    sleep_until_async,
    wait_for_approval,
    wait_for_approval_async,
)
from .store import StepStatus, WorkflowStatus

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_RETRY",
    "NO_RETRY",
    "Approval",
    "ApprovalInfo",
    "ApprovalNotPending",
    "AsyncEngine",
    "AsyncWorkflowHandle",
    "AttemptInfo",
    "CallChangedError",
    "ConfigurationError",
    "CorruptRecordError",
    "DeadLetteredError",
    "DeadlineExceededError",
    "Encryption",
    "Engine",
    "EngineClosedError",
    "ErrorInfo",
    "Failure",
    "FailureKind",
    "JsonLogFormatter",
    "LogContextFilter",
    "MissingKeyError",
    "NonDeterminismError",
    "PatchRemovedError",
    "PerdureError",
    "PermanentError",
    "Queue",
    "RateLimitedError",
    "RecordedStepError",
    "ResultTimeoutError",
    "RetryPolicy",
    "SerializationError",
    "StepError",
    "StepFailedError",
    "StepInfo",
    "StepStatus",
    "StepTimeoutError",
    "StoreError",
    "StoreUnavailableError",
    "TransientError",
    "UnknownWorkflowError",
    "WorkflowCancelled",
    "WorkflowCancelledError",
    "WorkflowConflictError",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowInterrupted",
    "WorkflowNotFound",
    "WorkflowStateError",
    "WorkflowStatus",
    "WorkflowSuspended",
    "__version__",
    "compensate",
    "connection",
    "deprecate_patch",
    "idempotency_key",
    "now",
    "patched",
    "random",
    "receive",
    "receive_async",
    "register_classifier",
    "set_event",
    "sleep",
    "sleep_async",
    "sleep_until",
    "sleep_until_async",
    "step",
    "transaction",
    "uuid4",
    "wait_for_approval",
    "wait_for_approval_async",
    "workflow",
    "workflow_id",
]
