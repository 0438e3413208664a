"""perdure in ``bench/compare.py``: every scenario, on SQLite and on PostgreSQL.

Run as ``python bench/_sys_perdure.py <scenario> --backend sqlite|postgres [options]`` (see
``_common.child_parser``) under the project's virtualenv; prints one ``RESULT {json}`` line.
Only perdure's public API is used, the way docs/ and examples/ use it:

* ``steps``: ``engine.run(chain, N)``, a sync ``@perdure.workflow`` calling a sync
  ``@perdure.step`` N times (``x = x + 1``).
* ``throughput``: C caller threads, each calling ``engine.run(...)`` in a loop (at most C
  workflows in flight), on one ``Engine(max_threads=max(64, C))``; the same with an
  ``async def`` workflow of ``async def`` steps on the same engine, as ``"alt_async"``.
* ``recovery``: a first child starts W sync workflows (step 1, step 2 that blocks, step 3)
  and is SIGKILLed once every workflow has journaled step 1 (polled with
  ``engine.list_steps`` from a client ``Engine(recover=False)``); a second child opens an
  ``Engine(max_threads=W)`` on the same database, which claims and resumes them on open,
  and waits for all; then the same again with the default ``max_threads=64``, as
  ``"alt_max_threads_64"``.
* ``waiting``: W sync workflows each ``perdure.receive("go")``; ``engine.send`` wakes them.
* ``agent``: ``perdure.agents.Agent`` with an ``openai.OpenAI`` client and an
  ``@agents.tool``, inside a workflow, against the fake LLM server of ``--llm-url``.

Databases: SQLite ``<--dir>/perdure.db`` (removed first; perdure's default
``durability="full"``: WAL, ``synchronous=FULL``), PostgreSQL database ``cmp_perdure``
(dropped and recreated).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import perdure
from _common import (
    child_parser,
    database_url,
    emit,
    kill_and_recover,
    percentile,
    recreate_pg_database,
    rss_mb,
    run_child,
    run_many,
    throughput_summary,
    timed,
)
from perdure import agents

ENTRY = time.perf_counter()  # the recovery child's start-up is measured from here
DB_NAME = "cmp_perdure"
WARMUP_WORKFLOWS = 20
RESULT_TIMEOUT = 600.0

# -- the workflows ---------------------------------------------------------------------------


@perdure.step(name="cmp.inc")
def inc(x: int) -> int:
    return x + 1


@perdure.workflow(name="cmp.chain")
def chain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = inc(x)
    return x


@perdure.step(name="cmp.ainc")
async def ainc(x: int) -> int:
    return x + 1


@perdure.workflow(name="cmp.achain")
async def achain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = await ainc(x)
    return x


#: the file step 1 of the recovery workflow appends one line to per execution (set by main)
STEP1_LOG: Path | None = None


@perdure.step(name="cmp.rec.step1")
def rec_step1() -> int:
    assert STEP1_LOG is not None
    fd = os.open(STEP1_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{perdure.workflow_id()}\n".encode())
    finally:
        os.close(fd)
    return 1


@perdure.step(name="cmp.rec.step2")
def rec_step2() -> int:
    if os.environ.get("CMP_RECOVERING") != "1":
        time.sleep(3600)
    return 2


@perdure.step(name="cmp.rec.step3")
def rec_step3() -> int:
    return 3


@perdure.workflow(name="cmp.rec")
def recovering() -> int:
    return rec_step1() + rec_step2() + rec_step3()


WOKE: dict[str, float] = {}  # workflow id -> time.perf_counter() when the step after receive ran
WOKE_LOCK = threading.Condition()


@perdure.step(name="cmp.wait.after")
def after_message(payload: int) -> int:
    now = time.perf_counter()
    with WOKE_LOCK:
        WOKE[perdure.workflow_id()] = now
        WOKE_LOCK.notify_all()
    return payload


@perdure.workflow(name="cmp.wait")
def waiter() -> int:
    payload = perdure.receive("go")
    return after_message(payload)


@agents.tool
def lookup(n: int) -> dict[str, int]:
    """Look a number up.

    Args:
        n: the number.
    """
    return {"n": n, "value": n * 2}


#: the OpenAI client of the agent scenario (set by main: the fake server's port changes, so it
#: is not a workflow input), as examples/support_agent.py does
CLIENT: Any = None
SYSTEM = "You answer by calling lookup until you are done."
PROMPT = "Look the numbers up, one at a time."


@perdure.workflow(name="cmp.agent")
def conversation(max_turns: int) -> int:
    agent = agents.Agent(CLIENT, model="fake", tools=[lookup], instructions=SYSTEM,
                         max_turns=max_turns)  # fmt: skip
    result = agent.run(PROMPT)
    if result.text != "done":
        raise RuntimeError(f"the conversation ended with {result.text!r}, not 'done'")
    return result.turns


# -- the database ----------------------------------------------------------------------------


class Backend:
    """The database URL of one backend, fresh (removed, or dropped and recreated)."""

    def __init__(self, args: argparse.Namespace, fresh: bool = True) -> None:
        self.name = args.backend
        if args.backend == "sqlite":
            self.path = Path(args.dir).resolve() / "perdure.db"
            if fresh:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self.url = f"sqlite:///{self.path}"
            self.notes = "SQLite WAL, durability='full' (synchronous=FULL, perdure's default)"
        else:
            if fresh:
                self.url = recreate_pg_database(args.url, DB_NAME)
            else:
                self.url = database_url(args.url, DB_NAME)
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                row = conn.execute("SHOW synchronous_commit").fetchone()
            self.notes = (
                "PostgreSQL, engine defaults (a pool of 8 connections + 1 LISTEN), "
                f"synchronous_commit={row[0] if row else '?'}"
            )


def version() -> str:
    return f"perdure {perdure.__version__}"


# -- steps -----------------------------------------------------------------------------------


def scenario_steps(args: argparse.Namespace) -> dict[str, Any]:
    backend = Backend(args)
    n = args.steps
    with perdure.Engine(backend.url) as engine:
        engine.run(chain, n, timeout=RESULT_TIMEOUT)  # warm-up, untimed, as long as the run
        result, wall, cpu = timed(lambda: engine.run(chain, n, timeout=RESULT_TIMEOUT))
    if result != n:
        raise RuntimeError(f"the workflow returned {result}, expected {n}")
    return {
        "steps": n,
        "wall_us": wall / n * 1e6,
        "cpu_us": cpu / n * 1e6,
        "version": version(),
        "notes": f"engine.run(sync workflow of {n} sync steps), engine defaults; {backend.notes}",
    }


# -- throughput ------------------------------------------------------------------------------


def throughput(engine: perdure.Engine, fn: Callable[..., Any], args: Any) -> dict[str, Any]:
    """W workflows of S steps, C caller threads each calling ``engine.run`` in turn."""

    def run(steps: int) -> int:
        result: int = engine.run(fn, steps, timeout=RESULT_TIMEOUT)
        return result

    warm = run_many(run, WARMUP_WORKFLOWS, args.steps, args.concurrency)  # untimed
    if warm["errors"]:
        raise RuntimeError(f"warm-up failed: {warm['error']}")
    done, wall, cpu = timed(lambda: run_many(run, args.workflows, args.steps, args.concurrency))
    return throughput_summary(args, done, wall, cpu)


def scenario_throughput(args: argparse.Namespace) -> dict[str, Any]:
    backend = Backend(args)
    threads = max(64, args.concurrency)
    with perdure.Engine(backend.url, max_threads=threads) as engine:
        sync = throughput(engine, chain, args)
        alt = throughput(engine, achain, args)
    return {
        **sync,
        "version": version(),
        "notes": (
            f"{args.concurrency} caller threads each calling engine.run(workflow, "
            f"{args.steps}) in turn (at most {args.concurrency} in flight), one "
            f"Engine(max_threads={threads}); sync workflow of sync steps; alt_async: async "
            "workflow of async steps on the same engine (they run on its event loop, journal "
            f"entries committed together per loop pass); {WARMUP_WORKFLOWS} untimed warm-up "
            f"workflows each; {backend.notes}"
        ),
        "alt_async": alt,
    }


# -- recovery --------------------------------------------------------------------------------


def recovery_ids(workflows: int) -> list[str]:
    return [f"rec-{i:05d}" for i in range(workflows)]


def recovery_start(args: argparse.Namespace) -> None:
    """The first child: start W workflows; each blocks in step 2 until the parent kills us."""
    backend = Backend(args, fresh=False)
    engine = perdure.Engine(backend.url, max_threads=max(64, args.workflows)).open()
    for workflow_id in recovery_ids(args.workflows):
        engine.start(recovering, id=workflow_id)
    print("STARTED", flush=True)
    time.sleep(7200)  # the parent SIGKILLs us


def recovery_resume(args: argparse.Namespace) -> None:
    """The second child: open an engine (it recovers on open) and wait for every workflow."""
    backend = Backend(args, fresh=False)
    with perdure.Engine(backend.url, max_threads=args.resume_threads) as engine:
        startup = time.perf_counter() - ENTRY
        completed = 0
        for workflow_id in recovery_ids(args.workflows):
            if engine.handle(workflow_id).result(timeout=RESULT_TIMEOUT) == 6:
                completed += 1
        recoveries = sum(engine.get_workflow(i).recoveries for i in recovery_ids(args.workflows))
    emit({"completed": completed, "startup_s": startup, "recoveries": recoveries})


def step1_journaled(engine: perdure.Engine, pending: set[str]) -> None:
    """Remove from ``pending`` the workflows whose journal holds step 1."""
    for workflow_id in list(pending):
        try:
            steps = engine.list_steps(workflow_id)
        except perdure.WorkflowNotFound:
            continue
        if any(s.name == "cmp.rec.step1" for s in steps):
            pending.discard(workflow_id)


def measure_recovery(args: argparse.Namespace, resume_threads: int) -> dict[str, Any]:
    """One kill-and-recover cycle on a fresh database; the second child's engine runs with
    ``max_threads=resume_threads``."""
    assert STEP1_LOG is not None
    backend = Backend(args)  # fresh database
    STEP1_LOG.unlink(missing_ok=True)
    command = [sys.executable, __file__, "recovery", *sys.argv[2:]]
    # A client engine (recover=False: it never claims work) creates the schema, untimed, and
    # reads the journals through the public API while the first child runs.
    with perdure.Engine(backend.url, recover=False) as client:
        pending = set(recovery_ids(args.workflows))

        def ready() -> bool:
            step1_journaled(client, pending)
            return not pending

        done = kill_and_recover(
            command, ready, STEP1_LOG, ["--resume-threads", str(resume_threads)]
        )
    recovery, child = done.seconds, done.child
    executed_before, executed = done.step1_before, done.step1_after
    return {
        "workflows": args.workflows,
        "recovery_s": recovery,
        "startup_s": child["startup_s"],
        "completed": child["completed"],
        "step1_reexecuted": executed - executed_before,
        "step1_before_kill": executed_before,
        "recoveries": child["recoveries"],
        "max_threads": resume_threads,
        "notes": backend.notes,
    }


def scenario_recovery(args: argparse.Namespace) -> dict[str, Any]:
    main = measure_recovery(args, max(64, args.workflows))
    alt = measure_recovery(args, 64)
    return {
        **main,
        "version": version(),
        "notes": (
            "sync workflows (step1 appends to a file, step2 blocks 1 h, step3); first child: "
            f"Engine(max_threads={max(64, args.workflows)}) so all W block in step 2 at once; "
            f"second child: Engine(max_threads={main['max_threads']}), whose recovery sweep on "
            "open claims all W at once (a sweep takes at most max_threads minus what runs; the "
            "rest of a backlog is taken as runs end: alt_max_threads_64 is the same with the "
            "default 64); the SIGKILLed worker's workflows are claimed "
            "with no lease wait: perdure sees its pid is gone on this host (PostgreSQL too; "
            "else the default 10 s lease); startup_s = process entry (after imports) to the "
            "engine open, its first recovery sweep included; step 1 journaled checked with "
            f"engine.list_steps from a client Engine(recover=False); {main['notes']}"
        ),
        "alt_max_threads_64": {k: v for k, v in alt.items() if k != "notes"},
    }


# -- waiting ---------------------------------------------------------------------------------


def count_waiting(engine: perdure.Engine, limit: int) -> int:
    return len(engine.list_workflows(status="WAITING", limit=limit))


def wait_until(what: str, done: Callable[[], bool], timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
        time.sleep(0.1)


def wake(engine: perdure.Engine, workflow_id: str) -> float:
    """Send the message; seconds until the workflow's next step ran."""
    t0 = time.perf_counter()
    engine.send(workflow_id, "go", 1)
    with WOKE_LOCK:
        if not WOKE_LOCK.wait_for(lambda: workflow_id in WOKE, timeout=RESULT_TIMEOUT):
            raise TimeoutError(f"{workflow_id} did not wake within {RESULT_TIMEOUT:.0f} s")
        woke = WOKE[workflow_id]
    engine.handle(workflow_id).result(timeout=RESULT_TIMEOUT)
    return woke - t0


