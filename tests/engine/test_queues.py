"""Queues: admission under concurrency, per-worker and rate limits, priority, deduplication
by id, cancellation in the queue, and clear errors. Each test runs on the ``db_url`` backend.

(The same limits across several worker processes: tests/crash/test_queue_workers.py.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import perdure
from conftest import wait_until

LIMITED = perdure.Queue("test-limited", concurrency=2)
PER_WORKER = perdure.Queue("test-per-worker", worker_concurrency=1)
RATED = perdure.Queue("test-rated", rate_limit=(2, 0.5))
RANKED = perdure.Queue("test-ranked", concurrency=1, priority=True)
PLAIN = perdure.Queue("test-plain")

lock = threading.Lock()
running: list[str] = []
peak: dict[str, int] = {}
order: list[str] = []
starts: list[float] = []
release = threading.Event()


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    running.clear()
    peak.clear()
    order.clear()
    starts.clear()
    release.clear()
    yield
    release.set()


@perdure.step
def occupy(queue: str, tag: str) -> str:
    with lock:
        running.append(queue)
        peak[queue] = max(peak.get(queue, 0), running.count(queue))
        order.append(tag)
        starts.append(time.monotonic())
    try:
        release.wait(10)
    finally:
        with lock:
            running.remove(queue)
    return tag


@perdure.workflow(name="queued_job")
def queued_job(queue: str, tag: str) -> str:
    return occupy(queue, tag)


def test_enqueued_workflows_run_and_return(engine: perdure.Engine) -> None:
    release.set()
    handles = [engine.enqueue(PLAIN, queued_job, "plain", f"p{i}") for i in range(5)]
    assert [h.result(timeout=20) for h in handles] == [f"p{i}" for i in range(5)]
    assert {w.status for w in engine.list_workflows()} == {perdure.WorkflowStatus.SUCCESS}
    assert {w.queue for w in engine.list_workflows()} == {"test-plain"}


def test_a_client_only_enqueues_and_a_worker_runs(db_url: str) -> None:
    release.set()
    with perdure.Engine(db_url, recover=False) as client:
        handle = client.enqueue("test-plain", "queued_job", "plain", "from-client")
        time.sleep(0.3)
        assert handle.status() is perdure.WorkflowStatus.ENQUEUED  # no worker took it
        with perdure.Engine(db_url, shutdown_grace=0.5):
            assert handle.result(timeout=20) == "from-client"


def test_concurrency_caps_how_many_run_at_once(engine: perdure.Engine) -> None:
    handles = [engine.enqueue(LIMITED, queued_job, LIMITED.name, f"c{i}") for i in range(6)]
    wait_until(lambda: peak.get(LIMITED.name) == 2)
    time.sleep(0.3)  # room for a third to start, if the limit did not hold
    assert len(running) == 2
    queued = engine.list_workflows(status=perdure.WorkflowStatus.ENQUEUED)
    assert len(queued) == 4
    release.set()
    assert sorted(h.result(timeout=20) for h in handles) == [f"c{i}" for i in range(6)]
    assert peak[LIMITED.name] == 2


def test_worker_concurrency_caps_each_engine(db_url: str) -> None:
    with (
        perdure.Engine(db_url, shutdown_grace=0.5) as one,
        perdure.Engine(db_url, shutdown_grace=0.5),
    ):
        handles = [one.enqueue(PER_WORKER, queued_job, PER_WORKER.name, f"w{i}") for i in range(5)]
        wait_until(lambda: peak.get(PER_WORKER.name) == 2)  # one per engine
        time.sleep(0.3)
        assert len(running) == 2
        release.set()
        assert len({h.result(timeout=20) for h in handles}) == 5
        owners = {w.owner for w in one.list_workflows()}
        assert owners == {None}  # finished: nobody holds them
    assert peak[PER_WORKER.name] == 2


def test_rate_limit_spaces_out_admissions(engine: perdure.Engine) -> None:
    release.set()
    handles = [engine.enqueue(RATED, queued_job, RATED.name, f"r{i}") for i in range(6)]
    for handle in handles:
        handle.result(timeout=20)
    starts.sort()
    # at most 2 admissions in any 0.5 s window: the 3rd start is >= 0.5 s after the 1st
    for i in range(2, len(starts)):
        assert starts[i] - starts[i - 2] >= 0.45, starts
    assert starts[-1] - starts[0] >= 1.0


def test_priority_orders_the_queue(db_url: str) -> None:
    release.set()
    with perdure.Engine(db_url, recover=False) as client:
        client.enqueue(RANKED, queued_job, RANKED.name, "low", priority=5)
        client.enqueue(RANKED, queued_job, RANKED.name, "high", priority=1)
        client.enqueue(RANKED, queued_job, RANKED.name, "middle", priority=3)
        client.enqueue(RANKED, queued_job, RANKED.name, "default")  # priority 0
    with perdure.Engine(db_url, shutdown_grace=0.5) as worker:
        wait_until(lambda: len(order) == 4)
        wait_until(lambda: not worker.list_workflows(status=perdure.WorkflowStatus.RUNNING))
    assert order == ["default", "high", "middle", "low"]


def test_the_same_id_is_enqueued_once(engine: perdure.Engine) -> None:
    release.set()
    first = engine.enqueue(PLAIN, queued_job, "plain", "once", id="dedup-1")
    again = engine.enqueue(PLAIN, queued_job, "plain", "once", id="dedup-1")
    assert again.id == first.id
    assert first.result(timeout=20) == "once"
    assert engine.enqueue(PLAIN, queued_job, "plain", "once", id="dedup-1").result(1) == "once"
    assert order == ["once"]
    with pytest.raises(perdure.WorkflowConflictError, match="other inputs"):
        engine.enqueue(PLAIN, queued_job, "plain", "twice", id="dedup-1")


def test_a_workflow_cancelled_in_its_queue_never_runs(db_url: str) -> None:
    with perdure.Engine(db_url, recover=False) as client:
        handle = client.enqueue(PLAIN, queued_job, "plain", "never", id="cancel-me")
        assert client.cancel("cancel-me") is perdure.WorkflowStatus.CANCELLED
        with pytest.raises(perdure.WorkflowCancelledError, match="before it started"):
            handle.result(timeout=5)
    release.set()
    with perdure.Engine(db_url, shutdown_grace=0.5) as worker:
        time.sleep(0.4)
        assert worker.get_workflow("cancel-me").status is perdure.WorkflowStatus.CANCELLED
        # resumed, it goes back into its queue (it never left it) and runs
        assert worker.resume("cancel-me").result(timeout=20) == "never"
    assert order == ["never"]


def test_queue_misuse_is_refused_clearly(engine: perdure.Engine) -> None:
    with pytest.raises(perdure.ConfigurationError, match="not a priority queue"):
        engine.enqueue(PLAIN, queued_job, "plain", "x", priority=1)
    with pytest.raises(perdure.ConfigurationError, match="positive integer"):
        perdure.Queue("bad", concurrency=0)
    with pytest.raises(perdure.ConfigurationError, match="rate_limit"):
        perdure.Queue("bad", rate_limit=(5, 0))
    with pytest.raises(perdure.ConfigurationError, match="other settings"):
        perdure.Queue("test-limited", concurrency=3)
    assert perdure.Queue("test-limited", concurrency=2) == LIMITED  # same settings: fine
    with pytest.raises(perdure.UnknownWorkflowError):
        engine.start("no_such_workflow")


def test_a_client_without_the_code_enqueues_by_name(engine: perdure.Engine) -> None:
    """A workflow name unknown to the enqueuing process is recorded as given; a worker that
    has the code binds the arguments (here the same engine: its registry has the name)."""
    release.set()
    unknown = engine.enqueue("test-unknown-queue", "not_registered_anywhere", 1, x=2)
    assert unknown.status() is perdure.WorkflowStatus.ENQUEUED
    handle = engine.enqueue(PLAIN, "queued_job", "plain", tag="by-name")
    assert handle.result(timeout=20) == "by-name"
