"""Journaled streaming for the three model APIs, end to end: the real openai and anthropic SDK
clients (sync and async) against the local fake server (tests/apps/fake_llm.py).

What is proved, for OpenAI chat completions, the OpenAI Responses API and Anthropic messages:
``durable(client).<create>(..., stream=True, on_chunk=fn)`` in a workflow hands ``fn`` every
event the server sent, live and in order; journals the assembled response (never the events)
with its usage; returns the SDK's own type, tool calls assembled; and a replay (the workflow
waits for a message, is unloaded, and runs again from its journal) sends no request, returns
the same objects and re-emits each answer as a short stream that the SDK's own stream
accumulators rebuild into the same answer. A stream that breaks off is retried or not by its
error, and never journaled as an answer.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anthropic
import openai
import pytest
from anthropic.lib.streaming import MessageStream
from anthropic.types import Message
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

import perdure
from perdure import agents

sys.path.insert(0, str(Path(__file__).parent.parent / "apps"))
from fake_llm import (
    CHAT,
    MESSAGES,
    RESPONSES,
    FakeLLM,
    chat_chunks,
    decide,
    message_events,
    response_events,
)

from conftest import wait_until

KEY = "sk-test-streaming"
FAST = perdure.RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=0)
PROMPT = "what is the weather in Paris TURNS=1"
ANSWER = "done after 1 tool results: sunny"
live: list[Any] = []  # what on_chunk received, in order, across the calls of a run
recorded: list[list[Any]] = []  # the objects the calls returned, once per execution of a run


@agents.tool
def lookup(query: str) -> str:
    """Look something up.

    Args:
        query: what to look up.
    """
    return "sunny"


@pytest.fixture
def server() -> Iterator[FakeLLM]:
    live.clear()
    recorded.clear()
    with FakeLLM(turns=1) as fake:
        yield fake


# -- the three APIs, seen through one interface ------------------------------------------------


@dataclass(frozen=True)
class Api:
    """How a test talks to one API: build the request, read the answer and the events."""

    name: str
    path: str
    step: str
    sdk_type: type[Any]
    client: Callable[[str, bool], Any]
    create: Callable[[Any], Any]
    request: Callable[[list[Any]], dict[str, Any]]
    call: Callable[[Any], tuple[str, str, dict[str, Any]]]
    answered: Callable[[list[Any], Any, str], list[Any]]
    text: Callable[[Any], str]
    tokens: Callable[[Any], tuple[int, int]]
    text_deltas: Callable[[Any], str]
    argument_deltas: Callable[[Any], str]
    starts_call: Callable[[Any], bool]
    sent: Callable[[int, dict[str, Any], Any], Iterator[dict[str, Any]]]


def _openai(url: str, is_async: bool) -> Any:
    cls = openai.AsyncOpenAI if is_async else openai.OpenAI
    return cls(base_url=f"{url}/v1", api_key=KEY)


def _anthropic(url: str, is_async: bool) -> Any:
    cls = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
    return cls(base_url=url, api_key=KEY)


def _chat_call(r: Any) -> tuple[str, str, dict[str, Any]]:
    call = r.choices[0].message.tool_calls[0]
    return call.id, call.function.name, json.loads(call.function.arguments)


def _chat_answered(history: list[Any], r: Any, result: str) -> list[Any]:
    call = r.choices[0].message.tool_calls[0]
    return [*history, {"role": "assistant", "tool_calls": [call.to_dict()]},
            {"role": "tool", "tool_call_id": call.id, "content": result}]  # fmt: skip


def _chat_deltas(e: Any, field: str) -> str:
    if not e.choices:
        return ""
    delta = e.choices[0].delta
    if field == "content":
        return str(delta.content or "")
    return "".join(c.function.arguments or "" for c in delta.tool_calls or ())


CHAT_API = Api(
    "chat", CHAT, "openai.chat.completions.create", ChatCompletion, _openai,
    lambda c: c.chat.completions.create,
    lambda h: {"model": "m", "messages": h, "tools": [lookup.openai_schema()]},
    _chat_call, _chat_answered,
    lambda r: str(r.choices[0].message.content),
    lambda r: (r.usage.prompt_tokens, r.usage.completion_tokens),
    lambda e: _chat_deltas(e, "content"), lambda e: _chat_deltas(e, "arguments"),
    lambda e: bool(e.choices) and e.choices[0].delta.role == "assistant",
    lambda n, body, reply: chat_chunks(n, body, reply),
)  # fmt: skip


def _responses_call(r: Any) -> tuple[str, str, dict[str, Any]]:
    item = r.output[0]
    assert item.type == "function_call"
    return item.call_id, item.name, json.loads(item.arguments)


def _responses_answered(history: list[Any], r: Any, result: str) -> list[Any]:
    item = r.output[0]
    output = {"type": "function_call_output", "call_id": item.call_id, "output": result}
    return [*history, item.to_dict(), output]


RESPONSES_API = Api(
    "responses", RESPONSES, "openai.responses.create", Response, _openai,
    lambda c: c.responses.create,
    lambda h: {"model": "m", "input": h, "tools": [lookup.responses_schema()]},
    _responses_call, _responses_answered,
    lambda r: str(r.output_text),
    lambda r: (r.usage.input_tokens, r.usage.output_tokens),
    lambda e: e.delta if e.type == "response.output_text.delta" else "",
    lambda e: e.delta if e.type == "response.function_call_arguments.delta" else "",
    lambda e: e.type == "response.created",
    lambda n, body, reply: response_events(n, body, reply),
)  # fmt: skip


def _messages_call(r: Any) -> tuple[str, str, dict[str, Any]]:
    block = next(b for b in r.content if b.type == "tool_use")
    return block.id, block.name, dict(block.input)


def _messages_answered(history: list[Any], r: Any, result: str) -> list[Any]:
    call_id = _messages_call(r)[0]
    return [*history, {"role": "assistant", "content": [b.to_dict() for b in r.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id,
                                          "content": result}]}]  # fmt: skip


def _block_delta(e: Any, kind: str) -> str:
    if e.type != "content_block_delta" or e.delta.type != kind:
        return ""
    return str(e.delta.text if kind == "text_delta" else e.delta.partial_json)


MESSAGES_API = Api(
    "messages", MESSAGES, "anthropic.messages.create", Message, _anthropic,
    lambda c: c.messages.create,
    lambda h: {"model": "c", "max_tokens": 100, "messages": h,
               "tools": [lookup.anthropic_schema()]},
    _messages_call, _messages_answered,
    lambda r: "".join(b.text for b in r.content if b.type == "text"),
    lambda r: (r.usage.input_tokens, r.usage.output_tokens),
    lambda e: _block_delta(e, "text_delta"), lambda e: _block_delta(e, "input_json_delta"),
    lambda e: e.type == "message_start",
    # the SDK drops the server's keep-alive pings before anyone sees them
    lambda n, body, reply: (e for e in message_events(n, body, reply) if e["type"] != "ping"),
)  # fmt: skip

APIS = {api.name: api for api in (CHAT_API, RESPONSES_API, MESSAGES_API)}


# -- the workflows: a streamed tool call, a streamed answer, then a wait -----------------------


@perdure.workflow(name="streaming_sync")
def streamed(api_name: str, url: str) -> str:
    api = APIS[api_name]
    create = api.create(agents.durable(api.client(url, False), retry=FAST))
    history: list[Any] = [{"role": "user", "content": PROMPT}]
    first = create(**api.request(history), stream=True, on_chunk=live.append)
    final = create(**api.request(api.answered(history, first, "sunny")), stream=True,
                   on_chunk=live.append)  # fmt: skip
    recorded.append([first, final])
    perdure.receive("go")  # the run is unloaded here; the message replays it from the journal
    return api.text(final)


async def _show(event: Any) -> None:
    live.append(event)


@perdure.workflow(name="streaming_async")
async def streamed_async(api_name: str, url: str) -> str:
    api = APIS[api_name]
    create = api.create(agents.durable(api.client(url, True), retry=FAST))
    history: list[Any] = [{"role": "user", "content": PROMPT}]
    first = await create(**api.request(history), stream=True, on_chunk=_show)
    final = await create(**api.request(api.answered(history, first, "sunny")), stream=True,
                         on_chunk=_show)  # fmt: skip
    recorded.append([first, final])
    await perdure.receive_async("go")
    return api.text(final)


def _calls(api: Api, events: list[Any]) -> list[list[Any]]:
    """The events split per model call."""
    calls: list[list[Any]] = []
    for event in events:
        if api.starts_call(event) or not calls:
            calls.append([])
        calls[-1].append(event)
    return calls


class _Raw:
    """Recorded events standing in for the SDK's raw stream, to feed its accumulators."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.response = SimpleNamespace(close=lambda: None, headers={})

    def __iter__(self) -> Iterator[Any]:
        return iter(self.events)

    def close(self) -> None:
        return None


