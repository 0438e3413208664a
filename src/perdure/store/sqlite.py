"""The embedded SQLite store: the default, for one machine, nothing to install or start.

One connection per store, guarded by a lock (SQLite admits one writer at a time anyway), in
WAL mode so readers in other processes (a CLI, a second worker) never block the writer.
``durability="full"`` (the default) sets ``synchronous=FULL``: a committed step survives a
process crash and a power loss. ``durability="normal"`` sets ``synchronous=NORMAL``: a committed
step survives a process crash, but the last commits before a power loss may be lost; it saves
one fsync per commit.

A journal write is one autocommitted statement: one transaction, one fsync per step. Steps of
workflows running at the same time share a transaction and its fsync (group commit,
``perdure.store._group``): the writers that arrive while one commit is in flight are committed
together by the next.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from .. import _failpoints
from .._errors import ConfigurationError
from ._group import Outcome, step_not_recorded
from ._protocol import (
    AttemptRow,
    Lease,
    OwnershipLost,
    QueueLimits,
    StepRow,
    WorkerRow,
    WorkflowRow,
    WorkflowStatus,
)
from ._rows import (
    ACTIVE,
    ATTEMPT_COLUMNS,
    OWNED,
    RESET_STATUS,
    RUNNABLE,
    STATUS_TEXT,
    STEP_COLUMNS,
    STEP_MARKS,
    UNFINISHED,
    WF_COLUMNS,
    attempt_rows,
    forget_failed_step,
    stamp_sql,
    step_values,
    versions_sql,
    workflow_values,
)
from ._sqlite_base import _hold, _mark, _named_list, _nulls_inline
from ._sqlite_limits import SQLiteLimits
from ._sqlite_waiting import SQLiteWaiting

_CLAIMABLE = (
    f"{RUNNABLE} AND owner IS NOT :me AND (owner IS NULL OR owner IN ({{dead}}) OR owner NOT IN "
    "(SELECT id FROM workers WHERE expires_at >= :now))"
)
_WF_MARKS = ",".join("?" * len(WF_COLUMNS.split(",")))
_CREATE_SQL = (
    f"INSERT INTO workflows ({WF_COLUMNS}) VALUES ({_WF_MARKS}) ON CONFLICT (id) DO NOTHING"
)
_FINISH_SQL = (
    "UPDATE workflows SET status = ?, output = ?, error = ?, owner = NULL, updated_at = ? "
    "WHERE id = ? AND owner = ? AND epoch = ?"
)
_STEP_COUNT = "SELECT COUNT(*) FROM steps WHERE steps.workflow_id = workflows.id"
_APPEND_SQL = (
    f"INSERT INTO steps ({STEP_COLUMNS}) SELECT {STEP_MARKS} WHERE EXISTS "
    "(SELECT 1 FROM workflows WHERE id = ? AND owner = ? AND epoch = ?) ON CONFLICT DO NOTHING"
)
#: ``_APPEND_SQL`` for a step that returned a value and has no fingerprint (almost every
#: entry): error and fingerprint written as NULL literals (see ``_nulls_inline``)
_APPEND_VALUE_SQL = _nulls_inline(_APPEND_SQL, (0,) * 6 + (None, 0, 0, 0, None, 0, 0, 0))[0]


# the kinds of writes the group commit takes (see ``_write_batch``)
_STEP, _FINISH, _CREATE = 0, 1, 2


def _raised(outcomes: list[Any]) -> Any:
    """The one outcome of a group-commit submission: raised if it is an exception."""
    if isinstance(outcomes[0], BaseException):
        raise outcomes[0]
    return outcomes[0]


def _append_params(row: StepRow, lease: Lease) -> tuple[str, tuple[Any, ...]]:
    """The fenced INSERT of ``row`` and its parameters, None values written as NULL literals
    (see ``_nulls_inline``); the common case without building the pattern of Nones."""
    output, status = row.output, STATUS_TEXT[row.status]
    if output is not None and row.error is None and row.fingerprint is None:
        return _APPEND_VALUE_SQL, (
            row.workflow_id, row.position, row.key, row.name, status, output, row.started_at,
            row.finished_at, row.attempts, row.workflow_id, lease.owner, lease.epoch,
        )  # fmt: skip
    return _nulls_inline(_APPEND_SQL, (
        row.workflow_id, row.position, row.key, row.name, status, output, row.error,
        row.started_at, row.finished_at, row.attempts, row.fingerprint, row.workflow_id,
        lease.owner, lease.epoch,
    ))  # fmt: skip


class SQLiteStore(SQLiteWaiting, SQLiteLimits):
    """A :class:`~perdure.store.Store` on one SQLite database file.

    Args:
        path: the database file (created if missing), or ``":memory:"``.
        durability: ``"full"`` (fsync on every commit) or ``"normal"`` (see module docs).
        busy_timeout: seconds to wait for another process's write lock before failing; keep
            it below the engines' lease so a blocked heartbeat cannot outlive the lease.
    """

    # -- workflows -------------------------------------------------------------------------

    def create_workflow(self, row: WorkflowRow) -> tuple[WorkflowRow, bool]:
        """Insert ``row`` unless its id exists; return (stored row, created). Rows created
        at the same time share a commit with each other and with journal entries."""
        created: tuple[WorkflowRow, bool] = _raised(
            self._group.submit([(_CREATE, (row, workflow_values(self.codec.workflow_out(row))))])
        )
        return created

    def _create(self, conn: sqlite3.Connection, row: WorkflowRow, values: Any) -> Any:
        cur = conn.execute(*_nulls_inline(_CREATE_SQL, values))
        if cur.rowcount == 1:
            return row, True
        found = conn.execute(f"SELECT {WF_COLUMNS} FROM workflows WHERE id = ?", (row.id,))
        return self._wf(found.fetchone()), False

    def fork_workflow(self, row: WorkflowRow, steps: Sequence[StepRow]) -> tuple[WorkflowRow, bool]:
        """Create ``row`` with ``steps`` as its journal in one transaction (see the
        protocol)."""
        written = self.codec.workflow_out(row)  # sealed for the fork's own id
        journal = [step_values(self.codec.step_out(step)) for step in steps]

        def fork(conn: sqlite3.Connection) -> tuple[WorkflowRow, bool]:
            with self._transaction(conn):
                cur = conn.execute(
                    f"INSERT INTO workflows ({WF_COLUMNS}) VALUES ({_WF_MARKS}) "
                    "ON CONFLICT (id) DO NOTHING",
                    workflow_values(written),
                )
                if cur.rowcount != 1:
                    found = conn.execute(
                        f"SELECT {WF_COLUMNS} FROM workflows WHERE id = ?", (row.id,)
                    ).fetchone()
                    return self._wf(found), False
                conn.executemany(
                    f"INSERT INTO steps ({STEP_COLUMNS}) VALUES ({STEP_MARKS})", journal
                )
                return row, True

        return self._run(fork)

    def version_counts(self) -> list[tuple[str, str | None, int]]:
        """(name, code version, count) of unfinished workflows."""
        rows = self._run(
            lambda c: c.execute(
                f"SELECT name, version, COUNT(*) FROM workflows WHERE {UNFINISHED} "
                "GROUP BY name, version ORDER BY name, version"
            ).fetchall()
        )
        return [(str(r[0]), r[1], int(r[2])) for r in rows]

    def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        """Return the workflow with this id, or None."""
        found = self._run(
            lambda c: c.execute(
                f"SELECT {WF_COLUMNS} FROM workflows WHERE id = ?", (workflow_id,)
            ).fetchone()
        )
        return None if found is None else self._wf(found)

    def list_workflows(
        self,
        status: WorkflowStatus | None,
        name: str | None,
        limit: int,
        created_after: float | None = None,
    ) -> list[WorkflowRow]:
        """Newest first, filtered by status, name and creation time when given."""
        clauses: list[str] = []
        params: list[Any] = []
        if created_after is not None:
            clauses.append("created_at >= ?")
            params.append(created_after)
        if status is not None:
            clauses.append("status = ?")
            params.append(status.value)
        if name is not None:
            clauses.append("name = ?")
            params.append(name)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {WF_COLUMNS} FROM workflows {where} ORDER BY created_at DESC LIMIT ?"
        rows = self._run(lambda c: c.execute(sql, (*params, limit)).fetchall())
        return [self._wf(r) for r in rows]

    def finish_workflow(
        self,
        workflow_id: str,
        lease: Lease,
        status: WorkflowStatus,
        output: str | None,
        error: str | None,
    ) -> None:
        """Record the final outcome and drop ownership, if ``lease`` is current; approvals it
        still has pending are closed (nobody can decide them any more). Outcomes stored at
        the same time share a commit with each other and with journal entries."""
        output, error = self.codec.result_out(workflow_id, output, error)
        params = (status.value, output, error, time.time(), workflow_id, lease.owner, lease.epoch)
        _raised(self._group.submit([(_FINISH, params)]))

    def _finish(self, conn: sqlite3.Connection, params: tuple[Any, ...]) -> OwnershipLost | None:
        count = conn.execute(*_nulls_inline(_FINISH_SQL, params)).rowcount
        if count == 1:
            conn.execute(
                "UPDATE approvals SET status = 'CLOSED', decided_at = ? WHERE "
                "workflow_id = ? AND status = 'PENDING'",
                (params[3], params[4]),
            )
        if _failpoints.ARMED:
            _failpoints.hit("store.finish", conn)
        if count != 1:
            return OwnershipLost(f"worker {params[5]} no longer owns workflow {params[4]!r}")
        return None

    def reset_workflow(
        self, workflow_id: str, retry_failed_step: bool = False, version: str | None = None
    ) -> bool:
        """Make a finished, unsuccessful workflow runnable again (see the protocol)."""

        def reset(conn: sqlite3.Connection) -> bool:
            with self._transaction(conn):
                found = conn.execute(
                    "SELECT error FROM workflows WHERE id = ? "
                    "AND status IN ('ERROR', 'CANCELLED', 'DEAD_LETTER')",
                    (workflow_id,),
                ).fetchone()
                if found is None:
                    return False
                if retry_failed_step:
                    error = self.codec.unseal(found[0], workflow_id, "workflow.error")
                    forget_failed_step(
                        conn, "?", workflow_id, error, self.codec.step_error(workflow_id)
                    )
                count = conn.execute(
                    f"UPDATE workflows SET status = {RESET_STATUS}, owner = NULL, "
                    "output = NULL, error = NULL, stalls = 0, cancel_requested = 0, "
                    "updated_at = ?, version = COALESCE(?, version) WHERE id = ? "
                    "AND status IN ('ERROR', 'CANCELLED', 'DEAD_LETTER')",
                    (time.time(), version, workflow_id),
                ).rowcount
                return bool(count == 1)

        return self._run(reset)

    def release_workflow(self, workflow_id: str, lease: Lease, stalled: bool = False) -> bool:
        """Give one unfinished workflow back (PENDING, no owner) if ``lease`` is current."""
        cur = self._run(
            lambda c: c.execute(
                "UPDATE workflows SET owner = NULL, status = 'PENDING', updated_at = ?, "
                f"stalls = stalls + ? WHERE id = ? AND owner = ? AND epoch = ? AND {UNFINISHED}",
                (time.time(), int(stalled), workflow_id, lease.owner, lease.epoch),
            )
        )
        return bool(cur.rowcount == 1)

    # -- journal ---------------------------------------------------------------------------

    def load_steps(self, workflow_id: str) -> list[StepRow]:
        """The workflow's journal, by position."""
        rows = self._run(
            lambda c: c.execute(
                f"SELECT {STEP_COLUMNS} FROM steps WHERE workflow_id = ? ORDER BY position, key",
                (workflow_id,),
            ).fetchall()
        )
        return [self._step(r) for r in rows]

    def append_step(self, row: StepRow, lease: Lease) -> None:
        """Commit one journal entry, fenced on the lease. Entries of workflows stepping at
        the same time share one transaction and one fsync (see ``perdure.store._group``)."""
        outcome = self._group.submit([(_STEP, _append_params(self.codec.step_out(row), lease))])
        if outcome[0] is not None:
            raise outcome[0]

    def append_steps(self, entries: Sequence[tuple[StepRow, Lease]]) -> list[Outcome]:
        """Commit several journal entries together, each fenced on its own lease (see the
        protocol)."""
        out = self.codec.step_out
        return self._group.submit([(_STEP, _append_params(out(r), lease)) for r, lease in entries])

    def _write_batch(self, batch: list[tuple[int, Any]]) -> list[Any]:
        """One transaction (one fsync) over ``batch``: journal entries, new workflow rows
        and outcomes, each fenced on its own; a lone journal entry is one statement."""
        if len(batch) == 1 and batch[0][0] == _STEP:
            return [self._run(self._append, batch[0][1])]
        return self._run(self._write_all, batch)

    def _write_all(self, conn: sqlite3.Connection, batch: list[tuple[int, Any]]) -> list[Any]:
        with self._transaction(conn):
            return [self._apply(conn, kind, item) for kind, item in batch]

    def _apply(self, conn: sqlite3.Connection, kind: int, item: Any) -> Any:
        if kind == _STEP:
            return self._append(conn, item)
        if kind == _FINISH:
            return self._finish(conn, item)
        return self._create(conn, *item)

    @staticmethod
    def _append(
        conn: sqlite3.Connection, statement: tuple[str, tuple[Any, ...]]
    ) -> OwnershipLost | None:
        if _failpoints.ARMED:
            _failpoints.hit("store.append_step", conn)
        sql, params = statement
        if conn.execute(sql, params).rowcount == 1:
            return None
        return step_not_recorded(params[0], params[2], params[-2])

    def append_step_atomically(
        self, workflow_id: str, key: str, lease: Lease, body: Callable[[Any], StepRow]
    ) -> StepRow:
        """Run ``body`` on this store's connection inside the transaction that journals the
        row it returns (see the protocol)."""

        def transact(conn: sqlite3.Connection) -> StepRow:
            with self._transaction(conn):
                _hold(conn, workflow_id, lease)
                found = conn.execute(
                    f"SELECT {STEP_COLUMNS} FROM steps WHERE workflow_id = ? AND key = ?",
                    (workflow_id, key),
                ).fetchone()
                if found is not None:
                    return self._step(found)
                row = body(conn)  # its exceptions roll back and propagate as they are
                if not conn.in_transaction:
                    raise ConfigurationError(
                        f"step {row.name!r} of workflow {workflow_id!r} committed or rolled "
                        "back the transaction perdure gave it: never call commit() or "
                        "rollback() in a @perdure.transaction step"
                    )
                conn.execute(f"INSERT INTO steps ({STEP_COLUMNS}) VALUES ({STEP_MARKS})",
                             step_values(self.codec.step_out(row)))  # fmt: skip
                if _failpoints.ARMED:
                    _failpoints.hit("store.append_transaction", conn)
                return row

        return self._run(transact)

    def append_attempt(self, row: AttemptRow, lease: Lease) -> None:
        """Record a failed attempt, fenced on the lease (one statement, one fsync)."""
        row = self.codec.attempt_out(row)
        params = (
            row.workflow_id, row.key, row.attempt, row.name, row.error, row.started_at,
            row.failed_at, row.retry_at, row.workflow_id, lease.owner, lease.epoch,
        )  # fmt: skip
        sql = (
            f"INSERT INTO step_attempts ({ATTEMPT_COLUMNS}) SELECT ?,?,?,?,?,?,?,? WHERE EXISTS "
            "(SELECT 1 FROM workflows WHERE id = ? AND owner = ? AND epoch = ?) "
            "ON CONFLICT DO NOTHING"
        )
        if self._run(lambda c: c.execute(sql, params).rowcount) != 1:
            raise OwnershipLost(
                f"worker {lease.owner} cannot record attempt {row.attempt} of step {row.key} of "
                f"workflow {row.workflow_id!r}: it no longer holds the workflow"
            )

    def load_attempts(self, workflow_id: str) -> list[AttemptRow]:
        """Every recorded failed attempt of the workflow."""
        rows = self._run(
            lambda c: c.execute(
                f"SELECT {ATTEMPT_COLUMNS} FROM step_attempts WHERE workflow_id = ? "
                "ORDER BY failed_at, key, attempt",
                (workflow_id,),
            ).fetchall()
        )
        return self.codec.attempts_in(attempt_rows(workflow_id, rows))

    def load_run(self, workflow_id: str) -> tuple[list[StepRow], list[AttemptRow]]:
        """The journal and the failed attempts (two local reads: no round trip to save)."""
        return self.load_steps(workflow_id), self.load_attempts(workflow_id)

    # -- queues ----------------------------------------------------------------------------

    def dequeue(
        self,
        worker_id: str,
        queue: str,
        names: Collection[str],
        limit: int,
        limits: QueueLimits,
        stamp: Mapping[str, str] | None = None,
    ) -> list[WorkflowRow]:
        """Take ENQUEUED workflows the queue's limits admit (see the protocol), in one
        write transaction: processes sharing the file serialize on its write lock."""
        if not names or limit <= 0:
            return []
        now = time.time()
        params: dict[str, Any] = {"me": worker_id, "q": queue, "now": now}
        names_sql = _named_list(params, "name", names)
        version = stamp_sql(params, stamp, _mark)

        def take(conn: sqlite3.Connection) -> list[Any]:
            with self._transaction(conn):
                room = min([limit, *_queue_room(conn, params, limits)])
                if room <= 0:
                    return []
                return conn.execute(
                    "UPDATE workflows SET status = 'RUNNING', owner = :me, epoch = epoch + 1, "
                    f"dequeued_at = :now, updated_at = :now{version} WHERE id IN (SELECT id FROM "
                    f"workflows WHERE status = 'ENQUEUED' AND queue = :q AND name IN ({names_sql}) "
                    f"ORDER BY priority, created_at LIMIT :room) RETURNING {WF_COLUMNS}",
                    {**params, "room": room},
                ).fetchall()

        return self._claimed(self._run(take))

    # -- cancellation ----------------------------------------------------------------------

    def request_cancel(self, workflow_id: str) -> WorkflowRow | None:
        """Flag an unfinished workflow for cancellation; return its row."""

        def flag(conn: sqlite3.Connection) -> Any:
            conn.execute(
                "UPDATE workflows SET cancel_requested = 1, updated_at = ?, wake_at = CASE "
                "WHEN status = 'WAITING' THEN 0 ELSE wake_at END, status = CASE WHEN status = "
                f"'ENQUEUED' THEN 'CANCELLED' ELSE status END WHERE id = ? AND {UNFINISHED}",
                (time.time(), workflow_id),
            )
            return conn.execute(
                f"SELECT {WF_COLUMNS} FROM workflows WHERE id = ?", (workflow_id,)
            ).fetchone()

        found = self._run(flag)
        return None if found is None else self._wf(found)

    def owned(self, worker_id: str) -> list[WorkflowRow]:
        """Unfinished workflows ``worker_id`` holds."""
        rows = self._run(
            lambda c: c.execute(
                f"SELECT {WF_COLUMNS} FROM workflows WHERE owner = ? AND {OWNED}",
                (worker_id,),
            ).fetchall()
        )
        return [self._wf(r) for r in rows]

    def cancel_requests(self, worker_id: str) -> list[str]:
        """Ids of unfinished workflows held by ``worker_id`` whose cancellation is asked."""
        rows = self._run(
            lambda c: c.execute(
                f"SELECT id FROM workflows WHERE owner = ? AND cancel_requested = 1 AND {OWNED}",
                (worker_id,),
            ).fetchall()
        )
        return [r[0] for r in rows]

    # -- ownership -------------------------------------------------------------------------

    def heartbeat(self, worker: WorkerRow, lease_seconds: float) -> None:
        """Record that ``worker`` is alive for ``lease_seconds`` from now."""
        now = time.time()

        def renew(conn: sqlite3.Connection) -> None:
            if _failpoints.ARMED:
                _failpoints.hit("lease.renew", conn)
            conn.execute(
                "INSERT INTO workers (id, host, pid, heartbeat_at, expires_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, "
                "expires_at = excluded.expires_at",
                (worker.id, worker.host, worker.pid, now, now + lease_seconds),
            )

        self._run(renew)

    def list_workers(self) -> list[WorkerRow]:
        """Every worker row, live or not."""
        rows = self._run(
            lambda c: c.execute(
                "SELECT id, host, pid, heartbeat_at, expires_at FROM workers"
            ).fetchall()
        )
        return [WorkerRow(*r) for r in rows]

    def claim(
        self,
        worker_id: str,
        names: Collection[str],
        dead_workers: Sequence[str],
        limit: int,
        workflow_id: str | None = None,
        versions: Collection[str] | None = None,
    ) -> list[WorkflowRow]:
        """Take over unfinished workflows whose owner is gone (see the protocol)."""
        if not names:
            return []
        params: dict[str, Any] = {"me": worker_id, "now": time.time(), "limit": limit}
        dead = _named_list(params, "dead", dead_workers)
        wanted = _named_list(params, "name", names)
        runnable = versions_sql(params, versions, "version", _mark)
        only = ""
        if workflow_id is not None:
            params["only"] = workflow_id
            only = "AND id = :only"
        sql = (
            "UPDATE workflows SET owner = :me, status = 'RUNNING', updated_at = :now, "
            "recoveries = recoveries + (owner IS NOT NULL), epoch = epoch + 1, "
            "stalls = CASE WHEN owner IS NULL THEN (CASE WHEN stalls > 0 AND "
            f"({_STEP_COUNT}) > claimed_steps THEN 1 ELSE stalls END) WHEN "
            f"({_STEP_COUNT}) > claimed_steps THEN 1 ELSE stalls + 1 END, "
            f"claimed_steps = ({_STEP_COUNT}) "
            f"WHERE id IN (SELECT id FROM workflows WHERE {_CLAIMABLE.format(dead=dead)} "
            # "+created_at": not the created_at index (all history) but the live rows, sorted
            f"AND name IN ({wanted}){runnable} {only} ORDER BY +created_at LIMIT :limit) "
            f"RETURNING {WF_COLUMNS}"
        )

        def claim(conn: sqlite3.Connection) -> list[Any]:
            with self._transaction(conn):
                rows = conn.execute(sql, params).fetchall()
                if rows and _failpoints.ARMED:
                    _failpoints.hit("recovery.claim", conn)
                return rows

        return self._claimed(self._run(claim))

    def orphaned_names(self, worker_id: str, dead_workers: Sequence[str]) -> dict[str, int]:
        """Count claimable workflows by name, whatever their name."""
        params: dict[str, Any] = {"me": worker_id, "now": time.time()}
        dead = _named_list(params, "dead", dead_workers)
        sql = (
            f"SELECT name, COUNT(*) FROM workflows WHERE {_CLAIMABLE.format(dead=dead)} "
            "GROUP BY name"
        )
        return dict(self._run(lambda c: c.execute(sql, params).fetchall()))

    def release(self, worker_id: str) -> int:
        """Give up every unfinished workflow ``worker_id`` owns, and forget the worker."""

        def release(conn: sqlite3.Connection) -> int:
            with self._transaction(conn):
                count = conn.execute(
                    f"UPDATE workflows SET owner = NULL, status = 'PENDING', updated_at = ? "
                    f"WHERE owner = ? AND {OWNED}",
                    (time.time(), worker_id),
                ).rowcount
                conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))
                return count

        return self._run(release)

    def forget_workers(self, worker_ids: Sequence[str]) -> None:
        """Delete worker rows that own nothing any more."""
        if not worker_ids:
            return
        params: dict[str, Any] = {}
        ids = _named_list(params, "w", worker_ids)
        self._run(
            lambda c: c.execute(
                f"DELETE FROM workers WHERE id IN ({ids}) AND id NOT IN "
                f"(SELECT owner FROM workflows WHERE owner IS NOT NULL AND {OWNED})",
                params,
            )
        )


def _queue_room(conn: sqlite3.Connection, params: dict[str, Any], limits: QueueLimits) -> list[int]:
    """How many more workflows each of the queue's limits admits now (one figure per limit
    that is set), counted inside the caller's write transaction."""
    room: list[int] = []
    if limits.concurrency is not None:
        found = conn.execute(
            f"SELECT COUNT(*) FROM workflows WHERE queue = :q AND {ACTIVE}", params
        ).fetchone()
        room.append(limits.concurrency - int(found[0]))
    if limits.worker_concurrency is not None:
        found = conn.execute(
            "SELECT COUNT(*) FROM workflows WHERE queue = :q AND owner = :me AND "
            "status = 'RUNNING'",
            params,
        ).fetchone()
        room.append(limits.worker_concurrency - int(found[0]))
    if limits.rate_limit is not None:
        count, per = limits.rate_limit
        found = conn.execute(
            "SELECT COUNT(*) FROM workflows WHERE queue = :q AND dequeued_at > :now - :per",
            {**params, "per": float(per)},
        ).fetchone()
        room.append(count - int(found[0]))
    return room
