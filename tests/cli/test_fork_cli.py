"""``perdure fork ID --from-step N [--output JSON | --output-file FILE]``, through the real
command, on a real SQLite database.

A three-step workflow (fetch notes, ask a scripted "model" for an answer, publish the answer)
runs to the end in an engine of this process; its step bodies count their calls in a ledger.
The command forks it (no engine: the fork is recorded PENDING), then a new engine, which has
the workflow registered, picks the fork up when it opens, as any worker's recovery sweep
would. What is checked: the steps before N did not run again, the steps from N (from N+1
with --output) did, the workflow saw the replaced value, the fork records its origin and
the original's code version, and the original's rows are byte for byte what they were.
Errors exit with one ``perdure:`` line and write nothing.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import one_error_line, run_cli

import perdure

ledger: Counter[str] = Counter()
published: list[Any] = []
model = {"answer": "Paris is the capital of Germany."}  # the bad answer, until fixed


@perdure.step
def fork_fetch(topic: str) -> str:
    ledger["fetch"] += 1
    return f"notes on {topic}"


@perdure.step
def fork_ask_model(notes: str) -> str:
    ledger["ask_model"] += 1
    return model["answer"]


@perdure.step
def fork_publish(answer: Any) -> str:
    ledger["publish"] += 1
    published.append(answer)
    return f"published: {answer}"


@perdure.workflow(name="fork_cli_flow")
def fork_flow(topic: str) -> str:
    notes = fork_fetch(topic)
    answer = fork_ask_model(notes)
    return fork_publish(answer)


#: the journal positions of the steps
FETCH, ASK, PUBLISH = 0, 1, 2
#: the tables that hold a workflow's rows, and the column naming the workflow in each
TABLES = {"workflows": "id", "steps": "workflow_id", "step_attempts": "workflow_id",
          "events": "workflow_id", "messages": "workflow_id"}  # fmt: skip


@dataclass
class Db:
    url: str
    path: Path

    def rows(self, workflow_id: str) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the workflow, full rows, per table (steps by position)."""
        with sqlite3.connect(self.path) as conn:
            return {
                table: sorted(
                    conn.execute(f"SELECT * FROM {table} WHERE {column} = ?", (workflow_id,)),
                    key=repr,
                )
                for table, column in TABLES.items()
            }

    def workflow_ids(self) -> list[str]:
        with sqlite3.connect(self.path) as conn:
            return [r[0] for r in conn.execute("SELECT id FROM workflows ORDER BY id")]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Db]:
    """A database holding one finished run, ``answer-1``, whose model answer was wrong."""
    ledger.clear()
    published.clear()
    model["answer"] = "Paris is the capital of Germany."
    path = tmp_path / "fork.db"
    url = f"sqlite:///{path}"
    with perdure.Engine(url, shutdown_grace=0.5) as engine:
        result = engine.run(fork_flow, "France", id="answer-1", timeout=20)
    assert result == "published: Paris is the capital of Germany."
    assert ledger == Counter(fetch=1, ask_model=1, publish=1)
    yield Db(url, path)