def sdk_accumulated(api: Api, events: list[Any]) -> Any:
    """What the SDK's own stream helper makes of one call's events (None for chat, which the
    first-run events and the single replay chunk describe directly)."""
    if api is RESPONSES_API:
        state = ResponseStreamState(input_tools=openai.omit, text_format=openai.omit)
        done = [e for event in events for e in state.handle_event(event)
                if e.type == "response.completed"]  # fmt: skip
        return done[0].response
    if api is MESSAGES_API:
        return MessageStream(_Raw(events), anthropic.NOT_GIVEN).get_final_message()  # type: ignore[arg-type]
    return None


def summary(api: Api, response: Any) -> tuple[str, Any, tuple[int, int]]:
    """The parts of an answer a caller reads: text, tool call (without its id), tokens."""
    call = None if api.text(response) else api.call(response)[1:]
    return api.text(response), call, api.tokens(response)


REPLAYED = {
    "chat": [["ChatCompletionChunk"], ["ChatCompletionChunk"]],
    "responses": [
        ["response.created", "response.output_item.added",
         "response.function_call_arguments.delta", "response.output_item.done",
         "response.completed"],
        ["response.created", "response.output_item.added", "response.content_part.added",
         "response.output_text.delta", "response.output_item.done", "response.completed"],
    ],
    "messages": [
        ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
         "message_delta", "message_stop"],
    ] * 2,
}  # fmt: skip


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("api_name", ["chat", "responses", "messages"])
def test_a_streamed_call_is_live_journaled_whole_and_replayed(
    engine: perdure.Engine, server: FakeLLM, api_name: str, mode: str
) -> None:
    api = APIS[api_name]
    workflow = streamed if mode == "sync" else streamed_async
    handle = engine.start(workflow, api_name, server.url, id=f"{api_name}-{mode}")
    wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING, timeout=20)

    # the SDK's own types come back, the tool call assembled
    [[first, final]] = recorded
    assert isinstance(first, api.sdk_type) and isinstance(final, api.sdk_type)
    assert api.call(first)[1:] == ("lookup", {"query": "q-0"})
    assert api.text(final) == ANSWER

    # every event the server sent reached on_chunk as the SDK yields it, in order
    requests = [(n, body) for n, (path, body) in enumerate(server.requests, 1) if path == api.path]
    assert len(requests) == 2 == server.count()
    sent = [e for n, body in requests for e in api.sent(n, body, decide(api.path, body, 1))]
    assert [e.to_dict() for e in live] == sent
    assert "".join(api.text_deltas(e) for e in live) == ANSWER
    assert "".join(api.argument_deltas(e) for e in live) == '{"query": "q-0"}'
    assert sum(1 for e in live if api.text_deltas(e)) > 3  # piece by piece, as sent
    for events, response in zip(_calls(api, live), (first, final), strict=True):
        accumulated = sdk_accumulated(api, events)
        if accumulated is not None:  # the SDK's accumulator agrees with what was returned
            assert summary(api, accumulated) == summary(api, response)

    # the journal holds the assembled responses, not the events
    steps = [s for s in engine.list_steps(handle.id) if s.name == api.step]
    assert [s.output for s in steps] == [first.to_dict(mode="json"), final.to_dict(mode="json")]
    expected = [decide(api.path, body, 1) for _, body in requests]
    assert [api.tokens(r) for r in (first, final)] == [
        (r.prompt_tokens, r.completion_tokens) for r in expected
    ]
    used = agents.usage(engine.list_steps(handle.id))
    sent_in, sent_out = (sum(r.prompt_tokens for r in expected),
                         sum(r.completion_tokens for r in expected))  # fmt: skip
    assert (used.calls, used.input_tokens, used.output_tokens) == (2, sent_in, sent_out)

    # replayed from the journal: no request, the same objects, the answers re-emitted
    live.clear()
    engine.send(handle.id, "go", 1)
    assert handle.result(timeout=20) == ANSWER
    assert server.count() == 2
    [_, again] = recorded
    assert [type(r) for r in again] == [api.sdk_type] * 2
    assert [r.to_dict() for r in again] == [first.to_dict(), final.to_dict()]
    calls = _calls(api, live)
    assert [[getattr(e, "type", type(e).__name__) for e in c] for c in calls] == REPLAYED[api_name]
    assert "".join(api.text_deltas(e) for e in live) == ANSWER
    assert "".join(api.argument_deltas(e) for e in live) == '{"query": "q-0"}'
    for events, response in zip(calls, (first, final), strict=True):
        accumulated = sdk_accumulated(api, events)
        if accumulated is not None:
            assert summary(api, accumulated) == summary(api, response)


