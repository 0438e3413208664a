"""Per-step overhead of perdure, against a plain call and a raw durable SQLite insert.

Run from the repository root::

    python bench/step_overhead.py [--steps 1000] [--repeat 5] [--dir PATH]

Every variant does the same trivial work per step (``x = x + 1``, ``steps`` times in a row):

* plain Python: an ordinary function calling an ordinary function; nothing is stored.
* raw sqlite3: the stdlib ``sqlite3`` module, WAL, ``synchronous=FULL``, autocommit: one
  ``INSERT`` (one transaction, one fsync) per step into a table shaped like perdure's
  ``steps`` table. This is the floor for a durable journal on this disk: the baseline.
* perdure: ``engine.run(workflow, steps)`` with the engine already open, for a sync workflow
  of sync steps and an async workflow of async steps, ``durability="full"`` (the targets) and
  ``durability="normal"`` (for information). ``engine.run`` also inserts the workflow row and
  updates it when the workflow finishes: two commits more than the raw variant, per run.

For each variant and repetition a fresh database file is created in a temporary folder (by
default beside the repository, so on the repository's filesystem), opened, warmed up with one
untimed run of the same size (the first commits on a fresh database grow its WAL file and are
markedly slower), and then one run is timed: wall time (``time.perf_counter``) and process
CPU time (``time.process_time``: user + system time of every thread, the fsync system calls
included). Repetitions are interleaved across variants (round robin, rotating the order) so a
slow spell of the disk does not land on one variant only. Medians are reported.

Targets, for ``durability="full"``: perdure step / raw insert <= 1.3 (wall) and <= 2.0 (CPU).
The exit status is 0 whether or not the targets are met: this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import perdure
from _common import cpu_model, filesystem

REPO = Path(__file__).resolve().parent.parent
WALL_TARGET = 1.3
CPU_TARGET = 2.0

Durability = Literal["full", "normal"]
Runner = Callable[[int], int]
Opener = Callable[[Path], contextlib.AbstractContextManager[Runner]]


# -- the work --------------------------------------------------------------------------------


def plain_inc(x: int) -> int:
    return x + 1


def plain_chain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = plain_inc(x)
    return x


@perdure.step(name="bench.inc")
def inc(x: int) -> int:
    return x + 1


@perdure.workflow(name="bench.chain")
def chain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = inc(x)
    return x


@perdure.step(name="bench.ainc")
async def ainc(x: int) -> int:
    return x + 1


@perdure.workflow(name="bench.achain")
async def achain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = await ainc(x)
    return x


# -- the variants ----------------------------------------------------------------------------

# Same columns, types and key as perdure's `steps` table (migrations/sqlite/0001_initial.sql).
RAW_STEPS_DDL = """
CREATE TABLE steps (
    workflow_id TEXT NOT NULL,
    key         TEXT NOT NULL,
    position    INTEGER NOT NULL,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL,
    output      TEXT,
    error       TEXT,
    started_at  REAL NOT NULL,
    finished_at REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (workflow_id, key)
) WITHOUT ROWID
"""
RAW_INSERT = "INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


@contextlib.contextmanager
def open_plain(db: Path) -> Iterator[Runner]:
    yield plain_chain


@contextlib.contextmanager
def open_raw(db: Path, synchronous: str) -> Iterator[Runner]:
    conn = sqlite3.connect(db, isolation_level=None)  # autocommit: one transaction per INSERT
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(RAW_STEPS_DDL)

    def run(n: int) -> int:
        workflow_id = str(uuid.uuid4())  # the same kind of key as perdure's workflow ids
        x = 0
        for position in range(n):
            x = plain_inc(x)
            now = time.time()
            conn.execute(
                RAW_INSERT,
                (
                    workflow_id,
                    str(position),
                    position,
                    "bench.inc",
                    "SUCCESS",
                    str(x),
                    None,
                    now,
                    now,
                    1,
                ),
            )
        return x

    try:
        yield run
    finally:
        conn.close()


def raw_opener(synchronous: str) -> Opener:
    return lambda db: open_raw(db, synchronous)


@contextlib.contextmanager
def open_perdure(db: Path, durability: Durability, is_async: bool) -> Iterator[Runner]:
    workflow = achain if is_async else chain
    with perdure.Engine(f"sqlite:///{db}", durability=durability) as engine:

        def run(n: int) -> int:
            result: int = engine.run(workflow, n)
            return result

        yield run


def perdure_opener(durability: Durability, is_async: bool) -> Opener:
    return lambda db: open_perdure(db, durability, is_async)


@contextlib.contextmanager
def open_async_engine(db: Path, durability: Durability) -> Iterator[Runner]:
    """AsyncEngine: the async workflow runs on the caller's loop (here, this thread's)."""
    loop = asyncio.new_event_loop()
    engine = perdure.AsyncEngine(f"sqlite:///{db}", durability=durability)
    loop.run_until_complete(engine.open())

    def run(n: int) -> int:
        result: int = loop.run_until_complete(engine.run(achain, n))
        return result

    try:
        yield run
    finally:
        loop.run_until_complete(engine.close())
        loop.close()


@dataclass
class Variant:
    key: str
    label: str
    open: Opener
    baseline: str | None = None  # key of the raw variant to compare with
    target: bool = False  # the targets apply to this variant
    wall: list[float] = field(default_factory=list)  # seconds per step, one per repetition
    cpu: list[float] = field(default_factory=list)


def variants() -> list[Variant]:
    return [
        Variant("plain", "plain Python call", open_plain),
        Variant("raw-full", "raw sqlite3 INSERT, synchronous=FULL", raw_opener("FULL")),
        Variant(
            "sync-full",
            "perdure sync workflow, full",
            perdure_opener("full", False),
            baseline="raw-full",
            target=True,
        ),
        Variant(
            "async-full",
            "perdure async workflow, full",
            perdure_opener("full", True),
            baseline="raw-full",
            target=True,
        ),
        Variant(
            "asyncengine-full",
            "perdure async, AsyncEngine, full",
            lambda db: open_async_engine(db, "full"),
            baseline="raw-full",
            target=True,
        ),
        Variant("raw-normal", "raw sqlite3 INSERT, synchronous=NORMAL", raw_opener("NORMAL")),
        Variant(
            "sync-normal",
            "perdure sync workflow, normal",
            perdure_opener("normal", False),
            baseline="raw-normal",
        ),
        Variant(
            "async-normal",
            "perdure async workflow, normal",
            perdure_opener("normal", True),
            baseline="raw-normal",
        ),
    ]


# -- measuring -------------------------------------------------------------------------------


def measure(variant: Variant, steps: int, workdir: Path, rep: int) -> None:
    """One repetition: fresh database, untimed warm-up run, one timed run."""
    db = workdir / f"{variant.key}-{rep}.db"
    with variant.open(db) as run:
        _check(variant, run(steps), steps)  # warm-up, untimed
        gc.collect()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = run(steps)
        cpu1, wall1 = time.process_time(), time.perf_counter()
    _check(variant, result, steps)
    variant.wall.append((wall1 - wall0) / steps)
    variant.cpu.append((cpu1 - cpu0) / steps)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def _check(variant: Variant, result: int, steps: int) -> None:
    if result != steps:
        raise RuntimeError(f"{variant.label}: returned {result}, expected {steps}")


# -- reporting -------------------------------------------------------------------------------


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.2f}" if seconds < 1e-5 else f"{seconds * 1e6:.1f}"


def verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio <= target else "MISS"


def report(found: list[Variant], steps: int, repeat: int) -> None:
    by_key = {v.key: v for v in found}
    median = statistics.median
    print(f"\nper step: median of {repeat} runs of a {steps}-step workflow (us = microseconds)")
    header = (
        f"{'variant':<40} {'wall us':>8} {'wall min-max':>14} {'CPU us':>8}  "
        f"{'wall/raw':>8} {'CPU/raw':>8}"
    )
    print(header)
    print("-" * len(header))
    for v in found:
        wall_range = f"{us(min(v.wall))}-{us(max(v.wall))}"
        ratios = ""
        if v.baseline is not None:
            base = by_key[v.baseline]
            ratios = (
                f"{median(v.wall) / median(base.wall):>8.2f} "
                f"{median(v.cpu) / median(base.cpu):>8.2f}"
            )
        elif v.key.startswith("raw"):
            ratios = f"{'1.00':>8} {'1.00':>8}"
        print(
            f"{v.label:<40} {us(median(v.wall)):>8} {wall_range:>14} {us(median(v.cpu)):>8}  "
            f"{ratios}"
        )
    print(
        "\nratios divide medians by the raw sqlite3 variant with the same synchronous setting;"
        f"\nperdure runs include 1 workflow-row insert + 1 finish update (2 extra commits per "
        f"{steps} steps)."
    )
    print(f"\ntargets (durability='full'): wall ratio <= {WALL_TARGET}, CPU ratio <= {CPU_TARGET}")
    met = True
    for v in found:
        if not v.target or v.baseline is None:
            continue
        base = by_key[v.baseline]
        wall_ratio = median(v.wall) / median(base.wall)
        cpu_ratio = median(v.cpu) / median(base.cpu)
        met = met and wall_ratio <= WALL_TARGET and cpu_ratio <= CPU_TARGET
        print(
            f"  {v.label:<36} wall {wall_ratio:5.2f} <= {WALL_TARGET}  "
            f"{verdict(wall_ratio, WALL_TARGET)}    "
            f"CPU {cpu_ratio:5.2f} <= {CPU_TARGET}  {verdict(cpu_ratio, CPU_TARGET)}"
        )
    print(f"\nRESULT: {'all targets met' if met else 'targets MISSED (see MISS above)'}")


# -- the machine -----------------------------------------------------------------------------


def describe(workdir: Path) -> None:
    same = os.stat(workdir).st_dev == os.stat(REPO).st_dev
    print("perdure per-step overhead benchmark")
    print(f"  python   {platform.python_version()} ({sys.executable})")
    print(f"  sqlite   {sqlite3.sqlite_version}")
    print(f"  perdure  {perdure.__version__}")
    print(f"  cpu      {cpu_model()}, {os.cpu_count()} logical cores")
    print(f"  tempdir  {workdir}")
    print(f"  disk     {filesystem(workdir)}; same filesystem as the repo: {same}")


# -- main ------------------------------------------------------------------------------------


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=positive, default=1000, help="steps per workflow")
    parser.add_argument("--repeat", type=positive, default=5, help="timed runs per variant")
    parser.add_argument(
        "--dir",
        type=Path,
        default=REPO.parent,
        help="where the temporary folder of databases goes (default: beside the repository, "
        "i.e. on its filesystem; avoid tmpfs, which measures memory, not a disk)",
    )
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="perdure-bench-", dir=args.dir)).resolve()
    try:
        describe(workdir)
        found = variants()
        print(f"\nrunning {len(found)} variants x {args.repeat} repetitions ", end="", flush=True)
        for rep in range(args.repeat):
            shift = rep % len(found)
            for variant in found[shift:] + found[:shift]:
                measure(variant, args.steps, workdir, rep)
            print(".", end="", flush=True)
        print()
        report(found, args.steps, args.repeat)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
