"""Time as the engine sees it: a ``Clock`` protocol and the system clock.

Backoff waits, retry times, timers and deadlines read time only through the engine's clock,
so a test can swap in :class:`perdure.testing.FakeClock` and run a 3-day wait in
milliseconds. Journal timestamps (when a step started and finished) stay wall-clock times.

On a shared database the engine's default clock is the system clock corrected by the
database server's offset (:class:`DatabaseClock`), so timers set by one worker fire on time
in another whose own clock is skewed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """What the engine needs of time."""

    def time(self) -> float:
        """Seconds since the epoch, now."""

    def sleep(self, seconds: float, wake: threading.Event) -> None:
        """Block for ``seconds``, or until ``wake`` is set, whichever comes first."""

    async def sleep_async(self, seconds: float) -> None:
        """Wait ``seconds`` without blocking the event loop (cancellable)."""


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        """Seconds since the epoch, now."""
        return time.time()

    def sleep(self, seconds: float, wake: threading.Event) -> None:
        """Block for ``seconds`` or until ``wake`` is set."""
        if seconds > 0:
            wake.wait(seconds)

    async def sleep_async(self, seconds: float) -> None:
        """Wait ``seconds`` on the event loop."""
        if seconds > 0:
            await asyncio.sleep(seconds)


class DatabaseClock(SystemClock):
    """The system clock shifted to agree with the database server's clock.

    ``offset`` (seconds to add to this machine's clock) is measured when the engine opens and
    again at every heartbeat; between measurements time runs at this machine's rate.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        """Seconds since the epoch by the database's clock, now."""
        return time.time() + self.offset

    def measure(self, read_database_time: Callable[[], float | None]) -> None:
        """Set the offset from one reading of the database's clock (the midpoint of the
        round trip stands for the moment it was read); no change if it cannot tell."""
        before = time.time()
        remote = read_database_time()
        after = time.time()
        if remote is not None:
            self.offset = remote - (before + after) / 2
