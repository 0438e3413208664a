"""Streamed OpenAI Responses API calls: what is journaled, and how a replay re-emits it.

The Responses API ends a stream with the whole response in its terminal event
(``response.completed``, or ``response.incomplete`` when a limit cut the answer short): that
response is what :class:`ResponseAssembler` returns to be journaled, exactly what the
non-streamed call returns. A stream that ends in ``response.failed`` or an ``error`` event is
not an answer: it raises an error perdure's retries classify by the API's error code (a
server error or a timeout is retried, a rate limit waits, a refused prompt is not retried), so
the failure is never journaled as the call's result. A stream cut before its terminal event is
retried as a dropped connection.

:func:`replayed_response` re-emits a recorded ``Response`` as the shortest sequence the
SDK's own stream accumulator (``client.responses.stream``) and a renderer follow:
``response.created``; per output item ``response.output_item.added`` (emptied), its text
parts (``response.content_part.added`` then one ``response.output_text.delta`` with the whole
text; ``response.refusal.delta`` for a refusal) or its whole arguments (one
``response.function_call_arguments.delta``), ``response.output_item.done``; then
``response.completed`` (or ``response.incomplete``) with the response.
"""

from __future__ import annotations

from typing import Any

from .._errors import PermanentError, RateLimitedError, TransientError

#: error codes of a failed response worth another attempt (a rate limit is one too, later)
_TRANSIENT_CODES = ("server_error", "vector_store_timeout")
_TRANSIENT_WORDS = ("server", "timeout", "overloaded", "unavailable")


def response_failure(code: str | None, message: str, what: str) -> Exception:
    """The error a failed stream raises, by the API's error code: a rate limit waits, a
    server-side failure (or one without a code) is retried, anything else (the request's
    fault: an invalid prompt or image, a policy refusal) is not."""
    text = f"the Responses API stream ended in {what}: {code or 'no code'}: {message}"
    if code == "rate_limit_exceeded":
        return RateLimitedError(text)
    if code is None or code in _TRANSIENT_CODES or any(w in code for w in _TRANSIENT_WORDS):
        return TransientError(text)
    return PermanentError(text)


class ResponseAssembler:
    """Keeps the terminal event's response (and the finished output items, in case a
    server leaves the output out of it, as the SDK's own accumulator allows)."""

    def __init__(self) -> None:
        self.final: dict[str, Any] | None = None
        self.items: dict[int, dict[str, Any]] = {}

    def add(self, event: Any) -> None:
        """Take one ``ResponseStreamEvent`` in.

        Raises:
            TransientError, RateLimitedError, PermanentError: the event reports a failure.
        """
        kind = getattr(event, "type", None)
        if kind == "response.output_item.done":
            self.items[event.output_index] = event.item.to_dict(mode="json")
        elif kind in ("response.completed", "response.incomplete"):
            self.final = event.response.to_dict(mode="json")
        elif kind == "response.failed":
            error = getattr(event.response, "error", None)
            code, message = getattr(error, "code", None), getattr(error, "message", "")
            raise response_failure(code, message or "no message", "response.failed")
        elif kind == "error":
            raise response_failure(event.code, event.message, "an error event")

    def result(self) -> dict[str, Any]:
        """The response the terminal event carried, as JSON data.

        Raises:
            TransientError: the stream ended before a terminal event (a dropped stream).
        """
        if self.final is None:
            raise TransientError(
                "the Responses API stream ended before response.completed (the connection "
                "dropped?): the call is retried"
            )
        if self.final.get("output") is None and self.items:
            self.final["output"] = [self.items[i] for i in sorted(self.items)]
        return self.final


def replayed_response(response: Any) -> list[Any]:
    """The recorded ``Response`` as a short stream of the SDK's event types (see the module
    docstring), numbered from 0 like a live stream."""
    from openai.types import responses as t

    pending = _copy(response, status="in_progress", output=[], usage=None)
    events: list[tuple[Any, dict[str, Any]]] = [
        (t.ResponseCreatedEvent, {"type": "response.created", "response": pending})
    ]
    for index, item in enumerate(response.output or ()):
        events += _replayed_item(index, item)
    if response.status == "incomplete":
        events.append((t.ResponseIncompleteEvent,
                       {"type": "response.incomplete", "response": response}))  # fmt: skip
    else:
        events.append((t.ResponseCompletedEvent,
                       {"type": "response.completed", "response": response}))  # fmt: skip
    return [cls.construct(**fields, sequence_number=n) for n, (cls, fields) in enumerate(events)]


def _replayed_item(index: int, item: Any) -> list[tuple[Any, dict[str, Any]]]:
    """One output item: added (emptied), its whole text or arguments in one delta each, done."""
    from openai.types import responses as t

    at: dict[str, Any] = {"output_index": index}
    kind = getattr(item, "type", None)
    deltas: list[tuple[Any, dict[str, Any]]] = []
    empty = item
    if kind == "message":
        empty = _copy(item, content=[], status="in_progress")
        for part_index, part in enumerate(item.content or ()):
            deltas += _replayed_part({**at, "item_id": item.id, "content_index": part_index}, part)
    elif kind == "function_call":
        empty = _copy(item, arguments="", status="in_progress")
        deltas.append((t.ResponseFunctionCallArgumentsDeltaEvent,
                       {"type": "response.function_call_arguments.delta", **at,
                        "item_id": item.id or "", "delta": item.arguments}))  # fmt: skip
    return [
        (t.ResponseOutputItemAddedEvent,
         {"type": "response.output_item.added", **at, "item": empty}),
        *deltas,
        (t.ResponseOutputItemDoneEvent, {"type": "response.output_item.done", **at, "item": item}),
    ]  # fmt: skip


def _replayed_part(at: dict[str, Any], part: Any) -> list[tuple[Any, dict[str, Any]]]:
    """One content part of a message: added (emptied), then its whole text in one delta."""
    from openai.types import responses as t

    added = "response.content_part.added"
    kind = getattr(part, "type", None)
    if kind == "output_text":
        empty = _copy(part, text="", annotations=[])
        delta = {"type": "response.output_text.delta", **at, "delta": part.text, "logprobs": []}
        return [(t.ResponseContentPartAddedEvent, {"type": added, **at, "part": empty}),
                (t.ResponseTextDeltaEvent, delta)]  # fmt: skip
    if kind == "refusal":
        empty = _copy(part, refusal="")
        delta = {"type": "response.refusal.delta", **at, "delta": part.refusal}
        return [(t.ResponseContentPartAddedEvent, {"type": added, **at, "part": empty}),
                (t.ResponseRefusalDeltaEvent, delta)]  # fmt: skip
    return [(t.ResponseContentPartAddedEvent, {"type": added, **at, "part": part})]


def _copy(model: Any, **changes: Any) -> Any:
    """A copy of an SDK object with some fields changed, built as the SDK builds one (this
    works on pydantic 1 too, which the SDKs still support)."""
    return type(model).construct(**{**model.to_dict(), **changes})
