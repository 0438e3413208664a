"""LangGraph with its checkpointers, one measurement per process, for ``bench/compare.py``.

Run with the peers' interpreter: ``bench/.peers/.venv/bin/python bench/_sys_langgraph.py
<scenario> --backend sqlite|postgres [options]`` (see ``_common.child_parser``); prints one
``RESULT {json}`` line. Every graph is compiled with a checkpointer and run with
``durability="sync"`` (each super-step's checkpoint is committed before the next one starts):

* SQLite: ``SqliteSaver`` on one ``sqlite3`` connection (``check_same_thread=False``, the saver
  serialises it with its lock, as its docs show), ``journal_mode=WAL``, ``synchronous=FULL``.
* PostgreSQL: ``PostgresSaver`` on a ``psycopg_pool.ConnectionPool`` with ``autocommit=True``,
  ``prepare_threshold=0`` and ``dict_row``, as its docs require (database ``cmp_langgraph``,
  dropped and recreated each run). ``setup()`` is called untimed.

Scenarios: ``steps`` (a ``StateGraph`` whose one node loops to itself N times through a
conditional edge: one checkpoint per step; the functional API, ``@entrypoint`` + ``@task``, is
measured too and reported under ``"alt"``), ``throughput`` (threads each invoking their own
``thread_id`` on one shared checkpointer), ``recovery`` (LangGraph does not recover by itself: a
second process lists the threads, finds the unfinished ones with ``get_state`` and re-invokes
each with ``invoke(None, config)``, 50 at a time), ``waiting`` (``interrupt()``, resumed with
``Command(resume=...)``) and ``agent`` (an llm node and a tool node around the openai SDK).
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any, TypedDict

from _common import (
    TOOLS,
    child_parser,
    database_url,
    emit,
    kill_and_recover,
    lookup,
    percentile,
    recreate_pg_database,
    rss_mb,
    run_child,
    run_many,
    throughput_summary,
    timed,
)

ENTRY = time.perf_counter()  # the recovery child's start-up is measured from here
DB_NAME = "cmp_langgraph"
SYNC = "sync"  # the durability every invocation uses
Graph = Any  # a compiled LangGraph graph (Pregel); kept loose so langgraph imports lazily


def versions(backend: str) -> str:
    saver = (
        "langgraph-checkpoint-sqlite" if backend == "sqlite" else "langgraph-checkpoint-postgres"
    )
    return f"langgraph {version('langgraph')}, {saver} {version(saver)}"


# -- the checkpointer ------------------------------------------------------------------------


class Store:
    """One backend's checkpointer, plus short side connections for counting rows."""

    def __init__(self, args: Any, *, fresh: bool, pool_size: int = 1) -> None:
        self.backend: str = args.backend
        if self.backend == "sqlite":
            from langgraph.checkpoint.sqlite import SqliteSaver

            self.path = Path(args.dir) / "langgraph.db"
            if fresh:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self.saver: Any = SqliteSaver(conn)
            self._close: Callable[[], None] = conn.close
            self.notes = (
                "SqliteSaver on one sqlite3 connection (check_same_thread=False, the saver's "
                "lock), PRAGMA journal_mode=WAL + synchronous=FULL set by us"
            )
        else:
            from langgraph.checkpoint.postgres import PostgresSaver
            from psycopg.rows import dict_row
            from psycopg_pool import ConnectionPool

            if fresh:
                self.url = recreate_pg_database(args.url, DB_NAME)
            else:
                self.url = database_url(args.url, DB_NAME)
            pool: Any = ConnectionPool(
                self.url,
                min_size=pool_size,
                max_size=pool_size,
                kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
                open=True,
            )
            pool.wait()
            self.saver = PostgresSaver(pool)
            self._close = pool.close
            self.notes = (
                f"PostgresSaver on a psycopg ConnectionPool of {pool_size} (autocommit=True, "
                "prepare_threshold=0; the saver holds one threading.Lock per instance around "
                "each DB call), synchronous_commit as configured"
            )
        self.saver.setup()
        self.notes += f'; invoke(..., durability="{SYNC}")'

    @property
    def writes_table(self) -> str:
        return "writes" if self.backend == "sqlite" else "checkpoint_writes"

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one query on a fresh side connection (the saver's own stays untouched)."""
        if self.backend == "sqlite":
            side = sqlite3.connect(self.path, timeout=30)
            try:
                return list(side.execute(sql, params).fetchall())
            finally:
                side.close()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as side:
            return list(side.execute(sql.replace("?", "%s"), params).fetchall())  # type: ignore[arg-type]

    def close(self) -> None:
        self._close()


def config(thread_id: str, limit: int = 25) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}, "recursion_limit": limit}


