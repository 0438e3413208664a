"""Acceptance tests of the PostgreSQL store with real processes: several workers on one
database, killed with SIGKILL, frozen with SIGSTOP, and PostgreSQL itself restarted.

The workers are ``tests/apps/pg_worker_app.py`` child processes. Their workflows alternate a
``@perdure.transaction`` step (writes the application tables ``ledger``, with a primary key,
and ``tx_runs``, without one, in the same schema as the journal) and a plain step (appends a
line "<workflow> <position> <pid>" to a ledger file). What the database and the ledger file
hold afterwards tells how often each step body ran and which process committed it.

Each test gets a fresh schema from the ``pg_url`` fixture and is skipped when PostgreSQL
cannot be reached. Children's stdout and stderr go to files in the test's folder; their
stderr is printed at the end of every test (shown by pytest when a test fails).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from conftest import APPS

try:
    import psycopg
except ImportError:  # pragma: no cover - dev installs have it
    pytest.skip("psycopg is not installed", allow_module_level=True)

pytestmark = pytest.mark.crash

APP = APPS / "pg_worker_app.py"
STEPS = 10
BOOK_POSITIONS = range(0, STEPS, 2)  # @perdure.transaction steps
NOTE_POSITIONS = range(1, STEPS, 2)  # plain steps
LEASE = ["--lease", "1.5", "--heartbeat", "0.3", "--recovery-interval", "0.3"]
# A SIGKILLed worker is taken over at once whatever its lease (its pid is gone from this
# host); a longer lease only keeps a live worker starved of CPU on a loaded machine from
# losing its workflows (which would rightly re-run a step it was in).
KILL_LEASE = ["--lease", "6", "--heartbeat", "0.5", "--recovery-interval", "0.3"]
NOW_SQL = "extract(epoch from clock_timestamp())::double precision"  # the store's clock


# -- database helpers ------------------------------------------------------------------------


def split_schema(pg_url: str) -> tuple[str, str]:
    """The libpq URL without perdure's ``schema`` parameter, and the schema."""
    parts = urlsplit(pg_url)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema")
    return urlunsplit(parts._replace(query=urlencode(query))), schema


