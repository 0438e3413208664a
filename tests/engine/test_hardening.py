"""Hardening from a correctness review: each test pins a behaviour the issue or the docs
promise that an earlier version got wrong (stranded runs, swallowed non-determinism,
first-run values differing from replayed ones, work stolen from a live worker...).

To force a replay in-process a workflow blocks inside ``rev_block`` (a sync step gated on
``GATE``), the first engine is closed (which releases the workflow) and a second engine on
the same database resumes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pydantic
import pytest

import perdure
from conftest import wait_until
from perdure import _serialize
from perdure._clock import DatabaseClock
from perdure.store.sqlite import SQLiteStore
from perdure.testing import FakeClock

COUNTS: Counter[str] = Counter()
GATE = threading.Event()


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    COUNTS.clear()
    GATE.clear()
    yield
    GATE.set()  # wake any thread an engine abandoned at close


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'rev.db'}"


@perdure.step(name="rev_block")
def rev_block() -> str:
    COUNTS["block"] += 1
    GATE.wait(60)
    return "unblocked"


@perdure.step(name="rev_async_block")
async def rev_async_block() -> str:
    COUNTS["async_block"] += 1
    while not GATE.is_set():
        await asyncio.sleep(0.01)
    return "unblocked"


def run_then_resume(url: str, fn: Any, *args: Any, wait_for: str = "block", **kw: Any) -> Any:
    """Start ``fn`` in a first engine, let it block, stop the engine, resume in a second."""
    with perdure.Engine(url, shutdown_grace=0.1) as first:
        first.start(fn, *args, id="r", **kw)
        wait_until(lambda: COUNTS[wait_for] == 1)
    GATE.set()
    with perdure.Engine(url) as second:
        return second.handle("r").result(timeout=10)


# -- 1. concurrent branches: positions depend on timing -> silent wrong replay --------------


@perdure.step(name="rev_fetch")
async def rev_fetch(topic: str, delay: float) -> str:
    await asyncio.sleep(delay)
    return f"doc about {topic}"


@perdure.step(name="rev_summarize")
async def rev_summarize(doc: str) -> str:
    return f"summary of {doc}"


async def _branch(topic: str, delay: float) -> str:
    return await rev_summarize(await rev_fetch(topic, delay))


@perdure.workflow(name="rev_branches")
async def rev_branches() -> list[str]:
    # Two concurrent multi-step branches (the usual "research several topics at once").
    results = await asyncio.gather(_branch("x", 0.2), _branch("y", 0.0))
    await rev_async_block()
    return list(results)


def test_rev_concurrent_branches_do_not_fail_replay_of_unchanged_code(url: str) -> None:
    # Before: NonDeterminismError on unchanged code (replayed steps return without yielding,
    # so branch x reserves position 1 before branch y does), and the run is marked ERROR.
    result = run_then_resume(url, rev_branches, wait_for="async_block")
    assert result == ["summary of doc about x", "summary of doc about y"]


@perdure.step(name="rev_llm")
async def rev_llm(prompt: str, delay: float) -> str:
    await asyncio.sleep(delay)
    return f"answer to {prompt}"


async def _two_calls(topic: str, delay: float) -> list[str]:
    first = await rev_llm(f"{topic}-1", delay)
    second = await rev_llm(f"{topic}-2", 0.0)
    return [first, second]


@perdure.workflow(name="rev_llm_branches")
async def rev_llm_branches() -> list[list[str]]:
    results = await asyncio.gather(_two_calls("x", 0.2), _two_calls("y", 0.0))
    await rev_async_block()
    return list(results)


def test_rev_concurrent_branches_replay_the_right_results(url: str) -> None:
    # Same step name in both branches, so no NonDeterminismError: today the replay silently
    # returns [["answer to x-1", "answer to y-1"], ["answer to y-2", "answer to x-2"]].
    result = run_then_resume(url, rev_llm_branches, wait_for="async_block")
    assert result == [["answer to x-1", "answer to x-2"], ["answer to y-1", "answer to y-2"]]


# -- 2. a store error inside a step commit becomes a terminal workflow failure -------------


@perdure.step(name="rev_once")
def rev_once() -> str:
    COUNTS["once"] += 1
    return "value"


@perdure.workflow(name="rev_commit_flow")
def rev_commit_flow() -> str:
    return rev_once()


def _fail_first_call(obj: Any, method: str, monkeypatch: pytest.MonkeyPatch,
                     when: Callable[..., bool] = lambda *a: True) -> None:  # fmt: skip
    real = getattr(obj, method)
    state = {"failed": False}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if not state["failed"] and when(*args):
            state["failed"] = True
            raise perdure.StoreUnavailableError("SQLite database: database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, method, flaky)


def test_rev_transient_store_error_in_step_commit_is_not_terminal(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with perdure.Engine(url, heartbeat_interval=0.1, recovery_interval=0.2) as engine:
        _fail_first_call(engine.store, "append_step", monkeypatch)
        handle = engine.start(rev_commit_flow)
        # A lock held a little past busy_timeout must not fail the run for good.
        assert handle.result(timeout=10) == "value"


# -- 3. a store error in finish strands the run: RUNNING, owned by a live worker ------------


def test_rev_store_error_in_finish_does_not_strand_the_workflow(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with perdure.Engine(url, heartbeat_interval=0.1, recovery_interval=0.2) as engine:
        _fail_first_call(engine.store, "finish_workflow", monkeypatch)
        handle = engine.start(rev_commit_flow)
        # Before: ResultTimeoutError; the row stays RUNNING, owner = this (live) worker, and
        # no sweep ever takes it (claims skip `owner = me`).
        assert handle.result(timeout=5) == "value"


# -- 4. a CancelledError raised by user code strands the run --------------------------------


@perdure.step(name="rev_awaits_cancelled_task")
async def rev_awaits_cancelled_task() -> str:
    inner = asyncio.ensure_future(asyncio.sleep(10))
    inner.cancel()
    await inner  # raises CancelledError: not a shutdown, just user code
    return "not reached"


@perdure.workflow(name="rev_cancel_flow")
async def rev_cancel_flow() -> str:
    return await rev_awaits_cancelled_task()


def test_rev_cancelled_error_from_user_code_does_not_strand_the_workflow(url: str) -> None:
    with perdure.Engine(url, heartbeat_interval=0.1, recovery_interval=0.2) as engine:
        handle = engine.start(rev_cancel_flow)
        try:
            handle.result(timeout=5)
        except perdure.ResultTimeoutError:
            info = engine.get_workflow(handle.id)
            pytest.fail(
                f"workflow stranded: status={info.status}, owner={info.owner} (this live "
                f"engine is {engine.worker.id}); nothing will ever resume it"
            )
        except BaseException:
            pass  # any recorded outcome is acceptable


# -- 5. NonDeterminismError is an Exception: user code swallows it and runs on --------------


@perdure.step(name="rev_charge")
def rev_charge() -> str:
    COUNTS["charge"] += 1
    return "charged"


def make_swallowing(version: int) -> Callable[[], str]:
    @perdure.step(name=f"rev_tool_v{version}")
    def tool() -> str:
        return f"v{version}"

    @perdure.workflow(name="rev_swallow")
    def rev_swallow() -> str:
        try:
            first = tool()
        except Exception:  # the usual "tool failed, use a fallback"
            first = "fallback"
        return f"{first}/{rev_charge()}/{rev_block()}"

    return rev_swallow


def test_rev_non_determinism_cannot_be_swallowed_by_user_code(url: str) -> None:
    old = make_swallowing(1)
    with perdure.Engine(url, shutdown_grace=0.1) as first:
        first.start(old, id="nd")
        wait_until(lambda: COUNTS["block"] == 1)
    make_swallowing(2)  # a deployment changed the first step
    GATE.set()
    # Before: returns "fallback/charged/unblocked", mixing v2's path with v1's journal.
    # the edited code has another source version: resumed only when declared compatible
    with (
        perdure.Engine(url, compatible_versions="any") as second,
        pytest.raises(perdure.NonDeterminismError),
    ):
        second.handle("nd").result(timeout=10)


# -- 6. the claimer's lease decides, not the owner's: live work is stolen --------------------


def test_rev_a_short_lease_engine_does_not_steal_a_live_workers_workflow(url: str) -> None:
    # A heartbeats every 3 s and, per the docs, keeps its workflows through 10 s of silence.
    owner = perdure.Engine(url, heartbeat_interval=3, lease_seconds=10, recover=False).open()
    try:
        owner.start(rev_commit_like_block, id="live")
        wait_until(lambda: COUNTS["block"] == 1)
        # B (say a second worker deployed with other settings) uses a 1 s lease.
        with perdure.Engine(url, lease_seconds=1, heartbeat_interval=0.2,
                            recovery_interval=0.2, shutdown_grace=0.1) as other:  # fmt: skip
            time.sleep(4)
            info = other.get_workflow("live")
        assert info.recoveries == 0, "a live worker's workflow was taken over"
        assert info.owner == owner.worker.id
    finally:
        owner.close()


@perdure.workflow(name="rev_commit_like_block")
def rev_commit_like_block() -> str:
    return rev_block()


# -- 7. a handled custom exception is not raised again on replay ----------------------------


class RevToolFailed(Exception):
    def __init__(self, tool: str, code: int) -> None:
        super().__init__(f"{tool} failed with {code}")
        self.tool = tool
        self.code = code


@perdure.step(name="rev_call_tool")
def rev_call_tool() -> str:
    COUNTS["tool"] += 1
    raise RevToolFailed("search", 503)


@perdure.workflow(name="rev_handles_tool_error")
def rev_handles_tool_error() -> str:
    try:
        rev_call_tool()
        handled = "no error"
    except RevToolFailed as exc:
        handled = f"handled {exc.code}"
    return f"{handled}/{rev_block()}"


def test_rev_recorded_custom_exception_is_raised_again_on_replay(url: str) -> None:
    # Before: replay raises RecordedStepError (class importable, but its __init__ differs from
    # its args), which the workflow's `except RevToolFailed` does not catch: a run that
    # handled the error the first time fails on resumption.
    assert run_then_resume(url, rev_handles_tool_error) == "handled 503/unblocked"
    assert COUNTS["tool"] == 1


# -- 8. pydantic models with aliases cannot be read back ------------------------------------


class RevMail(pydantic.BaseModel):
    from_: str = pydantic.Field(alias="from")
    subject: str


@perdure.step(name="rev_read_mail")
def rev_read_mail() -> RevMail:
    return RevMail.model_validate({"from": "ana@example.com", "subject": "hi"})


@perdure.workflow(name="rev_mail_flow")
def rev_mail_flow() -> str:
    mail = rev_read_mail()
    return f"{mail.from_}/{rev_block()}"


def test_rev_aliased_model_step_output_replays(url: str) -> None:
    assert run_then_resume(url, rev_mail_flow) == "ana@example.com/unblocked"


@perdure.workflow(name="rev_mail_input_flow")
def rev_mail_input_flow(mail: RevMail) -> str:
    return f"{mail.subject}/{rev_block()}"


def test_rev_aliased_model_workflow_input_survives_recovery(url: str) -> None:
    mail = RevMail.model_validate({"from": "ana@example.com", "subject": "hi"})
    # Accepted by start(); today recovery cannot decode it and marks the run ERROR for good.
    assert run_then_resume(url, rev_mail_input_flow, mail) == "hi/unblocked"


# -- 9. lossy round trips: the first run and the replay see different values ----------------


class RevNote(pydantic.BaseModel):
    meta: dict[str, Any]
    api_key: pydantic.SecretStr


@perdure.step(name="rev_make_note")
def rev_make_note() -> RevNote:
    return RevNote(
        meta={"when": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)}, api_key=pydantic.SecretStr("sk-123")
    )


@perdure.step(name="rev_echo")
def rev_echo(text: str) -> str:
    return text


@perdure.workflow(name="rev_note_flow")
def rev_note_flow() -> tuple[str, str]:
    note = rev_make_note()
    seen = f"{type(note.meta['when']).__name__}:{note.api_key.get_secret_value()}"
    recorded = rev_echo(seen)  # what the first run saw, journaled
    rev_block()
    return recorded, seen  # `seen` here is what the resumed run sees


def test_rev_replay_sees_the_same_values_as_the_first_run(url: str) -> None:
    recorded, replayed = run_then_resume(url, rev_note_flow)
    # Before: ("datetime:sk-123", "str:**********").
    assert replayed == recorded


def test_rev_zoneinfo_datetime_round_trips_with_its_zone() -> None:
    paris = dt.datetime(2024, 1, 15, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    back = _serialize.loads(_serialize.dumps(paris))
    later = dt.timedelta(days=180)
    # Before: the zone becomes a fixed +01:00 offset, so date arithmetic across DST differs.
    assert (back + later).utcoffset() == (paris + later).utcoffset()


# -- 10. handle.result() in another thread hangs past engine.close() ------------------------


def test_rev_result_returns_promptly_when_the_engine_closes(url: str) -> None:
    engine = perdure.Engine(url, shutdown_grace=0.2).open()
    handle = engine.start(rev_commit_like_block)
    wait_until(lambda: COUNTS["block"] == 1)
    outcome: dict[str, Any] = {}

    def wait() -> None:
        try:
            outcome["value"] = handle.result()
        except BaseException as exc:  # any prompt answer will do
            outcome["error"] = exc

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    time.sleep(0.1)
    engine.close()
    waiter.join(3)
    # Before: the waiter is still blocked on the abandoned run's `done` event, for as long as
    # the step blocks (forever, for a waiting workflow).
    assert not waiter.is_alive(), "result() still waiting after close()"


# -- 11. idempotency key compares JSON text: equal calls conflict ---------------------------


@perdure.workflow(name="rev_kw_flow")
def rev_kw_flow(a: int, b: int) -> int:
    return a + b


def test_rev_equivalent_start_calls_are_idempotent(url: str) -> None:
    with perdure.Engine(url) as engine:
        engine.start(rev_kw_flow, a=1, b=2, id="kw").result(timeout=10)
        # The same call with keyword order swapped is a retry, not "other inputs".
        assert engine.start(rev_kw_flow, b=2, a=1, id="kw").result(timeout=10) == 3
        assert engine.start(rev_kw_flow, 1, 2, id="kw").result(timeout=10) == 3


# -- 12. start() of a released (PENDING) id waits for the next sweep ------------------------


def test_rev_start_of_a_released_workflow_resumes_it(url: str) -> None:
    with perdure.Engine(url, recovery_interval=60) as engine:
        first = perdure.Engine(url, shutdown_grace=0.1, recover=False).open()
        first.start(rev_commit_like_block, id="pending")
        wait_until(lambda: COUNTS["block"] == 1)
        first.close()  # released: PENDING, no owner
        GATE.set()
        handle = engine.start(rev_commit_like_block, id="pending")
        # Before: nothing runs it until this engine's next sweep, 60 s away (never, with
        # recover=False).
        assert handle.result(timeout=3) == "unblocked"


# -- 13. close() is not prompt while another process holds the write lock -------------------


def test_rev_close_is_prompt_while_the_database_is_locked(url: str, tmp_path: Path) -> None:
    engine = perdure.Engine(url, shutdown_grace=0.2, heartbeat_interval=0.1).open()
    locked = threading.Event()

    def hold_lock() -> None:
        conn = sqlite3.connect(tmp_path / "rev.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(6)
        conn.execute("ROLLBACK")
        conn.close()

    holder = threading.Thread(target=hold_lock, daemon=True)
    holder.start()
    locked.wait(5)
    time.sleep(0.3)  # the maintenance thread is now blocked in its heartbeat
    started = time.monotonic()
    engine.close()
    took = time.monotonic() - started
    holder.join()
    assert took < 3, f"close() took {took:.1f} s (the lock was held for 6 s)"


# -- 14. one failure in a recovery batch strands the rest of the batch ----------------------


def test_rev_a_failing_row_does_not_strand_the_rest_of_a_recovery_batch(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_finish = SQLiteStore.finish_workflow

    def finish(self: SQLiteStore, workflow_id: str, *args: Any) -> None:
        if workflow_id == "bad":  # the database is busy just then
            raise perdure.StoreUnavailableError("SQLite database: database is locked")
        real_finish(self, workflow_id, *args)

    with perdure.Engine(url, heartbeat_interval=0.1, recovery_interval=0.2,
                        lease_seconds=5) as worker:  # fmt: skip
        first = perdure.Engine(url, shutdown_grace=0.1, recover=False,
                               heartbeat_interval=0.1, lease_seconds=5).open()  # fmt: skip
        first.start(rev_commit_like_block, id="bad")
        first.start(rev_commit_like_block, id="good")
        wait_until(lambda: COUNTS["block"] == 2)
        conn = sqlite3.connect(tmp_path / "rev.db", isolation_level=None)
        conn.execute(  # inputs this process cannot decode: recovery fails the run
            "UPDATE workflows SET inputs = ? WHERE id = 'bad'",
            ('{"args":[{"$dataclass":"nowhere:Gone","fields":{}}],"kwargs":{}}',),
        )
        conn.close()
        monkeypatch.setattr(SQLiteStore, "finish_workflow", finish)
        first.close()  # both released; the worker's next sweep claims both
        GATE.set()
        handle = worker.handle("good")
        try:
            handle.result(timeout=4)
        except perdure.ResultTimeoutError:
            info = worker.get_workflow("good")
            pytest.fail(
                f"'good' stranded: status={info.status}, owner is the live worker: "
                f"{info.owner == worker.worker.id}, running here: "
                f"{worker._local_run('good') is not None}"
            )


# -- 17. a dataclass field added with a default is missing on replay of an older journal ----


@dataclasses.dataclass
class RevVerdict:
    label: str
    tags: list[str] = dataclasses.field(default_factory=list)  # added by a later deployment


def test_rev_dataclass_field_added_with_default_factory_is_set_on_replay() -> None:
    key = _serialize.class_key(RevVerdict)
    old_journal = json.dumps({"$dataclass": key, "fields": {"label": "spam"}})  # written before
    verdict = _serialize.loads(old_journal, RevVerdict)
    assert verdict.tags == []


# -- 14. a recovery sweep between a workflow's creation and its run's registration ----------


def _sweep_before_launch(engine: perdure.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every launch of ``engine`` run a recovery sweep first: the sweep then lands
    between a new workflow's row commit and its run's registration, deterministically."""
    launch = engine._runner.launch

    def launch_after_a_sweep(*args: Any, **kwargs: Any) -> None:
        engine.recover()
        launch(*args, **kwargs)

    monkeypatch.setattr(engine._runner, "launch", launch_after_a_sweep)


