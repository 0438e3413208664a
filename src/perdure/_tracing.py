"""OpenTelemetry spans for workflow runs and step attempts, one trace per workflow.

Active only when the ``opentelemetry`` API package is importable and a real tracer provider
is installed as the global one (``trace.set_tracer_provider``, the standard way to choose
exporters). The API is imported lazily, when the first run starts, so it is never a
dependency; without it, or without a provider, a run costs one check and a step attempt one
global read. The provider is looked for at each run start until found (it may be installed
after the engine opened); once found it is kept, as OpenTelemetry sets it only once.

Spans (attribute names in docs/observability.md):

- ``workflow <name>``: one per *run* of a workflow (its first run, a resumption after a wait,
  a takeover after a crash), current while the workflow body executes, ending with the run's
  outcome: success, error, cancelled, dead_letter, suspended or interrupted.
- ``step <name>``: one per step *attempt*, a child of whatever span is current (the run's),
  and current while the step body runs, ending with success, retry or error; a model call's
  span carries the ``gen_ai.*`` token counts of its recorded response. Replayed steps run
  nothing and get no span: the run span counts them instead.

Traced or not, a step attempt sets the name of the running step in a context variable, which
log records carry (see ``_logging``).

One workflow is one trace: the first run stores its span's W3C trace context as the
workflow's ``perdure.trace`` event (no schema change); every later run, in this process or in
the one that recovers it after a crash, starts its span as a child of that stored context. A
workflow started while the caller has an active span becomes part of the caller's trace.

Tracing never breaks a run: an exception from OpenTelemetry or from storing the trace
context is caught here and logged once (later ones at debug level).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, ParamSpec

from . import _context, _serialize
from ._errors import WorkflowCancelled, WorkflowInterrupted, WorkflowSuspended
from ._usage import MODEL_STEPS, call_usage
from .store import Store, WorkflowRow, WorkflowStatus

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("perdure")

#: the workflow event holding the W3C trace context of the workflow's first run span
TRACE_EVENT: Final = "perdure.trace"

P = ParamSpec("P")
Outcome = tuple[WorkflowStatus, str | None, str | None]

_OUTCOMES: Final = {
    WorkflowStatus.SUCCESS: "success",
    WorkflowStatus.ERROR: "error",
    WorkflowStatus.CANCELLED: "cancelled",
    WorkflowStatus.DEAD_LETTER: "dead_letter",
}

_tracer: Tracer | None = None  # found once a provider is installed; then kept
_unavailable = False  # the API cannot be imported: never look again
_reported = False  # a tracing failure was logged at warning level


def _find_tracer() -> Tracer | None:
    """perdure's tracer when a tracer provider is installed, else None (see the module)."""
    global _tracer, _unavailable
    if _tracer is not None or _unavailable:
        return _tracer
    try:
        from opentelemetry import trace
    except ImportError:
        _unavailable = True
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    from . import __version__

    _tracer = provider.get_tracer("perdure", __version__)
    return _tracer


def _report(exc: BaseException) -> None:
    """Log a failure of the tracing layer: the first at warning level, the rest at debug."""
    global _reported
    if _reported:
        log.debug("perdure: tracing failed again: %r", exc)
        return
    _reported = True
    log.warning(
        "perdure: OpenTelemetry tracing failed (%s: %s); workflows run on, and later "
        "tracing failures are logged at debug level",
        type(exc).__name__,
        exc,
        exc_info=exc,
    )


# -- the caller's context --------------------------------------------------------------------


def caller_context() -> Context | None:
    """The calling thread's OpenTelemetry context if it holds a valid span (a workflow
    started now joins that trace), else None. Loads nothing: if OpenTelemetry is not
    imported yet, no span can be active."""
    if "opentelemetry.trace" not in sys.modules or _find_tracer() is None:
        return None
    try:
        from opentelemetry import context, trace

        current = context.get_current()
        return current if trace.get_current_span(current).get_span_context().is_valid else None
    except Exception as exc:
        _report(exc)
        return None


# -- runs ------------------------------------------------------------------------------------


