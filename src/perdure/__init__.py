"""perdure: durable execution for AI agents.

Workflows made of steps survive crashes, restarts and long pauses: every step's outcome is
journaled before the workflow moves on, and a resumed workflow replays finished steps from
the journal instead of running them again. This module is the public API; everything else
is private.
"""

from ._async_engine import AsyncEngine
from ._context import now, random, uuid4, workflow_id
from ._decorators import step, workflow
from ._engine import Engine
from ._errors import (
    ConfigurationError,
    CorruptRecordError,
    EngineClosedError,
    NonDeterminismError,
    PerdureError,
    RecordedStepError,
    ResultTimeoutError,
    SerializationError,
    StoreError,
    StoreUnavailableError,
    UnknownWorkflowError,
    WorkflowConflictError,
    WorkflowFailedError,
    WorkflowInterrupted,
    WorkflowNotFound,
)
from ._handle import AsyncWorkflowHandle, WorkflowHandle
from ._records import ErrorInfo, StepInfo, WorkflowInfo
from .store import StepStatus, WorkflowStatus

__version__ = "0.1.0"

__all__ = [
    "AsyncEngine",
    "AsyncWorkflowHandle",
    "ConfigurationError",
    "CorruptRecordError",
    "Engine",
    "EngineClosedError",
    "ErrorInfo",
    "NonDeterminismError",
    "PerdureError",
    "RecordedStepError",
    "ResultTimeoutError",
    "SerializationError",
    "StepInfo",
    "StepStatus",
    "StoreError",
    "StoreUnavailableError",
    "UnknownWorkflowError",
    "WorkflowConflictError",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowInterrupted",
    "WorkflowNotFound",
    "WorkflowStatus",
    "__version__",
    "now",
    "random",
    "step",
    "uuid4",
    "workflow",
    "workflow_id",
]
