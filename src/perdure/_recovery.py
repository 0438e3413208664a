"""Recovery and wake-ups: the engine's background work.

The maintenance thread renews this worker's heartbeat and periodically takes over workflows
whose worker died or stopped (:meth:`Recovery.recover`); the waker thread resumes waiting
workflows whose timer is due or whose message came, and takes queued workflows off their
queues. Both take only workflows this engine can run: registered names, accepted code
versions (:mod:`perdure._versions`), and no more than its free capacity.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from . import _failpoints
from ._clock import Clock, DatabaseClock
from ._decorators import registered, registered_names
from ._errors import (
    DeadLetteredError,
    EngineClosedError,
    PerdureError,
    SerializationError,
    UnknownWorkflowError,
    WorkflowInterrupted,
)
from ._handle import WorkflowHandle
from ._queues import registered_queues
from ._records import decode_inputs
from ._runs import Runner
from ._serialize import dumps_error
from ._versions import Versions
from ._workers import dead_workers
from .store import Lease, Store, WorkerRow, WorkflowRow, WorkflowStatus

if TYPE_CHECKING:
    from ._engine import Engine

log = logging.getLogger("perdure")


class Recovery:
    """The engine's recovery, wake-up and maintenance loops (a part of
    :class:`perdure.Engine`)."""

    clock: Clock
    _database_clock: DatabaseClock
    versions: Versions
    worker: WorkerRow
    _runner: Runner
    _store: Store | None
    _closing: threading.Event
    _wake: threading.Event
    _poll_interval: float | None
    _max_threads: int
    _backlog: bool
    _dead: list[str]
    _claiming: threading.Lock
    _lease: float
    _max_recoveries: int
    _heartbeat_interval: float
    _recovery_interval: float
    _auto_recover: bool
    _reported: dict[str, float]
    _unreleased: dict[str, tuple[Lease, bool]]

    @property
    def store(self) -> Store:
        raise NotImplementedError

    def _measure_clock(self) -> None:
        raise NotImplementedError

    def _signal_cancel(self, workflow_id: str) -> None:
        raise NotImplementedError

    def _wake_loop(self) -> None:
        """Resume WAITING workflows whose timer is due, whose message came, or that were
        cancelled: at once when this engine sent the message, else every poll interval."""
        while not self._closing.is_set():
            try:
                names = registered_names()
                versions = self.versions.accepted(names)
                now = self.clock.time()
                room = min(500, self._max_threads - self._runner.running())
                if room > 0:  # only what can start now (see recover)
                    ready = self.store.claim_ready(self.worker.id, names, now, room, versions)
                    for row in ready:
                        self._resume(row)
                self._dispatch(names)
                if self._backlog and self._auto_recover:
                    self._take_backlog(names, versions)
                due = self.store.next_wake(names, versions)
            except EngineClosedError:
                return
            except BaseException as exc:  # the waker must outlive any one failure
                if self._closing.is_set():
                    return
                log.warning("perdure: waking waiting workflows failed, retrying: %s", exc)
                due = None
            wait = self._poll_interval or 0.1
            if due is not None:
                wait = min(wait, max(0.0, due - self.clock.time()))
            self._wake.wait(wait)
            self._wake.clear()

    def _dispatch(self, names: list[str]) -> None:
        """Take workflows off the queues declared here, as their limits and this engine's
        free capacity allow, and run them."""
        stamp = self.versions.stamp(names)
        for queue in registered_queues():
            room = min(100, self._max_threads - self._runner.running())
            if room <= 0:
                return
            taken = self.store.dequeue(self.worker.id, queue.name, names, room, queue.limits, stamp)
            for row in taken:
                self._resume(row, fresh=True)

    def _slot_freed(self, queued: bool) -> None:
        """A run ended: wake the waker if the slot can take queued or recovered work."""
        if queued or self._backlog:
            self._wake.set()

    # -- recovery --------------------------------------------------------------------------

    def recover(self) -> list[WorkflowHandle[Any]]:
        """Take over and resume unfinished workflows whose worker died or stopped.

        Runs by itself when the engine opens and every ``recovery_interval`` seconds. Each
        call takes at most what this engine can start at once (``max_threads`` minus what it
        runs), so the work of a dead worker spreads over the live ones instead of piling onto
        the first to look; while a backlog remains, more is taken as runs end here (and at
        every heartbeat). Workflows whose name is not registered here are left alone and
        logged as errors.

        Returns:
            Handles on the workflows this call resumed.
        """
        store = self.store
        workers = store.list_workers()
        dead = dead_workers(workers, self.worker)
        handles: list[WorkflowHandle[Any]] = []
        # Take only what can start now: a workflow claimed but left waiting for a thread
        # would count as a stall if this worker died too, and could be dead-lettered
        # without ever having run.
        names = registered_names()
        versions = self.versions.accepted(names)
        self._dead = dead
        for row in self._claim_dead(names, versions, 1):
            if self._resume(row):
                handles.append(WorkflowHandle(cast("Engine", self), row.id))
        self._release_strays()
        self._report_unregistered(dead)
        long_gone = self._database_clock.time() - 10 * self._lease
        expired = [w.id for w in workers if w.expires_at < long_gone]
        store.forget_workers(dead + expired)
        return handles

    def _take_backlog(self, names: list[str], versions: frozenset[str] | None) -> None:
        """Take more of what the last sweep left (it took all it had room for) as runs end
        here, a quarter of ``max_threads`` at a time, instead of waiting for the next sweep:
        a dead worker's thousand workflows are resumed at the pace they finish."""
        for row in self._claim_dead(names, versions, max(1, self._max_threads // 4)):
            self._resume(row)

    def _claim_dead(
        self, names: list[str], versions: frozenset[str] | None, at_least: int
    ) -> list[WorkflowRow]:
        """Claim workflows of the dead workers the last sweep found, as many as can start now
        (none unless ``at_least`` slots are free), and note whether some may remain."""
        with self._claiming:
            room = self._max_threads - self._runner.running()
            if room < at_least:
                self._backlog = self._backlog or room <= 0
                return []
            claimed = self.store.claim(self.worker.id, names, self._dead, room, None, versions)
            self._backlog = len(claimed) == room
            return claimed

    def _first_recovery(self) -> None:
        """The sweep made when the engine opens. Its failure (the database briefly locked or
        unreachable, a row it could not take) does not stop the engine from opening: like
        any failed sweep it is logged and made again at the next heartbeat."""
        try:
            self.recover()
        except Exception as exc:
            log.warning("perdure: recovering unfinished workflows failed, retrying: %s", exc)
            self._backlog = True  # the maintenance loop sweeps at its next heartbeat

    def _release_strays(self) -> None:
        """Give back workflows the database says this engine holds but it does not run: a
        claim whose acknowledgement was lost with the connection (the claim committed, the
        engine never learned it). Left alone, they would wait for this worker to die."""
        # Rows carry the database's time: never the workflows' clock, which a FakeClock moves
        # ahead, making a row created a moment ago (its run about to be registered) look old.
        cutoff = self._database_clock.time() - self._lease
        for row in self.store.owned(self.worker.id):
            lease = row.lease
            if (row.status is WorkflowStatus.RUNNING and row.updated_at < cutoff
                    and lease is not None and not self._runner.held(row.id)):  # fmt: skip
                log.warning("perdure: workflow %r was held but not run here; releasing it", row.id)
                self._give_back(row.id, lease)

    def _claim_and_launch(self, workflow_id: str) -> None:
        names = registered_names()
        versions = self.versions.accepted(names)
        for row in self.store.claim(self.worker.id, names, [], 1, workflow_id, versions):
            self._resume(row)

    def _resume(self, row: WorkflowRow, fresh: bool = False) -> bool:
        """Launch a claimed workflow (``fresh``: it never ran, its journal is empty); on any
        failure give it back. Returns whether launched."""
        lease = row.lease
        assert lease is not None
        if _failpoints.ARMED:
            _failpoints.hit("workflow.launch")
        if row.stalls > self._max_recoveries:
            self._dead_letter(row, lease)
            return False
        try:
            spec = registered(row.name)
            if spec is None:
                raise UnknownWorkflowError(row.name, " (it was unregistered during recovery)")
            try:
                args, kwargs = decode_inputs(row.inputs, spec.hints())
            except SerializationError as exc:
                error = SerializationError(
                    f"workflow {row.id!r} ({row.name}) cannot read its stored inputs: {exc}"
                )
                log.error("perdure: %s", error)
                self._runner.finish(row.id, lease, (WorkflowStatus.ERROR, None, dumps_error(error)))
                return False
            log.info("perdure: resuming workflow %r (%s)", row.id, row.name)
            self._runner.launch(spec, row, args, kwargs, fresh=fresh)
            return True
        except BaseException as exc:
            log.warning("perdure: could not resume %r, giving it back: %s", row.id, exc)
            self._give_back(row.id, lease)
            return False

    def _dead_letter(self, row: WorkflowRow, lease: Lease) -> None:
        error = DeadLetteredError(
            f"workflow {row.id!r} ({row.name}) was taken over {row.stalls} times in a row after "
            f"its worker died, without journaling a single step in between (limit "
            f"{self._max_recoveries}): it keeps killing the processes that run it, so it is not "
            "run again. Its journal is intact: fix the cause, then engine.resume(id)"
        )
        log.error("perdure: %s", error)
        try:
            self._runner.finish(
                row.id, lease, (WorkflowStatus.DEAD_LETTER, None, dumps_error(error))
            )
        except WorkflowInterrupted:
            self._give_back(row.id, lease)

    def _give_back(self, workflow_id: str, lease: Lease, stalled: bool = False) -> None:
        """Release a workflow this engine holds but will not run; retried until it works.
        ``stalled``: the run crashed, which counts toward dead-lettering a poison workflow."""
        try:
            assert self._store is not None
            self._store.release_workflow(workflow_id, lease, stalled)
            self._unreleased.pop(workflow_id, None)
        except PerdureError:
            self._unreleased[workflow_id] = (lease, stalled)

    def _report_unregistered(self, dead: list[str]) -> None:
        self.versions.report(self.store.version_counts)
        orphans = self.store.orphaned_names(self.worker.id, dead)
        now = time.monotonic()
        for name, count in orphans.items():
            if registered(name) is None and now - self._reported.get(name, -1e9) > 60:
                self._reported[name] = now
                log.error(
                    "perdure: %d unfinished workflow(s) named %r wait for a process that has "
                    "that workflow registered; import its module in a worker to resume them",
                    count,
                    name,
                )

    def _maintain(self) -> None:
        next_recovery = time.monotonic() + self._recovery_interval
        while not self._closing.wait(self._heartbeat_interval):
            try:
                self.store.heartbeat(self.worker, self._lease)
                self._measure_clock()
                for workflow_id in self.store.cancel_requests(self.worker.id):
                    self._signal_cancel(workflow_id)
                for workflow_id, (lease, stalled) in list(self._unreleased.items()):
                    self._give_back(workflow_id, lease, stalled)
                if self._auto_recover and (self._backlog or time.monotonic() >= next_recovery):
                    next_recovery = time.monotonic() + self._recovery_interval
                    self.recover()
            except EngineClosedError:
                return
            except BaseException as exc:  # the heartbeat must outlive any one failure
                if self._closing.is_set():
                    return
                log.warning("perdure: maintenance failed, retrying: %s", exc)
