"""A child process for the model-based tests: a chain of steps that dies by SIGKILL.

Each ``mb_child_work`` body appends "<workflow id> <position>" to a ledger file (flushed and
fsynced) before it returns, so the test can count how often each body ran, in whichever
process. Run as a script with ``--kill-at K``, the body of step K of that workflow kills its
own process with SIGKILL right after its ledger line: a real crash inside a step, after its
side effect and before its commit. Imported by the test (``KILL_AT`` left None), the same
workflow is registered there, so the test's engine takes the run over and finishes it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import perdure

#: (workflow id, position) whose body kills this process; set only when run as a script
KILL_AT: tuple[str, int] | None = None
#: the code version both processes record and run (the test's engines use it too)
VERSION = "model-based"


def _append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@perdure.step(name="mb_child_work")
def child_work(ledger: str, position: int) -> int:
    """One step: a ledger line (the side effect), then maybe a SIGKILL, then a value."""
    workflow_id = perdure.workflow_id()
    _append(ledger, f"{workflow_id} {position}")
    if (workflow_id, position) == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    return position * position


@perdure.workflow(name="mb_child_chain")
def child_chain(ledger: str, steps: int) -> int:
    """``steps`` steps in a row; the sum of their values."""
    return sum(child_work(ledger, position) for position in range(steps))


def main() -> int:
    """Start the chain and wait for it (it never finishes here: step ``--kill-at`` kills us)."""
    global KILL_AT
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--kill-at", type=int, required=True)
    args = parser.parse_args()
    KILL_AT = (args.id, args.kill_at)
    with perdure.Engine(args.db, version=VERSION, shutdown_grace=0.1) as engine:
        print(engine.run(child_chain, args.ledger, args.steps, id=args.id, timeout=60), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
