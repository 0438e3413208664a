"""A bounded pool of daemon threads.

``concurrent.futures.ThreadPoolExecutor`` joins its threads at interpreter exit, so one sync
step blocked forever would keep a process from exiting. A stopping engine must never hang on
a workflow: these threads are daemons, and whatever they were doing resumes from the journal
in the next process.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class DaemonPool(Executor):
    """Runs submitted callables on at most ``max_threads`` daemon threads, started on demand."""

    def __init__(self, max_threads: int, name: str) -> None:
        self._max = max_threads
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._shutdown = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Queue ``fn(*args, **kwargs)``; a thread starts if none is idle and the cap allows."""
        future: Future[T] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError(f"{self._name} pool is shut down")
            self._queue.put((future, lambda: fn(*args, **kwargs)))
            if self._idle == 0 and self._threads < self._max:
                self._threads += 1
                threading.Thread(
                    target=self._work, name=f"{self._name}-{self._threads}", daemon=True
                ).start()
            else:
                self._idle -= 1 if self._idle else 0
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, call = item
            if not future.set_running_or_notify_cancel():
                self._mark_idle()
                continue
            try:
                result = call()
            except BaseException as exc:
                self._mark_idle()
                future.set_exception(exc)
            else:
                # Count this thread idle before waking the caller, whose next submit must
                # reuse it rather than start another thread.
                self._mark_idle()
                future.set_result(result)

    def _mark_idle(self) -> None:
        with self._lock:
            self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; idle threads exit. Busy threads are never waited for."""
        with self._lock:
            self._shutdown = True
            for _ in range(self._threads):
                self._queue.put(None)