class RunSpan:
    """The span of one run of a workflow, made current while the workflow body executes."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: Any = None

    def enter(self) -> None:
        """Make the span current in this thread or task (step spans become its children)."""
        try:
            from opentelemetry import context, trace

            self._token = context.attach(trace.set_span_in_context(self._span))
        except Exception as exc:
            _report(exc)

    def close(self, outcome: Outcome | None, raised: BaseException | None) -> None:
        """End the span with the run's ``outcome``, or with what the body ``raised``."""
        try:
            self._end(outcome, raised)
        except Exception as exc:
            _report(exc)
        finally:
            self._detach()

    def _end(self, outcome: Outcome | None, raised: BaseException | None) -> None:
        from opentelemetry.trace import Status, StatusCode

        span = self._span
        if outcome is not None:
            status, _, error = outcome
            span.set_attribute("perdure.run.outcome", _OUTCOMES.get(status, status.value.lower()))
            if error is not None and status is not WorkflowStatus.CANCELLED:
                type_name, message = _serialize.error_summary(error)
                span.add_event("exception", {"exception.type": type_name,
                                             "exception.message": message})  # fmt: skip
                span.set_status(Status(StatusCode.ERROR, f"{type_name}: {message}"))
        else:
            label = _stopped(raised)
            span.set_attribute("perdure.run.outcome", label)
            if label == "error" and raised is not None:  # an engine error, not the workflow's
                span.record_exception(raised)
                span.set_status(Status(StatusCode.ERROR, f"{type(raised).__name__}: {raised}"))
        span.end()

    def _detach(self) -> None:
        if self._token is None:
            return
        try:
            from opentelemetry import context

            context.detach(self._token)
        except Exception as exc:
            _report(exc)
        self._token = None


def begin_run(
    store: Store, row: WorkflowRow, *, fresh: bool, replayed: int, caller: Any
) -> RunSpan | None:
    """Start the span of a run of ``row`` (not yet current: see :meth:`RunSpan.enter`), in
    the workflow's trace; None when tracing is off or failed.

    Args:
        store: where the workflow's trace context is read, and stored by its first run.
        row: the workflow.
        fresh: the workflow was just created (no event to read; the run kind is "start").
        replayed: how many journaled steps this run replays.
        caller: the context of whoever started the workflow (:func:`caller_context`), the
            parent of a first run.
    """
    tracer = _find_tracer()
    if tracer is None:
        return None
    try:
        return _begin(tracer, store, row, fresh, replayed, caller)
    except Exception as exc:  # tracing must never stop a run
        _report(exc)
        return None


def _begin(
    tracer: Tracer, store: Store, row: WorkflowRow, fresh: bool, replayed: int, caller: Any
) -> RunSpan:
    from opentelemetry.context import Context

    stored = None if fresh else store.get_event(row.id, TRACE_EVENT)
    parent = _extract(stored) if stored is not None else caller
    span = tracer.start_span(
        f"workflow {row.name}",
        context=parent if parent is not None else Context(),  # never a leftover context
        attributes={
            "perdure.workflow.id": row.id,
            "perdure.workflow.name": row.name,
            "perdure.run.kind": "start" if fresh else "resume",
            "perdure.run.replayed_steps": replayed,
            "perdure.workflow.recoveries": row.recoveries,
        },
    )
    if replayed:
        span.add_event(f"replayed {replayed} steps", {"perdure.run.replayed_steps": replayed})
    if stored is None:
        _store_context(store, row.id, span)
    return RunSpan(span)


