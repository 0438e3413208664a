"""Child process of ``bench/pg_workers.py`` for perdure and the raw psycopg floor.

Runs under the project's virtualenv (``.venv/bin/python``). Not meant to be run by hand: the
orchestrator passes the mode and sizes and reads the ``READY`` and ``RESULT {json}`` lines this
prints on stdout. ``bench/_dbos_child.py`` speaks the same protocol for DBOS.

Modes:

- ``steps``: open, run one workflow of ``--steps`` steps untimed (warm-up), print ``READY``,
  wait for a line on stdin, then time one more.
- ``throughput``: open, warm up with ``--warmup`` workflows, print ``READY``, wait for a line on
  stdin, then run ``--workflows`` workflows of ``--steps`` steps, ``--inflight`` at a time.
  In both, after printing ``RESULT`` the child waits for another line (or end of file) on stdin
  before it closes its engine, so its connections are still there when the orchestrator reads
  their CPU time and a closing engine does not overlap another worker's timed run.
- ``count``: open, run ``--workflows`` workflows of ``--steps`` steps one after the other,
  close (the orchestrator counts transactions on the server around it).
- ``setup``: open once (which creates the tables) and close.

``--engine raw`` is the floor: one autocommitted ``INSERT`` per step into a table shaped like a
journal (workflow id, position, output), on one psycopg connection.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

import perdure
from _common import serve

# -- the workload: the same shape as in _dbos_child.py ----------------------------------------


@perdure.step
def add_one(x: int) -> int:
    return x + 1


@perdure.workflow
def chain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = add_one(x)
    return x


# -- one runner per engine: run(n) runs one workflow of n steps and returns its result --------

Run = Callable[[int], int]


@contextmanager
def open_perdure(url: str) -> Iterator[Run]:
    with perdure.Engine(url) as engine:

        def run(n: int) -> int:
            result: int = engine.start(chain, n).result(timeout=600)
            return result

        yield run


@contextmanager
def open_raw(url: str) -> Iterator[Run]:
    """The floor: what one durable journal write per step costs on this server at best."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS raw_journal (workflow_id TEXT NOT NULL, "
            "position INTEGER NOT NULL, output TEXT, PRIMARY KEY (workflow_id, position))"
        )

        def run(n: int) -> int:
            workflow_id = str(uuid.uuid4())
            x = 0
            for position in range(n):
                x = x + 1
                conn.execute(
                    "INSERT INTO raw_journal (workflow_id, position, output) VALUES (%s, %s, %s)",
                    (workflow_id, position, json.dumps(x)),
                )
            return x

        yield run


OPENERS: dict[str, Callable[[str], Any]] = {"perdure": open_perdure, "raw": open_raw}


# -- modes ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["steps", "throughput", "count", "setup"])
    parser.add_argument("--engine", choices=sorted(OPENERS), default="perdure")
    parser.add_argument("--url", required=True)
    parser.add_argument("--name", default="w0", help="this worker's name")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workflows", type=int, default=1)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=16)
    args = parser.parse_args(argv)

    with OPENERS[args.engine](args.url) as run:
        serve(args, run, f" perdure from {perdure.__file__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
