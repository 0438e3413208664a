"""A child process for the crash matrix (``tests/crash/test_crash_matrix.py``).

``matrix_app.py --db URL --ledger FILE --plans JSON --mode run|recover``

The workload is given whole by the parent: ``--plans`` maps workflow ids to plans, lists of
operations that ``matrix_flow`` (or ``matrix_flow_async``, for ids ending in ``-async``)
performs in order, each adding one value to the workflow's result:

- ``note``: a plain step. Its body appends ``{"wf", "key", "pid"}`` to the ledger file
  (flushed and fsynced) before it returns, so the parent counts how often each body ran, and
  in which process. Returns ``"n<i>"`` (``i``: the operation's index).
- ``book``: a ``@perdure.transaction`` step. Its body inserts ``(wf, key, pid)`` into the
  table ``matrix_effects`` (no key: a second apply would show as a second row), in the
  transaction that journals the step. Returns ``"b<i>"``.
- ``sleep``: ``perdure.sleep(--sleep)``, long enough to unload the workflow, then the
  transaction step ``matrix_woke`` journals the database's clock (PostgreSQL's
  ``clock_timestamp()``, the clock the engine's timers follow; this machine's clock on SQLite)
  so the parent checks the timer did not fire early. Adds ``"s<i>"``.
- ``recv``: ``perdure.receive("m")``; adds the message's payload.

Modes: ``run`` starts every workflow of the plans (idempotent: an id that exists is left to
the engine, which resumes it if its owner died) and prints ``{"started": id}`` once each
start is acknowledged; ``recover`` starts nothing. Both then wait for every workflow of the
plans that exists and print ``{"done": {id: result}}``; a workflow that does not finish in
``--timeout`` seconds makes the process exit 3.

Failpoints are armed through the environment (``PERDURE_TESTING=1`` and
``PERDURE_FAILPOINTS``), by the parent.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from typing import Any

import perdure

ARGS = argparse.Namespace()


def _ledger(entry: dict[str, Any]) -> None:
    with open(ARGS.ledger, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _where() -> tuple[str, str]:
    """(workflow id, step key) of the running step."""
    wf, _, key = perdure.idempotency_key().rpartition(":")
    return wf, key


def _note(i: int) -> str:
    wf, key = _where()
    _ledger({"wf": wf, "key": key, "pid": os.getpid()})
    return f"n{i}"


@perdure.step(name="matrix_note")
def note(i: int) -> str:
    return _note(i)


@perdure.step(name="matrix_note_async")
async def note_async(i: int) -> str:
    return _note(i)


@perdure.transaction(name="matrix_book")
def book(i: int) -> str:
    wf, key = _where()
    conn = perdure.connection()
    mark = "?" if isinstance(conn, sqlite3.Connection) else "%s"
    conn.execute(
        f"INSERT INTO matrix_effects (wf, key, pid) VALUES ({mark}, {mark}, {mark})",
        (wf, key, os.getpid()),
    )
    return f"b{i}"


@perdure.transaction(name="matrix_woke")
def woke() -> float:
    conn = perdure.connection()
    if isinstance(conn, sqlite3.Connection):
        return time.time()  # the SQLite store's clock is this machine's
    row = conn.execute("SELECT extract(epoch from clock_timestamp())::double precision")
    return float(row.fetchone()[0])


@perdure.workflow(name="matrix_flow")
def matrix_flow(plan: list[str]) -> list[str]:
    out: list[str] = []
    for i, op in enumerate(plan):
        if op == "note":
            out.append(note(i))
        elif op == "book":
            out.append(book(i))
        elif op == "sleep":
            perdure.sleep(ARGS.sleep)
            woke()
            out.append(f"s{i}")
        elif op == "recv":
            out.append(perdure.receive("m"))
        else:
            raise ValueError(f"unknown operation {op!r}")
    return out


@perdure.workflow(name="matrix_flow_async")
async def matrix_flow_async(plan: list[str]) -> list[str]:
    out: list[str] = []
    for i, op in enumerate(plan):
        if op == "note":
            out.append(await note_async(i))
        elif op == "book":
            out.append(book(i))  # a transaction step is sync: it blocks the loop briefly
        elif op == "sleep":
            await perdure.sleep_async(ARGS.sleep)
            woke()
            out.append(f"s{i}")
        elif op == "recv":
            out.append(await perdure.receive_async("m"))
        else:
            raise ValueError(f"unknown operation {op!r}")
    return out


def _say(entry: dict[str, Any]) -> None:
    print(json.dumps(entry), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--plans", required=True)
    parser.add_argument("--mode", choices=["run", "recover"], required=True)
    parser.add_argument("--sleep", type=float, default=0.4)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.parse_args(namespace=ARGS)
    plans: dict[str, list[str]] = json.loads(ARGS.plans)
    with perdure.Engine(
        ARGS.db, heartbeat_interval=0.2, recovery_interval=0.2, lease_seconds=2.0,
        poll_interval=0.1, suspend_after=0.2, shutdown_grace=0.5,
    ) as engine:  # fmt: skip
        if ARGS.mode == "run":
            for wf, plan in plans.items():
                flow = matrix_flow_async if wf.endswith("-async") else matrix_flow
                _start(engine, flow, plan, wf)
                _say({"started": wf})
        return _wait_all(engine, plans)


def _start(engine: perdure.Engine, flow: Any, plan: list[str], wf: str) -> None:
    """Start ``wf``, retried while the database is unavailable, as an application would: a
    start with an id is idempotent. (A fault injected into a journal write can fail the
    group commit this start shares with it: every entry of a failed commit fails.)"""
    for attempt in range(50):
        try:
            engine.start(flow, plan, id=wf)
            return
        except perdure.StoreUnavailableError:
            if attempt == 49:
                raise
            time.sleep(0.05)


def _wait_all(engine: perdure.Engine, plans: dict[str, list[str]]) -> int:
    """Wait for every workflow of the plans that exists; 0 when all succeeded."""
    deadline = time.monotonic() + ARGS.timeout
    done: dict[str, Any] = {}
    code = 0
    for wf in plans:
        try:
            handle = engine.handle(wf)
        except perdure.WorkflowNotFound:
            continue  # never created (the process that was to start it died first)
        try:
            done[wf] = handle.result(timeout=max(0.1, deadline - time.monotonic()))
        except perdure.ResultTimeoutError:
            _say({"unfinished": wf})
            code = 3
        except Exception as exc:  # the workflow failed: the parent reports it
            _say({"failed": wf, "error": repr(exc)})
            code = 4
    if code == 0:
        _say({"done": done})
    return code


if __name__ == "__main__":
    sys.exit(main())
