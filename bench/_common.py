"""Helpers shared by the benchmark scripts and their child processes. Standard library only:
the DBOS child imports it from its own virtual environment."""

from __future__ import annotations

import json
import platform
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