def test_rev_a_sweep_under_a_fake_clock_does_not_release_a_workflow_being_started(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``start`` commits the workflow's row (owned by this engine) and then registers its
    run. A sweep in between releases "strays": rows this engine owns but does not run, older
    than a lease. It compared the rows' database time with the workflows' clock, which a
    FakeClock had moved a day ahead: the new row looked a day old and was released, the
    launched run was fenced off at its first write, and a second run took the workflow over
    (the model-based test saw a failed attempt vanish from the journal this way)."""
    clock = FakeClock()
    clock.advance(86_400)
    with perdure.Engine(db_url, clock=clock, lease_seconds=0.5, heartbeat_interval=0.1,
                        recovery_interval=0.1, shutdown_grace=0.1) as engine:  # fmt: skip
        _sweep_before_launch(engine, monkeypatch)
        assert engine.run(rev_commit_flow, id="being-started", timeout=10) == "value"
        info = engine.get_workflow("being-started")
    assert info.recoveries == 0, "the workflow was released while it was being started"
    assert COUNTS["once"] == 1


def test_rev_a_database_clock_ahead_of_this_machine_does_not_make_a_new_workflow_stray(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same gap with the default clock, on a machine whose clock is an hour behind the
    database's: the new row's times are this machine's (an hour old by the database's
    clock, which the sweep uses), so it looked stray just the same. A start now marks its
    workflow as being launched here until its run is registered, and the sweep leaves
    such workflows alone whatever their times. The offset is pinned (measuring would find
    none here)."""
    monkeypatch.setattr(DatabaseClock, "measure", lambda self, read: None)
    with perdure.Engine(db_url, lease_seconds=0.5, heartbeat_interval=0.1,
                        recovery_interval=0.1, shutdown_grace=0.1) as engine:  # fmt: skip
        assert isinstance(engine.clock, DatabaseClock)
        engine.clock.offset = 3600.0
        _sweep_before_launch(engine, monkeypatch)
        assert engine.run(rev_commit_flow, id="skewed", timeout=10) == "value"
        info = engine.get_workflow("skewed")
    assert info.recoveries == 0, "the workflow was released while it was being started"
    assert COUNTS["once"] == 1


@perdure.workflow(name="rev_waits_for_go")
def rev_waits_for_go() -> str:
    return f"{perdure.receive('go')}/{rev_once()}"


def test_rev_a_wake_up_under_a_fake_clock_behind_real_time_is_not_released(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A waiting workflow woken by a message is claimed (row RUNNING, owned here) and then
    launched; the claim stamped the row with the workflows' clock. A FakeClock does not
    move with real time, so the stamp was an hour old by the database's clock and a sweep
    between the claim and the launch released the workflow: its run and a second run both
    went on (the model-based test saw a saga's compensation run twice). The claim now
    stamps the database's time. (Here the released run is fenced off at its first write,
    consuming the message, before any body runs; the release itself is the fault.)"""
    clock = FakeClock(start=time.time() - 3600)
    with perdure.Engine(db_url, clock=clock, lease_seconds=0.5, heartbeat_interval=0.1,
                        recovery_interval=0.1, shutdown_grace=0.1, poll_interval=0.05,
                        suspend_after=0) as engine:  # fmt: skip
        handle = engine.start(rev_waits_for_go, id="woken")  # unloaded at once (suspend_after)
        wait_until(lambda: engine.get_workflow("woken").status is perdure.WorkflowStatus.WAITING)
        _sweep_before_launch(engine, monkeypatch)
        with perdure.Engine(db_url, recover=False) as client:  # another process's send:
            client.send("woken", "go", "go")  # the worker's waker claims the workflow
        assert handle.result(timeout=10) == "go/value"
    released = [r.getMessage() for r in caplog.records if "held but not run" in r.getMessage()]
    assert not released, released
    assert COUNTS["once"] == 1
