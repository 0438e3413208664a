"""A canary API key, used by 1,000 model calls, appears nowhere perdure writes (both backends).

The key lives in the SDK clients (``openai.OpenAI(api_key=...)``, ``anthropic.Anthropic``),
as in a real application: never a workflow input or a step argument. The run makes 1,000
chat completions through ``perdure.agents.durable`` against the fake model server
(tests/apps/fake_llm.py), some of them rate-limited, failing with a 500 and with a 400 (so
failed attempts and step errors are journaled too), plus an agent loop with a tool and
Anthropic calls; then it is replayed from the journal. A second canary, a card number the
model echoes back, is masked by ``durable(client, redact=...)``.

Then neither canary may appear in: the raw database (tests/raw_dump.py: the SQLite file, WAL
and blob files; every column of every PostgreSQL table), the log records of every logger at
DEBUG (the ``perdure`` logger and the root logger, through ``perdure.JsonLogFormatter`` and
``perdure.LogContextFilter``), the OpenTelemetry spans (an in-memory exporter on the SDK
provider), and the HTTP API's answers (every route the dashboard reads, over real HTTP). The
API's own bearer token must not reach the logs either. A control checks that the key did
reach the model server, and that the dump does show the card number when it is not redacted.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anthropic
import httpx
import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import perdure
from conftest import APPS
from perdure import agents
from perdure.server import create_app, load_tokens
from raw_dump import raw_database

sys.path.insert(0, str(APPS))
sys.path.insert(0, str(Path(__file__).parent.parent / "server"))
from fake_llm import CHAT, FakeLLM
from server_helpers import serving

OPENAI_KEY = f"sk-proj-CANARYKEY{uuid.uuid4().hex}"
ANTHROPIC_KEY = f"sk-ant-api03-CANARYKEY{uuid.uuid4().hex}"
CARD = "4111-CANARYCARD-1111"
API_TOKEN = f"api-token-CANARYTOKEN-{uuid.uuid4().hex}"
SECRETS = (OPENAI_KEY, ANTHROPIC_KEY, "CANARYKEY", CARD, "CANARYCARD", API_TOKEN)
CALLS = 1000
FAST = perdure.RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=0)
tool_runs: list[str] = []


@agents.tool
def search(query: str, idempotency_key: str) -> str:
    """Search the knowledge base.

    Args:
        query: what to look for.
    """
    tool_runs.append(idempotency_key)
    return f"facts about {query}"


def _openai(base_url: str, **options: Any) -> Any:
    return agents.durable(openai.OpenAI(base_url=base_url, api_key=OPENAI_KEY), **options)


@perdure.workflow(name="canary_calls")
def canary_calls(openai_url: str, anthropic_url: str, calls: int) -> dict[str, Any]:
    gpt = _openai(openai_url, retry=FAST)
    answers, failures = 0, []
    for i in range(calls):
        try:
            gpt.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": f"question {i}"}]
            )
            answers += 1
        except Exception as exc:  # the planted 400: journaled as the step's error
            failures.append(type(exc).__name__)
    agent = agents.Agent(openai.OpenAI(base_url=openai_url, api_key=OPENAI_KEY),
                         model="gpt-test", tools=[search], instructions="be brief")  # fmt: skip
    text = agent.run("find facts TURNS=2").text
    claude = agents.durable(anthropic.Anthropic(base_url=anthropic_url, api_key=ANTHROPIC_KEY))
    said = claude.messages.create(
        model="claude-test", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    return {"answers": answers, "failures": failures, "agent": text,
            "claude": said.content[0].text}  # fmt: skip


def _mask_card(data: dict[str, Any]) -> dict[str, Any]:
    """The redact hook: the card number out of every answer before it is journaled."""
    return json.loads(json.dumps(data).replace(CARD, "[card]"))


@perdure.workflow(name="canary_redacted")
def canary_redacted(openai_url: str, redact: bool) -> str:
    gpt = _openai(openai_url, redact=_mask_card) if redact else _openai(openai_url)
    # The prompt is code, not an input: the model echoes it, with the card number in it.
    reply = gpt.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": f"charge card {CARD}"}]
    )
    return str(reply.choices[0].message.content)


# -- capture ---------------------------------------------------------------------------------


@functools.cache
def _exporter() -> InMemorySpanExporter:
    """An in-memory exporter on the global SDK tracer provider (installed once per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), f"another tracer provider is set: {provider}"
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = _exporter()
    exporter.clear()
    yield exporter
    exporter.clear()


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Every record of every logger at DEBUG, as JSON lines and as plain text with the
    context fields (and the arguments of each record, however a handler would format them)."""
    buffer = io.StringIO()
    as_json = logging.StreamHandler(buffer)
    as_json.setFormatter(perdure.JsonLogFormatter())
    as_text = logging.StreamHandler(buffer)
    as_text.addFilter(perdure.LogContextFilter())
    as_text.setFormatter(
        logging.Formatter("%(levelname)s %(name)s [%(workflow_id)s/%(step)s] %(message)s %(args)s")
    )
    root, ours = logging.getLogger(), logging.getLogger("perdure")
    levels = (root.level, ours.level)
    root.setLevel(logging.DEBUG)
    ours.setLevel(logging.DEBUG)
    root.addHandler(as_json)
    root.addHandler(as_text)
    try:
        yield buffer
    finally:
        root.removeHandler(as_json)
        root.removeHandler(as_text)
        root.setLevel(levels[0])
        ours.setLevel(levels[1])


def _assert_absent(where: str, text: str | bytes, secrets: tuple[str, ...] = SECRETS) -> None:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    for secret in secrets:
        assert secret.encode() not in data, f"{secret!r} leaked into {where}"


def _api_answers(base: str, workflow_ids: list[str]) -> str:
    """Every API answer the dashboard reads, for these workflows, as one text."""
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    paths = ["/api/v1/whoami", "/api/v1/workflows?limit=1000", "/api/v1/approvals?all=true"]
    for workflow_id in workflow_ids:
        quoted = quote(workflow_id, safe="")
        paths += [f"/api/v1/workflows/{quoted}", f"/api/v1/workflows/{quoted}/result"]
    answers = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for path in paths:
            answer = client.get(path, headers=headers)
            assert answer.status_code == 200, (path, answer.text)
            answers.append(answer.text)
        page = client.get("/")
        assert page.status_code == 200
        answers.append(page.text)
    return "\n".join(answers)


def _force_replay(engine: perdure.Engine, workflow_id: str) -> Any:
    """Make a finished run resumable and resume it: its whole journal replays."""
    store: Any = engine.store
    store._run(
        lambda c: c.execute(f"UPDATE workflows SET status = 'ERROR' WHERE id = '{workflow_id}'")
    )
    return engine.resume(workflow_id).result(timeout=120)


# -- the test --------------------------------------------------------------------------------


def test_a_canary_api_key_appears_nowhere(
    db_url: str, logs: io.StringIO, spans: InMemorySpanExporter
) -> None:
    tool_runs.clear()
    with FakeLLM() as server, perdure.Engine(db_url, shutdown_grace=0.5) as engine:
        server.fail_next(429, retry_after=0.01, path=CHAT)  # the first call: retried...
        server.fail_next(500, path=CHAT)  # ...retried again...
        server.fail_next(400, path=CHAT)  # ...and refused: the step fails for good
        args = (server.openai_url, server.anthropic_url, CALLS)
        out = engine.run(canary_calls, *args, id="canary-calls", timeout=300)
        assert out["answers"] == CALLS - 1 and len(out["failures"]) == 1
        assert out["agent"].startswith("done after 2 tool results") and len(tool_runs) == 2
        assert engine.run(canary_redacted, server.openai_url, True, id="redacted", timeout=30) == (
            "hello: charge card [card]"
        )
        sent = server.count()
        assert sent == CALLS + 2 + 3 + 1 + 1  # 1,000 calls, 2 retries, the agent, Claude, one more
        # the keys did reach the model server, as headers
        used = [" ".join(h.values()) for h in server.headers]
        assert sum(OPENAI_KEY in h for h in used) == sent - 1
        assert sum(ANTHROPIC_KEY in h for h in used) == 1
        assert _force_replay(engine, "canary-calls") == out  # replays without a request
        assert server.count() == sent and len(tool_runs) == 2
        attempts = engine.list_attempts("canary-calls")
        assert len(attempts) == 2 and "429" in attempts[0].error.message
        steps = engine.list_steps("canary-calls")
        assert sum(s.status == "ERROR" for s in steps) == 1

        tokens = load_tokens(f"operator:canary-test:{API_TOKEN}")
        with serving(create_app(db_url, tokens=tokens, engine=engine)) as base:
            answers = _api_answers(base, ["canary-calls", "redacted"])
        assert '"canary-calls"' in answers and "hello: charge card [card]" in answers
        _assert_absent("the HTTP API's answers", answers, SECRETS[:-1])  # its own token aside
        _assert_absent("the database", raw_database(db_url))
    finished = spans.get_finished_spans()
    assert len([s for s in finished if s.name == "step openai.chat.completions.create"]) > CALLS
    _assert_absent("the OpenTelemetry spans", "\n".join(s.to_json() for s in finished))
    text = logs.getvalue()
    assert '"workflow_id": "canary-calls"' in text  # the capture did see the run's records
    _assert_absent("the logs", text)
    _assert_absent("the database (reopened)", raw_database(db_url))


def test_without_redaction_the_dump_would_show_the_card(db_url: str) -> None:
    """The control of the redact case: unredacted, the echoed card number is journaled."""
    with FakeLLM() as server, perdure.Engine(db_url, shutdown_grace=0.5) as engine:
        said = engine.run(canary_redacted, server.openai_url, False, id="plain", timeout=30)
        assert said == f"hello: charge card {CARD}"
        dump = raw_database(db_url)
    assert CARD.encode() in dump
    _assert_absent("the database", dump, (OPENAI_KEY, "CANARYKEY"))
