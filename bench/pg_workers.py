"""perdure's PostgreSQL backend against DBOS Transact, side by side: per-step overhead and
throughput with 1, 2 and 4 worker processes.

Run from the repository root (it re-runs itself under ``.venv/bin/python`` if needed)::

    python bench/pg_workers.py [--steps 1000] [--workflows 400] [--workers 1,2,4] [--repeat 3]
    python bench/pg_workers.py --quick          # small sizes: a smoke check (about 30 s)
    python bench/pg_workers.py --perdure-ref HEAD   # perdure as committed, not the work tree

Needs a PostgreSQL server (default ``postgresql://postgres@127.0.0.1:5432``, ``--server``)
whose role may create and drop the databases ``perdure_bench`` and ``dbos_bench``: both are
dropped and created again before every measurement. DBOS (PyPI package ``dbos``) is installed
with pip, on first use, into a virtualenv of its own (``bench/.peers/.venv``, ``--peer-venv``;
git and ruff ignore it as a ``.venv`` folder); it is never installed into the project's venv.

Method
------

Every measurement runs in child processes: ``bench/_perdure_child.py`` under the project's
interpreter for perdure and for the raw floor, ``bench/_dbos_child.py`` under the peer
virtualenv's interpreter for DBOS. Both define the same workload at module level: a workflow
``chain(n)`` of ``n`` sequential steps, each step ``add_one(x) -> x + 1``. Each engine runs with
its defaults (perdure: ``perdure.Engine(url)``, a pool of up to 8 connections, 64 workflow
threads; DBOS: ``DBOS(config={...})`` + ``DBOS.launch()``, a pool of up to 20 connections), on
the same server, each in a database of its own created just before.

1. Per-step overhead. One workflow of ``--steps`` steps (1,000), started and awaited the same
   way on both sides (perdure: ``engine.start(chain, n).result()``; DBOS:
   ``DBOS.start_workflow(chain, n).get_result()``; the workflow runs on the engine's own
   threads), after one untimed warm-up run of the same size in the same process. The floor,
   measured in the same run on the same server: one autocommitted psycopg ``INSERT`` per step
   into ``raw_journal (workflow_id, position, output)`` on one connection. Wall time
   (``time.perf_counter``) and CPU time (``time.process_time``: every thread of the client
   process) of the timed run, in the child, divided by the number of steps.
2. Throughput. ``--workflows`` workflows (400) of ``--flow-steps`` steps (10) in total, split
   evenly across 1, 2 and 4 worker processes (``--workers``). Each worker opens its engine
   (the tables were created beforehand by a setup process), warms up with ``--warmup``
   workflows (16), prints ``READY`` and waits for a line on stdin; once every worker is ready,
   the orchestrator starts its clock and writes the line to all of them. Each worker keeps
   ``--inflight`` workflows (16) in flight: that many client threads each start a workflow and
   wait for its result, then the next. The clock stops when the last worker reports.
   Throughput = workflows / that wall time.
3. What each side writes (untimed; ``--no-count`` skips it): the server's transaction and row
   counters for the database (``pg_stat_database``: ``xact_commit``, ``tup_inserted``,
   ``tup_updated``), read once every backend of the database has exited (so its counters are
   flushed), around child runs of 0 workflows, 1 workflow of S steps, 1 of 2S steps and K
   workflows of 0 steps: per step = (2S run - S run) / S, per workflow = (K run - 0 run) / K.
   Read-only transactions count as commits too, and background polling (perdure's heartbeat
   and waker, DBOS's queue and notification threads) lands in the difference in proportion to
   the run's length: the figures are close, not exact.

In scenarios 1 and 2 the orchestrator also reads, over the timed window, the CPU time of the
server processes connected to the benchmark's database (``pg_stat_activity`` pids, read in
``/proc`` when the server runs on this machine; WAL writer and checkpointer not included) and
the whole machine's CPU use (``/proc/stat``): the server's share of the work, and whether the
box was saturated. Other clients of the same server (another database's tests) do not land in
the server figure but do compete for the machine: the report counts the transactions other
databases committed during the run.

Repetitions (``--repeat``, 3) are interleaved: round robin over the variants, rotating their
order each time, so a slow spell of the machine does not land on one side only. Medians are
reported, ratios are median over median. The exit status is 0 whichever side wins: this is a
benchmark, not a test (it is 1 only if the server cannot be reached or DBOS cannot be
installed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import io
import itertools
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from _common import cpu_model

if TYPE_CHECKING:
    import psycopg

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PROJECT_PYTHON = REPO / ".venv" / "bin" / "python"
DEFAULT_PEER_VENV = BENCH / ".peers" / ".venv"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"
PERDURE_DB = "perdure_bench"
DBOS_DB = "dbos_bench"
CHILD_TIMEOUT = 900.0  # seconds: a hung child is killed and reported, not waited for forever


# -- the PostgreSQL server -------------------------------------------------------------------


class Server:
    """Administration on the server: databases, settings, statistics (autocommit).

    Survives a server restart (another project's tests may restart it): a query that finds
    the connection gone reconnects, waiting up to a minute for the server to come back.
    """

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.conn = self._connect()
        # the server runs on this machine (its CPU can be read from /proc) if our backend's
        # pid here is a postgres process
        pid = self.one("SELECT pg_backend_pid()")
        try:
            with open(f"/proc/{pid}/comm", encoding="ascii") as comm:
                self.local = comm.read().strip() == "postgres"
        except OSError:
            self.local = False

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        return psycopg.connect(
            f"{self.base}/postgres", autocommit=True, application_name="pg_workers-admin"
        )

    def rows(self, query: str, params: Any = None) -> list[Any]:
        """Run one statement; its rows (none for a command)."""
        import psycopg

        def run() -> list[Any]:
            cursor = self.conn.execute(query.encode(), params)
            return cursor.fetchall() if cursor.description is not None else []

        try:
            return run()
        except psycopg.OperationalError:
            if not self.conn.closed and not self.conn.broken:
                raise
        deadline = time.monotonic() + 60
        while True:
            try:
                self.conn = self._connect()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        return run()

    def one(self, query: str, params: Any = None) -> Any:
        found = self.rows(query, params)
        return found[0][0] if found else None

    def url(self, db: str) -> str:
        return f"{self.base}/{db}"

    def recreate(self, db: str) -> None:
        self.drop(db)
        self.rows(f'CREATE DATABASE "{db}"')

    def drop(self, db: str) -> None:
        self.rows(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    def wait_idle(self, db: str, timeout: float = 15.0) -> None:
        """Until no backend is connected to ``db`` (an exiting backend flushes its stats)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.one("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (db,)):
                return
            time.sleep(0.05)

    def counters(self, db: str) -> dict[str, int]:
        self.wait_idle(db)
        found = self.rows(
            "SELECT xact_commit, tup_inserted, tup_updated FROM pg_stat_database "
            "WHERE datname = %s",
            (db,),
        )
        if not found:
            raise RuntimeError(f"no statistics for database {db}")
        commits, inserted, updated = found[0]
        return {"commits": int(commits), "inserted": int(inserted), "updated": int(updated)}

    def backends(self, db: str) -> list[int]:
        """The server processes connected to ``db`` now."""
        found = self.rows("SELECT pid FROM pg_stat_activity WHERE datname = %s", (db,))
        return [int(row[0]) for row in found]

    def commits_elsewhere(self, ours: tuple[str, ...]) -> int:
        """Transactions committed so far in every database but ours and ``postgres``."""
        found = self.one(
            "SELECT coalesce(sum(xact_commit), 0) FROM pg_stat_database "
            "WHERE datname IS NOT NULL AND datname <> ALL(%s)",
            ([*ours, "postgres"],),
        )
        return int(found or 0)

    def started_at(self) -> str:
        return str(self.one("SELECT pg_postmaster_start_time()"))

    def settings(self) -> dict[str, str]:
        names = ["synchronous_commit", "fsync", "wal_sync_method", "commit_delay"]
        found = self.rows("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (names,))
        return {str(name): str(value) for name, value in found}

    def close(self) -> None:
        self.conn.close()


def process_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each of these processes that still exists."""
    found: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
                data = stat.read()
        except OSError:
            continue
        fields = data[data.rfind(")") + 2 :].split()
        found[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return found


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat; (0, 0) where it is missing."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


# -- the sides: which interpreter runs which child ---------------------------------------------


@dataclass(frozen=True)
class Side:
    key: str  # raw | perdure | dbos
    label: str
    python: Path
    script: Path
    db: str
    env: dict[str, str] | None = None  # None: inherit ours

    def command(self, mode: str, url: str, **options: object) -> list[str]:
        cmd = [str(self.python), str(self.script), mode, "--engine", self.key, "--url", url]
        for name, value in options.items():
            cmd += [f"--{name.replace('_', '-')}", str(value)]
        return cmd


class ChildFailed(RuntimeError):
    pass


def tail(text: str, lines: int = 6) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty)"


def run_child(side: Side, server: Server, mode: str, **options: object) -> dict[str, Any]:
    """Run one child to completion (no barrier); return its RESULT payload."""
    cmd = side.command(mode, server.url(side.db), **options)
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            cwd=REPO,
            check=False,
            env=side.env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ChildFailed(f"{side.label} {mode}: no answer after {CHILD_TIMEOUT:.0f} s") from exc
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            payload: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return payload
    raise ChildFailed(
        f"{side.label} {mode}: exit {done.returncode}, no result; stderr: {tail(done.stderr)}"
    )


@dataclass
class Worker:
    proc: subprocess.Popen[str]
    stderr: IO[str]

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        return tail(self.stderr.read())


@dataclass
class Window:
    """What one barrier-started run of worker processes measured."""

    results: list[dict[str, Any]]  # each worker's RESULT payload
    wall: float  # the orchestrator's clock: barrier opened -> last RESULT
    server_cpu: float | None  # CPU seconds of the database's server processes in the window
    busy: float  # the machine's CPU use in the window, 0..1


@contextmanager
def workers_started(cmds: list[list[str]], env: dict[str, str] | None) -> Iterator[list[Worker]]:
    """Start the worker processes; on the way out, make sure every one of them is gone."""
    with ExitStack() as stack:
        workers: list[Worker] = []
        try:
            for cmd in cmds:
                err = stack.enter_context(tempfile.TemporaryFile("w+"))
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    cwd=REPO,
                    bufsize=1,
                    env=env,
                )
                workers.append(Worker(proc, err))
            yield workers
        finally:
            for worker in workers:
                try:
                    worker.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.proc.kill()
                    worker.proc.wait()


def _reader(index: int, stream: IO[str], lines: queue.Queue[tuple[int, str | None]]) -> None:
    for line in stream:
        lines.put((index, line.rstrip("\n")))
    lines.put((index, None))


def run_barrier(side: Side, server: Server, cmds: list[list[str]]) -> Window:
    """Start ``cmds``, wait until every one printed READY, open the barrier (one line on each
    stdin) and time until every one printed its RESULT.

    Raises:
        ChildFailed: a worker exited early or the run outlived ``CHILD_TIMEOUT``.
    """
    with workers_started(cmds, side.env) as workers:
        lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
        for i, worker in enumerate(workers):
            assert worker.proc.stdout is not None
            reader = threading.Thread(
                target=_reader, args=(i, worker.proc.stdout, lines), daemon=True
            )
            reader.start()
        deadline = time.monotonic() + CHILD_TIMEOUT

        def next_line() -> tuple[int, str | None]:
            try:
                return lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise ChildFailed(f"{side.label}: no answer after {CHILD_TIMEOUT:.0f} s") from None

        def gone(index: int, when: str) -> ChildFailed:
            worker = workers[index]
            worker.proc.wait(timeout=30)
            return ChildFailed(
                f"{side.label} worker {index} exited {when} (exit {worker.proc.returncode}); "
                f"stderr: {worker.stderr_tail()}"
            )

        try:
            ready: set[int] = set()
            while len(ready) < len(workers):
                index, line = next_line()
                if line is None:
                    raise gone(index, "before it was ready")
                if line.startswith("READY"):
                    ready.add(index)
            server0, (busy0, total0) = process_cpu(server.backends(side.db)), machine_cpu()
            wall0 = time.perf_counter()
            for worker in workers:  # the barrier opens: one line to every worker
                assert worker.proc.stdin is not None
                worker.proc.stdin.write("go\n")
                worker.proc.stdin.flush()
            results: dict[int, dict[str, Any]] = {}
            while len(results) < len(workers):
                index, line = next_line()
                if line is None and index not in results:
                    raise gone(index, "without a result")
                if line is not None and line.startswith("RESULT "):
                    results[index] = json.loads(line[len("RESULT ") :])
            wall = time.perf_counter() - wall0
            busy1, total1 = machine_cpu()
            server1 = process_cpu(server.backends(side.db))
        except (ChildFailed, subprocess.TimeoutExpired) as exc:
            for worker in workers:
                worker.proc.kill()
            if isinstance(exc, ChildFailed):
                raise
            raise ChildFailed(f"{side.label}: a worker did not exit: {exc}") from exc
        for worker in workers:
            assert worker.proc.stdin is not None
            worker.proc.stdin.close()
    return Window(
        results=[results[i] for i in sorted(results)],
        wall=wall,
        server_cpu=sum(cpu - server0.get(pid, 0.0) for pid, cpu in server1.items())
        if server.local
        else None,
        busy=(busy1 - busy0) / (total1 - total0) if total1 > total0 else float("nan"),
    )


# -- the peer virtualenv, and a pinned perdure -----------------------------------------------


def ensure_peer_venv(venv: Path, requirement: str) -> Path:
    """The peer virtualenv's interpreter; create the venv and pip-install DBOS on first use."""
    python = venv / "bin" / "python"
    if python.exists() and _has_module(python, "dbos"):
        return python
    print(f"creating {venv} and installing {requirement!r} with pip (first use only)...")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ],
        check=True,
    )
    return python


def _has_module(python: Path, module: str) -> bool:
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([str(python), "-c", probe], check=False).returncode == 0


def peer_versions(python: Path) -> dict[str, str]:
    probe = (
        "import json, platform; from importlib.metadata import version\n"
        "print(json.dumps({'python': platform.python_version(), 'dbos': version('dbos'), "
        "'psycopg': version('psycopg'), 'sqlalchemy': version('sqlalchemy')}))"
    )
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True)
    found: dict[str, str] = json.loads(out.stdout)
    return found


