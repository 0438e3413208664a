"""A child process for crash tests: runs a workflow of N steps against a database.

Each step body appends "<workflow id> <position>" to a ledger file (flushed and fsynced) before
it returns, so the parent can count how often each body ran. With ``--kill-at K`` the body of
step K SIGKILLs its own process right after its ledger line: a crash in the middle of a step,
after its side effect, before its commit.

Modes: ``start`` starts the workflow and waits for it; ``recover`` only opens an engine (which
recovers unfinished workflows by itself) and waits for the workflow to finish.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import perdure

ARGS = argparse.Namespace()


def ledger(line: str) -> None:
    with open(ARGS.ledger, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@perdure.step(name="work")
def work(position: int, total: int) -> int:
    ledger(f"{perdure.workflow_id()} {position}")
    if ARGS.kill_at == position:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(ARGS.step_sleep)
    return total + position


@perdure.workflow(name="crash_flow")
def crash_flow(steps: int) -> int:
    total = 0
    for position in range(steps):
        total = work(position, total)
    return total


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--id", default="crash-1")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--kill-at", type=int, default=-1)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--mode", choices=["start", "recover"], default="start")
    parser.parse_args(namespace=ARGS)
    with perdure.Engine(ARGS.db, recovery_interval=0.2, heartbeat_interval=0.2) as engine:
        if ARGS.mode == "start":
            handle = engine.start(crash_flow, ARGS.steps, id=ARGS.id)
        else:
            handle = engine.handle(ARGS.id)
        print(handle.result(timeout=60), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
