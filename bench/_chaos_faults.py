"""The chaos run's moving parts (``bench/chaos.py``): the supervisor's database connection, the
worker processes, and the three fault injectors (SIGKILL, PostgreSQL restart, SIGSTOP).

Every injector records what it did, with wall-clock times (``time.time()``, the clock perdure's
journal timestamps use on this machine), so that the checks can measure recovery afterwards
from the journal.
"""

from __future__ import annotations

import random
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg

#: perdure's own URL parameters, which libpq does not know
PERDURE_PARAMETERS = ("schema", "pool_size", "outage_timeout")
IN_FLIGHT = ("PENDING", "RUNNING")


# -- the database ----------------------------------------------------------------------------


def libpq_url(url: str) -> str:
    """The URL without perdure's own parameters (``schema``, ``pool_size``...)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in PERDURE_PARAMETERS]
    return urlunsplit(parts._replace(query=urlencode(query)))


def with_schema(url: str, schema: str) -> str:
    """The URL with ``?schema=`` set to ``schema``."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("schema", schema)])))


class Database:
    """One autocommit connection in the run's schema that survives server restarts: a query
    that finds the server gone reconnects and tries again, for up to ``patience`` seconds.
    Thread-safe (one query at a time); give each thread its own for independent waits."""

    def __init__(self, url: str, schema: str) -> None:
        self.conninfo = libpq_url(url)
        self.schema = schema
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._lock = threading.Lock()

    def rows(self, sql: str, params: Sequence[Any] = (), patience: float = 60.0) -> list[Any]:
        """The rows of one statement ([] for a command).

        Raises:
            psycopg.OperationalError: the server stayed unreachable for ``patience`` seconds.
        """
        deadline = time.monotonic() + patience
        with self._lock:
            while True:
                try:
                    conn = self._connection()
                    cursor = conn.execute(sql.encode(), params)
                    return cursor.fetchall() if cursor.description is not None else []
                except psycopg.OperationalError:
                    self.close()
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.2)

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.conninfo,
                autocommit=True,
                connect_timeout=2,
                application_name="perdure-chaos",
                options=f"-c search_path={self.schema}",
            )
        return self._conn

    def close(self) -> None:
        """Drop the connection (the next query opens another)."""
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def in_flight(self, pid: int, patience: float = 1.0) -> list[str] | None:
        """Workflows that the worker process ``pid`` holds unfinished, or None if the server
        cannot tell within ``patience`` seconds."""
        try:
            found = self.rows(
                "SELECT w.id FROM workflows w JOIN workers k ON k.id = w.owner "
                "WHERE k.pid = %s AND w.status = ANY(%s)",
                (pid, list(IN_FLIGHT)),
                patience,
            )
        except psycopg.OperationalError:
            return None
        return [row[0] for row in found]


# -- the worker processes --------------------------------------------------------------------


@dataclass
class Worker:
    """One worker process: the current one of its slot, or a former one."""

    slot: int
    name: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    killed: bool = False
    killed_at: float = 0.0
    frozen: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_tail(self, lines: int = 20) -> str:
        text = self.err.read_text(errors="replace") if self.err.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def printed(self, line: str) -> bool:
        return self.out.exists() and line in self.out.read_text().splitlines()