# -- steps and throughput --------------------------------------------------------------------


class Counter(TypedDict):
    x: int
    n: int


def steps_graph(saver: Any) -> Graph:
    """START → step ⟲ (until x == n) → END: one super-step, so one checkpoint, per step."""
    from langgraph.graph import END, START, StateGraph

    def step(state: Counter) -> dict[str, int]:
        return {"x": state["x"] + 1}

    def route(state: Counter) -> str:
        return "step" if state["x"] < state["n"] else END

    builder = StateGraph(Counter)
    builder.add_node("step", step)
    builder.add_edge(START, "step")
    builder.add_conditional_edges("step", route, ["step", END])
    return builder.compile(checkpointer=saver)


def functional_workflow(saver: Any) -> Graph:
    """The functional API: an ``@entrypoint`` calling an ``@task`` n times."""
    from langgraph.func import entrypoint, task

    @task
    def inc(x: int) -> int:
        return x + 1

    @entrypoint(checkpointer=saver)
    def workflow(n: int) -> int:
        x = 0
        for _ in range(n):
            x = inc(x).result()
        return x

    return workflow


def runner(graph: Graph, prefix: str, functional: bool = False) -> Callable[[int], int]:
    """``run(steps)``: invoke ``graph`` on a new thread_id, return the final count."""
    lock = threading.Lock()
    counter = [0]

    def run(steps: int) -> int:
        with lock:
            counter[0] += 1
            thread_id = f"{prefix}-{counter[0]}"
        if functional:
            return int(graph.invoke(steps, config(thread_id), durability=SYNC))
        out = graph.invoke({"x": 0, "n": steps}, config(thread_id, steps + 10), durability=SYNC)
        return int(out["x"])

    return run


def scenario_steps(args: Any) -> dict[str, Any]:
    store = Store(args, fresh=True)
    figures: dict[str, dict[str, float]] = {}
    for name, graph, functional in (
        ("functional", functional_workflow(store.saver), True),
        ("graph", steps_graph(store.saver), False),
    ):
        run = runner(graph, name, functional)
        if run(args.steps) != args.steps:  # warm-up, untimed, as long as the timed run
            raise RuntimeError(f"{name}: the warm-up returned a wrong count")
        result, wall, cpu = timed(lambda run=run: run(args.steps))  # type: ignore[misc]
        if result != args.steps:
            raise RuntimeError(f"{name}: counted {result}, expected {args.steps}")
        figures[name] = {"wall_us": wall / args.steps * 1e6, "cpu_us": cpu / args.steps * 1e6}
    store.close()
    return {
        "steps": args.steps,
        **figures["graph"],
        "alt": {
            "api": "functional @entrypoint + @task",
            "steps": args.steps,
            **figures["functional"],
        },
        "version": versions(args.backend),
        "notes": (
            "StateGraph, one node looping to itself via a conditional edge (one checkpoint "
            "per super-step, recursion_limit=N+10; per step 2 commits: the node's writes, "
            "then the checkpoint), one invoke; alt = functional API "
            "(@entrypoint calling an @task N times: task results are saved as pending writes "
            "in the background, not awaited before the next task; one checkpoint at the end); "
            + store.notes
        ),
    }


def scenario_throughput(args: Any) -> dict[str, Any]:
    store = Store(args, fresh=True, pool_size=max(1, args.concurrency))
    graph = steps_graph(store.saver)
    warm = run_many(runner(graph, "warm"), 20, args.steps, args.concurrency)
    if warm["errors"]:
        raise RuntimeError(f"warm-up failed: {warm['error']}")
    done, wall, cpu = timed(
        lambda: run_many(runner(graph, "wf"), args.workflows, args.steps, args.concurrency)
    )
    store.close()
    result = {
        **throughput_summary(args, done, wall, cpu),
        "version": versions(args.backend),
        "notes": (
            f"{args.concurrency} threads each invoking the looping StateGraph on its own "
            f"thread_id, sharing one checkpointer; {store.notes}"
        ),
    }
    if done["error"]:
        result["error"] = done["error"]
    return result