def extract_perdure(ref: str, into: Path) -> dict[str, str]:
    """``src/perdure`` as of git ``ref``, unpacked under ``into`` (read-only for the repository:
    ``git archive``); returns the environment that makes the children import it."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref, "src/perdure"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return {**os.environ, "PYTHONPATH": str(into / "src")}


def git(*args: str) -> str:
    if shutil.which("git") is None:
        return ""
    found = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    )
    return found.stdout.strip()


# -- scenario 1: per-step overhead -----------------------------------------------------------


@dataclass
class StepVariant:
    side: Side
    wall: list[float] = field(default_factory=list)  # seconds per step, one per repetition
    cpu: list[float] = field(default_factory=list)  # client CPU seconds per step
    server: list[float] = field(default_factory=list)  # postgres CPU seconds per step
    errors: list[str] = field(default_factory=list)


def measure_steps(variant: StepVariant, server: Server, steps: int) -> bool:
    side = variant.side
    server.recreate(side.db)
    try:
        window = run_barrier(
            side, server, [side.command("steps", server.url(side.db), steps=steps)]
        )
    except ChildFailed as exc:
        variant.errors.append(str(exc))
        return False
    found = window.results[0]
    if not found.get("ok"):
        variant.errors.append("wrong result")
        return False
    variant.wall.append(found["wall"] / steps)
    variant.cpu.append(found["cpu"] / steps)
    if window.server_cpu is not None:
        variant.server.append(window.server_cpu / steps)
    return True


# -- scenario 2: throughput with N worker processes ------------------------------------------


@dataclass
class Throughput:
    side: Side
    workers: int
    rates: list[float] = field(default_factory=list)  # workflows per second, per repetition
    cpu: list[float] = field(default_factory=list)  # client CPU seconds per workflow
    server: list[float] = field(default_factory=list)  # postgres CPU seconds per workflow
    busy: list[float] = field(default_factory=list)  # machine CPU use in the window, 0..1
    errors: list[str] = field(default_factory=list)


def measure_throughput(
    point: Throughput, server: Server, total: int, steps: int, inflight: int, warmup: int
) -> bool:
    side = point.side
    server.recreate(side.db)
    shares = [total // point.workers + (i < total % point.workers) for i in range(point.workers)]
    cmds = [
        side.command(
            "throughput",
            server.url(side.db),
            name=f"w{i}",
            workflows=share,
            steps=steps,
            inflight=inflight,
            warmup=warmup,
        )
        for i, share in enumerate(shares)
    ]
    try:
        run_child(side, server, "setup", name="setup")  # tables created once, before the workers
        window = run_barrier(side, server, cmds)
    except ChildFailed as exc:
        point.errors.append(str(exc))
        return False
    ok = sum(r["ok"] for r in window.results)
    failed = sum(r["errors"] for r in window.results)
    if failed:
        first = next(r["error"] for r in window.results if r["errors"])
        point.errors.append(f"{failed} of {total} workflows failed: {first}")
    point.rates.append(ok / window.wall)
    point.cpu.append(sum(r["cpu"] for r in window.results) / max(ok, 1))
    if window.server_cpu is not None:
        point.server.append(window.server_cpu / max(ok, 1))
    point.busy.append(window.busy)
    return True


# -- scenario 3: what each side writes -------------------------------------------------------


@dataclass
class Writes:
    side: Side
    per_step: dict[str, float] = field(default_factory=dict)
    per_workflow: dict[str, float] = field(default_factory=dict)
    error: str = ""


def measure_writes(side: Side, server: Server, steps: int, workflows: int) -> Writes:
    found = Writes(side)
    server.recreate(side.db)
    try:
        run_child(side, server, "setup", name="setup")
        marks = [server.counters(side.db)]
        for n_workflows, n_steps in ((0, 0), (1, steps), (1, 2 * steps), (workflows, 0)):
            run_child(side, server, "count", name="count", workflows=n_workflows, steps=n_steps)
            marks.append(server.counters(side.db))
    except ChildFailed as exc:
        found.error = str(exc)
        return found
    delta = [
        {k: after[k] - before[k] for k in after} for before, after in itertools.pairwise(marks)
    ]
    empty, one, two, many = delta
    found.per_step = {k: (two[k] - one[k]) / steps for k in empty}
    found.per_workflow = {k: (many[k] - empty[k]) / workflows for k in empty}
    return found


# -- reporting -------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def med(values: list[float], scale: float = 1e3, digits: int = 3) -> str:
    return f"{statistics.median(values) * scale:.{digits}f}" if values else "n/a"


def describe(server: Server, peer: dict[str, str], perdure_source: str) -> None:
    import psycopg

    settings = server.settings()
    print("perdure vs DBOS Transact on PostgreSQL")
    print(f"  date        {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"  machine     {cpu_model()}, {os.cpu_count()} logical cores, {memory_gb()} memory")
    print(f"  postgresql  {server.one('SHOW server_version')} at {server.base}")
    print("              " + " ".join(f"{k}={v}" for k, v in sorted(settings.items())))
    print(
        f"  perdure     {version('perdure')}, {perdure_source}; psycopg {psycopg.__version__}, "
        f"python {platform.python_version()}"
    )
    print(
        f"  dbos        {peer.get('dbos')}, psycopg {peer.get('psycopg')}, SQLAlchemy "
        f"{peer.get('sqlalchemy')}, python {peer.get('python')} (peer venv)"
    )


def report_steps(found: list[StepVariant], steps: int, repeat: int) -> None:
    median = statistics.median
    print(
        f"\n1. per-step overhead: one workflow of {steps} sequential steps, median of {repeat}, "
        "ms per step"
    )
    header = (
        f"{'variant':<44} {'wall':>6} {'min-max':>12} {'CPU':>6} {'server':>6} "
        f"{'wall/raw':>8} {'CPU/raw':>7}"
    )
    print(header)
    print("-" * len(header))
    raw = next((v for v in found if v.side.key == "raw" and v.wall), None)
    for v in found:
        if not v.wall:
            print(f"{v.side.label:<44} {'failed':>6}")
            continue
        ratios = ""
        if raw is not None:
            ratios = (
                f"{median(v.wall) / median(raw.wall):>8.2f} {median(v.cpu) / median(raw.cpu):>7.2f}"
            )
        spread = f"{ms(min(v.wall))}-{ms(max(v.wall))}"
        print(
            f"{v.side.label:<44} {ms(median(v.wall)):>6} {spread:>12} {ms(median(v.cpu)):>6} "
            f"{med(v.server):>6} {ratios}"
        )
    ours = next((v for v in found if v.side.key == "perdure" and v.wall), None)
    peer = next((v for v in found if v.side.key == "dbos" and v.wall), None)
    if ours is not None and peer is not None:
        wall = median(ours.wall) / median(peer.wall)
        cpu = median(ours.cpu) / median(peer.cpu)
        print(
            f"perdure/DBOS: wall {wall:.2f}, CPU {cpu:.2f} "
            f"(DBOS takes {1 / wall:.1f}x perdure's wall time and {1 / cpu:.1f}x its CPU per step)"
        )
    print("(CPU: the client process, all threads; server: its database's backends, same window)")


def report_throughput(
    points: list[Throughput], total: int, steps: int, inflight: int, repeat: int
) -> None:
    median = statistics.median
    print(
        f"\n2. throughput: {total} workflows of {steps} steps split across the workers, "
        f"{inflight} in flight per worker, median of {repeat}"
    )
    header = (
        f"{'workers':>7}  {'engine':<8} {'wf/s':>7} {'min-max':>11} {'steps/s':>8} "
        f"{'CPU ms/wf':>9} {'server ms/wf':>12} {'box CPU':>7} {'vs 1st':>6}"
    )
    print(header)
    print("-" * len(header))
    base: dict[str, float] = {}
    for p in points:
        if not p.rates:
            print(f"{p.workers:>7}  {p.side.key:<8} {'failed':>7}")
            continue
        rate = median(p.rates)
        base.setdefault(p.side.key, rate)  # the first worker count listed is the base
        spread = f"{min(p.rates):.0f}-{max(p.rates):.0f}"
        print(
            f"{p.workers:>7}  {p.side.key:<8} {rate:>7.1f} {spread:>11} {rate * steps:>8.0f} "
            f"{med(p.cpu, digits=2):>9} {med(p.server, digits=2):>12} {median(p.busy):>7.0%} "
            f"{rate / base[p.side.key]:>6.2f}"
        )
    print("perdure/DBOS workflows/s:", end="")
    for workers in sorted({p.workers for p in points}):
        pair = {p.side.key: p for p in points if p.workers == workers and p.rates}
        if "perdure" in pair and "dbos" in pair:
            ratio = median(pair["perdure"].rates) / median(pair["dbos"].rates)
            print(f"  {workers} worker(s) {ratio:.2f}", end="")
    print(
        "\n(CPU ms/wf: the worker processes; server ms/wf: the database's backends; box CPU: the "
        "whole machine's\nCPU use in the timed window; vs 1st: workflows/s against the first "
        "worker count)"
    )


def report_writes(found: list[Writes], steps: int, workflows: int) -> None:
    print(
        f"\n3. what each side writes, from pg_stat_database (per step: 2x{steps}-step run minus "
        f"{steps}-step run;\n   per workflow: {workflows} workflows of 0 steps, start to result)"
    )
    header = (
        f"{'engine':<8} {'commits/step':>12} {'ins/step':>9} {'upd/step':>9}   "
        f"{'commits/wf':>10} {'ins/wf':>7} {'upd/wf':>7}"
    )
    print(header)
    print("-" * len(header))
    print(f"{'raw':<8} {1.0:>12.2f} {1.0:>9.2f} {0.0:>9.2f}   (by construction)")
    for w in found:
        if w.error:
            print(f"{w.side.key:<8} failed: {w.error}")
            continue
        s, f = w.per_step, w.per_workflow
        print(
            f"{w.side.key:<8} {s['commits']:>12.2f} {s['inserted']:>9.2f} {s['updated']:>9.2f}   "
            f"{f['commits']:>10.2f} {f['inserted']:>7.2f} {f['updated']:>7.2f}"
        )
    print(
        "(commits include read-only transactions and background polling during the run: "
        "close, not exact)"
    )


def report_errors(groups: list[tuple[str, list[str]]], elsewhere: int, restarted: bool) -> None:
    print(f"\nother databases on this server committed {elsewhere} transactions during the run")
    if restarted:
        print("the PostgreSQL server was restarted during the run (not by this script)")
    errors = [(label, e) for label, errs in groups for e in errs]
    if not errors:
        print("errors: none")
        return
    print(f"errors ({len(errors)}; a failed run was tried once more, and only a good run counts):")
    for label, error in errors:
        print(f"  {label}: {error}")


# -- the machine -----------------------------------------------------------------------------


def memory_gb() -> str:
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024**2:.0f} GiB"
    except (OSError, ValueError):
        pass
    return "? GiB"


# -- main ------------------------------------------------------------------------------------


def worker_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,2,4, not {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive counts, not {text!r}")
    return counts


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--steps", type=positive, help="steps of the per-step workflow [1000]")
    parser.add_argument("--workflows", type=positive, help="throughput workflows in total [400]")
    parser.add_argument("--workers", type=worker_counts, help="worker processes [1,2,4]")
    parser.add_argument("--repeat", type=positive, help="timed repetitions per variant [3]")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes for a smoke check: 100, 64, 1,2, 1"
    )
    parser.add_argument(
        "--flow-steps", type=positive, default=10, help="steps per throughput workflow [10]"
    )
    parser.add_argument(
        "--inflight", type=positive, default=16, help="workflows in flight per worker process [16]"
    )
    parser.add_argument("--warmup", type=int, default=16, help="untimed workflows per worker [16]")
    parser.add_argument("--no-count", action="store_true", help="skip the write counting")
    parser.add_argument(
        "--server", default=DEFAULT_SERVER, help=f"PostgreSQL, without database [{DEFAULT_SERVER}]"
    )
    parser.add_argument(
        "--peer-venv", type=Path, default=DEFAULT_PEER_VENV, help="DBOS's venv [bench/.peers/.venv]"
    )
    parser.add_argument("--dbos-requirement", default="dbos", help="what pip installs there [dbos]")
    parser.add_argument(
        "--perdure-ref",
        help="measure src/perdure as of this git ref (git archive into a temporary folder) "
        "instead of the work tree",
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    args = parser.parse_args(argv)
    quick = {"steps": 100, "workflows": 64, "workers": [1, 2], "repeat": 1}
    full = {"steps": 1000, "workflows": 400, "workers": [1, 2, 4], "repeat": 3}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def interleaved(items: list[Any], rep: int) -> list[Any]:
    shift = rep % len(items)
    return items[shift:] + items[:shift]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        server = Server(args.server)
    except Exception as exc:
        print(f"cannot reach PostgreSQL at {args.server}: {exc}", file=sys.stderr)
        return 1
    try:
        peer_python = ensure_peer_venv(args.peer_venv, args.dbos_requirement)
        peer = peer_versions(peer_python)
    except (subprocess.CalledProcessError, OSError, ValueError) as exc:
        print(f"cannot set up DBOS in {args.peer_venv}: {exc}", file=sys.stderr)
        server.close()
        return 1
    with ExitStack() as stack:
        stack.callback(server.close)
        env: dict[str, str] | None = None
        if args.perdure_ref:
            snapshot = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="perdure-")))
            env = extract_perdure(args.perdure_ref, snapshot)
            source = f"git {args.perdure_ref} = {git('rev-parse', '--short', args.perdure_ref)}"
        else:
            dirty = git("status", "--porcelain", "--untracked-files=no", "src")
            source = f"work tree at {git('rev-parse', '--short', 'HEAD')}"
            source += " (src/ has uncommitted changes)" if dirty else ""
        ours = PROJECT_PYTHON if PROJECT_PYTHON.exists() else Path(sys.executable)
        child = BENCH / "_perdure_child.py"
        raw = Side(
            "raw", "raw psycopg INSERT, autocommit (the floor)", ours, child, PERDURE_DB, env
        )
        perdure_side = Side(
            "perdure", "perdure Engine, sync workflow", ours, child, PERDURE_DB, env
        )
        dbos_side = Side(
            "dbos",
            f"DBOS Transact {peer.get('dbos')}, sync workflow",
            peer_python,
            BENCH / "_dbos_child.py",
            DBOS_DB,
        )
        if not args.keep:
            for db in (PERDURE_DB, DBOS_DB):
                stack.callback(server.drop, db)

        describe(server, peer, source)
        started = time.monotonic()
        elsewhere0 = server.commits_elsewhere((PERDURE_DB, DBOS_DB))
        boot = server.started_at()

        steps = [StepVariant(side) for side in (raw, perdure_side, dbos_side)]
        print(f"\n[1/3] per-step overhead: {len(steps)} variants x {args.repeat} ", end="")
        for rep in range(args.repeat):
            for variant in interleaved(steps, rep):
                if not measure_steps(variant, server, args.steps):  # listed; one more try
                    measure_steps(variant, server, args.steps)
            print(".", end="", flush=True)

        points = [
            Throughput(side, workers)
            for workers in args.workers
            for side in (perdure_side, dbos_side)
        ]
        print(f"\n[2/3] throughput: {len(points)} points x {args.repeat} ", end="", flush=True)
        for rep in range(args.repeat):
            for point in interleaved(points, rep):
                for _ in range(2):  # a failed run is listed and tried once more
                    if measure_throughput(
                        point, server, args.workflows, args.flow_steps, args.inflight, args.warmup
                    ):
                        break
                print(".", end="", flush=True)

        writes: list[Writes] = []
        count_steps, count_workflows = (50, 20) if args.quick else (200, 50)
        if not args.no_count:
            print("\n[3/3] counting writes ", end="", flush=True)
            for side in (perdure_side, dbos_side):
                writes.append(measure_writes(side, server, count_steps, count_workflows))
                print(".", end="", flush=True)
        elsewhere = server.commits_elsewhere((PERDURE_DB, DBOS_DB)) - elsewhere0
        print(f"\n(done in {time.monotonic() - started:.0f} s)")

        report_steps(steps, args.steps, args.repeat)
        report_throughput(points, args.workflows, args.flow_steps, args.inflight, args.repeat)
        if writes:
            report_writes(writes, count_steps, count_workflows)
        report_errors(
            [(v.side.label, v.errors) for v in steps]
            + [(f"{p.side.key} x{p.workers}", p.errors) for p in points],
            elsewhere,
            restarted=server.started_at() != boot,
        )
    return 0


def _reexec_in_project_venv() -> None:
    """``python bench/pg_workers.py`` from outside the venv: run again under the venv's python."""
    needed = ("psycopg", "perdure")
    if all(importlib.util.find_spec(name) for name in needed) or not PROJECT_PYTHON.exists():
        return
    if Path(sys.prefix).resolve() == PROJECT_PYTHON.parent.parent.resolve():
        return  # already there: the import errors that follow are the real message
    os.execv(str(PROJECT_PYTHON), [str(PROJECT_PYTHON), __file__, *sys.argv[1:]])


if __name__ == "__main__":
    _reexec_in_project_venv()
    sys.exit(main())
