"""Helpers shared by the benchmark scripts and their child processes. Standard library only:
the DBOS child imports it from its own virtual environment."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory_total() -> str:
    """The machine's total RAM, as /proc/meminfo gives it, in GiB ("unknown" elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def filesystem(path: Path | str) -> str:
    """The device and filesystem type holding ``path`` (Linux: from /proc/mounts)."""
    best = ("", "unknown", "unknown")
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                device, mount_point, fs_type = line.split()[:3]
                inside = str(path) == mount_point or str(path).startswith(
                    mount_point.rstrip("/") + "/"
                )
                if inside and len(mount_point) >= len(best[0]):
                    best = (mount_point, device, fs_type)
    except OSError:
        pass
    return f"{best[1]} ({best[2]}, mounted on {best[0] or '?'})"


def emit(payload: dict[str, Any]) -> None:
    """Report a child's result to the parent (one line on stdout)."""
    print("RESULT " + json.dumps(payload), flush=True)


def run_many(
    run: Callable[[int], int], workflows: int, steps: int, inflight: int
) -> dict[str, Any]:
    """Run ``workflows`` workflows, ``inflight`` at a time; count results and failures."""
    lock = threading.Lock()
    state = {"next": 0, "ok": 0, "errors": 0}
    first_error: list[str] = []

    def worker() -> None:
        while True:
            with lock:
                if state["next"] >= workflows:
                    return
                state["next"] += 1
            try:
                good = run(steps) == steps
            except Exception as exc:
                good = False
                with lock:
                    if not first_error:
                        first_error.append(f"{type(exc).__name__}: {exc}")
            with lock:
                state["ok" if good else "errors"] += 1

    with ThreadPoolExecutor(max_workers=min(inflight, max(workflows, 1))) as pool:
        for _ in range(min(inflight, max(workflows, 1))):
            pool.submit(worker)
    return {"ok": state["ok"], "errors": state["errors"], "error": "; ".join(first_error)}


def serve(args: argparse.Namespace, run: Callable[[int], int], note: str = "") -> None:
    """A benchmark child's work, by ``args.mode``: ``setup`` (open, report), ``steps`` (one
    timed workflow of ``args.steps`` steps), ``count`` (run ``args.workflows`` untimed), or
    ``throughput`` (``args.workflows`` timed, ``args.inflight`` at a time). Timed modes print
    READY and wait for a line on stdin (the orchestrator's barrier), then report with
    :func:`emit` and wait for another line before returning."""
    if args.mode == "setup":
        emit({"ok": 1})
    elif args.mode == "steps":
        if run(args.steps) != args.steps:  # warm-up, untimed
            raise RuntimeError("warm-up returned a wrong result")
        print(f"READY {args.name}{note}", flush=True)
        sys.stdin.readline()  # the orchestrator starts its clocks, then sends a line
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = run(args.steps)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        emit({"wall": wall1 - wall0, "cpu": cpu1 - cpu0, "ok": int(result == args.steps)})
        sys.stdin.readline()  # stay connected until the orchestrator has read the server
    elif args.mode == "count":
        for _ in range(args.workflows):
            run(args.steps)
        emit({"ok": args.workflows})
    else:
        warm = run_many(run, args.warmup, args.steps, args.inflight)
        print(f"READY {args.name} warm-up ok={warm['ok']} errors={warm['errors']}", flush=True)
        sys.stdin.readline()  # the barrier: every worker starts on the same line
        wall0, cpu0 = time.perf_counter(), time.process_time()
        done = run_many(run, args.workflows, args.steps, args.inflight)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        emit({"wall": wall1 - wall0, "cpu": cpu1 - cpu0, **done})
        sys.stdin.readline()  # stay connected until the orchestrator has read the server


# -- shared by bench/compare.py and its `_sys_*.py` children (appended) ----------------------


