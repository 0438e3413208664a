"""Retry policies, the failure taxonomy, and backoff arithmetic. Pure: no I/O, no clock.

The engine asks :func:`decide` what to do after a step attempt failed, giving it the policy,
the exception, how many attempts failed so far and how long ago the first one started; it
gets back either "retry after N seconds" or "give up". Exceptions are classified first:

==================  ==========================================  ======================
class               what raises it                              treatment
==================  ==========================================  ======================
transient           ``TransientError``; connection errors and   retry with backoff
                    timeouts of the stdlib, httpx, requests,
                    openai, anthropic; HTTP 408, 409, 5xx
rate_limited        ``RateLimitedError``; HTTP 429              retry after at least
                                                                ``retry_after`` (the
                                                                server's Retry-After)
timed_out           ``StepTimeoutError``                        retry with backoff
permanent           ``PermanentError``; other HTTP 4xx;         never retried
                    ``non_retryable`` types of the policy
unknown             anything else                               not retried, unless it
                                                                is an instance of the
                                                                policy's ``retry_on``
==================  ==========================================  ======================

Classifiers are pluggable: :func:`register_classifier` adds one that is asked first.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ._errors import ConfigurationError


class FailureKind(StrEnum):
    """How a failed attempt is treated."""

    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"
    TIMED_OUT = "timed_out"
    PERMANENT = "permanent"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Failure:
    """A classified failure: its kind and, for rate limits, the server's wait hint."""

    kind: FailureKind
    retry_after: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """How a step is retried when an attempt fails.

    The defaults suit LLM and HTTP calls: 5 attempts, waits of about 1, 2, 4, 8 s (±20 %
    jitter, capped at 60 s), at most 10 minutes from the first attempt; a server's
    Retry-After is always honoured (and may exceed ``max_interval``).

    Args:
        max_attempts: attempts in all, the first included (1 = no retry).
        initial_interval: seconds to wait after the first failure.
        backoff: factor applied to the wait after each further failure.
        max_interval: the longest wait between attempts (a Retry-After may exceed it).
        jitter: random spread of each wait, as a fraction (0.2 = ±20 %).
        max_elapsed: give up when the next attempt would start more than this many seconds
            after the first one began (None: no limit).
        retry_on: exception types to retry although the classifier does not recognise
            them (an unrecognised exception, a bug or a bad input, is not retried by default).
        non_retryable: exception types never retried, whatever the classifier says.
    """

    max_attempts: int = 5
    initial_interval: float = 1.0
    backoff: float = 2.0
    max_interval: float = 60.0
    jitter: float = 0.2
    max_elapsed: float | None = 600.0
    retry_on: tuple[type[BaseException], ...] = ()
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("RetryPolicy.max_attempts must be at least 1")
        valid = self.initial_interval >= 0 and self.max_interval >= 0 and self.backoff >= 1
        if self.max_elapsed is not None and not self.max_elapsed >= 0:
            raise ConfigurationError("RetryPolicy.max_elapsed must be >= 0 or None")
        if not valid:  # written so that NaN fails too
            raise ConfigurationError(
                "RetryPolicy intervals must be >= 0 and backoff >= 1 "
                f"(got initial_interval={self.initial_interval}, backoff={self.backoff}, "
                f"max_interval={self.max_interval})"
            )
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("RetryPolicy.jitter is a fraction between 0 and 1")

    def backoff_delay(self, failures: int, spread: float) -> float:
        """The wait after ``failures`` failed attempts; ``spread`` in [0, 1) picks the jitter."""
        try:
            base = self.initial_interval * self.backoff ** max(0, failures - 1)
        except OverflowError:
            base = self.max_interval
        base = min(base, self.max_interval)
        return min(self.max_interval, max(0.0, base * (1 + self.jitter * (2 * spread - 1))))


NO_RETRY = RetryPolicy(max_attempts=1)
DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class Decision:
    """What to do after a failed attempt: retry after ``delay`` seconds, or give up."""

    retry: bool
    delay: float
    failure: Failure
    reason: str