# -- what is refused, and what stays the SDK's -------------------------------------------------


@perdure.workflow(name="streaming_refused")
def refused(api_name: str, url: str) -> str:
    api = APIS[api_name]
    create = api.create(agents.durable(api.client(url, False)))
    try:
        create(**api.request([{"role": "user", "content": "x"}]), stream=True)
    except perdure.ConfigurationError as exc:
        return str(exc)
    return "not refused"


@pytest.mark.parametrize("api_name", ["chat", "responses", "messages"])
def test_stream_without_on_chunk_is_refused_in_a_workflow_and_the_sdks_own_outside(
    engine: perdure.Engine, server: FakeLLM, api_name: str
) -> None:
    api = APIS[api_name]
    said = engine.run(refused, api_name, server.url, id=f"refused-{api_name}", timeout=20)
    assert f"{api.step}(stream=True) in a workflow needs on_chunk=<callable>" in said
    assert server.count() == 0 and engine.list_steps(f"refused-{api_name}") == []

    client = agents.durable(api.client(server.url, False))
    request = api.request([{"role": "user", "content": "outside"}])
    stream = api.create(client)(**request, stream=True)
    assert isinstance(stream, openai.Stream | anthropic.Stream)  # the SDK's, untouched
    events = list(stream)
    assert "".join(api.argument_deltas(e) for e in events) == '{"query": "q-0"}'
    with pytest.raises(perdure.ConfigurationError, match="needs stream=True"):
        api.create(client)(**request, on_chunk=print)
    assert server.count() == 1


