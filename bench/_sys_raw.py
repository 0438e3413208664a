"""The floors of ``bench/compare.py``: what the same work costs with no engine at all.

One fresh process measures one thing and prints one ``RESULT {json}`` line (see
``bench/compare.py`` and ``_common.child_parser`` for the command line):

* ``steps --kind insert``: one durable, autocommitted ``INSERT`` per step into a table shaped
  like a journal (``workflow_id``, ``position``, ``output``; key ``(workflow_id, position)``):
  stdlib ``sqlite3`` in WAL mode with ``synchronous=FULL``, or psycopg in autocommit mode on
  PostgreSQL (database ``cmp_raw``). The floor for a durable journal on this machine.
* ``steps --kind call``: a plain Python function call per step; nothing is stored.
* ``throughput``: ``--concurrency`` threads, one connection each (opened before timing), run
  ``--workflows`` "workflows" of ``--steps`` durable inserts each, one commit per step: at
  concurrency 1, the one-commit-per-step rate.
* ``agent``: the tool-calling conversation with the openai SDK against ``--llm-url``, with no
  durability at all: the baseline of the agent scenario.
* ``recovery`` and ``waiting`` have no floor: ``{"unsupported": ...}``.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from _common import (
    TOOLS,
    child_parser,
    emit,
    lookup,
    recreate_pg_database,
    throughput_summary,
    timed,
)

DB_NAME = "cmp_raw"
SQLITE_DDL = (
    "CREATE TABLE IF NOT EXISTS journal (workflow_id TEXT NOT NULL, position INTEGER NOT NULL, "
    "output TEXT, PRIMARY KEY (workflow_id, position)) WITHOUT ROWID"
)
PG_DDL = (
    "CREATE TABLE IF NOT EXISTS journal (workflow_id TEXT NOT NULL, position INTEGER NOT NULL, "
    "output TEXT, PRIMARY KEY (workflow_id, position))"
)
SQLITE_INSERT = "INSERT INTO journal VALUES (?, ?, ?)"
PG_INSERT = "INSERT INTO journal VALUES (%s, %s, %s)"


class Connection(Protocol):
    """What both drivers' connections offer here."""

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...

    def close(self) -> None: ...


def inc(x: int) -> int:
    return x + 1


# -- connections -----------------------------------------------------------------------------


class Backend:
    """Opens autocommitted connections to the raw journal of one backend."""

    def __init__(self, backend: str, folder: Path, server_url: str) -> None:
        self.backend = backend
        self.insert = SQLITE_INSERT if backend == "sqlite" else PG_INSERT
        if backend == "sqlite":
            self.path = folder / "raw.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self.version = f"sqlite {sqlite3.sqlite_version}"
            self.notes = "stdlib sqlite3, WAL, synchronous=FULL, autocommit (1 commit/insert)"
        else:
            import psycopg

            self.url = recreate_pg_database(server_url, DB_NAME)
            self.version = f"psycopg {psycopg.__version__}"
            self.notes = "psycopg autocommit (1 commit/insert), synchronous_commit as configured"
        conn = self.connect()
        conn.execute(SQLITE_DDL if backend == "sqlite" else PG_DDL)
        if backend == "postgres":
            row = conn.execute("SHOW synchronous_commit").fetchone()
            self.notes += f" (={row[0]})"
        conn.close()

    def connect(self) -> Connection:
        if self.backend == "sqlite":
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=120, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            return conn
        import psycopg

        return psycopg.connect(self.url, autocommit=True)


def journal_chain(conn: Connection, insert: str, steps: int) -> int:
    """One "workflow": ``steps`` trivial steps, each journaled by its own commit."""
    workflow_id = str(uuid.uuid4())
    x = 0
    for position in range(steps):
        x = inc(x)
        conn.execute(insert, (workflow_id, position, str(x)))
    return x


def plain_chain(steps: int) -> int:
    x = 0
    for _ in range(steps):
        x = inc(x)
    return x


# -- scenarios -------------------------------------------------------------------------------