def scenario_waiting(args: argparse.Namespace) -> dict[str, Any]:
    backend = Backend(args)
    n = args.workflows
    ids = [f"wait-{i:06d}" for i in range(n)]
    sample = ids[:: max(1, n // args.sample)][: args.sample]
    with perdure.Engine(backend.url) as engine:
        warm = [engine.start(waiter, id=f"warm-{i}").id for i in range(100)]  # untimed
        wait_until("warm-up waiting", lambda: count_waiting(engine, 1000) >= len(warm))
        for workflow_id in warm:
            wake(engine, workflow_id)
        gc.collect()
        rss_before = rss_mb()

        t0 = time.perf_counter()
        for workflow_id in ids:
            engine.start(waiter, id=workflow_id)
        started = time.perf_counter() - t0
        wait_until("all waiting", lambda: count_waiting(engine, n + 1) >= n)
        start_s = time.perf_counter() - t0
        gc.collect()
        rss = rss_mb() - rss_before
        threads = threading.active_count()

        latencies = [wake(engine, workflow_id) for workflow_id in sample]
    return {
        "workflows": n,
        "start_s": start_s,
        "start_calls_s": started,
        "rss_mb": rss,
        "kb_per_workflow": rss * 1024 / n,
        "threads": threads,
        "sample": len(latencies),
        "wake_p50_ms": percentile(latencies, 0.5) * 1e3,
        "wake_p99_ms": percentile(latencies, 0.99) * 1e3,
        "version": version(),
        "notes": (
            "sync workflow: perdure.receive('go') then a step; a waiting workflow is unloaded "
            "(status WAITING, no thread); engine.start x W from one thread, all WAITING checked "
            "with engine.list_workflows(status='WAITING'); wake = engine.send(id, 'go', 1) on "
            "the same engine -> the next step runs, one at a time; engine defaults "
            f"(max_threads 64); warm-up: 100 workflows through the cycle; {backend.notes}"
        ),
    }


# -- agent -----------------------------------------------------------------------------------


def payload_bytes(value: Any) -> int:
    if value is None:
        return 0  # no output (a failed step) or no error (a successful one)
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())


def scenario_agent(args: argparse.Namespace) -> dict[str, Any]:
    if not args.llm_url:
        raise SystemExit("agent needs --llm-url (bench/compare.py starts bench/_fake_llm.py)")
    import openai

    global CLIENT
    CLIENT = openai.OpenAI(base_url=args.llm_url, api_key="fake")
    backend = Backend(args)
    max_turns = args.turns + 5
    with perdure.Engine(backend.url) as engine:
        engine.run(conversation, max_turns, id="warm-up", timeout=RESULT_TIMEOUT)  # untimed
        turns, wall, cpu = timed(
            lambda: engine.run(conversation, max_turns, id="timed", timeout=RESULT_TIMEOUT)
        )
        steps = engine.list_steps("timed")
    if turns != args.turns:
        raise RuntimeError(f"the conversation made {turns} LLM calls, expected {args.turns}")
    journal = sum(payload_bytes(s.output) + payload_bytes(s.error) for s in steps)
    names = sorted({s.name for s in steps})
    return {
        "turns": turns,
        "wall_s": wall,
        "cpu_s": cpu,
        "journal_bytes": journal,
        "journal_steps": len(steps),
        "version": f"{version()}, openai {openai.__version__}",
        "notes": (
            "perdure.agents.Agent(openai.OpenAI(...), tools=[@agents.tool lookup]) in a sync "
            f"workflow run by engine.run; journal steps: {', '.join(names)}; journal_bytes = "
            "compact JSON of each step's recorded output (engine.list_steps), i.e. the step "
            "rows' payloads (model responses and tool results; requests are not journaled; the "
            "stored rows also hold each model call's short fingerprint, not counted); warm-up "
            "= one untimed "
            f"conversation; {backend.notes}"
        ),
    }


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    global STEP1_LOG
    parser = child_parser(__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--role", default="", help=argparse.SUPPRESS)
    parser.add_argument("--resume-threads", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    STEP1_LOG = Path(args.dir).resolve() / "perdure-step1.log"
    return run_child(args, globals())


if __name__ == "__main__":
    sys.exit(main())