@contextmanager
def connect(pg_url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """An autocommit connection whose search_path is the test's schema."""
    conninfo, schema = split_schema(pg_url)
    with psycopg.connect(
        conninfo, autocommit=True, connect_timeout=5, options=f"-c search_path={schema}"
    ) as conn:
        yield conn


def query(pg_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with connect(pg_url) as conn:
        return conn.execute(sql, params).fetchall()


def create_app_tables(pg_url: str) -> None:
    with connect(pg_url) as conn:
        conn.execute(
            "CREATE TABLE ledger (workflow_id TEXT NOT NULL, position INTEGER NOT NULL, "
            "PRIMARY KEY (workflow_id, position))"
        )
        conn.execute(
            "CREATE TABLE tx_runs (workflow_id TEXT NOT NULL, position INTEGER NOT NULL, "
            "idem_key TEXT NOT NULL, pid INTEGER NOT NULL, execution BIGINT NOT NULL)"
        )
        conn.execute("CREATE SEQUENCE tx_executions")


def status_counts(pg_url: str) -> Counter[str]:
    """Workflows by status ({} before the engine created its tables)."""
    try:
        rows = query(pg_url, "SELECT status, COUNT(*) FROM workflows GROUP BY status")
    except psycopg.errors.UndefinedTable:
        return Counter()
    return Counter({status: count for status, count in rows})


def step_count(pg_url: str) -> int:
    return int(query(pg_url, "SELECT COUNT(*) FROM steps")[0][0])


def unfinished_report(pg_url: str) -> str:
    """Where the unfinished workflows stand, and the workers: for a failure message."""
    rows = query(
        pg_url,
        "SELECT w.id, w.status, w.owner, w.epoch, w.recoveries, w.stalls, "
        "(SELECT COUNT(*) FROM steps s WHERE s.workflow_id = w.id) FROM workflows w "
        "WHERE w.status <> 'SUCCESS' ORDER BY w.id LIMIT 20",
    )
    failed = query(
        pg_url,
        "SELECT id, status, error FROM workflows WHERE status NOT IN ('SUCCESS', 'RUNNING') "
        "ORDER BY id LIMIT 5",
    )
    workers = query(pg_url, "SELECT id, pid, expires_at FROM workers ORDER BY pid")
    return (
        f"not SUCCESS (id, status, owner, epoch, recoveries, stalls, steps): {rows}\n"
        f"failed (id, status, error): {failed}\n"
        f"workers (id, pid, expires_at) at {time.time():.2f}: {workers}"
    )


class LeaseWatch(threading.Thread):
    """Samples the workers table every 0.1 s and notes live worker processes seen with an
    expired heartbeat (which others may take work from): evidence for a failure message."""

    def __init__(self, pg_url: str) -> None:
        super().__init__(name="lease-watch", daemon=True)
        self.pg_url = pg_url
        self.halt = threading.Event()
        self.overdue: dict[int, float] = {}  # pid -> longest time seen past its expiry

    def run(self) -> None:
        while not self.halt.wait(0.1):
            try:
                rows = query(
                    self.pg_url,
                    f"SELECT pid, {NOW_SQL} - expires_at FROM workers WHERE expires_at < {NOW_SQL}",
                )
            except psycopg.Error:
                continue
            for pid, late in rows:
                if Path(f"/proc/{pid}").exists():  # killed children are reaped at once
                    self.overdue[pid] = max(self.overdue.get(pid, 0.0), float(late))

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)


# -- child processes -------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout_lines(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    def stderr_tail(self, lines: int = 40) -> str:
        text = self.err.read_text(errors="replace") if self.err.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_line(self, line: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.stdout_lines():
            assert self.proc.poll() is None, (
                f"{self.name} exited with {self.proc.returncode} before printing {line!r}:\n"
                f"{self.stderr_tail()}"
            )
            assert time.monotonic() < deadline, f"{self.name} did not print {line!r}"
            time.sleep(0.02)

    def sigkill(self) -> None:
        self.killed = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)  # reaped: its pid no longer exists


class Children:
    """The test's worker processes; all of them are killed and reaped in :meth:`cleanup`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.all: list[Child] = []

    def spawn(self, name: str, *args: str) -> Child:
        out, err = self.folder / f"{name}.out", self.folder / f"{name}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, str(APP), *args], stdout=stdout, stderr=stderr, env=os.environ
            )
        child = Child(name, proc, out, err)
        self.all.append(child)
        return child

    def alive(self) -> list[Child]:
        return [c for c in self.all if c.proc.poll() is None]

    def killed_pids(self) -> set[int]:
        return {c.pid for c in self.all if c.killed}

    def check_alive(self) -> None:
        """Fail at once if a child that was not killed on purpose has died."""
        for c in self.all:
            if not c.killed and c.proc.poll() is not None:
                pytest.fail(f"{c.name} exited with {c.proc.returncode}:\n{c.stderr_tail()}")

    def cleanup(self) -> None:
        for c in self.all:
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGCONT)  # a stopped child dies the same
                c.proc.kill()
            c.proc.wait(timeout=10)
        for c in self.all:
            print(f"--- {c.name} (pid {c.pid}, exit {c.proc.returncode}), stderr tail:")
            print(c.stderr_tail(15))


def wait_for(predicate: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting: {what()}"
        time.sleep(0.05)


def wait_all_success(pg_url: str, children: Children, total: int, timeout: float) -> None:
    def done() -> bool:
        children.check_alive()
        counts = status_counts(pg_url)
        finished_badly = {s: n for s, n in counts.items() if s not in ("SUCCESS", "RUNNING")}
        assert not finished_badly, f"{finished_badly}\n{unfinished_report(pg_url)}"
        return counts["SUCCESS"] == total

    wait_for(done, timeout, lambda: unfinished_report(pg_url))


def stop_workers(children: Children, stop_file: Path) -> None:
    """Let the live workers close their engines; each must exit cleanly."""
    stop_file.touch()
    for c in children.alive():
        c.proc.wait(timeout=30)
    for c in children.all:
        if not c.killed:
            assert c.proc.returncode == 0, f"{c.name} exited with {c.proc.returncode}"


# -- checks shared by the tests --------------------------------------------------------------


def read_ledger(path: Path) -> dict[tuple[str, int], list[int]]:
    """(workflow, position) -> pids that ran that plain step's body, in order."""
    runs: dict[tuple[str, int], list[int]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            wf, position, pid = line.split()[:3]
            runs[wf, int(position)].append(int(pid))
    return runs


def journal(pg_url: str) -> dict[tuple[str, int], tuple[str, str, Any]]:
    """(workflow, position) -> (key, step name, decoded output) of every journal entry."""
    rows = query(pg_url, "SELECT workflow_id, position, key, name, output FROM steps")
    return {(wf, pos): (key, name, json.loads(out)) for wf, pos, key, name, out in rows}


def check_exactly_once_transactions(
    pg_url: str, ids: list[str], steps: dict[tuple[str, int], tuple[str, str, Any]]
) -> int:
    """Every transaction step's writes are there exactly once, committed with its journal
    entry by the process that journaled it. Returns how many executions of transaction
    bodies were rolled back (killed or failed mid-transaction)."""
    expected = {(wf, p) for wf in ids for p in BOOK_POSITIONS}
    ledger_rows = query(pg_url, "SELECT workflow_id, position FROM ledger")
    assert len(ledger_rows) == len(expected)
    assert set(ledger_rows) == expected
    runs = query(pg_url, "SELECT workflow_id, position, idem_key, pid FROM tx_runs")
    per_step = Counter((wf, pos) for wf, pos, _, _ in runs)
    assert {k: n for k, n in per_step.items() if n != 1} == {}, "a transaction body committed twice"
    assert set(per_step) == expected
    for wf, pos, idem_key, pid in runs:
        assert idem_key == f"{wf}:{pos}"
        key, name, output = steps[wf, pos]
        assert (key, name, output) == (str(pos), "book", pid), (wf, pos)
    [(executions,)] = query(pg_url, "SELECT last_value FROM tx_executions")
    return int(executions) - len(runs)


def check_results(pg_url: str, ids: list[str]) -> None:
    rows = query(pg_url, "SELECT id, status, output FROM workflows")
    assert sorted(r[0] for r in rows) == ids
    for wf, status, output in rows:
        assert (status, json.loads(output)) == ("SUCCESS", f"{wf}:{sum(range(STEPS))}")


def check_journals(pg_url: str, ids: list[str]) -> dict[tuple[str, int], tuple[str, str, Any]]:
    steps = journal(pg_url)
    assert len(steps) == len(ids) * STEPS
    expected = [
        (pos, str(pos), "book" if pos in BOOK_POSITIONS else "note") for pos in range(STEPS)
    ]
    for wf in ids:  # positions gap-free and in call order, each under its own replay key
        found = sorted((pos, key, name) for (w, pos), (key, name, _) in steps.items() if w == wf)
        assert found == expected, wf
    return steps


# -- 1: four workers, random SIGKILLs --------------------------------------------------------

WORKERS = 4
WORKFLOWS = 200
KILL_SEED = 20240605


@pytest.mark.timeout(120)
def test_four_workers_share_200_workflows_through_random_sigkills(
    pg_url: str, tmp_path: Path
) -> None:
    create_app_tables(pg_url)
    ledger, stop_file = tmp_path / "ledger.txt", tmp_path / "stop"
    ids = [f"wf-{i:03d}" for i in range(WORKFLOWS)]
    common = ["--db", pg_url, "--ledger", str(ledger), "--stop-file", str(stop_file), *KILL_LEASE,
              "--steps", str(STEPS), "--max-threads", "8", "--step-sleep", "0.1",
              "--step-sleep-max", "0.5", "--book-sleep", "0.02"]  # fmt: skip
    seed = int(os.environ.get("PERDURE_TEST_KILL_SEED", KILL_SEED))
    rng = random.Random(seed)
    children = Children(tmp_path)
    watch = LeaseWatch(pg_url)
    began = time.monotonic()
    try:
        quarter = WORKFLOWS // WORKERS
        for w in range(WORKERS):
            mine = ids[w * quarter : (w + 1) * quarter]
            children.spawn(f"worker{w}", *common, "--mode", "start", "--ids", ",".join(mine))
        for c in list(children.all):
            c.wait_for_line("started")
        watch.start()
        kills, kills_mid_run = rng.randint(6, 10), 0
        for n in range(kills):
            time.sleep(rng.uniform(0.5, 2.0))
            children.check_alive()
            victim = rng.choice(children.alive())
            victim.sigkill()
            unfinished = WORKFLOWS - status_counts(pg_url)["SUCCESS"]
            kills_mid_run += unfinished > 0
            print(f"{time.monotonic() - began:5.1f}s killed {victim.name} (pid {victim.pid}); "
                  f"{unfinished} workflows unfinished")  # fmt: skip
            children.spawn(f"replacement{n}", *common, "--mode", "recover")
        wait_all_success(pg_url, children, WORKFLOWS, timeout=60)
        duration = time.monotonic() - began
        watch.stop()
        stop_workers(children, stop_file)

        check_results(pg_url, ids)
        steps = check_journals(pg_url, ids)
        rolled_back = check_exactly_once_transactions(pg_url, ids, steps)

        # Plain steps: at least once; a body ran again only when a SIGKILL interrupted the
        # process that ran it before it could commit, and the last run is the committed one.
        killed = children.killed_pids()
        runs = read_ledger(ledger)
        assert set(runs) == {(wf, p) for wf in ids for p in NOTE_POSITIONS}
        reruns = 0
        for (wf, pos), pids in runs.items():
            reruns += len(pids) - 1
            assert set(pids[:-1]) <= killed, (
                f"step {pos} of {wf} ran in {pids} (killed: {sorted(killed)}): it ran again "
                "although the process that ran it before was not killed (live workers seen "
                f"with an expired heartbeat, pid: seconds late: {watch.overdue})"
            )
            assert steps[wf, pos][2] == pids[-1], f"{wf} {pos}: {steps[wf, pos]} vs {pids}"
        recoveries = sum(r[0] for r in query(pg_url, "SELECT recoveries FROM workflows"))
        print(f"seed {seed}: {kills} kills ({kills_mid_run} while workflows ran), {reruns} plain "
              f"steps re-run, {rolled_back} transaction bodies rolled back, {recoveries} "
              f"takeovers, all done in {duration:.1f}s; live workers seen with an expired "
              f"heartbeat: {watch.overdue}")  # fmt: skip
        assert kills_mid_run >= 3, "the run ended before most kills: it proves too little"
    finally:
        if watch.is_alive():
            watch.stop()
        children.cleanup()


# -- 2: a frozen worker --------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_frozen_worker_on_postgres_commits_nothing_after_takeover(
    pg_url: str, tmp_path: Path
) -> None:
    """SIGSTOP worker A inside step 1, past its lease: worker B takes the workflow over and
    enters step 1 too. A is woken and let out of step 1 while B still holds it: A's commit is
    fenced off, and A runs nothing more. Then B finishes the workflow."""
    create_app_tables(pg_url)
    ledger, stop_file, gate = tmp_path / "ledger.txt", tmp_path / "stop", tmp_path / "gate"
    common = ["--db", pg_url, "--ledger", str(ledger), "--stop-file", str(stop_file), *LEASE,
              "--steps", "6", "--step-sleep", "0.01"]  # fmt: skip
    children = Children(tmp_path)

    def entries() -> list[list[str]]:
        return [line.split() for line in ledger.read_text().splitlines()] if ledger.exists() else []

    try:
        a = children.spawn("A", *common, "--mode", "start", "--gate-id", "frozen",
                           "--gate-prefix", str(gate), "--until", "results")  # fmt: skip
        a.wait_for_line("started")
        wait_for(lambda: ["frozen", "1", str(a.pid), "enter"] in entries(), 30, lambda: "")
        a.proc.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()

        b = children.spawn("B", *common, "--mode", "recover")
        wait_for(
            lambda: ["frozen", "1", str(b.pid), "enter"] in entries(),
            30,
            lambda: f"B never entered step 1: {entries()}\n{unfinished_report(pg_url)}",
        )
        takeover = time.monotonic() - frozen_at
        assert takeover > 1.0, "a frozen worker's workflow was taken before its lease expired"
        [(epoch, recoveries)] = query(
            pg_url, "SELECT epoch, recoveries FROM workflows WHERE id = 'frozen'"
        )
        assert (epoch, recoveries) == (2, 1)
        before = journal(pg_url)
        assert before == {("frozen", 0): ("0", "book", a.pid)}

        # Wake A and let it out of step 1 while B is still inside it.
        Path(f"{gate}.{a.pid}").touch()
        a.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: ["frozen", "1", str(a.pid), "leave"] in entries(), 30, lambda: "")
        time.sleep(1.5)  # A's commit attempt, and anything it might run after it
        assert journal(pg_url) == before, "the frozen worker committed after the takeover"
        assert query(pg_url, "SELECT position, pid FROM tx_runs") == [(0, a.pid)]
        assert query(pg_url, "SELECT * FROM ledger") == [("frozen", 0)]
        assert query(pg_url, "SELECT epoch FROM workflows WHERE id = 'frozen'") == [(2,)]

        Path(f"{gate}.{b.pid}").touch()
        a.wait_for_line(",".join([str(a.pid)] + [str(b.pid)] * 5))  # A sees B's result
        children.check_alive()
        stop_workers(children, stop_file)

        steps = journal(pg_url)
        assert sorted(steps) == [("frozen", p) for p in range(6)]
        assert [steps["frozen", p][2] for p in range(6)] == [a.pid] + [b.pid] * 5
        assert sorted(query(pg_url, "SELECT position, pid FROM tx_runs")) == [
            (0, a.pid), (2, b.pid), (4, b.pid),
        ]  # fmt: skip
        assert [(e[1], int(e[2]), e[3:]) for e in entries()] == [
            ("1", a.pid, ["enter"]),
            ("1", b.pid, ["enter"]),
            ("1", a.pid, ["leave"]),  # A's body finished, but its commit was fenced off
            ("1", b.pid, ["leave"]),
            ("3", b.pid, []),
            ("5", b.pid, []),
        ]
        print(f"takeover of the frozen worker's workflow {takeover:.2f}s after SIGSTOP")
    finally:
        children.cleanup()


