"""A child process for crash tests of waits: durable timers and messages across SIGKILLs.

Every ``note`` step body appends one JSON line ``{"tag", "value", "pid", "at"}`` to a ledger
file (flushed and fsynced) before it returns, so the parent can count how often each body
ran, in which process and when (``at`` is ``time.time()``).

``wait_app.py --db URL --mode MODE [options]``; every mode prints one JSON line and exits 0.

Worker modes (the only ones that register the workflows, see below):

- ``sleep``: starts ``wait_crash_sleep`` (note "A", ``perdure.sleep(--seconds)``, note "B")
  and waits for its result.
- ``receive``: starts ``wait_crash_receive`` (note "waiting", ``perdure.receive(--topic)``,
  note "got" with the payload, return the payload) and waits for its result.
- ``many``: starts ``wait_crash_many``: ``--count`` times ``perdure.receive("m")``, each
  payload noted "got" by a step, returns the list.
- ``dup``: starts ``wait_crash_dup``: ``--count`` receives on "dup", then one more with a
  ``--seconds`` timeout (None unless a surplus message came), returns the list.
- ``resume``: only opens an engine (it takes over unfinished workflows and wakes waiting
  ones by itself) and waits for ``--id`` to finish.

Worker modes print ``{"result": ...}``.

Sender modes open ``perdure.Engine(url, recover=False)`` and send. They do not register the
workflows: an engine's waker claims any waiting workflow of a registered name whose message
came (``recover=False`` does not stop it), and a sender must only deliver, so that the
worker processes are the ones that wake the workflow:

- ``send``: ``engine.send(--id, --topic, json.loads(--payload), --key)``; prints
  ``{"sent": bool}``.
- ``send-many``: sends payloads 0..--count-1 on "m", each with idempotency key str(i),
  pausing ``--pace`` seconds between sends; prints ``{"sent": number sent}``.
- ``send-keys``: waits until epoch time ``--at``, then sends keys k0..k(--count-1) on "dup"
  with payload ``[--tag, i]``; prints ``{"sent": [keys for which send returned True]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import perdure

ARGS = argparse.Namespace()
WORKER_MODES = ("sleep", "receive", "many", "dup", "resume")


def ledger(tag: str, value: Any) -> float:
    at = time.time()
    line = json.dumps({"tag": tag, "value": value, "pid": os.getpid(), "at": at})
    with open(ARGS.ledger, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    return at


def register() -> dict[str, Any]:
    """Define (and so register) the workflows; returns them by mode."""

    @perdure.step(name="wait_note")
    def note(tag: str, value: Any = None) -> float:
        return ledger(tag, value)

    @perdure.workflow(name="wait_crash_sleep")
    def sleep_flow(seconds: float) -> list[float]:
        a = note("A")
        perdure.sleep(seconds)
        b = note("B")
        return [a, b]

    @perdure.workflow(name="wait_crash_receive")
    def receive_flow(topic: str) -> Any:
        note("waiting")
        payload = perdure.receive(topic)
        note("got", payload)
        return payload

    @perdure.workflow(name="wait_crash_many")
    def many_flow(count: int) -> list[Any]:
        got = []
        for _ in range(count):
            value = perdure.receive("m")
            note("got", value)
            got.append(value)
        return got

    @perdure.workflow(name="wait_crash_dup")
    def dup_flow(count: int, seconds: float) -> list[Any]:
        got = [perdure.receive("dup") for _ in range(count)]
        got.append(perdure.receive("dup", timeout=seconds))
        return got

    return {"sleep": sleep_flow, "receive": receive_flow, "many": many_flow, "dup": dup_flow}


def work(flows: dict[str, Any]) -> Any:
    with perdure.Engine(ARGS.db, heartbeat_interval=0.2, recovery_interval=0.2) as engine:
        mode = ARGS.mode
        if mode == "resume":
            handle = engine.handle(ARGS.id)
        elif mode == "sleep":
            handle = engine.start(flows[mode], ARGS.seconds, id=ARGS.id)
        elif mode == "receive":
            handle = engine.start(flows[mode], ARGS.topic, id=ARGS.id)
        elif mode == "many":
            handle = engine.start(flows[mode], ARGS.count, id=ARGS.id)
        else:
            handle = engine.start(flows[mode], ARGS.count, ARGS.seconds, id=ARGS.id)
        return {"result": handle.result(timeout=120)}


def send() -> Any:
    with perdure.Engine(ARGS.db, recover=False) as engine:
        if ARGS.mode == "send":
            payload = json.loads(ARGS.payload)
            return {"sent": engine.send(ARGS.id, ARGS.topic, payload, ARGS.key)}
        if ARGS.mode == "send-many":
            sent = 0
            for i in range(ARGS.count):
                sent += engine.send(ARGS.id, "m", i, idempotency_key=str(i))
                if ARGS.pace:
                    time.sleep(ARGS.pace)
            return {"sent": sent}
        time.sleep(max(0.0, ARGS.at - time.time()))
        keys = [f"k{i}" for i in range(ARGS.count)]
        accepted = [k for i, k in enumerate(keys) if engine.send(ARGS.id, "dup", [ARGS.tag, i], k)]
        return {"sent": accepted}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--ledger", default=os.devnull)
    modes = [*WORKER_MODES, "send", "send-many", "send-keys"]
    parser.add_argument("--mode", required=True, choices=modes)
    parser.add_argument("--id", default="wf")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--topic", default="go")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--payload", default="null")
    parser.add_argument("--key", default=None)
    parser.add_argument("--pace", type=float, default=0.0)
    parser.add_argument("--at", type=float, default=0.0)
    parser.add_argument("--tag", default="")
    parser.parse_args(namespace=ARGS)
    if ARGS.mode in WORKER_MODES:
        print(json.dumps(work(register())), flush=True)
    else:
        print(json.dumps(send()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
