"""The crash matrix: every failpoint x {kill, raise, drop} x both backends x a few seeds.

Each case runs real child processes (``tests/apps/matrix_app.py``) on a database of its own
(a SQLite file, or a fresh PostgreSQL schema). The seed picks the workload (4 to 6 workflows
of 6 to 8 operations: plain steps writing a ledger file, ``@perdure.transaction`` steps
writing a table, a durable timer, two to four messages received in order; a third of the
workflows async) and the hit at which the failpoint acts. A case goes:

1. (``recovery.claim`` only) a predecessor process starts part of the workload and is killed
   in the middle of it, so the faulty process has workflows to take over.
2. The faulty process, armed with ``PERDURE_FAILPOINTS="<point>=<action>@<hit>"``, starts
   every workflow; the parent sends the first messages once the starts are acknowledged,
   and the rest once the failpoint fired (or the process ended, or the workload stalled
   waiting for them).
3. ``kill``: the process dies. ``raise`` and ``drop``: the engine must cope, and this same
   process must finish every workflow. If it did not (killed, or failed), a clean process
   recovers everything.
4. The invariants are checked on what the database and the ledger hold (``check_case``):
   every acknowledged start ended SUCCESS with the expected result; every transaction
   step applied exactly once; every plain step ran once, or twice only when the run was
   interrupted between its side effect and its commit; every message consumed once, in
   send order; no timer fired early (by the database's clock); journal positions gap-free;
   SQLite's ``PRAGMA integrity_check`` is ok; the failpoint fired.

A table (failpoint, action, backend, seed, result) is printed, and the test fails on any
violation. ``python tests/crash/test_crash_matrix.py [--backend sqlite] [--seeds 1,2,3]
[--points store.consume,...] [--actions kill]`` runs (part of) the matrix by hand and exits
non-zero on a violation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # conftest, when run by hand

import perdure
from conftest import APPS, POSTGRES_URL, _backends, _postgres_or_skip
from perdure._failpoints import POINTS  # the matrix covers every failpoint there is

pytestmark = pytest.mark.crash

ACTIONS = ("kill", "raise", "drop")
SEEDS = (1, 2)
PARALLEL = 3  # cases at once: their children mostly wait (timers, messages, fsync)
SLEEP = 0.4  # the workload's timer: above the children's suspend_after, so it unloads

#: points where a step's body has run and its journal entry is not written yet: a run
#: interrupted there re-runs that step
MID_STEP = frozenset({"step.before_commit", "store.append_step"})


@dataclass(frozen=True)
class Case:
    backend: str
    point: str
    action: str
    seed: int

    @property
    def spec(self) -> str:
        return f"{self.point}={self.action}@{hit_number(self)}"


@dataclass
class Outcome:
    case: Case
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def result(self) -> str:
        if self.violations:
            return "VIOLATION: " + "; ".join(self.violations)
        return "ok" + (f" ({', '.join(self.notes)})" if self.notes else "")


# -- the workload ------------------------------------------------------------------------------


def workload(seed: int) -> dict[str, list[str]]:
    """Workflow id -> plan (see matrix_app.py), picked by the seed."""
    rng = random.Random(seed)
    plans: dict[str, list[str]] = {}
    for i in range(rng.randint(4, 6)):
        ops = ["note", "book", "sleep", "recv", "recv", "note"]
        ops += rng.choices(["note", "book", "recv"], k=rng.randint(0, 2))
        rng.shuffle(ops)
        plans[f"wf{i}" + ("-async" if i % 3 == 2 else "")] = ops
    return plans


def messages_of(wf: str, plan: list[str]) -> list[str]:
    """The payloads sent to ``wf``, in send order (one per ``recv``)."""
    return [f"{wf}:m{j}" for j in range(plan.count("recv"))]


def expected_result(wf: str, plan: list[str]) -> list[str]:
    payloads = iter(messages_of(wf, plan))
    return [next(payloads) if op == "recv" else f"{op[0]}{i}" for i, op in enumerate(plan)]


def hit_number(case: Case) -> int:
    """The hit the failpoint acts on: picked by the seed among the hits the workload is sure
    to reach (counted from the plans; timing-dependent points get small numbers)."""
    plans = workload(case.seed)
    ops = Counter(op for plan in plans.values() for op in plan)
    commits = ops["note"] + ops["sleep"]  # plain journal entries (a timer is one)
    transacts = ops["book"] + ops["sleep"]  # transaction steps (after a timer: matrix_woke)
    reach = {
        "step.before_commit": commits + transacts,
        "step.after_commit": commits + transacts + ops["recv"],
        "message.consume": ops["recv"],
        "workflow.finish": len(plans),
        "workflow.launch": 2,  # woken by a timer or a message: at least once per workflow
        "store.append_step": commits,
        "store.append_transaction": transacts,
        "store.consume": ops["recv"],
        "store.finish": len(plans),
        "timer.fire": 2,
        "recovery.claim": 1,
        "lease.renew": 4,
    }[case.point]
    lowest = 2 if case.point == "lease.renew" else 1  # hit 1 is in Engine.open
    rng = random.Random(f"{case.seed}/{case.point}/{case.action}")
    return rng.randint(lowest, max(lowest, reach * 2 // 3))


# -- databases ---------------------------------------------------------------------------------

EFFECTS_DDL = "CREATE TABLE matrix_effects (wf TEXT NOT NULL, key TEXT NOT NULL, pid INTEGER)"


class Database:
    """One case's database, and raw reads of what perdure's API does not show."""

    def __init__(self, backend: str, folder: Path) -> None:
        self.backend = backend
        self.file = folder / "matrix.db"
        self.schema = f"perdure_matrix_{uuid.uuid4().hex[:12]}"
        if backend == "sqlite":
            self.url = f"sqlite:///{self.file}"
        else:
            sep = "&" if "?" in POSTGRES_URL else "?"
            self.url = f"{POSTGRES_URL}{sep}schema={self.schema}"

    def create(self) -> None:
        if self.backend == "sqlite":
            with closing_sqlite(self.file) as conn:
                conn.execute(EFFECTS_DDL)
            return
        with self._pg(search_path=False) as conn:
            conn.execute(f"CREATE SCHEMA {self.schema}")
            conn.execute(f"CREATE TABLE {self.schema}.{EFFECTS_DDL.split(' ', 2)[2]}")

    def drop(self) -> None:
        if self.backend == "postgres":
            with self._pg(search_path=False) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if self.backend == "sqlite":
            with closing_sqlite(self.file) as conn:
                return conn.execute(sql, params).fetchall()
        with self._pg() as conn:
            rows: list[tuple[Any, ...]] = conn.execute(sql.replace("?", "%s"), params).fetchall()
            return rows

    @contextmanager
    def _pg(self, search_path: bool = True) -> Iterator[Any]:
        import psycopg

        options = f"-c search_path={self.schema}" if search_path else ""
        with psycopg.connect(POSTGRES_URL, autocommit=True, options=options) as conn:
            yield conn


@contextmanager
def closing_sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


# -- child processes ---------------------------------------------------------------------------


class Child:
    """One matrix_app.py process; its stdout and stderr go to files read while it runs."""

    def __init__(
        self,
        folder: Path,
        name: str,
        db: Database,
        ledger: Path,
        mode: str,
        plans: dict[str, list[str]],
        failpoints: str | None,
    ) -> None:
        self.out, self.err = folder / f"{name}.out", folder / f"{name}.err"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PERDURE_FAILPOINTS")}
        if failpoints is not None:
            env.update(PERDURE_TESTING="1", PERDURE_FAILPOINTS=failpoints)
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(APPS / "matrix_app.py"),
                    "--db",
                    db.url,
                    "--ledger",
                    str(ledger),
                    "--plans",
                    json.dumps(plans),
                    "--mode",
                    mode,
                    "--sleep",
                    str(SLEEP),
                ],
                stdout=out,
                stderr=err,
                env=env,
                text=True,
            )

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.out.read_text().splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
        return found

    def started(self) -> set[str]:
        return {line["started"] for line in self.lines() if "started" in line}

    def done(self) -> dict[str, Any] | None:
        return next((line["done"] for line in self.lines() if "done" in line), None)

    def fired(self) -> bool:
        return "perdure failpoint:" in self.err.read_text()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -999  # hung

    def stop(self) -> None:
        """Kill the process if it still runs (a harness error left it), and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def tail(self) -> str:
        lines = self.err.read_text().strip().splitlines()
        return " | ".join(lines[-3:])[-400:]


