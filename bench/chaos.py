"""The chaos run: many workflows on PostgreSQL through worker kills, server restarts and a
frozen worker; then proof that nothing was lost and no transaction applied twice.

    python bench/chaos.py                       # the long version (make chaos): ~6 minutes
    python bench/chaos.py --short               # the test suite's version: ~25 s
    python bench/chaos.py --url postgresql://postgres@127.0.0.1:5433/test --seed 7
    python bench/chaos.py --perdure-ref HEAD    # perdure as committed, not the work tree

It restarts the PostgreSQL server its ``--url`` names (``--restart-cmd``, or by default
``pg_ctlcluster <version> <cluster> restart`` for the local cluster on the URL's port): do
not point it at a server others are using. It drops and recreates the schema ``?schema=`` of
the URL (default ``perdure_chaos``), and drops it again after a run without violations.

What runs
---------

A supervisor (this process) and ``--workers`` worker processes (``bench/_chaos_worker.py``,
each one ``perdure.Engine`` with the engine's default settings unless told otherwise). The
supervisor opens a client engine (``recover=False``) and enqueues ``--workflows`` workflows on
the queue ``chaos``, spread evenly over ``--duration`` seconds. Each workflow runs ``--steps``
steps: at even positions a ``@perdure.transaction`` step that inserts a row into
``chaos_effects`` in the transaction that journals it, at odd positions a plain step that
appends a line to a ledger file and sleeps; see the worker's docstring.

Faults, on seeded schedules (``--seed``; each kind draws from its own generator, so the
schedules repeat exactly; which workflows a fault hits depends on timing):

- every ``--kill-every`` LOW-HIGH seconds (uniform), a random worker is killed: SIGSTOP, read
  which workflows it holds (so that nothing changes while we look), SIGKILL, and a new worker
  is started in its place at once;
- every ``--restart-every`` LOW-HIGH seconds, the PostgreSQL server is restarted (the command
  runs to completion; the next interval starts when it returns); 0 disables;
- with ``--freeze``, once, at a random time in the first half of the run, the worker holding
  the most workflows is SIGSTOPped and kept stopped past its lease until the others have
  taken over everything it held, then SIGCONTed: it must commit nothing for them.

Faults stop once every enqueued workflow has finished (or ``--grace`` seconds after the last
enqueue); then the run waits up to ``--grace`` more seconds, with no faults, for stragglers,
stops the workers (each must exit cleanly) and checks.

What is checked (a violation makes the exit status 1)
----------------------------------------------------

- lost: workflows whose enqueue was acknowledged and that did not finish; failed: finished
  in ERROR, DEAD_LETTER or CANCELLED; wrong results (each step returns a value fixed by its
  workflow and position, the workflow returns their sum, so a wrong replay shows);
- journals: each workflow's entries are positions 0..steps-1, no gap, no extra;
- applied twice: a transaction step with more than one row in ``chaos_effects`` (the table has
  no key, so a second application would be a second row); and each row is the execution its
  journal entry recorded (committed together);
- plain steps: each journaled result is the token of an execution the ledger recorded, and an
  execution whose result was not journaled (an "extra attempt") ran in a process that was
  killed or frozen: re-execution is expected only for a step a fault interrupted;
- the frozen worker committed nothing, after it was continued, for the workflows taken from
  it (executions it had begun before SIGSTOP);
- no worker exited on its own, each stopped cleanly, each restart command succeeded;
- at least ``--min-kills`` kills and ``--min-restarts`` restarts happened, and the freeze did:
  otherwise the run proves less than it claims.

Recovery times (information, not verdicts), read afterwards from timestamps the run left:

- after a kill: for each workflow the killed worker held, the time from the SIGKILL to its
  next journal entry (``steps.finished_at``: when a step's body finished, just before its
  commit) or to its end (the workflow's ``updated_at``); the kill's recovery time is the
  largest of these: all of the dead worker's work is moving again. p50 / p99 / max over the
  kills of a worker that held work;
- after a restart: the restart command's duration, and how long commits paused: the longest
  gap between consecutive transaction steps (``chaos_effects.at``, the server's clock, in
  transactions that committed) from the last one before the command began to the first one
  after it returned;
- the frozen worker: the same measure as a kill's, from SIGSTOP (so it includes the lease).

All processes run on one machine, so these clocks agree to within a few milliseconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import psycopg

import perdure
from _chaos_checks import (
    Evidence,
    Table,
    check_journals,
    check_outcomes,
    check_plain_steps,
    check_transactions,
    freeze_rows,
    recovery_rows,
    sample,
    stale_commits,
)
from _chaos_env import SNAPSHOT_DIR, describe, rerun_on_snapshot
from _chaos_faults import (
    Database,
    Feed,
    Freezer,
    Kill,
    Restarter,
    WorkerPool,
    libpq_url,
    local_restart_command,
    parse_command,
    with_schema,
)
from _chaos_worker import QUEUE, chaos_flow

BENCH = Path(__file__).resolve().parent
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_SCHEMA = "perdure_chaos"


@dataclass(frozen=True)
class Preset:
    """The defaults of the options a run does not give."""

    workflows: int
    steps: int
    workers: int
    kill_every: tuple[float, float]
    restart_every: tuple[float, float]
    freeze: bool
    duration: float
    grace: float
    lease: float
    heartbeat: float
    recovery_interval: float
    max_threads: int
    step_sleep: tuple[float, float]
    tx_sleep: tuple[float, float]
    min_kills: int
    min_restarts: int
    progress_every: float


#: The long version (``make chaos``): at least 10,000 workflows, 100 kills, 10 restarts, with
#: the engine's default lease, heartbeat, recovery interval and threads.
LONG = Preset(
    workflows=10_000, steps=10, workers=4, kill_every=(0.5, 5.0), restart_every=(5.0, 40.0),
    freeze=True, duration=360.0, grace=120.0, lease=10.0, heartbeat=1.0,
    recovery_interval=2.0, max_threads=64, step_sleep=(0.02, 0.2), tx_sleep=(0.0, 0.02),
    min_kills=100, min_restarts=10, progress_every=15.0,
)  # fmt: skip
#: The test suite's version (``--short``): about 25 s.
SHORT = Preset(
    workflows=300, steps=6, workers=3, kill_every=(0.5, 2.0), restart_every=(6.0, 12.0),
    freeze=True, duration=20.0, grace=30.0, lease=3.0, heartbeat=0.5, recovery_interval=0.5,
    max_threads=16, step_sleep=(0.01, 0.08), tx_sleep=(0.0, 0.01), min_kills=5,
    min_restarts=1, progress_every=5.0,
)  # fmt: skip


# -- options ---------------------------------------------------------------------------------


def interval(text: str) -> tuple[float, float]:
    """Seconds as LOW-HIGH, or one number (LOW = HIGH); ``0`` means never."""
    low, _, high = text.partition("-")
    try:
        bounds = float(low), float(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW-HIGH seconds") from None
    if bounds[0] < 0 or bounds[1] < bounds[0]:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= LOW <= HIGH")
    return bounds


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The options, with the preset (long, or ``--short``) filling what was not given."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"PostgreSQL URL (default {DEFAULT_URL})")
    p.add_argument("--short", action="store_true", help="the test suite's preset (~25 s)")
    p.add_argument("--workflows", type=int, help="workflows enqueued (long: 10000)")
    p.add_argument("--steps", type=int, help="steps per workflow, at least 2 (long: 10)")
    p.add_argument("--workers", type=int, help="worker processes (long: 4)")
    p.add_argument("--kill-every", type=interval, help="LOW-HIGH s between kills (0.5-5)")
    p.add_argument("--restart-every", type=interval, help="LOW-HIGH s between restarts (5-40)")
    p.add_argument(
        "--freeze",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="SIGSTOP one worker past its lease, then SIGCONT (default: on)",
    )
    p.add_argument("--duration", type=float, help="s over which workflows are enqueued (360)")
    p.add_argument("--grace", type=float, help="s allowed to finish after faults stop (120)")
    p.add_argument("--seed", type=int, default=1, help="seed of the fault schedules (1)")
    p.add_argument("--restart-cmd", help="command restarting the server (default: derived)")
    p.add_argument("--lease", type=float, help="workers' lease_seconds (long: 10, the default)")
    p.add_argument("--heartbeat", type=float, help="workers' heartbeat_interval (long: 1)")
    p.add_argument("--recovery-interval", type=float, help="workers' recovery_interval (2)")
    p.add_argument("--max-threads", type=int, help="workers' max_threads (long: 64)")
    p.add_argument("--step-sleep", type=interval, help="LOW-HIGH s in a plain step (0.02-0.2)")
    p.add_argument("--tx-sleep", type=interval, help="LOW-HIGH s in a transaction (0-0.02)")
    p.add_argument("--min-kills", type=int, help="fewer kills is a violation (long: 100)")
    p.add_argument("--min-restarts", type=int, help="fewer restarts is a violation (long: 10)")
    p.add_argument("--progress-every", type=float, help="s between progress lines")
    p.add_argument("--keep", action="store_true", help="keep the schema and the work folder")
    p.add_argument(
        "--perdure-ref", help="run perdure's src/ as of this git commit (default: the work tree)"
    )
    opts = p.parse_args(argv)
    preset = SHORT if opts.short else LONG
    for option in fields(Preset):
        if getattr(opts, option.name) is None:
            setattr(opts, option.name, getattr(preset, option.name))
    if opts.steps < 2 or opts.workflows < 1 or opts.workers < 1:
        p.error("need --steps >= 2, --workflows >= 1, --workers >= 1")
    if opts.freeze and opts.workers < 2:
        p.error("--freeze needs at least 2 workers: another must take over")
    if opts.kill_every[1] <= 0:
        opts.kill_every = None
    if opts.restart_every[1] <= 0:
        opts.restart_every = None
    return opts


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Setup:
    """Where the run happens."""

    url: str  # with ?schema=
    schema: str
    folder: Path
    restart: list[str] | None


def prepare(opts: argparse.Namespace) -> Setup:
    """A fresh schema with perdure's tables and the application's; a work folder."""
    schema = dict(_query(opts.url)).get("schema", DEFAULT_SCHEMA)
    url = with_schema(opts.url, schema)
    with psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())
        conn.execute(f"CREATE SCHEMA {schema}".encode())
        conn.execute(f"SET search_path = {schema}".encode())
        conn.execute(
            "CREATE TABLE chaos_effects (workflow_id TEXT NOT NULL, position INTEGER NOT NULL, "
            "pid INTEGER NOT NULL, idem_key TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, "
            "execution BIGINT NOT NULL)"
        )
        conn.execute("CREATE SEQUENCE chaos_executions")
    folder = Path(tempfile.mkdtemp(prefix="perdure-chaos-"))
    (folder / "ledger").mkdir()
    restart = parse_command(opts.restart_cmd) if opts.restart_cmd else None
    if restart is None and opts.restart_every is not None:
        restart = local_restart_command(opts.url)
    return Setup(url, schema, folder, restart)


def _query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query)


def worker_command(opts: argparse.Namespace, setup: Setup) -> list[str]:
    """The command line of a worker process (the project's Python: this one)."""
    return [
        sys.executable,
        str(BENCH / "_chaos_worker.py"),
        "--url",
        setup.url,
        "--ledger-dir",
        str(setup.folder / "ledger"),
        "--stop-file",
        str(setup.folder / "stop"),
        "--lease",
        str(opts.lease),
        "--heartbeat",
        str(opts.heartbeat),
        "--recovery-interval",
        str(opts.recovery_interval),
        "--max-threads",
        str(opts.max_threads),
        "--step-sleep",
        "{:g}-{:g}".format(*opts.step_sleep),
        "--tx-sleep",
        "{:g}-{:g}".format(*opts.tx_sleep),
    ]


class Chaos:
    """The run: the feeder, the workers and the faults, until everything has finished."""

    def __init__(self, opts: argparse.Namespace, setup: Setup, client: perdure.Engine) -> None:
        self.opts, self.setup, self.client = opts, setup, client
        self.db = Database(setup.url, setup.schema)
        self.pool = WorkerPool(worker_command(opts, setup), setup.folder, opts.workers)
        self.feed = Feed()
        self.kills: list[Kill] = []
        self.kill_rng = random.Random(f"{opts.seed}:kill")
        self.restarter = (
            Restarter(setup.restart, opts.restart_every, random.Random(f"{opts.seed}:restart"))
            if setup.restart is not None and opts.restart_every is not None
            else None
        )
        self.freezer: Freezer | None = None
        self.began = 0.0
        self.statuses: Counter[str] = Counter()
        self._halt = threading.Event()

    # -- the phases --

    def run(self) -> None:
        """Start the workers, feed and inject faults until all is done, then the grace."""
        self.pool.start()
        self.began = time.monotonic()
        feeder = threading.Thread(target=self._feed, name="chaos-feeder", daemon=True)
        feeder.start()
        if self.restarter is not None:
            self.restarter.start()
        if self.opts.freeze:
            at = random.Random(f"{self.opts.seed}:freeze").uniform(0.15, 0.5)
            longest = 3 * self.opts.lease + 10
            self.freezer = Freezer(
                self.pool,
                Database(self.setup.url, self.setup.schema),
                self.began + at * max(self.opts.duration, 20.0),
                self.opts.lease,
                longest,
            )
            self.freezer.start()
        try:
            self._wait(None, inject=True)
        finally:
            self._halt.set()
            if self.restarter is not None:
                self.restarter.finish()
            if self.freezer is not None:
                self.freezer.stop()
            feeder.join()
        self._say("faults stopped; waiting for the rest to finish")
        self._wait(time.monotonic() + self.opts.grace, inject=False)

    def _wait(self, deadline: float | None, inject: bool) -> None:
        """Watch the workers (replacing any that exited), kill on schedule if ``inject``,
        report progress; return when every enqueued workflow has finished, or at
        ``deadline``, or (without one) ``--grace`` seconds after the last enqueue."""
        next_kill = self._next_kill(time.monotonic())
        next_report = time.monotonic() + self.opts.progress_every
        next_count = 0.0
        while True:
            now = time.monotonic()
            for worker in self.pool.replace_exited():
                self._say(
                    f"{worker.name} (pid {worker.pid}) EXITED on its own "
                    f"(code {worker.proc.returncode}):\n{worker.stderr_tail()}"
                )
            if inject and next_kill is not None and now >= next_kill:
                self._kill()
                next_kill = self._next_kill(now)
            if now >= next_count:
                self._count()
                next_count = now + 1.0
                if self._finished():
                    return
            if now >= next_report:
                self._progress()
                next_report = now + self.opts.progress_every
            if now > (deadline or self._fault_deadline()):
                return
            time.sleep(0.05)

    def _fault_deadline(self) -> float:
        """When faults stop at the latest: ``--grace`` s after the last enqueue (or after
        two graces after the start, if enqueueing is stuck)."""
        fed_at, grace = self.feed.finished_at, float(self.opts.grace)
        latest = self.began + float(self.opts.duration) + 2 * grace
        return latest if fed_at is None else min(latest, fed_at + grace)

    def _next_kill(self, now: float) -> float | None:
        every = self.opts.kill_every
        return None if every is None else now + self.kill_rng.uniform(*every)

    def _kill(self) -> None:
        with self.pool.stopped_victim(self.kill_rng) as victim:
            held = self.db.in_flight(victim.pid, patience=1.0)
        self.kills.append(
            Kill(victim.killed_at, victim.pid, victim.name, None if held is None else tuple(held))
        )

    def _count(self) -> None:
        try:
            rows = self.db.rows("SELECT status, count(*) FROM workflows GROUP BY status", (), 0)
        except psycopg.OperationalError:
            return
        self.statuses = Counter({status: int(n) for status, n in rows})

    def _finished(self) -> bool:
        if self.feed.finished_at is None:
            return False
        done = sum(self.statuses[s] for s in ("SUCCESS", "ERROR", "CANCELLED", "DEAD_LETTER"))
        return done >= len(self.feed.acknowledged)

    def _progress(self) -> None:
        restarts = len(self.restarter.done) if self.restarter is not None else 0
        frozen = ""
        if self.freezer is not None and self.freezer.record.stopped_at:
            frozen = ", frozen" if not self.freezer.record.continued_at else ", freeze done"
        self._say(
            f"enqueued {len(self.feed.acknowledged)}, succeeded "
            f"{self.statuses['SUCCESS']}, kills {len(self.kills)}, restarts "
            f"{restarts}{frozen}"
        )

    def _say(self, text: str) -> None:
        print(f"  {time.monotonic() - self.began:6.1f}s  {text}", flush=True)

    # -- the feeder --

    def _feed(self) -> None:
        """Enqueue the workflows evenly over the duration; a call that raises is tried again
        with the same id (the id deduplicates: it never enqueues twice)."""
        n, duration = self.opts.workflows, self.opts.duration
        for i in range(n):
            due = self.began + duration * i / n
            if self._halt.wait(max(0.0, due - time.monotonic())):
                break
            wf = f"chaos-{i:05d}"
            while not self._halt.is_set():
                try:
                    self.client.enqueue(QUEUE, chaos_flow, steps=self.opts.steps, id=wf)
                except perdure.PerdureError as exc:
                    self.feed.retries += 1
                    if len(self.feed.errors) < 5:
                        self.feed.errors.append(f"{wf}: {type(exc).__name__}: {exc}")
                    time.sleep(0.5)
                    continue
                self.feed.acknowledged.append(wf)
                break
        self.feed.finished_at = time.monotonic()


# -- the verdict -----------------------------------------------------------------------------


def verdict(chaos: Chaos, stop_failures: list[str]) -> Table:
    """Check the evidence; the invariant table."""
    opts, pool = chaos.opts, chaos.pool
    ids = chaos.feed.acknowledged
    ev = Evidence.load(chaos.db, chaos.setup.folder / "ledger")
    restarts = chaos.restarter.done if chaos.restarter is not None else []
    freeze = chaos.freezer.record if chaos.freezer is not None else None
    table = Table()
    table.info("workflows run (enqueues acknowledged)", len(ids))
    table.must(
        "faults injected: worker SIGKILLs",
        len(chaos.kills),
        f">= {opts.min_kills}",
        len(chaos.kills) >= opts.min_kills,
        "too few kills: the run proves too little",
    )
    kills_row = len(table.rows)
    table.must(
        "faults injected: PostgreSQL restarts",
        len(restarts),
        f">= {opts.min_restarts}",
        len(restarts) >= opts.min_restarts,
        "too few restarts (no --restart-cmd?)",
    )
    if opts.freeze:
        held = freeze is not None and freeze.stopped_at > 0 and bool(freeze.taken)
        table.must(
            "faults injected: worker frozen past its lease",
            int(held),
            "1",
            held,
            freeze.note if freeze is not None else "",
        )
        if freeze is not None and freeze.stopped_at:
            freeze_rows(table, ev, freeze)
    check_outcomes(table, ev, ids, opts.steps)
    check_transactions(table, ev, ids, opts.steps)
    check_journals(table, ev, ids, opts.steps)
    faulty = pool.killed_pids() | ({freeze.pid} if freeze is not None and freeze.pid else set())
    check_plain_steps(table, ev, ids, faulty)
    if freeze is not None and freeze.stopped_at:
        stale = stale_commits(ev, freeze)
        table.zero("commits by the frozen worker after takeover", len(stale), sample(stale))
    unexpected = [f"{w.name} (pid {w.pid}, code {w.proc.returncode})" for w in pool.unexpected]
    table.zero("workers that exited on their own", len(unexpected), ", ".join(unexpected))
    table.zero("workers that did not stop cleanly", len(stop_failures), ", ".join(stop_failures))
    failed = [r for r in restarts if r.returncode != 0]
    table.zero(
        "restart commands that failed",
        len(failed),
        "; ".join(f"{r.returncode}: {r.output}" for r in failed[:3]),
    )
    table.info("enqueue calls that raised and were retried", chaos.feed.retries)
    table.info("takeovers (workflows resumed by another worker)", ev.takeovers)
    recovery = Table()
    recovery_rows(recovery, ev, chaos.kills, restarts, freeze)
    table.rows[kills_row:kills_row] = recovery.rows[:2]  # the kills' details under the kills
    table.rows.extend(recovery.rows[2:])
    return table


# -- the program -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run, check, print the table; 0 without violations, 1 with, 2 if it could not run."""
    opts = parse(argv)
    if opts.perdure_ref and SNAPSHOT_DIR not in os.environ:
        rerun_on_snapshot(opts.perdure_ref, sys.argv[1:] if argv is None else argv)
    try:
        setup = prepare(opts)
    except psycopg.Error as exc:
        print(f"cannot prepare the schema at {libpq_url(opts.url)}: {exc}", file=sys.stderr)
        return 2
    if opts.restart_every is not None and setup.restart is None:
        print(
            "no way to restart the server: pass --restart-cmd (or --restart-every 0)",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(  # the client engine's and psycopg's warnings: outages, retries
        filename=setup.folder / "supervisor.log",
        level=logging.WARNING,
        format="%(asctime)s %(threadName)s %(levelname)s %(name)s %(message)s",
    )
    describe(opts, setup.url, setup.schema, setup.restart, setup.folder)
    started = time.monotonic()
    client = perdure.Engine(setup.url, recover=False, shutdown_grace=0.5)
    chaos = Chaos(opts, setup, client)
    try:
        with client:
            chaos.run()
            stop_failures = [
                f"{w.name} (code {w.proc.returncode})"
                for w in chaos.pool.stop(setup.folder / "stop")
            ]
    finally:
        chaos.pool.cleanup()
    table = verdict(chaos, stop_failures)
    print(f"\nchaos run of {time.monotonic() - started:.0f} s, seed {opts.seed}:\n")
    print(table.render())
    for error in chaos.feed.errors:
        print(f"an enqueue that raised (and was retried): {error}")
    chaos.db.close()
    bad = table.violations
    if bad or opts.keep:
        print(f"\nkept for inspection: schema {setup.schema}, folder {setup.folder}")
    else:
        drop(setup)
    if SNAPSHOT_DIR in os.environ:
        shutil.rmtree(os.environ[SNAPSHOT_DIR], ignore_errors=True)
    print(f"\n{'FAIL' if bad else 'PASS'}: {len(bad)} violation(s)")
    return 1 if bad else 0


def drop(setup: Setup) -> None:
    """Remove the run's schema and work folder."""
    with psycopg.connect(libpq_url(setup.url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {setup.schema} CASCADE".encode())
    shutil.rmtree(setup.folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
