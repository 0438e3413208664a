"""The agent loop: model call, tool calls, model call... until the model answers or the turn
budget is spent.

:class:`Agent` is a convenience over the same primitives a hand-written loop uses: a durable
client (:func:`~perdure.agents.durable`) and tools (:func:`~perdure.agents.tool`). Inside a
workflow every model call and every tool call is a journaled step, so a recovered run replays
the conversation from the journal (no request is sent again for a finished turn) and goes on at
the call in flight. The conversation itself is rebuilt from those recorded responses and tool
results, never journaled as a whole, so the journal grows with what was said, once.

The loop is written once, as a generator of operations (call the model, call a tool) that a
sync and an async driver execute.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import NonDeterminismError, PerdureError, SerializationError
from ._fingerprint import OnChange
from ._llm import _Durable, durable, provider_of, with_policy
from ._tools import Tool, ToolRejected


class TurnBudgetExceeded(PerdureError):
    """The model was still calling tools when the agent's ``max_turns`` ran out."""


@dataclass
class AgentResult:
    """What an agent run produced.

    Attributes:
        text: the model's final answer.
        messages: the whole conversation, in the provider's message format.
        turns: model calls made. tool_calls: tool calls made (rejected ones included).
        input_tokens, output_tokens: summed over the model calls, as the provider reported.
    """

    text: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class _Model:
    """Call the model with these keyword arguments."""

    kwargs: dict[str, Any]


@dataclass
class _ToolCall:
    """Call ``tool`` with ``arguments`` (as the model gave them)."""

    tool: Tool[Any, Any] | None
    name: str
    arguments: str | Mapping[str, Any]


class Agent:
    """A tool-calling agent over an official SDK client (OpenAI chat completions or Anthropic
    messages). Create it anywhere; call :meth:`run` (or :meth:`run_async` with an async
    client) inside a workflow.

    Args:
        client: an ``openai.OpenAI``/``AsyncOpenAI`` or ``anthropic.Anthropic``/
            ``AsyncAnthropic`` client (made durable if it is not already).
        model: the model name.
        tools: the tools the model may call.
        instructions: the system prompt.
        max_turns: the most model calls in one run; past it, ``TurnBudgetExceeded``.
        on_change: what a resumed run does when a model call it replays was recorded with
            another model, instructions or tools (see :func:`~perdure.agents.durable`):
            ``"warn"``, ``"error"`` or ``"ignore"``. Default: the durable client's policy,
            or ``"warn"`` for a client the agent wraps itself.
        **params: more arguments for every model call (``temperature``, ``max_tokens``...).

    Raises:
        ConfigurationError: not an official SDK client, or an unknown ``on_change``.
    """

    def __init__(
        self,
        client: Any,
        model: str,
        tools: Sequence[Tool[Any, Any]] = (),
        instructions: str | None = None,
        max_turns: int = 20,
        on_change: OnChange | None = None,
        **params: Any,
    ) -> None:
        raw = client._client if isinstance(client, _Durable) else client
        self.provider = provider_of(raw)
        if not isinstance(client, _Durable):
            self.client = durable(client, on_change="warn" if on_change is None else on_change)
        else:
            self.client = client if on_change is None else with_policy(client, on_change)
        self.is_async = type(raw).__name__.startswith("Async")
        self.model, self.instructions, self.max_turns = model, instructions, max_turns
        self.tools = {t.name: t for t in tools}
        self.params = params

    # -- drivers -------------------------------------------------------------------------------

    def run(self, prompt: str | Sequence[Mapping[str, Any]]) -> AgentResult:
        """Run the loop to the model's final answer (sync client)."""
        loop = self._loop(prompt)
        done, op = _advance(loop, None, None)
        while not done:
            sent: Any = None
            error: Exception | None = None
            try:
                if isinstance(op, _Model):
                    sent = _model_call(self.client, self.provider)(**op.kwargs)
                else:
                    sent = _tool_for(op)(**_tool_for(op).parse(op.arguments))
            except Exception as exc:  # the loop decides: a tool's failure goes to the model
                error = exc
            done, op = _advance(loop, sent, error)
        return op  # type: ignore[no-any-return]

    async def run_async(self, prompt: str | Sequence[Mapping[str, Any]]) -> AgentResult:
        """Run the loop to the model's final answer (async client)."""
        loop = self._loop(prompt)
        done, op = _advance(loop, None, None)
        while not done:
            sent: Any = None
            error: Exception | None = None
            try:
                if isinstance(op, _Model):
                    sent = await _model_call(self.client, self.provider)(**op.kwargs)
                else:
                    tool = _tool_for(op)
                    outcome = tool(**tool.parse(op.arguments))
                    sent = await outcome if tool.is_async else outcome
            except Exception as exc:  # the loop decides: a tool's failure goes to the model
                error = exc
            done, op = _advance(loop, sent, error)
        return op  # type: ignore[no-any-return]

    # -- the loop, once ------------------------------------------------------------------------

    def _loop(
        self, prompt: str | Sequence[Mapping[str, Any]]
    ) -> Generator[_Model | _ToolCall, Any, AgentResult]:
        openai = self.provider == "openai"
        messages: list[dict[str, Any]] = []
        if openai and self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        if isinstance(prompt, str):
            messages.append({"role": "user", "content": prompt})
        else:
            messages.extend(dict(m) for m in prompt)
        result = AgentResult(text="", messages=messages)
        for _ in range(self.max_turns):
            kwargs: dict[str, Any] = {"model": self.model, "messages": list(messages),
                                      **self.params}  # fmt: skip
            if self.tools:
                kwargs["tools"] = [t.openai_schema() if openai else t.anthropic_schema()
                                   for t in self.tools.values()]  # fmt: skip
            if not openai:
                kwargs.setdefault("max_tokens", 1024)
                if self.instructions:
                    kwargs["system"] = self.instructions
            response = yield _Model(kwargs)
            result.turns += 1
            _count(result, response, openai)
            calls, text, said = _read(response, openai)
            messages.append(said)
            if not calls:
                result.text = text
                return result
            results: list[dict[str, Any]] = []
            for call_id, name, arguments in calls:
                result.tool_calls += 1
                try:
                    output = yield _ToolCall(self.tools.get(name), name, arguments)
                    content, failed = _as_text(output), False
                except ToolRejected as exc:
                    content, failed = (
                        f"A human rejected this call: {exc.comment or 'no reason given'}",
                        True,
                    )
                except (NonDeterminismError, SerializationError):
                    raise
                except Exception as exc:
                    content, failed = f"The tool failed: {type(exc).__name__}: {exc}", True
                if openai:
                    messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
                else:
                    results.append({"type": "tool_result", "tool_use_id": call_id,
                                    "content": content, "is_error": failed})  # fmt: skip
            if results:
                messages.append({"role": "user", "content": results})
        raise TurnBudgetExceeded(
            f"the model was still calling tools after {self.max_turns} turns (max_turns)"
        )


