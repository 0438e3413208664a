"""Failures in one process: retries by the taxonomy, Retry-After on a fake clock, exhausted
policies, timeouts, cancellation, compensation and deadlines. (Crash variants of these live in
tests/crash/test_failure_crashes.py.)"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import perdure
from conftest import wait_until
from perdure.testing import FakeClock

calls: Counter[str] = Counter()
ledger: list[str] = []
release = threading.Event()


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    calls.clear()
    ledger.clear()
    release.clear()
    yield
    release.set()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(db_url: str, clock: FakeClock) -> Iterator[perdure.Engine]:
    with perdure.Engine(db_url, clock=clock, shutdown_grace=0.3) as eng:
        yield eng


FAST = perdure.RetryPolicy(
    max_attempts=4, initial_interval=10, backoff=2, jitter=0, max_elapsed=None
)


@perdure.step(retry=FAST)
def flaky(fail_times: int) -> str:
    calls["flaky"] += 1
    if calls["flaky"] <= fail_times:
        raise perdure.TransientError(f"flake {calls['flaky']}")
    return f"ok after {calls['flaky']}"


@perdure.workflow(name="fail_retry_flow")
def retry_flow(fail_times: int) -> str:
    return flaky(fail_times)


def test_transient_failures_are_retried_with_backoff_then_succeed(
    engine: perdure.Engine, clock: FakeClock
) -> None:
    handle = engine.start(retry_flow, 2)
    assert handle.result(timeout=10) == "ok after 3"
    assert calls["flaky"] == 3
    assert clock.sleeps == [10.0, 20.0]  # the policy's backoff, waited on the fake clock
    [step] = engine.list_steps(handle.id)
    assert (step.status, step.attempts) == (perdure.StepStatus.SUCCESS, 3)


class BadInput(Exception):
    pass


@perdure.step(retry=FAST)
def validate(kind: str) -> None:
    calls[kind] += 1
    if kind == "permanent":
        raise perdure.PermanentError("the request is malformed")
    raise BadInput("no such customer")  # not classified: a bug or bad input, not retried


@perdure.workflow(name="fail_permanent_flow")
def permanent_flow(kind: str) -> str:
    try:
        validate(kind)
    except (perdure.PermanentError, BadInput) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "passed"


@pytest.mark.parametrize("kind", ["permanent", "unknown"])
def test_permanent_and_unknown_errors_are_not_retried(
    engine: perdure.Engine, clock: FakeClock, kind: str
) -> None:
    result = engine.run(permanent_flow, kind, timeout=10)
    expected = "PermanentError" if kind == "permanent" else "BadInput"
    assert result.startswith(expected)  # the original exception, not StepFailedError
    assert calls[kind] == 1
    assert clock.sleeps == []


@perdure.step(retry=FAST)
def rate_limited() -> str:
    calls["rate"] += 1
    if calls["rate"] == 1:
        raise perdure.RateLimitedError("slow down", retry_after=3600)
    return "served"


@perdure.workflow(name="fail_rate_flow")
def rate_flow() -> str:
    return rate_limited()


def test_retry_after_is_honoured_on_a_fake_clock(engine: perdure.Engine, clock: FakeClock) -> None:
    started = time.monotonic()
    assert engine.run(rate_flow, timeout=10) == "served"
    assert clock.sleeps == [3600.0]  # the hint wins over the policy's 10 s (and max_interval)
    assert time.monotonic() - started < 5  # an hour of backoff, in milliseconds


class RateLimitServer:
    """Answers 429 with Retry-After: 7200 a given number of times, then 200."""

    def __init__(self, limited: int) -> None:
        self.limited = limited
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits += 1
                if server.hits <= server.limited:
                    self.send_response(429)
                    self.send_header("Retry-After", "7200")
                    body = b'{"error": "rate limited"}'
                else:
                    self.send_response(200)
                    body = json.dumps({"answer": 42}).encode()
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/answer"


@perdure.step(retry=FAST)
def ask_service(url: str) -> dict[str, int]:
    response = httpx.get(url)
    response.raise_for_status()  # an unwrapped httpx error: classified as rate-limited
    data: dict[str, int] = response.json()
    return data


@perdure.workflow(name="fail_http_flow")
def http_flow(url: str) -> int:
    return ask_service(url)["answer"]


def test_an_http_429_retry_after_from_a_real_client_is_honoured(
    engine: perdure.Engine, clock: FakeClock
) -> None:
    server = RateLimitServer(limited=2)
    try:
        assert engine.run(http_flow, server.url, timeout=10) == 42
    finally:
        server.http.shutdown()
        server.http.server_close()
    assert server.hits == 3
    assert clock.sleeps == [7200.0, 7200.0]


@perdure.step(retry=perdure.RetryPolicy(max_attempts=3, initial_interval=1, jitter=0))
def always_down() -> str:
    calls["down"] += 1
    raise ConnectionError(f"refused #{calls['down']}")


@perdure.step
def gate() -> str:
    calls["gate"] += 1
    release.wait(30)
    return "open"


@perdure.workflow(name="fail_exhausted_flow")
def exhausted_flow() -> dict[str, Any]:
    try:
        always_down()
        outcome: dict[str, Any] = {"caught": None}
    except perdure.StepFailedError as exc:
        outcome = {"caught": [exc.step, exc.attempts, exc.error_type, exc.error_message]}
    outcome["after"] = gate()
    return outcome


def test_an_exhausted_policy_raises_step_failed_and_replays_it(db_url: str) -> None:
    clock = FakeClock()
    with perdure.Engine(db_url, clock=clock, shutdown_grace=0.1) as first:
        first.start(exhausted_flow, id="ex")
        wait_until(lambda: calls["gate"] == 1)
        [failed] = first.list_steps("ex")
    assert calls["down"] == 3
    assert (failed.status, failed.attempts) == (perdure.StepStatus.ERROR, 3)
    assert failed.error is not None and failed.error.type.endswith("StepFailedError")
    release.set()
    with perdure.Engine(db_url, clock=clock) as second:
        result = second.handle("ex").result(timeout=10)
    assert result["caught"] == ["always_down", 3, "builtins.ConnectionError", "refused #3"]
    assert result["after"] == "open"
    assert calls["down"] == 3  # replay raised the recorded StepFailedError; nothing re-ran


@perdure.step(timeout=0.2, retry=perdure.NO_RETRY)
def hangs() -> str:
    calls["hangs"] += 1
    release.wait(60)  # blocks "forever" (until the test ends)
    return "late"


@perdure.workflow(name="fail_timeout_flow")
def timeout_flow() -> str:
    try:
        return hangs()
    except perdure.StepTimeoutError as exc:
        return f"timed out: {exc}"


def test_a_sync_step_that_blocks_forever_times_out_and_its_late_result_is_dropped(
    engine: perdure.Engine,
) -> None:
    handle = engine.start(timeout_flow)
    assert handle.result(timeout=10).startswith("timed out: step 'hangs' ran longer than")
    release.set()  # the abandoned thread returns now; its result must go nowhere
    time.sleep(0.2)
    [step] = engine.list_steps(handle.id)
    assert step.status is perdure.StepStatus.ERROR and step.error is not None
    assert step.error.type.endswith("StepTimeoutError")
    assert calls["hangs"] == 1


@perdure.step(timeout=0.1, retry=perdure.RetryPolicy(max_attempts=2, initial_interval=0))
async def slow_async() -> str:
    calls["slow_async"] += 1
    await asyncio.sleep(30)
    return "never"


@perdure.workflow(name="fail_async_timeout_flow")
async def async_timeout_flow() -> str:
    try:
        return await slow_async()
    except perdure.StepFailedError as exc:
        return exc.error_type


def test_an_async_step_times_out_and_is_retried(engine: perdure.Engine) -> None:
    assert engine.run(async_timeout_flow, timeout=10) == "perdure._errors.StepTimeoutError"
    assert calls["slow_async"] == 2


def test_options_override_the_policy_for_one_call(engine: perdure.Engine) -> None:
    @perdure.workflow(name="fail_options_flow")
    def options_flow() -> str:
        try:
            return flaky.options(retry=perdure.NO_RETRY)(1)
        except perdure.TransientError as exc:
            return f"no retry: {exc}"

    assert engine.run(options_flow, timeout=10) == "no retry: flake 1"
    assert calls["flaky"] == 1


def test_the_engine_default_policy_applies_to_steps_without_one(db_url: str) -> None:
    @perdure.step
    def default_flaky() -> str:
        calls["default"] += 1
        raise perdure.TransientError("x")

    @perdure.workflow(name="fail_default_flow")
    def default_flow() -> int:
        try:
            default_flaky()
        except perdure.StepFailedError as exc:
            return exc.attempts
        return 0

    policy = perdure.RetryPolicy(max_attempts=2, initial_interval=0)
    with perdure.Engine(db_url, retry=policy) as engine:
        assert engine.run(default_flow, timeout=10) == 2
    assert calls["default"] == 2


# -- cancellation and compensation -----------------------------------------------------------


@perdure.step
def book(item: str) -> str:
    ledger.append(f"book {item}")
    return f"booking-{item}"


@perdure.step
def unbook(booking: str) -> None:
    ledger.append(f"undo {booking}")


@perdure.workflow(name="fail_saga_flow")
def saga_flow(fail: bool) -> str:
    for item in ("flight", "hotel"):
        perdure.compensate(unbook, book(item))
    if fail:
        raise RuntimeError("payment declined")
    gate()
    return book("car")


def test_a_failing_workflow_runs_its_compensations_newest_first(engine: perdure.Engine) -> None:
    handle = engine.start(saga_flow, True)
    with pytest.raises(RuntimeError, match="payment declined"):
        handle.result(timeout=10)
    assert ledger == ["book flight", "book hotel", "undo booking-hotel", "undo booking-flight"]
    names = [s.name for s in engine.list_steps(handle.id)]
    assert names == ["book", "book", "unbook", "unbook"]  # compensations are journaled steps


def test_cancel_stops_a_sync_workflow_at_its_next_step_and_compensates(
    engine: perdure.Engine,
) -> None:
    handle = engine.start(saga_flow, False)
    wait_until(lambda: calls["gate"] == 1)
    assert engine.cancel(handle.id) is perdure.WorkflowStatus.RUNNING
    release.set()  # the in-flight sync step finishes; the next step must not start
    with pytest.raises(perdure.WorkflowCancelledError):
        handle.result(timeout=10)
    assert handle.status() is perdure.WorkflowStatus.CANCELLED
    assert "book car" not in ledger
    assert ledger[-2:] == ["undo booking-hotel", "undo booking-flight"]
    assert engine.cancel(handle.id) is perdure.WorkflowStatus.CANCELLED  # already done
    with pytest.raises(perdure.WorkflowNotFound):
        engine.cancel("no-such-id")


@perdure.step
async def reserve(item: str) -> str:
    ledger.append(f"reserve {item}")
    return item


@perdure.step
async def release_item(item: str) -> None:
    ledger.append(f"release {item}")


@perdure.step
async def wait_forever() -> str:
    calls["wait_forever"] += 1
    await asyncio.sleep(60)
    ledger.append("wait_forever finished")
    return "done"


@perdure.workflow(name="fail_async_cancel_flow")
async def async_cancel_flow() -> str:
    perdure.compensate(release_item, await reserve("seat"))
    return await wait_forever()


def test_cancel_cancels_an_in_flight_async_step(engine: perdure.Engine) -> None:
    handle = engine.start(async_cancel_flow)
    wait_until(lambda: calls["wait_forever"] == 1)
    engine.cancel(handle.id)
    with pytest.raises(perdure.WorkflowCancelledError):
        handle.result(timeout=10)
    assert ledger == ["reserve seat", "release seat"]  # the sleeping step never finished
    assert [s.name for s in engine.list_steps(handle.id)] == ["reserve", "release_item"]


@perdure.workflow(name="fail_deadline_flow", deadline=3600)
def deadline_flow() -> str:
    perdure.compensate(unbook, book("room"))
    try:
        policy = perdure.RetryPolicy(
            max_attempts=99,
            initial_interval=1000,
            max_interval=1000,
            backoff=1,
            jitter=0,
            max_elapsed=None,
        )
        always_down.options(retry=policy)()
    except perdure.StepFailedError:
        return "should not get here"
    return "nor here"


def test_a_deadline_stops_retries_and_fails_the_run(
    engine: perdure.Engine, clock: FakeClock
) -> None:
    handle = engine.start(deadline_flow)
    with pytest.raises(perdure.DeadlineExceededError, match="ran past its deadline"):
        handle.result(timeout=10)
    assert calls["down"] == 4  # attempts at 0, 1000, 2000, 3000 s; the next would be late
    assert ledger == ["book room", "undo booking-room"]
    assert handle.status() is perdure.WorkflowStatus.ERROR


def test_compensate_needs_a_step(engine: perdure.Engine, tmp_path: Path) -> None:
    @perdure.workflow(name="fail_bad_compensation")
    def bad() -> None:
        perdure.compensate(print, "not a step")

    with pytest.raises(perdure.ConfigurationError, match=r"needs a @perdure\.step"):
        engine.run(bad, timeout=10)


@perdure.step(retry=perdure.RetryPolicy(max_attempts=5, initial_interval=1, max_elapsed=600))
def limited_for_an_hour() -> str:
    calls["hour"] += 1
    raise perdure.RateLimitedError("come back in an hour", retry_after=3600)


@perdure.workflow(name="fail_elapsed_flow")
def elapsed_flow() -> str:
    try:
        return limited_for_an_hour()
    except perdure.RateLimitedError as exc:
        return f"gave up: {exc}"


def test_a_retry_after_beyond_max_elapsed_gives_up_at_once(
    engine: perdure.Engine, clock: FakeClock
) -> None:
    assert engine.run(elapsed_flow, timeout=10) == "gave up: come back in an hour"
    assert calls["hour"] == 1 and clock.sleeps == []


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(perdure.ConfigurationError):
        perdure.RetryPolicy(max_attempts=0)
    with pytest.raises(perdure.ConfigurationError):
        perdure.step(timeout=0)


broken = {"yes": True}


@perdure.workflow(name="fail_resumable_flow")
def resumable_flow() -> str:
    receipt = book("desk")
    if broken["yes"]:
        raise RuntimeError("a bug after the booking")
    return receipt


def test_resume_runs_a_failed_workflow_again_from_its_journal(engine: perdure.Engine) -> None:
    broken["yes"] = True
    handle = engine.start(resumable_flow)
    with pytest.raises(RuntimeError):
        handle.result(timeout=10)
    broken["yes"] = False  # the bug is fixed and deployed
    assert engine.resume(handle.id).result(timeout=10) == "booking-desk"
    assert ledger == ["book desk"]  # the booking replayed from the journal, not run again
    with pytest.raises(perdure.WorkflowStateError, match="only ERROR, CANCELLED and DEAD_LETTER"):
        engine.resume(handle.id)


class EngineLevelCrash(BaseException):
    """Escapes workflow code like an engine-level failure (not an ordinary exception)."""


@perdure.step
def explodes() -> None:
    calls["explodes"] += 1
    raise EngineLevelCrash("dies every time")


@perdure.workflow(name="fail_crash_loop")
def crash_loop() -> None:
    explodes()


def test_a_run_that_crashes_every_time_in_process_is_dead_lettered(db_url: str) -> None:
    with perdure.Engine(
        db_url, max_recoveries=2, recovery_interval=0.1, heartbeat_interval=0.05,
        lease_seconds=1,
    ) as engine:  # fmt: skip
        handle = engine.start(crash_loop)
        with pytest.raises(perdure.DeadLetteredError, match="limit 2"):
            handle.result(timeout=20)
        assert handle.status() is perdure.WorkflowStatus.DEAD_LETTER
    assert calls["explodes"] == 3  # the first run and two more, never a crash loop
