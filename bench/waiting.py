"""Many workflows waiting for approval at once: threads, memory, and wake-up latency.

Run from the repository root::

    python bench/waiting.py [--n 10000] [--sample 1000] [--durability full|normal] [--dir PATH]

One process, one ``perdure.Engine`` on a fresh SQLite file (in a temporary folder beside the
repository by default, so on the repository's filesystem), engine defaults otherwise. Every
workflow runs a step, then ``perdure.wait_for_approval("ok", details=...)``, then a step
that records ``time.time()`` when it runs.

1. Warm-up: 100 workflows go through the whole cycle (start, wait, approve, finish), so the
   engine's threads, connection and caches exist before anything is measured. ``gc.collect()``,
   then the baseline: OS threads and VmRSS from ``/proc/self/status``.
2. ``--n`` workflows are started and the script waits until all of them are WAITING (counted
   with a read-only sqlite3 connection of its own, opened before the baseline). Measured with
   all of them waiting, after ``gc.collect()``: VmRSS, threads, and how many threads are
   executing a workflow's code at that moment (``sys._current_frames``).
   Then the process sleeps ``--idle`` seconds (5) and its CPU time is read: what the engine
   costs while everything waits (its waker polls the database every 0.1 s).
3. Wake-up latency: ``--sample`` of the waiting workflows, chosen at random, are approved one
   at a time with ``engine.approve(id, "ok", by="bench")``; latency = the time the next step
   recorded minus ``time.time()`` just before ``approve()``. Each woken workflow is waited for
   (to its end) before the next approval, so this is latency, not throughput.
4. Throughput: the rest are approved in a loop; the time until all have finished.

Threads are sampled throughout (peak). Memory per waiting workflow = (VmRSS with all N
waiting - VmRSS at the baseline) / N. VmRSS is the whole process: Python objects, freed memory
the allocators keep, and SQLite's own heap (its page cache: up to 2 MB per connection by
default) are all in it; the script also prints SQLite's heap and the Python heap separately.

Targets (issue "Suspend and resume"): waiting workflows hold no thread (no thread is inside a
workflow while all wait, and the peak thread count stays within the engine's fixed threads,
independent of N); memory grows by < 5 KB per waiting workflow; wake-up p50 < 50 ms.
The exit status is 0 whether or not the targets are met: this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import perdure
from _common import cpu_model, filesystem

REPO = Path(__file__).resolve().parent.parent
MEMORY_TARGET = 5 * 1024  # bytes per waiting workflow
P50_TARGET = 0.050  # seconds
WARMUP = 100
ENGINE_THREADS = 4  # maintenance, waker, event loop, I/O: the engine's fixed threads

# -- the workflow ----------------------------------------------------------------------------

WOKE: dict[str, float] = {}  # workflow id -> time.time() when the step after approval ran
WOKE_LOCK = threading.Condition()


@perdure.step(name="bench.waiting.prepare")
def prepare(amount: int) -> int:
    return amount


@perdure.step(name="bench.waiting.after")
def after_approval() -> float:
    now = time.time()
    with WOKE_LOCK:
        WOKE[perdure.workflow_id()] = now
        WOKE_LOCK.notify_all()
    return now


@perdure.workflow(name="bench.waiting.approval")
def approval_flow(amount: int) -> bool:
    prepare(amount)
    decision = perdure.wait_for_approval("ok", details={"amount": amount, "to": "ACME Ltd"})
    after_approval()
    return decision.approved


def threads_in_workflows() -> int:
    """How many threads are executing the workflow function right now."""
    count = 0
    for frame in sys._current_frames().values():
        f: Any = frame
        while f is not None:
            if f.f_code.co_name == "approval_flow" and f.f_code.co_filename == __file__:
                count += 1
                break
            f = f.f_back
    return count


# -- process measurements --------------------------------------------------------------------


def proc_status(field_name: str) -> int:
    """An integer field of /proc/self/status (VmRSS in kB, Threads)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field_name} in /proc/self/status")