def _model_call(client: Any, provider: str) -> Any:
    return client.chat.completions.create if provider == "openai" else client.messages.create


def _advance(
    loop: Generator[_Model | _ToolCall, Any, AgentResult], sent: Any, error: Exception | None
) -> tuple[bool, Any]:
    """Resume the loop with an operation's outcome: (True, the result) when it has finished,
    else (False, the next operation)."""
    try:
        return False, loop.send(sent) if error is None else loop.throw(error)
    except StopIteration as finished:
        return True, finished.value


def _tool_for(op: _ToolCall) -> Tool[Any, Any]:
    if op.tool is None:
        raise LookupError(f"there is no tool named {op.name!r}")
    return op.tool


def _read(response: Any, openai: bool) -> tuple[list[tuple[str, str, Any]], str, dict[str, Any]]:
    """The tool calls a response asks for, its text, and the message that records it."""
    if openai:
        message = response.choices[0].message
        calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or ()]
        said: dict[str, Any] = {"role": "assistant"}
        if message.content is not None or not calls:
            # left out when None beside tool calls, as the API allows: the SDK's request
            # transform walks every key, and a null content costs it a union's worth of work
            # per message per turn (about a third of its work on a long conversation)
            said["content"] = message.content
        if calls:
            said["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in message.tool_calls
            ]  # fmt: skip
        return calls, message.content or "", said
    blocks = [b.model_dump(mode="json", exclude_none=True) for b in response.content]
    calls = [(b.id, b.name, b.input) for b in response.content if b.type == "tool_use"]
    text = "".join(b.text for b in response.content if b.type == "text")
    return calls, text, {"role": "assistant", "content": blocks}


def _count(result: AgentResult, response: Any, openai: bool) -> None:
    usage = getattr(response, "usage", None)
    if usage is None:
        return
    result.input_tokens += int((usage.prompt_tokens if openai else usage.input_tokens) or 0)
    result.output_tokens += int((usage.completion_tokens if openai else usage.output_tokens) or 0)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        value = dump(mode="json")
    return json.dumps(value, default=str)
