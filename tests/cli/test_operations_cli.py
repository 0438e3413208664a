"""The operations commands of ``perdure``, run for real in subprocesses: ``list --since``,
``cancel``, ``resume``, ``retry``, ``worker``, ``migrate`` and the ``--json`` of the acting
commands.

The workflows are ``tests/apps/ops_app.py``'s, run by real ``perdure worker`` processes. The
test process never registers them: it only enqueues them (``engine.enqueue`` by name, from a
client engine with ``recover=False``) on the queue ``ops`` that the workers serve
(``--queue ops``), and reads their status; so every run, cancellation, resumption and retry
happens in a worker process, as the commands promise. Step bodies write a ledger line
``<tag> <pid>``, which tells what ran again and what replayed, and in which worker.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_helpers import cli_env, one_error_line, run_cli

import perdure
from conftest import APPS, wait_until

APP = APPS / "ops_app.py"
WAIT = 60.0  # seconds a worker gets to reach a state (generous: CI machines have 2 cores)
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/app"


def _ledger(folder: Path) -> list[tuple[str, int]]:
    """The (tag, pid) of every step body that ran, in order."""
    path = folder / "ledger"
    if not path.exists():
        return []
    return [
        (tag, int(pid)) for tag, pid in (line.split() for line in path.read_text().splitlines())
    ]


def _counts(folder: Path) -> Counter[str]:
    return Counter(tag for tag, _ in _ledger(folder))


# -- workers -------------------------------------------------------------------------------


@dataclass
class Worker:
    """A ``perdure worker tests/apps/ops_app.py --queue ops`` child process, once ready."""

    process: subprocess.Popen[str]
    ready: str  # the line it printed when ready

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, str, str]:
        """Send ``sig`` and wait for the worker to exit: (exit code, rest of stdout, stderr)."""
        self.process.send_signal(sig)
        out, err = self.process.communicate(timeout=WAIT)
        return self.process.returncode, out, err


@dataclass
class Workers:
    """Starts workers on one database; those still running at the end of a test are killed."""

    url: str
    folder: Path
    started: list[Worker] = field(default_factory=list)

    def start(self, *extra: str) -> Worker:
        """Start a worker (``extra``: more options of ``perdure worker``); return it ready."""
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "perdure.cli",
                "worker",
                str(APP),
                "--db",
                self.url,
                "--queue",
                "ops",
                "--shutdown-grace",
                "0.5",
                *extra,
            ],
            cwd=self.folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline()
        if not line:
            process.wait(timeout=WAIT)
            raise AssertionError(f"the worker exited {process.returncode}: {process.stderr.read()}")
        worker = Worker(process, line.rstrip("\n"))
        self.started.append(worker)
        return worker


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[Workers]:
    """Workers on a fresh database (SQLite, and PostgreSQL where the test asks for both)."""
    made = Workers(db_url, tmp_path)
    yield made
    for worker in made.started:
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.communicate(timeout=WAIT)


@pytest.fixture
def client(db_url: str) -> Iterator[perdure.Engine]:
    """An engine that only enqueues and reads: the workflows' code is not registered here,
    and it takes nothing over (``recover=False``)."""
    with perdure.Engine(db_url, recover=False) as engine:
        yield engine


def _enqueue(client: perdure.Engine, name: str, folder: Path, workflow_id: str) -> None:
    client.enqueue("ops", name, str(folder), id=workflow_id)


def _wait_for(client: perdure.Engine, workflow_id: str, status: str) -> perdure.WorkflowInfo:
    """Wait until the workflow has ``status``; return its record."""

    def reached() -> bool:
        return client.get_workflow(workflow_id).status.value == status

    wait_until(reached, timeout=WAIT)
    return client.get_workflow(workflow_id)


sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


# -- list --since --------------------------------------------------------------------------


@dataclass(frozen=True)
class Ran:
    """A database where ``ops_retry`` ran to its end as "older", then as "newer"."""

    url: str
    created: dict[str, dt.datetime]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Ran:
    folder = tmp_path_factory.mktemp("ops")
    url = f"sqlite:///{folder / 'app.db'}"
    done = subprocess.run(
        [sys.executable, str(APP), url, str(folder), "older", "newer"],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
    )
    assert done.returncode == 0, done.stderr
    listed = run_cli("list", "--db", url, "--json")
    assert listed.returncode == 0, listed.stderr
    created = {
        item["id"]: dt.datetime.fromisoformat(item["created_at"])
        for item in json.loads(listed.stdout)
    }
    assert list(created) == ["newer", "older"]
    assert created["newer"] - created["older"] >= dt.timedelta(seconds=0.2)
    return Ran(url, created)


def _listed(ran: Ran, *args: str) -> list[str]:
    done = run_cli("list", "--db", ran.url, "--json", *args)
    assert done.returncode == 0, done.stderr
    return [item["id"] for item in json.loads(done.stdout)]


def test_list_since_an_absolute_time(ran: Ran) -> None:
    between = ran.created["newer"] - dt.timedelta(seconds=0.1)  # after "older" by 0.1 s or more
    assert _listed(ran, "--since", between.isoformat()) == ["newer"]
    # The same moment in another zone, and without a zone (read as UTC).
    paris = between.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert _listed(ran, "--since", paris.isoformat()) == ["newer"]
    assert _listed(ran, "--since", between.replace(tzinfo=None).isoformat()) == ["newer"]
    # A date alone is midnight UTC.
    assert _listed(ran, "--since", "2000-01-01") == ["newer", "older"]
    assert _listed(ran, "--since", "2999-01-01") == []
    # Combined with the other filters.
    filtered = ("--since", "2000-01-01", "--name", "ops_retry", "--status", "success")
    assert _listed(ran, *filtered) == ["newer", "older"]
    assert _listed(ran, "--since", "2000-01-01", "--name", "ops_gate") == []
    text = run_cli("list", "--db", ran.url, "--since", "2999-01-01")
    assert (text.returncode, text.stdout) == (0, f"No matching workflows in {ran.url}.\n")


def test_list_since_an_age(ran: Ran) -> None:
    for age in ("1h", "3d", "1w", "90s", "30m", "1.5h"):
        assert _listed(ran, "--since", age) == ["newer", "older"], age
    assert _listed(ran, "--since", "0s") == []  # both were created before this command ran
    table = run_cli("list", "--db", ran.url, "--since", "2h", env=cli_env(COLUMNS="200"))
    assert table.returncode == 0, table.stderr
    assert [line.split()[0] for line in table.stdout.splitlines()[1:]] == ["newer", "older"]


def test_list_since_a_bad_value_is_a_usage_error(ran: Ran) -> None:
    for bad in ("yesterday", "3x", "-2h", "2h ago", "2024-13-01", "", "1e999d"):
        done = run_cli("list", "--db", ran.url, "--since", bad)
        assert done.returncode == 2, (bad, done)
        message = one_error_line(done)
        assert f"--since {bad!r} is neither an ISO date or time" in message
        assert "30m, 2h, 3d" in message


# -- cancel, resume, retry -----------------------------------------------------------------


def test_cancel_a_waiting_workflow_then_resume_it(
    workers: Workers, client: perdure.Engine, tmp_path: Path
) -> None:
    worker = workers.start()
    _enqueue(client, "ops_inbox", tmp_path, "inbox-1")
    _wait_for(client, "inbox-1", "WAITING")  # in perdure.receive("go")

    done = run_cli("cancel", "inbox-1", "--db", workers.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "cancel requested: workflow 'inbox-1' is WAITING; a worker running this workflow's "
        "code wakes it to stop it\n"
    )
    # The CLI only recorded the request: the worker woke the workflow and cancelled it.
    info = _wait_for(client, "inbox-1", "CANCELLED")
    assert info.error is not None and info.error.type.endswith("WorkflowCancelledError")

    again = run_cli("cancel", "inbox-1", "--db", workers.url, "--json")
    assert again.returncode == 0, again.stderr
    record = json.loads(again.stdout)
    assert (record["id"], record["status"], record["cancel_requested"]) == (
        "inbox-1",
        "CANCELLED",
        False,
    )
    text = run_cli("cancel", "inbox-1", "--db", workers.url)
    assert text.stdout == "workflow 'inbox-1' has already ended (CANCELLED): nothing to cancel\n"

    resumed = run_cli("resume", "inbox-1", "--db", workers.url, "--json")
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads(resumed.stdout)
    assert (record["id"], record["status"], record["error"]) == ("inbox-1", "PENDING", None)
    _wait_for(client, "inbox-1", "WAITING")  # a worker took it back to its receive
    sent = run_cli("send", "inbox-1", "go", '"now"', "--key", "k1", "--db", workers.url, "--json")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout) == {
        "workflow_id": "inbox-1",
        "topic": "go",
        "idempotency_key": "k1",
        "sent": True,
    }
    info = _wait_for(client, "inbox-1", "SUCCESS")
    assert info.output == "now"
    # The step before the wait replayed on resumption: its body ran once.
    assert _counts(tmp_path) == {"waiting": 1, "got": 1}
    code, _, err = worker.stop()
    assert code == 0, err


def test_cancel_an_enqueued_workflow_and_a_running_one(
    workers: Workers, client: perdure.Engine, tmp_path: Path
) -> None:
    # No worker serves the queue yet: the queued workflow is cancelled at once.
    _enqueue(client, "ops_gate", tmp_path, "queued")
    done = run_cli("cancel", "queued", "--db", workers.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "cancelled workflow 'queued': it was ENQUEUED and never started\n"
    assert client.get_workflow("queued").status is perdure.WorkflowStatus.CANCELLED

    first = workers.start()
    _enqueue(client, "ops_gate", tmp_path, "gated")
    wait_until(lambda: ("gate", first.pid) in _ledger(tmp_path), timeout=WAIT)
    done = run_cli("cancel", "gated", "--db", workers.url, "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert (record["status"], record["cancel_requested"]) == ("RUNNING", True)
    # The request outlives the worker: stopped while its step blocks, the worker releases the
    # workflow, and the next worker stops it at its first new step.
    code, _, err = first.stop()
    assert code == 0, err
    second = workers.start()
    info = _wait_for(client, "gated", "CANCELLED")
    assert info.error is not None and info.error.type.endswith("WorkflowCancelledError")
    assert _ledger(tmp_path) == [("one", first.pid), ("gate", first.pid)]  # "done" never ran
    code, _, err = second.stop()
    assert code == 0, err


def test_retry_runs_the_failed_step_again(
    workers: Workers, client: perdure.Engine, tmp_path: Path
) -> None:
    worker = workers.start()
    _enqueue(client, "ops_retry", tmp_path, "pay-1")
    info = _wait_for(client, "pay-1", "ERROR")
    assert info.error is not None and info.error.message == "card declined"
    assert _counts(tmp_path) == {"prepare": 1, "charge": 1}

    # resume replays the recorded failure: the step does not run again.
    resumed = run_cli("resume", "pay-1", "--db", workers.url)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines() == [
        "resumed workflow 'pay-1': PENDING, a worker running this workflow's code picks it up "
        "and replays its journal",
        "note: step 1 (charge) failed: its failure replays; `perdure retry pay-1` runs it "
        "again instead",
    ]
    _wait_for(client, "pay-1", "ERROR")
    assert _counts(tmp_path) == {"prepare": 1, "charge": 1}

    # Fix the cause, then retry: the failed step runs again, the step before it replays.
    (tmp_path / "fixed").touch()
    retried = run_cli("retry", "pay-1", "--db", workers.url, "--json")
    assert retried.returncode == 0, retried.stderr
    record = json.loads(retried.stdout)
    assert (record["id"], record["status"]) == ("pay-1", "PENDING")
    assert record["retried_step"] == {"position": 1, "name": "charge"}
    info = _wait_for(client, "pay-1", "SUCCESS")
    assert info.output == "paid"
    assert _counts(tmp_path) == {"prepare": 1, "charge": 2, "finish": 1}
    assert {pid for _, pid in _ledger(tmp_path)} == {worker.pid}
    steps = client.list_steps("pay-1")
    assert [(s.name, s.status.value) for s in steps] == [
        ("note", "SUCCESS"),
        ("charge", "SUCCESS"),
        ("note", "SUCCESS"),
    ]

    for command in ("resume", "retry"):
        done = run_cli(command, "pay-1", "--db", workers.url)
        assert done.returncode == 1, done
        assert one_error_line(done) == (
            "perdure: workflow 'pay-1' is SUCCESS: only ERROR, CANCELLED and DEAD_LETTER "
            "workflows can be resumed or retried"
        )
    code, _, err = worker.stop()
    assert code == 0, err


@sqlite_only
def test_resume_a_workflow_whose_code_failed(
    workers: Workers, client: perdure.Engine, tmp_path: Path
) -> None:
    worker = workers.start()
    _enqueue(client, "ops_fragile", tmp_path, "fragile")
    info = _wait_for(client, "fragile", "ERROR")
    assert info.error is not None and info.error.message == "not fixed yet"
    (tmp_path / "fixed").touch()  # the fix is deployed
    # retry without a failed step is resume.
    done = run_cli("retry", "fragile", "--db", workers.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no step of workflow 'fragile' failed: resumed as it is: ")
    info = _wait_for(client, "fragile", "SUCCESS")
    assert info.output == "fixed"
    assert _counts(tmp_path) == {"first": 1, "second": 1}
    code, _, err = worker.stop()
    assert code == 0, err


def test_actions_on_a_missing_workflow_exit_1(ran: Ran) -> None:
    for command in ("cancel", "resume", "retry"):
        done = run_cli(command, "no-such-id", "--db", ran.url)
        assert done.returncode == 1, done
        assert "no-such-id" in one_error_line(done)
        assert run_cli(command, "no-such-id", "--db", ran.url, "--json").returncode == 1


# -- approve and reject, as JSON -------------------------------------------------------------


@sqlite_only
def test_approve_and_reject_print_json(
    workers: Workers, client: perdure.Engine, tmp_path: Path
) -> None:
    worker = workers.start()
    _enqueue(client, "ops_approval", tmp_path, "ship-1")
    _wait_for(client, "ship-1", "WAITING")
    [pending] = json.loads(run_cli("approvals", "--db", workers.url, "--json").stdout)
    assert (pending["workflow_id"], pending["name"]) == ("ship-1", "ship")
    done = run_cli(
        "approve", "ship-1", "ship", "--by", "ops", "--comment", "go", "--json", "--db", workers.url
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "workflow_id": "ship-1",
        "name": "ship",
        "status": "APPROVED",
        "by": "ops",
        "comment": "go",
    }
    info = _wait_for(client, "ship-1", "SUCCESS")
    assert info.output == {"approved": True, "by": "ops", "comment": "go"}
    late = run_cli("reject", "ship-1", "ship", "--json", "--db", workers.url)
    assert late.returncode == 1
    assert "no pending approval named 'ship'" in one_error_line(late)
    code, _, err = worker.stop()
    assert code == 0, err


# -- worker --------------------------------------------------------------------------------


@sqlite_only
def test_worker_releases_in_flight_work_on_sigterm(
    workers: Workers, client: perdure.Engine, tmp_path: Path
) -> None:
    first = workers.start()
    assert re.fullmatch(
        r"worker [0-9a-f]{32} ready: 5 workflows registered: ops_approval, ops_fragile, "
        rf"ops_gate, ops_inbox, ops_retry; database {re.escape(workers.url)}; queues: ops",
        first.ready,
    ), first.ready
    _enqueue(client, "ops_gate", tmp_path, "gate-1")  # from this process, run by the worker
    wait_until(lambda: ("gate", first.pid) in _ledger(tmp_path), timeout=WAIT)

    for command in ("resume", "retry"):
        running = run_cli(command, "gate-1", "--db", workers.url)
        assert running.returncode == 1, running
        assert "workflow 'gate-1' is RUNNING: only ERROR, CANCELLED and DEAD_LETTER" in (
            one_error_line(running)
        )

    # SIGTERM while the gate step blocks: the worker gives it the grace, then releases the
    # workflow and exits 0.
    code, out, err = first.stop(signal.SIGTERM)
    assert code == 0, err
    worker_id = first.ready.split()[1]
    assert out.startswith(f"worker {worker_id} stopping (SIGTERM): in-flight steps get 0.5 s")
    released = client.get_workflow("gate-1")
    assert (released.status, released.owner) == (perdure.WorkflowStatus.PENDING, None)

    # Another worker takes it over at once and finishes it: nothing is lost.
    second = workers.start()
    wait_until(lambda: ("gate", second.pid) in _ledger(tmp_path), timeout=WAIT)
    (tmp_path / "open").touch()
    info = _wait_for(client, "gate-1", "SUCCESS")
    assert info.output == "opened"
    assert info.recoveries == 0  # released cleanly, not taken over from a dead worker
    ran = _ledger(tmp_path)
    # The first step replayed in the second worker; the step in flight ran in both.
    assert ran.count(("one", first.pid)) == 1 and ("one", second.pid) not in ran
    assert ("gate", first.pid) in ran and ("gate", second.pid) in ran
    assert ("done", second.pid) in ran and ("done", first.pid) not in ran
    code, out, err = second.stop(signal.SIGINT)
    assert code == 0, err
    assert "stopping (SIGINT)" in out


def test_worker_with_a_bad_module_exits_2(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'app.db'}"
    (tmp_path / "broken.py").write_text("import perdure\n\nraise RuntimeError('boom')\n")
    (tmp_path / "typo.py").write_text("def f(:\n    pass\n")
    (tmp_path / "empty.py").write_text("import perdure\n\nx = 1\n")
    cases = {
        "missing.py": "no such file",
        "no_such_module_here": "no module named 'no_such_module_here' in the current folder",
        "broken.py": "RuntimeError: boom (",
        "broken": "RuntimeError: boom (",
        "typo.py": "SyntaxError: ",
        "empty.py": "empty.py registers no workflow",
        "empty": "empty registers no workflow",
    }
    for module, message in cases.items():
        done = run_cli("worker", module, "--db", db_url, cwd=tmp_path)
        assert done.returncode == 2, (module, done)
        assert message in one_error_line(done), module
    assert "line 3" in run_cli("worker", "broken.py", "--db", db_url, cwd=tmp_path).stderr


def test_worker_imports_a_dotted_module_from_the_current_folder(tmp_path: Path) -> None:
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "flows.py").write_text(
        "import perdure\n\n\n@perdure.workflow(name='mine')\ndef mine() -> int:\n    return 1\n"
    )
    # Imported, then the database is unreachable: exit 3 (not 2: the module was fine).
    done = run_cli("worker", "myapp.flows", "--db", UNREACHABLE, cwd=tmp_path)
    assert done.returncode == 3, done
    assert "cannot open PostgreSQL" in done.stderr


# -- migrate -------------------------------------------------------------------------------


def _schema_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT MAX(version) FROM perdure_schema").fetchone()[0])
    finally:
        conn.close()


def test_migrate_creates_the_schema_and_prints_its_version(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    url = f"sqlite:///{path}"
    done = run_cli("migrate", "--db", url)
    assert done.returncode == 0, done.stderr
    version = _schema_version(path)
    assert version >= 1
    assert done.stdout == (
        f"database {url} is at schema version {version} (perdure {perdure.__version__})\n"
    )
    again = run_cli("migrate", "--db", url, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"database": url, "schema_version": version}
    assert _schema_version(path) == version


def test_migrate_postgres(pg_url: str) -> None:
    done = run_cli("migrate", "--db", pg_url, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    import psycopg

    schema = pg_url.rpartition("schema=")[2]
    with psycopg.connect(pg_url.partition("?")[0]) as conn:
        found = conn.execute(f"SELECT MAX(version) FROM {schema}.perdure_schema").fetchone()
    assert found is not None
    assert data["schema_version"] == found[0]


# -- exit codes ----------------------------------------------------------------------------


def test_new_commands_exit_3_when_the_database_is_unreachable(tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text(
        "import perdure\n\n\n@perdure.workflow(name='mine')\ndef mine() -> int:\n    return 1\n"
    )
    nowhere = f"sqlite:///{tmp_path / 'nowhere' / 'app.db'}"
    for url in (UNREACHABLE, nowhere):
        for args in (
            ["cancel", "some-id"],
            ["resume", "some-id"],
            ["retry", "some-id", "--json"],
            ["migrate"],
            ["list", "--since", "1h"],
            ["worker", "flows.py"],
        ):
            done = run_cli(*args, "--db", url, cwd=tmp_path)
            assert done.returncode == 3, (args, done)
            assert done.stderr.splitlines()[-1].startswith("perdure: "), done.stderr
    assert not (tmp_path / "nowhere").exists()


def test_new_commands_usage_errors_exit_2(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    for args in (
        ["cancel"],
        ["resume", "a", "b"],
        ["retry"],
        ["worker"],
        ["worker", "flows.py", "--max-threads", "0"],
        ["worker", "flows.py", "--shutdown-grace", "-1"],
        ["migrate", "extra"],
        ["migrate", "--db", "app.db"],  # no scheme
    ):
        done = run_cli(*args, *(["--db", url] if "--db" not in args else []), cwd=tmp_path)
        assert done.returncode == 2, (args, done)
