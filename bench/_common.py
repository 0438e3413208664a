"""Helpers shared by the benchmark scripts and their child processes. Standard library only:
the DBOS child imports it from its own virtual environment."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


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
