"""A recorded run as a portable JSON document: ``perdure export`` and offline replay checks.

The document (format ``perdure.run/1``) holds everything a replay needs and nothing that
needs the database: the workflow's row, its journal (every step's outcome) and the failed
attempts of retried steps. Payloads (inputs, outputs, errors) stay the journal's own JSON
text, exactly as stored, so an export round-trips byte for byte and decodes with the same
codec as the journal; large payloads kept as blobs are already resolved by the store and
appear inline. Layout::

    {"format": "perdure.run/1", "exported_at": <epoch seconds>,
     "workflow": {"id", "name", "status", "inputs", "output", "error", "created_at",
                  "updated_at", "deadline_at", "recoveries", "version", "forked_from",
                  "forked_at"},
     "steps":    [{"position", "key", "name", "status", "output", "error",
                   "started_at", "finished_at", "attempts", "fingerprint"}, ...],
     "attempts": [{"key", "attempt", "name", "error", "started_at", "failed_at",
                   "retry_at"}, ...]}

A step's ``fingerprint`` (what a model call was made with: its model and the hashes of its
prompt template and tools, JSON text; null for other steps) is optional: exports written
before it existed load without it, and their calls are not compared on replay. So are the
workflow's ``version`` (the code version that started it), ``forked_from`` and
``forked_at``.

A later format is a new version string (``perdure.run/2``) with a documented migration;
:func:`load_export` refuses versions it does not know rather than guessing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import SerializationError, WorkflowNotFound
from .store import AttemptRow, StepRow, StepStatus, Store, WorkflowRow, WorkflowStatus

FORMAT = "perdure.run/1"

_WORKFLOW_FIELDS = ("id", "name", "status", "inputs", "output", "error", "created_at",
                    "updated_at", "deadline_at", "recoveries")  # fmt: skip
_STEP_FIELDS = ("position", "key", "name", "status", "output", "error", "started_at",
                "finished_at", "attempts")  # fmt: skip
#: workflow fields an export may lack (the code version that started the run; a fork's origin)
_OPTIONAL_WORKFLOW = ("version", "forked_from", "forked_at")
#: step fields an export may lack (written by a perdure that did not record them yet)
_OPTIONAL_STEP_FIELDS = ("fingerprint",)
_ATTEMPT_FIELDS = ("key", "attempt", "name", "error", "started_at", "failed_at", "retry_at")


@dataclass(frozen=True)
class RunExport:
    """A validated export, as store rows (what a replay check reads).

    Attributes:
        workflow: the workflow's row (no owner: an export belongs to no worker).
        steps: its journal, in position order.
        attempts: failed attempts of retried steps.
    """

    workflow: WorkflowRow
    steps: list[StepRow]
    attempts: list[AttemptRow]


def export_run(store: Store, workflow_id: str) -> dict[str, Any]:
    """The run ``workflow_id`` as a ``perdure.run/1`` document (JSON-ready dict).

    Raises:
        WorkflowNotFound: no workflow with this id in the store.
        StoreError: the store could not be read.
    """
    row = store.get_workflow(workflow_id)
    if row is None:
        raise WorkflowNotFound(workflow_id)
    steps = store.load_steps(workflow_id)  # by position, as the store returns them
    attempts = sorted(store.load_attempts(workflow_id), key=lambda a: (a.key, a.attempt))
    workflow = {name: getattr(row, name) for name in _WORKFLOW_FIELDS + _OPTIONAL_WORKFLOW}
    workflow["status"] = row.status.value
    return {
        "format": FORMAT,
        "exported_at": time.time(),
        "workflow": workflow,
        "steps": [_step_dict(step) for step in steps],
        "attempts": [{name: getattr(a, name) for name in _ATTEMPT_FIELDS} for a in attempts],
    }


def _step_dict(step: StepRow) -> dict[str, Any]:
    data = {name: getattr(step, name) for name in (*_STEP_FIELDS, *_OPTIONAL_STEP_FIELDS)}
    data["status"] = step.status.value
    return data


def load_export(source: dict[str, Any] | str | Path) -> RunExport:
    """Read and validate an export: a dict from :func:`export_run`, or a JSON file's path.

    Raises:
        SerializationError: the file cannot be read, is not JSON, is not a perdure export,
            has a format version this perdure does not know, or lacks a field (each named).
    """
    data = _read(source) if isinstance(source, (str, Path)) else source
    if not isinstance(data, dict):
        raise SerializationError("a perdure export must be a JSON object")
    found = data.get("format")
    if found != FORMAT:
        raise SerializationError(
            f"unsupported export format {found!r}: this perdure reads {FORMAT!r} (exports "
            "from other versions need the migration described in docs/change-safety.md)"
        )
    row = _workflow(_fields(data.get("workflow"), _WORKFLOW_FIELDS, "workflow"))
    steps = [_step(row.id, item, i) for i, item in enumerate(_list(data, "steps"))]
    attempts = [_attempt(row.id, item, i) for i, item in enumerate(_list(data, "attempts"))]
    return RunExport(row, sorted(steps, key=lambda s: s.position), attempts)


def _workflow(workflow: dict[str, Any]) -> WorkflowRow:
    deadline = workflow["deadline_at"]
    try:
        return WorkflowRow(
            id=_text(workflow["id"], "workflow.id"),
            name=_text(workflow["name"], "workflow.name"),
            status=_enum(WorkflowStatus, workflow["status"], "workflow.status"),
            inputs=_text(workflow["inputs"], "workflow.inputs"),
            output=_optional_text(workflow["output"], "workflow.output"),
            error=_optional_text(workflow["error"], "workflow.error"),
            owner=None,
            created_at=float(workflow["created_at"]),
            updated_at=float(workflow["updated_at"]),
            recoveries=int(workflow["recoveries"]),
            deadline_at=None if deadline is None else float(deadline),
            version=_optional_text(workflow.get("version"), "workflow.version"),
            forked_from=_optional_text(workflow.get("forked_from"), "workflow.forked_from"),
            forked_at=None if workflow.get("forked_at") is None else int(workflow["forked_at"]),
        )
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"export field 'workflow' is malformed: {exc}") from None


def _read(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SerializationError(f"cannot read export {str(path)!r}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SerializationError(f"export {str(path)!r} is not JSON: {exc}") from None


def _step(workflow_id: str, item: Any, index: int) -> StepRow:
    where = f"steps[{index}]"
    step = _fields(item, _STEP_FIELDS, where)
    try:
        return StepRow(
            workflow_id, int(step["position"]), _text(step["key"], f"{where}.key"),
            _text(step["name"], f"{where}.name"),
            _enum(StepStatus, step["status"], f"{where}.status"),
            _optional_text(step["output"], f"{where}.output"),
            _optional_text(step["error"], f"{where}.error"), float(step["started_at"]),
            float(step["finished_at"]), int(step["attempts"]),
            _optional_text(step.get("fingerprint"), f"{where}.fingerprint"),
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"export field {where} is malformed: {exc}") from None


def _attempt(workflow_id: str, item: Any, index: int) -> AttemptRow:
    where = f"attempts[{index}]"
    a = _fields(item, _ATTEMPT_FIELDS, where)
    try:
        return AttemptRow(
            workflow_id, _text(a["key"], f"{where}.key"), int(a["attempt"]),
            _text(a["name"], f"{where}.name"), _text(a["error"], f"{where}.error"),
            float(a["started_at"]), float(a["failed_at"]), float(a["retry_at"]),
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"export field {where} is malformed: {exc}") from None


def _list(data: dict[str, Any], name: str) -> list[Any]:
    value = data.get(name)
    if not isinstance(value, list):
        raise SerializationError(f"export field {name!r} must be a list")
    return value


def _fields(value: Any, names: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SerializationError(f"export field {where!r} must be an object")
    missing = [name for name in names if name not in value]
    if missing:
        raise SerializationError(f"export field {where!r} lacks {', '.join(missing)}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SerializationError(f"export field {where!r} must be a string")
    return value


def _optional_text(value: Any, where: str) -> str | None:
    return None if value is None else _text(value, where)


def _enum(kind: type[Any], value: Any, where: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise SerializationError(f"export field {where!r} has unknown value {value!r}") from None
