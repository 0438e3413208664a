"""What users need in their own tests: a fake clock that skips time, and offline replay
checks of exported runs (:func:`replay`, see docs/change-safety.md).

``Engine(url, clock=FakeClock())`` makes every engine wait (retry backoff, Retry-After,
deadlines) return at once while the clock jumps ahead, so a test of a one-hour backoff or a
3-day timeout takes milliseconds. The waits the engine asked for are kept in ``sleeps``.
"""

from __future__ import annotations

import asyncio
import threading
import time

from .._export import export_run, load_export
from ._replay import ReplayDivergence, ReplayReport, replay

__all__ = ["FakeClock", "ReplayDivergence", "ReplayReport", "export_run", "load_export", "replay"]


class FakeClock:
    """A clock that jumps forward whenever the engine sleeps (like trio's autojump clock).

    Args:
        start: the initial time in seconds since the epoch (default: the real time now).
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def time(self) -> float:
        """The fake time now."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        with self._lock:
            self._now += max(0.0, seconds)

    def sleep(self, seconds: float, wake: threading.Event) -> None:
        """Record the wait and jump ahead by it at once (unless ``wake`` is already set)."""
        if seconds <= 0 or wake.is_set():
            return
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds

    async def sleep_async(self, seconds: float) -> None:
        """Record the wait, jump ahead by it, and yield to the loop once."""
        if seconds > 0:
            with self._lock:
                self.sleeps.append(seconds)
                self._now += seconds
        await asyncio.sleep(0)
