"""Rate limits of model calls, shared by every workflow and every worker of a database.

``durable(client, rate_limit=RateLimit(requests=500, tokens=200_000, per=60))`` (or a dict
of them by model name, ``"*"`` for the other models) limits the client's journaled calls under
the key ``"<provider>:<model>"``. The limiter lives in the database (``Store.take_rate``), so
every workflow of every worker on it shares one window:

* before each attempt of a call is sent, room is taken; while there is none, the attempt
  waits (interruptibly: a cancellation or the engine stopping ends the wait at once);
* after the response, the tokens its usage reports are charged to the window (a request
  starts only while the tokens charged in the window are below the limit: a request's
  tokens are known only after it returns);
* a provider's 429 with Retry-After blocks the key for that long, for everyone, before the
  step's retry policy handles the error as usual.

A replayed call is not sent, so it never touches the limiter. Outside a workflow (no
database) calls are not limited.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .._context import WorkflowContext, current
from .._errors import ConfigurationError, PerdureError, WorkflowInterrupted
from .._retry import FailureKind, classify
from .._usage import call_usage

T = TypeVar("T")
log = logging.getLogger("perdure")
#: How often a wait looks at the workflow's wake-up event when it cannot block on it (async
#: waits; a sync wait after a wake-up that does not stop the step: a cancellation asked again
#: while compensations run).
_POLL = 0.1


@dataclass(frozen=True)
class RateLimit:
    """A rate limit for model calls: at most ``requests`` calls, and calls only while fewer
    than ``tokens`` tokens were used, in any window of ``per`` seconds.

    Args:
        requests: calls per window (None: no request limit).
        tokens: tokens per window, as the responses report them (input and output); a call
            starts only while the window's reported tokens are below this (None: no limit).
        per: the window, in seconds.

    Raises:
        ConfigurationError: neither limit given, or a value that is not positive.
    """

    requests: int | None = None
    tokens: int | None = None
    per: float = 60.0

    def __post_init__(self) -> None:
        if self.requests is None and self.tokens is None:
            raise ConfigurationError("RateLimit needs requests=, tokens= or both")
        for name in ("requests", "tokens"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise ConfigurationError(
                    f"RateLimit.{name} must be a whole number of at least 1, not {value!r}"
                )
        per = self.per
        if isinstance(per, bool) or not isinstance(per, int | float) or not 0 < per < math.inf:
            raise ConfigurationError(
                f"RateLimit.per must be a positive number of seconds, not {per!r}"
            )


RateLimits = RateLimit | Mapping[str, RateLimit]


def checked(limits: object) -> RateLimits | None:
    """``durable(rate_limit=)`` validated: a :class:`RateLimit`, or a copy of a dict of them
    by model name (``"*"``: every other model).

    Raises:
        ConfigurationError: anything else.
    """
    if limits is None or isinstance(limits, RateLimit):
        return limits
    if isinstance(limits, Mapping) and all(
        isinstance(k, str) and isinstance(v, RateLimit) for k, v in limits.items()
    ):
        return dict(limits)
    raise ConfigurationError(
        "durable(rate_limit=) takes a perdure.agents.RateLimit, or a dict of them by model "
        f'name ("*" for the other models), not {limits!r}'
    )


def limit_of(limits: RateLimits | None, model: str) -> RateLimit | None:
    """The limit a call of ``model`` is under, if any."""
    if limits is None or isinstance(limits, RateLimit):
        return limits
    return limits.get(model, limits.get("*"))


def _window_of(
    limits: RateLimits | None, provider: str, kwargs: Mapping[str, Any]
) -> _Window | None:
    """The window a call's attempts take room from; None outside a workflow or unlimited."""
    ctx = current()
    model = str(kwargs.get("model", ""))
    limit = limit_of(limits, model)
    if ctx is None or limit is None:
        return None
    return _Window(ctx, f"{provider}:{model}", limit)