# -- recovery --------------------------------------------------------------------------------


class Three(TypedDict):
    done: int


def recovery_graph(saver: Any, log_fd: int) -> Graph:
    """step1 (appends its thread_id to the execution log) → step2 (blocks unless
    CMP_RECOVERING=1) → step3."""
    from langchain_core.runnables import RunnableConfig
    from langgraph.graph import END, START, StateGraph

    def step1(state: Three, config: RunnableConfig) -> dict[str, int]:
        os.write(log_fd, f"{config['configurable']['thread_id']}\n".encode())
        return {"done": 1}

    def step2(state: Three) -> dict[str, int]:
        if os.environ.get("CMP_RECOVERING") != "1":
            time.sleep(3600)
        return {"done": 2}

    def step3(state: Three) -> dict[str, int]:
        return {"done": 3}

    builder = StateGraph(Three)
    builder.add_node("step1", step1)
    builder.add_node("step2", step2)
    builder.add_node("step3", step3)
    builder.add_edge(START, "step1")
    builder.add_edge("step1", "step2")
    builder.add_edge("step2", "step3")
    builder.add_edge("step3", END)
    return builder.compile(checkpointer=saver)


def log_path(args: Any) -> Path:
    return Path(args.dir) / "langgraph-step1.log"


def open_log(args: Any) -> int:
    return os.open(log_path(args), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def recovery_start(args: Any) -> None:
    """The first child: start W workflows (one thread each: invoke blocks) and hang in step 2."""
    store = Store(args, fresh=False, pool_size=50)
    graph = recovery_graph(store.saver, open_log(args))

    def start(i: int) -> None:
        graph.invoke({"done": 0}, config(f"wf-{i}"), durability=SYNC)

    for i in range(args.workflows):
        threading.Thread(target=start, args=(i,), daemon=True).start()
    print("STARTED", flush=True)
    time.sleep(7200)  # the parent kills us


def recovery_resume(args: Any) -> None:
    """The second child: open, list the threads, re-invoke each unfinished one (50 at a time)."""
    store = Store(args, fresh=False, pool_size=50)
    graph = recovery_graph(store.saver, open_log(args))
    startup = time.perf_counter() - ENTRY
    thread_ids = [row[0] for row in store.rows("SELECT DISTINCT thread_id FROM checkpoints")]

    def finish(thread_id: str) -> bool:
        cfg = config(thread_id)
        state = graph.get_state(cfg)
        values = state.values
        if state.next:  # unfinished: resume from its last checkpoint
            values = graph.invoke(None, cfg, durability=SYNC)
        return bool(values.get("done") == 3)

    with ThreadPoolExecutor(max_workers=50) as pool:
        completed = sum(pool.map(finish, thread_ids))
    emit({"completed": completed, "threads": len(thread_ids), "startup_s": startup})


def scenario_recovery(args: Any) -> dict[str, Any]:
    store = Store(args, fresh=True, pool_size=50)  # fresh database and schema, untimed
    store.close()
    log_path(args).unlink(missing_ok=True)
    step_sql = (
        "CAST(json_extract(CAST(metadata AS TEXT), '$.step') AS INTEGER)"
        if args.backend == "sqlite"
        else "(metadata->>'step')::int"
    )
    count_sql = f"SELECT COUNT(DISTINCT thread_id) FROM checkpoints WHERE {step_sql} >= 1"
    command = [sys.executable, __file__, "recovery", "--backend", args.backend, "--dir"]
    command += [str(args.dir), "--url", args.url, "--workflows", str(args.workflows)]
    done = kill_and_recover(
        command, lambda: bool(store.rows(count_sql)[0][0] >= args.workflows), log_path(args)
    )
    recovery, child = done.seconds, done.child
    executed_before, executed = done.step1_before, done.step1_after
    if child["threads"] != args.workflows:
        raise RuntimeError(f"found {child['threads']} threads, expected {args.workflows}")
    return {
        "workflows": args.workflows,
        "recovery_s": recovery,
        "startup_s": child["startup_s"],
        "completed": child["completed"],
        "step1_reexecuted": executed - args.workflows,
        "step1_before_kill": executed_before,
        "version": versions(args.backend),
        "notes": (
            "LangGraph has no automatic recovery: the second process lists the threads "
            "(SELECT DISTINCT thread_id FROM checkpoints), get_state() finds the unfinished "
            "ones, and re-invokes each with invoke(None, config), 50 threads at a time; the "
            "first process ran one thread per workflow (invoke blocks); " + store.notes
        ),
    }


# -- waiting ---------------------------------------------------------------------------------


class Inbox(TypedDict):
    msg: str


def waiting_graph(saver: Any, woke: dict[str, float]) -> Graph:
    """wait (``interrupt()`` until resumed) → after (records when it ran)."""
    from langchain_core.runnables import RunnableConfig
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt

    def wait(state: Inbox) -> dict[str, str]:
        return {"msg": str(interrupt("waiting for a message"))}

    def after(state: Inbox, config: RunnableConfig) -> dict[str, str]:
        woke[config["configurable"]["thread_id"]] = time.perf_counter()
        return {"msg": state["msg"]}

    builder = StateGraph(Inbox)
    builder.add_node("wait", wait)
    builder.add_node("after", after)
    builder.add_edge(START, "wait")
    builder.add_edge("wait", "after")
    builder.add_edge("after", END)
    return builder.compile(checkpointer=saver)


def scenario_waiting(args: Any) -> dict[str, Any]:
    from langgraph.types import Command

    starters = 1 if args.backend == "sqlite" else 8  # one sqlite3 connection: no gain
    store = Store(args, fresh=True, pool_size=starters)
    woke: dict[str, float] = {}
    graph = waiting_graph(store.saver, woke)
    for i in range(20):  # warm-up, untimed: start, wait, resume
        graph.invoke({"msg": ""}, config(f"warm-{i}"), durability=SYNC)
        graph.invoke(Command(resume="hi"), config(f"warm-{i}"), durability=SYNC)
    if len(woke) != 20:
        raise RuntimeError("the warm-up workflows did not wake")
    rss0 = rss_mb()

    def start(i: int) -> None:
        out = graph.invoke({"msg": ""}, config(f"wf-{i}"), durability=SYNC)
        if "__interrupt__" not in out:
            raise RuntimeError(f"wf-{i} did not stop at its interrupt")

    wall0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=starters) as pool:
        list(pool.map(start, range(args.workflows)))
    waiting = store.rows(
        f"SELECT COUNT(DISTINCT thread_id) FROM {store.writes_table} "
        "WHERE channel = '__interrupt__' AND thread_id LIKE ?",
        ("wf-%",),
    )[0][0]
    start_s = time.perf_counter() - wall0
    if waiting != args.workflows:
        raise RuntimeError(f"{waiting} of {args.workflows} workflows are waiting")
    rss = rss_mb() - rss0
    threads = threading.active_count()

    woke.clear()
    sample = max(1, min(args.sample, args.workflows))
    wakes: list[float] = []
    for k in range(sample):
        thread_id = f"wf-{k * args.workflows // sample}"
        sent = time.perf_counter()
        graph.invoke(Command(resume="hello"), config(thread_id), durability=SYNC)
        wakes.append((woke[thread_id] - sent) * 1000.0)
    store.close()
    return {
        "workflows": args.workflows,
        "start_s": start_s,
        "rss_mb": rss,
        "kb_per_workflow": rss * 1024.0 / args.workflows,
        "threads": threads,
        "wake_p50_ms": percentile(wakes, 0.50),
        "wake_p99_ms": percentile(wakes, 0.99),
        "sample": sample,
        "version": versions(args.backend),
        "notes": (
            "interrupt() in a node; each invoke returns once interrupted, so a waiting "
            "workflow holds nothing in the process (no thread), only its checkpoint rows; "
            f"started by {starters} thread(s), waiting verified by the __interrupt__ "
            "writes; wake = invoke(Command(resume=...)) until the next node runs (the "
            f"interrupted node re-runs first, as LangGraph does); {store.notes}"
        ),
    }


