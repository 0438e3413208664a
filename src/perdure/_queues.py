"""Queues: workflows that wait to be admitted under limits every worker respects.

A :class:`Queue` is declared at module level, like a workflow, in every process that runs
its workflows (and optionally in processes that only enqueue). ``engine.enqueue(queue, fn,
...)`` records a workflow as ENQUEUED; workers take queued workflows off the queue as its
limits allow (in the engine's waker), and then run them like any other. The limits are
enforced by the database in the same transaction that takes work off the queue, so they hold
across all workers and machines sharing the database.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ._errors import ConfigurationError
from .store import QueueLimits


@dataclass(frozen=True)
class Queue:
    """A named queue of workflows with limits shared by every worker.

    Args:
        name: the queue's name, stored with each queued workflow.
        concurrency: the most workflows of this queue running at once across all workers.
            A workflow holds its slot from the moment a worker takes it off the queue until it
            finishes, including while it sleeps or waits for a message (None: no limit).
        worker_concurrency: the most that one worker (engine) runs at once (None: no limit
            but the engine's own capacity).
        rate_limit: ``(n, per_seconds)``: at most ``n`` workflows are taken off the queue in
            any window of ``per_seconds`` (database clock), e.g. ``(50, 60.0)`` to stay under
            an LLM provider's requests per minute.
        priority: whether ``engine.enqueue(..., priority=p)`` orders the queue: lower numbers
            run first, then the oldest; without it the queue is first in, first out.

    Declare each queue once per process, at module level, with the same settings in every
    process: a second declaration of the same name with other settings is refused.

    Raises:
        ConfigurationError: a limit is not a positive number, or the name is taken by a
            queue with other settings.
    """

    name: str
    concurrency: int | None = None
    worker_concurrency: int | None = None
    rate_limit: tuple[int, float] | None = None
    priority: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > 255:
            raise ConfigurationError(f"a queue name is 1 to 255 characters, not {self.name!r}")
        for label, value in (("concurrency", self.concurrency),
                             ("worker_concurrency", self.worker_concurrency)):  # fmt: skip
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigurationError(
                    f"queue {self.name!r}: {label} must be a positive integer, not {value!r}"
                )
        if self.rate_limit is not None:
            count, per = self.rate_limit
            if not isinstance(count, int) or count < 1 or not per > 0:
                raise ConfigurationError(
                    f"queue {self.name!r}: rate_limit is (n, per_seconds) with n >= 1 and "
                    f"per_seconds > 0, not {self.rate_limit!r}"
                )
        _register(self)

    @property
    def limits(self) -> QueueLimits:
        """The limits, as the store takes them."""
        return QueueLimits(self.concurrency, self.worker_concurrency, self.rate_limit)


_queues: dict[str, Queue] = {}
_lock = threading.Lock()


def _register(queue: Queue) -> None:
    with _lock:
        known = _queues.get(queue.name)
        if known is not None and known != queue:
            raise ConfigurationError(
                f"queue {queue.name!r} is already declared with other settings ({known}); "
                "declare each queue once, with the same settings in every process"
            )
        _queues[queue.name] = queue


def registered_queues() -> list[Queue]:
    """Every queue declared in this process."""
    return list(_queues.values())


def resolve_queue(queue: Queue | str) -> tuple[str, Queue | None]:
    """A queue's name, and its declaration in this process if there is one."""
    if isinstance(queue, Queue):
        return queue.name, queue
    if not isinstance(queue, str) or not queue:
        raise ConfigurationError(f"pass a perdure.Queue or a queue's name, not {queue!r}")
    return queue, _queues.get(queue)
