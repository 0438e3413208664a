"""Streamed chat completions: chunks reach the caller live, the journal keeps the whole answer.

``durable(client).chat.completions.create(..., stream=True, on_chunk=fn)`` inside a workflow
runs one step that consumes the SDK's stream, calls ``fn`` with every ``ChatCompletionChunk``
as it arrives, assembles the chunks into the ``ChatCompletion`` the non-streamed call would have
returned (content, tool calls, finish reason, usage), journals that, and returns it. A replay
returns the recorded ``ChatCompletion`` without a request and re-emits it to ``fn`` as one chunk
holding the whole message, so a caller that renders the stream shows the same text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any


class Assembler:
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

    def completion(self) -> dict[str, Any]:
        """The assembled ``ChatCompletion``, as JSON data."""
        text = "".join(self.content) if self.content else None
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self.calls:
            message["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        data = {**self.head, "object": "chat.completion",
                "choices": [{"index": 0, "finish_reason": self.finish or "stop",
                             "message": message}]}  # fmt: skip
        if self.usage is not None:
            data["usage"] = self.usage
        return data


def consume(chunks: Iterable[Any], on_chunk: Callable[[Any], Any]) -> dict[str, Any]:
    """Forward every chunk to ``on_chunk`` and return the assembled completion."""
    assembler = Assembler()
    for chunk in chunks:
        on_chunk(chunk)
        assembler.add(chunk)
    return assembler.completion()


async def consume_async(chunks: AsyncIterator[Any], on_chunk: Callable[[Any], Any]) -> Any:
    """:func:`consume` for an async stream (``on_chunk`` may be a coroutine function)."""
    import inspect

    assembler = Assembler()
    async for chunk in chunks:
        outcome = on_chunk(chunk)
        if inspect.isawaitable(outcome):
            await outcome
        assembler.add(chunk)
    return assembler.completion()


def replayed_chunk(completion: Any) -> Any:
    """The recorded completion as one ``ChatCompletionChunk`` holding the whole message."""
    from openai.types.chat import ChatCompletionChunk

    choice = completion.choices[0]
    calls = [{"index": i, "id": c.id, "type": "function",
              "function": {"name": c.function.name, "arguments": c.function.arguments}}
             for i, c in enumerate(choice.message.tool_calls or ())]  # fmt: skip
    delta: dict[str, Any] = {"role": "assistant", "content": choice.message.content}
    if calls:
        delta["tool_calls"] = calls
    return ChatCompletionChunk.construct(
        id=completion.id, object="chat.completion.chunk", created=completion.created,
        model=completion.model,
        choices=[{"index": 0, "delta": delta, "finish_reason": choice.finish_reason}],
    )  # fmt: skip
