"""Durable model calls through the official SDKs.

``perdure.agents.durable(client)`` wraps an ``openai.OpenAI`` / ``openai.AsyncOpenAI`` or
``anthropic.Anthropic`` / ``anthropic.AsyncAnthropic`` client. The wrapper is the client: every
attribute is the client's own, except the calls below, which inside a workflow become journaled
steps:

* ``client.chat.completions.create(...)`` (OpenAI chat completions) -> ``ChatCompletion``
* ``client.responses.create(...)`` (OpenAI Responses API) -> ``Response``
* ``client.messages.create(...)`` (Anthropic messages) -> ``Message``

The first execution sends the request through the SDK; its response (as the API sent it, JSON)
is committed before the call returns, and a replay rebuilds the same SDK type from it, without
a request. Both build the object as the SDK does (leniently), so first run and replay see the
same thing. Only the response is journaled: the request (the whole conversation, the API key, the
headers) never is, so a conversation's journal grows with what the model said, not with the
history resent at every turn. Retries are perdure's, journaled and classified (429 with
Retry-After, 5xx, connection errors): the SDK's own retries are switched off inside the step.

``stream=True, on_chunk=fn`` streams the events to ``fn`` live and journals the assembled
response (:mod:`._stream`); ``rate_limit=`` takes room from a window shared through the
database before each attempt is sent (:mod:`._rate`). Each call is journaled with a
fingerprint of its model, prompt template and tools (:mod:`._fingerprint`); a replay that
meets another fingerprint reports it by ``on_change=``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from .._context import current
from .._decorators import StepSpec
from .._errors import ConfigurationError
from .._retry import RetryPolicy
from .._steps import call_step_async, call_step_sync
from ._fingerprint import OnChange, checked_policy, fingerprint
from ._rate import RateLimits, checked, limited_async, limited_sync
from ._stream import consume, consume_async, replay, replay_async, streaming

C = TypeVar("C")

#: journaled calls: (provider, attribute path) -> (step name, "module:Class" of the response)
_CALLS: dict[tuple[str, tuple[str, ...]], tuple[str, str]] = {
    ("openai", ("chat", "completions", "create")): (
        "openai.chat.completions.create", "openai.types.chat:ChatCompletion"),
    ("openai", ("responses", "create")): (
        "openai.responses.create", "openai.types.responses:Response"),
    ("anthropic", ("messages", "create")): (
        "anthropic.messages.create", "anthropic.types:Message"),
}  # fmt: skip
_EXTRAS = {"openai": "openai", "anthropic": "anthropic"}


def provider_of(client: Any) -> str:
    """``"openai"`` or ``"anthropic"``, from the client's class.

    Raises:
        ConfigurationError: another kind of object.
    """
    module = type(client).__module__.partition(".")[0]
    if module not in _EXTRAS:
        raise ConfigurationError(
            f"perdure.agents works with the official openai and anthropic SDK clients, not "
            f"{type(client).__qualname__} (from {type(client).__module__})"
        )
    return module


def require(provider: str) -> Any:
    """Import an SDK, or say which extra installs it."""
    try:
        return importlib.import_module(provider)
    except ImportError:
        raise ConfigurationError(
            f"the {provider} SDK is not installed: pip install 'perdure[{_EXTRAS[provider]}]'"
        ) from None


Redact = Callable[[dict[str, Any]], dict[str, Any]]


def durable(
    client: C,
    *,
    retry: RetryPolicy | None = None,
    redact: Redact | None = None,
    rate_limit: RateLimits | None = None,
    on_change: OnChange = "warn",
) -> C:
    """Wrap an official SDK client so that its model calls are durable steps.

    Args:
        client: an ``openai.OpenAI``, ``openai.AsyncOpenAI``, ``anthropic.Anthropic`` or
            ``anthropic.AsyncAnthropic`` client.
        retry: the retry policy of its calls (default: the engine's).
        redact: called with each response as JSON data before it is journaled; returns what
            to journal instead (drop or mask fields). The call then returns the redacted
            response on the first run too, so a replay sees exactly what the run saw.
        rate_limit: a ``RateLimit`` for every model of the client, or a dict of them by model
            name (``"*"``: the other models), shared by every workflow and worker of the
            database under the key ``"<provider>:<model>"`` (see docs/agents.md).
        on_change: what a resumed run does when it replays a call whose model, prompt
            template (system and developer messages, instructions), tools or output format
            differ from what the call was recorded with: ``"warn"`` logs it and replays the
            recorded answer; ``"error"`` stops the run with ``perdure.CallChangedError``
            before any new side effect; ``"ignore"`` replays silently.

    Returns:
        A stand-in for the client, typed as the client.

    Raises:
        ConfigurationError: not one of those clients, ``rate_limit`` is not a
            ``RateLimit`` or a dict of them, or ``on_change`` is not a known policy.
    """
    provider = provider_of(client)
    policy = checked_policy(on_change)
    # perdure retries (journaled, classified): the SDK's own retries are off in the steps
    bare = client.with_options(max_retries=0)  # type: ignore[attr-defined]
    options = _Options(client, bare, provider, retry, redact, checked(rate_limit), policy)
    return _Durable(options, ())  # type: ignore[return-value]


def with_policy(client: _Durable, on_change: str) -> _Durable:
    """The same wrapped client with another ``on_change`` policy (an ``Agent`` given an
    already durable client and its own policy).

    Raises:
        ConfigurationError: ``on_change`` is not a known policy.
    """
    options = replace(client._options, on_change=checked_policy(on_change))
    return _Durable(options, client._path)


@dataclass(frozen=True)
class _Options:
    """A wrapped client: the client itself, its copy without SDK retries, and perdure's
    options for its journaled calls."""

    client: Any
    bare: Any
    provider: str
    retry: RetryPolicy | None
    redact: Redact | None
    rate_limit: RateLimits | None = None
    #: the replay policy for a call whose fingerprint changed: "warn", "error" or "ignore"
    on_change: str = "warn"


class _Durable:
    """An attribute path of a wrapped client; a journaled call at the end of a known path."""

    def __init__(self, options: _Options, path: tuple[str, ...]) -> None:
        self._options, self._path = options, path

    @property
    def _client(self) -> Any:
        return self._options.client

    def __getattr__(self, name: str) -> Any:
        path, provider = (*self._path, name), self._options.provider
        known = _CALLS.get((provider, path))
        if known is not None:
            return _journaled_call(self._options, path, known)
        if any(key[0] == provider and key[1][: len(path)] == path for key in _CALLS):
            return _Durable(self._options, path)
        return _resolve(self._client, path)  # anything else is the client's own, unjournaled

    def __repr__(self) -> str:
        return f"perdure.agents.durable({self._client!r})"


def _resolve(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def _payload(response: Any, redact: Redact | None) -> Any:
    """The response as the API sent it (JSON data), redacted: what the journal records."""
    to_dict = getattr(response, "to_dict", None)
    return _redacted(to_dict(mode="json") if callable(to_dict) else response, redact)


def _redacted(data: Any, redact: Redact | None) -> Any:
    return redact(data) if redact is not None and isinstance(data, dict) else data


def _rebuild(cls: Any, data: Any) -> Any:
    """The SDK's own object from recorded JSON, built the SDK's way: leniently, as the SDK
    builds a live response (strict validation would refuse fields a server left out)."""
    return cls.construct(**data) if isinstance(data, dict) else data


def _journaled_call(
    options: _Options, path: tuple[str, ...], known: tuple[str, str]
) -> Callable[..., Any]:
    step_name, type_path = known
    module, _, cls = type_path.partition(":")
    hint = getattr(importlib.import_module(module), cls)
    is_async = type(options.client).__name__.startswith("Async")
    retry, redact = options.retry, options.redact
    target = _resolve(options.bare, path)

    def create(**kwargs: Any) -> Any:
        on_chunk = kwargs.pop("on_chunk", None)
        kind = streaming(step_name)
        if kwargs.get("stream"):
            if on_chunk is None and current() is None:
                return target(**kwargs)  # outside a workflow: the SDK's own stream
            if on_chunk is None:
                raise ConfigurationError(
                    f"{step_name}(stream=True) in a workflow needs on_chunk=<callable>, called "
                    "with each stream event as it arrives (the assembled response is "
                    "journaled); or call it without stream (the response is journaled whole)"
                )
            kwargs = {**kind.defaults, **kwargs}
        elif on_chunk is not None:
            raise ConfigurationError(f"{step_name}(on_chunk=...) needs stream=True")
        ran: list[bool] = []
        # what the call is asked with, minus the conversation: compared when it replays
        fp = fingerprint(step_name, kwargs) if current() is not None else None
        if is_async:

            async def fetch() -> Any:
                ran.append(True)
                if on_chunk is not None:
                    events = await target(**kwargs)
                    return _redacted(await consume_async(kind, events, on_chunk), redact)
                return _payload(await target(**kwargs), redact)

            sent = limited_async(fetch, options.rate_limit, options.provider, kwargs)
            spec = StepSpec(step_name, sent, _resolved=True, retry=retry, fingerprint=fp,
                            on_change=options.on_change)  # fmt: skip
            recorded = call_step_async(spec, (), {})  # takes its journal key now

            async def rebuilt() -> Any:
                response = _rebuild(hint, await recorded)
                if on_chunk is not None and not ran:  # replayed: re-emit the whole answer
                    await replay_async(kind, response, on_chunk)
                return response

            return rebuilt()

        def fetch_sync() -> Any:
            ran.append(True)
            if on_chunk is not None:
                return _redacted(consume(kind, target(**kwargs), on_chunk), redact)
            return _payload(target(**kwargs), redact)

        sent_sync = limited_sync(fetch_sync, options.rate_limit, options.provider, kwargs)
        spec = StepSpec(step_name, sent_sync, _resolved=True, retry=retry, fingerprint=fp,
                        on_change=options.on_change)  # fmt: skip
        response = _rebuild(hint, call_step_sync(spec, (), {}))
        if on_chunk is not None and not ran:
            replay(kind, response, on_chunk)
        return response

    create.__name__ = path[-1]
    create.__qualname__ = step_name
    return create
