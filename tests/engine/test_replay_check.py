"""Offline replay checks: a run recorded by a real engine, exported (``export_run``), replayed
with ``perdure.testing.replay`` against the same code and against edited code.

What is proved: the same code replays without running any step body (bodies counted); a
renamed or reordered step, a removed step, a step added after the end of a finished run and a
changed result are each reported with the position and the names; a run exported while it
waits replays up to the end of its journal; an agent run replays with its model server
stopped; a malformed or unknown-version export is refused with an error naming the problem.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

import perdure
from perdure import agents
from perdure.testing import ReplayDivergence, export_run, load_export, replay

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "apps"))
from fake_llm import CHAT, FakeLLM

from conftest import wait_until

bodies: list[str] = []


@perdure.step
def fetch(n: int) -> int:
    bodies.append("fetch")
    return n * 2


@perdure.step
def charge(amount: int) -> str:
    bodies.append("charge")
    return f"charged {amount}"


@perdure.step
def notify(text: str) -> None:
    bodies.append("notify")


@perdure.workflow(name="rc_order")
def order(n: int) -> str:
    receipt = charge(fetch(n))
    notify(receipt)
    return receipt


@perdure.workflow(name="rc_order_reordered")
def order_reordered(n: int) -> str:
    amount = fetch(n)
    notify("early")
    return charge(amount)


@perdure.workflow(name="rc_order_removed")
def order_removed(n: int) -> str:
    return charge(fetch(n))


@perdure.workflow(name="rc_order_added")
def order_added(n: int) -> str:
    receipt = order(n)
    notify("again")
    return receipt


@perdure.workflow(name="rc_order_other_result")
def order_other_result(n: int) -> str:
    return order(n).upper()


@perdure.workflow(name="rc_waiting")
def waiting(n: int) -> str:
    amount = fetch(n)
    extra = perdure.receive("go")
    return charge(amount + int(extra))


def _export(engine: perdure.Engine, workflow_id: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(json.dumps(export_run(engine.store, workflow_id)))
    return document  # as a file holds it


def _recorded_order(engine: perdure.Engine) -> dict[str, Any]:
    assert engine.run(order, 5, id="o1", timeout=30) == "charged 10"
    bodies.clear()
    return _export(engine, "o1")


def test_the_same_code_replays_without_running_a_step(engine: perdure.Engine) -> None:
    export = _recorded_order(engine)
    assert export["format"] == "perdure.run/1" and len(export["steps"]) == 3
    report = replay(export, order)
    assert (report.replayed, report.finished, report.stopped_at) == (3, True, None)
    assert report.recorded_status is perdure.WorkflowStatus.SUCCESS
    assert bodies == []


def test_an_export_round_trips_exactly(engine: perdure.Engine, tmp_path: Path) -> None:
    export = _recorded_order(engine)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(export))
    loaded = load_export(path)
    assert loaded.steps == engine.store.load_steps("o1")
    assert loaded.workflow.inputs == engine.store.get_workflow("o1").inputs  # type: ignore[union-attr]
    assert replay(path, order).replayed == 3


def test_a_reordered_step_is_caught_with_the_position_and_both_names(
    engine: perdure.Engine,
) -> None:
    export = _recorded_order(engine)
    with pytest.raises(ReplayDivergence) as caught:
        replay(export, order_reordered)
    err = caught.value
    assert isinstance(err, perdure.NonDeterminismError)
    assert (err.position, err.recorded, err.current) == ("1", "charge", "notify")
    assert "position 1" in str(err) and "'charge'" in str(err) and "'notify'" in str(err)
    assert bodies == []


def test_a_removed_step_is_caught(engine: perdure.Engine) -> None:
    export = _recorded_order(engine)
    with pytest.raises(ReplayDivergence) as caught:
        replay(export, order_removed)
    assert (caught.value.position, caught.value.recorded, caught.value.current) == (
        "2", "notify", None,
    )  # fmt: skip
    assert "returned before it" in str(caught.value)
    assert bodies == []


def test_a_step_added_after_a_finished_run_is_caught(engine: perdure.Engine) -> None:
    export = _recorded_order(engine)
    with pytest.raises(ReplayDivergence) as caught:
        replay(export, order_added)
    assert (caught.value.position, caught.value.recorded, caught.value.current) == (
        "3", None, "notify",
    )  # fmt: skip
    assert "does more than it did" in str(caught.value)
    assert bodies == []


def test_a_changed_result_is_caught(engine: perdure.Engine) -> None:
    export = _recorded_order(engine)
    with pytest.raises(ReplayDivergence) as caught:
        replay(export, order_other_result)
    assert caught.value.position == "result"
    assert '"CHARGED 10"' in str(caught.value) and bodies == []


def test_an_unfinished_run_replays_up_to_the_end_of_its_journal(engine: perdure.Engine) -> None:
    handle = engine.start(waiting, 3, id="w1")
    wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
    export = _export(engine, "w1")
    bodies.clear()
    report = replay(export, waiting)
    assert (report.finished, report.replayed) == (False, 1)
    assert report.stopped_at == "position 1, step 'perdure.receive'"
    # Past the journal of an unfinished run the check cannot tell: it stops there.
    assert replay(export, order).stopped_at == "position 1, step 'charge'"
    assert bodies == []
    engine.send("w1", "go", 4)
    assert handle.result(timeout=30) == "charged 10"
    assert bodies == ["charge"]  # the real run's resumption
    assert replay(_export(engine, "w1"), waiting).finished
    assert bodies == ["charge"]


@perdure.step
async def fetch_async(n: int) -> int:
    bodies.append("fetch_async")
    return n + 1


@perdure.workflow(name="rc_async")
async def async_order(n: int) -> list[int]:
    return list(await asyncio.gather(fetch_async(n), fetch_async(n + 10)))


@perdure.workflow(name="rc_async_changed")
async def async_order_changed(n: int) -> list[int]:
    return [await fetch_async(n)]


def test_an_async_run_replays(engine: perdure.Engine) -> None:
    assert engine.run(async_order, 1, id="as1", timeout=30) == [2, 12]
    export = _export(engine, "as1")
    bodies.clear()
    assert replay(export, async_order).replayed == 2
    with pytest.raises(ReplayDivergence) as caught:
        replay(export, async_order_changed)
    assert (caught.value.position, caught.value.current) == ("1", None) and bodies == []


@perdure.step
def undo(receipt: str) -> None:
    bodies.append(f"undo {receipt}")


@perdure.workflow(name="rc_cancelled")
def cancelled(n: int) -> str:
    receipt = charge(n)
    perdure.compensate(undo, receipt)
    perdure.receive("never")
    return receipt


def test_a_cancelled_run_replays_its_cancellation_and_compensations(
    engine: perdure.Engine,
) -> None:
    handle = engine.start(cancelled, 2, id="c1")
    wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
    engine.cancel("c1")
    wait_until(lambda: handle.status() is perdure.WorkflowStatus.CANCELLED)
    export = _export(engine, "c1")
    assert [step["name"] for step in export["steps"]] == ["charge", "undo"]
    bodies.clear()
    report = replay(export, cancelled)
    assert (report.finished, report.replayed, bodies) == (True, 2, [])


AGENT_KEY = "sk-test-replay"


@agents.tool
def lookup(query: str) -> str:
    """Look something up.

    Args:
        query: what to look up.
    """
    bodies.append(f"lookup {query}")
    return f"facts about {query}"


@perdure.workflow(name="rc_agent")
def agent_run(base_url: str) -> str:
    client = openai.OpenAI(base_url=base_url, api_key=AGENT_KEY, max_retries=0)
    agent = agents.Agent(client, model="gpt-test", tools=[lookup], instructions="be brief")
    return agent.run("what is perdure?").text


def test_an_agent_run_replays_with_the_model_server_stopped(engine: perdure.Engine) -> None:
    with FakeLLM(turns=2) as server:
        text = engine.run(agent_run, server.openai_url, id="a1", timeout=30)
        assert server.count(CHAT) == 3
    assert text.startswith("done after 2 tool results")
    export = _export(engine, "a1")
    assert AGENT_KEY not in json.dumps(export)
    bodies.clear()
    report = replay(export, agent_run)  # the server is gone: a request would fail
    assert report.finished and report.replayed == len(export["steps"]) == 5
    assert bodies == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="perdure.run/9"), "unsupported export format 'perdure.run/9'"),
        (lambda d: d.pop("steps"), "'steps' must be a list"),
        (lambda d: d["workflow"].pop("inputs"), "'workflow' lacks inputs"),
        (lambda d: d["steps"][0].update(status="MAYBE"), "'steps[0].status' has unknown"),
        (lambda d: d["steps"][1].update(output=7), "'steps[1].output' must be a string"),
    ],
)
def test_a_malformed_export_is_refused_naming_the_problem(
    engine: perdure.Engine, change: Any, message: str
) -> None:
    export = _recorded_order(engine)
    change(export)
    with pytest.raises(perdure.SerializationError, match=message.replace("[", r"\[")):
        replay(export, order)


def test_a_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text("{not json")
    with pytest.raises(perdure.SerializationError, match="is not JSON"):
        load_export(path)
    with pytest.raises(perdure.SerializationError, match="cannot read export"):
        load_export(tmp_path / "missing.json")


def test_replay_needs_a_workflow_function(engine: perdure.Engine) -> None:
    with pytest.raises(perdure.ConfigurationError, match=r"not a @perdure\.workflow"):
        replay(_recorded_order(engine), len)