# -- 3: PostgreSQL restarted mid-run ---------------------------------------------------------


def pg_version() -> str:
    [version] = os.listdir("/etc/postgresql")
    return version


def pg_ctlcluster(action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", pg_version(), "main", action],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.timeout(120)
def test_postgres_restart_mid_run_loses_nothing(pg_url: str, tmp_path: Path) -> None:
    local = urlsplit(pg_url).hostname in ("127.0.0.1", "localhost", "::1")
    clusters = os.listdir("/etc/postgresql") if os.path.isdir("/etc/postgresql") else []
    if not local or len(clusters) != 1 or shutil.which("pg_ctlcluster") is None:
        pytest.skip("needs the test PostgreSQL to be the one local pg_ctlcluster cluster")
    create_app_tables(pg_url)
    ledger, stop_file = tmp_path / "ledger.txt", tmp_path / "stop"
    ids = [f"wf-{i:03d}" for i in range(40)]
    common = ["--db", pg_url, "--ledger", str(ledger), "--stop-file", str(stop_file),
              "--lease", "5", "--heartbeat", "0.5", "--recovery-interval", "0.5",
              "--steps", str(STEPS), "--step-sleep", "1.0", "--step-sleep-max", "3.0",
              "--book-sleep", "0.3"]  # fmt: skip
    children = Children(tmp_path)
    began = time.monotonic()
    restarted = False
    try:
        for w in range(2):
            mine = ids[w * 20 : (w + 1) * 20]
            children.spawn(f"worker{w}", *common, "--mode", "start", "--ids", ",".join(mine))
        for c in list(children.all):
            c.wait_for_line("started")
        wait_for(lambda: step_count(pg_url) >= 60, 30, lambda: unfinished_report(pg_url))
        before_restart = step_count(pg_url)
        assert status_counts(pg_url)["SUCCESS"] == 0, "too late: workflows already finished"

        restart_began = time.monotonic()
        restarted = True
        done = pg_ctlcluster("restart")
        assert done.returncode == 0, f"pg_ctlcluster restart failed: {done.stdout}{done.stderr}"
        restart_ended = time.monotonic()
        baseline = step_count(pg_url)  # PostgreSQL accepts connections once restart returns

        def step_committed() -> bool:
            children.check_alive()
            return step_count(pg_url) > baseline

        wait_for(
            step_committed,
            30,
            lambda: f"no step committed after the restart\n{unfinished_report(pg_url)}",
        )
        first_commit = time.monotonic() - restart_ended
        wait_all_success(pg_url, children, len(ids), timeout=60)
        duration = time.monotonic() - began
        stop_workers(children, stop_file)

        check_results(pg_url, ids)
        steps = check_journals(pg_url, ids)
        rolled_back = check_exactly_once_transactions(pg_url, ids, steps)
        runs = read_ledger(ledger)
        assert set(runs) == {(wf, p) for wf in ids for p in NOTE_POSITIONS}
        for (wf, pos), pids in runs.items():
            assert steps[wf, pos][2] in pids, (wf, pos)
        reruns = sum(len(pids) - 1 for pids in runs.values())
        recoveries = sum(r[0] for r in query(pg_url, "SELECT recoveries FROM workflows"))
        print(f"restart took {restart_ended - restart_began:.2f}s with {before_restart} steps "
              f"committed; first commit {first_commit:.2f}s after it; {reruns} plain steps "
              f"re-run, {rolled_back} transaction bodies rolled back, {recoveries} takeovers; "
              f"all done in {duration:.1f}s")  # fmt: skip
        assert first_commit < 10
    finally:
        try:
            children.cleanup()
        finally:
            if restarted and pg_ctlcluster("status").returncode != 0:
                started = pg_ctlcluster("start")
                print(f"PostgreSQL was down after the test; started it: {started.returncode}")