def rss_mb() -> float:
    """This process's resident memory in MB (VmRSS from /proc/self/status; 0.0 elsewhere)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` (0..1) percentile of ``values``, nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[rank]


def database_url(server_url: str, name: str) -> str:
    """``server_url`` (``postgresql://user@host:port``, with or without a database) with its
    database replaced by ``name``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def recreate_pg_database(server_url: str, name: str) -> str:
    """Drop (terminating its sessions) and recreate the PostgreSQL database ``name`` on the
    server of ``server_url``; return its URL. Imports psycopg (both bench venvs have it)."""
    import psycopg

    with psycopg.connect(database_url(server_url, "postgres"), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    return database_url(server_url, name)


def child_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The command line every ``bench/_sys_*.py`` accepts (see /bench/compare.py): a
    scenario, then the common options and every scenario's sizes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("scenario", choices=["steps", "throughput", "recovery", "waiting", "agent"])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="folder for SQLite files")
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--sample", type=int, default=100)
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--llm-url", default="")
    return parser


def run_child(args: argparse.Namespace, module: dict[str, Any]) -> int:
    """A ``bench/_sys_*.py`` child's main: its recovery role (``--role start|resume``), else
    the scenario asked for, whose result it reports (see :func:`emit`). ``module`` is the
    child's ``globals()``: it holds ``recovery_start``, ``recovery_resume`` and
    ``scenario_<name>`` for each scenario it runs."""
    if args.role in ("start", "resume"):
        module[f"recovery_{args.role}"](args)
    else:
        emit(module[f"scenario_{args.scenario}"](args))
    return 0


class Recovered(NamedTuple):
    """What :func:`kill_and_recover` measured."""

    seconds: float  #: from spawning the recovering child to its DONE line (or its exit)
    child: dict[str, Any]  #: the recovering child's RESULT
    step1_before: int  #: step-1 executions logged before the kill
    step1_after: int  #: step-1 executions logged in all, after the recovery


def kill_and_recover(
    command: list[str],
    ready: Callable[[], bool],
    step1_log: Path,
    resume_args: Sequence[str] = (),
    timeout: float = 300.0,
) -> Recovered:
    """The recovery scenario's two children, for any system: ``command --role start`` runs
    the workflows until ``ready()`` says each has journaled step 1, then is SIGKILLed;
    ``command --role resume`` (with ``CMP_RECOVERING=1``) recovers them. The clock runs from
    spawning the second child to its ``DONE`` line, or to its exit if it prints none."""
    first = subprocess.Popen([*command, "--role", "start"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready():
        if first.poll() is not None:
            raise RuntimeError(f"the first child exited early ({first.returncode})")
        if time.monotonic() > deadline:
            first.kill()
            raise RuntimeError(f"the workflows did not all journal step 1 within {timeout:.0f} s")
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = len(step1_log.read_text().splitlines())

    wall0 = time.perf_counter()
    second = subprocess.Popen(
        [*command, "--role", "resume", *resume_args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "CMP_RECOVERING": "1"},
    )
    assert second.stdout is not None
    done: float | None = None
    lines = []
    for line in second.stdout:
        if line.startswith("DONE") and done is None:
            done = time.perf_counter() - wall0
        lines.append(line)
    second.wait()
    seconds = done if done is not None else time.perf_counter() - wall0
    if second.returncode != 0:
        raise RuntimeError(f"the recovering child failed ({second.returncode})")
    result = next(x for x in lines if x.startswith("RESULT ")).removeprefix("RESULT ")
    after = len(step1_log.read_text().splitlines())
    return Recovered(seconds, json.loads(result), before, after)


def timed(run: Callable[[], Any]) -> tuple[Any, float, float]:
    """``run()``'s result, its wall time and the process's CPU time (user + system, every
    thread) while it ran, in seconds."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = run()
    cpu1, wall1 = time.process_time(), time.perf_counter()
    return result, wall1 - wall0, cpu1 - cpu0


def lookup(n: int) -> dict[str, int]:
    """The agent scenario's tool, for the systems without a tool decorator of their own."""
    return {"n": n, "value": n * 2}


#: ``lookup``'s schema in the openai chat completions format
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a number up.",
            "parameters": {
                "type": "object",
                "properties": {"n": {"type": "integer"}},
                "required": ["n"],
            },
        },
    }
]


def throughput_summary(
    args: argparse.Namespace, done: dict[str, Any], wall: float, cpu: float
) -> dict[str, Any]:
    """The throughput scenario's figures from a timed :func:`run_many` (or equivalent)
    outcome ``done`` (its ``ok`` and ``errors`` counts; a first ``error`` is printed)."""
    if done.get("error"):
        print(f"first error: {done['error']}", file=sys.stderr)
    return {
        "workflows": args.workflows,
        "steps": args.steps,
        "concurrency": args.concurrency,
        "wall_s": wall,
        "cpu_s": cpu,
        "workflows_per_s": done["ok"] / wall,
        "steps_per_s": done["ok"] * args.steps / wall,
        "ok": done["ok"],
        "errors": done["errors"],
    }