def rss_bytes() -> int:
    return proc_status("VmRSS") * 1024


def _sqlite_memory_used() -> Callable[[], int] | None:
    """SQLite's own heap (page caches, statements), from the library the stdlib module uses."""
    try:
        lib = ctypes.CDLL("libsqlite3.so.0")  # the copy _sqlite3 already loaded (dlopen)
        fn = lib.sqlite3_memory_used
        fn.restype = ctypes.c_int64
        fn.argtypes = []
    except (OSError, AttributeError):
        return None
    return lambda: int(fn())


sqlite_memory_used = _sqlite_memory_used()


def malloc_trim() -> bool:
    """Return freed C-heap memory to the OS (glibc), to see what the allocators retain."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


@dataclass
class Threads:
    """Thread counts: OS threads (/proc/self/status) and Python's threading.active_count()."""

    peak_os: int = 0
    peak_py: int = 0
    snapshots: dict[str, tuple[int, int]] = field(default_factory=dict)

    def sample(self) -> tuple[int, int]:
        os_threads, py_threads = proc_status("Threads"), threading.active_count()
        self.peak_os = max(self.peak_os, os_threads)
        self.peak_py = max(self.peak_py, py_threads)
        return os_threads, py_threads

    def snap(self, label: str) -> None:
        self.snapshots[label] = self.sample()


@dataclass
class Memory:
    rss: int
    sqlite: int | None
    py_blocks: int

    @staticmethod
    def now() -> Memory:
        gc.collect()
        used = sqlite_memory_used() if sqlite_memory_used is not None else None
        return Memory(rss_bytes(), used, sys.getallocatedblocks())


# -- the run ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, engine: perdure.Engine, db: Path, threads: Threads, timeout: float):
        self.engine = engine
        self.threads = threads
        self.timeout = timeout
        # The script's own read-only connection, opened before the baseline, with a small
        # page cache so its memory barely moves.
        self.ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
        self.ro.execute("PRAGMA cache_size=-64")

    def count(self, status: str) -> int:
        sql = "SELECT COUNT(*) FROM workflows WHERE status = ?"
        return int(self.ro.execute(sql, (status,)).fetchone()[0])

    def failed(self) -> int:
        sql = "SELECT COUNT(*) FROM workflows WHERE status IN ('ERROR', 'CANCELLED', 'DEAD_LETTER')"
        return int(self.ro.execute(sql).fetchone()[0])

    def wait_for(self, what: str, done: Callable[[], bool], progress: Callable[[], str]) -> float:
        """Poll until done(); returns seconds waited. Samples threads on the way."""
        start = time.perf_counter()
        last_report = start
        while not done():
            self.threads.sample()
            if self.failed():
                raise RuntimeError(f"{what}: {self.failed()} workflow(s) ended in failure")
            now = time.perf_counter()
            if now - start > self.timeout:
                raise TimeoutError(f"{what}: not done after {self.timeout:.0f} s ({progress()})")
            if now - last_report > 10:
                print(f"    ... {what}: {progress()} after {now - start:.0f} s", flush=True)
                last_report = now
            time.sleep(0.01)
        return time.perf_counter() - start

    def start(self, ids: list[str]) -> float:
        start = time.perf_counter()
        for i, workflow_id in enumerate(ids):
            self.engine.start(approval_flow, 100 + i % 900, id=workflow_id)
            if i % 100 == 0:
                self.threads.sample()
        return time.perf_counter() - start

    def approve_one(self, workflow_id: str) -> tuple[float, float]:
        """Approve and wait for the step after the approval; (latency, approve() call time)."""
        wall0 = time.time()
        call0 = time.perf_counter()
        self.engine.approve(workflow_id, "ok", by="bench")
        call = time.perf_counter() - call0
        with WOKE_LOCK:
            if not WOKE_LOCK.wait_for(lambda: workflow_id in WOKE, timeout=self.timeout):
                raise TimeoutError(f"{workflow_id} did not wake within {self.timeout:.0f} s")
            woke = WOKE[workflow_id]
        self.engine.handle(workflow_id).result(timeout=self.timeout)
        self.threads.sample()
        return woke - wall0, call


