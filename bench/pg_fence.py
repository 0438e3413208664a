"""What perdure's journal statement costs on PostgreSQL, piece by piece, next to a raw insert.

Run from the repository root (PostgreSQL at 127.0.0.1:5432, user postgres, database test)::

    python bench/pg_fence.py [--commits 2000] [--repeat 5] [--url postgresql://...]

On a fresh schema (perdure's tables, migrated by opening an engine) and one psycopg connection
in autocommit mode, each variant makes ``--commits`` commits of one statement:

* ``raw``: the 3-column insert of ``bench/compare.py``'s raw floor: the baseline;
* ``row, unfenced``: perdure's full ``steps`` row (11 columns), a plain ``INSERT``;
* ``row, positional``: the same with positional parameters instead of named ones;
* ``row, fence without lock``: the row inserted only if the workflow row says this lease
  holds it (the check without ``FOR SHARE``: not safe, shown for its cost);
* ``row, fenced``: the statement the store sends (``FOR SHARE`` lease fence,
  ``ON CONFLICT DO NOTHING``);
* ``perdure step``: a whole step through ``engine.run`` (one workflow of ``--commits`` steps).

Repetitions are interleaved across variants, after one untimed warm-up of each; medians per
commit are printed with each variant's repetitions, and the ratio to ``raw``. Client CPU is
``time.process_time()`` (this process only; the server's CPU is not in it). The exit status is
0 whatever the figures: this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

import perdure
from step_overhead import chain  # the same 1,000 trivial steps

BASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
COLUMNS = ("workflow_id", "key", "position", "name", "status", "output", "error", "started_at",
           "finished_at", "attempts", "fingerprint")  # fmt: skip
_NAMED = ", ".join(f"%({c})s" for c in COLUMNS)
_CHECK = "SELECT 1 FROM workflows WHERE id = %(wf)s AND owner = %(owner)s AND epoch = %(epoch)s"
_FENCED_INSERT = (
    f"INSERT INTO steps ({', '.join(COLUMNS)}) SELECT {_NAMED} FROM owned ON CONFLICT DO NOTHING"
)
STATEMENTS = {
    "raw": "INSERT INTO journal VALUES (%s, %s, %s)",
    "row, unfenced": f"INSERT INTO steps ({', '.join(COLUMNS)}) VALUES ({_NAMED})",
    "row, positional": (
        f"INSERT INTO steps ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
    ),
    "row, fence without lock": f"WITH owned AS ({_CHECK}) {_FENCED_INSERT}",
    "row, fenced": f"WITH owned AS ({_CHECK} FOR SHARE) {_FENCED_INSERT}",
}


class Bench:
    """A fresh schema, one autocommit connection on it, and the variants."""

    def __init__(self, url: str, commits: int) -> None:
        self.url, self.commits = url, commits
        self.schema = f"bench_fence_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {self.schema}".encode())
        self.engine = perdure.Engine(f"{url}?schema={self.schema}", recover=False).open()
        self.conn = psycopg.connect(url, autocommit=True, options=f"-c search_path={self.schema}")
        self.conn.execute(
            "CREATE TABLE journal (workflow_id TEXT NOT NULL, position INTEGER NOT NULL, "
            "output TEXT, PRIMARY KEY (workflow_id, position))"
        )

    def close(self) -> None:
        self.engine.close()
        self.conn.close()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {self.schema} CASCADE".encode())

    def _workflow(self) -> str:
        """A workflow row held by lease (me, 1), finished so no engine looks at it."""
        wf = uuid.uuid4().hex
        self.conn.execute(
            "INSERT INTO workflows (id, name, status, inputs, owner, created_at, updated_at, "
            "epoch) VALUES (%s, 'fence_bench', 'SUCCESS', '[]', 'me', 0, 0, 1)",
            (wf,),
        )
        return wf

    def statement(self, name: str) -> Callable[[], None]:
        query = STATEMENTS[name]

        def run() -> None:
            wf = self._workflow()
            for i in range(self.commits):
                if name == "raw":
                    self.conn.execute(query, (wf, i, str(i + 1)))
                    continue
                row: dict[str, Any] = {
                    "workflow_id": wf, "key": str(i), "position": i, "name": "inc",
                    "status": "SUCCESS", "output": str(i + 1), "error": None,
                    "started_at": 1.0, "finished_at": 1.0, "attempts": 1, "fingerprint": None,
                    "wf": wf, "owner": "me", "epoch": 1,
                }  # fmt: skip
                params = [row[c] for c in COLUMNS] if name == "row, positional" else row
                self.conn.execute(query, params)

        return run

    def step(self) -> None:
        self.engine.run(chain, self.commits)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--url", default=BASE_URL)
    args = parser.parse_args()
    bench = Bench(args.url, args.commits)
    variants: dict[str, Callable[[], None]] = {n: bench.statement(n) for n in STATEMENTS}
    variants["perdure step"] = bench.step
    wall: dict[str, list[float]] = {n: [] for n in variants}
    cpu: dict[str, list[float]] = {n: [] for n in variants}
    try:
        server = bench.conn.execute("SHOW server_version").fetchone()
        machine = platform.processor() or platform.machine()
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(f"PostgreSQL {server[0] if server else '?'}, psycopg {psycopg.__version__}, "
              f"{machine}, {stamp}")  # fmt: skip
        for run in variants.values():
            run()  # untimed warm-up
        for rep in range(args.repeat):
            names = list(variants)
            for name in names[rep % len(names) :] + names[: rep % len(names)]:  # rotate order
                t0, c0 = time.perf_counter(), time.process_time()
                variants[name]()
                wall[name].append((time.perf_counter() - t0) / args.commits * 1e6)
                cpu[name].append((time.process_time() - c0) / args.commits * 1e6)
    finally:
        bench.close()
    base = statistics.median(wall["raw"])
    print(f"\nper commit, medians of {args.repeat} x {args.commits} (us)")
    print(f"{'variant':26} {'wall us':>8} {'CPU us':>7} {'wall/raw':>8}  repetitions (wall us)")
    for name in variants:
        w = statistics.median(wall[name])
        reps = " ".join(f"{x:.0f}" for x in wall[name])
        print(f"{name:26} {w:8.1f} {statistics.median(cpu[name]):7.1f} {w / base:8.2f}  {reps}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
