"""How perdure's cost grows: with workflow length, with history size, and with concurrency.

Run from the repository root (``make bench-growth``)::

    python bench/growth.py [--backends sqlite,postgres] [--url postgresql://postgres@127.0.0.1:5432]
                           [--only length,history,concurrency,size] [--durability full|normal]

Four measurements, each on a fresh database per backend (a SQLite file beside the repository,
``durability="full"`` unless ``--durability normal``, which takes the fsyncs out; a fresh
PostgreSQL database ``growth_perdure``):

1. **Workflow length**: one sync workflow of N trivial steps (N = 10, 100, 1,000, 10,000), run
   with ``engine.run``; wall and CPU per step. Flat means the per-step cost does not depend on
   how long the workflow already is.
2. **History size (replay)**: a workflow runs N steps, then waits for a message (its run
   unloads); ``send`` wakes it and a new run replays the N journaled steps before it goes
   on. The time from ``send`` to the workflow's end, and that time per replayed step.
3. **Concurrency**: 400 workflows of 10 steps, C at a time (C = 1, 5, 10, 25, 50, 100), sync
   (C caller threads) and async (``engine.start`` from an async workflow's point of view: C
   handles in flight); steps/s and the average number of journal entries per commit (group
   commit at work: 1.0 means one commit per step).
4. **Steps per workflow**: 400 sync workflows of S steps (S = 0, 1, 5, 10, 20), one at a time
   and 50 at a time; process CPU per workflow, and a least-squares line through it: the CPU
   a workflow costs whatever its steps (start, first run, outcome) and the CPU of one more
   step, and the process's context switches per workflow (voluntary and involuntary, from
   ``getrusage``): what a thread hand-off costs shows there. What bounds a process's
   throughput once group commit has removed the fsyncs.

Prints one table per measurement; always exits 0 (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import perdure

REPO = Path(__file__).resolve().parent.parent
MEASUREMENTS = ("length", "history", "concurrency", "size")


def open_engine(db: str, durability: str, **options: Any) -> perdure.Engine:
    """An engine on ``db``, with ``durability`` (``--durability``) if it is a SQLite one."""
    if db.startswith("sqlite"):
        options["durability"] = durability
    return perdure.Engine(db, **options)


@perdure.step(name="g.inc")
def inc(x: int) -> int:
    return x + 1


@perdure.workflow(name="g.chain")
def chain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = inc(x)
    return x


@perdure.step(name="g.ainc")
async def ainc(x: int) -> int:
    return x + 1


@perdure.workflow(name="g.achain")
async def achain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = await ainc(x)
    return x


@perdure.workflow(name="g.pause")
def pause(n: int) -> int:
    x = 0
    for _ in range(n):
        x = inc(x)
    perdure.receive("go", timeout=3600)
    return inc(x)


@contextmanager
def database(backend: str, url: str, folder: Path) -> Iterator[str]:
    """A fresh database URL for one measurement."""
    if backend == "sqlite":
        path = Path(tempfile.mkdtemp(dir=folder)) / "growth.db"
        yield f"sqlite:///{path}"
        shutil.rmtree(path.parent, ignore_errors=True)
        return
    import psycopg

    with psycopg.connect(f"{url}/postgres", autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS growth_perdure WITH (FORCE)")
        conn.execute("CREATE DATABASE growth_perdure")
    yield f"{url}/growth_perdure"
    with psycopg.connect(f"{url}/postgres", autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS growth_perdure WITH (FORCE)")


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def by_length(db: str, durability: str) -> list[tuple[str, ...]]:
    rows = []
    with open_engine(db, durability) as engine:
        engine.run(chain, 200)  # warm-up
        for n in (10, 100, 1000, 10_000):
            wall, cpu = timed(lambda n=n: engine.run(chain, n))  # type: ignore[misc]
            rows.append((f"{n:,}", f"{wall / n * 1e6:.1f}", f"{cpu / n * 1e6:.1f}"))
    return rows


def by_history(db: str, durability: str) -> list[tuple[str, ...]]:
    rows = []
    with open_engine(db, durability, suspend_after=0.0) as engine:
        for n in (10, 100, 1000, 10_000):
            handle = engine.start(pause, n)
            deadline = time.monotonic() + 300
            while engine.get_workflow(handle.id).status != perdure.WorkflowStatus.WAITING:
                if time.monotonic() > deadline:
                    raise SystemExit(f"workflow of {n} steps never waited")
                time.sleep(0.01)
            time.sleep(0.2)  # its run has unloaded
            started = time.perf_counter()
            engine.send(handle.id, "go", 1)
            handle.result(timeout=300)
            took = time.perf_counter() - started
            rows.append((f"{n:,}", f"{took * 1e3:.1f}", f"{took / n * 1e6:.1f}"))
    return rows


def by_concurrency(db: str, durability: str, workflows: int) -> list[tuple[str, ...]]:
    rows = []
    with open_engine(db, durability, max_threads=128) as engine:
        group = getattr(engine.store, "_group", None)
        for flow, label in ((chain, "sync"), (achain, "async")):
            engine.run(flow, 10)
            for c in (1, 5, 10, 25, 50, 100):
                before = (group.batches, group.entries) if group else (0, 0)

                def run(c: int = c, flow: Any = flow) -> None:
                    with ThreadPoolExecutor(c) as pool:
                        done = list(pool.map(lambda _: engine.run(flow, 10), range(workflows)))
                    assert done == [10] * workflows

                wall, cpu = timed(run)
                batches = group.batches - before[0] if group else 0
                entries = group.entries - before[1] if group else 0
                per_commit = f"{entries / batches:.1f}" if batches else "?"
                rows.append((label, str(c), f"{workflows * 10 / wall:,.0f}",
                             f"{workflows / wall:,.0f}", f"{cpu / (workflows * 10) * 1e6:.1f}",
                             per_commit))  # fmt: skip
    return rows


def by_workflow_size(db: str, durability: str, workflows: int) -> list[tuple[str, ...]]:
    rows = []
    with open_engine(db, durability, max_threads=128) as engine:
        engine.run(chain, 10)
        for c in (1, 50):
            points: list[tuple[int, float]] = []
            for size in (0, 1, 5, 10, 20):

                def run(c: int = c, size: int = size) -> None:
                    with ThreadPoolExecutor(c) as pool:
                        done = list(pool.map(lambda _: engine.run(chain, size), range(workflows)))
                    assert done == [size] * workflows

                run()  # warm-up at this size
                before = _switches()
                wall, cpu = timed(run)
                switches = (_switches() - before) / workflows
                points.append((size, cpu / workflows * 1e6))
                per_workflow = f"{cpu / workflows * 1e6:,.0f}"
                rows.append((str(c), str(size), f"{workflows / wall:,.0f}", per_workflow,
                             f"{switches:.1f}", "", ""))  # fmt: skip
            fixed, per_step = _line(points)
            rows.append((str(c), "fit", "", "", "", f"{fixed:,.0f}", f"{per_step:.1f}"))
    return rows


def _switches() -> int:
    """This process's context switches so far, voluntary and involuntary."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