def poll(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Stall:
    """Tells when the journal stopped growing for a while: the workload waits for messages."""

    def __init__(self, db: Database, quiet: float = 0.3) -> None:
        self.db, self.quiet = db, quiet
        self.count, self.since = -1, time.monotonic()

    def __call__(self) -> bool:
        try:
            count = self.db.query("SELECT COUNT(*) FROM steps")[0][0]
        except Exception:  # the schema is not created yet
            count = -1
        if count != self.count:
            self.count, self.since = count, time.monotonic()
        return time.monotonic() - self.since > self.quiet


def send(
    engine: perdure.Engine, plans: dict[str, list[str]], batch: Callable[[str, int], bool]
) -> None:
    """Send the messages ``batch(wf, j)`` selects, in order, to the workflows that exist."""
    for wf, plan in plans.items():
        for j, payload in enumerate(messages_of(wf, plan)):
            if batch(wf, j):
                try:
                    engine.send(wf, "m", payload, idempotency_key=f"m{j}")
                except perdure.WorkflowNotFound:
                    break  # never created: nothing will wait for it


# -- one case ----------------------------------------------------------------------------------


def run_case(case: Case, folder: Path) -> Outcome:
    started = time.monotonic()
    outcome = Outcome(case)
    folder.mkdir(parents=True)
    db = Database(case.backend, folder)
    db.create()
    children: list[Child] = []
    try:
        with perdure.Engine(db.url, recover=False) as sender:
            evidence = _play(case, folder, db, sender, outcome, children)
            check_case(case, db, sender, evidence, outcome)
    except Exception as exc:  # the harness itself failed: report it, do not hide the rest
        outcome.violations.append(f"harness error: {exc!r}")
    finally:
        for child in children:
            child.stop()
        db.drop()
    outcome.seconds = time.monotonic() - started
    return outcome


@dataclass
class Evidence:
    plans: dict[str, list[str]]
    acknowledged: set[str]
    killed: set[int]
    ledger: Path
    fired: bool


def _play(
    case: Case,
    folder: Path,
    db: Database,
    sender: perdure.Engine,
    outcome: Outcome,
    children: list[Child],
) -> Evidence:
    plans = workload(case.seed)
    ledger = folder / "ledger.jsonl"

    def spawn(name: str, mode: str, which: dict[str, list[str]], spec: str | None) -> Child:
        children.append(Child(folder, name, db, ledger, mode, which, spec))
        return children[-1]

    acknowledged: set[str] = set()
    killed: set[int] = set()
    rng = random.Random(f"messages/{case.seed}")
    first = {wf: rng.randint(0, plan.count("recv")) for wf, plan in plans.items()}

    if case.point == "recovery.claim":  # something to take over: a predecessor dies mid-run
        part = dict(list(plans.items())[: len(plans) // 2 + 1])
        pre = spawn("predecessor", "run", part, "step.after_commit=kill@2")
        poll(lambda: pre.started() >= set(part) or pre.proc.poll() is not None, 30)
        send(sender, plans, lambda wf, j: j < first[wf])
        quiet = Stall(db)
        poll(lambda: pre.proc.poll() is not None or quiet(), 10)
        pre.proc.kill()  # SIGKILL, if its failpoint did not kill it already
        acknowledged |= pre.started()
        if pre.wait(10) != -9:
            outcome.violations.append(f"predecessor was to die, ended {pre.proc.returncode}")
        killed.add(pre.pid)

    child = spawn("faulty", "run", plans, case.spec)
    stalled = Stall(db)
    poll(lambda: child.started() >= set(plans) or child.proc.poll() is not None, 30)
    send(sender, plans, lambda wf, j: j < first[wf])
    poll(lambda: child.fired() or child.proc.poll() is not None or stalled(), 5)
    send(sender, plans, lambda wf, j: j >= first[wf])
    code = child.wait(60)
    acknowledged |= child.started()
    fired = child.fired()
    finished = code == 0 and child.done() is not None
    if case.action == "kill":
        if fired and code != -9:
            outcome.violations.append(f"killed process ended {code}")
        if code == -9:
            killed.add(child.pid)
    elif not finished:
        outcome.violations.append(
            f"the engine did not cope: the process ended {code} without finishing ({child.tail()})"
        )
    if not finished:
        clean = spawn("recovery", "recover", plans, None)
        code = clean.wait(45)
        if code != 0 or clean.done() is None:
            outcome.violations.append(f"recovery process ended {code}: {clean.tail()}")
    return Evidence(plans, acknowledged, killed, ledger, fired)


# -- the invariants ----------------------------------------------------------------------------


def check_case(
    case: Case, db: Database, engine: perdure.Engine, ev: Evidence, outcome: Outcome
) -> None:
    bad = outcome.violations
    if not ev.fired:
        bad.append(f"failpoint never reached ({case.spec}): the case tested nothing")
    journals: dict[str, list[perdure.StepInfo]] = {}
    for wf, plan in ev.plans.items():
        try:
            info = engine.get_workflow(wf)
        except perdure.WorkflowNotFound:
            if wf in ev.acknowledged:
                bad.append(f"{wf}: acknowledged start lost")
            continue
        if info.status is not perdure.WorkflowStatus.SUCCESS:
            error = f" ({info.error.type}: {info.error.message})" if info.error else ""
            bad.append(f"{wf}: {info.status.value}{error}")
            continue
        if info.output != expected_result(wf, plan):
            bad.append(f"{wf}: result {info.output!r}, expected {expected_result(wf, plan)!r}")
        journals[wf] = steps = engine.list_steps(wf)
        _check_journal(wf, plan, steps, bad)
        _check_messages(wf, plan, steps, db, bad)
    _check_effects(journals, db, bad)
    _check_ledger(case, journals, ev, outcome)
    if case.backend == "sqlite":
        found = db.query("PRAGMA integrity_check")
        if found != [("ok",)]:
            bad.append(f"PRAGMA integrity_check: {found}")


def _check_journal(wf: str, plan: list[str], steps: list[perdure.StepInfo], bad: list[str]) -> None:
    positions = [s.position for s in steps]
    if positions != list(range(len(steps))):
        bad.append(f"{wf}: journal positions not gap-free: {positions}")
    by_key = {s.key: s for s in steps}
    for s in steps:
        if s.name != "perdure.sleep":
            continue
        woke = by_key.get(str(int(s.key) + 1))
        if woke is None or woke.name != "matrix_woke":
            bad.append(f"{wf}: no matrix_woke after the timer at key {s.key}")
        elif woke.output < s.output:
            bad.append(f"{wf}: timer fired early: woke at {woke.output} < wake time {s.output}")
    if sum(s.name == "perdure.sleep" for s in steps) != plan.count("sleep"):
        bad.append(f"{wf}: {plan.count('sleep')} timers planned, journal has another count")


def _check_messages(
    wf: str, plan: list[str], steps: list[perdure.StepInfo], db: Database, bad: list[str]
) -> None:
    received = [s for s in steps if s.name == "perdure.receive"]
    if [s.output for s in received] != messages_of(wf, plan):
        bad.append(f"{wf}: received {[s.output for s in received]}, sent {messages_of(wf, plan)}")
    rows = db.query("SELECT seq, consumed_by FROM messages WHERE workflow_id = ? ORDER BY seq", wf)
    consumers = [by for _, by in rows]
    position = {s.key: s.position for s in received}
    if len(rows) != plan.count("recv") or None in consumers:
        bad.append(f"{wf}: messages not all consumed once: {rows}")
    elif [position.get(by, -1) for by in consumers] != sorted(position.values()):
        bad.append(f"{wf}: messages consumed out of send order: {rows}")


def _check_effects(
    journals: dict[str, list[perdure.StepInfo]], db: Database, bad: list[str]
) -> None:
    applied = Counter(
        (wf, key) for wf, key, _ in db.query("SELECT wf, key, pid FROM matrix_effects")
    )
    wanted = {
        (wf, s.key) for wf, steps in journals.items() for s in steps if s.name == "matrix_book"
    }
    for wf, key in sorted(wanted | set(applied)):
        if applied[(wf, key)] != 1 and wf in journals:
            bad.append(f"{wf}: transaction step {key} applied {applied[(wf, key)]} times")


def _check_ledger(
    case: Case, journals: dict[str, list[perdure.StepInfo]], ev: Evidence, outcome: Outcome
) -> None:
    """Plain steps ran once; twice only when the run was interrupted between the body and
    its commit: the two runs are consecutive in the workflow's ledger (nothing of the
    workflow ran between), and it was killed there (the first run was the killed process's
    last step of that workflow) or the fault, raised there, stopped the run."""
    entries = (
        [json.loads(line) for line in ev.ledger.read_text().splitlines()]
        if ev.ledger.exists()
        else []
    )
    counts = Counter((e["wf"], e["key"]) for e in entries)
    notes = {
        (wf, s.key)
        for wf, steps in journals.items()
        for s in steps
        if s.name in ("matrix_note", "matrix_note_async")
    }
    bad = outcome.violations
    for wf, key in sorted(notes - set(counts)):
        bad.append(f"{wf}: step {key} journaled but its body never ran")
    reran = by_fault = 0
    for (wf, key), count in sorted(counts.items()):
        if wf not in journals:
            continue
        if (wf, key) not in notes:
            bad.append(f"{wf}: step {key} ran but is not journaled as a plain step")
        elif count > 2:
            bad.append(f"{wf}: step {key} ran {count} times")
        elif count == 2:
            reran += 1
            mine = [e for e in entries if e["wf"] == wf]
            why = _why_twice(case, mine, key, ev.killed)
            if why is not None:
                bad.append(f"{wf}: step {key} ran twice, {why}")
            elif _first_run(mine, key)["pid"] not in ev.killed:
                by_fault += 1  # not the SIGKILLed predecessor's step in flight: the fault's
    # One fault fails one commit. A fault inside a journal write fails the group commit it
    # hit (perdure.store._group): every entry in it, at most one per workflow here (each
    # waits for its entry before its next step), so each workflow may re-run one step.
    # Re-runs of a process that was SIGKILLed (the recovery.claim cases' predecessor, with
    # several workflows in flight) are not the fault's: each is checked above to be that
    # process's last step of its workflow, at most one per workflow.
    # On SQLite an outcome shares that group commit (see _why_twice).
    batched = {"store.append_step"} | ({"store.finish"} if case.backend == "sqlite" else set())
    allowed = len(journals) if case.point in batched else 1
    if case.action != "kill" and by_fault > allowed:
        bad.append(f"{by_fault} steps ran twice after a single {case.action}")
    if reran:
        outcome.notes.append(f"{reran} step(s) re-run")


def _first_run(mine: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The ledger entry of the first run of step ``key`` (of one workflow's entries)."""
    return next(e for e in mine if e["key"] == key)


def _why_twice(case: Case, mine: list[dict[str, Any]], key: str, killed: set[int]) -> str | None:
    """None if running step ``key`` twice is allowed (see _check_ledger), else why not."""
    first = next(i for i, e in enumerate(mine) if e["key"] == key)
    if first + 1 >= len(mine) or mine[first + 1]["key"] != key:
        return "with other steps of the workflow run in between"
    pid = mine[first]["pid"]
    if pid in killed:
        last = max(i for i, e in enumerate(mine) if e["pid"] == pid)
        return None if last == first else "but it was not the step in flight when killed"
    if case.action == "kill":
        return "not in a killed process"
    interrupted = MID_STEP | ({"step.after_commit"} if case.action == "drop" else set())
    if case.action == "drop" and case.backend == "sqlite":
        # SQLite's group commit writes one workflow's outcome in the same transaction as
        # other workflows' journal entries: a connection dropped at the outcome fails the
        # whole batch, and each of those steps runs again (its body ran, its commit failed),
        # as under a drop at store.append_step. Seen in CI: "store.finish drop sqlite 2:
        # wf0: step 6 ran twice". PostgreSQL writes outcomes on their own.
        interrupted = interrupted | {"store.finish"}
    if case.point not in interrupted or (case.action == "drop" and case.backend == "postgres"):
        return f"but {case.action} at {case.point} cannot stop a run between body and commit"
    return None


# -- the matrix --------------------------------------------------------------------------------


def run_matrix(cases: list[Case], folder: Path, parallel: int = PARALLEL) -> list[Outcome]:
    lock = threading.Lock()
    done: list[Outcome] = []

    def one(index: int, case: Case) -> Outcome:
        outcome = run_case(case, folder / f"case{index:03d}")
        with lock:
            done.append(outcome)
            print(f"[{len(done)}/{len(cases)}] {row(outcome)}", file=sys.stderr, flush=True)
        return outcome

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(one, range(len(cases)), cases))


def row(o: Outcome) -> str:
    c = o.case
    return f"{c.point:<25} {c.action:<6} {c.backend:<9} {c.seed:>4}  {o.seconds:5.1f}s  {o.result}"


def table(outcomes: list[Outcome], elapsed: float) -> str:
    head = f"{'failpoint':<25} {'action':<6} {'backend':<9} {'seed':>4}  {'time':>6}  result"
    failed = sum(bool(o.violations) for o in outcomes)
    summary = (
        f"{len(outcomes)} cases, {failed} with violations, {elapsed:.0f} s ({PARALLEL} at once)"
    )
    return "\n".join([head, "-" * len(head), *(row(o) for o in outcomes), summary])


def matrix_cases(
    backend: str,
    points: list[str] | None = None,
    actions: tuple[str, ...] = ACTIONS,
    seeds: tuple[int, ...] = SEEDS,
) -> list[Case]:
    return [Case(backend, p, a, s) for p in points or POINTS for a in actions for s in seeds]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", _backends())
def test_crash_matrix(backend: str, tmp_path: Path) -> None:
    if backend == "postgres":
        _postgres_or_skip()
    started = time.monotonic()
    outcomes = run_matrix(matrix_cases(backend), tmp_path)
    report = table(outcomes, time.monotonic() - started)
    print(report)
    assert not any(o.violations for o in outcomes), report


def main() -> int:
    parser = argparse.ArgumentParser(description="run (part of) the crash matrix")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--points", default="")
    parser.add_argument("--actions", default=",".join(ACTIONS))
    parser.add_argument("--parallel", type=int, default=PARALLEL)
    args = parser.parse_args()
    import tempfile

    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    points = [p for p in args.points.split(",") if p] or None
    seeds = tuple(int(s) for s in args.seeds.split(","))
    actions = tuple(a for a in args.actions.split(",") if a)
    cases = [c for b in backends for c in matrix_cases(b, points, actions, seeds)]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="perdure-matrix-") as folder:
        outcomes = run_matrix(cases, Path(folder), args.parallel)
    print(table(outcomes, time.monotonic() - started))
    return 1 if any(o.violations for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
