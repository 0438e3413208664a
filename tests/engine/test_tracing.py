"""OpenTelemetry traces, read back through the SDK's in-memory exporter.

What is proved: each run of a workflow is a span with a child span per step attempt (a
retried step: one span per attempt, with its number and outcome; a replayed step: none);
a workflow that suspends and resumes, or whose process is SIGKILLed and whose work another
process recovers, is still one trace; a model call's span carries its token counts; a
workflow started under an active span joins that span's trace; a failing exporter never
breaks a run; without a tracer provider nothing is traced or stored.

OpenTelemetry lets the global tracer provider be set once per process: the first test that
needs it installs an SDK provider (or joins the SDK provider already installed) with a span
processor that captures only while a test asks it to.
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import perdure
from conftest import APPS, run_app, wait_until
from perdure import agents

sys.path.insert(0, str(APPS))
from fake_llm import FakeLLM

FAST = perdure.RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=0)


class Capture(SpanProcessor):
    """Sends finished spans to an in-memory exporter while a test captures; with ``broken``
    set to "start" or "end", raises from that hook instead (a span pipeline gone wrong)."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self._export = SimpleSpanProcessor(self.exporter)
        self.capturing = False
        self.broken: str | None = None

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        if self.broken == "start":
            raise RuntimeError("span processor broken on start")

    def on_end(self, span: ReadableSpan) -> None:
        if self.broken == "end":
            raise RuntimeError("span processor broken on end")
        if self.capturing:
            self._export.on_end(span)

    def of(self, workflow_id: str) -> list[ReadableSpan]:
        """The finished spans of one workflow (runs and step attempts), by start time."""
        found = [s for s in self.exporter.get_finished_spans()
                 if (s.attributes or {}).get("perdure.workflow.id") == workflow_id]  # fmt: skip
        return sorted(found, key=lambda s: s.start_time or 0)

    def runs(self, workflow_id: str) -> list[ReadableSpan]:
        return [s for s in self.of(workflow_id) if s.name.startswith("workflow ")]

    def steps(self, workflow_id: str) -> list[ReadableSpan]:
        return [s for s in self.of(workflow_id) if s.name.startswith("step ")]