# -- agent -----------------------------------------------------------------------------------


PROMPT: list[dict[str, Any]] = [
    {"role": "system", "content": "You answer by calling lookup until you are done."},
    {"role": "user", "content": "Look the numbers up, one at a time."},
]


class Chat(TypedDict):
    messages: Annotated[list[dict[str, Any]], operator.add]


def agent_graph(saver: Any, client: Any) -> Graph:
    """START → llm → (tool calls? tools → llm : END), messages as openai-format dicts."""
    from langgraph.graph import END, START, StateGraph

    def llm(state: Chat) -> dict[str, Any]:
        reply = client.chat.completions.create(
            model="fake", messages=state["messages"], tools=TOOLS
        )
        return {"messages": [reply.choices[0].message.model_dump(exclude_none=True)]}

    def tools(state: Chat) -> dict[str, Any]:
        results = [
            {
                "role": "tool",
                "tool_call_id": call["id"],
                "content": json.dumps(lookup(**json.loads(call["function"]["arguments"]))),
            }
            for call in state["messages"][-1]["tool_calls"]
        ]
        return {"messages": results}

    def route(state: Chat) -> str:
        return "tools" if state["messages"][-1].get("tool_calls") else END

    builder = StateGraph(Chat)
    builder.add_node("llm", llm)
    builder.add_node("tools", tools)
    builder.add_edge(START, "llm")
    builder.add_conditional_edges("llm", route, ["tools", END])
    builder.add_edge("tools", "llm")
    return builder.compile(checkpointer=saver)


