"""``Engine.fork``: a new run replays the original's journal before position N and executes
from N on (or records a replaced output at N and goes on after it); the original run's rows
are never written to."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

import perdure

ledger: Counter[str] = Counter()
answers: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    ledger.clear()
    answers.clear()


@perdure.step
def fetch(n: int) -> int:
    ledger[f"fetch{n}"] += 1
    return n * 10


@perdure.step
def ask_model(question: str) -> str:
    ledger["ask_model"] += 1
    return answers.get(question, "a wrong answer")


@perdure.step
def act(answer: str) -> str:
    ledger["act"] += 1
    if answer == "fail" or (answer == "flaky" and ledger["act"] == 1):
        raise ValueError("the tool refused")
    return f"acted on {answer}"


@perdure.workflow(name="forkable")
def forkable(question: str) -> dict[str, Any]:
    total = fetch(1) + fetch(2)
    answer = ask_model(question)
    return {"total": total, "answer": answer, "result": act(answer)}


def _snapshot(engine: perdure.Engine, workflow_id: str) -> tuple[Any, ...]:
    """Every stored field of a run: its workflow row, journal and failed attempts."""
    store = engine.store
    return (
        store.get_workflow(workflow_id),
        store.load_steps(workflow_id),
        store.load_attempts(workflow_id),
    )


def test_fork_re_executes_only_from_the_position(engine: perdure.Engine) -> None:
    engine.run(forkable, "q", id="orig")
    assert ledger == Counter({"fetch1": 1, "fetch2": 1, "ask_model": 1, "act": 1})
    before = _snapshot(engine, "orig")
    answers["q"] = "the right answer"
    handle = engine.fork("orig", 2, new_id="fork-1")  # positions: fetch1 0, fetch2 1, ask 2
    assert handle.result(timeout=10) == {
        "total": 30, "answer": "the right answer", "result": "acted on the right answer",
    }  # fmt: skip
    # steps 0 and 1 were replayed from the copied journal; 2 and 3 ran again
    assert ledger == Counter({"fetch1": 1, "fetch2": 1, "ask_model": 2, "act": 2})
    assert _snapshot(engine, "orig") == before
    info = engine.get_workflow("fork-1")
    assert (info.forked_from, info.forked_at, info.name) == ("orig", 2, "forkable")
    assert (info.args, info.kwargs) == (engine.get_workflow("orig").args, {"question": "q"})
    assert [s.name for s in engine.list_steps("fork-1")] == ["fetch", "fetch", "ask_model", "act"]


def test_fork_with_a_replaced_output_goes_on_after_it(engine: perdure.Engine) -> None:
    engine.run(forkable, "q", id="orig")
    before = _snapshot(engine, "orig")
    handle = engine.fork("orig", 2, replace_output="a corrected answer")
    assert handle.id.startswith("orig-fork-")
    result = handle.result(timeout=10)
    assert result["answer"] == "a corrected answer"
    assert result["result"] == "acted on a corrected answer"
    assert ledger == Counter({"fetch1": 1, "fetch2": 1, "ask_model": 1, "act": 2})
    assert _snapshot(engine, "orig") == before
    steps = engine.list_steps(handle.id)
    assert steps[2].output == "a corrected answer" and steps[2].status is perdure.StepStatus.SUCCESS


def test_a_failed_run_is_forked_at_its_failure_with_a_replaced_output(
    engine: perdure.Engine,
) -> None:
    answers["q"] = "fail"
    with pytest.raises(ValueError, match="the tool refused"):
        engine.run(forkable, "q", id="broken")
    failed_at = next(s.position for s in engine.list_steps("broken") if s.name == "ask_model")
    handle = engine.fork("broken", failed_at, replace_output="fine")
    assert handle.result(timeout=10)["result"] == "acted on fine"
    assert engine.get_workflow("broken").status is perdure.WorkflowStatus.ERROR


def test_fork_at_the_end_of_the_journal_runs_what_is_left(engine: perdure.Engine) -> None:
    engine.run(forkable, "q", id="orig")
    handle = engine.fork("orig", 4)  # all four entries copied: nothing runs again
    assert handle.result(timeout=10)["result"] == "acted on a wrong answer"
    assert ledger == Counter({"fetch1": 1, "fetch2": 1, "ask_model": 1, "act": 1})


def test_fork_errors_are_clear_and_write_nothing(engine: perdure.Engine) -> None:
    engine.run(forkable, "q", id="orig")
    with pytest.raises(perdure.WorkflowNotFound):
        engine.fork("nope", 0)
    with pytest.raises(perdure.ConfigurationError, match="has 4 entries"):
        engine.fork("orig", 5)
    with pytest.raises(perdure.ConfigurationError, match="an entry to replace"):
        engine.fork("orig", 4, replace_output="x")
    with pytest.raises(perdure.ConfigurationError, match="from_step"):
        engine.fork("orig", -1)
    with pytest.raises(perdure.SerializationError, match="replacement output"):
        engine.fork("orig", 2, replace_output=object())
    with pytest.raises(perdure.ConfigurationError, match="workflow id"):
        engine.fork("orig", 1, new_id="")
    with pytest.raises(perdure.WorkflowConflictError):
        engine.fork("orig", 1, new_id="orig")
    assert [w.id for w in engine.list_workflows()] == ["orig"]


def test_the_same_fork_asked_twice_is_one_run(engine: perdure.Engine) -> None:
    engine.run(forkable, "q", id="orig")
    first = engine.fork("orig", 3, new_id="again")
    second = engine.fork("orig", 3, new_id="again")
    assert first.id == second.id == "again"
    first.result(timeout=10)
    assert ledger["act"] == 2  # the original's and one fork's
    with pytest.raises(perdure.WorkflowConflictError):
        engine.fork("orig", 2, new_id="again")  # another fork point: another run
    engine.fork("orig", 2, new_id="fixed", replace_output="one").result(timeout=10)
    assert engine.fork("orig", 2, new_id="fixed", replace_output="one").id == "fixed"
    with pytest.raises(perdure.WorkflowConflictError):
        engine.fork("orig", 2, new_id="fixed", replace_output="another")


def test_fork_of_a_retried_run_uses_its_journal_positions(engine: perdure.Engine) -> None:
    answers["q"] = "flaky"
    with pytest.raises(ValueError):
        engine.run(forkable, "q", id="retried")
    engine.resume("retried", retry_failed_step=True).result(timeout=10)
    positions = [(s.position, s.name) for s in engine.list_steps("retried")]
    assert positions == [(0, "fetch"), (1, "fetch"), (2, "ask_model"), (3, "act")]
    fixed = engine.fork("retried", 3, replace_output="acted anyway")
    assert fixed.result(timeout=10)["result"] == "acted anyway"
    assert ledger["act"] == 2  # the fork replayed its act from the replaced entry
    again = engine.fork("retried", 3)  # copies 0..2: act runs again in the fork
    assert again.result(timeout=10)["result"] == "acted on flaky"
    assert ledger["act"] == 3