def warm_up(bench: Bench) -> None:
    ids = [f"warm-{i:05d}" for i in range(WARMUP)]
    bench.start(ids)
    bench.wait_for("warm-up waiting", lambda: bench.count("WAITING") >= WARMUP, lambda: "")
    for workflow_id in ids:
        bench.engine.approve(workflow_id, "ok", by="bench")
    bench.wait_for("warm-up finishing", lambda: bench.count("SUCCESS") >= WARMUP, lambda: "")


@dataclass
class Results:
    n: int
    durability: str
    max_threads: int
    start_s: float = 0.0
    until_waiting_s: float = 0.0
    before: Memory | None = None
    waiting: Memory | None = None
    waiting_trimmed_rss: int | None = None
    idle_cpu: float | None = None  # CPU seconds per second while everything waits
    in_workflow_while_waiting: int = -1
    latencies: list[float] = field(default_factory=list)
    approve_calls: list[float] = field(default_factory=list)
    bulk_count: int = 0
    bulk_approve_s: float = 0.0
    bulk_total_s: float = 0.0
    db_bytes: int = 0


def run(args: argparse.Namespace, workdir: Path) -> tuple[Results, Threads]:
    db = workdir / "waiting.db"
    threads = Threads()
    res = Results(args.n, args.durability, args.max_threads)
    rng = random.Random(args.seed)
    ids = [f"wf-{i:06d}" for i in range(args.n)]  # made before the baseline: not counted
    sample = rng.sample(ids, min(args.sample, args.n))
    sampled = set(sample)
    rest = [i for i in ids if i not in sampled]
    threads.snap("before the engine")

    engine = perdure.Engine(
        f"sqlite:///{db}", durability=args.durability, max_threads=args.max_threads
    )
    with engine:
        bench = Bench(engine, db, threads, args.timeout)
        t0 = time.perf_counter()
        warm_up(bench)
        print(f"  warm-up: {WARMUP} workflows through the whole cycle in "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        threads.snap("idle (0 waiting)")
        res.before = Memory.now()

        print(f"  starting {args.n} workflows ...", flush=True)
        res.start_s = bench.start(ids)
        print(f"  start() x {args.n}: {res.start_s:.1f} s; waiting for all to be WAITING ...",
              flush=True)  # fmt: skip
        res.until_waiting_s = bench.wait_for(
            "all waiting",
            lambda: bench.count("WAITING") >= args.n,
            lambda: f"{bench.count('WAITING')} of {args.n} waiting",
        )
        print(f"  all {args.n} WAITING {res.until_waiting_s:.1f} s after the last start()")
        res.waiting = Memory.now()
        threads.snap(f"{args.n} waiting")
        res.in_workflow_while_waiting = threads_in_workflows()
        if malloc_trim():
            res.waiting_trimmed_rss = rss_bytes()
        if args.idle > 0:  # the engine alone, with everything waiting: its polling cost
            cpu0, wall0 = time.process_time(), time.perf_counter()
            time.sleep(args.idle)
            res.idle_cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)

        print(f"  approving {len(sample)} one at a time ...", flush=True)
        for k, workflow_id in enumerate(sample):
            latency, call = bench.approve_one(workflow_id)
            res.latencies.append(latency)
            res.approve_calls.append(call)
            if (k + 1) % 250 == 0:
                print(f"    ... {k + 1} approved", flush=True)

        print(f"  approving the other {len(rest)} in a loop ...", flush=True)
        res.bulk_count = len(rest)
        bulk0 = time.perf_counter()
        for k, workflow_id in enumerate(rest):
            engine.approve(workflow_id, "ok", by="bench")
            if k % 100 == 0:
                threads.sample()
        res.bulk_approve_s = time.perf_counter() - bulk0
        total = WARMUP + args.n
        bench.wait_for(
            "all finished",
            lambda: bench.count("SUCCESS") >= total,
            lambda: f"{bench.count('SUCCESS') - WARMUP} of {args.n} finished",
        )
        res.bulk_total_s = time.perf_counter() - bulk0
        threads.snap("after (all finished)")
        bench.ro.close()
    res.db_bytes = sum(
        os.path.getsize(f"{db}{suffix}")
        for suffix in ("", "-wal")
        if Path(f"{db}{suffix}").exists()
    )
    return res, threads


