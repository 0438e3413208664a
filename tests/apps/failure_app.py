"""A child process for failure crash tests: retries, cancellation, compensation, poison.

Every step body appends a line "<tag> <pid> <time.time()>" to a ledger file (flushed and
fsynced) before anything else, so the parent can count how often each body ran, in which
process and when.

``failure_app.py --db URL --ledger PATH --id ID --mode MODE [--recover]``

Modes (one workflow each, all registered in every run):

- ``retry``: one step failing with ``TransientError`` on attempts 1 and 2, succeeding on 3
  (max_attempts=3, waits of 0.5 s then 3.0 s, no jitter).
- ``cancel-sync``: 30 steps of 0.2 s; a compensation is registered after the first.
- ``cancel-async``: async steps of 0.2 s, a compensation after the first, then a step that
  awaits ``asyncio.sleep(30)``, then one more step (neither may finish once cancelled).
- ``saga``: books A, B, C (each registers its undo), then raises ``ValueError``; the undo of
  B SIGKILLs its own process on its first execution (``--marker`` remembers that it did).
- ``cancel-compensating``: an async workflow that books, registers an async undo (1 s long),
  then raises: the parent cancels it while the undo runs.
- ``poison``: a step that SIGKILLs its own process every time.
- ``progress``: three steps, each SIGKILLs its process on its first execution only (marker
  files beside the ledger): crashes, but with progress in between; never poison.

Without ``--recover`` the run starts the workflow; with it, it only opens an engine (which
takes over unfinished workflows by itself) and waits. Either way it prints one JSON line,
``{"result": ...}`` or ``{"error": type name, "message": ...}``, and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import perdure

ARGS = argparse.Namespace()


def ledger(tag: str) -> None:
    with open(ARGS.ledger, "a", encoding="utf-8") as f:
        f.write(f"{tag} {os.getpid()} {time.time():.6f}\n")
        f.flush()
        os.fsync(f.fileno())


def ledger_tags() -> list[str]:
    path = Path(ARGS.ledger)
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def kill_myself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


# -- retry: attempts survive a SIGKILL between them -----------------------------------------

FLAKY_POLICY = perdure.RetryPolicy(
    max_attempts=3, initial_interval=0.5, backoff=6.0, max_interval=10.0, jitter=0.0
)


@perdure.step(name="fail_flaky_step", retry=FLAKY_POLICY)
def flaky() -> int:
    attempt = ledger_tags().count("attempt") + 1
    ledger("attempt")
    if attempt < 3:
        raise perdure.TransientError(f"attempt {attempt} failed")
    return attempt


@perdure.workflow(name="fail_retry_flow")
def retry_flow() -> int:
    return flaky()


# -- cancel-sync ----------------------------------------------------------------------------


@perdure.step(name="fail_cancel_work")
def cancel_work(position: int) -> int:
    ledger(f"work{position}")
    time.sleep(0.2)
    return position


@perdure.step(name="fail_cancel_undo")
def cancel_undo() -> None:
    ledger("undo")


@perdure.workflow(name="fail_cancel_sync_flow")
def cancel_sync_flow(steps: int) -> int:
    total = cancel_work(0)
    perdure.compensate(cancel_undo)
    for position in range(1, steps):
        total += cancel_work(position)
    return total


# -- cancel-async ---------------------------------------------------------------------------


@perdure.step(name="fail_acancel_work")
async def acancel_work(position: int) -> int:
    ledger(f"work{position}")
    await asyncio.sleep(0.2)
    return position


@perdure.step(name="fail_acancel_long")
async def acancel_long() -> str:
    ledger("long-start")
    await asyncio.sleep(30)
    ledger("long-end")
    return "long done"


@perdure.step(name="fail_acancel_after")
async def acancel_after() -> str:
    ledger("after")
    return "after"


@perdure.step(name="fail_acancel_undo")
async def acancel_undo() -> None:
    ledger("undo")


@perdure.workflow(name="fail_cancel_async_flow")
async def cancel_async_flow() -> str:
    await acancel_work(0)
    perdure.compensate(acancel_undo)
    await acancel_work(1)
    await acancel_work(2)
    await acancel_long()
    return await acancel_after()


# -- saga: compensation resumed after a crash in the middle of it ----------------------------


@perdure.step(name="fail_saga_book")
def book(item: str) -> str:
    ledger(f"book-{item}")
    return f"booking-{item}"


@perdure.step(name="fail_saga_undo_a")
def undo_a(booking: str) -> None:
    ledger("undo-A")


@perdure.step(name="fail_saga_undo_b")
def undo_b(booking: str) -> None:
    ledger("undo-B")
    marker = Path(ARGS.marker)
    if not marker.exists():
        marker.write_text("killed once\n")
        kill_myself()


@perdure.step(name="fail_saga_undo_c")
def undo_c(booking: str) -> None:
    ledger("undo-C")


@perdure.workflow(name="fail_saga_flow")
def saga_flow() -> str:
    a = book("A")
    perdure.compensate(undo_a, a)
    b = book("B")
    perdure.compensate(undo_b, b)
    c = book("C")
    perdure.compensate(undo_c, c)
    raise ValueError("fail_saga: the trip cannot be completed after booking A, B and C")


# -- cancel-compensating: a cancel arrives while an async workflow undoes after a failure ----


@perdure.step(name="fail_cc_book")
async def cc_book() -> str:
    ledger("book")
    return "booking"


@perdure.step(name="fail_cc_undo")
async def cc_undo(booking: str) -> None:
    ledger("undo-start")
    await asyncio.sleep(1.0)
    ledger("undo-end")


@perdure.workflow(name="fail_cancel_compensating_flow")
async def cancel_compensating_flow() -> str:
    booking = await cc_book()
    perdure.compensate(cc_undo, booking)
    raise ValueError("fail_cc: failed after booking")


# -- poison: kills every process that runs it ------------------------------------------------


@perdure.step(name="fail_poison_step")
def poison() -> str:
    ledger("poison")
    kill_myself()
    return "unreachable"


@perdure.workflow(name="fail_poison_flow")
def poison_flow() -> str:
    return poison()


# -- progress: crashes, but each recovery gets further ------------------------------------


@perdure.step(name="fail_progress_step")
def progress_step(n: int) -> int:
    ledger(f"progress-{n}")
    marker = Path(f"{ARGS.ledger}.killed-{n}")
    if not marker.exists():
        marker.touch()
        kill_myself()
    return n


@perdure.workflow(name="fail_progress_flow")
def progress_flow() -> int:
    return sum(progress_step(n) for n in range(3))


STARTERS: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "retry": (retry_flow, ()),
    "cancel-sync": (cancel_sync_flow, (30,)),
    "cancel-async": (cancel_async_flow, ()),
    "saga": (saga_flow, ()),
    "cancel-compensating": (cancel_compensating_flow, ()),
    "poison": (poison_flow, ()),
    "progress": (progress_flow, ()),
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--mode", choices=sorted(STARTERS), required=True)
    parser.add_argument("--recover", action="store_true")
    parser.add_argument("--marker", default="")
    parser.add_argument("--max-recoveries", type=int, default=2)
    parser.parse_args(namespace=ARGS)
    with perdure.Engine(
        ARGS.db,
        heartbeat_interval=0.1,
        recovery_interval=0.2,
        shutdown_grace=0.5,
        max_recoveries=ARGS.max_recoveries,
    ) as engine:
        if ARGS.recover:
            handle = engine.handle(ARGS.id)
        else:
            fn, args = STARTERS[ARGS.mode]
            handle = engine.start(fn, *args, id=ARGS.id)
        print(json.dumps({"started": ARGS.id}), flush=True)
        try:
            outcome: dict[str, Any] = {"result": handle.result(timeout=40)}
        except Exception as exc:  # the parent checks which error the workflow ended with
            outcome = {"error": type(exc).__name__, "message": str(exc)}
        print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
