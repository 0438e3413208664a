"""A child process that owns a slow workflow, for multi-process ownership tests.

``hold_app.py DB LEDGER ID STEPS [NAME]`` starts a workflow (registered under NAME, default
``hold_flow``) whose steps each write a ledger line and sleep 0.2 s, prints "started", and
waits for the result. ``HOLD_LEASE`` sets the engine's lease in seconds (default 10).
With NAME ``ghost_flow`` it kills itself with SIGKILL right after
"started" so the workflow is left to whoever has that name registered.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import perdure

DB, LEDGER, WORKFLOW_ID, STEPS = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
NAME = sys.argv[5] if len(sys.argv) > 5 else "hold_flow"


@perdure.step(name="slow")
def slow(position: int) -> int:
    with open(LEDGER, "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()} {position}\n")
    time.sleep(0.2)
    return position


@perdure.workflow(name=NAME)
def hold_flow(steps: int) -> int:
    return sum(slow(i) for i in range(steps))


if __name__ == "__main__":
    lease = float(os.environ.get("HOLD_LEASE", "10"))
    with perdure.Engine(
        DB, heartbeat_interval=0.2, recovery_interval=0.2, lease_seconds=lease
    ) as engine:
        handle = engine.start(hold_flow, STEPS, id=WORKFLOW_ID)
        print("started", flush=True)
        if NAME == "ghost_flow" and "--die" in sys.argv:
            os.kill(os.getpid(), signal.SIGKILL)
        print(handle.result(timeout=120), flush=True)
