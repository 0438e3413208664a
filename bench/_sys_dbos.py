"""DBOS Transact in ``bench/compare.py``: every scenario, on SQLite and on PostgreSQL.

Run as ``python bench/_sys_dbos.py <scenario> --backend sqlite|postgres [options]`` (see
``_common.child_parser``) under the peer virtualenv (``bench/.peers/.venv``, dbos from PyPI);
prints one ``RESULT {json}`` line. DBOS is used the way its documentation shows:

* ``steps``: a sync ``@DBOS.workflow()`` calling a sync ``@DBOS.step()`` N times
  (``x = x + 1``), run with ``DBOS.start_workflow(...).get_result()``.
* ``throughput``: C caller threads, each ``DBOS.start_workflow(chain, S).get_result()`` in
  turn (at most C in flight; DBOS runs each on its executor thread pool); and, as
  ``"alt_async"``, an ``async def`` workflow of ``async def`` steps, C at a time as asyncio
  tasks (``DBOS.start_workflow_async``) on one event loop.
* ``recovery``: a first child starts W sync workflows (step 1 appends to a file, step 2 blocks
  1 h, step 3) and is SIGKILLed once the system database holds W step-1 outputs; a second
  child with the same executor id and application version calls ``DBOS.launch()``, which
  recovers that executor's pending workflows, and waits for all of them.
* ``waiting``: W ``async def`` workflows each ``await DBOS.recv_async("go")`` (a sync
  workflow's ``DBOS.recv`` holds an executor thread while it waits); ``DBOS.send_async``
  wakes them.
* ``agent``: a sync workflow whose LLM call (openai SDK) and tool are ``@DBOS.step()``s,
  against the fake LLM server of ``--llm-url``.

Configuration: DBOS's defaults except the system database URL, ``log_level`` WARNING, a fixed
``application_version`` and ``executor_id`` (so the recovering process recovers the killed
one's workflows). This DBOS has no admin server; OTLP export is off by default and no
Conductor key is given, so neither runs. Databases: SQLite ``<--dir>/dbos_sys.sqlite``
(removed first, then created in WAL mode before DBOS opens it: DBOS leaves SQLite's default
rollback journal, ``journal_mode=DELETE``, and the default ``synchronous=FULL``), PostgreSQL
database ``cmp_dbos_sys`` (dropped and recreated; DBOS 3 needs no application database).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbos import DBOS, SetWorkflowID

from _common import (
    child_parser,
    emit,
    kill_and_recover,
    percentile,
    rss_mb,
    run_child,
    run_many,
    throughput_summary,
    timed,
)
from _dbos_setup import APP_VERSION, EXECUTOR_ID, Backend, launch, version

ENTRY = time.perf_counter()  # the recovery child's start-up is measured from here
WARMUP_WORKFLOWS = 20
RESULT_TIMEOUT = 600.0

# -- the workflows ---------------------------------------------------------------------------


@DBOS.step(name="cmp.inc")
def inc(x: int) -> int:
    return x + 1


@DBOS.workflow(name="cmp.chain")
def chain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = inc(x)
    return x


@DBOS.step(name="cmp.ainc")
async def ainc(x: int) -> int:
    return x + 1


@DBOS.workflow(name="cmp.achain")
async def achain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = await ainc(x)
    return x


#: the file step 1 of the recovery workflow appends one line to per execution (set by main)
STEP1_LOG: Path | None = None


@DBOS.step(name="cmp.rec.step1")
def rec_step1() -> int:
    assert STEP1_LOG is not None
    with open(STEP1_LOG, "a", encoding="utf-8") as log:  # one O_APPEND write per execution
        log.write(f"{DBOS.workflow_id}\n")
    return 1


@DBOS.step(name="cmp.rec.step2")
def rec_step2() -> int:
    if os.environ.get("CMP_RECOVERING") != "1":
        time.sleep(3600)
    return 2


@DBOS.step(name="cmp.rec.step3")
def rec_step3() -> int:
    return 3


@DBOS.workflow(name="cmp.rec")
def recovering() -> int:
    return rec_step1() + rec_step2() + rec_step3()


WOKE: dict[str, float] = {}  # workflow id -> time.perf_counter() when the step after recv ran
WOKE_EVENTS: dict[str, asyncio.Event] = {}


@DBOS.step(name="cmp.wait.after")
async def after_message(payload: int) -> int:
    WOKE[str(DBOS.workflow_id)] = time.perf_counter()
    WOKE_EVENTS[str(DBOS.workflow_id)].set()  # made by wake() before it sends
    return payload


@DBOS.workflow(name="cmp.wait")
async def waiter() -> int:
    payload = await DBOS.recv_async("go", timeout_seconds=7200)
    return await after_message(payload)


#: the OpenAI client of the agent scenario (set by main: the fake server's port changes)
CLIENT: Any = None
SYSTEM = "You answer by calling lookup until you are done."
PROMPT = "Look the numbers up, one at a time."
N_PARAM = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
TOOL = {"name": "lookup", "description": "Look a number up.", "parameters": N_PARAM}
TOOLS = [{"type": "function", "function": TOOL}]


@DBOS.step(name="cmp.agent.llm")
def call_llm(messages: list[dict[str, Any]]) -> dict[str, Any]:
    response = CLIENT.chat.completions.create(model="fake", messages=messages, tools=TOOLS)
    message: dict[str, Any] = response.choices[0].message.model_dump(exclude_none=True)
    return message


@DBOS.step(name="cmp.agent.lookup")
def lookup(n: int) -> dict[str, int]:
    return {"n": n, "value": n * 2}


@DBOS.workflow(name="cmp.agent")
def conversation(max_turns: int) -> int:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": PROMPT},
    ]
    for turn in range(1, max_turns + 1):
        message = call_llm(messages)
        messages.append(message)
        calls = message.get("tool_calls") or []
        if not calls:
            if message.get("content") != "done":
                raise RuntimeError(f"the conversation ended with {message!r}, not 'done'")
            return turn
        for call in calls:
            result = lookup(**json.loads(call["function"]["arguments"]))
            messages.append(
                {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)}
            )
    raise RuntimeError(f"no final answer after {max_turns} turns")


def run_chain(steps: int) -> int:
    result: int = DBOS.start_workflow(chain, steps).get_result()
    return result


# -- steps -----------------------------------------------------------------------------------


def scenario_steps(args: argparse.Namespace) -> dict[str, Any]:
    backend = Backend(args)
    n = args.steps
    launch(backend)
    try:
        run_chain(n)  # warm-up, untimed, as long as the timed run
        result, wall, cpu = timed(lambda: run_chain(n))
    finally:
        DBOS.destroy()
    if result != n:
        raise RuntimeError(f"the workflow returned {result}, expected {n}")
    return {
        "steps": n,
        "wall_us": wall / n * 1e6,
        "cpu_us": cpu / n * 1e6,
        "version": version(),
        "notes": (
            f"DBOS.start_workflow(sync workflow of {n} sync steps).get_result(); warm-up: one "
            f"untimed workflow of {n} steps; {backend.notes}"
        ),
    }


# -- throughput ------------------------------------------------------------------------------


def throughput_sync(args: argparse.Namespace) -> dict[str, Any]:
    warm = run_many(run_chain, WARMUP_WORKFLOWS, args.steps, args.concurrency)  # untimed
    if warm["errors"]:
        raise RuntimeError(f"warm-up failed: {warm['error']}")
    done, wall, cpu = timed(
        lambda: run_many(run_chain, args.workflows, args.steps, args.concurrency)
    )
    return throughput_summary(args, done, wall, cpu)


async def many_async(workflows: int, steps: int, concurrency: int) -> dict[str, Any]:
    """``workflows`` async workflows, ``concurrency`` worker tasks each starting one and
    awaiting its result in turn."""
    state = {"next": 0, "ok": 0, "errors": 0}
    errors: list[str] = []

    async def worker() -> None:
        while state["next"] < workflows:
            state["next"] += 1
            try:
                handle = await DBOS.start_workflow_async(achain, steps)
                good = await handle.get_result() == steps
            except Exception as exc:
                good = False
                errors.append(f"{type(exc).__name__}: {exc}")
            state["ok" if good else "errors"] += 1

    await asyncio.gather(*(worker() for _ in range(min(concurrency, max(workflows, 1)))))
    return {**state, "error": errors[0] if errors else ""}


def throughput_async(args: argparse.Namespace) -> dict[str, Any]:
    async def measure() -> dict[str, Any]:
        warm = await many_async(WARMUP_WORKFLOWS, args.steps, args.concurrency)  # untimed
        if warm["errors"]:
            raise RuntimeError(f"async warm-up failed: {warm['error']}")
        wall0, cpu0 = time.perf_counter(), time.process_time()
        done = await many_async(args.workflows, args.steps, args.concurrency)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        return throughput_summary(args, done, wall1 - wall0, cpu1 - cpu0)

    return asyncio.run(measure())


def scenario_throughput(args: argparse.Namespace) -> dict[str, Any]:
    backend = Backend(args)
    launch(backend)
    try:
        sync = throughput_sync(args)
        alt = throughput_async(args)
    finally:
        DBOS.destroy()
    return {
        **sync,
        "version": version(),
        "notes": (
            f"{args.concurrency} caller threads each calling DBOS.start_workflow(chain, "
            f"{args.steps}).get_result() in turn (at most {args.concurrency} in flight; each "
            "runs on DBOS's executor thread pool, unbounded by default); sync workflow of "
            "sync steps; alt_async: async workflow of async steps, "
            f"{args.concurrency} asyncio tasks each awaiting DBOS.start_workflow_async(...) "
            f"and its result, on one event loop; {WARMUP_WORKFLOWS} untimed warm-up "
            f"workflows each; {backend.notes}"
        ),
        "alt_async": alt,
    }


# -- recovery --------------------------------------------------------------------------------


def recovery_ids(workflows: int) -> list[str]:
    return [f"rec-{i:05d}" for i in range(workflows)]


def recovery_start(args: argparse.Namespace) -> None:
    """The first child: start W workflows; each blocks in step 2 until the parent kills us."""
    launch(Backend(args, fresh=False))
    for workflow_id in recovery_ids(args.workflows):
        with SetWorkflowID(workflow_id):
            DBOS.start_workflow(recovering)
    print("STARTED", flush=True)
    time.sleep(7200)  # the parent SIGKILLs us


def recovery_resume(args: argparse.Namespace) -> None:
    """The second child: launch DBOS (it recovers this executor's pending workflows) and wait
    until the system database shows every workflow complete; then check their results."""
    backend = Backend(args, fresh=False)
    launch(backend)
    startup = time.perf_counter() - ENTRY
    ids = recovery_ids(args.workflows)
    deadline = time.monotonic() + RESULT_TIMEOUT
    while backend.count("workflow_status", "status = 'SUCCESS'") < len(ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all {len(ids)} recovered in {RESULT_TIMEOUT:.0f} s")
        time.sleep(0.02)
    print("DONE", flush=True)  # the parent stops its clock here
    completed = sum(1 for i in ids if DBOS.retrieve_workflow(i).get_result() == 6)
    attempts = backend.query(f"SELECT sum(recovery_attempts) FROM {backend.prefix}workflow_status")
    emit(
        {
            "completed": completed,
            "startup_s": startup,
            "recovery_attempts": int(attempts[0][0] or 0),
            "notes": backend.notes,
        }
    )
    DBOS.destroy()


def scenario_recovery(args: argparse.Namespace) -> dict[str, Any]:
    assert STEP1_LOG is not None
    backend = Backend(args)  # fresh database; the first child creates the schema
    STEP1_LOG.unlink(missing_ok=True)
    command = [sys.executable, __file__, "recovery", *sys.argv[2:]]

    def ready() -> bool:
        try:
            journaled = backend.count("operation_outputs", "function_name = 'cmp.rec.step1'")
        except Exception:  # the schema is not there yet
            return False
        return bool(journaled >= args.workflows)

    done = kill_and_recover(command, ready, STEP1_LOG)
    recovery, child = done.seconds, done.child
    executed_before, executed = done.step1_before, done.step1_after
    return {
        "workflows": args.workflows,
        "recovery_s": recovery,
        "startup_s": child["startup_s"],
        "completed": child["completed"],
        "step1_reexecuted": executed - executed_before,
        "step1_before_kill": executed_before,
        "recovery_attempts": child["recovery_attempts"],
        "version": version(),
        "notes": (
            "sync workflows (step1 appends to a file, step2 blocks 1 h, step3); first child: "
            f"DBOS.start_workflow x W (executor id {EXECUTOR_ID!r}, application_version "
            f"{APP_VERSION!r}), SIGKILLed once the system database holds W step-1 outputs "
            "(SQL count on operation_outputs); second child: the same executor id and version, "
            "DBOS.launch() finds its pending workflows and re-enqueues them on DBOS's internal "
            "queue, whose worker thread polls every ~1 s (default) and starts them; the "
            "clock stops when the child sees all W SUCCESS in workflow_status (SQL count "
            "polled every 20 ms) and prints DONE; startup_s = "
            "process entry (after imports) to DBOS.launch() returned; "
            f"{child['notes']}"
        ),
    }


# -- waiting ---------------------------------------------------------------------------------


async def wait_until(what: str, done: Callable[[], bool], timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(done):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
        await asyncio.sleep(0.1)


def waiting_count(backend: Backend, prefix: str) -> int:
    """Workflows whose recv is set up: DBOS records the recv's durable timeout as a
    ``DBOS.sleep`` row before it waits."""
    return backend.count(
        "operation_outputs", "function_name = 'DBOS.sleep' AND workflow_uuid LIKE %s", (prefix,)
    )


async def wake(workflow_id: str, handle: Any) -> float:
    """Send the message; seconds until the workflow's next step ran."""
    event = WOKE_EVENTS.setdefault(workflow_id, asyncio.Event())
    t0 = time.perf_counter()
    await DBOS.send_async(workflow_id, 1, "go")
    await asyncio.wait_for(event.wait(), RESULT_TIMEOUT)
    woke = WOKE[workflow_id]
    if await asyncio.wait_for(handle.get_result(), RESULT_TIMEOUT) != 1:
        raise RuntimeError(f"{workflow_id} returned a wrong result")
    return woke - t0


async def start_waiters(ids: list[str]) -> dict[str, Any]:
    handles = {}
    for workflow_id in ids:
        with SetWorkflowID(workflow_id):
            handles[workflow_id] = await DBOS.start_workflow_async(waiter)
    return handles


async def measure_waiting(args: argparse.Namespace, backend: Backend) -> dict[str, Any]:
    n = args.workflows
    ids = [f"wait-{i:06d}" for i in range(n)]
    sample = ids[:: max(1, n // args.sample)][: args.sample]
    warm_ids = [f"warm-{i}" for i in range(100)]  # untimed: the whole cycle
    warm = await start_waiters(warm_ids)
    await wait_until("warm-up waiting", lambda: waiting_count(backend, "warm-%") >= len(warm))
    items = list(warm.items())
    for i in range(0, len(items), 10):  # ten at a time: each wake uses a pool thread
        await asyncio.gather(
            *(wake(workflow_id, handle) for workflow_id, handle in items[i : i + 10])
        )
    gc.collect()
    rss_before = rss_mb()

    t0 = time.perf_counter()
    handles = await start_waiters(ids)
    started = time.perf_counter() - t0
    await wait_until("all waiting", lambda: waiting_count(backend, "wait-%") >= n)
    start_s = time.perf_counter() - t0
    gc.collect()
    rss = rss_mb() - rss_before
    threads = threading.active_count()

    latencies = [await wake(workflow_id, handles[workflow_id]) for workflow_id in sample]
    # The rest stay waiting; leaving the loop cancels their tasks, which DBOS logs one by one.
    logging.getLogger("dbos").setLevel(logging.ERROR)
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
    }


def scenario_waiting(args: argparse.Namespace) -> dict[str, Any]:
    backend = Backend(args)
    launch(backend)
    try:
        result = asyncio.run(measure_waiting(args, backend))
    finally:
        DBOS.destroy()
    wakeup = (
        "on SQLite DBOS's notification listener polls: every 1 s (its default "
        "notification_listener_polling_interval_sec) it runs one query per waiting recv"
        if backend.name == "sqlite"
        else "on PostgreSQL DBOS.send's NOTIFY wakes the listener thread"
    )
    return {
        **result,
        "version": version(),
        "notes": (
            "async workflow: await DBOS.recv_async('go', timeout_seconds=7200) then an async "
            "step (a sync workflow's DBOS.recv holds an executor thread while waiting); "
            "await DBOS.start_workflow_async x W from one event loop; all waiting checked by "
            "SQL: each recv's durable timeout row (function_name 'DBOS.sleep') in "
            "operation_outputs; wake = await DBOS.send_async(id, 1, 'go') on the same DBOS, "
            f"one at a time, until the next step runs ({wakeup}); warm-up: 100 workflows "
            f"through the cycle (woken ten at a time); {backend.notes}"
        ),
    }


# -- agent -----------------------------------------------------------------------------------


def scenario_agent(args: argparse.Namespace) -> dict[str, Any]:
    if not args.llm_url:
        raise SystemExit("agent needs --llm-url (bench/compare.py starts bench/_fake_llm.py)")
    import openai

    global CLIENT
    CLIENT = openai.OpenAI(base_url=args.llm_url, api_key="fake")
    backend = Backend(args)
    max_turns = args.turns + 5
    launch(backend)
    try:
        with SetWorkflowID("warm-up"):
            conversation(max_turns)  # untimed
        with SetWorkflowID("timed"):
            turns, wall, cpu = timed(lambda: conversation(max_turns))
    finally:
        DBOS.destroy()
    if turns != args.turns:
        raise RuntimeError(f"the conversation made {turns} LLM calls, expected {args.turns}")
    p = backend.prefix
    steps = backend.query(
        "SELECT count(*), coalesce(sum(length(output)), 0), coalesce(sum(length(error)), 0) "
        f"FROM {p}operation_outputs WHERE workflow_uuid = %s",
        ("timed",),
    )[0]
    status = backend.query(
        f"SELECT (SELECT coalesce(sum(length(inputs)), 0) FROM {p}workflow_input "
        "WHERE workflow_uuid = %s) + (SELECT coalesce(sum(length(output)), 0) "
        f"FROM {p}workflow_output WHERE workflow_uuid = %s)",
        ("timed", "timed"),
    )[0]
    return {
        "turns": turns,
        "wall_s": wall,
        "cpu_s": cpu,
        "journal_bytes": int(steps[1]) + int(steps[2]),
        "journal_steps": int(steps[0]),
        "workflow_row_bytes": int(status[0]),
        "version": f"{version()}, openai {openai.__version__}",
        "notes": (
            "sync @DBOS.workflow: the chat.completions call (openai.OpenAI, whole history, tool "
            "lookup) and the tool are each a @DBOS.step; the LLM step returns "
            "message.model_dump(exclude_none=True); journal_bytes = the stored length of the "
            "step rows' output and error columns in operation_outputs (DBOS's default "
            "serializer: pickle, base64 text); workflow_row_bytes = the workflow's inputs + "
            "output rows (workflow_input, workflow_output), not counted; warm-up = one "
            "untimed conversation; "
            f"{backend.notes}"
        ),
    }


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    global STEP1_LOG
    parser = child_parser(__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--role", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    STEP1_LOG = Path(args.dir).resolve() / "dbos-step1.log"
    return run_child(args, globals())


if __name__ == "__main__":
    sys.exit(main())
