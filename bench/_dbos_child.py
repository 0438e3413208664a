"""Child process of ``bench/pg_workers.py`` for DBOS Transact.

Runs under the peer virtualenv that ``pg_workers.py`` creates (``bench/.peers/.venv``, with
``dbos`` from PyPI); it never imports perdure. It speaks the same protocol as
``bench/_perdure_child.py`` (modes ``steps``, ``throughput``, ``count``, ``setup``; ``READY`` and
``RESULT {json}`` lines on stdout; read that file's docstring for what each mode does) and runs
the same workload: a workflow of ``n`` sequential steps, each returning ``x + 1``.

DBOS is configured with its defaults except: the system database URL, logging at WARNING, a
fixed application version (so every worker process agrees without hashing the source) and an
executor id per worker process (each recovers only its own pending workflows at launch).
"""

from __future__ import annotations

import argparse
import sys

from dbos import DBOS

from _common import serve

# -- the workload: the same shape as in _perdure_child.py -------------------------------------


@DBOS.step()
def add_one(x: int) -> int:
    return x + 1


@DBOS.workflow()
def chain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = add_one(x)
    return x


def run(n: int) -> int:
    """One workflow on DBOS's executor threads, as perdure's ``engine.start(...).result()``."""
    result: int = DBOS.start_workflow(chain, n).get_result()
    return result


# -- modes ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["steps", "throughput", "count", "setup"])
    parser.add_argument("--engine", choices=["dbos"], default="dbos")
    parser.add_argument("--url", required=True)
    parser.add_argument("--name", default="w0", help="this worker's name (its executor id)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workflows", type=int, default=1)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=16)
    args = parser.parse_args(argv)

    DBOS(
        config={
            "name": "pg-workers-bench",
            "system_database_url": args.url,
            "log_level": "WARNING",
            "application_version": "bench",
            "executor_id": args.name,
        }
    )
    DBOS.launch()
    try:
        serve(args, run)
    finally:
        DBOS.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