class WorkerPool:
    """``size`` slots, each with one live worker process; a killed worker is replaced at once
    by a new process in its slot. Every method is thread-safe."""

    def __init__(self, command: list[str], folder: Path, size: int) -> None:
        self.command = command
        self.folder = folder
        self.size = size
        self.all: list[Worker] = []
        self.current: list[Worker] = []
        self.unexpected: list[Worker] = []  # exited although nobody killed them
        self._lock = threading.RLock()

    def start(self, timeout: float = 60.0) -> None:
        """Start every slot's first worker and wait until all print ``ready``."""
        with self._lock:
            self.current = [self._spawn(slot) for slot in range(self.size)]
        deadline = time.monotonic() + timeout
        for worker in self.current:
            while not worker.printed("ready"):
                if worker.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{worker.name} did not start:\n{worker.stderr_tail()}")
                time.sleep(0.05)

    def _spawn(self, slot: int) -> Worker:
        generation = sum(1 for w in self.all if w.slot == slot)
        name = f"w{slot}.{generation}"
        out, err = self.folder / f"{name}.out", self.folder / f"{name}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(self.command, stdout=stdout, stderr=stderr)
        worker = Worker(slot, name, proc, out, err)
        self.all.append(worker)
        return worker

    @contextmanager
    def stopped_victim(self, rng: random.Random) -> Iterator[Worker]:
        """A random live worker that is not frozen, stopped (SIGSTOP) for the block's duration
        (so that what it holds can be read before it dies, with nothing changing meanwhile),
        then killed with SIGKILL, reaped, and replaced in its slot."""
        with self._lock:
            slot = rng.randrange(self.size)
            while self.current[slot].frozen:
                slot = (slot + 1) % self.size
            victim = self.current[slot]
            victim.proc.send_signal(signal.SIGSTOP)
            try:
                yield victim
            finally:
                victim.killed, victim.killed_at = True, time.time()
                victim.proc.send_signal(signal.SIGKILL)
                victim.proc.wait(timeout=30)  # reaped: its pid is gone, as others will see
                self.current[slot] = self._spawn(slot)

    def freeze(self, pid: int) -> Worker | None:
        """SIGSTOP the current worker with this pid (None if it is no longer current)."""
        with self._lock:
            for worker in self.current:
                if worker.pid == pid and worker.proc.poll() is None and not worker.frozen:
                    worker.frozen = True
                    worker.proc.send_signal(signal.SIGSTOP)
                    return worker
        return None

    def thaw(self, worker: Worker) -> None:
        """SIGCONT a frozen worker; it may be killed again afterwards."""
        with self._lock:
            worker.proc.send_signal(signal.SIGCONT)
            worker.frozen = False

    def pids(self) -> list[int]:
        """The pids of the current workers."""
        with self._lock:
            return [w.pid for w in self.current]

    def replace_exited(self) -> list[Worker]:
        """Workers that exited although nobody killed them: recorded, and replaced."""
        found = []
        with self._lock:
            for slot, worker in enumerate(self.current):
                if worker.proc.poll() is not None:
                    self.unexpected.append(worker)
                    found.append(worker)
                    self.current[slot] = self._spawn(slot)
        return found

    def stop(self, stop_file: Path, timeout: float = 60.0) -> list[Worker]:
        """Let the current workers close their engines; those that do not exit with status 0
        in time are killed and returned."""
        stop_file.touch()
        bad = []
        deadline = time.monotonic() + timeout
        with self._lock:
            for worker in self.current:
                worker.proc.send_signal(signal.SIGCONT)
                try:
                    code = worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    code = None
                if code != 0:
                    bad.append(worker)
        self.cleanup()
        return bad

    def cleanup(self) -> None:
        """Kill and reap every process still running (a stopped one is continued first)."""
        for worker in self.all:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGCONT)
                worker.proc.kill()
            worker.proc.wait(timeout=30)

    def killed_pids(self) -> set[int]:
        return {w.pid for w in self.all if w.killed}


# -- the fault injectors ---------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    """A SIGKILL: when, which process, and what it held (None: the server could not say)."""

    at: float
    pid: int
    name: str
    in_flight: tuple[str, ...] | None


@dataclass(frozen=True)
class Restart:
    """A PostgreSQL restart: when the command began and returned, and how it ended."""

    began: float
    ended: float
    returncode: int
    output: str


@dataclass
class Freeze:
    """The SIGSTOP of one worker past its lease, and what it held."""

    pid: int = 0
    name: str = ""
    stopped_at: float = 0.0
    continued_at: float = 0.0
    in_flight: tuple[str, ...] = ()
    taken: tuple[str, ...] = ()  # of in_flight: those another worker took over meanwhile
    note: str = ""


