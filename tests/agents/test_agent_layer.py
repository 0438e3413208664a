"""perdure.agents end to end: the real openai and anthropic SDK clients against a local fake
server (tests/apps/fake_llm.py) that counts requests. Every test runs on both backends.

What is proved: model calls are journaled steps whose responses replay as the SDK's own types
without a request; perdure (not the SDK) retries a 429 with Retry-After and 5xx answers, never
a 400; tools get a schema, a
stable idempotency key and an approval gate; the agent loop works for OpenAI chat and
Anthropic messages, sync and async; no API key reaches the journal; a 100-turn conversation
journals O(total size), not O(turns²).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

import perdure
from perdure import agents

sys.path.insert(0, str(Path(__file__).parent.parent / "apps"))
from fake_llm import CHAT, MESSAGES, FakeLLM

OPENAI_KEY = "sk-test-SECRET-openai"
ANTHROPIC_KEY = "sk-ant-test-SECRET-anthropic"
FAST = perdure.RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=0)
keys: list[str] = []
tool_runs: list[str] = []


@pytest.fixture
def server() -> Iterator[FakeLLM]:
    keys.clear()
    tool_runs.clear()
    with FakeLLM(turns=2) as fake:
        yield fake


@agents.tool
def lookup(query: str, idempotency_key: str) -> str:
    """Look something up in the knowledge base.

    Args:
        query: what to look up.
    """
    keys.append(idempotency_key)
    tool_runs.append(query)
    return f"facts about {query}"


@agents.tool(requires_approval=lambda amount: amount > 100)
def refund(amount: int) -> str:
    """Refund the customer."""
    tool_runs.append(f"refund {amount}")
    return f"refunded {amount}"


def journal_text(engine: perdure.Engine, workflow_id: str) -> str:
    """Everything the journal and approvals hold for a run, as text."""
    store: Any = engine.store
    rows = [*store.load_steps(workflow_id), *store.list_approvals(False, 100)]
    return json.dumps([str(r) for r in rows]) + str(engine.get_workflow(workflow_id))


def force_replay(engine: perdure.Engine, workflow_id: str) -> Any:
    """Make a finished run resumable and resume it: its whole journal replays."""
    store: Any = engine.store
    store._run(
        lambda conn: conn.execute(
            f"UPDATE workflows SET status = 'ERROR' WHERE id = '{workflow_id}'"
        )
    )
    return engine.resume(workflow_id).result(timeout=20)


# -- OpenAI chat completions -------------------------------------------------------------------


@perdure.workflow(name="agents_openai_chat")
def openai_chat(base_url: str) -> dict[str, Any]:
    client = openai.OpenAI(base_url=base_url, api_key=OPENAI_KEY)
    agent = agents.Agent(client, model="gpt-test", tools=[lookup], instructions="be brief")
    result = agent.run("what is perdure?")
    raw = agents.durable(client).chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "again"}]
    )
    return {"text": result.text, "turns": result.turns, "tools": result.tool_calls,
            "tokens": result.input_tokens + result.output_tokens,
            "type": type(raw).__name__, "said": raw.choices[0].message.content}  # fmt: skip


def test_an_openai_agent_runs_and_replays_without_a_request(
    engine: perdure.Engine, server: FakeLLM
) -> None:
    out = engine.run(openai_chat, server.openai_url, id="chat", timeout=30)
    assert out["text"].startswith("done after 2 tool results: facts about q-1")
    assert (out["turns"], out["tools"], out["type"]) == (3, 2, "ChatCompletion")
    assert out["said"] == "hello: again" and out["tokens"] > 0
    assert server.count(CHAT) == 4 and tool_runs == ["q-0", "q-1"]
    names = [s.name for s in engine.list_steps("chat")]
    assert names.count("openai.chat.completions.create") == 4
    assert names.count("tool.lookup") == 2
    assert force_replay(engine, "chat") == out
    assert server.count(CHAT) == 4 and tool_runs == ["q-0", "q-1"]  # nothing sent or run again
    assert keys == ["chat:1", "chat:3"]  # the steps' stable keys
    used = agents.usage(engine.list_steps("chat"))
    assert used.calls == 4 and used.total_tokens == out["tokens"] + _last_call_tokens(engine)


def _last_call_tokens(engine: perdure.Engine) -> int:
    last = [s for s in engine.list_steps("chat") if s.name.startswith("openai.")][-1]
    return agents.usage([last]).total_tokens


def test_no_api_key_reaches_the_journal(engine: perdure.Engine, server: FakeLLM) -> None:
    engine.run(openai_chat, server.openai_url, id="secret", timeout=30)
    assert any(OPENAI_KEY in h.get("authorization", "") for h in server.headers)
    assert "SECRET" not in journal_text(engine, "secret")


@perdure.step
def recorded_type(value: Any) -> str:
    return type(value).__name__


@perdure.workflow(name="agents_types")
def types_on_replay(base_url: str) -> list[str]:
    client = agents.durable(openai.OpenAI(base_url=base_url, api_key=OPENAI_KEY))
    chat = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    resp = client.responses.create(model="m", input="hi there")
    assert isinstance(chat, ChatCompletion) and isinstance(resp, Response)
    return [type(chat).__name__, type(resp).__name__, resp.output_text,
            str(chat.choices[0].message.content)]  # fmt: skip


def test_responses_replay_as_the_sdk_types(engine: perdure.Engine, server: FakeLLM) -> None:
    first = engine.run(types_on_replay, server.openai_url, id="types", timeout=30)
    assert first == ["ChatCompletion", "Response", "hello: hi there", "hello: x"]
    assert server.count() == 2
    assert force_replay(engine, "types") == first  # the isinstance checks pass on replay
    assert server.count() == 2


@perdure.workflow(name="agents_rate_limited")
def rate_limited(base_url: str) -> str:
    client = agents.durable(openai.OpenAI(base_url=base_url, api_key=OPENAI_KEY), retry=FAST)
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "y"}])
    return str(reply.choices[0].message.content)


def test_a_429_is_retried_by_perdure_honouring_retry_after(
    engine: perdure.Engine, server: FakeLLM
) -> None:
    server.fail_next(429, retry_after=0.3, path=CHAT)
    started = time.monotonic()
    assert engine.run(rate_limited, server.openai_url, id="limited", timeout=30) == "hello: y"
    assert time.monotonic() - started >= 0.3  # Retry-After, not the 0.01 s backoff
    assert server.count(CHAT) == 2  # one refusal, one success: the SDK did not retry on its own
    [attempt] = engine.list_attempts("limited")
    assert attempt.error is not None and "RateLimitError" in attempt.error.type


@perdure.workflow(name="agents_status_errors")
def status_errors(openai_url: str, anthropic_url: str) -> list[str]:
    gpt = agents.durable(openai.OpenAI(base_url=openai_url, api_key=OPENAI_KEY), retry=FAST)
    claude = agents.durable(
        anthropic.Anthropic(base_url=anthropic_url, api_key=ANTHROPIC_KEY), retry=FAST
    )
    said = gpt.chat.completions.create(model="m", messages=[{"role": "user", "content": "y"}])
    wrote = claude.messages.create(
        model="c", max_tokens=50, messages=[{"role": "user", "content": "z"}]
    )
    return [str(said.choices[0].message.content), str(getattr(wrote.content[0], "text", ""))]


@perdure.workflow(name="agents_bad_request")
def bad_request(openai_url: str) -> str:
    gpt = agents.durable(openai.OpenAI(base_url=openai_url, api_key=OPENAI_KEY), retry=FAST)
    try:  # a 400 is the request's own fault: raised at once, not retried
        gpt.chat.completions.create(model="m", messages=[{"role": "user", "content": "bad"}])
    except openai.BadRequestError as exc:
        return type(exc).__name__
    return "sent"


def test_5xx_answers_are_retried_and_a_400_is_not_on_both_sdks(
    engine: perdure.Engine, server: FakeLLM
) -> None:
    server.fail_next(500, path=CHAT)
    server.fail_next(503, path=MESSAGES)
    out = engine.run(status_errors, server.openai_url, server.anthropic_url, id="5xx", timeout=30)
    assert out[0].startswith("hello") and out[1].startswith("hello")
    failed = sorted(a.error.type.rpartition(".")[2] for a in engine.list_attempts("5xx") if a.error)
    assert failed == ["InternalServerError", "ServiceUnavailableError"]  # one retry per 5xx
    assert server.count(CHAT) == 2 and server.count(MESSAGES) == 2

    server.fail_next(400, times=5, path=CHAT)
    assert engine.run(bad_request, server.openai_url, id="400", timeout=30) == "BadRequestError"
    assert server.count(CHAT) == 3  # sent once: neither perdure nor the SDK retried it
    [errored] = engine.list_steps("400")
    assert errored.status == "ERROR" and errored.attempts == 1 and errored.error is not None


# -- Anthropic messages, and async clients -----------------------------------------------------


@perdure.workflow(name="agents_anthropic")
def anthropic_agent(base_url: str) -> dict[str, Any]:
    client = anthropic.Anthropic(base_url=base_url, api_key=ANTHROPIC_KEY)
    result = agents.Agent(client, model="claude-test", tools=[lookup]).run("tell me")
    return {"text": result.text, "turns": result.turns, "last": result.messages[-1]["role"]}


def test_an_anthropic_agent_runs_and_replays(engine: perdure.Engine, server: FakeLLM) -> None:
    out = engine.run(anthropic_agent, server.anthropic_url, id="claude", timeout=30)
    assert out["text"].startswith("done after 2 tool results: facts about q-1")
    assert out["turns"] == 3 and out["last"] == "assistant"
    assert server.count(MESSAGES) == 3
    assert force_replay(engine, "claude") == out
    assert server.count(MESSAGES) == 3
    assert "SECRET" not in journal_text(engine, "claude")


@perdure.workflow(name="agents_async")
async def async_agents(openai_url: str, anthropic_url: str) -> list[str]:
    gpt = agents.Agent(openai.AsyncOpenAI(base_url=openai_url, api_key=OPENAI_KEY),
                       model="m", tools=[lookup])  # fmt: skip
    claude = agents.Agent(anthropic.AsyncAnthropic(base_url=anthropic_url, api_key=ANTHROPIC_KEY),
                          model="c", tools=[lookup])  # fmt: skip
    return [(await gpt.run_async("a")).text, (await claude.run_async("b")).text]


def test_async_clients_in_an_async_workflow(engine: perdure.Engine, server: FakeLLM) -> None:
    out = engine.run(async_agents, server.openai_url, server.anthropic_url, id="async", timeout=30)
    assert all(text.startswith("done after 2 tool results") for text in out)
    assert server.count(CHAT) == 3 and server.count(MESSAGES) == 3
    assert force_replay(engine, "async") == out
    assert server.count() == 6


# -- approval-gated tools ----------------------------------------------------------------------


@perdure.workflow(name="agents_refund")
def refund_flow(base_url: str, amount: int) -> str:
    client = openai.OpenAI(base_url=base_url, api_key=OPENAI_KEY)
    agent = agents.Agent(client, model="m", tools=[refund])
    return agent.run(f"refund {amount} TURNS=1").text


def test_a_gated_tool_waits_for_approval(engine: perdure.Engine, server: FakeLLM) -> None:
    # the fake model calls refund(amount=0) (k for integer params): below the threshold
    assert engine.run(refund_flow, server.openai_url, 5, id="small", timeout=30).startswith(
        "done after 1 tool results: refunded 0"
    )
    assert engine.pending_approvals() == []


@agents.tool(requires_approval=True)
def wire(amount: int) -> str:
    """Wire money."""
    tool_runs.append(f"wire {amount}")
    return f"wired {amount}"


@perdure.workflow(name="agents_wire")
def wire_flow(base_url: str) -> str:
    client = openai.OpenAI(base_url=base_url, api_key=OPENAI_KEY)
    return agents.Agent(client, model="m", tools=[wire]).run("pay TURNS=1").text


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_approval_resumes_and_rejection_goes_back_to_the_model(
    engine: perdure.Engine, server: FakeLLM, decision: str
) -> None:
    handle = engine.start(wire_flow, server.openai_url, id=f"wire-{decision}")
    deadline = time.monotonic() + 10
    while not engine.pending_approvals():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    [pending] = engine.pending_approvals()
    assert pending.name == "tool:wire@1"  # named by the replay key of its request
    assert pending.details["arguments"] == {"amount": 0} and pending.details["tool"] == "wire"
    assert tool_runs == []  # nothing ran before the decision
    import subprocess

    perdure_cli = [sys.executable, "-m", "perdure.cli"]
    listed = subprocess.run([*perdure_cli, "approvals", "--json", "--db", engine.url],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    [shown] = json.loads(listed)  # what an operator sees: the proposed call
    assert shown["name"] == "tool:wire@1" and shown["details"]["arguments"] == {"amount": 0}
    if decision == "approve":
        subprocess.run([*perdure_cli, "approve", handle.id, pending.name, "--by", "ops",
                        "--db", engine.url], capture_output=True, check=True)  # fmt: skip
        assert handle.result(timeout=20) == "done after 1 tool results: wired 0"
        assert tool_runs == ["wire 0"]
    else:
        engine.reject(handle.id, pending.name, by="ops", comment="too risky")
        text = handle.result(timeout=20)
        assert "A human rejected this call: too risky" in text and tool_runs == []


# -- tools and errors --------------------------------------------------------------------------


def test_tool_schemas_come_from_signature_and_docstring() -> None:
    assert lookup.openai_schema() == {"type": "function", "function": {
        "name": "lookup", "description": "Look something up in the knowledge base.",
        "parameters": {"type": "object", "required": ["query"],
                       "properties": {"query": {"type": "string",
                                                "description": "what to look up."}}}}}  # fmt: skip
    assert refund.anthropic_schema()["input_schema"]["properties"]["amount"]["type"] == "integer"
    with pytest.raises(ValueError, match="invalid arguments"):
        refund.parse('{"amount": "lots"}')
    assert refund.parse('{"amount": "7"}') == {"amount": 7}


def test_clear_errors_for_wrong_clients_and_missing_sdks(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(perdure.ConfigurationError, match="official openai and anthropic"):
        agents.durable(object())
    from perdure.agents._llm import require

    monkeypatch.setitem(sys.modules, "anthropic", None)
    with pytest.raises(perdure.ConfigurationError, match=r"perdure\[anthropic\]"):
        require("anthropic")
    client = agents.durable(openai.OpenAI(base_url="http://127.0.0.1:9", api_key="k"))
    with pytest.raises(perdure.ConfigurationError, match="needs stream=True"):
        client.responses.create(model="m", input="x", on_chunk=print)


# -- lean journals -----------------------------------------------------------------------------


@perdure.workflow(name="agents_long")
def long_conversation(base_url: str, turns: int) -> int:
    client = openai.OpenAI(base_url=base_url, api_key=OPENAI_KEY)
    agent = agents.Agent(client, model="m", tools=[lookup], max_turns=turns + 1)
    return agent.run(f"research TURNS={turns}").turns


def test_a_long_conversation_journals_linearly(engine: perdure.Engine, server: FakeLLM) -> None:
    sizes = {}
    naive = {}
    for turns in (50, 100):
        wf = f"long-{turns}"
        assert (
            engine.run(long_conversation, server.openai_url, turns, id=wf, timeout=60) == turns + 1
        )
        store: Any = engine.store
        sizes[turns] = sum(len(r.output or "") for r in store.load_steps(wf))
        # the naive layout: every model call journals the whole conversation it was sent
        requests = [body for path, body in server.requests if path == CHAT][-(turns + 1) :]
        naive[turns] = sum(len(json.dumps(body["messages"])) for body in requests)
    print(f"journal bytes: {sizes}; naive full-history layout: {naive}")
    assert sizes[100] < 2.3 * sizes[50]  # linear: twice the turns, about twice the bytes
    assert naive[100] > 3.5 * naive[50]  # quadratic
    assert sizes[100] * 5 < naive[100]


def test_perdure_show_reports_tokens_and_what_replay_saved(
    engine: perdure.Engine, server: FakeLLM
) -> None:
    import subprocess

    engine.run(openai_chat, server.openai_url, id="shown", timeout=30)
    force_replay(engine, "shown")  # the resumption replays the 4 model calls
    expected = agents.usage(engine.list_steps("shown"))
    shown = subprocess.run(
        [sys.executable, "-m", "perdure.cli", "show", "--db", engine.url, "shown", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    usage = json.loads(shown.stdout)["usage"]
    assert usage["model_calls"] == 4 == expected.calls
    assert usage["input_tokens"] == expected.input_tokens > 0
    assert usage["saved_by_replay"]["model_calls"] == 4
    [(model, part)] = usage["by_model"].items()  # one model, as the responses name it
    assert model in expected.by_model and part["input_tokens"] == expected.input_tokens
    text = subprocess.run(
        [sys.executable, "-m", "perdure.cli", "show", "--db", engine.url, "shown"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"{expected.input_tokens:,} in" in text and "4 model calls" in text


@perdure.step(name="agents_plain_step")
def plain_step(n: int) -> int:
    return n + 1


@perdure.workflow(name="agents_no_model_calls")
def no_model_calls(n: int) -> int:
    return plain_step(plain_step(n))


def test_a_resumed_journal_without_model_calls_costs_no_replay_event_read(
    engine: perdure.Engine, server: FakeLLM
) -> None:
    # Every resumption counts the model calls it replays; one without any must not pay a
    # read of that count (recovering 1,000 workflows paid 1,000 round trips on PostgreSQL).
    from perdure._usage import REPLAY_EVENT

    store: Any = engine.store
    real = store.get_event
    read: list[str] = []

    def get_event(workflow_id: str, name: str) -> Any:
        read.append(name)
        return real(workflow_id, name)

    store.get_event = get_event
    try:
        engine.run(no_model_calls, 1, id="plain", timeout=30)
        assert force_replay(engine, "plain") == 3
        assert REPLAY_EVENT not in read
        engine.run(openai_chat, server.openai_url, id="modelled", timeout=30)
        force_replay(engine, "modelled")  # model calls replayed: the count is read and kept
        assert REPLAY_EVENT in read
    finally:
        del store.get_event
    assert engine.store.get_event("plain", REPLAY_EVENT) is None


@agents.tool
def broken(query: str) -> str:
    """Always fails."""
    raise ValueError(f"no index for {query}")


@perdure.workflow(name="agents_broken_tool")
def broken_flow(base_url: str) -> str:
    client = openai.OpenAI(base_url=base_url, api_key=OPENAI_KEY)
    return agents.Agent(client, model="m", tools=[broken]).run("x TURNS=1").text


def test_a_failing_tool_is_reported_to_the_model(engine: perdure.Engine, server: FakeLLM) -> None:
    text = engine.run(broken_flow, server.openai_url, id="broken", timeout=30)
    assert text == "done after 1 tool results: The tool failed: ValueError: no index for q-0"
    assert force_replay(engine, "broken") == text  # the recorded failure replays the same way


def _mask_ids(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "id": "redacted", "system_fingerprint": None}


@perdure.workflow(name="agents_redacted")
def redacted(base_url: str) -> str:
    client = agents.durable(openai.OpenAI(base_url=base_url, api_key=OPENAI_KEY),
                            redact=_mask_ids)  # fmt: skip
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "z"}])
    return f"{reply.id} {reply.choices[0].message.content}"


def test_a_redaction_hook_shapes_what_is_journaled(engine: perdure.Engine, server: FakeLLM) -> None:
    assert engine.run(redacted, server.openai_url, id="masked", timeout=30) == "redacted hello: z"
    store: Any = engine.store
    [row] = store.load_steps("masked")
    assert '"id": "redacted"' in row.output or '"id":"redacted"' in row.output
    assert force_replay(engine, "masked") == "redacted hello: z"


# -- streaming ---------------------------------------------------------------------------------

seen_chunks: list[str] = []


def _show(chunk: Any) -> None:
    for choice in chunk.choices:
        if choice.delta.content:
            seen_chunks.append(choice.delta.content)
        for call in choice.delta.tool_calls or ():
            seen_chunks.append(f"<call {call.function.name}>" if call.function.name else "")


@perdure.workflow(name="agents_streamed")
def streamed(base_url: str) -> list[str]:
    client = agents.durable(openai.OpenAI(base_url=base_url, api_key=OPENAI_KEY))
    tools = [lookup.openai_schema()]
    first = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "stream TURNS=1"}], tools=tools,
        stream=True, on_chunk=_show,
    )  # fmt: skip
    call = first.choices[0].message.tool_calls[0]
    final = client.chat.completions.create(
        model="m", stream=True, on_chunk=_show, tools=tools,
        messages=[{"role": "user", "content": "stream TURNS=1"},
                  {"role": "assistant", "tool_calls": [call.to_dict()]},
                  {"role": "tool", "tool_call_id": call.id, "content": "streamed facts"}],
    )  # fmt: skip
    tokens = final.usage.total_tokens if final.usage else None
    return [type(final).__name__, str(final.choices[0].message.content), call.function.name,
            call.function.arguments, str(tokens)]  # fmt: skip


def test_a_stream_reaches_the_caller_live_and_journals_the_whole_answer(
    engine: perdure.Engine, server: FakeLLM
) -> None:
    seen_chunks.clear()
    out = engine.run(streamed, server.openai_url, id="streamed", timeout=30)
    assert out[:4] == ["ChatCompletion", "done after 1 tool results: streamed facts", "lookup",
                       '{"query": "q-0"}']  # fmt: skip
    assert out[4] != "None"  # the usage chunk was kept
    text_chunks = [c for c in seen_chunks if c and not c.startswith("<call")]
    assert len(text_chunks) > 3  # delivered piece by piece, as the server sent them
    assert "".join(text_chunks) == out[1]
    assert server.count(CHAT) == 2
    seen_chunks.clear()
    assert force_replay(engine, "streamed") == out
    assert server.count(CHAT) == 2  # replayed from the journal
    assert seen_chunks == ["<call lookup>", out[1]]  # re-emitted whole, once per call


@agents.tool(requires_approval=True)
async def transfer(amount: int) -> str:
    """Move money."""
    tool_runs.append(f"transfer {amount}")
    return f"moved {amount}"


@perdure.workflow(name="agents_gathered")
async def gathered(base_url: str) -> list[str]:
    import asyncio

    async def one(tag: str) -> str:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=OPENAI_KEY)
        agent = agents.Agent(client, model="m", tools=[transfer])
        return f"{tag}: {(await agent.run_async(f'{tag} TURNS=1')).text}"

    return list(await asyncio.gather(one("a"), one("b")))


def test_concurrent_agents_get_stable_distinct_approval_names(
    engine: perdure.Engine, server: FakeLLM
) -> None:
    """Two agents in tasks ask for approval; the names follow the task (t0/, t1/), not the
    order the requests arrive in, so a replay finds each decision again. (A suspended
    workflow waits on one thing at a time: the requests come one after the other.)"""
    handle = engine.start(gathered, server.openai_url, id="gathered")
    seen: list[str] = []
    deadline = time.monotonic() + 20
    while not handle.status().finished:
        assert time.monotonic() < deadline
        for pending in engine.pending_approvals():
            seen.append(pending.name)
            if pending.name.endswith("t1/1"):  # task b's
                engine.approve(handle.id, pending.name)
            else:
                engine.reject(handle.id, pending.name, comment="not a")
        time.sleep(0.02)
    assert sorted(seen) == ["tool:transfer@t0/1", "tool:transfer@t1/1"]
    out = handle.result(timeout=5)
    assert out[0].startswith("a: done after 1 tool results: A human rejected this call: not a")
    assert out[1] == "b: done after 1 tool results: moved 0"
    assert force_replay(engine, "gathered") == out


def test_an_assistant_turn_of_tool_calls_is_resent_without_a_null_content() -> None:
    """The message recording a tool-calling turn leaves out ``content: null`` (the API
    allows it): the SDK's request transform walks every key of every message at every turn,
    and a null content cost it about a third of its work on a long conversation."""
    from openai.types.chat import ChatCompletion

    from perdure.agents._agent import _read

    def completion(message: dict[str, Any]) -> ChatCompletion:
        return ChatCompletion.model_validate({
            "id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
        })  # fmt: skip

    call = {"id": "call_1", "type": "function",
            "function": {"name": "lookup", "arguments": '{"query": "q"}'}}  # fmt: skip
    calls, text, said = _read(completion({"role": "assistant", "tool_calls": [call]}), True)
    assert calls == [("call_1", "lookup", '{"query": "q"}')] and text == ""
    assert said == {"role": "assistant", "tool_calls": [call]}
    _, text, said = _read(completion({"role": "assistant", "content": "done"}), True)
    assert said == {"role": "assistant", "content": "done"} and text == "done"
    _, _, said = _read(completion({"role": "assistant", "content": None}), True)
    assert said == {"role": "assistant", "content": None}  # no calls: content stays