@functools.cache
def _capture() -> Capture:
    """Install the capturing processor once per process, on the global SDK provider."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), f"another tracer provider is set: {provider}"
    capture = Capture()
    provider.add_span_processor(capture)
    return capture


@pytest.fixture
def spans() -> Iterator[Capture]:
    capture = _capture()
    capture.exporter.clear()
    capture.capturing = True
    yield capture
    capture.capturing, capture.broken = False, None
    capture.exporter.clear()


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def ids(span: ReadableSpan) -> tuple[int, int, int | None]:
    """(trace id, span id, parent span id)."""
    assert span.context is not None
    return span.context.trace_id, span.context.span_id, span.parent and span.parent.span_id


# -- one run ---------------------------------------------------------------------------------


@perdure.step(name="tracing.fetch")
def fetch(order: str) -> int:
    return len(order)


@perdure.step(name="tracing.charge")
def charge(amount: int) -> str:
    return f"receipt-{amount}"


@perdure.workflow(name="tracing.checkout")
def checkout(order: str) -> str:
    return charge(fetch(order))


def test_a_run_is_a_span_with_a_child_per_step_attempt(
    engine: perdure.Engine, spans: Capture
) -> None:
    assert engine.run(checkout, "order-7", id="co", timeout=30) == "receipt-7"

    [run] = spans.runs("co")
    assert run.name == "workflow tracing.checkout"
    assert attrs(run) == {
        "perdure.workflow.id": "co",
        "perdure.workflow.name": "tracing.checkout",
        "perdure.run.kind": "start",
        "perdure.run.replayed_steps": 0,
        "perdure.workflow.recoveries": 0,
        "perdure.run.outcome": "success",
    }
    assert run.status.status_code is StatusCode.UNSET
    trace_id, run_id, _ = ids(run)
    steps = spans.steps("co")
    assert [s.name for s in steps] == ["step tracing.fetch", "step tracing.charge"]
    assert [attrs(s) for s in steps] == [
        {"perdure.workflow.id": "co", "perdure.step.name": name, "perdure.step.key": key,
         "perdure.step.attempt": 1, "perdure.step.outcome": "success"}
        for name, key in (("tracing.fetch", "0"), ("tracing.charge", "1"))
    ]  # fmt: skip
    assert all(ids(s)[0] == trace_id and ids(s)[2] == run_id for s in steps)


@perdure.step(name="tracing.double")
async def double(n: int) -> int:
    await asyncio.sleep(0.01 * (3 - n))  # finish in the reverse order of the calls
    return 2 * n


async def _doubled_sum(n: int) -> int:
    return await double(n) + await double(n + 10)


@perdure.workflow(name="tracing.fan_out")
async def fan_out() -> list[int]:
    return list(await asyncio.gather(double(1), double(2), _doubled_sum(0)))


def test_async_steps_and_task_branches_are_children_of_the_run(
    engine: perdure.Engine, spans: Capture
) -> None:
    assert engine.run(fan_out, id="fan", timeout=30) == [2, 4, 20]

    [run] = spans.runs("fan")
    steps = spans.steps("fan")
    assert sorted(attrs(s)["perdure.step.key"] for s in steps) == ["0", "1", "t2/0", "t2/1"]
    assert {ids(s)[0] for s in steps} == {ids(run)[0]}
    assert {ids(s)[2] for s in steps} == {ids(run)[1]}


# -- retries and failures --------------------------------------------------------------------

flaky_calls: list[int] = []


@perdure.step(name="tracing.flaky", retry=FAST)
def flaky() -> str:
    flaky_calls.append(1)
    if len(flaky_calls) < 3:
        raise perdure.TransientError(f"try {len(flaky_calls)} failed")
    return "ok"


@perdure.workflow(name="tracing.retrying")
def retrying() -> str:
    flaky_calls.clear()
    return flaky()


def test_a_retried_step_has_one_span_per_attempt(engine: perdure.Engine, spans: Capture) -> None:
    assert engine.run(retrying, id="retried", timeout=30) == "ok"

    attempts = spans.steps("retried")
    assert [attrs(s)["perdure.step.attempt"] for s in attempts] == [1, 2, 3]
    assert [attrs(s)["perdure.step.outcome"] for s in attempts] == ["retry", "retry", "success"]
    assert {attrs(s)["perdure.step.key"] for s in attempts} == {"0"}
    codes = [s.status.status_code for s in attempts]
    assert codes == [StatusCode.ERROR, StatusCode.ERROR, StatusCode.UNSET]
    [event] = attempts[0].events
    assert event.name == "exception"
    assert dict(event.attributes or {})["exception.message"] == "try 1 failed"
    [run] = spans.runs("retried")
    assert {ids(s)[2] for s in attempts} == {ids(run)[1]}


@perdure.step(name="tracing.refuse", retry=perdure.NO_RETRY)
def refuse(amount: int) -> None:
    raise ValueError(f"amount {amount} refused")


@perdure.workflow(name="tracing.failing")
def failing() -> None:
    refuse(5)


def test_a_failed_workflow_ends_its_run_span_in_error(
    engine: perdure.Engine, spans: Capture
) -> None:
    with pytest.raises(ValueError, match="amount 5 refused"):
        engine.run(failing, id="failed", timeout=30)

    [step] = spans.steps("failed")
    assert attrs(step)["perdure.step.outcome"] == "error"
    assert step.status.status_code is StatusCode.ERROR
    [run] = spans.runs("failed")
    assert attrs(run)["perdure.run.outcome"] == "error"
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description == "builtins.ValueError: amount 5 refused"
    [event] = run.events
    assert dict(event.attributes or {})["exception.type"] == "builtins.ValueError"


# -- one workflow, one trace -----------------------------------------------------------------


@perdure.workflow(name="tracing.waiting")
def waiting(order: str) -> str:
    amount = fetch(order)
    approved_by = perdure.receive("approval")
    return f"{charge(amount)} approved by {approved_by}"


def test_a_suspended_workflow_resumes_in_the_same_trace(db_url: str, spans: Capture) -> None:
    with perdure.Engine(db_url, suspend_after=0.05, shutdown_grace=0.5) as engine:
        handle = engine.start(waiting, "order-1", id="waits")
        wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
        engine.send("waits", "approval", "ana")
        assert handle.result(timeout=30) == "receipt-7 approved by ana"
        stored = engine.get_event("waits", "perdure.trace")

    first, second = spans.runs("waits")
    assert attrs(first)["perdure.run.outcome"] == "suspended"
    assert first.status.status_code is StatusCode.UNSET
    assert attrs(second)["perdure.run.kind"] == "resume"
    assert attrs(second)["perdure.run.outcome"] == "success"
    assert attrs(second)["perdure.run.replayed_steps"] >= 1
    assert any(e.name.startswith("replayed ") for e in second.events)
    trace_id, first_id, _ = ids(first)
    assert ids(second)[0] == trace_id and ids(second)[2] == first_id
    assert stored["traceparent"].startswith(f"00-{trace_id:032x}-{first_id:016x}-")
    # fetch ran once, before the wait: the resumed run replayed it without a span
    names = [(s.name, ids(s)[2]) for s in spans.steps("waits")]
    assert names == [("step tracing.fetch", first_id), ("step tracing.charge", ids(second)[1])]


@perdure.step(name="traced_work")
def traced_work(position: int, total: int) -> int:
    return total + position


@perdure.workflow(name="traced_crash_flow")
def traced_crash_flow(steps: int) -> int:
    """The workflow of tests/apps/traced_app.py, whose child dies in step 3."""
    total = 0
    for position in range(steps):
        total = traced_work(position, total)
    return total


@pytest.mark.crash
def test_a_workflow_recovered_in_another_process_stays_one_trace(
    db_url: str, spans: Capture, tmp_path: Path
) -> None:
    exported = tmp_path / "child-spans.jsonl"
    child = run_app("traced_app", "--db", db_url, "--spans", str(exported), "--id", "crashed",
                    "--steps", "5", "--kill-at", "3")  # fmt: skip
    _, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    # Only what ended before the kill was exported: steps 0-2, not the run nor step 3.
    before = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [(s["name"], s["attributes"]["perdure.step.key"]) for s in before] == [
        ("step traced_work", "0"),
        ("step traced_work", "1"),
        ("step traced_work", "2"),
    ]
    [trace_hex] = {s["trace_id"] for s in before}
    [first_run_hex] = {s["parent_id"] for s in before}

    # takes over the dead child's run (traced_app's copy of the workflow is other source
    # text, so another code version: declared compatible)
    with perdure.Engine(db_url, shutdown_grace=0.5, compatible_versions="any") as engine:
        assert engine.handle("crashed").result(timeout=30) == sum(range(5))
        stored = engine.get_event("crashed", "perdure.trace")

    assert stored["traceparent"].startswith(f"00-{trace_hex}-{first_run_hex}-")
    [run] = spans.runs("crashed")
    trace_id, run_id, parent_id = ids(run)
    assert f"{trace_id:032x}" == trace_hex  # the same trace as the dead process's spans
    assert parent_id is not None and f"{parent_id:016x}" == first_run_hex
    assert attrs(run)["perdure.run.kind"] == "resume"
    assert attrs(run)["perdure.run.replayed_steps"] == 3
    assert attrs(run)["perdure.workflow.recoveries"] == 1
    assert attrs(run)["perdure.run.outcome"] == "success"
    after = spans.steps("crashed")  # steps 0-2 replayed without spans; 3 ran again, then 4
    assert [attrs(s)["perdure.step.key"] for s in after] == ["3", "4"]
    assert {ids(s)[:1] + ids(s)[2:] for s in after} == {(trace_id, run_id)}


def test_the_callers_active_span_is_the_parent_of_the_workflow_trace(
    engine: perdure.Engine, spans: Capture
) -> None:
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("POST /checkout") as request:
        handle = engine.start(checkout, "order-22", id="under-request")
    assert handle.result(timeout=30) == "receipt-8"

    [run] = spans.runs("under-request")
    request_context = request.get_span_context()
    assert ids(run)[0] == request_context.trace_id
    assert ids(run)[2] == request_context.span_id
    assert {ids(s)[0] for s in spans.steps("under-request")} == {request_context.trace_id}


def test_async_engine_start_joins_the_callers_trace(db_url: str, spans: Capture) -> None:
    tracer = trace.get_tracer("tests")

    async def main() -> tuple[Any, trace.SpanContext]:
        async with perdure.AsyncEngine(db_url, shutdown_grace=0.5) as engine:
            with tracer.start_as_current_span("job") as job:
                handle = await engine.start(fan_out, id="async-under-job")
            return await handle.result(timeout=30), job.get_span_context()

    result, job = asyncio.run(main())
    assert result == [2, 4, 20]
    [run] = spans.runs("async-under-job")
    assert ids(run)[0] == job.trace_id and ids(run)[2] == job.span_id
    assert {ids(s)[2] for s in spans.steps("async-under-job")} == {ids(run)[1]}


# -- model calls -----------------------------------------------------------------------------


@perdure.workflow(name="tracing.model_calls")
def model_calls(base_url: str) -> str:
    client = agents.durable(openai.OpenAI(base_url=base_url, api_key="sk-test"))
    chat = client.chat.completions.create(
        model="gpt-test-1", messages=[{"role": "user", "content": "a question of some length"}]
    )
    answer = client.responses.create(model="gpt-test-2", input="and a second one")
    return f"{chat.choices[0].message.content} / {answer.output_text}"


def test_a_model_call_span_carries_its_token_counts(engine: perdure.Engine, spans: Capture) -> None:
    with FakeLLM() as server:
        engine.run(model_calls, server.openai_url, id="llm", timeout=30)

    calls = [s for s in spans.steps("llm") if s.name.startswith("step openai.")]
    assert [s.name for s in calls] == [
        "step openai.chat.completions.create",
        "step openai.responses.create",
    ]
    journal = {step.key: step for step in engine.list_steps("llm")}
    for span, model in zip(calls, ("gpt-test-1", "gpt-test-2"), strict=True):
        recorded = agents.usage([journal[attrs(span)["perdure.step.key"]]])
        assert recorded.input_tokens > 0 and recorded.output_tokens > 0
        assert attrs(span)["gen_ai.system"] == "openai"
        assert attrs(span)["gen_ai.usage.input_tokens"] == recorded.input_tokens
        assert attrs(span)["gen_ai.usage.output_tokens"] == recorded.output_tokens
        assert attrs(span)["gen_ai.response.model"] == model


# -- tracing never breaks a run --------------------------------------------------------------


@pytest.mark.parametrize("broken", ["start", "end"])
def test_a_failing_span_pipeline_never_breaks_a_run(
    engine: perdure.Engine, spans: Capture, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    spans.broken = broken
    caplog.set_level("DEBUG", logger="perdure")

    assert engine.run(retrying, id="unbroken", timeout=30) == "ok"
    assert engine.run(checkout, "order-1", id="unbroken-2", timeout=30) == "receipt-7"

    assert any("tracing failed" in r.getMessage() for r in caplog.records)
    assert engine.get_workflow("unbroken").status is perdure.WorkflowStatus.SUCCESS
    spans.broken = None  # and the next runs are traced as before
    assert engine.run(checkout, "order-1", id="traced-again", timeout=30) == "receipt-7"
    assert len(spans.runs("traced-again")) == 1 and len(spans.steps("traced-again")) == 2


NO_PROVIDER = textwrap.dedent("""
    import sys
    if sys.argv[2] == "blocked":
        sys.modules["opentelemetry"] = None  # as if it were not installed
    import perdure

    @perdure.step
    def one() -> int:
        return 1

    @perdure.workflow
    def flow() -> int:
        return one() + one()

    with perdure.Engine(sys.argv[1]) as engine:
        print(engine.run(flow, id="plain", timeout=30), engine.get_event("plain", "perdure.trace"))
""")


@pytest.mark.parametrize("otel", ["blocked", "no-provider"])
def test_without_a_tracer_provider_nothing_is_traced(tmp_path: Path, otel: str) -> None:
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    out = subprocess.run([sys.executable, "-c", NO_PROVIDER, url, otel],
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert out.stdout.split() == ["2", "None"]
