"""Workflows for the tests of the operations commands (``perdure worker``, ``cancel``,
``resume``, ``retry``), run by ``perdure worker tests/apps/ops_app.py``.

Every workflow takes ``folder``, a test's temporary folder. Each step body appends a line
``<tag> <pid>`` to ``folder/ledger`` (flushed and fsynced) when it runs, so a test can count
how often each body ran and in which process; ``folder/fixed`` and ``folder/open`` are the
files a test creates to fix a failure or let a step go on.

- ``ops_inbox``: note "waiting", ``perdure.receive("go")``, note "got"; returns the payload.
- ``ops_retry``: note "prepare", ``charge`` (note "charge", then ``ValueError`` until
  ``fixed`` exists: a permanent failure, never retried by itself), note "finish".
- ``ops_fragile``: note "first", then the workflow's own code raises until ``fixed`` exists
  (a bug fixed by a deploy), note "second".
- ``ops_gate``: note "one", ``gate`` (note "gate", then wait for ``open`` for up to a
  minute), note "done".
- ``ops_approval``: ``perdure.wait_for_approval("ship")``; returns the decision as a dict.

``python ops_app.py DB FOLDER ID [ID ...]`` runs ``ops_retry`` to its end once per ID, in
this process (with ``fixed`` created first), a fifth of a second apart.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import perdure


def note(folder: str, tag: str) -> str:
    with open(Path(folder) / "ledger", "a", encoding="utf-8") as f:
        f.write(f"{tag} {os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    return tag


@perdure.step(name="note")
def note_step(folder: str, tag: str) -> str:
    return note(folder, tag)


@perdure.step
def charge(folder: str) -> str:
    note(folder, "charge")
    if not (Path(folder) / "fixed").exists():
        raise ValueError("card declined")
    return "charged"


@perdure.step
def gate(folder: str) -> str:
    note(folder, "gate")
    deadline = time.monotonic() + 60
    while not (Path(folder) / "open").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the gate never opened")
        time.sleep(0.02)
    return "open"


@perdure.workflow(name="ops_inbox")
def ops_inbox(folder: str) -> object:
    note_step(folder, "waiting")
    payload = perdure.receive("go")
    note_step(folder, "got")
    return payload


@perdure.workflow(name="ops_retry")
def ops_retry(folder: str) -> str:
    note_step(folder, "prepare")
    charge(folder)
    note_step(folder, "finish")
    return "paid"


@perdure.workflow(name="ops_fragile")
def ops_fragile(folder: str) -> str:
    note_step(folder, "first")
    if not (Path(folder) / "fixed").exists():
        raise RuntimeError("not fixed yet")
    note_step(folder, "second")
    return "fixed"


@perdure.workflow(name="ops_gate")
def ops_gate(folder: str) -> str:
    note_step(folder, "one")
    gate(folder)
    note_step(folder, "done")
    return "opened"


@perdure.workflow(name="ops_approval")
def ops_approval(folder: str) -> dict[str, object]:
    decision = perdure.wait_for_approval("ship", details={"folder": folder})
    return {"approved": decision.approved, "by": decision.by, "comment": decision.comment}


if __name__ == "__main__":
    url, folder, *ids = sys.argv[1:]
    (Path(folder) / "fixed").touch()
    with perdure.Engine(url) as engine:
        for i, workflow_id in enumerate(ids):
            if i:
                time.sleep(0.2)
            engine.run(ops_retry, folder, id=workflow_id)
