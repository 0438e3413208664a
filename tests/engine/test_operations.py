"""The admin operations (perdure._operations) shared by the CLI and the HTTP API, on both
backends: retry runs again only the step whose failure ended the workflow (forgotten in the
reset's transaction; a handled failure, a message and a side effect journaled before or after
it replay), resume and its state checks, cancellation from a process that is not a worker,
listing by creation time, and the ``show`` document.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

import perdure
from conftest import wait_until
from perdure._operations import Operations, WorkflowStateError, error_code, failed_step
from perdure.store import open_store

runs: Counter[str] = Counter()
fixed = threading.Event()


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    runs.clear()
    fixed.clear()
    yield


@perdure.step
def ops_prepare(n: int) -> int:
    runs["prepare"] += 1
    return n * 2


@perdure.step(retry=perdure.RetryPolicy(max_attempts=2, initial_interval=0.01, jitter=0))
def ops_fragile(n: int) -> int:
    runs["fragile"] += 1
    if not fixed.is_set():
        raise perdure.PermanentError(f"the service refused {n}")
    return n + 1


@perdure.step
def ops_finish(n: int) -> int:
    runs["finish"] += 1
    return n * 10


@perdure.workflow(name="ops_flow")
def ops_flow(n: int) -> int:
    return ops_finish(ops_fragile(ops_prepare(n)))


def test_retry_runs_the_failed_step_again_and_replays_the_ones_before(
    engine: perdure.Engine,
) -> None:
    handle = engine.start(ops_flow, 4, id="retried")
    with pytest.raises(perdure.PermanentError, match="refused 8"):
        handle.result(timeout=20)
    assert runs == {"prepare": 1, "fragile": 1}
    ops = Operations(open_store(engine.url))  # like the CLI: a store, no engine
    plain = Operations(ops.store)
    fixed.set()  # the cause is fixed; a plain resume would replay the recorded failure
    info = plain.resume("retried", retry_failed_step=True)
    assert info.status in (perdure.WorkflowStatus.PENDING, perdure.WorkflowStatus.RUNNING)
    assert handle.result(timeout=30) == 90  # a worker (the engine) picked it up
    assert runs == {"prepare": 1, "fragile": 2, "finish": 1}
    steps = engine.list_steps("retried")
    assert [(s.position, s.name, s.status) for s in steps] == [
        (0, "ops_prepare", "SUCCESS"), (1, "ops_fragile", "SUCCESS"), (2, "ops_finish", "SUCCESS"),
    ]  # fmt: skip
    assert engine.list_attempts("retried") == []  # the forgotten step's attempts went with it
    ops.store.close()


def test_a_plain_resume_replays_the_failure_and_retry_through_an_engine_does_not(
    engine: perdure.Engine,
) -> None:
    handle = engine.start(ops_flow, 1, id="replayed")
    with pytest.raises(perdure.PermanentError):
        handle.result(timeout=20)
    fixed.set()
    with pytest.raises(perdure.PermanentError, match="refused 2"):
        engine.resume("replayed").result(timeout=20)  # the recorded failure replays
    assert runs["fragile"] == 1
    assert engine.resume("replayed", retry_failed_step=True).result(timeout=20) == 30
    assert runs == {"prepare": 1, "fragile": 2, "finish": 1}


@perdure.step
def ops_maybe(n: int) -> int:
    runs["maybe"] += 1
    if not fixed.is_set():
        raise perdure.PermanentError("not yet")
    return n


@perdure.step
def ops_charge(n: int) -> int:
    runs["charge"] += 1  # a side effect that must not run twice
    return n


@perdure.workflow(name="ops_message_flow")
def ops_message_flow(code_fails: bool) -> str:
    with contextlib.suppress(perdure.PermanentError):
        ops_maybe(1)  # a failure the workflow handles: it goes on
    message = perdure.receive("go", timeout=30)
    ops_charge(2)
    if code_fails and not fixed.is_set():
        raise RuntimeError(f"got {message!r} but the cause is not fixed")
    ops_fragile(3)
    return f"done with {message}"


def test_retry_runs_again_only_the_step_whose_failure_ended_the_workflow(
    engine: perdure.Engine,
) -> None:
    handle = engine.start(ops_message_flow, False, id="ended-by-a-step")
    engine.send("ended-by-a-step", "go", "m1")
    with pytest.raises(perdure.PermanentError, match="refused 3"):
        handle.result(timeout=20)
    fixed.set()
    failed = failed_step(engine.store, "ended-by-a-step")
    assert failed is not None and failed.name == "ops_fragile"
    Operations(engine.store, engine).resume("ended-by-a-step", retry_failed_step=True)
    assert handle.result(timeout=30) == "done with m1"
    # the handled failure of ops_maybe replayed, the message and the charge replayed: only
    # the step whose failure ended the run ran again
    assert runs == {"maybe": 1, "charge": 1, "fragile": 2}
    steps = {s.name: s for s in engine.list_steps("ended-by-a-step")}
    assert steps["ops_maybe"].status == "ERROR" and steps["ops_fragile"].status == "SUCCESS"


def test_retry_of_a_workflow_its_own_code_failed_forgets_nothing(
    engine: perdure.Engine,
) -> None:
    handle = engine.start(ops_message_flow, True, id="ended-by-its-code")
    engine.send("ended-by-its-code", "go", "m2")
    with pytest.raises(RuntimeError, match="got 'm2'"):
        handle.result(timeout=20)
    assert failed_step(engine.store, "ended-by-its-code") is None  # no step ended it
    fixed.set()
    Operations(engine.store, engine).resume("ended-by-its-code", retry_failed_step=True)
    assert handle.result(timeout=30) == "done with m2"
    assert runs == {"maybe": 1, "charge": 1, "fragile": 1}  # nothing ran twice


def test_resume_and_retry_refuse_a_workflow_that_did_not_fail(engine: perdure.Engine) -> None:
    fixed.set()
    engine.run(ops_flow, 2, id="fine", timeout=20)
    ops = Operations(engine.store)
    for retry in (False, True):
        with pytest.raises(WorkflowStateError, match="is SUCCESS") as caught:
            ops.resume("fine", retry_failed_step=retry)
        assert error_code(caught.value) == ("invalid_state", 409, 1)
    with pytest.raises(perdure.WorkflowNotFound) as missing:
        ops.resume("nope")
    assert error_code(missing.value) == ("workflow_not_found", 404, 1)


@perdure.workflow(name="ops_waiting_flow")
def ops_waiting_flow() -> str:
    return str(perdure.receive("never", timeout=60))


def test_cancel_from_a_process_without_an_engine_reaches_the_worker(
    engine: perdure.Engine,
) -> None:
    handle = engine.start(ops_waiting_flow, id="cancelled")
    wait_until(lambda: engine.get_workflow("cancelled").status == "WAITING", timeout=10)
    outside = open_store(engine.url)
    try:
        assert Operations(outside).cancel("cancelled") is perdure.WorkflowStatus.WAITING
    finally:
        outside.close()
    with pytest.raises(perdure.WorkflowCancelledError):
        handle.result(timeout=30)
    assert engine.get_workflow("cancelled").status == "CANCELLED"


def test_list_since_and_the_show_document(engine: perdure.Engine) -> None:
    fixed.set()
    engine.run(ops_flow, 3, id="old", timeout=20)
    cut = dt.datetime.now(dt.UTC)
    engine.run(ops_flow, 5, id="new", timeout=20)
    ops = Operations(engine.store)
    assert [w.id for w in ops.list_workflows(since=cut)] == ["new"]
    assert [w.id for w in ops.list_workflows()] == ["new", "old"]
    with pytest.raises(perdure.ConfigurationError, match="time zone"):
        ops.list_workflows(since=dt.datetime(2026, 1, 1))  # noqa: DTZ001
    shown = ops.describe("new")
    assert shown["id"] == "new" and shown["status"] == "SUCCESS"
    assert [s["name"] for s in shown["steps"]] == ["ops_prepare", "ops_fragile", "ops_finish"]
    assert shown["retrying"] == [] and shown["usage"]["model_calls"] == 0
    assert ops.result("new") == {"id": "new", "status": "SUCCESS", "output": 110}
