"""Where perdure's per-step time goes: CPU by thread, and a cProfile of the stepping thread.

Run from the repository root::

    python bench/profile_steps.py [--steps 1000] [--durability full|normal] [--top 20]

For a sync workflow and an async workflow (the same ones as ``bench/step_overhead.py``), on a
fresh database beside the repository, after one untimed warm-up run:

1. one run measured per thread (Linux: ``pthread_getcpuclockid``): which threads spend the
   process's CPU (the sync workflow thread; the event loop thread and the I/O pool threads for
   an async workflow), and how many journal writes each I/O thread made;
2. one run under cProfile, enabled inside the workflow, so it covers the thread that runs the
   steps (the workflow thread for sync, the event loop thread for async; I/O pool threads are
   not profiled). cProfile measures wall time: ``execute`` includes the fsync wait and
   ``epoll.poll`` / ``SimpleQueue.get`` are idle waits. Use ``--durability normal`` to see the
   Python-side costs without the fsync dominating. Profiled times are inflated by the profiler.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import perdure

REPO = Path(__file__).resolve().parent.parent

_profile: dict[str, cProfile.Profile | None] = {"current": None}


@perdure.step(name="profile.inc")
def inc(x: int) -> int:
    return x + 1


@perdure.workflow(name="profile.chain")
def chain(n: int) -> int:
    prof = _profile["current"]
    if prof is not None:
        prof.enable()
    x = 0
    for _ in range(n):
        x = inc(x)
    if prof is not None:
        prof.disable()
    return x


@perdure.step(name="profile.ainc")
async def ainc(x: int) -> int:
    return x + 1


@perdure.workflow(name="profile.achain")
async def achain(n: int) -> int:
    prof = _profile["current"]
    if prof is not None:
        prof.enable()
    x = 0
    for _ in range(n):
        x = await ainc(x)
    if prof is not None:
        prof.disable()
    return x


def thread_cpu() -> dict[tuple[str, int], float]:
    """CPU seconds used so far by each live thread of this process."""
    found = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        try:
            clock = time.pthread_getcpuclockid(thread.ident)
            found[(thread.name, thread.ident)] = time.clock_gettime(clock)
        except (AttributeError, OSError):  # not available on this platform
            continue
    return found


def per_thread(run: Callable[[], object], steps: int) -> None:
    before = thread_cpu()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    run()
    cpu1, wall1 = time.process_time(), time.perf_counter()
    after = thread_cpu()
    print(f"  wall {(wall1 - wall0) / steps * 1e6:7.1f} us/step")
    print(f"  CPU  {(cpu1 - cpu0) / steps * 1e6:7.1f} us/step (process), by thread:")
    used = {key: after[key] - before.get(key, 0.0) for key in after}
    for (name, _), seconds in sorted(used.items(), key=lambda kv: -kv[1]):
        if seconds > 0:
            print(f"    {name:<28} {seconds / steps * 1e6:7.1f} us/step")


def profiled(run: Callable[[], object], steps: int, top: int) -> None:
    prof = cProfile.Profile()
    _profile["current"] = prof
    try:
        run()
    finally:
        _profile["current"] = None
    stats: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values()) or 1.0
    print(f"  cProfile of the stepping thread: {total / steps * 1e6:.1f} us/step profiled")
    print(f"  {'self us':>8} {'share':>6} {'cum us':>8} {'calls':>6}  function")
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    for (filename, line, function), (_, calls, self_time, cum_time, _) in rows:
        where = re.sub(r"^.*?/(perdure|python3\.\d+)/", r"\1/", filename)
        print(
            f"  {self_time / steps * 1e6:8.2f} {100 * self_time / total:5.1f}% "
            f"{cum_time / steps * 1e6:8.2f} {calls / steps:6.1f}  {where}:{line}({function})"
        )


def writer_threads(engine: perdure.Engine, run: Callable[[], object]) -> Counter[str]:
    """Which threads made the journal writes of one run (wraps the store, not the engine)."""
    store = engine.store
    seen: Counter[str] = Counter()
    original = store.append_step

    def append_step(row: Any, owner: str) -> None:
        seen[threading.current_thread().name] += 1
        original(row, owner)

    store.append_step = append_step  # type: ignore[method-assign]
    try:
        run()
    finally:
        del store.append_step
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--durability", choices=["full", "normal"], default="full")
    parser.add_argument("--top", type=int, default=20, help="functions to list")
    parser.add_argument("--dir", type=Path, default=REPO.parent, help="where the database goes")
    args = parser.parse_args(argv)
    durability: Literal["full", "normal"] = args.durability
    steps: int = args.steps

    workdir = Path(tempfile.mkdtemp(prefix="perdure-profile-", dir=args.dir))
    try:
        for label, workflow in (("sync", chain), ("async", achain)):
            db = workdir / f"{label}.db"
            with perdure.Engine(f"sqlite:///{db}", durability=durability) as engine:

                def run(wf: Callable[..., Any] = workflow, e: perdure.Engine = engine) -> object:
                    return e.run(wf, steps)

                print(f"\n== {label} workflow, {steps} steps, durability={durability!r}")
                run()  # warm-up
                gc.collect()
                per_thread(run, steps)
                writers = writer_threads(engine, run)
                print(f"  journal writes by thread: {dict(writers)}")
                profiled(run, steps, args.top)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n(pid {os.getpid()}, python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
