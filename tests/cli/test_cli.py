"""The ``perdure`` command line, run for real in subprocesses against a real workflow database.

A module fixture writes a small application (workflows and steps) to a temporary folder and
runs it with ``perdure.Engine`` in a child process, so the CLI reads a journal written the
way an application writes it, and does not have the application's classes imported.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

FLOWS = textwrap.dedent(
    '''
    """A small application for the CLI tests."""

    import dataclasses

    import perdure


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
        env=_env(),
    )
    assert done.returncode == 0, done.stderr
    return Db(folder, url, done.stdout.strip())


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PERDURE_DB", "COLUMNS")}
    env.update(extra)
    return env


def perdure(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real command line, as ``python -m perdure.cli ARGS``."""
    return subprocess.run(
        [sys.executable, "-m", "perdure.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(env) if env is not None else _env(),
    )


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("perdure: ")
    assert done.stdout == ""
    return lines[0]


def _step_rows(stdout: str) -> list[list[str]]:
    """The rows of the step timeline in ``perdure show`` output, split on whitespace."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Steps ("))
    header = lines[start + 1].split()
    assert header[:5] == ["#", "name", "status", "duration", "attempts"]
    return [line.split() for line in lines[start + 2 :] if line.strip()]


# -- list ----------------------------------------------------------------------------------


def test_list_prints_a_table_newest_first(db: Db) -> None:
    done = perdure("list", "--db", db.url, env=_env(COLUMNS="200"))
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
        done = perdure("list", "--db", db.url, env=_env(COLUMNS=str(columns)))
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
    done = perdure("list", "--json", cwd=tmp_path, env=_env(PERDURE_DB=db.url))
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 3
    flag_wins = perdure("show", "order-42", "--db", db.url, env=_env(PERDURE_DB="bogus"))
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
    done = perdure("show", "order-42", "--db", db.url, env=_env(COLUMNS="80"))
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


# -- errors and exit codes -----------------------------------------------------------------


def test_show_missing_workflow_exits_1(db: Db) -> None:
    done = perdure("show", "no-such-id", "--db", db.url)
    assert done.returncode == 1
    assert "no-such-id" in _one_error_line(done)
    assert perdure("show", "no-such-id", "--db", db.url, "--json").returncode == 1


def test_missing_database_folder_exits_3(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nowhere' / 'app.db'}"
    for args in (["list"], ["show", "order-42"], ["list", "--json"]):
        done = perdure(*args, "--db", url)
        assert done.returncode == 3, done
        assert "does not exist" in _one_error_line(done)
    assert not (tmp_path / "nowhere").exists()


def test_unreadable_database_exits_3(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database, " * 100)
    done = perdure("list", "--db", f"sqlite:///{garbage}")
    assert done.returncode == 3
    _one_error_line(done)


def test_bad_database_url_is_a_usage_error(tmp_path: Path) -> None:
    for url in ("app.db", "postgres://localhost/app"):
        done = perdure("list", "--db", url, cwd=tmp_path)
        assert done.returncode == 2
        _one_error_line(done)


def test_usage_errors_exit_2(db: Db) -> None:
    assert perdure("list", "--db", db.url, "--limit", "0").returncode == 2
    assert perdure("list", "--db", db.url, "--status", "DONE").returncode == 2
    assert perdure("show", "--db", db.url).returncode == 2
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
        env=_env(),
    )
    assert done.returncode == 1
    assert "demo" in _one_error_line(done)


def test_console_script(db: Db) -> None:
    script = Path(sys.executable).with_name("perdure")
    if not script.exists():
        pytest.skip("the perdure console script is not installed next to this Python")
    done = subprocess.run(
        [str(script), "show", "order-42", "--db", db.url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["id"] == "order-42"