def local_restart_command(url: str) -> list[str] | None:
    """``pg_ctlcluster ... restart`` for the local cluster listening on the URL's port, or
    None (not a local server, or no Debian cluster tools)."""
    parts = urlsplit(url)
    if parts.hostname not in (None, "", "127.0.0.1", "localhost", "::1"):
        return None
    port = parts.port or 5432
    try:
        listing = subprocess.run(
            ["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == str(port):
            version, cluster = fields[0], fields[1]
            return ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "restart"]
    return None


def parse_command(text: str) -> list[str]:
    """A ``--restart-cmd`` string, split as a shell would (no shell runs it)."""
    return shlex.split(text)


class Restarter(threading.Thread):
    """Restarts PostgreSQL every ``every`` (low, high) seconds, drawn from ``rng``, until
    :meth:`finish`; a restart in progress is let to complete."""

    def __init__(self, command: list[str], every: tuple[float, float], rng: random.Random):
        super().__init__(name="chaos-restarter", daemon=True)
        self.command = command
        self.every = every
        self.rng = rng
        self.done: list[Restart] = []
        self.busy = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.rng.uniform(*self.every)):
            self.busy.set()
            began = time.time()
            try:
                ran = subprocess.run(self.command, capture_output=True, text=True, timeout=180)
                code, output = ran.returncode, (ran.stdout + ran.stderr).strip()
            except (OSError, subprocess.TimeoutExpired) as exc:
                code, output = -1, str(exc)
            self.done.append(Restart(began, time.time(), code, output[-500:]))
            self.busy.clear()

    def finish(self) -> None:
        """No more restarts; wait for one in progress."""
        self._halt.set()
        self.join()


class Freezer(threading.Thread):
    """At ``at`` seconds (monotonic), SIGSTOPs the worker that holds the most unfinished
    workflows, keeps it stopped until its lease has expired and other workers have taken
    over everything it held (at most ``longest`` seconds), then SIGCONTs it."""

    def __init__(
        self, pool: WorkerPool, db: Database, at: float, lease: float, longest: float
    ) -> None:
        super().__init__(name="chaos-freezer", daemon=True)
        self.pool, self.db, self.at = pool, db, at
        self.lease, self.longest = lease, longest
        self.record = Freeze()
        self._halt = threading.Event()

    def run(self) -> None:
        if self._halt.wait(max(0.0, self.at - time.monotonic())):
            return
        worker = None
        while worker is None and not self._halt.wait(0.5):
            worker = self._freeze_busiest()
        if worker is None:
            self.record.note = "no worker held work when the run ended"
            return
        try:
            self._hold(worker)
        finally:
            self.record.continued_at = time.time()
            self.pool.thaw(worker)

    def _freeze_busiest(self) -> Worker | None:
        try:
            counts = self.db.rows(
                "SELECT k.pid, count(*) FROM workflows w JOIN workers k ON k.id = w.owner "
                "WHERE w.status = ANY(%s) AND k.pid = ANY(%s) GROUP BY k.pid ORDER BY 2 DESC",
                (list(IN_FLIGHT), self.pool.pids()),
                patience=1.0,
            )
        except psycopg.OperationalError:
            return None
        for pid, _ in counts:
            worker = self.pool.freeze(pid)
            if worker is not None:
                self.record.stopped_at = time.time()
                self.record.pid, self.record.name = worker.pid, worker.name
                return worker
        return None

    def _hold(self, worker: Worker) -> None:
        """Read what the stopped worker holds, then wait for the lease to expire and for
        others to take it all over."""
        began = time.monotonic()
        held = self.db.in_flight(worker.pid, patience=30.0) or []
        self.record.in_flight = tuple(held)
        time.sleep(self.lease + 0.5)  # past its lease: now others may take its work
        while time.monotonic() - began < self.longest:
            taken = self._taken(worker.pid, held)
            if taken is not None and len(taken) == len(held):
                break
            time.sleep(0.2)
        time.sleep(0.5)  # let the new owners run the steps the frozen one was in
        self.record.taken = tuple(self._taken(worker.pid, held) or ())

    def _taken(self, pid: int, held: list[str]) -> list[str] | None:
        """Which of ``held`` the frozen worker no longer holds (None: server unreachable)."""
        still = self.db.in_flight(pid, patience=5.0)
        if still is None:
            return None
        return [wf for wf in held if wf not in still]

    def stop(self) -> None:
        """Do not freeze if not done yet; wait for a freeze in progress to end."""
        self._halt.set()
        self.join()


@dataclass
class Feed:
    """What the feeder enqueued: ids acknowledged (``enqueue`` returned), and the calls that
    raised and were tried again."""

    acknowledged: list[str] = field(default_factory=list)
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    finished_at: float | None = None
