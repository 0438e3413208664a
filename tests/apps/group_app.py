"""A child process for the group-commit crash test: many workflows stepping at once.

``run`` starts ``--workflows`` workflows (half sync, half async) of ``--steps`` steps and
waits; the parent SIGKILLs it while their journal entries are being committed in groups.
Each step body appends "<workflow id> <position>" to a ledger file before it returns, so the
parent can tell which bodies ran, and how often. ``recover`` opens an engine on the same
database (it recovers the unfinished workflows by itself), waits for every workflow and
prints their results as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

import perdure

ARGS = argparse.Namespace()


def ledger(line: str) -> None:
    fd = os.open(ARGS.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one append: whole lines even when killed
    finally:
        os.close(fd)


@perdure.step(name="tick")
def tick(position: int, total: int) -> int:
    ledger(f"{perdure.workflow_id()} {position}")
    return total + position


@perdure.workflow(name="group_sync")
def group_sync(steps: int) -> int:
    total = 0
    for position in range(steps):
        total = tick(position, total)
    return total


@perdure.step(name="tick_async")
async def tick_async(position: int, total: int) -> int:
    ledger(f"{perdure.workflow_id()} {position}")
    await asyncio.sleep(0)
    return total + position


@perdure.workflow(name="group_async")
async def group_async(steps: int) -> int:
    total = 0
    for position in range(steps):
        total = await tick_async(position, total)
    return total


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--workflows", type=int, default=40)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--mode", choices=["run", "recover"], default="run")
    parser.parse_args(namespace=ARGS)
    ids = [f"g{i}" for i in range(ARGS.workflows)]
    with perdure.Engine(ARGS.db, max_threads=64, recovery_interval=0.2,
                        heartbeat_interval=0.2) as engine:  # fmt: skip
        if ARGS.mode == "run":
            for i, workflow_id in enumerate(ids):
                flow = group_sync if i % 2 == 0 else group_async
                engine.start(flow, ARGS.steps, id=workflow_id)  # type: ignore[call-overload]
            print("started", flush=True)
            for workflow_id in ids:
                engine.handle(workflow_id).result(timeout=600)
            return 0
        results = {wid: engine.handle(wid).result(timeout=120) for wid in ids}
        print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
