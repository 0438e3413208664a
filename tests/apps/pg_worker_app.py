"""A worker process for the PostgreSQL multi-process crash tests (tests/crash/test_pg_workers.py).

``pg_worker_flow(steps)`` alternates two kinds of step, by position:

- even positions: ``book``, a ``@perdure.transaction`` step that inserts one row into
  ``tx_runs`` (no key: it counts the body's committed executions, with the idempotency key,
  the pid, and a number from the sequence ``tx_executions``, which also counts the executions
  that were rolled back), sleeps ``--book-sleep`` inside the transaction, and inserts (workflow,
  position) into the application table ``ledger`` (primary key);
- odd positions: ``note``, a plain ``@perdure.step`` that appends "<workflow> <position> <pid>"
  to the ledger file (flushed and fsynced) and sleeps ``--step-sleep`` (up to
  ``--step-sleep-max``).

Both return the pid of the process that ran them; the workflow returns "<id>:<sum of
positions>". ``gate_flow(gate_prefix, steps)`` is the same but its step 1 (``gate``) writes
"<workflow> 1 <pid> enter" and blocks until the file "<gate_prefix>.<pid>" exists (one gate per
process, so the test lets each one through on its own), then writes "... leave"; it returns
the pids that ran its steps, comma-separated.

The application tables are created by the test, in the schema of the ``--db`` URL.

Modes:

- ``start``: start the given workflow ids (``--ids``, and/or ``--gate-id``), print "started";
- ``recover``: start nothing, print "ready" (the engine takes over unfinished workflows by
  itself, every ``--recovery-interval`` seconds).

Then, with ``--until results``, wait for the started workflows' results and print them, one a
line; then, with ``--stop-file``, wait until that file exists. Leaving closes the engine
cleanly (exit status 0).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time

import perdure

ARGS = argparse.Namespace()


def write_ledger(line: str) -> None:
    with open(ARGS.ledger, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def pause(position: int) -> None:
    """Sleep between ``--step-sleep`` and ``--step-sleep-max`` seconds, the same amount for a
    given (workflow, position) in every process, so workflows drift apart."""
    low, high = ARGS.step_sleep, max(ARGS.step_sleep, ARGS.step_sleep_max)
    time.sleep(random.Random(f"{perdure.workflow_id()}:{position}").uniform(low, high))


@perdure.transaction(name="book")
def book(position: int) -> int:
    conn = perdure.connection()
    wf = perdure.workflow_id()
    conn.execute(  # nextval is not rolled back: the sequence counts every execution
        "INSERT INTO tx_runs (workflow_id, position, idem_key, pid, execution) "
        "VALUES (%s, %s, %s, %s, nextval('tx_executions'))",
        (wf, position, perdure.idempotency_key(), os.getpid()),
    )
    if ARGS.book_sleep:  # a wider window for a kill to land inside the transaction
        time.sleep(ARGS.book_sleep)
    conn.execute("INSERT INTO ledger (workflow_id, position) VALUES (%s, %s)", (wf, position))
    return os.getpid()


@perdure.step(name="note")
def note(position: int) -> int:
    write_ledger(f"{perdure.workflow_id()} {position} {os.getpid()}")
    pause(position)
    return os.getpid()


@perdure.step(name="gate")
def gate(gate_prefix: str, position: int) -> int:
    wf = perdure.workflow_id()
    write_ledger(f"{wf} {position} {os.getpid()} enter")
    gate_file = f"{gate_prefix}.{os.getpid()}"
    deadline = time.monotonic() + 90
    while not os.path.exists(gate_file):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gate file {gate_file} never appeared")
        time.sleep(0.01)
    write_ledger(f"{wf} {position} {os.getpid()} leave")
    return os.getpid()


@perdure.workflow(name="pg_worker_flow")
def pg_worker_flow(steps: int) -> str:
    for position in range(steps):
        if position % 2 == 0:
            book(position)
        else:
            note(position)
    return f"{perdure.workflow_id()}:{sum(range(steps))}"


@perdure.workflow(name="gate_flow")
def gate_flow(gate_prefix: str, steps: int) -> str:
    pids = []
    for position in range(steps):
        if position == 1:
            pids.append(gate(gate_prefix, position))
        elif position % 2 == 0:
            pids.append(book(position))
        else:
            pids.append(note(position))
    return ",".join(str(pid) for pid in pids)


def wait_for_stop_file() -> None:
    while not os.path.exists(ARGS.stop_file):
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--mode", choices=["start", "recover"], default="start")
    parser.add_argument("--ids", default="", help="comma-separated pg_worker_flow ids")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--gate-id", default="", help="start one gate_flow with this id")
    parser.add_argument("--gate-prefix", default="")
    parser.add_argument("--until", choices=["stop-file", "results"], default="stop-file")
    parser.add_argument("--stop-file", default="")
    parser.add_argument("--step-sleep", type=float, default=0.005)
    parser.add_argument("--step-sleep-max", type=float, default=0.0)
    parser.add_argument("--book-sleep", type=float, default=0.0)
    parser.add_argument("--max-threads", type=int, default=64)
    parser.add_argument("--lease", type=float, default=1.5)
    parser.add_argument("--heartbeat", type=float, default=0.3)
    parser.add_argument("--recovery-interval", type=float, default=0.3)
    parser.parse_args(namespace=ARGS)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s pid {os.getpid()} %(threadName)s %(levelname)s %(message)s",
    )
    with perdure.Engine(
        ARGS.db,
        lease_seconds=ARGS.lease,
        heartbeat_interval=ARGS.heartbeat,
        recovery_interval=ARGS.recovery_interval,
        shutdown_grace=0.5,
        max_threads=ARGS.max_threads,
    ) as engine:
        handles: list[perdure.WorkflowHandle[str]] = []
        if ARGS.mode == "start":
            for workflow_id in filter(None, ARGS.ids.split(",")):
                handles.append(engine.start(pg_worker_flow, ARGS.steps, id=workflow_id))
            if ARGS.gate_id:
                handles.append(
                    engine.start(gate_flow, ARGS.gate_prefix, ARGS.steps, id=ARGS.gate_id)
                )
            print("started", flush=True)
        else:
            print("ready", flush=True)
        if ARGS.until == "results":
            for handle in handles:
                print(handle.result(timeout=120), flush=True)
        if ARGS.stop_file:
            wait_for_stop_file()
    return 0


if __name__ == "__main__":
    sys.exit(main())