def scenario_steps(args: Any) -> dict[str, Any]:
    n = args.steps
    if args.kind == "call":
        plain_chain(min(n, 100))  # warm-up, untimed
        result, wall, cpu = timed(lambda: plain_chain(n))
        notes = "plain Python function call per step, nothing stored"
        version = f"python {sys.version.split()[0]}"
    else:
        backend = Backend(args.backend, args.dir, args.url)
        conn = backend.connect()
        # warm-up, untimed, as long as the timed run: the database and its WAL have
        # grown to what the timed run needs (a growing WAL costs extra fsyncs)
        journal_chain(conn, backend.insert, n)
        result, wall, cpu = timed(lambda: journal_chain(conn, backend.insert, n))
        conn.close()
        notes, version = f"1 durable INSERT per step: {backend.notes}", backend.version
    if result != n:
        raise RuntimeError(f"the chain returned {result}, expected {n}")
    return {
        "kind": args.kind,
        "steps": n,
        "wall_us": wall / n * 1e6,
        "cpu_us": cpu / n * 1e6,
        "version": version,
        "notes": notes,
    }


def run_pool(conns: list[Connection], insert: str, workflows: int, steps: int) -> dict[str, int]:
    """``workflows`` journal chains over one thread per connection; counts the outcomes."""
    lock = threading.Lock()
    state = {"next": 0, "ok": 0, "errors": 0}
    errors: list[str] = []

    def worker(conn: Connection) -> None:
        while True:
            with lock:
                if state["next"] >= workflows:
                    return
                state["next"] += 1
            try:
                good = journal_chain(conn, insert, steps) == steps
            except Exception as exc:
                good = False
                errors.append(f"{type(exc).__name__}: {exc}")
            with lock:
                state["ok" if good else "errors"] += 1

    threads = [threading.Thread(target=worker, args=(c,)) for c in conns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        print(f"first error: {errors[0]}", file=sys.stderr)
    return {"ok": state["ok"], "errors": state["errors"]}


def scenario_throughput(args: Any) -> dict[str, Any]:
    backend = Backend(args.backend, args.dir, args.url)
    conns = [backend.connect() for _ in range(args.concurrency)]
    run_pool(conns, backend.insert, min(args.workflows, 20), args.steps)  # warm-up, untimed
    wall0, cpu0 = time.perf_counter(), time.process_time()
    done = run_pool(conns, backend.insert, args.workflows, args.steps)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    for conn in conns:
        conn.close()
    return {
        **throughput_summary(args, done, wall, cpu),
        "version": backend.version,
        "notes": f"{args.concurrency} threads, 1 connection each, {backend.notes}",
    }


def conversation(client: Any, max_turns: int) -> int:
    """The agent loop, no durability: returns the number of LLM calls made."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You answer by calling lookup until you are done."},
        {"role": "user", "content": "Look the numbers up, one at a time."},
    ]
    calls = 0
    while calls < max_turns:
        reply = client.chat.completions.create(model="fake", messages=messages, tools=TOOLS)
        calls += 1
        message = reply.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            break
        for call in message.tool_calls:
            result = lookup(**json.loads(call.function.arguments))
            messages.append(
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}
            )
    return calls


def scenario_agent(args: Any) -> dict[str, Any]:
    if not args.llm_url:
        raise SystemExit("agent needs --llm-url (bench/compare.py starts bench/_fake_llm.py)")
    import openai

    client: Any = openai.OpenAI(base_url=args.llm_url, api_key="fake", max_retries=0)
    client.chat.completions.create(  # warm-up, untimed: imports, connection
        model="fake", messages=[{"role": "user", "content": "hi"}], tools=TOOLS
    )
    calls, wall, cpu = timed(lambda: conversation(client, args.turns + 5))
    if calls != args.turns:
        raise RuntimeError(f"the conversation made {calls} LLM calls, expected {args.turns}")
    return {
        "turns": calls,
        "wall_s": wall,
        "cpu_s": cpu,
        "journal_bytes": 0,
        "version": f"openai {openai.__version__}",
        "notes": "openai SDK tool-calling loop, no durability (nothing written)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = child_parser(__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--kind", choices=["insert", "call"], default="insert")
    args = parser.parse_args(argv)
    if args.scenario == "steps":
        emit(scenario_steps(args))
    elif args.scenario == "throughput":
        emit(scenario_throughput(args))
    elif args.scenario == "agent":
        emit(scenario_agent(args))
    else:
        emit({"unsupported": f"no raw floor for {args.scenario}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