# -- reporting -------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(res: Results, threads: Threads) -> None:
    n = res.n
    assert res.before is not None and res.waiting is not None
    print(f"\n{n} workflows waiting for approval, durability={res.durability!r}, "
          f"max_threads={res.max_threads}")  # fmt: skip
    print(f"  start() x {n}: {res.start_s:.1f} s ({n / res.start_s:,.0f}/s); all WAITING "
          f"{res.until_waiting_s:.1f} s later ({n / (res.start_s + res.until_waiting_s):,.0f} "
          "workflows/s from first start() to all waiting)")  # fmt: skip

    print("\nthreads (OS threads from /proc/self/status; Python threads in parentheses)")
    for label, (os_threads, py_threads) in threads.snapshots.items():
        print(f"  {label:<28} {os_threads:>5}  ({py_threads})")
    print(f"  {'peak, whole run':<28} {threads.peak_os:>5}  ({threads.peak_py})")
    print(f"  threads executing a workflow while all {n} wait: {res.in_workflow_while_waiting}")

    rss_delta = res.waiting.rss - res.before.rss
    per_wf = rss_delta / n
    print("\nmemory (gc.collect() before each reading)")
    print(f"  VmRSS, baseline (engine open, warm-up done)  {res.before.rss / 2**20:8.1f} MiB")
    label = f"VmRSS, {n} waiting"
    print(f"  {label:<44} {res.waiting.rss / 2**20:8.1f} MiB   +{rss_delta / 2**20:.1f} MiB = "
          f"{per_wf:,.0f} bytes per waiting workflow")  # fmt: skip
    if res.waiting_trimmed_rss is not None:
        trimmed = res.waiting_trimmed_rss - res.before.rss
        print(f"  VmRSS after malloc_trim(0)                   "
              f"{res.waiting_trimmed_rss / 2**20:8.1f} MiB   +{trimmed / 2**20:.1f} MiB = "
              f"{trimmed / n:,.0f} bytes per waiting workflow (freed heap given back)")  # fmt: skip
    if res.before.sqlite is not None and res.waiting.sqlite is not None:
        sq = res.waiting.sqlite - res.before.sqlite
        print(f"  SQLite's own heap (in VmRSS; page caches)   "
              f"{res.before.sqlite / 2**20:8.1f} -> {res.waiting.sqlite / 2**20:.1f} MiB "
              f"(+{sq / n:,.0f} bytes per workflow; bounded by cache_size, not N)")  # fmt: skip
    blocks = res.waiting.py_blocks - res.before.py_blocks
    print(f"  Python objects alive (sys.getallocatedblocks) +{blocks:,} blocks = "
          f"{blocks / n:.1f} per waiting workflow")  # fmt: skip
    print(
        f"  database file + WAL at the end: {res.db_bytes / 2**20:.1f} MiB "
        f"({res.db_bytes / (n + WARMUP):,.0f} bytes per finished workflow, on disk)"
    )

    if res.idle_cpu is not None:
        print(
            f"\nidle CPU while all {n} wait (nothing else running): {res.idle_cpu * 100:.1f} % "
            "of one core (the engine's waker poll and heartbeat)"
        )

    lat = res.latencies
    p50, p90, p99 = (quantile(lat, q) for q in (0.50, 0.90, 0.99))
    print(f"\nwake-up latency, approve() -> next step, {len(lat)} approvals one at a time "
          f"(the others still waiting)")  # fmt: skip
    print(
        f"  p50 {ms(p50)}   p90 {ms(p90)}   p99 {ms(p99)}   max {ms(max(lat))}   "
        f"mean {ms(statistics.fmean(lat))}"
    )
    calls = res.approve_calls
    print(
        f"  of which the approve() call itself: p50 {ms(quantile(calls, 0.5))}, "
        f"p99 {ms(quantile(calls, 0.99))}"
    )
    if res.bulk_count:
        print(f"\nbulk: {res.bulk_count} approve() calls in {res.bulk_approve_s:.1f} s; all "
              f"finished {res.bulk_total_s:.1f} s after the first "
              f"({res.bulk_count / res.bulk_total_s:,.0f} workflows/s)")  # fmt: skip

    cap = threads.snapshots["before the engine"][0] + ENGINE_THREADS + res.max_threads
    no_thread = res.in_workflow_while_waiting == 0 and threads.peak_os <= cap
    mem_ok = per_wf < MEMORY_TARGET
    lat_ok = p50 < P50_TARGET
    print("\ntargets")
    print(f"  {'waiting workflows hold no thread':<36} {res.in_workflow_while_waiting} threads in "
          f"a workflow while {n} wait; peak {threads.peak_os} OS threads <= {cap} (before "
          f"{threads.snapshots['before the engine'][0]} + {ENGINE_THREADS} engine + "
          f"max_threads {res.max_threads})   {verdict(no_thread)}")  # fmt: skip
    print(f"  {'memory per waiting workflow < 5 KB':<36} {per_wf:,.0f} bytes   {verdict(mem_ok)}")
    print(f"  {'wake-up p50 < 50 ms':<36} {ms(p50)} (p99 {ms(p99)})   {verdict(lat_ok)}")
    met = no_thread and mem_ok and lat_ok
    print(f"\nRESULT: {'all targets met' if met else 'targets MISSED (see MISS above)'}")


