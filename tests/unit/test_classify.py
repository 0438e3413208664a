"""The failure taxonomy (``perdure._retry``): classifying exceptions and deciding on retries.

The openai and anthropic SDK errors, and those of httpx and requests, are produced for real:
the real clients talk to a local HTTP server that answers with the status (and Retry-After)
each test picks, drops the connection, or never answers. Nothing of the SDKs is mocked.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import math
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anthropic
import httpx
import openai
import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

import perdure
from perdure import _retry
from perdure._retry import Failure, FailureKind, RetryPolicy, classify, decide, retry_after

# -- a local server that fails on demand -------------------------------------------------------

# The first path segment picks the answer: POST /429/v1/chat/completions answers 429.
_HEADERS: dict[str, dict[str, str]] = {
    "429": {"Retry-After": "7"},
    "429ms": {"retry-after-ms": "1500"},
    "503ra": {"Retry-After": "7"},
}
_DATE_WAIT = 30  # seconds ahead of now in the HTTP-date Retry-After of scenario "429date"

_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
                 404: "invalid_request_error", 422: "invalid_request_error",
                 429: "requests", 500: "server_error", 503: "server_error"}  # fmt: skip
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    404: "not_found_error", 422: "invalid_request_error",
                    429: "rate_limit_error", 500: "api_error", 503: "api_error",
                    529: "overloaded_error"}  # fmt: skip


def _error_body(status: int, anthropic_api: bool) -> bytes:
    """The JSON error body the real API sends with ``status``."""
    message = f"simulated HTTP {status}"
    if anthropic_api:
        error = {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}
        return json.dumps({"type": "error", "error": error}).encode()
    error = {"message": message, "type": _OPENAI_TYPES.get(status, "server_error"),
             "param": None, "code": "rate_limit_exceeded" if status == 429 else None}  # fmt: skip
    return json.dumps({"error": error}).encode()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        scenario = self.path.strip("/").split("/")[0]
        if scenario == "drop":  # close the socket without a word
            self.close_connection = True
            return
        if scenario == "slow":  # never answer before the client gives up
            self.server.release.wait(10)
            self.close_connection = True
            return
        headers = dict(_HEADERS.get(scenario, {}))
        if scenario == "429date":
            when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=_DATE_WAIT)
            headers["Retry-After"] = email.utils.format_datetime(when, usegmt=True)
        status = int(scenario[:3])
        body = _error_body(status, anthropic_api=self.path.endswith("/v1/messages"))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.release = threading.Event()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected here


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The base URL of a local HTTP server that answers each POST as its path asks."""
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def closed_port() -> str:
    """The base URL of a local port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def classifiers() -> Iterator[list[_retry.Classifier]]:
    """The registry of user classifiers, restored after the test."""
    saved = list(_retry._classifiers)
    try:
        yield _retry._classifiers
    finally:
        _retry._classifiers[:] = saved


# -- the SDK clients --------------------------------------------------------------------------


def _openai_error(base: str, scenario: str, timeout: float = 5.0) -> openai.OpenAIError:
    """Call chat.completions.create through the real openai client; return what it raised."""
    client = openai.OpenAI(base_url=f"{base}/{scenario}/v1", api_key="sk-test", max_retries=0,
                           timeout=timeout)  # fmt: skip
    with client, pytest.raises(openai.OpenAIError) as info:
        client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}]
        )
    return info.value


def _anthropic_error(base: str, scenario: str, timeout: float = 5.0) -> anthropic.AnthropicError:
    """Call messages.create through the real anthropic client; return what it raised."""
    client = anthropic.Anthropic(base_url=f"{base}/{scenario}", api_key="test", max_retries=0,
                                 timeout=timeout)  # fmt: skip
    with client, pytest.raises(anthropic.AnthropicError) as info:
        client.messages.create(
            model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    return info.value


SDKS: dict[str, tuple[Any, Callable[..., BaseException]]] = {
    "openai": (openai, _openai_error),
    "anthropic": (anthropic, _anthropic_error),
}

# scenario, the SDK's exception class, its failure kind, its retry_after
SDK_STATUS_CASES = [
    ("429", "RateLimitError", FailureKind.RATE_LIMITED, 7.0),
    ("429ms", "RateLimitError", FailureKind.RATE_LIMITED, 1.5),
    ("500", "InternalServerError", FailureKind.TRANSIENT, None),
    ("503", "InternalServerError", FailureKind.TRANSIENT, None),
    ("503ra", "InternalServerError", FailureKind.TRANSIENT, 7.0),
    ("400", "BadRequestError", FailureKind.PERMANENT, None),
    ("401", "AuthenticationError", FailureKind.PERMANENT, None),
    ("404", "NotFoundError", FailureKind.PERMANENT, None),
    ("422", "UnprocessableEntityError", FailureKind.PERMANENT, None),
]


@pytest.mark.parametrize("sdk_name", list(SDKS))
@pytest.mark.parametrize(("scenario", "exc_name", "kind", "wait"), SDK_STATUS_CASES)
def test_sdk_status_errors_are_classified_by_status(
    server: str, sdk_name: str, scenario: str, exc_name: str, kind: FailureKind, wait: float | None
) -> None:
    sdk, call = SDKS[sdk_name]
    exc = call(server, scenario)
    assert isinstance(exc, getattr(sdk, exc_name)), repr(exc)
    assert exc.status_code == int(scenario[:3])
    assert classify(exc) == Failure(kind, wait)


def test_anthropic_overloaded_529_is_transient(server: str) -> None:
    exc = _anthropic_error(server, "529")
    assert isinstance(exc, anthropic.OverloadedError)
    assert classify(exc) == Failure(FailureKind.TRANSIENT)


@pytest.mark.parametrize("sdk_name", list(SDKS))
def test_sdk_429_with_an_http_date_retry_after(server: str, sdk_name: str) -> None:
    sdk, call = SDKS[sdk_name]
    exc = call(server, "429date")
    assert isinstance(exc, sdk.RateLimitError)
    failure = classify(exc)
    assert failure.kind is FailureKind.RATE_LIMITED
    # The date has a 1 s resolution and was written a moment ago.
    assert failure.retry_after is not None
    assert _DATE_WAIT - 2 <= failure.retry_after <= _DATE_WAIT


@pytest.mark.parametrize("sdk_name", list(SDKS))
def test_sdk_dropped_connection_is_transient(server: str, sdk_name: str) -> None:
    sdk, call = SDKS[sdk_name]
    exc = call(server, "drop")
    assert isinstance(exc, sdk.APIConnectionError)
    assert classify(exc) == Failure(FailureKind.TRANSIENT)
    assert decide(RetryPolicy(), exc, failures=1, elapsed=0, spread=0.5).retry


@pytest.mark.parametrize("sdk_name", list(SDKS))
def test_sdk_refused_connection_is_transient(closed_port: str, sdk_name: str) -> None:
    sdk, call = SDKS[sdk_name]
    exc = call(closed_port, "500")
    assert type(exc) is sdk.APIConnectionError
    assert classify(exc) == Failure(FailureKind.TRANSIENT)


@pytest.mark.parametrize("sdk_name", list(SDKS))
def test_sdk_timeout_is_transient(server: str, sdk_name: str) -> None:
    sdk, call = SDKS[sdk_name]
    exc = call(server, "slow", timeout=0.2)
    assert isinstance(exc, sdk.APITimeoutError)
    assert classify(exc) == Failure(FailureKind.TRANSIENT)


@pytest.mark.parametrize("sdk_name", list(SDKS))
def test_decide_waits_out_an_sdk_429_and_gives_up_on_a_400(server: str, sdk_name: str) -> None:
    _, call = SDKS[sdk_name]
    limited = decide(RetryPolicy(), call(server, "429"), failures=1, elapsed=0, spread=0.5)
    assert limited.retry
    assert limited.delay >= 7.0
    assert limited.failure.kind is FailureKind.RATE_LIMITED
    bad = decide(RetryPolicy(), call(server, "400"), failures=1, elapsed=0, spread=0.5)
    assert not bad.retry
    assert bad.failure.kind is FailureKind.PERMANENT


# -- httpx and requests -----------------------------------------------------------------------

HTTP_STATUS_CASES = [
    ("429", FailureKind.RATE_LIMITED, 7.0),
    ("429ms", FailureKind.RATE_LIMITED, 1.5),
    ("500", FailureKind.TRANSIENT, None),
    ("503", FailureKind.TRANSIENT, None),
    ("503ra", FailureKind.TRANSIENT, 7.0),
    ("400", FailureKind.PERMANENT, None),
    ("401", FailureKind.PERMANENT, None),
    ("404", FailureKind.PERMANENT, None),
    ("422", FailureKind.PERMANENT, None),
]


def _httpx_error(url: str, timeout: float = 5.0) -> httpx.HTTPError:
    with pytest.raises(httpx.HTTPError) as info:
        httpx.post(url, json={"q": 1}, timeout=timeout).raise_for_status()
    return info.value


def _requests_error(url: str, timeout: float = 5.0) -> requests.RequestException:
    with pytest.raises(requests.RequestException) as info:
        requests.post(url, json={"q": 1}, timeout=timeout).raise_for_status()
    return info.value


@pytest.mark.parametrize(("scenario", "kind", "wait"), HTTP_STATUS_CASES)
def test_httpx_status_errors(
    server: str, scenario: str, kind: FailureKind, wait: float | None
) -> None:
    exc = _httpx_error(f"{server}/{scenario}/x")
    assert isinstance(exc, httpx.HTTPStatusError)
    assert exc.response.status_code == int(scenario[:3])
    assert classify(exc) == Failure(kind, wait)


@pytest.mark.parametrize(("scenario", "kind", "wait"), HTTP_STATUS_CASES)
def test_requests_status_errors(
    server: str, scenario: str, kind: FailureKind, wait: float | None
) -> None:
    exc = _requests_error(f"{server}/{scenario}/x")
    assert type(exc) is requests.HTTPError
    assert exc.response is not None
    assert exc.response.status_code == int(scenario[:3])
    assert classify(exc) == Failure(kind, wait)


def test_http_clients_429_with_an_http_date(server: str) -> None:
    for exc in (_httpx_error(f"{server}/429date/x"), _requests_error(f"{server}/429date/x")):
        failure = classify(exc)
        assert failure.kind is FailureKind.RATE_LIMITED
        assert failure.retry_after is not None
        assert _DATE_WAIT - 2 <= failure.retry_after <= _DATE_WAIT


def test_http_clients_connection_errors_are_transient(server: str, closed_port: str) -> None:
    refused = _httpx_error(f"{closed_port}/x")
    assert isinstance(refused, httpx.ConnectError)
    dropped = _httpx_error(f"{server}/drop/x")
    assert isinstance(dropped, httpx.RemoteProtocolError)
    refused_requests = _requests_error(f"{closed_port}/x")
    dropped_requests = _requests_error(f"{server}/drop/x")
    for exc in (refused_requests, dropped_requests):
        assert type(exc) is requests.ConnectionError
    for exc in (refused, dropped, refused_requests, dropped_requests):
        assert classify(exc) == Failure(FailureKind.TRANSIENT), repr(exc)
        assert decide(RetryPolicy(), exc, failures=1, elapsed=0, spread=0.5).retry


def test_http_clients_timeouts_are_transient(server: str) -> None:
    timed_out = _httpx_error(f"{server}/slow/x", timeout=0.2)
    assert isinstance(timed_out, httpx.ReadTimeout)
    timed_out_requests = _requests_error(f"{server}/slow/x", timeout=0.2)
    assert isinstance(timed_out_requests, requests.Timeout)
    for exc in (timed_out, timed_out_requests):
        assert classify(exc) == Failure(FailureKind.TRANSIENT), repr(exc)


def test_httpx_errors_of_the_callers_own_making_are_not_retried() -> None:
    # A URL whose scheme httpx cannot speak fails the same way on every attempt. BUG: httpx's
    # UnsupportedProtocol (and LocalProtocolError) derive from TransportError, whose name is
    # in the connection-error list, so they are classified transient and retried.
    with pytest.raises(httpx.UnsupportedProtocol) as info:
        httpx.post("ftp://127.0.0.1/x")
    assert classify(info.value).kind is not FailureKind.TRANSIENT
    assert not decide(RetryPolicy(), info.value, failures=1, elapsed=0, spread=0.5).retry


def test_the_sdks_stay_optional_imports() -> None:
    code = (
        "import sys, perdure, perdure._retry\n"
        "print(sorted(m for m in ('openai', 'anthropic', 'httpx', 'httpx2', 'requests')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- built-in rules without I/O ----------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionError("reset"),
        ConnectionResetError("reset by peer"),
        ConnectionRefusedError("refused"),
        BrokenPipeError("pipe"),
        TimeoutError("slow"),
    ],
)
def test_stdlib_connection_errors_and_timeouts_are_transient(exc: BaseException) -> None:
    assert classify(exc) == Failure(FailureKind.TRANSIENT)
    assert decide(RetryPolicy(), exc, failures=1, elapsed=0, spread=0.5).retry


@pytest.mark.parametrize("exc", [ValueError("bad input"), KeyError("k"), RuntimeError("bug")])
def test_unrecognised_exceptions_are_unknown_and_not_retried(exc: BaseException) -> None:
    decision = decide(RetryPolicy(), exc, failures=1, elapsed=0, spread=0.5)
    assert decision.failure == Failure(FailureKind.UNKNOWN)
    assert not decision.retry


def test_retry_on_makes_an_unknown_exception_retryable() -> None:
    policy = RetryPolicy(retry_on=(ValueError,))
    decision = decide(policy, ValueError("flaky"), failures=1, elapsed=0, spread=0.5)
    assert decision.retry
    assert decision.delay == 1.0
    assert not decide(policy, KeyError("k"), failures=1, elapsed=0, spread=0.5).retry
    # retry_on does not override a permanent classification
    policy = RetryPolicy(retry_on=(perdure.PermanentError,))
    assert not decide(policy, perdure.PermanentError("no"), failures=1, elapsed=0, spread=0.5).retry


@pytest.mark.parametrize(
    "exc",
    [
        perdure.TransientError("t"),
        perdure.RateLimitedError(retry_after=3),
        perdure.StepTimeoutError("slow"),
        ConnectionError("reset"),
        ValueError("v"),
    ],
)
def test_non_retryable_wins_over_everything(exc: BaseException) -> None:
    policy = RetryPolicy(non_retryable=(type(exc),), retry_on=(type(exc),))
    decision = decide(policy, exc, failures=1, elapsed=0, spread=0.5)
    assert not decision.retry
    assert decision.reason == "not retryable"


def test_non_retryable_wins_over_an_http_429(server: str) -> None:
    exc = _openai_error(server, "429")
    assert decide(RetryPolicy(), exc, failures=1, elapsed=0, spread=0.5).retry
    policy = RetryPolicy(non_retryable=(openai.RateLimitError,))
    assert not decide(policy, exc, failures=1, elapsed=0, spread=0.5).retry


def test_perdure_taxonomy_errors() -> None:
    assert classify(perdure.TransientError("t")) == Failure(FailureKind.TRANSIENT)
    assert classify(perdure.PermanentError("p")) == Failure(FailureKind.PERMANENT)
    assert classify(perdure.RateLimitedError(retry_after=3)) == Failure(FailureKind.RATE_LIMITED, 3)
    assert classify(perdure.RateLimitedError()) == Failure(FailureKind.RATE_LIMITED, None)
    assert classify(perdure.StepTimeoutError("slow")) == Failure(FailureKind.TIMED_OUT)

    policy = RetryPolicy()
    assert decide(policy, perdure.TransientError("t"), 1, 0, 0.5).retry
    assert not decide(policy, perdure.PermanentError("p"), 1, 0, 0.5).retry
    timed_out = decide(policy, perdure.StepTimeoutError("slow"), 2, 0, 0.5)
    assert timed_out.retry
    assert timed_out.delay == 2.0  # plain backoff
    limited = decide(policy, perdure.RateLimitedError(retry_after=3), 1, 0, 0.5)
    assert limited.retry
    assert limited.delay == 3.0  # the hint beats the 1 s backoff
    # ...and the backoff beats a smaller hint
    assert decide(policy, perdure.RateLimitedError(retry_after=3), 4, 0, 0.5).delay == 8.0


def test_a_user_subclass_keeps_its_taxonomy_class() -> None:
    class QuotaExceeded(perdure.PermanentError):
        status_code = 429  # its own class is trusted over an HTTP status it carries

    assert classify(QuotaExceeded("monthly quota")) == Failure(FailureKind.PERMANENT)


def test_other_http_statuses() -> None:
    class HTTPFailure(Exception):
        def __init__(self, status: int) -> None:
            self.status = status

    assert classify(HTTPFailure(408)).kind is FailureKind.TRANSIENT
    assert classify(HTTPFailure(409)).kind is FailureKind.TRANSIENT
    assert classify(HTTPFailure(504)).kind is FailureKind.TRANSIENT
    assert classify(HTTPFailure(403)).kind is FailureKind.PERMANENT
    assert classify(HTTPFailure(304)).kind is FailureKind.UNKNOWN
    # not an HTTP status: falls through to the other rules
    assert classify(HTTPFailure(7)).kind is FailureKind.UNKNOWN


# -- pluggable classifiers ---------------------------------------------------------------------


def test_registered_classifier_is_asked_first(classifiers: list[_retry.Classifier]) -> None:
    seen: list[BaseException] = []

    def values_are_flaky(exc: BaseException) -> Failure | None:
        seen.append(exc)
        if isinstance(exc, ValueError):
            return Failure(FailureKind.TRANSIENT)
        if isinstance(exc, perdure.PermanentError):
            return Failure(FailureKind.RATE_LIMITED, 9.0)
        return None

    perdure.register_classifier(values_are_flaky)
    assert classify(ValueError("flaky")) == Failure(FailureKind.TRANSIENT)
    assert decide(RetryPolicy(), ValueError("flaky"), 1, 0, 0.5).retry
    # asked before the built-in rules, even for perdure's own errors
    assert classify(perdure.PermanentError("p")) == Failure(FailureKind.RATE_LIMITED, 9.0)
    # None falls through to the built-in rules
    assert classify(ConnectionError("x")) == Failure(FailureKind.TRANSIENT)
    assert classify(KeyError("k")) == Failure(FailureKind.UNKNOWN)
    assert len(seen) == 5


def test_latest_registered_classifier_wins(classifiers: list[_retry.Classifier]) -> None:
    perdure.register_classifier(lambda exc: Failure(FailureKind.TRANSIENT))
    perdure.register_classifier(lambda exc: Failure(FailureKind.PERMANENT))
    assert classify(ValueError("x")) == Failure(FailureKind.PERMANENT)
    classifiers.pop(0)
    assert classify(ValueError("x")) == Failure(FailureKind.TRANSIENT)


def test_the_classifier_fixture_restores_the_registry(classifiers: list[_retry.Classifier]) -> None:
    # no classifier leaked from the tests above
    assert classify(ValueError("x")) == Failure(FailureKind.UNKNOWN)


# -- RetryPolicy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": -3},
        {"jitter": 2},
        {"jitter": -0.1},
        {"backoff": 0.5},
        {"initial_interval": -1},
        {"max_interval": -1},
    ],
)
def test_retry_policy_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(perdure.ConfigurationError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retry_policy_rejects_nan() -> None:
    # BUG: NaN passes the `< 0` / `< 1` checks. A NaN backoff or initial_interval then gives
    # waits of 0 s (max(0.0, nan) == 0.0): a retry storm instead of a backoff; a NaN
    # max_elapsed silently means "no limit".
    accepted = []
    for field in ("initial_interval", "backoff", "max_interval", "max_elapsed"):
        try:
            RetryPolicy(**{field: math.nan})  # type: ignore[arg-type]
        except perdure.ConfigurationError:
            continue
        accepted.append(field)
    assert accepted == []


def test_the_documented_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.max_interval, policy.jitter) == (5, 60.0, 0.2)
    assert policy.max_elapsed == 600.0
    assert [policy.backoff_delay(n, 0.5) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert perdure.NO_RETRY.max_attempts == 1
    assert not decide(perdure.NO_RETRY, ConnectionError("x"), 1, 0, 0.5).retry


def test_backoff_arithmetic() -> None:
    policy = RetryPolicy(initial_interval=1, backoff=2, max_interval=10, max_attempts=10)
    assert [policy.backoff_delay(n, 0.5) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    delays = [decide(policy, ConnectionError(), n, 0, 0.5).delay for n in range(1, 7)]
    assert delays == [1, 2, 4, 8, 10, 10]
    assert RetryPolicy(backoff=1, initial_interval=3).backoff_delay(5, 0.5) == 3
    assert RetryPolicy(initial_interval=0).backoff_delay(3, 0.9) == 0


def test_jitter_bounds() -> None:
    policy = RetryPolicy(initial_interval=1, backoff=2, max_interval=10, jitter=0.2)
    low = [policy.backoff_delay(n, 0.0) for n in range(1, 5)]
    high = [policy.backoff_delay(n, 0.999999) for n in range(1, 5)]
    assert low == pytest.approx([0.8, 1.6, 3.2, 6.4])
    assert high == pytest.approx([1.2, 2.4, 4.8, 9.6], rel=1e-5)
    assert all(h < b * 1.2 for h, b in zip(high, [1, 2, 4, 8], strict=True))
    no_jitter = RetryPolicy(jitter=0)
    assert no_jitter.backoff_delay(3, 0.0) == no_jitter.backoff_delay(3, 0.999) == 4


def test_jittered_wait_never_exceeds_max_interval() -> None:
    # BUG: jitter is applied after the cap, so a capped wait reaches max_interval * 1.2
    # (72 s with the defaults), although max_interval is documented as "the longest wait
    # between attempts" (only a server's Retry-After may exceed it).
    policy = RetryPolicy(initial_interval=1, backoff=2, max_interval=10, jitter=0.2)
    assert policy.backoff_delay(10, 0.999) <= 10
    assert RetryPolicy().backoff_delay(20, 0.999) <= 60


def test_backoff_survives_a_large_failure_count() -> None:
    # BUG: backoff ** (failures - 1) overflows a float (OverflowError) after ~1025 failures of
    # a "keep retrying every minute" policy, which should simply wait max_interval.
    policy = RetryPolicy(max_attempts=100_000, max_interval=60, jitter=0, max_elapsed=None)
    assert policy.backoff_delay(2_000, 0.5) == 60
    assert decide(policy, ConnectionError(), 2_000, 0, 0.5).delay == 60


def test_max_attempts_exhausted() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert decide(policy, ConnectionError(), 2, 0, 0.5).retry
    decision = decide(policy, ConnectionError(), 3, 0, 0.5)
    assert not decision.retry
    assert decision.failure.kind is FailureKind.TRANSIENT
    assert "3 of 3" in decision.reason
    assert not decide(policy, perdure.RateLimitedError(retry_after=1), 3, 0, 0.5).retry


def test_max_elapsed() -> None:
    policy = RetryPolicy(initial_interval=4, jitter=0, max_elapsed=10)
    assert decide(policy, ConnectionError(), 1, 6, 0.5).retry  # 6 + 4 == 10: still in time
    assert not decide(policy, ConnectionError(), 1, 6.5, 0.5).retry
    # a Retry-After that would land past max_elapsed gives up too
    assert not decide(policy, perdure.RateLimitedError(retry_after=11), 1, 0, 0.5).retry
    unlimited = RetryPolicy(max_elapsed=None)
    assert decide(unlimited, ConnectionError(), 1, 10**6, 0.5).retry


def test_retry_after_larger_than_max_interval_is_honoured() -> None:
    policy = RetryPolicy(max_interval=5)
    decision = decide(policy, perdure.RateLimitedError(retry_after=42), 1, 0, 0.5)
    assert decision.retry
    assert decision.delay == 42


# -- retry_after() ---------------------------------------------------------------------------

NOW = dt.datetime(2015, 10, 21, 7, 27, 30, tzinfo=dt.UTC)


def test_retry_after_parsing() -> None:
    assert retry_after(None) is None
    assert retry_after(httpx.Headers()) is None
    assert retry_after(httpx.Headers({"Retry-After": "7"})) == 7.0
    assert retry_after(httpx.Headers({"Retry-After": "2.5"})) == 2.5
    assert retry_after(httpx.Headers({"Retry-After": "0"})) == 0.0
    assert retry_after(httpx.Headers({"Retry-After-Ms": "1500"})) == 1.5
    # retry-after-ms is the more precise of the two and wins
    assert retry_after(httpx.Headers({"retry-after-ms": "250", "retry-after": "7"})) == 0.25
    # an HTTP date, in the future, in the past, without a zone (-0000: UTC)
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert retry_after(httpx.Headers({"Retry-After": date}), now=NOW) == 30.0
    assert retry_after({"retry-after": date}, now=NOW + dt.timedelta(hours=1)) == 0.0
    naive = "Wed, 21 Oct 2015 07:28:10 -0000"
    assert retry_after({"retry-after": naive}, now=NOW) == 40.0


@pytest.mark.parametrize(
    "value",
    ["-1", "-0.5", "nan", "NaN", "inf", "-inf", "1e400", "soon", "", "7 seconds", "0x10",
     "Wed, 32 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015 07:28:00 +9999"],
)  # fmt: skip
def test_retry_after_bad_values(value: str) -> None:
    assert retry_after(httpx.Headers({"Retry-After": value}), now=NOW) is None
    assert retry_after(httpx.Headers({"retry-after-ms": value}), now=NOW) is None


def test_retry_after_with_headers_that_are_not_a_mapping() -> None:
    assert retry_after(["retry-after"]) is None
    assert retry_after(object()) is None


def test_retry_after_never_raises_on_an_absurd_date() -> None:
    # BUG: parsedate_to_datetime raises OverflowError (not ValueError) on a huge year, and it
    # escapes retry_after, so one garbage header from a server crashes classify() and decide().
    value = "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"
    assert retry_after({"retry-after": value}) is None


def test_a_bad_retry_after_ms_does_not_hide_a_good_retry_after() -> None:
    # BUG (minor): an unusable retry-after-ms makes retry_after() return None without looking
    # at Retry-After; the openai and anthropic SDKs fall back to Retry-After in that case.
    for bad_ms in ("garbage", "-5", "nan"):
        assert retry_after({"retry-after-ms": bad_ms, "retry-after": "7"}) == 7.0, bad_ms


@given(st.text(max_size=60))
def test_retry_after_is_total(value: str) -> None:
    # Whatever a server sends: None, or a finite wait >= 0, never an exception.
    for name in ("retry-after", "retry-after-ms"):
        found = retry_after({name: value}, now=NOW)
        assert found is None or (math.isfinite(found) and found >= 0)
