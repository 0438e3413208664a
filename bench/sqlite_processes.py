"""Throughput of several worker processes sharing one SQLite file, against one process.

Run from the repository root::

    python bench/sqlite_processes.py [--workflows 4000] [--steps 10] [--inflight 50]
                                     [--processes 1,2] [--repeat 3] [--dir PATH]

The question: one CPython process running perdure is bound by one core (the GIL), so does a
second process on the same SQLite file, on a machine with a second core, raise throughput?

For each K in ``--processes``, K child processes each open an ``Engine`` on the same fresh
database file (SQLite WAL, perdure's default ``durability="full"``) and run ``workflows / K``
workflows of ``steps`` sync steps, ``inflight / K`` at a time (caller threads calling
``engine.run``, as ``compare.py``'s throughput scenario does). The children warm up, wait at
a barrier, run, and report; steps/s is measured by the parent from the barrier to the last
child's report, CPU is the children's user + system time. Next to them, in the same run: the
raw one-commit-per-step rate (one durable autocommitted ``INSERT`` per step, one thread:
``_sys_raw.py``, the floor ``compare.py`` measures), the baseline of issue 10's target.
Repetitions are interleaved (K=1, K=2, raw, K=1, ...) and medians reported. Exits 0: a
benchmark, not a test.

Figures and their reading: docs/benchmarks.md, "Several processes on one SQLite file".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import perdure
from _common import cpu_model, filesystem, run_many
from growth import chain  # growth.py's workflow: a chain of trivial sync steps

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WARMUP_WORKFLOWS = 20


def child(args: argparse.Namespace) -> None:
    """One worker process: warm up, wait for the parent's go, run, report, wait to exit."""
    with perdure.Engine(f"sqlite:///{args.db}", max_threads=max(64, args.inflight)) as engine:

        def run(steps: int) -> int:
            result: int = engine.run(chain, steps, timeout=600)
            return result

        run_many(run, WARMUP_WORKFLOWS, args.steps, args.inflight)
        print("READY", flush=True)
        sys.stdin.readline()
        before = resource.getrusage(resource.RUSAGE_SELF)
        done = run_many(run, args.workflows, args.steps, args.inflight)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        print(json.dumps({"ok": done["ok"], "errors": done["errors"], "cpu": cpu}), flush=True)
        sys.stdin.readline()  # exit (and close the engine) only after every child reported


def fresh(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with perdure.Engine(f"sqlite:///{db}"):
        pass  # create the schema once, before the children race to open it


def processes(args: argparse.Namespace, k: int, db: Path) -> dict[str, float]:
    """K children on one fresh database: steps/s, CPU s, errors."""
    fresh(db)
    command = [
        sys.executable, __file__, "--child", "--db", str(db), "--steps", str(args.steps),
        "--workflows", str(args.workflows // k), "--inflight", str(max(1, args.inflight // k)),
    ]  # fmt: skip
    kids = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(k)
    ]
    try:
        for kid in kids:
            assert kid.stdout is not None
            if kid.stdout.readline().strip() != "READY":
                raise RuntimeError(f"a child failed to start (exit {kid.wait()})")
        start = time.perf_counter()
        for kid in kids:
            assert kid.stdin is not None
            kid.stdin.write("go\n")
            kid.stdin.flush()
        reports = []
        for kid in kids:
            assert kid.stdout is not None
            reports.append(json.loads(kid.stdout.readline()))
        wall = time.perf_counter() - start
        for kid in kids:
            assert kid.stdin is not None
            kid.stdin.write("exit\n")
            kid.stdin.flush()
            if kid.wait(timeout=60) != 0:
                raise RuntimeError(f"a child exited with {kid.returncode}")
    finally:
        for kid in kids:
            if kid.poll() is None:
                kid.kill()
    ok = sum(r["ok"] for r in reports)
    return {
        "steps_per_s": ok * args.steps / wall,
        "cpu_s": sum(r["cpu"] for r in reports),
        "errors": sum(r["errors"] for r in reports),
        "ok": ok,
    }


def raw(args: argparse.Namespace, folder: Path) -> dict[str, float]:
    """The one-commit-per-step rate, measured by compare.py's own floor (``_sys_raw.py
    throughput`` at concurrency 1: one durable autocommitted INSERT per step)."""
    workflows = min(args.workflows, 1000)  # a rate: enough inserts to be steady
    done = subprocess.run(
        [sys.executable, str(BENCH / "_sys_raw.py"), "throughput", "--backend", "sqlite",
         "--dir", str(folder), "--workflows", str(workflows), "--steps", str(args.steps),
         "--concurrency", "1"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"_sys_raw.py failed (exit {done.returncode}): {done.stderr[-500:]}")
    found = json.loads(lines[0].removeprefix("RESULT "))
    per_step = found["cpu_s"] / (found["ok"] * args.steps)
    return {
        "steps_per_s": found["steps_per_s"],
        "cpu_s": per_step * args.workflows * args.steps,  # scaled to this run's step count
        "errors": found["errors"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--inflight", type=int, default=50)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the database goes (not a tmpfs)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    counts = [int(k) for k in args.processes.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="perdure-procs-", dir=args.dir or REPO.parent))
    db = folder / "bench.db"
    results: dict[str, list[dict[str, float]]] = {}
    try:
        print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; database on {filesystem(folder)}")
        print(f"{args.workflows:,} workflows x {args.steps} steps, {args.inflight} in flight in "
              f"all; {args.repeat} interleaved repetitions, medians", flush=True)  # fmt: skip
        for rep in range(args.repeat):
            for k in counts:
                results.setdefault(f"perdure x{k}", []).append(processes(args, k, db))
            results.setdefault("raw 1-commit", []).append(raw(args, folder))
            print(f"  repetition {rep + 1} of {args.repeat} done", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    table(args, results)
    return 0


def table(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> None:
    median = {
        name: {key: statistics.median(r[key] for r in runs) for key in ("steps_per_s", "cpu_s")}
        for name, runs in results.items()
    }
    one = median.get("perdure x1", {}).get("steps_per_s")
    base = median["raw 1-commit"]["steps_per_s"]
    steps = args.workflows * args.steps
    print()
    print(f"{'system':<14} {'steps/s':>9} {'CPU us/step':>12} {'vs 1 process':>13} "
          f"{'vs 1-commit':>12} {'errors':>7}")  # fmt: skip
    print("-" * 72)
    for name, m in median.items():
        errors = sum(r["errors"] for r in results[name])
        vs_one = f"{m['steps_per_s'] / one:.2f}x" if one and name.startswith("perdure") else ""
        print(f"{name:<14} {m['steps_per_s']:>9,.0f} {m['cpu_s'] / steps * 1e6:>12.1f} "
              f"{vs_one:>13} {m['steps_per_s'] / base:>11.2f}x {errors:>7}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
