"""Group commit: journal entries of concurrently running workflows committed together.

A durable commit costs one fsync (SQLite) or one WAL flush and round trip (PostgreSQL),
whatever it holds. When many workflows step at once, :class:`GroupCommit` lets them share it:
the first writer to arrive becomes the *leader* and commits its entries together with every
entry queued behind it, in one transaction; the writers that arrived meanwhile (the
*followers*) sleep until that transaction has committed, then return. When the leader is
done it hands leadership to the oldest writer still queued, so entries queued during one
commit ride the next one. A writer alone pays one commit and no waiting: sequential latency
is unchanged.

Nobody is released before its entry is durable: a follower returns only after the commit
holding its entry returned, and an entry whose transaction failed gets that failure. A
failure that is not the database being unavailable (a bad row) is isolated: the batch is
written again one entry at a time, so one bad entry fails only its own writer.

The store supplies ``write(items) -> outcomes``: one transaction over ``items``, one outcome
per item: an exception instance when the item was not written (with its reason), else the
item's result (None for a journal entry). Items may be of several kinds (journal entries,
workflow rows, outcomes): the store's ``write`` tells them apart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from .._errors import StoreUnavailableError
from ._protocol import OwnershipLost

P = TypeVar("P")

#: what happened to one entry: None (committed) or why it was not
Outcome = BaseException | None
#: what happened to one item of any kind: its result, or the exception saying why it failed
Result = Any


def step_not_recorded(workflow_id: str, key: str, owner: str) -> OwnershipLost:
    """The outcome of a fenced journal entry that did not insert."""
    return OwnershipLost(
        f"worker {owner} cannot record step {key} of workflow {workflow_id!r}: it no longer "
        "holds the workflow, or the step is recorded"
    )


class _Slot(Generic[P]):
    """One writer's entries, its outcomes once written, and the gate it sleeps on."""

    __slots__ = ("gate", "items", "lead", "outcomes")

    def __init__(self, items: Sequence[P]) -> None:
        self.items = items
        self.outcomes: list[Result] | None = None
        #: a follower's, taken when it queues and released to wake it (a bare lock: an
        #: Event's condition costs several times more per wake-up, paid by every step
        #: under concurrency); a leader never sleeps
        self.gate: threading.Lock | None = None
        self.lead = False  # woken to lead the next batch, not because it was written


class GroupCommit(Generic[P]):
    """Leader/follower group commit over ``write`` (see the module docs)."""

    def __init__(self, write: Callable[[list[P]], list[Result]], max_batch: int = 500) -> None:
        self._write = write
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Slot[P]] = []
        self._leading = False
        #: batches written and entries in them (read by benchmarks and tests)
        self.batches = 0
        self.entries = 0

    def submit(self, items: list[P]) -> list[Result]:
        """Write ``items`` durably, together with whatever other writers queued; their
        outcomes, in order. Returns only after the transaction holding them has ended."""
        with self._lock:
            if not self._leading:  # nobody writing: then nobody is queued either
                self._leading = True
                slot = None
            else:
                slot = _Slot(items)
                slot.gate = threading.Lock()
                slot.gate.acquire()
                self._queue.append(slot)
        if slot is None:
            if len(items) > self._max_batch:
                return self._lead(_Slot(items))
            return self._alone(items)
        assert slot.gate is not None
        slot.gate.acquire()  # until the leader releases it: written, or to lead
        if slot.lead:
            return self._lead(slot)
        assert slot.outcomes is not None
        return slot.outcomes

    def _alone(self, items: list[P]) -> list[Result]:
        """The common case of a workflow stepping by itself: its own transaction, no slot,
        no queue; whoever queued meanwhile leads next."""
        try:
            self.batches += 1
            self.entries += len(items)
            return self._isolated(items)
        finally:
            self._hand_over()

    def _lead(self, mine: _Slot[P]) -> list[Result]:
        """Write ``mine`` with everything queued behind it; hand over to the next writer."""
        with self._lock:
            queued, self._queue = self._queue, []
        try:
            self._settle([mine, *queued])
        finally:
            self._hand_over()
        assert mine.outcomes is not None
        return mine.outcomes

    def _hand_over(self) -> None:
        """Leadership to the oldest queued writer (woken to lead), or to whoever comes next."""
        with self._lock:
            successor = self._queue.pop(0) if self._queue else None
            if successor is None:
                self._leading = False
            else:
                successor.lead = True
        if successor is not None and successor.gate is not None:
            successor.gate.release()

    def _settle(self, batch: list[_Slot[P]]) -> None:
        """Write the batch's entries (in transactions of at most ``max_batch``) and release
        every follower in it with its outcomes."""
        items = [item for slot in batch for item in slot.items]
        outcomes: list[Result] = []
        try:
            for start in range(0, len(items), self._max_batch):
                outcomes += self._isolated(items[start : start + self._max_batch])
        except BaseException as exc:  # the leader's thread is dying: fail the rest with it
            outcomes += [exc] * (len(items) - len(outcomes))
            raise
        finally:
            self.batches += 1
            self.entries += len(items)
            at = 0
            for slot in batch:
                slot.outcomes = outcomes[at : at + len(slot.items)]
                at += len(slot.items)
                if slot.gate is not None and slot is not batch[0]:
                    slot.gate.release()

    def _isolated(self, items: list[P]) -> list[Result]:
        """One transaction over ``items``; if it fails for a reason other than the database
        being unavailable, each item again in a transaction of its own."""
        try:
            return self._write(items)
        except StoreUnavailableError as exc:
            return [exc] * len(items)
        except Exception as exc:
            if len(items) == 1:
                return [exc]
        outcomes: list[Result] = []
        for item in items:
            try:
                outcomes += self._write([item])
            except Exception as exc:
                outcomes.append(exc)
        return outcomes