# -- streams that break off --------------------------------------------------------------------


@perdure.workflow(name="streaming_broken")
def broken(api_name: str, url: str) -> str:
    api = APIS[api_name]
    create = api.create(agents.durable(api.client(url, False), retry=FAST))
    try:
        answer = create(**api.request([{"role": "user", "content": "hi"}]), stream=True,
                        on_chunk=live.append)  # fmt: skip
    except perdure.StepError as exc:  # not retried: the step's own error comes back
        return f"failed: {type(exc).__name__}"
    return api.call(answer)[1]


@pytest.mark.parametrize(
    ("api_name", "code", "outcome", "requests"),
    [
        ("responses", "server_error", "lookup", 2),
        ("responses", "invalid_prompt", "failed: PermanentError", 1),
        ("messages", "overloaded_error", "lookup", 2),
        ("messages", "invalid_request_error", "failed: PermanentError", 1),
    ],
)
def test_a_stream_that_breaks_off_is_retried_or_not_by_its_error(
    engine: perdure.Engine, server: FakeLLM, api_name: str, code: str, outcome: str,
    requests: int,
) -> None:  # fmt: skip
    api = APIS[api_name]
    server.fail_stream(code)
    run_id = f"{api_name}-{code}"
    assert engine.run(broken, api_name, server.url, id=run_id, timeout=20) == outcome
    assert server.count() == requests
    [step] = engine.list_steps(run_id)
    failures = engine.list_attempts(run_id)
    assert len(failures) == requests - 1  # the retried attempt is on record
    error = failures[0].error if failures else step.error
    assert error is not None and code in error.message
    attempts = _calls(api, live)
    assert len(attempts) == requests  # on_chunk saw each attempt, the broken one up to its end
    broke = "response.failed" if api_name == "responses" else "content_block_delta"
    assert attempts[0][-1].type == broke
    if requests == 2:  # retried: the second attempt's answer is journaled, not the failure
        assert step.status.value == "SUCCESS" and "Transient" in error.type
        assert api.call(api.sdk_type.construct(**step.output))[1] == "lookup"
    else:
        assert step.status.value == "ERROR"


