"""A worker process for the queue tests: declares the shared queues and their workflow, and
runs an engine until it is terminated (SIGTERM) or killed.

Each run of ``ledger_job`` appends "start <id> <time>" and, after holding its slot for
``hold`` seconds, "end <id> <time>" to the ledger file (flushed and fsynced), so the parent can
measure how many ran at once across processes.

Usage: queue_worker_app.py DATABASE_URL LEDGER
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import perdure

SHARED = perdure.Queue("shared", concurrency=3, worker_concurrency=2)
RATED = perdure.Queue("rated", rate_limit=(4, 1.0))


def ledger(line: str) -> None:
    with open(sys.argv[2], "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@perdure.step
def hold_slot(tag: str, hold: float) -> int:
    ledger(f"start {tag} {time.time():.6f} {os.getpid()}")
    time.sleep(hold)
    ledger(f"end {tag} {time.time():.6f} {os.getpid()}")
    return os.getpid()


@perdure.workflow(name="ledger_job")
def ledger_job(tag: str, hold: float) -> int:
    return hold_slot(tag, hold)


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with perdure.Engine(sys.argv[1], shutdown_grace=1.0, poll_interval=0.05):
        print("ready", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