def journal_bytes(store: Store, thread_id: str) -> int:
    """The payload bytes of the rows written for ``thread_id``."""
    if store.backend == "sqlite":
        queries = [
            "SELECT SUM(LENGTH(checkpoint) + LENGTH(metadata)) FROM checkpoints WHERE thread_id=?",
            "SELECT SUM(LENGTH(value)) FROM writes WHERE thread_id = ?",
        ]
    else:
        queries = [
            "SELECT SUM(OCTET_LENGTH(checkpoint::text) + OCTET_LENGTH(metadata::text)) "
            "FROM checkpoints WHERE thread_id = ?",
            "SELECT SUM(OCTET_LENGTH(blob)) FROM checkpoint_blobs WHERE thread_id = ?",
            "SELECT SUM(OCTET_LENGTH(blob)) FROM checkpoint_writes WHERE thread_id = ?",
        ]
    return sum(int(store.rows(q, (thread_id,))[0][0] or 0) for q in queries)


def scenario_agent(args: Any) -> dict[str, Any]:
    if not args.llm_url:
        raise SystemExit("agent needs --llm-url (bench/compare.py starts bench/_fake_llm.py)")
    import openai

    store = Store(args, fresh=True)
    client: Any = openai.OpenAI(base_url=args.llm_url, api_key="fake", max_retries=0)
    graph = agent_graph(store.saver, client)
    limit = 2 * args.turns + 20

    def converse(thread_id: str) -> int:
        out = graph.invoke({"messages": PROMPT}, config(thread_id, limit), durability=SYNC)
        return sum(1 for m in out["messages"] if m["role"] == "assistant")

    if converse("warm") != args.turns:  # warm-up, untimed: one whole conversation
        raise RuntimeError("the warm-up conversation made the wrong number of LLM calls")
    calls, wall, cpu = timed(lambda: converse("agent"))
    if calls != args.turns:
        raise RuntimeError(f"the conversation made {calls} LLM calls, expected {args.turns}")
    written = journal_bytes(store, "agent")
    store.close()
    tables = (
        "checkpoints + writes"
        if args.backend == "sqlite"
        else ("checkpoints (jsonb as text) + checkpoint_blobs + checkpoint_writes")
    )
    return {
        "turns": calls,
        "wall_s": wall,
        "cpu_s": cpu,
        "journal_bytes": written,
        "version": f"{versions(args.backend)}, openai {openai.__version__}",
        "notes": (
            "StateGraph llm node <-> tool node (openai SDK inside the nodes), messages as "
            "openai dicts in a list channel with operator.add (each checkpoint stores the "
            f"whole history; the beta DeltaChannel is not used); journal_bytes = payload "
            f"bytes of this thread's rows in {tables}; warm-up = one untimed conversation; "
            + store.notes
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = child_parser(__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--role", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return run_child(args, globals())


if __name__ == "__main__":
    sys.exit(main())
