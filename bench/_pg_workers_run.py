"""The machinery of ``bench/pg_workers.py``: the PostgreSQL server it administers (fresh
databases, statistics, the server's CPU), the two sides and the interpreters that run their
children, and starting worker processes together behind a barrier."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

REPO = Path(__file__).resolve().parent.parent
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
