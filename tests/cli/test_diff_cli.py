"""``perdure diff ID1 ID2``: where two real runs' journals diverge, through the real command
(and ``Operations.diff``, which the command prints)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import run_cli

import perdure
from perdure._operations import Operations
from perdure.store import open_store

answers = {"quote": 10}


@perdure.step
def diff_quote(item: str) -> int:
    return answers["quote"]


@perdure.step
def diff_charge(amount: int) -> str:
    return f"charged {amount}"


@perdure.workflow(name="diff_flow")
def diff_flow(item: str) -> str:
    price = diff_quote(item)
    if item == "sample":
        return "free sample"
    return diff_charge(price) if price < 100 else "too expensive"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'diff.db'}"
    with perdure.Engine(url, shutdown_grace=0.5) as engine:
        answers["quote"] = 10
        engine.run(diff_flow, "book", id="cheap", timeout=20)
        engine.run(diff_flow, "book", id="cheap-again", timeout=20)
        engine.run(diff_flow, "sample", id="sample", timeout=20)
        answers["quote"] = 500  # the same request; the quote service answered differently
        engine.run(diff_flow, "book", id="dear", timeout=20)
    yield url


def test_diff_shows_the_first_position_where_two_runs_diverge(db: str) -> None:
    done = run_cli("diff", "cheap", "dear", "--db", db, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["same_inputs"], data["identical"], data["common_steps"]) == (True, False, 0)
    divergence = data["divergence"]
    assert divergence["position"] == 0
    assert (divergence["left"]["name"], divergence["left"]["output"]) == ("diff_quote", 10)
    assert (divergence["right"]["name"], divergence["right"]["output"]) == ("diff_quote", 500)
    text = run_cli("diff", "cheap", "dear", "--db", db).stdout
    assert "they diverge at position 0" in text and "diff_quote [0] SUCCESS 500" in text


def test_diff_of_equal_runs_and_of_a_journal_that_ends_first(db: str) -> None:
    same = json.loads(run_cli("diff", "cheap", "cheap-again", "--db", db, "--json").stdout)
    assert same["identical"] and same["divergence"] is None and same["common_steps"] == 2
    assert (
        "journals: the same 2 steps" in run_cli("diff", "cheap", "cheap-again", "--db", db).stdout
    )
    store = open_store(db)
    try:  # "sample" stopped after its quote, where "cheap" went on to charge
        ended = Operations(store).diff("cheap", "sample")
    finally:
        store.close()
    assert (ended["same_inputs"], ended["common_steps"]) == (False, 1)
    assert ended["divergence"]["right"] is None
    assert ended["divergence"]["left"]["name"] == "diff_charge"
    text = run_cli("diff", "cheap", "sample", "--db", db).stdout
    assert "inputs: different" in text and "sample: (journal ends)" in text


def test_diff_of_a_missing_run_exits_1(db: str) -> None:
    done = run_cli("diff", "cheap", "nope", "--db", db)
    assert done.returncode == 1 and "nope" in done.stderr