def _line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares intercept and slope of ``points``."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum(
        (x - mean_x) ** 2 for x, _ in points
    )
    return mean_y - slope * mean_x, slope


def table(title: str, head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--workflows", type=int, default=400)
    parser.add_argument("--dir", type=Path, default=None, help="where SQLite files go")
    parser.add_argument("--only", default=",".join(MEASUREMENTS), help="which measurements")
    parser.add_argument("--durability", choices=("full", "normal"), default="full",
                        help="SQLite's durability (normal: no fsync per commit)")  # fmt: skip
    args = parser.parse_args()
    durability = args.durability
    only = set(args.only.split(","))
    if only - set(MEASUREMENTS):
        parser.error(f"--only takes {', '.join(MEASUREMENTS)}")
    folder = Path(tempfile.mkdtemp(prefix="perdure-growth-", dir=args.dir or REPO.parent))
    try:
        for backend in args.backends.split(","):
            note = f", durability={args.durability}" if backend == "sqlite" else ""
            print(f"\n=== {backend}{note} (python {sys.version.split()[0]}) ===")
            if "length" in only:
                with database(backend, args.url, folder) as db:
                    table("workflow length: one workflow of N sequential steps",
                          ("steps", "wall us/step", "CPU us/step"),
                          by_length(db, durability))  # fmt: skip
            if "history" in only:
                with database(backend, args.url, folder) as db:
                    head = ("history", "send→end ms", "us per replayed step")
                    table("history size: resume after N journaled steps (replay)", head,
                          by_history(db, durability))  # fmt: skip
            if "concurrency" in only:
                with database(backend, args.url, folder) as db:
                    table(f"concurrency: {args.workflows} workflows x 10 steps, C at a time",
                          ("kind", "C", "steps/s", "workflows/s", "CPU us/step",
                           "entries/commit"),
                          by_concurrency(db, durability, args.workflows))  # fmt: skip
            if "size" in only:
                with database(backend, args.url, folder) as db:
                    table(f"steps per workflow: {args.workflows} sync workflows of S steps, C "
                          "at a time", ("C", "S", "workflows/s", "CPU us/workflow",
                                        "switches/workflow", "fit: us/workflow",
                                        "fit: us/step"),
                          by_workflow_size(db, durability, args.workflows))  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("\n(medians are not taken: one run per cell; compare within a run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
