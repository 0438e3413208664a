"""Offline replay checks: run a recorded run's journal against the current code.

:func:`replay` runs a workflow function with an export's inputs (``perdure export``, or
:func:`perdure._export.export_run`) in this process, against a context that holds the
export's journal and nothing else: every step call must find its recorded entry, which is
replayed (its value returned, or its error raised again); no step body runs, no model is
called, no database is opened. Waits (``perdure.sleep``, ``receive``, ``wait_for_approval``)
replay from the journal like steps; a timer always counts as fired.

What counts as a divergence (:class:`ReplayDivergence`): a step call whose recorded entry has
another name; a step call past the end of the journal of a run that had finished (the code
now does more than it did); recorded steps the code no longer reaches; for a finished run, a
different final status, result (compared as journal JSON) or error type. A run exported while
unfinished (RUNNING, WAITING, PENDING) is checked up to the end of its journal.

The check sees the sequence of steps and waits and the workflow's result; it cannot see a
change inside a step body (that body never runs here). It also compares each model call's
fingerprint (model, prompt template, tools) with the recorded one, as a resumption does:
with the client's ``on_change="warn"`` a change is listed in ``ReplayReport.call_changes``,
with ``"error"`` it is a divergence.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

from .. import _context, _runner, _serialize
from .._context import WorkflowContext
from .._decorators import StepSpec, WorkflowSpec, spec_of
from .._errors import (
    CallChangedError,
    ConfigurationError,
    NonDeterminismError,
    PerdureError,
    WorkflowCancelled,
)
from .._export import RunExport, load_export
from .._records import decode_inputs
from ..store import Lease, StepRow, Store, WorkflowStatus


class ReplayDivergence(NonDeterminismError):
    """The current code does not replay a recorded run the way it ran.

    Attributes:
        workflow_id: the recorded run's id.
        position: the replay key where the difference appeared (``"2"``, ``"t0/1"``), or
            ``"result"`` when the steps agree but the outcome differs.
        recorded: what the recorded run holds there (a step name, an outcome), or None.
        current: what the current code does there, or None (it returned before it).
    """

    def __init__(
        self,
        workflow_id: str,
        position: str,
        recorded: str | None,
        current: str | None,
        message: str = "",
    ) -> None:
        self.workflow_id = workflow_id
        self.position = position
        self.recorded = recorded
        self.current = current
        PerdureError.__init__(self, message or f"replay of {workflow_id!r} diverged")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.workflow_id, self.position, self.recorded, self.current,
                             str(self)))  # fmt: skip


@dataclass(frozen=True)
class ReplayReport:
    """What a successful replay check found.

    Attributes:
        workflow_id: the recorded run's id.
        name: its workflow name.
        recorded_status: its status when exported.
        replayed: how many journal entries the code replayed (steps, waits, compensations).
        finished: True when the code reached the end of the run; False when it replayed up
            to the end of an unfinished run's journal and stopped there.
        stopped_at: where it stopped (``"position 3, step 'charge'"``), when not finished.
        call_changes: the replayed calls whose model, prompt template or tools differ from
            what they were recorded with (policy ``on_change="warn"``), one line each in
            journal order: ``"position 0, openai.chat.completions.create: system changed"``.
    """

    workflow_id: str
    name: str
    recorded_status: WorkflowStatus
    replayed: int
    finished: bool
    stopped_at: str | None = None
    call_changes: tuple[str, ...] = ()


class _PastJournal(BaseException):
    """A step call found no recorded entry: the check stops here (a BaseException, so the
    workflow's ``except Exception`` cannot swallow it)."""

    def __init__(self, key: str, name: str) -> None:
        super().__init__(f"no recorded entry at position {key} (step {name!r})")
        self.key = key
        self.name = name


class _EndOfTime:
    """A clock at the end of time: every recorded timer has fired; nothing ever waits."""

    def time(self) -> float:
        return float("inf")

    def sleep(self, seconds: float, wake: Any) -> None:
        return None

    async def sleep_async(self, seconds: float) -> None:
        await asyncio.sleep(0)


class _NoStore:
    """The store of a replay check: any use is a bug (a step body would be running)."""

    def __getattr__(self, name: str) -> NoReturn:
        raise PerdureError(f"a replay check must not touch a store (store.{name} was called)")


class _ReplayContext(WorkflowContext):
    """A workflow context over an export's journal that never lets a step body run."""

    def __init__(self, export: RunExport) -> None:
        row = export.workflow
        super().__init__(
            row.id, row.name, export.steps, cast(Store, _NoStore()), Lease("perdure-replay", 0),
            lambda: False, clock=_EndOfTime(), attempts=export.attempts,
            cancel_requested=row.status is WorkflowStatus.CANCELLED,
        )  # fmt: skip
        self.replayed = 0
        self.past: _PastJournal | None = None
        self.divergence: NonDeterminismError | None = None
        # a finished run's journal is all it did: perdure.patched() past it means the
        # recorded code had no such call there (the old branch)
        self.journal_complete = row.status.finished

    def commit(self, row: StepRow) -> None:
        # Only perdure.patched() commits outside a step body: a new run's change marker,
        # past the end of an unfinished run's journal. The check stops there.
        self.past = _PastJournal(row.key, row.name)
        raise self.past

    def lookup(self, key: str, name: str) -> StepRow | None:
        if self.past is not None:
            raise self.past
        try:
            row = super().lookup(key, name)
        except NonDeterminismError as exc:
            self.divergence = self.divergence or exc
            raise
        if row is not None:
            self.replayed += 1
            return row
        if self.cancel_requested and not self.compensating:
            # The recorded run was cancelled at this step boundary: replay the cancellation.
            raise WorkflowCancelled(f"workflow {self.workflow_id!r} was cancelled")
        self.past = _PastJournal(key, name)
        raise self.past

    def check_call(self, row: StepRow, spec: StepSpec) -> None:
        try:
            super().check_call(row, spec)
        except CallChangedError as exc:  # policy "error": the check fails here
            self.divergence = self.divergence or exc
            raise

    def changes(self, recorded: RunExport) -> tuple[str, ...]:
        """The call changes met (policy "warn"), one line each, in journal order."""
        order = {step.key: step.position for step in recorded.steps}
        found = sorted(self.call_changes.values(), key=lambda exc: order.get(exc.position, -1))
        return tuple(f"position {exc.position}, {exc.name}: {'; '.join(exc.changes)}"
                     for exc in found)  # fmt: skip

    def check_complete(self) -> None:
        try:
            super().check_complete()
        except NonDeterminismError as exc:
            self.divergence = self.divergence or exc
            raise


def replay(export: dict[str, Any] | str | Path, workflow_fn: Any) -> ReplayReport:
    """Check that ``workflow_fn`` replays a recorded run, without running any step.

    Args:
        export: an export document (as ``perdure export`` writes it), or its file's path.
        workflow_fn: the ``@perdure.workflow`` function to check (usually the one registered
            under the export's workflow name; any workflow function is accepted).

    Returns:
        What was replayed, and whether the code reached the end of the run.

    Raises:
        ReplayDivergence: the code diverges from the recorded run (a ``NonDeterminismError``
            naming the position and what was recorded there against what the code does).
        SerializationError: the export is malformed or of an unknown format version.
        ConfigurationError: ``workflow_fn`` is not a workflow, or is called from a running
            event loop while async (run the check from sync code).
    """
    recorded = load_export(export)
    spec = spec_of(workflow_fn)
    if spec is None:
        raise ConfigurationError(f"{workflow_fn!r} is not a @perdure.workflow function")
    ctx = _ReplayContext(recorded)
    args, kwargs = decode_inputs(recorded.workflow.inputs, spec.hints())
    try:
        outcome = _run(ctx, spec, args, kwargs)
    except _PastJournal as past:
        return _past_end(ctx, recorded, past)
    if ctx.divergence is not None:
        raise _explained(recorded, ctx.divergence)
    return _compare(ctx, recorded, outcome)


def _run(
    ctx: _ReplayContext, spec: WorkflowSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> _runner.Outcome:
    if not spec.is_async:
        return _runner.run_sync(ctx, spec, args, kwargs)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise ConfigurationError(
            "perdure.testing.replay() of an async workflow runs its own event loop: call it "
            "from sync code (a plain test function), not from a running loop"
        )
    loop = asyncio.new_event_loop()
    loop.set_task_factory(_context.task_factory())
    try:
        return loop.run_until_complete(_run_async(ctx, spec, args, kwargs))
    finally:
        loop.close()


async def _run_async(
    ctx: _ReplayContext, spec: WorkflowSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> _runner.Outcome:
    try:
        return await _runner.run_async(ctx, spec, args, kwargs, lambda: False)
    finally:  # tasks the workflow started stop at their next step call (the latch)
        pending = [task for task in ctx.tasks if not task.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _past_end(ctx: _ReplayContext, recorded: RunExport, past: _PastJournal) -> ReplayReport:
    row = recorded.workflow
    if ctx.divergence is not None:
        raise _explained(recorded, ctx.divergence)
    if row.status.finished:
        raise ReplayDivergence(
            row.id, past.key, None, past.name,
            f"replay of {row.id!r} ({row.name}) diverged at position {past.key}: the code "
            f"calls step {past.name!r} there, but the recorded run ({row.status.value}) has "
            "no entry there: the code now does more than it did",
        )  # fmt: skip
    where = f"position {past.key}, step {past.name!r}"
    return ReplayReport(row.id, row.name, row.status, ctx.replayed, False, where,
                        ctx.changes(recorded))  # fmt: skip


def _explained(recorded: RunExport, exc: NonDeterminismError) -> ReplayDivergence:
    row = recorded.workflow
    head = f"replay of {row.id!r} ({row.name}) diverged at position {exc.position}"
    if isinstance(exc, CallChangedError):
        changes = "; ".join(exc.changes)
        what = (f"the call {exc.name!r} was recorded with other parameters than the code now "
                f"uses ({changes}), and its policy is on_change='error'")  # fmt: skip
    elif exc.current is None:
        what = f"the code returned before it, but the recorded run has step {exc.recorded!r}"
    else:
        what = f"the code calls step {exc.current!r}, but the recorded run has step " + repr(
            exc.recorded
        )
    return ReplayDivergence(row.id, exc.position, exc.recorded, exc.current, f"{head}: {what}")


def _compare(ctx: _ReplayContext, recorded: RunExport, outcome: _runner.Outcome) -> ReplayReport:
    row = recorded.workflow
    status, output, error = outcome
    report = ReplayReport(row.id, row.name, row.status, ctx.replayed, True,
                          call_changes=ctx.changes(recorded))  # fmt: skip
    if not row.status.finished:
        return report
    if status is not row.status:
        _differs(row.id, row.name, row.status.value, status.value, "ends with")
    if status is WorkflowStatus.SUCCESS and _json(output) != _json(row.output):
        _differs(row.id, row.name, row.output, output, "returns")
    if status is WorkflowStatus.ERROR:
        was, now = _error_type(row.error), _error_type(error)
        if was != now:
            _differs(row.id, row.name, was, now, "raises")
    return report


def _differs(workflow_id: str, name: str, was: str | None, now: str | None, verb: str) -> None:
    raise ReplayDivergence(
        workflow_id, "result", was, now,
        f"replay of {workflow_id!r} ({name}) diverged at the result: the recorded run "
        f"{verb} {was}, the code now {verb} {now}",
    )  # fmt: skip


def _json(text: str | None) -> Any:
    try:
        return json.loads(text or "null")
    except json.JSONDecodeError:
        return text


def _error_type(text: str | None) -> str | None:
    return None if text is None else _serialize.error_summary(text)[0]
