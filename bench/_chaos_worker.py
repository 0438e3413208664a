"""A worker process of the chaos run (``bench/chaos.py``): one perdure engine on PostgreSQL that
takes the workflows of the queue ``chaos`` until the supervisor lets it stop, or kills it.

``chaos_flow(steps)`` runs ``steps`` steps; by position:

- even positions: ``apply``, a ``@perdure.transaction`` step. In the same transaction as its
  journal entry it inserts one row into ``chaos_effects`` (workflow, position, pid, the
  idempotency key, the database time, and a number from the sequence ``chaos_executions``,
  which is never rolled back and so counts every execution of the body, committed or not).
  The table has no key on purpose: a transaction applied twice shows as two rows instead of
  failing. It sleeps a little inside the transaction, so a kill or a server restart can land
  there.
- odd positions: ``note``, a plain ``@perdure.step``. It first appends the line
  ``"<workflow> <position> <pid> <token> <time>"`` to this process's ledger file
  (``<ledger dir>/ledger.<pid>``, one ``write`` on an ``O_APPEND`` descriptor: it reaches the
  kernel before the step goes on, so a SIGKILL cannot lose it; no fsync, since the machine
  itself is not crashed), then sleeps, then returns the token. A line whose token is not the
  journaled one is an execution whose result was never committed: an extra attempt.

Every step returns ``value(workflow, position)`` (with its token or execution number), and the
workflow returns ``"<workflow>:<sum of the values it got>"``: a replay that returned a wrong
value shows in the result. The sleeps are drawn from a generator seeded by (workflow,
position), so every process sleeps the same for a given step.

The supervisor creates the schema's application objects before starting any worker. This
process prints ``ready`` once its engine is open, and leaves (closing the engine, exit status
0) when ``--stop-file`` exists.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import threading
import time
import uuid
import zlib
from typing import Any

import perdure

QUEUE = perdure.Queue("chaos")
WORKFLOW = "chaos_flow"
ARGS = argparse.Namespace(step_sleep=(0.0, 0.0), tx_sleep=(0.0, 0.0), ledger_dir=".")
_ledger_fd: int | None = None
_ledger_lock = threading.Lock()


def value(workflow_id: str, position: int) -> int:
    """The value the step at ``position`` of ``workflow_id`` returns (deterministic)."""
    return zlib.crc32(f"{workflow_id}:{position}".encode()) % 1000


def expected_result(workflow_id: str, steps: int) -> str:
    """What ``chaos_flow(steps)`` must return for ``workflow_id``."""
    return f"{workflow_id}:{sum(value(workflow_id, p) for p in range(steps))}"


def _pause(bounds: tuple[float, float], position: int) -> None:
    low, high = bounds
    if high > 0:
        draw = random.Random(f"{perdure.workflow_id()}:{position}").uniform(low, high)
        time.sleep(draw)


def _append_ledger(line: str) -> None:
    """One ``write`` of the line to this process's ledger (O_APPEND: lines never interleave)."""
    global _ledger_fd
    with _ledger_lock:
        if _ledger_fd is None:
            path = os.path.join(ARGS.ledger_dir, f"ledger.{os.getpid()}")
            _ledger_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_ledger_fd, (line + "\n").encode())


@perdure.transaction(name="apply")
def apply(position: int) -> dict[str, int]:
    """Insert this step's effect in the transaction that journals it."""
    wf = perdure.workflow_id()
    conn = perdure.connection()
    row = conn.execute(
        "INSERT INTO chaos_effects (workflow_id, position, pid, idem_key, at, execution) "
        "VALUES (%s, %s, %s, %s, extract(epoch from clock_timestamp()), "
        "nextval('chaos_executions')) RETURNING execution",
        (wf, position, os.getpid(), perdure.idempotency_key()),
    ).fetchone()
    assert row is not None
    _pause(ARGS.tx_sleep, position)
    return {"value": value(wf, position), "execution": int(row[0])}


@perdure.step(name="note")
def note(position: int) -> dict[str, Any]:
    """Record this execution in the ledger, work a little, return the execution's token."""
    wf = perdure.workflow_id()
    token = uuid.uuid4().hex
    _append_ledger(f"{wf} {position} {os.getpid()} {token} {time.time():.6f}")
    _pause(ARGS.step_sleep, position)
    return {"value": value(wf, position), "token": token}


@perdure.workflow(name=WORKFLOW)
def chaos_flow(steps: int) -> str:
    """``steps`` steps, transactions at even positions; the sum of their values."""
    total = 0
    for position in range(steps):
        outcome = apply(position) if position % 2 == 0 else note(position)
        total += int(outcome["value"])
    return f"{perdure.workflow_id()}:{total}"


def _bounds(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    return float(low), float(high or low)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="PostgreSQL URL with ?schema=")
    parser.add_argument("--ledger-dir", required=True)
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--step-sleep", type=_bounds, default=(0.0, 0.0), help="LOW-HIGH s")
    parser.add_argument("--tx-sleep", type=_bounds, default=(0.0, 0.0), help="LOW-HIGH s")
    parser.add_argument("--max-threads", type=int, default=16)
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument("--heartbeat", type=float, default=0.5)
    parser.add_argument("--recovery-interval", type=float, default=0.5)
    parser.add_argument("--max-recoveries", type=int, default=5)
    return parser.parse_args(argv, namespace=ARGS)


def main(argv: list[str] | None = None) -> int:
    """Run one worker until the stop file appears."""
    args = _parse(argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"%(asctime)s pid {os.getpid()} %(threadName)s %(levelname)s %(message)s",
    )
    with _open_engine(args):
        print("ready", flush=True)
        while not os.path.exists(args.stop_file):
            time.sleep(0.1)
    return 0


def _open_engine(args: argparse.Namespace) -> perdure.Engine:
    """The open engine. Opening fails at once when the server is down (by design: a clear
    error); a worker started while PostgreSQL restarts tries again for a minute, as a
    process manager restarting it would."""
    deadline = time.monotonic() + 60
    while True:
        engine = perdure.Engine(
            args.url,
            lease_seconds=args.lease,
            heartbeat_interval=args.heartbeat,
            recovery_interval=args.recovery_interval,
            max_threads=args.max_threads,
            max_recoveries=args.max_recoveries,
            shutdown_grace=0.5,
        )
        try:
            return engine.open()
        except perdure.StoreUnavailableError as exc:
            if time.monotonic() > deadline:
                raise
            logging.getLogger("perdure").warning("opening the engine failed, retrying: %s", exc)
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