# -- richer answers, and failures, at the level of one stream ----------------------------------
# (the fake server answers with one text or one tool call; these build the events directly)


def test_a_rich_anthropic_message_replays_faithfully_and_reassembles() -> None:
    from perdure.agents._stream_anthropic import MessageAssembler, replayed_message

    citation = {"type": "char_location", "cited_text": "doc", "document_index": 0,
                "document_title": None, "start_char_index": 0,
                "end_char_index": 3}  # fmt: skip
    data: dict[str, Any] = {"id": "msg_x", "type": "message", "role": "assistant", "model": "c",
            "content": [
                {"type": "thinking", "thinking": "let me think", "signature": "sig=="},
                {"type": "text", "text": "See the doc.", "citations": [citation]},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup",
                 "input": {"query": "q", "n": [1, 2]}},
                {"type": "redacted_thinking", "data": "opaque"},
            ],
            "stop_reason": "tool_use", "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 20,
                      "cache_read_input_tokens": 4}}  # fmt: skip
    events = replayed_message(Message.construct(**data))
    assert [(e.type, getattr(getattr(e, "delta", None), "type", None)) for e in events] == [
        ("message_start", None),
        ("content_block_start", None), ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "signature_delta"), ("content_block_stop", None),
        ("content_block_start", None), ("content_block_delta", "text_delta"),
        ("content_block_delta", "citations_delta"), ("content_block_stop", None),
        ("content_block_start", None), ("content_block_delta", "input_json_delta"),
        ("content_block_stop", None),
        ("content_block_start", None), ("content_block_stop", None),
        ("message_delta", None), ("message_stop", None),
    ]  # fmt: skip
    assert events[0].message.content == [] and events[0].message.stop_reason is None
    assembler = MessageAssembler()
    for event in events:
        assembler.add(event)
    assert assembler.result() == data  # what a live stream of it would have journaled
    rebuilt = MessageStream(_Raw(events), anthropic.NOT_GIVEN).get_final_message()  # type: ignore[arg-type]
    # and the SDK's accumulator agrees (it also sets stop_details, which the answer left out)
    assert {**rebuilt.to_dict(mode="json"), "stop_details": None} == {**data, "stop_details": None}