def decide(
    policy: RetryPolicy,
    exc: BaseException,
    failures: int,
    elapsed: float,
    spread: float,
) -> Decision:
    """Decide whether to retry after the ``failures``-th failed attempt.

    Args:
        policy: the step's retry policy.
        exc: the exception the attempt raised.
        failures: how many attempts have failed, this one included.
        elapsed: seconds since the first attempt started.
        spread: a journaled random number in [0, 1) for the jitter.
    """
    failure = classify(exc)
    if isinstance(exc, policy.non_retryable) or failure.kind is FailureKind.PERMANENT:
        return Decision(False, 0.0, failure, "not retryable")
    if failure.kind is FailureKind.UNKNOWN and not isinstance(exc, policy.retry_on):
        return Decision(False, 0.0, failure, "not a known transient failure, not in retry_on")
    if failures >= policy.max_attempts:
        return Decision(False, 0.0, failure, f"{failures} of {policy.max_attempts} attempts used")
    delay = policy.backoff_delay(failures, spread)
    if failure.retry_after is not None:
        delay = max(delay, failure.retry_after)
    if policy.max_elapsed is not None and elapsed + delay > policy.max_elapsed:
        return Decision(
            False, 0.0, failure, f"the next attempt would start after {policy.max_elapsed} s"
        )
    return Decision(True, delay, failure, "retrying")


# -- classification ------------------------------------------------------------------------

Classifier = Callable[[BaseException], Failure | None]
_classifiers: list[Classifier] = []


def register_classifier(classifier: Classifier) -> None:
    """Add a classifier, asked before the built-in rules (the latest added is asked first).

    A classifier returns a :class:`Failure` for exceptions it recognises and None otherwise.
    """
    _classifiers.insert(0, classifier)


def classify(exc: BaseException) -> Failure:
    """Classify an exception: user classifiers first, then the built-in rules."""
    for classifier in _classifiers:
        found = classifier(exc)
        if found is not None:
            return found
    return _builtin(exc)


_CONNECTION_NAMES = (
    "ConnectionError", "ConnectError", "TimeoutError", "Timeout", "TimeoutException",
    "ReadTimeout", "ConnectTimeout", "WriteTimeout", "PoolTimeout", "RemoteProtocolError",
    "ProxyError", "NetworkError", "APIConnectionError", "APITimeoutError",
    # a database transaction that lost a race (PostgreSQL 40001, 40P01, 55P03): run it again
    "SerializationFailure", "DeadlockDetected", "LockNotAvailable",
)  # fmt: skip


def _builtin(exc: BaseException) -> Failure:
    from ._errors import PermanentError, RateLimitedError, StepTimeoutError, TransientError

    if isinstance(exc, RateLimitedError):
        return Failure(FailureKind.RATE_LIMITED, exc.retry_after)
    if isinstance(exc, StepTimeoutError):
        return Failure(FailureKind.TIMED_OUT)
    if isinstance(exc, TransientError):
        return Failure(FailureKind.TRANSIENT)
    if isinstance(exc, PermanentError):
        return Failure(FailureKind.PERMANENT)
    status = _status_code(exc)
    if status is not None:
        return _by_status(status, exc)
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, ConnectionError | TimeoutError) or names.intersection(_CONNECTION_NAMES):
        return Failure(FailureKind.TRANSIENT)
    return Failure(FailureKind.UNKNOWN)


def _by_status(status: int, exc: BaseException) -> Failure:
    if status == 429:
        return Failure(FailureKind.RATE_LIMITED, retry_after(_headers(exc)))
    if status in (408, 409) or status >= 500:
        return Failure(FailureKind.TRANSIENT, retry_after(_headers(exc)))
    if 400 <= status < 500:
        return Failure(FailureKind.PERMANENT)
    return Failure(FailureKind.UNKNOWN)


def _status_code(exc: BaseException) -> int | None:
    """The HTTP status of an SDK or HTTP-client error (openai, anthropic, httpx, requests)."""
    for candidate in (getattr(exc, "status_code", None), getattr(exc, "status", None)):
        if isinstance(candidate, int) and 100 <= candidate <= 599:
            return candidate
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) and 100 <= code <= 599 else None


def _headers(exc: BaseException) -> Any:
    return getattr(getattr(exc, "response", None), "headers", None)


MAX_RETRY_AFTER = 86_400.0  # a day: longer hints are taken as a day, absurd ones ignored


def retry_after(headers: Any, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date),
    at most a day."""
    value = _parse_retry_after(headers, now)
    return None if value is None else min(value, MAX_RETRY_AFTER)


def _parse_retry_after(headers: Any, now: dt.datetime | None) -> float | None:
    if headers is None:
        return None
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            try:
                value = float(millis) / 1000
            except ValueError:
                value = math.nan
            if math.isfinite(value) and value >= 0:
                return value  # else fall back to Retry-After, as the SDKs do
        raw = headers.get("retry-after")
    except (AttributeError, TypeError):
        return None
    if raw is None:
        return None
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(raw))
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())