def fork(db: Db, *args: str) -> dict[str, Any]:
    """Run ``perdure fork answer-1 ARGS --json``; the fork's record."""
    done = run_cli("fork", "answer-1", *args, "--db", db.url, "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    record: dict[str, Any] = json.loads(done.stdout)
    return record


def run_fork(db: Db, fork_id: str) -> str:
    """Open an engine (a worker with the workflow's code): it picks the PENDING fork up in
    its first recovery sweep. The fork's result."""
    with perdure.Engine(db.url, shutdown_grace=0.5) as engine:
        result: str = engine.handle(fork_id).result(timeout=30)
        return result


def test_fork_runs_again_from_the_position_and_replays_what_is_before(db: Db) -> None:
    before = db.rows("answer-1")
    model["answer"] = "Paris is the capital of France."  # the model is fixed
    record = fork(db, "--from-step", str(ASK), "--id", "answer-1-fixed")
    assert record["id"] == "answer-1-fixed" and record["status"] == "PENDING"
    assert (record["forked_from"], record["forked_at"]) == ("answer-1", ASK)
    assert record["name"] == "fork_cli_flow" and record["kwargs"] == {"topic": "France"}
    original = json.loads(run_cli("show", "answer-1", "--db", db.url, "--json").stdout)
    assert record["version"] is not None and record["version"] == original["version"]
    assert ledger == Counter(fetch=1, ask_model=1, publish=1)  # recorded, not run

    assert run_fork(db, "answer-1-fixed") == "published: Paris is the capital of France."
    # fetch replayed from the copied journal; the model and publish ran again
    assert ledger == Counter(fetch=1, ask_model=2, publish=2)
    assert published[-1] == "Paris is the capital of France."
    assert db.rows("answer-1") == before
    # the entries before the fork point are the original's, but for the workflow id
    fork_steps = sorted(db.rows("answer-1-fixed")["steps"], key=lambda row: int(row[2]))
    original_steps = sorted(before["steps"], key=lambda row: int(row[2]))
    assert [row[1:] for row in fork_steps[:ASK]] == [row[1:] for row in original_steps[:ASK]]
    assert len(fork_steps) == 3 and fork_steps[ASK][1:] != original_steps[ASK][1:]


@pytest.mark.parametrize("how", ["--output", "--output-file"])
def test_fork_with_a_replaced_output_runs_from_the_next_position(
    db: Db, tmp_path: Path, how: str
) -> None:
    before = db.rows("answer-1")
    replacement = {"answer": "Paris is the capital of France.", "checked_by": "ops"}
    text = json.dumps(replacement)
    if how == "--output-file":
        source = tmp_path / "answer.json"
        source.write_text(text + "\n")
        text = str(source)
    record = fork(db, "--from-step", str(ASK), how, text)
    fork_id = record["id"]
    assert fork_id.startswith("answer-1-fork-") and record["forked_at"] == ASK

    assert run_fork(db, fork_id) == f"published: {replacement}"
    # the model step was not asked again: its entry records the replacement
    assert ledger == Counter(fetch=1, ask_model=1, publish=2)
    assert published[-1] == replacement
    assert db.rows("answer-1") == before
    shown = json.loads(run_cli("show", fork_id, "--db", db.url, "--json").stdout)
    assert [s["output"] for s in shown["steps"]][ASK:] == [replacement, f"published: {replacement}"]


def test_fork_prints_what_it_did_and_show_names_the_origin(db: Db) -> None:
    done = run_cli("fork", "answer-1", "--from-step", "2", "--id", "again", "--db", db.url)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert line.startswith("forked 'answer-1' at position 2 as 'again' (PENDING): ")
    assert "positions 0 to 1 replay from the journal" in line
    assert "it runs from position 2 when a worker with its code" in line
    replaced = run_cli("fork", "answer-1", "--from-step", "0", "--output", '"notes"',
                       "--id", "again-2", "--db", db.url)  # fmt: skip
    assert "position 0 records the given output; it runs from position 1" in replaced.stdout

    original = json.loads(run_cli("show", "answer-1", "--db", db.url, "--json").stdout)
    assert (original["forked_from"], original["forked_at"]) == (None, None)
    shown = run_cli("show", "again", "--db", db.url).stdout.splitlines()
    assert "forked from answer-1 at position 2" in [" ".join(s.split()) for s in shown]
    assert f"version {original['version']}" in [" ".join(s.split()) for s in shown]


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["nope", "--from-step", "1"], 1, "no workflow with id 'nope'"),
        (["answer-1", "--from-step", "4"], 2, "it has 3 entries (positions 0 to 2)"),
        (["answer-1", "--from-step", "-1"], 2, "it has 3 entries (positions 0 to 2)"),
        (["answer-1", "--from-step", "3", "--output", "1"], 2, "is not an entry to replace"),
        (["answer-1", "--from-step", "1", "--output", "{answer: 42}"], 2,
         "--output is not valid JSON"),
        (["answer-1", "--from-step", "1", "--output", "1", "--output-file", "x.json"], 2,
         "pass only one"),
        (["answer-1", "--from-step", "1", "--output-file", "missing.json"], 2,
         "--output-file missing.json: cannot read it"),
        (["answer-1", "--from-step", "1", "--id", "answer-1"], 1, "is taken by another run"),
    ],
)  # fmt: skip
def test_fork_errors_are_one_line_and_write_nothing(
    db: Db, tmp_path: Path, args: list[str], exit_code: int, message: str
) -> None:
    before = db.rows("answer-1")
    done = run_cli("fork", *args, "--db", db.url, cwd=tmp_path)
    assert done.returncode == exit_code, done.stderr
    assert message in one_error_line(done)
    assert db.workflow_ids() == ["answer-1"]
    assert db.rows("answer-1") == before
