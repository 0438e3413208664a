"""Streamed Anthropic messages: assembling the raw events, and how a replay re-emits them.

Anthropic's stream never carries the whole message: :class:`MessageAssembler` builds it from
the raw events the way the SDK's own accumulator does (``client.messages.stream``), as JSON:
the message of ``message_start``; each block from its ``content_block_start``, grown by its
deltas (text, thinking and signature, citations, and a tool call's input as partial JSON,
parsed when the block stops); then ``message_delta``'s stop reason, stop sequence and usage
(cumulative counts, merged over ``message_start``'s). The result has the shape of the
non-streamed response, usage included, so token accounting reads it the same way.

A stream that breaks off with an ``error`` event (the SDK raises it as an ``APIStatusError``
of status 200) is re-raised as an error perdure's retries classify by its type
(:func:`message_failure`), and a stream cut before ``message_stop`` is retried as a dropped
connection: neither is journaled as the call's result.

:func:`replayed_message` re-emits a recorded ``Message`` as a short, faithful raw stream:
``message_start`` (no content yet), per block ``content_block_start`` (emptied), one delta with
the whole text, thinking or input JSON, ``content_block_stop``; ``message_delta`` with the stop
reason and usage; ``message_stop``. The SDK's accumulator rebuilds the same message from it.
"""

from __future__ import annotations

import json
from typing import Any

from .._errors import PermanentError, RateLimitedError, TransientError

_TRANSIENT_TYPES = ("overloaded_error", "api_error", "timeout_error")
#: block types whose ``input`` streams as partial JSON
_INPUT_BLOCKS = ("tool_use", "server_tool_use")
#: the usage counts a ``message_delta`` carries (``MessageDeltaUsage``)
_DELTA_USAGE = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                "cache_read_input_tokens", "server_tool_use", "output_tokens_details")  # fmt: skip


def message_failure(exc: Exception) -> Exception | None:
    """The error to raise for what the SDK raised mid-stream (None: not a stream's error
    event). Overloaded and server errors are retried, a rate limit waits, the rest (the
    request's fault) is not retried."""
    body = getattr(exc, "body", None)
    if getattr(exc, "status_code", None) != 200 or not isinstance(body, dict):
        return None  # an error event arrives in a 200 response; anything else is the SDK's
    error: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else {}
    kind, message = str(error.get("type") or ""), str(error.get("message") or exc)
    text = f"the Anthropic stream ended in an error event: {kind or 'no type'}: {message}"
    if kind == "rate_limit_error":
        return RateLimitedError(text)
    if not kind or kind in _TRANSIENT_TYPES:
        return TransientError(text)
    return PermanentError(text)


class MessageAssembler:
    """Builds an Anthropic ``Message`` (as the API's JSON) from raw stream events."""

    def __init__(self) -> None:
        self.message: dict[str, Any] | None = None
        self.partial_json: dict[int, str] = {}
        self.stopped = False

    def add(self, event: Any) -> None:
        """Take one raw stream event in (``RawMessageStreamEvent``)."""
        kind = getattr(event, "type", None)
        if kind == "message_start":
            self.message = event.message.to_dict(mode="json")
            self.message["content"] = list(self.message.get("content") or ())
        elif self.message is None:
            return  # nothing to add to: result() says the stream was incomplete
        elif kind == "content_block_start":
            self.message["content"].append(event.content_block.to_dict(mode="json"))
        elif kind == "content_block_delta":
            self._grow(event.index, event.delta)
        elif kind == "content_block_stop":
            self._parse_input(event.index)
        elif kind == "message_delta":
            self._finish(event)
        elif kind == "message_stop":
            self.stopped = True

    def _grow(self, index: int, delta: Any) -> None:
        block = self.message["content"][index] if self.message else {}
        kind = getattr(delta, "type", None)
        if kind == "text_delta":
            block["text"] = block.get("text", "") + delta.text
        elif kind == "input_json_delta":
            self.partial_json[index] = self.partial_json.get(index, "") + delta.partial_json
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta.thinking
        elif kind == "signature_delta":
            block["signature"] = delta.signature
        elif kind == "citations_delta":
            block["citations"] = [*(block.get("citations") or ()),
                                  delta.citation.to_dict(mode="json")]  # fmt: skip

    def _parse_input(self, index: int) -> None:
        """A tool call's input, from its concatenated partial JSON (as the SDK parses it:
        leniently, so an input cut short by max_tokens keeps what arrived)."""
        text = self.partial_json.pop(index, "")
        if not text or self.message is None:
            return
        from jiter import from_json

        try:
            self.message["content"][index]["input"] = from_json(text.encode(), partial_mode=True)
        except ValueError as exc:
            raise PermanentError(f"the model's tool input is not JSON: {exc}: {text}") from exc

    def _finish(self, event: Any) -> None:
        """``message_delta``: stop reason and sequence; usage counts are running totals, so
        they replace ``message_start``'s (the ones it leaves out keep their value)."""
        assert self.message is not None
        delta = event.delta.to_dict(mode="json")
        self.message["stop_reason"] = delta.get("stop_reason")
        self.message["stop_sequence"] = delta.get("stop_sequence")
        for key in ("stop_details", "container"):
            if delta.get(key) is not None:
                self.message[key] = delta[key]
        usage = event.usage.to_dict(mode="json") if event.usage is not None else {}
        merged = {**(self.message.get("usage") or {})}
        merged.update((k, v) for k, v in usage.items() if v is not None)
        self.message["usage"] = merged

    def result(self) -> dict[str, Any]:
        """The assembled ``Message``, as JSON data.

        Raises:
            TransientError: the stream ended before ``message_stop`` (a dropped stream).
        """
        if self.message is None or not self.stopped:
            raise TransientError(
                "the Anthropic stream ended before message_stop (the connection dropped?): "
                "the call is retried"
            )
        for index in list(self.partial_json):
            self._parse_input(index)
        return self.message


