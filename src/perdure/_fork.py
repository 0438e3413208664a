"""Forks: a new run that replays the start of a recorded run and re-executes the rest.

:func:`fork` copies the journal entries of a run before position N into a new workflow (same
name, same inputs), in one transaction with the new workflow's row; with ``replace_output``,
the entry at N is copied too, with that value as its recorded result. The new run then
replays the copied entries (their steps do not run again) and executes from the first
position it lacks. The original run is only read: its rows are never written.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, Final

from . import _serialize
from ._context import PATCH_PREFIX
from ._errors import (
    ConfigurationError,
    SerializationError,
    WorkflowConflictError,
    WorkflowNotFound,
)
from ._records import validate_workflow_id
from .store import StepRow, StepStatus, Store, WorkflowRow, WorkflowStatus


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: ``replace_output`` not given (None is a value a step may return)
UNSET: Final = _Unset()


def fork(
    store: Store,
    workflow_id: str,
    from_step: int,
    *,
    new_id: str | None = None,
    replace_output: Any = UNSET,
    owner: str | None = None,
    version: str | None = None,
    deadline_at: float | None = None,
    original: WorkflowRow | None = None,
) -> tuple[WorkflowRow, bool]:
    """Create the fork of ``workflow_id`` at journal position ``from_step``.

    Args:
        store: the database.
        workflow_id: the run to fork (any status; it is only read).
        from_step: the first journal position the fork does not replay (``perdure show``
            numbers entries from 0); the length of the journal forks after its last entry.
        new_id: the fork's id (default: ``<id>-fork-<8 hex digits>``).
        replace_output: the value the entry at ``from_step`` records instead of its own
            (a corrected model answer, say); the fork then goes on from ``from_step + 1``.
        owner: the worker that will run the fork at once (None: left PENDING for any worker
            that has the workflow's code and version).
        version: the code version the fork records (None: any worker may run it).
        deadline_at: the fork's deadline, by the engine's clock, or None.
        original: ``workflow_id``'s row, when the caller has read it already.

    Returns:
        (the fork's row, created): not created when a fork with this id and this origin
        exists already (the same fork asked again: it is returned).

    Raises:
        WorkflowNotFound: no such workflow.
        ConfigurationError: ``from_step`` is out of the journal's range, or is its length
            with ``replace_output`` (there is no entry to replace).
        SerializationError: ``replace_output`` cannot be journaled.
        WorkflowConflictError: ``new_id`` names another workflow.
    """
    original = original or store.get_workflow(workflow_id)
    if original is None:
        raise WorkflowNotFound(workflow_id)
    journal = store.load_steps(workflow_id)
    replacing = replace_output is not UNSET
    at = {row.position: row for row in journal}
    end = max(at, default=-1) + 1  # positions may have a gap where a retry forgot a step
    last = end - 1 if replacing else end
    valid = not isinstance(from_step, bool) and isinstance(from_step, int)
    if not valid or not 0 <= from_step <= last or (replacing and from_step not in at):
        what = "an entry to replace" if replacing else "a position to fork at"
        raise ConfigurationError(
            f"from_step={from_step!r} is not {what} in the journal of {workflow_id!r}: it has "
            f"{len(journal)} entries (positions 0 to {end - 1}); see perdure show "
            f"{workflow_id}"
        )
    fork_id = validate_workflow_id(new_id) if new_id is not None else fork_id_for(workflow_id)
    steps = [dataclasses.replace(row, workflow_id=fork_id) for row in journal
             if row.position < from_step]  # fmt: skip
    if replacing:
        steps.append(_replaced(at[from_step], fork_id, replace_output))
    now = time.time()
    row = WorkflowRow(
        fork_id, original.name,
        WorkflowStatus.RUNNING if owner is not None else WorkflowStatus.PENDING,
        original.inputs, None, None, owner, now, now, deadline_at=deadline_at,
        version=version, forked_from=workflow_id, forked_at=from_step,
    )  # fmt: skip
    stored, created = store.fork_workflow(row, steps)
    if not created and not _same_fork(store, stored, row, steps[-1] if replacing else None):
        raise WorkflowConflictError(
            f"workflow id {fork_id!r} is taken by another run (or another fork); pick another "
            "id for the fork"
        )
    return stored, created


def _same_fork(
    store: Store, stored: WorkflowRow, row: WorkflowRow, replaced: StepRow | None
) -> bool:
    """Whether an existing workflow is the fork asked for again (same origin, position,
    inputs and replaced output): a retried request, not a conflict."""
    if (stored.forked_from, stored.forked_at, stored.inputs) != (
        row.forked_from, row.forked_at, row.inputs,
    ):  # fmt: skip
        return False
    if replaced is None:
        return True
    at = {step.position: step for step in store.load_steps(stored.id)}.get(replaced.position)
    return at is not None and at.output == replaced.output


def _replaced(entry: StepRow, fork_id: str, value: Any) -> StepRow:
    """The entry at the fork point, recording ``value`` as its result."""
    try:
        output = _serialize.dumps(value)
    except _serialize.UnserializableValue as exc:
        raise SerializationError(
            f"the replacement output for step {entry.name!r} (position {entry.position}) "
            f"cannot be journaled: {exc.type_name} at {exc.path or 'the top level'}"
            f"{exc.reason}; nothing was written"
        ) from None
    if entry.key.startswith(PATCH_PREFIX):
        raise ConfigurationError(
            f"position {entry.position} is a change marker (perdure.patched), not a step "
            "result: fork at it without replace_output, or replace another entry"
        )
    return dataclasses.replace(
        entry, workflow_id=fork_id, status=StepStatus.SUCCESS, output=output, error=None
    )


def fork_id_for(workflow_id: str) -> str:
    """A new fork id for ``workflow_id``: ``<id>-fork-<8 hex digits>``, within 255 chars."""
    suffix = f"-fork-{uuid.uuid4().hex[:8]}"
    return validate_workflow_id(workflow_id[: 255 - len(suffix)] + suffix)
