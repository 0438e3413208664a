"""The fake LLM server (``tests/apps/fake_llm.py``) against the real openai and anthropic SDKs.

Each API round-trips through the official clients, unchanged (sync and async), the scripted
tool loop is the same for the three APIs, streaming carries usage, injected faults raise the
SDK's own errors with their Retry-After, and counts can be read over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from openai.types.responses import Response

sys.path.insert(0, str(Path(__file__).parents[1] / "apps"))

from fake_llm import CHAT, MESSAGES, RESPONSES, FakeLLM

OPENAI_KEY = "sk-test-SECRET"
ANTHROPIC_KEY = "sk-ant-test-SECRET"
X: list[Any] = [{"role": "user", "content": "x"}]
CHAT_TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    },
    {"type": "function", "function": {"name": "unused", "parameters": {"type": "object"}}},
]
RESPONSE_TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "search",
        "description": "Search the web.",
        "strict": False,
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
]
ANTHROPIC_TOOLS: list[Any] = [
    {
        "name": "lookup",
        "description": "Look a page up by number.",
        "input_schema": {
            "type": "object",
            "properties": {"page": {"type": "integer"}, "note": {"type": "string"}},
        },
    },
]


@pytest.fixture
def server() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


def oa(server: FakeLLM) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_url, api_key=OPENAI_KEY, max_retries=0)


def an(server: FakeLLM) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.anthropic_url, api_key=ANTHROPIC_KEY, max_retries=0)


def tokens(chars: int) -> int:
    return chars // 4 + 1


def get_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def test_urls_and_openai_chat_without_tools_says_hello(server: FakeLLM) -> None:
    assert server.openai_url == server.base_url == f"http://127.0.0.1:{server.port}/v1"
    assert server.anthropic_url == server.url == f"http://127.0.0.1:{server.port}"
    with oa(server) as client:
        done = client.chat.completions.create(
            model="m",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi there"},
            ],
        )
    choice = done.choices[0]
    assert choice.message.content == "hello: hi there"
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert done.usage is not None
    assert done.usage.prompt_tokens == tokens(len("Be brief.") + len("hi there"))
    assert done.usage.completion_tokens == tokens(len("hello: hi there"))
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    assert server.count() == server.count(CHAT) == 1 and server.count(MESSAGES) == 0
    path, body = server.requests[0]
    assert path == CHAT and body["model"] == "m"
    assert server.headers[0]["authorization"] == f"Bearer {OPENAI_KEY}"


def test_openai_chat_tool_loop_runs_the_configured_number_of_turns() -> None:
    with FakeLLM(turns=2) as server, oa(server) as client:
        messages: list[Any] = [{"role": "user", "content": "find things"}]
        calls: list[dict[str, Any]] = []
        for _ in range(5):
            done = client.chat.completions.create(model="m", messages=messages, tools=CHAT_TOOLS)
            choice = done.choices[0]
            if choice.finish_reason == "stop":
                break
            assert choice.finish_reason == "tool_calls"
            assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
            call = choice.message.tool_calls[0]
            assert call.type == "function" and call.function.name == "search"
            calls.append(json.loads(call.function.arguments))
            messages.append(choice.message.model_dump(exclude_none=True))
            result = f"result {len(calls)} " + "x" * 300
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        assert calls == [{"query": "q-0"}, {"query": "q-1"}]
        assert choice.message.content == f"done after 2 tool results: {result[:200]}"
        assert server.count(CHAT) == 3


def test_turns_in_the_last_user_text_overrides_the_server_setting(server: FakeLLM) -> None:
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "page",
                "parameters": {
                    "type": "object",
                    "properties": {"n": {"type": "integer"}, "s": {"type": "string"}},
                },
            },
        }
    ]
    with oa(server) as client:
        messages: list[Any] = [{"role": "user", "content": "TURNS=0 please"}]
        done = client.chat.completions.create(model="m", messages=messages, tools=tools)
        assert done.choices[0].message.content == "done after 0 tool results: "
        messages = [
            {"role": "user", "content": "go TURNS=3"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "page", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "ok"}]},
        ]
        done = client.chat.completions.create(model="m", messages=messages, tools=tools)
    calls = done.choices[0].message.tool_calls
    assert calls is not None and calls[0].id == "call_1" and calls[0].type == "function"
    assert json.loads(calls[0].function.arguments) == {"n": 1}  # first property, an integer


def test_async_openai_chat_round_trips(server: FakeLLM) -> None:
    async def run() -> tuple[str | None, str]:
        async with openai.AsyncOpenAI(
            base_url=server.openai_url, api_key=OPENAI_KEY, max_retries=0
        ) as client:
            text = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "async"}]
            )
            call = await client.chat.completions.create(model="m", messages=X, tools=CHAT_TOOLS)
            tool_calls = call.choices[0].message.tool_calls
            assert tool_calls is not None and tool_calls[0].type == "function"
            return text.choices[0].message.content, tool_calls[0].function.arguments

    assert asyncio.run(run()) == ("hello: async", '{"query": "q-0"}')
    assert server.count(CHAT) == 2


def test_openai_chat_streams_text_and_a_final_usage_chunk(server: FakeLLM) -> None:
    with oa(server) as client:
        stream = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "stream me a long enough answer"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert len(chunks) > 3
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hello: stream me a long enough answer"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == tokens(len(text))
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


def test_openai_chat_streams_a_tool_call_and_usage_only_when_asked(server: FakeLLM) -> None:
    with oa(server) as client:
        stream = client.chat.completions.create(
            model="m", messages=X, tools=CHAT_TOOLS, stream=True
        )
        chunks = list(stream)
    assert all(c.usage is None and c.choices for c in chunks)
    arguments, names = "", []
    for chunk in chunks:
        for call in chunk.choices[0].delta.tool_calls or []:
            assert call.index == 0 and call.function is not None
            arguments += call.function.arguments or ""
            names += [call.function.name] if call.function.name else []
    assert names == ["search"] and json.loads(arguments) == {"query": "q-0"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_openai_responses_round_trip_with_a_function_call(server: FakeLLM) -> None:
    with oa(server) as client:
        hello = client.responses.create(model="m", input="hi", instructions="be nice")
        assert isinstance(hello, Response)
        assert hello.output_text == "hello: hi"
        assert hello.usage is not None
        assert hello.usage.input_tokens == tokens(len("hi") + len("be nice"))
        assert hello.usage.output_tokens == tokens(len("hello: hi"))
        assert hello.usage.total_tokens == hello.usage.input_tokens + hello.usage.output_tokens

        items: list[Any] = [{"role": "user", "content": [{"type": "input_text", "text": "go"}]}]
        first = client.responses.create(model="m", input=items, tools=RESPONSE_TOOLS)
        assert first.output_text == ""
        call = first.output[0]
        assert call.type == "function_call"
        assert (call.name, json.loads(call.arguments), call.call_id) == (
            "search",
            {"query": "q-0"},
            "call_0",
        )
        items += [
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "42"},
        ]
        final = client.responses.create(model="m", input=items, tools=RESPONSE_TOOLS)
    assert final.output[0].type == "message"
    assert final.output_text == "done after 1 tool results: 42"
    assert server.count(RESPONSES) == 3


def test_anthropic_messages_round_trip_with_tool_use(server: FakeLLM) -> None:
    with an(server) as client:
        hello = client.messages.create(
            model="claude-x",
            max_tokens=100,
            system="sys",
            messages=[{"role": "user", "content": "hi"}],
        )
        assert hello.stop_reason == "end_turn"
        assert hello.content[0].type == "text" and hello.content[0].text == "hello: hi"
        assert hello.usage.input_tokens == tokens(len("sys") + len("hi"))
        assert hello.usage.output_tokens == tokens(len("hello: hi"))

        messages: list[Any] = [{"role": "user", "content": "look it up"}]
        first = client.messages.create(
            model="claude-x", max_tokens=100, messages=messages, tools=ANTHROPIC_TOOLS
        )
        assert first.stop_reason == "tool_use"
        block = first.content[0]
        assert block.type == "tool_use"
        assert (block.id, block.name, block.input) == ("toolu_0", "lookup", {"page": 0})
        messages += [
            {"role": "assistant", "content": [block.model_dump()]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": block.id,
                        "content": [{"type": "text", "text": "p0"}],
                    }
                ],
            },
        ]
        final = client.messages.create(
            model="claude-x", max_tokens=100, messages=messages, tools=ANTHROPIC_TOOLS
        )
    assert final.stop_reason == "end_turn"
    assert final.content[0].type == "text"
    assert final.content[0].text == "done after 1 tool results: p0"
    assert server.count(MESSAGES) == 3
    # anthropic 2.x sends the api_key as `Authorization: Bearer`; older SDKs as `x-api-key`
    sent = server.headers[0]
    assert ANTHROPIC_KEY in (sent.get("x-api-key"), sent.get("authorization", "")[7:])
    assert "anthropic-version" in sent


def test_async_anthropic_round_trips(server: FakeLLM) -> None:
    async def run() -> tuple[str, dict[str, Any]]:
        async with anthropic.AsyncAnthropic(
            base_url=server.anthropic_url, api_key=ANTHROPIC_KEY, max_retries=0
        ) as client:
            text = await client.messages.create(
                model="c", max_tokens=10, messages=[{"role": "user", "content": "yo"}]
            )
            tool = await client.messages.create(
                model="c", max_tokens=10, messages=X, tools=ANTHROPIC_TOOLS
            )
            assert text.content[0].type == "text" and tool.content[0].type == "tool_use"
            return text.content[0].text, dict(tool.content[0].input)

    assert asyncio.run(run()) == ("hello: yo", {"page": 0})


def test_anthropic_stream_accumulates_text_and_tool_use(server: FakeLLM) -> None:
    with an(server) as client:
        with client.messages.stream(
            model="c",
            max_tokens=50,
            messages=[{"role": "user", "content": "a streamed hello"}],
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == "hello: a streamed hello"
        assert final.stop_reason == "end_turn"
        assert final.usage.output_tokens == tokens(len(text))
        with client.messages.stream(
            model="c", max_tokens=50, tools=ANTHROPIC_TOOLS, messages=X
        ) as stream:
            final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == {"page": 0}


def test_openai_responses_stream_text_and_a_function_call(server: FakeLLM) -> None:
    with oa(server) as client:
        events = list(client.responses.create(model="m", input="a streamed hi", stream=True))
        with client.responses.stream(model="m", input=X, tools=RESPONSE_TOOLS) as stream:
            deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
            final = stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:4]] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added",
    ]  # fmt: skip
    assert [e.type for e in events[-4:]] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    text = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(text) > 1 and "".join(text) == "hello: a streamed hi"
    done = events[-1].response
    assert done.output_text == "hello: a streamed hi" and done.usage is not None
    assert done.usage.output_tokens == tokens(len("hello: a streamed hi"))
    # the SDK's own stream helper assembles the function call from the argument deltas
    assert len(deltas) > 1 and json.loads("".join(deltas)) == {"query": "q-0"}
    call = final.output[0]
    assert call.type == "function_call" and (call.name, call.call_id) == ("search", "call_0")
    assert final.usage is not None and final.usage.output_tokens == tokens(len(call.arguments))


def test_fail_stream_breaks_off_a_responses_and_an_anthropic_stream(server: FakeLLM) -> None:
    server.fail_stream("server_error", path=RESPONSES)
    server.fail_stream("overloaded_error")
    with oa(server) as oclient, an(server) as aclient:
        events = list(oclient.responses.create(model="m", input="hi", stream=True))
        assert events[-1].type == "response.failed"
        assert events[-1].response.error is not None
        assert events[-1].response.error.code == "server_error"
        assert not any(e.type == "response.completed" for e in events)
        seen: list[str] = []
        with pytest.raises(anthropic.APIStatusError) as caught:
            for event in aclient.messages.create(model="c", max_tokens=5, messages=X, stream=True):
                seen.append(event.type)
        assert seen[-1] == "content_block_delta" and "message_stop" not in seen
        error = {"type": "overloaded_error", "message": "injected stream failure overloaded_error"}
        assert caught.value.body == {"type": "error", "error": error}
        again = list(oclient.responses.create(model="m", input="hi", stream=True))
        assert again[-1].type == "response.completed"  # one failure each, then whole streams
    assert server.count() == 3


def test_fail_next_raises_the_openai_errors_with_retry_after(server: FakeLLM) -> None:
    server.fail_next(429, times=2, retry_after=7)
    server.fail_next(500, path=CHAT)
    with oa(server) as client:
        for _ in range(2):
            with pytest.raises(openai.RateLimitError) as caught:
                client.chat.completions.create(model="m", messages=X)
            assert caught.value.status_code == 429
            assert caught.value.response.headers["retry-after"] == "7"
            assert caught.value.code == "rate_limit_exceeded"
        with pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(model="m", messages=X)
        assert "retry-after" not in failed.value.response.headers
        assert client.responses.create(model="m", input="x").output_text == "hello: x"
    assert server.count(CHAT) == 3 and server.count(RESPONSES) == 1  # failures count too


def test_fail_next_for_one_path_spares_the_others_and_speaks_anthropic(server: FakeLLM) -> None:
    server.fail_next(429, retry_after=1.5, path=MESSAGES)
    server.fail_next(529, path=MESSAGES)
    with oa(server) as oclient, an(server) as aclient:
        ok = oclient.chat.completions.create(model="m", messages=X)
        assert ok.choices[0].message.content == "hello: x"
        args: dict[str, Any] = {
            "model": "c",
            "max_tokens": 5,
            "messages": X,
        }
        with pytest.raises(anthropic.RateLimitError) as caught:
            aclient.messages.create(**args)
        assert caught.value.response.headers["retry-after"] == "1.5"
        assert caught.value.body == {
            "type": "error",
            "error": {"type": "rate_limit_error", "message": "injected fault 429"},
        }
        with pytest.raises(anthropic.OverloadedError) as overloaded:
            aclient.messages.create(**args)
        assert overloaded.value.status_code == 529
        assert aclient.messages.create(**args).content[0].type == "text"


def test_stats_and_faults_over_http(server: FakeLLM) -> None:
    assert get_json(f"{server.url}/_stats") == {CHAT: 0, RESPONSES: 0, MESSAGES: 0}
    assert get_json(f"{server.url}/_fail", {"status": 429, "retry_after": 3, "path": CHAT})
    with oa(server) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="m", messages=X)
        assert caught.value.response.headers["retry-after"] == "3"
        client.chat.completions.create(model="m", messages=X)
        client.responses.create(model="m", input="x")
    assert get_json(f"{server.url}/_stats") == {CHAT: 2, RESPONSES: 1, MESSAGES: 0}
    server.reset()
    assert server.count() == 0 and server.headers == []


def test_openai_base_url_needs_the_v1_suffix(server: FakeLLM) -> None:
    client = openai.OpenAI(base_url=server.url, api_key=OPENAI_KEY, max_retries=0)
    with client, pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="m", messages=X)
    assert server.count() == 0


def test_delay_holds_each_answer(server: FakeLLM) -> None:
    server.delay = 0.3
    started = time.monotonic()
    with oa(server) as client:
        client.chat.completions.create(model="m", messages=X)
    assert time.monotonic() - started >= 0.3


def test_command_line_server_outlives_its_caller_until_killed() -> None:
    script = Path(__file__).parents[1] / "apps" / "fake_llm.py"
    process = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--turns", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        word, port = process.stdout.readline().split()
        assert word == "ready" and int(port) > 0
        url = f"http://127.0.0.1:{port}"
        with openai.OpenAI(base_url=f"{url}/v1", api_key=OPENAI_KEY, max_retries=0) as client:
            done = client.chat.completions.create(model="m", messages=X, tools=CHAT_TOOLS)
        assert done.choices[0].message.content == "done after 0 tool results: "
        assert get_json(f"{url}/_stats")[CHAT] == 1
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