def replayed_message(message: Any) -> list[Any]:
    """The recorded ``Message`` as a short raw stream of the SDK's event types (see the module
    docstring)."""
    from anthropic import types as t

    start = _copy(message, content=[], stop_reason=None, stop_sequence=None)
    events: list[Any] = [t.RawMessageStartEvent.construct(type="message_start", message=start)]
    for index, block in enumerate(message.content or ()):
        events += _replayed_block(index, block)
    delta = {"stop_reason": message.stop_reason, "stop_sequence": message.stop_sequence}
    for key in ("stop_details", "container"):
        if getattr(message, key, None) is not None:
            delta[key] = getattr(message, key)
    counts = message.usage.to_dict() if message.usage is not None else {}
    usage = {k: v for k, v in counts.items() if k in _DELTA_USAGE}
    events += [
        t.RawMessageDeltaEvent.construct(type="message_delta", delta=delta, usage=usage),
        t.RawMessageStopEvent.construct(type="message_stop"),
    ]
    return events


def _replayed_block(index: int, block: Any) -> list[Any]:
    """One block: started emptied, its whole content in one delta (or two, for thinking and
    its signature), stopped. A block that does not stream (a server tool's result, redacted
    thinking) starts whole, as the API sends it."""
    from anthropic import types as t

    kind = getattr(block, "type", None)
    empty, deltas = block, []
    if kind == "text":
        empty = _copy(block, text="", **({"citations": None} if block.citations else {}))
        deltas = [{"type": "text_delta", "text": block.text}]
        deltas += [{"type": "citations_delta", "citation": c.to_dict()}
                   for c in block.citations or ()]  # fmt: skip
    elif kind in _INPUT_BLOCKS:
        empty = _copy(block, input={})
        deltas = [{"type": "input_json_delta", "partial_json": json.dumps(block.input)}]
    elif kind == "thinking":
        empty = _copy(block, thinking="", signature="")
        deltas = [{"type": "thinking_delta", "thinking": block.thinking},
                  {"type": "signature_delta", "signature": block.signature}]  # fmt: skip
    return [
        t.RawContentBlockStartEvent.construct(type="content_block_start", index=index,
                                              content_block=empty),
        *(t.RawContentBlockDeltaEvent.construct(type="content_block_delta", index=index, delta=d)
          for d in deltas),
        t.RawContentBlockStopEvent.construct(type="content_block_stop", index=index),
    ]  # fmt: skip


def _copy(model: Any, **changes: Any) -> Any:
    """A copy of an SDK object with some fields changed, built as the SDK builds one (this
    works on pydantic 1 too, which the SDKs still support)."""
    return type(model).construct(**{**model.to_dict(), **changes})