def test_a_rich_response_replays_faithfully() -> None:
    from perdure.agents._stream_responses import ResponseAssembler, replayed_response

    text = {"type": "output_text", "text": "Here.", "annotations": []}
    refusal = {"type": "refusal", "refusal": "Not that."}
    data: dict[str, Any] = {"id": "resp_x", "object": "response", "created_at": 0, "model": "m",
            "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
            "output": [
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                 "content": [text, refusal]},
                {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "lookup",
                 "arguments": '{"query": "q"}', "status": "completed"},
            ],
            "usage": {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}}  # fmt: skip
    events = replayed_response(Response.construct(**data))
    assert [e.type for e in events] == [
        "response.created",
        "response.output_item.added", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.content_part.added", "response.refusal.delta",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.output_item.done",
        "response.incomplete",
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.output == [] and events[0].response.status == "in_progress"
    added = [e.item for e in events if e.type == "response.output_item.added"]
    assert added[1].content == [] and added[2].arguments == ""  # deltas carry the rest
    state = ResponseStreamState(input_tools=openai.omit, text_format=openai.omit)
    fired = [e for event in events for e in state.handle_event(event)]
    snapshots = {e.type: e.snapshot for e in fired if hasattr(e, "snapshot")}
    assert snapshots == {"response.output_text.delta": "Here.",  # the SDK accumulated them
                         "response.function_call_arguments.delta": '{"query": "q"}'}  # fmt: skip
    assembler = ResponseAssembler()
    for event in events:
        assembler.add(event)
    assert assembler.result() == Response.construct(**data).to_dict(mode="json")


@pytest.mark.parametrize(
    ("code", "error"),
    [("server_error", perdure.TransientError), (None, perdure.TransientError),
     ("rate_limit_exceeded", perdure.RateLimitedError),
     ("invalid_prompt", perdure.PermanentError)],
)  # fmt: skip
def test_responses_error_events_raise_what_the_retries_classify(
    code: str | None, error: type[Exception]
) -> None:
    from openai.types.responses import ResponseErrorEvent

    from perdure.agents._stream_responses import ResponseAssembler

    event = ResponseErrorEvent.construct(type="error", code=code, message="m", sequence_number=3)
    with pytest.raises(error, match="an error event"):
        ResponseAssembler().add(event)


class _ErrorEvent(Exception):
    """What the anthropic SDK raises for an ``error`` event: a status error of status 200."""

    status_code = 200

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.body = {"type": "error", "error": {"type": kind, "message": "m"}}


def test_anthropic_error_events_map_to_what_the_retries_classify() -> None:
    from perdure.agents._stream_anthropic import message_failure

    assert isinstance(message_failure(_ErrorEvent("overloaded_error")), perdure.TransientError)
    assert isinstance(message_failure(_ErrorEvent("rate_limit_error")), perdure.RateLimitedError)
    failure = message_failure(_ErrorEvent("invalid_request_error"))
    assert isinstance(failure, perdure.PermanentError)
    assert message_failure(ValueError("on_chunk's own bug")) is None  # left as it is


def test_a_stream_cut_before_its_end_is_retried_not_journaled() -> None:
    from anthropic.types import RawMessageStartEvent

    from perdure.agents._stream_anthropic import MessageAssembler
    from perdure.agents._stream_responses import ResponseAssembler

    with pytest.raises(perdure.TransientError, match=r"before response\.completed"):
        ResponseAssembler().result()
    cut = MessageAssembler()
    usage = {"input_tokens": 1, "output_tokens": 1}
    start: dict[str, Any] = {"id": "m", "type": "message", "role": "assistant", "model": "c",
                             "content": [], "usage": usage}  # fmt: skip
    cut.add(RawMessageStartEvent.construct(type="message_start", message=start))
    with pytest.raises(perdure.TransientError, match="before message_stop"):
        cut.result()
    from openai.types.chat import ChatCompletionChunk

    from perdure.agents._stream import ChatAssembler

    chat = ChatAssembler()
    chat.add(ChatCompletionChunk.construct(
        id="c", object="chat.completion.chunk", created=1, model="m",
        choices=[{"index": 0, "delta": {"content": "half an ans"}, "finish_reason": None}],
    ))  # fmt: skip
    with pytest.raises(perdure.TransientError, match="ended before its finish reason"):
        chat.result()
