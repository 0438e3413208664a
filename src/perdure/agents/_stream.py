"""Streamed model calls: events reach the caller live, the journal keeps the whole answer.

``durable(client).<call>(..., stream=True, on_chunk=fn)`` inside a workflow runs one step that
consumes the SDK's stream, calls ``fn`` with every event as the SDK yields it, assembles the
events into the response the non-streamed call would have returned, journals that (never the
events), and returns it as the SDK's type. A replay returns the recorded response without a
request and re-emits it to ``fn`` as a short synthetic stream built from the SDK's own event
types, so a caller that renders the stream shows the same answer.

Each API has a :class:`Streaming`: how to assemble its events and how to replay a response.
This module holds the dispatch and OpenAI chat completions (chunks assembled into a
``ChatCompletion``, replayed as one chunk holding the whole message);
:mod:`._stream_responses` has the Responses API, :mod:`._stream_anthropic` Anthropic messages.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._errors import TransientError
from ._stream_anthropic import MessageAssembler, message_failure, replayed_message
from ._stream_responses import ResponseAssembler, replayed_response

OnChunk = Callable[[Any], Any]


class Assembler(Protocol):
    """Builds a response (as the API's JSON) from the events of one stream."""

    def add(self, event: Any) -> None:
        """Take one event in (may raise: the stream reported a failure)."""

    def result(self) -> dict[str, Any]:
        """The assembled response (may raise: the stream was cut short)."""


@dataclass(frozen=True)
class Streaming:
    """How one API's stream is journaled.

    Attributes:
        assembler: makes an :class:`Assembler` for one stream.
        replay: the synthetic events that re-emit a recorded response (the SDK's object).
        defaults: request arguments set unless the caller gave them.
        failure: turns an exception the SDK raised mid-stream into one perdure classifies
            (None: leave it as it is).
    """

    assembler: Callable[[], Assembler]
    replay: Callable[[Any], list[Any]]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    failure: Callable[[Exception], Exception | None] = lambda exc: None


class ChatAssembler:
    """Builds a chat completion (as the API's JSON) from streamed chunks."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.content: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish: str | None = None
        self.usage: Any = None

    def add(self, chunk: Any) -> None:
        """Take one ``ChatCompletionChunk`` in."""
        if not self.head:
            self.head = {"id": chunk.id, "created": chunk.created, "model": chunk.model}
        if getattr(chunk, "usage", None) is not None:
            self.usage = chunk.usage.to_dict(mode="json")
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta.content:
                self.content.append(delta.content)
            for call in delta.tool_calls or ():
                empty = {"name": "", "arguments": ""}
                slot = self.calls.setdefault(
                    call.index, {"id": None, "type": "function", "function": empty}
                )
                if call.id:
                    slot["id"] = call.id
                if call.function is not None:
                    slot["function"]["name"] += call.function.name or ""
                    slot["function"]["arguments"] += call.function.arguments or ""
            if choice.finish_reason:
                self.finish = choice.finish_reason

    def result(self) -> dict[str, Any]:
        """The assembled ``ChatCompletion``, as JSON data.

        Raises:
            TransientError: the stream ended before a finish reason (a dropped stream): it is
                retried, never journaled as a whole answer.
        """
        if self.finish is None:
            raise TransientError(
                f"the chat completion stream {self.head.get('id', '')!r} ended before its "
                "finish reason (a dropped stream); the call is sent again"
            )
        text = "".join(self.content) if self.content else None
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self.calls:
            message["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        data = {**self.head, "object": "chat.completion",
                "choices": [{"index": 0, "finish_reason": self.finish,
                             "message": message}]}  # fmt: skip
        if self.usage is not None:
            data["usage"] = self.usage
        return data


def replayed_chunk(completion: Any) -> list[Any]:
    """The recorded completion as one ``ChatCompletionChunk`` holding the whole message."""
    from openai.types.chat import ChatCompletionChunk

    choice = completion.choices[0]
    calls = [{"index": i, "id": c.id, "type": "function",
              "function": {"name": c.function.name, "arguments": c.function.arguments}}
             for i, c in enumerate(choice.message.tool_calls or ())]  # fmt: skip
    delta: dict[str, Any] = {"role": "assistant", "content": choice.message.content}
    if calls:
        delta["tool_calls"] = calls
    return [ChatCompletionChunk.construct(
        id=completion.id, object="chat.completion.chunk", created=completion.created,
        model=completion.model,
        choices=[{"index": 0, "delta": delta, "finish_reason": choice.finish_reason}],
    )]  # fmt: skip


#: the journaled calls that stream, by step name
STREAMS: dict[str, Streaming] = {
    # without include_usage the stream carries no usage, and token accounting would miss it
    "openai.chat.completions.create": Streaming(
        ChatAssembler, replayed_chunk, {"stream_options": {"include_usage": True}}),
    "openai.responses.create": Streaming(ResponseAssembler, replayed_response),
    "anthropic.messages.create": Streaming(MessageAssembler, replayed_message,
                                           failure=message_failure),
}  # fmt: skip


def streaming(step_name: str) -> Streaming:
    """The :class:`Streaming` of a journaled call."""
    return STREAMS[step_name]


@contextlib.contextmanager
def _classified(kind: Streaming) -> Iterator[None]:
    """Re-raise what the SDK raised mid-stream as an error perdure's retries classify."""
    try:
        yield
    except Exception as exc:
        better = kind.failure(exc)
        if better is None:
            raise
        raise better from exc


def consume(kind: Streaming, events: Iterable[Any], on_chunk: OnChunk) -> dict[str, Any]:
    """Forward every event to ``on_chunk`` (as it arrives) and return the assembled response.

    The stream is closed however this ends (``on_chunk`` or the stream may raise), so a
    failed attempt gives its connection back before the retry."""
    assembler = kind.assembler()
    try:
        with _classified(kind):
            for event in events:
                on_chunk(event)
                assembler.add(event)
    finally:
        getattr(events, "close", _nothing)()
    return assembler.result()


async def consume_async(
    kind: Streaming, events: AsyncIterator[Any], on_chunk: OnChunk
) -> dict[str, Any]:
    """:func:`consume` for an async stream (``on_chunk`` may be a coroutine function)."""
    assembler = kind.assembler()
    try:
        with _classified(kind):
            async for event in events:
                outcome = on_chunk(event)
                if inspect.isawaitable(outcome):
                    await outcome
                assembler.add(event)
    finally:
        closed = getattr(events, "close", _nothing)()
        if inspect.isawaitable(closed):
            await closed
    return assembler.result()


def _nothing() -> None:
    return None


def replay(kind: Streaming, response: Any, on_chunk: OnChunk) -> None:
    """Re-emit a recorded response (the SDK's object) to ``on_chunk``."""
    for event in kind.replay(response):
        on_chunk(event)


async def replay_async(kind: Streaming, response: Any, on_chunk: OnChunk) -> None:
    """:func:`replay` where ``on_chunk`` may be a coroutine function."""
    for event in kind.replay(response):
        outcome = on_chunk(event)
        if inspect.isawaitable(outcome):
            await outcome