def limited_sync(
    fetch: Callable[[], T], limits: RateLimits | None, provider: str, kwargs: Mapping[str, Any]
) -> Callable[[], T]:
    """``fetch`` (one attempt of a sync model call) under its rate limit; ``fetch`` itself
    when the call has none or runs outside a workflow. Call it where the step is called (in
    the workflow), so that it finds the workflow's context."""
    window = _window_of(limits, provider, kwargs)
    if window is None:
        return fetch

    def attempt() -> T:
        call_id = window.take_sync()
        try:
            payload = fetch()
        except Exception as exc:
            window.blocked(exc)
            raise
        window.charge(call_id, payload)
        return payload

    return attempt


def limited_async(
    fetch: Callable[[], Awaitable[T]],
    limits: RateLimits | None,
    provider: str,
    kwargs: Mapping[str, Any],
) -> Callable[[], Awaitable[T]]:
    """:func:`limited_sync` for an async model call: the waits are ``asyncio.sleep`` and the
    store calls run in a thread, so the event loop never blocks."""
    window = _window_of(limits, provider, kwargs)
    if window is None:
        return fetch

    async def attempt() -> T:
        call_id = await window.take_async()
        try:
            payload = await fetch()
        except Exception as exc:
            await asyncio.to_thread(window.blocked, exc)
            raise
        await asyncio.to_thread(window.charge, call_id, payload)
        return payload

    return attempt


class _Window:
    """One call's rate limit in a running workflow: takes room, charges, blocks."""

    def __init__(self, ctx: WorkflowContext, key: str, limit: RateLimit) -> None:
        self.ctx, self.key, self.limit = ctx, key, limit

    def take_sync(self) -> int:
        """Wait until the limiter gives room (holding this thread); the call's id."""
        while True:
            self.ctx.check_can_start_step()  # cancelled or stopping: no call starts
            call_id, wait = self._take()
            if call_id is not None:
                return call_id
            end = time.monotonic() + wait
            while (left := end - time.monotonic()) > 0:
                if not self.ctx.wake.is_set():
                    self.ctx.wake.wait(left)  # set by a cancellation or the engine stopping
                    continue
                self.ctx.check_can_start_step()  # raises, unless this step runs on regardless
                time.sleep(min(left, _POLL))

    async def take_async(self) -> int:
        """Wait until the limiter gives room (on the event loop); the call's id."""
        while True:
            self.ctx.check_can_start_step()
            call_id, wait = await asyncio.to_thread(self._take)
            if call_id is not None:
                return call_id
            end = time.monotonic() + wait
            while (left := end - time.monotonic()) > 0:
                # the engine stopping sets ctx.wake from another thread and cancels the task
                # only after its grace: look at it often
                if self.ctx.wake.is_set():
                    self.ctx.check_can_start_step()
                await asyncio.sleep(min(left, _POLL))

    def _take(self) -> tuple[int | None, float]:
        limit = self.limit
        try:
            grant = self.ctx.store.take_rate(self.key, limit.requests, limit.tokens, limit.per)
        except PerdureError as exc:  # a database outage pauses the run; it does not fail it
            raise WorkflowInterrupted(
                f"taking room under the rate limit {self.key!r} failed ({exc}); workflow "
                f"{self.ctx.workflow_id!r} resumes at this call"
            ) from exc
        return grant.call_id, grant.wait

    def charge(self, call_id: int, payload: Any) -> None:
        """Charge the tokens the response reports (as journaled: after ``redact``)."""
        if self.limit.tokens is None:
            return
        used = call_usage(payload).total_tokens
        try:
            self.ctx.store.charge_rate(self.key, call_id, used)
        except PerdureError as exc:  # the response is here: accounting must not lose it
            log.warning("perdure: could not charge %d tokens to %r: %s", used, self.key, exc)

    def blocked(self, exc: BaseException) -> None:
        """After a failed attempt: a 429 with Retry-After blocks the key for everyone."""
        failure = classify(exc)
        if failure.kind is not FailureKind.RATE_LIMITED or failure.retry_after is None:
            return
        try:
            self.ctx.store.block_rate(self.key, failure.retry_after)
        except PerdureError as error:
            log.warning("perdure: could not record the 429 block of %r: %s", self.key, error)
