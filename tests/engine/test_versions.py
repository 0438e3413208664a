"""Code versions: every run records the version of the code that started it, and a process
resumes only runs of versions it can run (its own, or those it declares compatible).

Runs are interrupted in-process by closing the engine while the workflow waits for a
message (closing releases it); the next engine, of another version, must leave it alone.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import pytest

import perdure
from conftest import wait_until
from perdure._decorators import spec_of
from perdure._versions import source_version

ledger: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    ledger.clear()


@perdure.step
def before() -> str:
    ledger["before"] += 1
    return "before"


@perdure.step
def after(message: str) -> str:
    ledger["after"] += 1
    return f"after {message}"


@perdure.workflow(name="versioned_flow")
def versioned_flow() -> str:
    before()
    message = perdure.receive("go")
    return after(str(message))


queue = perdure.Queue("versions_queue")


def _engine(db_url: str, **options: Any) -> perdure.Engine:
    """An engine that looks for work often, so a test of 'left alone' can wait briefly."""
    options.setdefault("recovery_interval", 0.2)
    options.setdefault("poll_interval", 0.05)
    return perdure.Engine(db_url, shutdown_grace=0.2, suspend_after=0.0, **options)


def _left_waiting(db_url: str, version: str) -> None:
    """Start versioned_flow under ``version`` and leave it WAITING for its message."""
    with _engine(db_url, version=version) as first:
        first.start(versioned_flow, id="wf")
        wait_until(lambda: first.get_workflow("wf").status is perdure.WorkflowStatus.WAITING)


def test_a_run_records_the_source_version_or_the_application_version(db_url: str) -> None:
    spec = spec_of(versioned_flow)
    assert spec is not None
    with _engine(db_url) as engine:
        engine.start(versioned_flow, id="hashed")
        assert engine.get_workflow("hashed").version == source_version(spec)
    with _engine(db_url, version="2026.11.2") as engine:
        engine.start(versioned_flow, id="named")
        assert engine.get_workflow("named").version == "2026.11.2"
    assert source_version(spec).startswith("src-") and len(source_version(spec)) == 16


def test_the_source_version_follows_the_source_and_the_step_names() -> None:
    def make(step_name: str, extra: bool) -> Any:
        @perdure.step(name=step_name)
        def work() -> int:
            return 1

        @perdure.workflow(name=f"hash_probe_{step_name}_{extra}")
        def probe() -> int:
            return work()

        return probe

    one, same_source_other_step = make("work_a", False), make("work_b", False)
    spec_one, spec_other = spec_of(one), spec_of(same_source_other_step)
    assert spec_one is not None and spec_other is not None
    assert source_version(spec_one) == source_version(spec_one)  # stable
    # the same source text, calling a step of another name: another version
    spec_other.name = spec_one.name
    assert source_version(spec_one) != source_version(spec_other)


def test_another_version_leaves_the_run_alone_and_reports_it(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    _left_waiting(db_url, "v1")
    caplog.set_level(logging.WARNING, logger="perdure")
    with _engine(db_url, version="v2") as other:
        other.send("wf", "go", "now")  # the message is there: only the version holds it back
        time.sleep(1.0)  # several recovery sweeps and wake-up polls
        assert other.get_workflow("wf").status is perdure.WorkflowStatus.WAITING
        assert ledger["after"] == 0
        assert ("versioned_flow", "v1", 1) in other.store.version_counts()
    assert any(
        "started by code version 'v1'" in r.getMessage() and "'v2'" in r.getMessage()
        for r in caplog.records
    )
    with _engine(db_url, version="v1") as same:  # the right version takes it
        assert same.handle("wf").result(timeout=10) == "after now"
    assert ledger == Counter({"before": 1, "after": 1})


def test_a_declared_compatible_version_is_resumed(db_url: str) -> None:
    _left_waiting(db_url, "v1")
    with _engine(db_url, version="v2", compatible_versions=["v1"]) as newer:
        newer.send("wf", "go", "now")
        assert newer.handle("wf").result(timeout=10) == "after now"
        assert newer.get_workflow("wf").version == "v1"  # the run keeps what started it
    assert ledger == Counter({"before": 1, "after": 1})


def test_any_version_is_resumed_when_told(db_url: str) -> None:
    _left_waiting(db_url, "v1")
    with _engine(db_url, version="v3", compatible_versions="any") as anything:
        anything.send("wf", "go", "x")
        assert anything.handle("wf").result(timeout=10) == "after x"


def test_a_released_run_of_another_version_is_not_taken_by_start_or_resume(db_url: str) -> None:
    _left_waiting(db_url, "v1")
    with _engine(db_url, version="v2") as other:
        handle = other.start(versioned_flow, id="wf")  # the same run: found, not taken
        other.send("wf", "go", "now")
        time.sleep(0.5)
        assert handle.status() is perdure.WorkflowStatus.WAITING
    assert ledger["after"] == 0


def test_a_queued_run_records_the_version_of_the_worker_that_takes_it(db_url: str) -> None:
    with _engine(db_url, version="client", recover=False) as client:
        client.enqueue(queue, versioned_flow, id="queued")
        assert client.get_workflow("queued").version == "client"
    with _engine(db_url, version="worker-7") as worker:
        wait_until(lambda: worker.get_workflow("queued").status is perdure.WorkflowStatus.WAITING)
        assert worker.get_workflow("queued").version == "worker-7"
        worker.send("queued", "go", "q")
        assert worker.handle("queued").result(timeout=10) == "after q"


def test_bad_version_options_are_refused() -> None:
    with pytest.raises(perdure.ConfigurationError, match="non-empty string"):
        perdure.Engine("sqlite:///unused.db", version="")
    with pytest.raises(perdure.ConfigurationError, match="'any'"):
        perdure.Engine("sqlite:///unused.db", compatible_versions="all")  # type: ignore[arg-type]


@perdure.workflow(name="versioned_failing")
def versioned_failing() -> str:
    before()
    raise RuntimeError("a bug, fixed by the next deploy")


def test_engine_resume_adopts_the_resuming_code_version(db_url: str) -> None:
    with _engine(db_url, version="v1") as old, pytest.raises(RuntimeError):
        old.run(versioned_failing, id="bug", timeout=10)
    with _engine(db_url, version="v2") as fixed:
        handle = fixed.resume("bug")  # an explicit resume here: this code runs it
        with pytest.raises(RuntimeError):
            handle.result(timeout=10)  # (still failing: the test's code did not change)
        assert fixed.get_workflow("bug").version == "v2"
    assert ledger["before"] == 1  # replayed, not run again