# -- the machine (as in step_overhead.py, which this script does not import: importing it
# would register its workflows in this process) ---------------------------------------------


def describe(workdir: Path, args: argparse.Namespace) -> None:
    same = os.stat(workdir).st_dev == os.stat(REPO).st_dev
    print("perdure waiting-workflows benchmark")
    print(f"  python   {sys.version.split()[0]} ({sys.executable})")
    print(f"  sqlite   {sqlite3.sqlite_version}")
    print(f"  perdure  {perdure.__version__}")
    print(f"  cpu      {cpu_model()}, {os.cpu_count()} logical cores")
    print(f"  tempdir  {workdir}")
    print(f"  disk     {filesystem(workdir)}; same filesystem as the repo: {same}")
    print(f"  n={args.n} sample={args.sample} durability={args.durability} seed={args.seed}")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=positive, default=10_000, help="workflows waiting at once")
    parser.add_argument(
        "--sample", type=positive, default=1000, help="approvals timed one at a time"
    )
    parser.add_argument("--durability", choices=("full", "normal"), default="full")
    parser.add_argument(
        "--max-threads", type=positive, default=64, help="the engine's max_threads (default 64)"
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=5.0,
        help="seconds to measure the process's CPU use while all wait (0: skip)",
    )
    parser.add_argument("--seed", type=int, default=1, help="which workflows are sampled")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="give up a phase after this many seconds"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=REPO.parent,
        help="where the temporary folder goes (default: beside the repository, i.e. on its "
        "filesystem; avoid tmpfs, which measures memory, not a disk)",
    )
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="perdure-bench-", dir=args.dir)).resolve()
    try:
        describe(workdir, args)
        wall0 = time.perf_counter()
        res, threads = run(args, workdir)
        report(res, threads)
        print(f"\n(whole run {time.perf_counter() - wall0:.0f} s)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