def _store_context(store: Store, workflow_id: str, span: Span) -> None:
    """Record ``span`` as the parent of the workflow's later runs (W3C trace context)."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
    try:
        store.set_event(workflow_id, TRACE_EVENT, json.dumps(carrier))
    except Exception as exc:  # the run is traced; its later runs will start a new trace
        _report(exc)


def _extract(text: str) -> Context | None:
    """The context stored by :func:`_store_context`, or None if it cannot be read."""
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    try:
        carrier = json.loads(text)
    except ValueError:
        return None
    if not isinstance(carrier, dict):
        return None
    found = TraceContextTextMapPropagator().extract(
        {str(k): str(v) for k, v in carrier.items()}, context=Context()
    )
    return found if trace.get_current_span(found).get_span_context().is_valid else None


def _stopped(raised: BaseException | None) -> str:
    """The outcome of a run whose body raised instead of returning an outcome."""
    if isinstance(raised, WorkflowSuspended):
        return "suspended"
    if isinstance(raised, WorkflowCancelled):
        return "cancelled"
    if isinstance(raised, WorkflowInterrupted | asyncio.CancelledError):
        return "interrupted"
    return "error"


def traced(
    run: RunSpan | None, body: Callable[P, Outcome], *args: P.args, **kwargs: P.kwargs
) -> Outcome:
    """Run a sync workflow ``body`` with ``run`` current; end it with what comes back."""
    if run is None:
        return body(*args, **kwargs)
    run.enter()
    try:
        outcome = body(*args, **kwargs)
    except BaseException as exc:
        run.close(None, exc)
        raise
    run.close(outcome, None)
    return outcome


async def traced_async(run: RunSpan | None, body: Awaitable[Outcome]) -> Outcome:
    """:func:`traced` for an async workflow body (the run span is current in its task)."""
    if run is None:
        return await body
    run.enter()
    try:
        outcome = await body
    except BaseException as exc:
        run.close(None, exc)
        raise
    run.close(outcome, None)
    return outcome


# -- step attempts ---------------------------------------------------------------------------


class Attempt:
    """The scope of one step attempt: the step's name is set for log records while it runs.

    This plain form is what a step gets when tracing is off; it records nothing else.
    """

    __slots__ = ("_name", "_token")

    def __init__(self, name: str) -> None:
        self._name = name

    def __enter__(self) -> Attempt:
        self._token = _context._step_name.set(self._name)
        return self

    def __exit__(self, *exc_info: object) -> None:
        _context._step_name.reset(self._token)

    def succeeded(self, output: str | None) -> None:
        """The attempt's result was journaled as ``output`` (journal JSON)."""

    def failed(self, error: BaseException, retrying: bool) -> None:
        """The attempt raised ``error``; ``retrying``: another attempt will follow."""


class _TracedAttempt(Attempt):
    """An attempt with its span, current while it runs."""

    __slots__ = ("_attached", "_outcome", "_span")

    def __init__(self, name: str, span: Span) -> None:
        super().__init__(name)
        self._span = span
        self._outcome: str | None = None
        self._attached: Any = None

    def __enter__(self) -> Attempt:
        super().__enter__()
        try:
            from opentelemetry import context, trace

            self._attached = context.attach(trace.set_span_in_context(self._span))
        except Exception as exc:
            _report(exc)
        return self

    def succeeded(self, output: str | None) -> None:
        self._outcome = "success"
        if self._name.startswith(MODEL_STEPS):
            try:
                self._span.set_attributes(_model_attributes(self._name, output))
            except Exception as exc:
                _report(exc)

    def failed(self, error: BaseException, retrying: bool) -> None:
        self._outcome = "retry" if retrying else "error"
        try:
            from opentelemetry.trace import Status, StatusCode

            self._span.record_exception(error)
            self._span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        except Exception as exc:
            _report(exc)

    def __exit__(self, *exc_info: object) -> None:
        super().__exit__()
        raised = exc_info[1] if isinstance(exc_info[1], BaseException) else None
        try:
            if self._outcome is None and raised is not None:  # cut short: not the body's doing
                self._outcome = _stopped(raised)
                if self._outcome == "error":
                    self.failed(raised, retrying=False)
            self._span.set_attribute("perdure.step.outcome", self._outcome or "success")
            self._span.end()
        except Exception as exc:
            _report(exc)
        finally:
            self._detach()

    def _detach(self) -> None:
        if self._attached is None:
            return
        try:
            from opentelemetry import context

            context.detach(self._attached)
        except Exception as exc:
            _report(exc)


def attempt(workflow_id: str, key: str, name: str, number: int) -> Attempt:
    """The scope of attempt ``number`` of the step ``name`` under replay key ``key``: a
    span when tracing is on, in any case the step's name for log records."""
    tracer = _tracer
    if tracer is None:
        return Attempt(name)
    try:
        span = tracer.start_span(
            f"step {name}",
            attributes={
                "perdure.workflow.id": workflow_id,
                "perdure.step.name": name,
                "perdure.step.key": key,
                "perdure.step.attempt": number,
            },
        )
    except Exception as exc:
        _report(exc)
        return Attempt(name)
    return _TracedAttempt(name, span)


def _model_attributes(name: str, output: str | None) -> dict[str, str | int]:
    """The ``gen_ai.*`` attributes of a model call, from its recorded response."""
    used = call_usage(output)
    attributes: dict[str, str | int] = {
        "gen_ai.system": name.split(".", 1)[0],
        "gen_ai.usage.input_tokens": used.input_tokens,
        "gen_ai.usage.output_tokens": used.output_tokens,
    }
    models = [model for model in used.by_model if model != "unknown"]
    if models:
        attributes["gen_ai.response.model"] = models[0]
    return attributes
