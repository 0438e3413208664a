"""Time as the engine sees it: a ``Clock`` protocol and the system clock.

Backoff waits, retry times and deadlines read time only through the engine's clock, so a
test can swap in :class:`perdure.testing.FakeClock` and run a 3-day wait in milliseconds.
Journal timestamps (when a step started and finished) stay wall-clock times.
"""

from __future__ import annotations

import asyncio
import threading
import time
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
