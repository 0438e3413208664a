"""A child process for the tracing crash test: a traced workflow killed in the middle of a step.

It installs an OpenTelemetry SDK tracer provider whose exporter appends every finished span
to a file as one JSON line (trace id, span id, parent span id, name, attributes), fsynced,
so what the process exported survives its SIGKILL. Then it starts ``traced_crash_flow``
(``--steps`` steps named ``traced_work``); the body of step ``--kill-at`` SIGKILLs the process:
the run span and that step's span never end, the spans of the steps before it were exported.
The parent defines the same workflow and recovers it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import perdure

ARGS = argparse.Namespace()


class JsonLinesExporter(SpanExporter):
    """Appends each finished span to a file as a JSON line, flushed and fsynced."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a", encoding="utf-8") as f:
            for span in spans:
                assert span.context is not None
                f.write(json.dumps({
                    "trace_id": format(span.context.trace_id, "032x"),
                    "span_id": format(span.context.span_id, "016x"),
                    "parent_id": None if span.parent is None
                    else format(span.parent.span_id, "016x"),
                    "name": span.name,
                    "attributes": dict(span.attributes or {}),
                }) + "\n")  # fmt: skip
            f.flush()
            os.fsync(f.fileno())
        return SpanExportResult.SUCCESS


@perdure.step(name="traced_work")
def work(position: int, total: int) -> int:
    if ARGS.kill_at == position:
        os.kill(os.getpid(), signal.SIGKILL)
    return total + position


@perdure.workflow(name="traced_crash_flow")
def traced_crash_flow(steps: int) -> int:
    total = 0
    for position in range(steps):
        total = work(position, total)
    return total


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--spans", required=True)
    parser.add_argument("--id", default="traced-1")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--kill-at", type=int, default=-1)
    parser.parse_args(namespace=ARGS)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(ARGS.spans)))
    trace.set_tracer_provider(provider)
    with perdure.Engine(ARGS.db) as engine:
        print(engine.run(traced_crash_flow, ARGS.steps, id=ARGS.id, timeout=60), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
