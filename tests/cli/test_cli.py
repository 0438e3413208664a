"""The ``perdure`` command line, run for real in subprocesses against a real workflow database.

A module fixture writes a small application (workflows and steps) to a temporary folder and
runs it with ``perdure.Engine`` in a child process, so the CLI reads a journal written the
way an application writes it, and does not have the application's classes imported. A second
database holds the runs that went wrong in other ways: retried steps, cancellation, a step
waiting for its next attempt, a dead-lettered workflow.

``send``, ``approvals``, ``approve`` and ``reject`` are tested against a worker child process
(its own small application) that runs a workflow waiting for a message or an approval and
keeps its engine open until the workflow ends: the CLI only records the message or decision,
and the workflow resumes in the worker.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_helpers import cli_env, one_error_line
from cli_helpers import run_cli as perdure

FLOWS = textwrap.dedent(
    '''
    """A small application for the CLI tests."""

    import asyncio
    import dataclasses
    import threading
    from collections import Counter

    import perdure

    calls = Counter()
    approval_asked = threading.Event()
    approval_given = threading.Event()


    @dataclasses.dataclass
    class Ticket:
        id: int
        title: str


    @perdure.step
    def fetch_ticket(user: str) -> Ticket:
        return Ticket(7, f"printer on fire for {user}")


    @perdure.step
    def charge_card(amount: int) -> int:
        raise ValueError(f"card declined for {amount}")


    @perdure.step
    def save_result(ticket: Ticket) -> dict:
        return {"saved": True, "ticket": ticket.id, "note": "x" * 500}


    @perdure.workflow(name="cli_test_flow")
    def handle_ticket(user: str, retries: int = 1) -> dict:
        ticket = fetch_ticket(user)
        try:
            charge_card(retries * 10)
        except ValueError:
            pass  # recorded as an ERROR step, handled by the workflow
        return save_result(ticket)


    @perdure.workflow(name="cli_test_fail")
    def broken_printer() -> None:
        fetch_ticket("bob")
        raise RuntimeError("out of paper")


    @perdure.step(retry=perdure.RetryPolicy(max_attempts=3, initial_interval=0, jitter=0))
    def call_flaky_api(n: int) -> int:
        calls["call_flaky_api"] += 1
        if calls["call_flaky_api"] <= 2:
            raise perdure.TransientError(f"upstream busy (call {calls['call_flaky_api']})")
        return n * 2


    @perdure.workflow(name="cli_test_retried")
    def retried(n: int) -> int:
        fetch_ticket("dave")
        return call_flaky_api(n)


    @perdure.step(retry=perdure.RetryPolicy(max_attempts=5, initial_interval=3600, jitter=0))
    def call_down_api() -> str:
        raise perdure.TransientError("service unavailable")


    @perdure.workflow(name="cli_test_waiting")
    def waiting() -> str:
        fetch_ticket("erin")
        return call_down_api()  # fails, then waits an hour for attempt 2


    @perdure.step
    def ask_approval() -> str:
        approval_asked.set()
        approval_given.wait(30)
        return "approved"


    @perdure.workflow(name="cli_test_cancel")
    def needs_approval() -> str:
        ask_approval()
        return fetch_ticket("frank").title  # cancelled before this step


    @perdure.step
    async def search(query: str, delay: float) -> str:
        await asyncio.sleep(delay)
        return f"found {query}"


    async def research(topic: str, delay: float) -> list:
        return [await search(topic, delay), await search(topic + " again", 0)]


    @perdure.workflow(name="cli_test_branches")
    async def branches() -> list:
        # Two tasks: their steps get branch keys (t0/0, t1/0...), committed as they finish.
        return list(await asyncio.gather(research("slow", 0.2), research("fast", 0)))
    '''
)

MAKE_DB = textwrap.dedent(
    """
    import sys

    import perdure
    import cli_flows

    with perdure.Engine(sys.argv[1]) as engine:
        engine.run(cli_flows.handle_ticket, "alice", retries=3, id="order-42")
        try:
            engine.run(cli_flows.broken_printer, id="order-43")
        except RuntimeError:
            pass
        newest = engine.start(cli_flows.handle_ticket, "carol")
        newest.result(timeout=30)
        print(newest.id)
    """
)


MAKE_FAILURES_DB = textwrap.dedent(
    """
    import os
    import subprocess
    import sys
    import time

    import perdure
    import cli_flows

    url = sys.argv[1]


    def wait_for_attempt(engine, workflow_id):
        deadline = time.monotonic() + 30
        while not engine.list_attempts(workflow_id):
            assert time.monotonic() < deadline, f"{workflow_id} never failed an attempt"
            time.sleep(0.01)


    if sys.argv[2:] == ["die"]:
        # A worker that dies while its step waits to retry, so it never releases the workflow.
        engine = perdure.Engine(url).open()
        engine.start(cli_flows.waiting, id="order-dead")
        wait_for_attempt(engine, "order-dead")
        os._exit(0)

    subprocess.run([sys.executable, __file__, url, "die"], check=True, timeout=60)
    # Opening recovers order-dead, whose worker died: over max_recoveries, it is dead-lettered.
    with perdure.Engine(url, max_recoveries=0, shutdown_grace=0.1) as engine:
        assert engine.get_workflow("order-dead").status is perdure.WorkflowStatus.DEAD_LETTER
        assert engine.run(cli_flows.retried, 21, id="order-retried") == 42

        handle = engine.start(cli_flows.needs_approval, id="order-cancelled")
        assert cli_flows.approval_asked.wait(30)
        engine.cancel("order-cancelled")
        cli_flows.approval_given.set()
        try:
            handle.result(timeout=30)
        except perdure.WorkflowCancelledError:
            pass
        else:
            raise AssertionError("order-cancelled was not cancelled")

        abandoned = engine.start(cli_flows.waiting, id="order-abandoned")
        wait_for_attempt(engine, "order-abandoned")
        engine.cancel("order-abandoned")  # while it waits to retry
        try:
            abandoned.result(timeout=30)
        except perdure.WorkflowCancelledError:
            pass
        else:
            raise AssertionError("order-abandoned was not cancelled")

        engine.run(cli_flows.branches, id="order-branches")

        engine.start(cli_flows.waiting, id="order-waiting")
        wait_for_attempt(engine, "order-waiting")
    # Closing released order-waiting (PENDING): its step still waits for attempt 2.
    """
)


SIGNALS_APP = textwrap.dedent(
    '''
    """A worker for the CLI's message and approval tests.

    ``signals_app.py DB KIND ID`` starts a workflow (KIND ``deploy`` waits for an approval,
    ``inbox`` collects messages), prints "started", keeps its engine open until the workflow
    ends, and prints its result as JSON.
    """

    import json
    import sys

    import perdure


    @perdure.workflow(name="cli_test_deploy")
    def deploy(version: str) -> dict:
        decision = perdure.wait_for_approval("deploy", details={"version": version})
        return {
            "approved": decision.approved,
            "by": decision.by,
            "comment": decision.comment,
            "timed_out": decision.timed_out,
        }


    @perdure.workflow(name="cli_test_inbox")
    def inbox() -> list:
        notes = []
        while (note := perdure.receive("note")) != "stop":
            notes.append(note)
        return notes


    if __name__ == "__main__":
        url, kind, workflow_id = sys.argv[1:]
        with perdure.Engine(url) as engine:
            if kind == "deploy":
                handle = engine.start(deploy, "1.2", id=workflow_id)
            else:
                handle = engine.start(inbox, id=workflow_id)
            print("started", flush=True)
            print(json.dumps(handle.result(timeout=60)), flush=True)
    '''
)


@dataclass(frozen=True)
class Db:
    """The database the fixture made, and what is in it."""

    folder: Path
    url: str
    uuid_id: str  # the id of the newest workflow, a generated UUID


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Db:
    folder = tmp_path_factory.mktemp("cli")
    (folder / "cli_flows.py").write_text(FLOWS)
    (folder / "make_db.py").write_text(MAKE_DB)
    url = f"sqlite:///{folder / 'app.db'}"
    done = subprocess.run(
        [sys.executable, "make_db.py", url],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
    )
    assert done.returncode == 0, done.stderr
    return Db(folder, url, done.stdout.strip())


@pytest.fixture(scope="module")
def failures_db(db: Db) -> str:
    """A database (beside ``db``'s, same application) of runs with retries and cancellation."""
    (db.folder / "make_failures_db.py").write_text(MAKE_FAILURES_DB)
    url = f"sqlite:///{db.folder / 'failures.db'}"
    done = subprocess.run(
        [sys.executable, "make_failures_db.py", url],
        cwd=db.folder,
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
    )
    assert done.returncode == 0, done.stderr
    return url


def _section(stdout: str, title: str) -> list[str]:
    """The lines of a section of ``perdure show`` output (after the line starting with
    ``title``, up to the next blank line), the table's header first."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start + 1 : end]


def _step_rows(stdout: str) -> list[list[str]]:
    """The rows of the step timeline in ``perdure show`` output, split on whitespace (without
    the key column, and without the lines of failed attempts)."""
    header, *lines = _section(stdout, "Steps (")
    columns = header.split()
    keyed = columns[1] == "key"
    if keyed:
        del columns[1]
    assert columns[:5] == ["#", "name", "status", "duration", "attempts"]
    rows = [line.split() for line in lines if not line.lstrip().startswith("attempt ")]
    return [row[:1] + row[2:] for row in rows] if keyed else rows


def _attempt_lines(stdout: str, title: str = "Steps (") -> list[str]:
    """The failed-attempt lines of a section of ``perdure show`` output, stripped."""
    return [line.strip() for line in _section(stdout, title) if "attempt " in line[:30]]


# -- list ----------------------------------------------------------------------------------


def test_list_prints_a_table_newest_first(db: Db) -> None:
    done = perdure("list", "--db", db.url, env=cli_env(COLUMNS="200"))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    header = lines[0].split()
    for column in ("id", "name", "status", "created", "updated", "recoveries"):
        assert column in header
    rows = [line.split() for line in lines[1:]]
    assert [row[0] for row in rows] == [db.uuid_id, "order-43", "order-42"]
    assert [row[1] for row in rows] == ["cli_test_flow", "cli_test_fail", "cli_test_flow"]
    assert [row[2] for row in rows] == ["SUCCESS", "ERROR", "SUCCESS"]
    assert [row[-1] for row in rows] == ["0", "0", "0"]


def test_list_fits_the_terminal(db: Db) -> None:
    for columns in (60, 80, 100):
        done = perdure("list", "--db", db.url, env=cli_env(COLUMNS=str(columns)))
        assert done.returncode == 0, done.stderr
        assert all(len(line) <= columns for line in done.stdout.splitlines()), done.stdout
        assert "order-42" in done.stdout


def test_list_piped_keeps_whole_ids(db: Db) -> None:
    done = perdure("list", "--db", db.url)
    assert done.returncode == 0, done.stderr
    assert db.uuid_id in done.stdout
    assert "\x1b[" not in done.stdout  # no colors when not a terminal


def test_list_json(db: Db) -> None:
    done = perdure("list", "--db", db.url, "--json")
    assert done.returncode == 0, done.stderr
    items = json.loads(done.stdout)
    assert isinstance(items, list)
    assert [item["id"] for item in items] == [db.uuid_id, "order-43", "order-42"]
    by_id = {item["id"]: item for item in items}
    ok = by_id["order-42"]
    assert ok["name"] == "cli_test_flow"
    assert ok["status"] == "SUCCESS"
    assert ok["args"] == []  # inputs are journaled by parameter name
    assert ok["kwargs"] == {"retries": 3, "user": "alice"}
    assert ok["output"] == {"saved": True, "ticket": 7, "note": "x" * 500}
    assert ok["error"] is None
    assert ok["recoveries"] == 0
    created = dt.datetime.fromisoformat(ok["created_at"])
    updated = dt.datetime.fromisoformat(ok["updated_at"])
    assert created.utcoffset() == dt.timedelta(0)
    assert created <= updated
    failed = by_id["order-43"]
    assert failed["status"] == "ERROR"
    assert failed["output"] is None
    assert failed["error"] == {"type": "builtins.RuntimeError", "message": "out of paper"}


def test_list_filters(db: Db) -> None:
    errors = perdure("list", "--db", db.url, "--status", "ERROR")
    assert errors.returncode == 0, errors.stderr
    assert "order-43" in errors.stdout
    assert "order-42" not in errors.stdout
    assert db.uuid_id not in errors.stdout

    successes = json.loads(perdure("list", "--db", db.url, "--status", "success", "--json").stdout)
    assert sorted(item["id"] for item in successes) == sorted([db.uuid_id, "order-42"])

    by_name = json.loads(
        perdure("list", "--db", db.url, "--name", "cli_test_fail", "--json").stdout
    )
    assert [item["id"] for item in by_name] == ["order-43"]

    limited = json.loads(perdure("list", "--db", db.url, "--limit", "1", "--json").stdout)
    assert [item["id"] for item in limited] == [db.uuid_id]

    none = perdure("list", "--db", db.url, "--status", "RUNNING")
    assert none.returncode == 0
    assert "No matching workflows" in none.stdout
    assert json.loads(perdure("list", "--db", db.url, "--status", "PENDING", "--json").stdout) == []


def test_database_from_environment(db: Db, tmp_path: Path) -> None:
    done = perdure("list", "--json", cwd=tmp_path, env=cli_env(PERDURE_DB=db.url))
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 3
    flag_wins = perdure("show", "order-42", "--db", db.url, env=cli_env(PERDURE_DB="bogus"))
    assert flag_wins.returncode == 0, flag_wins.stderr


def test_default_database_is_perdure_db_in_the_working_folder(tmp_path: Path) -> None:
    done = perdure("list", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "No workflows in sqlite:///perdure.db" in done.stdout


# -- show ----------------------------------------------------------------------------------


def test_show_prints_header_and_timeline(db: Db) -> None:
    done = perdure("show", "order-42", "--db", db.url)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    header = dict(line.split(None, 1) for line in out.split("\n\n")[0].splitlines() if " " in line)
    assert header["id"] == "order-42"
    assert header["name"] == "cli_test_flow"
    assert header["status"] == "SUCCESS"
    assert header["inputs"] == '(retries=3, user="alice")'
    assert header["result"].startswith('{"saved": true, "ticket": 7, "note": "xxx')
    assert header["result"].endswith("…")
    assert header["created"].endswith(" UTC")
    assert header["recoveries"] == "0"

    rows = _step_rows(out)
    assert [row[0] for row in rows] == ["0", "1", "2"]
    assert [row[1] for row in rows] == ["fetch_ticket", "charge_card", "save_result"]
    assert [row[2] for row in rows] == ["SUCCESS", "ERROR", "SUCCESS"]
    assert all(row[4] == "ms" and row[5] == "1" for row in rows)  # duration, attempts
    lines = out.splitlines()
    fetch, charge, save = (next(line for line in lines if name in line) for name in
                           ("fetch_ticket", "charge_card", "save_result"))  # fmt: skip
    # The Ticket class is not importable in the CLI: its tagged record still reads well.
    assert 'Ticket(id=7, title="printer on fire for alice")' in fetch
    assert "ValueError: card declined for 30" in charge
    assert save.endswith("…")
    assert len(save.split("  ")[-1].strip()) <= 60


def test_show_fits_the_terminal(db: Db) -> None:
    done = perdure("show", "order-42", "--db", db.url, env=cli_env(COLUMNS="80"))
    assert done.returncode == 0, done.stderr
    assert all(len(line) <= 80 for line in done.stdout.splitlines()), done.stdout


def test_show_failed_workflow(db: Db) -> None:
    done = perdure("show", "order-43", "--db", db.url)
    assert done.returncode == 0, done.stderr
    assert "RuntimeError: out of paper" in done.stdout
    assert "result" not in done.stdout
    rows = _step_rows(done.stdout)
    assert [(row[0], row[1], row[2]) for row in rows] == [("0", "fetch_ticket", "SUCCESS")]


def test_show_json(db: Db) -> None:
    done = perdure("show", "order-42", "--db", db.url, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["id"] == "order-42"
    assert data["status"] == "SUCCESS"
    assert data["kwargs"] == {"retries": 3, "user": "alice"}
    steps = data["steps"]
    assert [s["position"] for s in steps] == [0, 1, 2]
    assert [s["name"] for s in steps] == ["fetch_ticket", "charge_card", "save_result"]
    assert [s["status"] for s in steps] == ["SUCCESS", "ERROR", "SUCCESS"]
    assert steps[0]["output"] == {"id": 7, "title": "printer on fire for alice"}
    assert steps[1]["output"] is None
    assert steps[1]["error"] == {"type": "builtins.ValueError", "message": "card declined for 30"}
    for step in steps:
        assert step["workflow_id"] == "order-42"
        assert step["attempts"] == 1
        assert step["duration_ms"] >= 0
        started = dt.datetime.fromisoformat(step["started_at"])
        assert started <= dt.datetime.fromisoformat(step["finished_at"])


# -- retries, cancellation, dead letters -----------------------------------------------------


def test_show_lists_every_failed_attempt(failures_db: str) -> None:
    done = perdure("show", "order-retried", "--db", failures_db)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert [row[:3] + row[5:6] for row in _step_rows(out)] == [
        ["0", "fetch_ticket", "SUCCESS", "1"],
        ["1", "call_flaky_api", "SUCCESS", "3"],  # attempts: two failed, the third worked
    ]
    first, second = _attempt_lines(out)
    assert first.startswith("attempt 1 failed ")
    assert "perdure.TransientError: upstream busy (call 1) (retried at " in first
    assert second.startswith("attempt 2 failed ")
    assert "perdure.TransientError: upstream busy (call 2) (retried at " in second
    # Each attempt is listed under its step, after its row.
    lines = out.splitlines()
    row = next(i for i, line in enumerate(lines) if "call_flaky_api" in line)
    assert [line.strip() for line in lines[row + 1 : row + 3]] == [first, second]
    assert "Retrying" not in out
    assert "key" not in lines[lines.index("Steps (2):") + 1].split()  # keys are positions


def test_show_json_lists_failures(failures_db: str) -> None:
    done = perdure("show", "order-retried", "--db", failures_db, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["retrying"] == []
    fetch, flaky = data["steps"]
    assert (fetch["key"], fetch["attempts"], fetch["failures"]) == ("0", 1, [])
    assert (flaky["key"], flaky["name"], flaky["attempts"]) == ("1", "call_flaky_api", 3)
    failures = flaky["failures"]
    assert [f["attempt"] for f in failures] == [1, 2]
    assert [f["error"] for f in failures] == [
        {"type": "perdure._errors.TransientError", "message": f"upstream busy (call {n})"}
        for n in (1, 2)
    ]
    for failure in failures:
        assert (failure["key"], failure["name"]) == ("1", "call_flaky_api")
        started, failed, retry = (
            dt.datetime.fromisoformat(failure[k]) for k in ("started_at", "failed_at", "retry_at")
        )
        assert started.utcoffset() == dt.timedelta(0)
        assert started <= failed <= retry  # no backoff: the retry was due at once
    assert failures[1]["failed_at"] <= flaky["started_at"]  # the attempt that worked came last


def test_show_step_waiting_to_retry(failures_db: str) -> None:
    done = perdure("show", "order-waiting", "--db", failures_db)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert [row[1] for row in _step_rows(out)] == ["fetch_ticket"]  # the failing step: none yet
    assert "Retrying (1):" in out
    header, row, attempt = _section(out, "Retrying (")
    assert header.split() == ["key", "name", "next", "attempt", "due", "(UTC)"]
    assert row.split()[:3] == ["1", "call_down_api", "2"]
    assert attempt.strip().startswith("attempt 1 failed ")
    assert "perdure.TransientError: service unavailable (retry due at " in attempt

    data = json.loads(perdure("show", "order-waiting", "--db", failures_db, "--json").stdout)
    assert [step["name"] for step in data["steps"]] == ["fetch_ticket"]
    [waiting] = data["retrying"]
    assert (waiting["key"], waiting["name"], waiting["next_attempt"]) == ("1", "call_down_api", 2)
    [failure] = waiting["failures"]
    assert failure["attempt"] == 1
    assert failure["error"]["message"] == "service unavailable"
    assert waiting["retry_at"] == failure["retry_at"]
    # Backoff of an hour, capped by the policy's max_interval (60 s).
    wait = dt.datetime.fromisoformat(failure["retry_at"]) - dt.datetime.fromisoformat(
        failure["failed_at"]
    )
    assert wait == dt.timedelta(seconds=60)


def test_show_retry_cut_short_by_the_end_of_the_workflow(failures_db: str) -> None:
    # Cancelled, or dead-lettered, while a step waited for its next attempt.
    for workflow_id, status, error in (
        ("order-abandoned", "CANCELLED", "perdure.WorkflowCancelledError: "),
        ("order-dead", "DEAD_LETTER", "perdure.DeadLetteredError: "),
    ):
        done = perdure("show", workflow_id, "--db", failures_db)
        assert done.returncode == 0, done.stderr
        header = dict(line.split(None, 1) for line in done.stdout.split("\n\n")[0].splitlines())
        assert header["status"] == status
        assert header["error"].startswith(error)
        assert "Retrying" not in done.stdout
        assert "Not retried (1), the workflow ended first:" in done.stdout
        [attempt] = _attempt_lines(done.stdout, "Not retried (")
        assert "service unavailable (retry due at " in attempt
        data = json.loads(perdure("show", workflow_id, "--db", failures_db, "--json").stdout)
        assert data["status"] == status
        assert [r["next_attempt"] for r in data["retrying"]] == [2]


def test_show_cancelled_workflow(failures_db: str) -> None:
    done = perdure("show", "order-cancelled", "--db", failures_db)
    assert done.returncode == 0, done.stderr
    assert "status      CANCELLED" in done.stdout
    assert "perdure.WorkflowCancelledError: workflow 'order-cancelled' was cancelled" in done.stdout
    # The step in flight finished; the workflow stopped before the next one.
    assert [row[1:3] for row in _step_rows(done.stdout)] == [["ask_approval", "SUCCESS"]]


def test_list_shows_cancelled_and_dead_lettered_workflows(failures_db: str) -> None:
    done = perdure("list", "--db", failures_db, env=cli_env(COLUMNS="200"))
    assert done.returncode == 0, done.stderr
    status = {row[0]: row[2] for row in (line.split() for line in done.stdout.splitlines()[1:])}
    assert status == {
        "order-waiting": "PENDING",
        "order-branches": "SUCCESS",
        "order-abandoned": "CANCELLED",
        "order-cancelled": "CANCELLED",
        "order-retried": "SUCCESS",
        "order-dead": "DEAD_LETTER",
    }
    for spelling in ("cancelled", "CANCELLED", "Cancelled"):
        cancelled = perdure("list", "--db", failures_db, "--status", spelling)
        assert cancelled.returncode == 0, cancelled.stderr
        ids = [line.split()[0] for line in cancelled.stdout.splitlines()[1:]]
        assert ids == ["order-abandoned", "order-cancelled"]
    dead = perdure("list", "--db", failures_db, "--status", "dead_letter", "--json")
    assert dead.returncode == 0, dead.stderr
    [item] = json.loads(dead.stdout)
    assert (item["id"], item["status"], item["recoveries"]) == ("order-dead", "DEAD_LETTER", 1)
    assert item["error"]["type"] == "perdure._errors.DeadLetteredError"


def test_new_statuses_are_colored_like_warnings_and_errors(failures_db: str) -> None:
    # In process, to see the colors a terminal gets (they are stripped when piped).
    from click.testing import CliRunner

    from perdure.cli import cli

    runner = CliRunner()
    listed = runner.invoke(cli, ["list", "--db", failures_db], color=True)
    assert listed.exit_code == 0, listed.output
    assert "\x1b[33mCANCELLED" in listed.output  # yellow, like RUNNING
    assert "\x1b[31m\x1b[1mDEAD_LETTER" in listed.output  # red like ERROR, and bold
    shown = runner.invoke(cli, ["show", "order-dead", "--db", failures_db], color=True)
    assert shown.exit_code == 0, shown.output
    assert "status      \x1b[31m\x1b[1mDEAD_LETTER" in shown.output


def test_show_key_column_for_branch_steps(failures_db: str) -> None:
    done = perdure("show", "order-branches", "--db", failures_db)
    assert done.returncode == 0, done.stderr
    header, *lines = _section(done.stdout, "Steps (")
    assert header.split()[:3] == ["#", "key", "name"]
    rows = [line.split() for line in lines]
    assert [row[0] for row in rows] == ["0", "1", "2", "3"]  # commit order
    keys = [row[1] for row in rows]
    assert sorted(keys) == ["t0/0", "t0/1", "t1/0", "t1/1"]
    assert keys.index("t0/0") < keys.index("t0/1")  # a task's steps commit in its own order
    assert keys.index("t1/0") < keys.index("t1/1")
    data = json.loads(perdure("show", "order-branches", "--db", failures_db, "--json").stdout)
    assert [(s["position"], s["key"]) for s in data["steps"]] == list(enumerate(keys))


def test_show_with_attempts_fits_the_terminal(failures_db: str) -> None:
    for workflow_id in ("order-retried", "order-waiting", "order-dead", "order-branches"):
        for columns in (60, 80, 120):
            done = perdure(
                "show", workflow_id, "--db", failures_db, env=cli_env(COLUMNS=str(columns))
            )
            assert done.returncode == 0, done.stderr
            lines = done.stdout.splitlines()
            attempts = [line for line in lines if line.lstrip().startswith("attempt ")]
            assert bool(attempts) == (workflow_id != "order-branches")
            # Below 80 columns only the attempt lines are sure to fit (step rows keep a
            # 20-column preview of the output).
            fitted = lines if columns >= 80 else attempts
            assert all(len(line) <= columns for line in fitted), done.stdout


# -- send, approvals, approve, reject ----------------------------------------------------


class Worker:
    """A worker child process running one workflow of ``SIGNALS_APP``."""

    def __init__(self, folder: Path, url: str, kind: str, workflow_id: str) -> None:
        self.id = workflow_id
        self.process = subprocess.Popen(
            [sys.executable, "signals_app.py", url, kind, workflow_id],
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        line = self.process.stdout.readline()
        assert line == "started\n", line + self.process.stderr.read()

    def result(self) -> object:
        """The workflow's result, once the worker has printed it and exited."""
        out, err = self.process.communicate(timeout=60)
        assert self.process.returncode == 0, err
        return json.loads(out)


@dataclass
class Workers:
    """Starts ``Worker`` processes on one database; those still running at the end are killed."""

    folder: Path
    url: str
    started: list[Worker]

    def start(self, kind: str, workflow_id: str) -> Worker:
        worker = Worker(self.folder, self.url, kind, workflow_id)
        self.started.append(worker)
        return worker


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    (tmp_path / "signals_app.py").write_text(SIGNALS_APP)
    made = Workers(tmp_path, f"sqlite:///{tmp_path / 'signals.db'}", [])
    yield made
    for worker in made.started:
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.communicate(timeout=30)


def _wait_until_pending(url: str, workflow_id: str) -> None:
    """Poll ``perdure approvals --json`` until the workflow's request shows up."""
    deadline = time.monotonic() + 30
    while True:
        done = perdure("approvals", "--db", url, "--json")
        assert done.returncode == 0, done.stderr
        if any(item["workflow_id"] == workflow_id for item in json.loads(done.stdout)):
            return
        assert time.monotonic() < deadline, f"{workflow_id} never asked for approval"
        time.sleep(0.05)


def test_approvals_lists_a_pending_request_and_approve_resumes_it(workers: Workers) -> None:
    url = workers.url
    worker = workers.start("deploy", "deploy-1")
    _wait_until_pending(url, "deploy-1")

    done = perdure("approvals", "--db", url)
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header.split() == ["workflow", "id", "workflow", "approval", "requested", "(UTC)",
                              "details"]  # fmt: skip
    assert row.split()[:3] == ["deploy-1", "cli_test_deploy", "deploy"]
    assert row.endswith('{"version": "1.2"}')
    for columns in (60, 80):
        narrow = perdure("approvals", "--db", url, env=cli_env(COLUMNS=str(columns)))
        assert all(len(line) <= columns for line in narrow.stdout.splitlines()), narrow.stdout
    [item] = json.loads(perdure("approvals", "--db", url, "--json").stdout)
    assert item["workflow_id"] == "deploy-1"
    assert item["workflow_name"] == "cli_test_deploy"
    assert (item["name"], item["status"]) == ("deploy", "PENDING")
    assert item["details"] == {"version": "1.2"}
    assert dt.datetime.fromisoformat(item["requested_at"]).utcoffset() == dt.timedelta(0)
    assert (item["decided_at"], item["decided_by"], item["comment"]) == (None, None, None)

    done = perdure("approve", "deploy-1", "deploy", "--by", "alice", "--comment", "ok", "--db", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "approved 'deploy' of workflow 'deploy-1' (by alice)\n"
    assert done.stderr == ""
    # The CLI only recorded the decision: the worker's engine resumed the workflow.
    assert worker.result() == {"approved": True, "by": "alice", "comment": "ok", "timed_out": False}

    for command in ("approve", "reject"):
        again = perdure(command, "deploy-1", "deploy", "--by", "bob", "--db", url)
        assert again.returncode == 1
        assert "no pending approval named 'deploy'" in one_error_line(again)

    assert perdure("approvals", "--db", url).stdout == f"No pending approvals in {url}.\n"
    assert json.loads(perdure("approvals", "--db", url, "--json").stdout) == []
    everything = perdure("approvals", "--all", "--db", url, env=cli_env(COLUMNS="200"))
    assert everything.returncode == 0, everything.stderr
    header, row = everything.stdout.splitlines()
    assert "status" in header and "decided by" in header and "comment" in header
    assert row.split()[:4] == ["deploy-1", "cli_test_deploy", "deploy", "APPROVED"]
    assert "  alice  " in row and "  ok  " in row
    narrow = perdure("approvals", "--all", "--db", url, env=cli_env(COLUMNS="80"))
    assert all(len(line) <= 80 for line in narrow.stdout.splitlines()), narrow.stdout
    [item] = json.loads(perdure("approvals", "--all", "--json", "--db", url).stdout)
    assert (item["status"], item["decided_by"], item["comment"]) == ("APPROVED", "alice", "ok")
    decided = dt.datetime.fromisoformat(item["decided_at"])
    assert decided >= dt.datetime.fromisoformat(item["requested_at"])

    # In process, to see the colors a terminal gets.
    from click.testing import CliRunner

    from perdure.cli import cli

    colored = CliRunner().invoke(cli, ["approvals", "--all", "--db", url], color=True)
    assert colored.exit_code == 0, colored.output
    assert "\x1b[32mAPPROVED" in colored.output


def test_reject_by_the_os_user_by_default(workers: Workers) -> None:
    url = workers.url
    worker = workers.start("deploy", "deploy-2")
    _wait_until_pending(url, "deploy-2")
    done = perdure(
        "reject", "deploy-2", "deploy", "--comment", "not on a Friday", "--db", url,
        env=cli_env(LOGNAME="carol"),  # getpass.getuser() reads $LOGNAME first
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "rejected 'deploy' of workflow 'deploy-2' (by carol)\n"
    assert worker.result() == {
        "approved": False,
        "by": "carol",
        "comment": "not on a Friday",
        "timed_out": False,
    }
    [item] = json.loads(perdure("approvals", "--all", "--json", "--db", url).stdout)
    assert (item["status"], item["decided_by"]) == ("REJECTED", "carol")
    assert perdure("approve", "deploy-2", "deploy", "--db", url).returncode == 1


def test_send_with_an_idempotency_key_delivers_once(workers: Workers) -> None:
    url = workers.url
    worker = workers.start("inbox", "inbox-1")
    first = perdure("send", "inbox-1", "note", '{"a": 1}', "--key", "k1", "--db", url)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "sent\n"
    again = perdure("send", "inbox-1", "note", '{"a": 1}', "--key", "k1", "--db", url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("already sent (idempotency key 'k1')")
    stop = perdure("send", "inbox-1", "note", '"stop"', "--db", url)
    assert (stop.returncode, stop.stdout) == (0, "sent\n")
    # Messages on a topic arrive in send order: a second {"a": 1} would come before "stop".
    assert worker.result() == [{"a": 1}]

    late = perdure("send", "inbox-1", "note", '"late"', "--db", url)
    assert (late.returncode, late.stdout) == (0, "sent\n")
    assert "has ended (SUCCESS)" in late.stderr  # a warning: nothing will receive it


def test_send_needs_a_json_payload(db: Db, tmp_path: Path) -> None:
    for payload in ("{a: 1}", "hello", ""):
        done = perdure("send", "order-42", "note", payload, "--db", db.url)
        assert done.returncode == 2, done
        assert "not valid JSON" in one_error_line(done)
    # The payload is checked before the database: still a usage error.
    nowhere = f"sqlite:///{tmp_path / 'nowhere' / 'app.db'}"
    assert perdure("send", "order-42", "note", "{", "--db", nowhere).returncode == 2
    null = perdure("send", "order-42", "note", "null", "--db", db.url)
    assert null.returncode == 2
    assert "cannot be None" in one_error_line(null)


def test_signals_to_a_missing_workflow_exit_1(db: Db) -> None:
    for args in (
        ["send", "no-such-id", "note", "1"],
        ["approve", "no-such-id", "deploy"],
        ["reject", "no-such-id", "deploy", "--by", "alice"],
    ):
        done = perdure(*args, "--db", db.url)
        assert done.returncode == 1, done
        assert "no-such-id" in one_error_line(done)
    never_asked = perdure("approve", "order-42", "deploy", "--db", db.url)
    assert never_asked.returncode == 1
    assert "no pending approval named 'deploy'" in one_error_line(never_asked)


def test_approvals_when_none_were_requested(db: Db) -> None:
    done = perdure("approvals", "--db", db.url)
    assert (done.returncode, done.stdout) == (0, f"No pending approvals in {db.url}.\n")
    everything = perdure("approvals", "--all", "--db", db.url)
    assert everything.stdout == f"No approvals in {db.url}.\n"
    assert json.loads(perdure("approvals", "--all", "--json", "--db", db.url).stdout) == []


# -- errors and exit codes -----------------------------------------------------------------


def test_show_missing_workflow_exits_1(db: Db) -> None:
    done = perdure("show", "no-such-id", "--db", db.url)
    assert done.returncode == 1
    assert "no-such-id" in one_error_line(done)
    assert perdure("show", "no-such-id", "--db", db.url, "--json").returncode == 1


def test_missing_database_folder_exits_3(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nowhere' / 'app.db'}"
    for args in (
        ["list"],
        ["show", "order-42"],
        ["list", "--json"],
        ["approvals"],
        ["approve", "order-42", "deploy"],
        ["reject", "order-42", "deploy"],
        ["send", "order-42", "note", "1"],
    ):
        done = perdure(*args, "--db", url)
        assert done.returncode == 3, done
        assert "does not exist" in one_error_line(done)
    assert not (tmp_path / "nowhere").exists()


def test_unreadable_database_exits_3(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database, " * 100)
    done = perdure("list", "--db", f"sqlite:///{garbage}")
    assert done.returncode == 3
    one_error_line(done)


def test_bad_database_url_is_a_usage_error(tmp_path: Path) -> None:
    for url in ("app.db", "mysql://localhost/app"):
        done = perdure("list", "--db", url, cwd=tmp_path)
        assert done.returncode == 2
        one_error_line(done)


def test_unreachable_postgres_exits_3(tmp_path: Path) -> None:
    done = perdure("list", "--db", "postgresql://postgres@127.0.0.1:1/app", cwd=tmp_path)
    assert done.returncode == 3, done
    assert "cannot open PostgreSQL" in one_error_line(done)


def test_usage_errors_exit_2(db: Db) -> None:
    assert perdure("list", "--db", db.url, "--limit", "0").returncode == 2
    assert perdure("list", "--db", db.url, "--status", "DONE").returncode == 2
    assert perdure("show", "--db", db.url).returncode == 2
    assert perdure("approvals", "--db", db.url, "--limit", "0").returncode == 2
    assert perdure("approve", "order-42", "--db", db.url).returncode == 2  # no NAME
    assert perdure("send", "order-42", "note", "--db", db.url).returncode == 2  # no JSON
    assert perdure("frobnicate").returncode == 2


def test_demo_missing_fails_clearly(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['perdure.cli._demo'] = None; "
        "sys.argv = ['perdure', 'demo']; from perdure.cli import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
    )
    assert done.returncode == 1
    assert "demo" in one_error_line(done)


def test_console_script(db: Db) -> None:
    script = Path(sys.executable).with_name("perdure")
    if not script.exists():
        pytest.skip("the perdure console script is not installed next to this Python")
    done = subprocess.run(
        [str(script), "show", "order-42", "--db", db.url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["id"] == "order-42"
