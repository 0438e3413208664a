"""The embedded SQLite store: the default, for one machine, nothing to install or start.

One connection per store, guarded by a lock (SQLite admits one writer at a time anyway), in
WAL mode so readers in other processes (a CLI, a second worker) never block the writer.
``durability="full"`` (the default) sets ``synchronous=FULL``: a committed step survives a
process crash and a power loss. ``durability="normal"`` sets ``synchronous=NORMAL``: a committed
step survives a process crash, but the last commits before a power loss may be lost; it saves
one fsync per commit.

Every journal write is a single autocommitted statement: one transaction, one fsync per step.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

from .._errors import ConfigurationError, StoreError, StoreUnavailableError
from ._migrations import load_migrations
from ._protocol import (
    ApprovalRow,
    AttemptRow,
    Lease,
    OwnershipLost,
    StepRow,
    WorkerRow,
    WorkflowRow,
    WorkflowStatus,
    approval_topic,
)
from ._rows import (
    APPROVAL_COLUMNS,
    ATTEMPT_COLUMNS,
    RUNNABLE,
    STEP_COLUMNS,
    UNFINISHED,
    WF_COLUMNS,
    attempt_rows,
    step_row,
    step_values,
    workflow_row,
    workflow_values,
)

T = TypeVar("T")

_CLAIMABLE = (
    f"{RUNNABLE} AND owner IS NOT :me AND (owner IS NULL OR owner IN ({{dead}}) OR owner NOT IN "
    "(SELECT id FROM workers WHERE expires_at >= :now))"
)
_STEP_COUNT = "SELECT COUNT(*) FROM steps WHERE steps.workflow_id = workflows.id"
_APPEND_SQL = (
    f"INSERT INTO steps ({STEP_COLUMNS}) SELECT ?,?,?,?,?,?,?,?,?,? WHERE EXISTS "
    "(SELECT 1 FROM workflows WHERE id = ? AND owner = ? AND epoch = ?) ON CONFLICT DO NOTHING"
)


class SQLiteStore:
    """A :class:`~perdure.store.Store` on one SQLite database file.

    Args:
        path: the database file (created if missing), or ``":memory:"``.
        durability: ``"full"`` (fsync on every commit) or ``"normal"`` (see module docs).
        busy_timeout: seconds to wait for another process's write lock before failing; keep
            it below the engines' lease so a blocked heartbeat cannot outlive the lease.
    """

    def __init__(
        self,
        path: str,
        *,
        durability: Literal["full", "normal"] = "full",
        busy_timeout: float = 5.0,
    ) -> None:
        if durability not in ("full", "normal"):
            raise ConfigurationError(f"durability must be 'full' or 'normal', not {durability!r}")
        self.path = path
        self._lock = threading.RLock()  # a transaction step's body may call the store
        self._closed = False
        if path != ":memory:":
            parent = Path(path).expanduser().resolve().parent
            if not parent.is_dir():
                raise StoreUnavailableError(
                    f"cannot open SQLite database {path!r}: folder {str(parent)!r} does not exist"
                )
        try:
            self._conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={durability.upper()}")
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open SQLite database {path!r}: {exc}") from exc

    # -- plumbing --------------------------------------------------------------------------

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._closed:
                raise StoreUnavailableError(f"the store for {self.path!r} is closed")
            try:
                return fn(self._conn)
            except sqlite3.OperationalError as exc:
                raise StoreUnavailableError(f"SQLite database {self.path!r}: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"SQLite database {self.path!r}: {exc}") from exc

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")  # never leave the write lock held after a failure
            raise

    # -- schema ----------------------------------------------------------------------------

    def migrate(self) -> None:
        """Apply the migration files this database has not seen yet."""
        migrations = load_migrations("sqlite")

        def apply(conn: sqlite3.Connection) -> None:
            with self._transaction(conn):
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS perdure_schema "
                    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
                )
                current = conn.execute("SELECT MAX(version) FROM perdure_schema").fetchone()[0]
                current = current or 0
                newest = migrations[-1].version if migrations else 0
                if current > newest:
                    raise StoreError(
                        f"SQLite database {self.path!r} has schema version {current}, newer than "
                        f"this perdure knows ({newest}): upgrade perdure to open it"
                    )
                for migration in migrations:
                    if migration.version <= current:
                        continue
                    for statement in migration.statements:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO perdure_schema VALUES (?, ?, ?)",
                        (migration.version, migration.name, time.time()),
                    )

        self._run(apply)

    def close(self) -> None:
        """Close the connection; later calls raise ``StoreUnavailableError``."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    # -- workflows -------------------------------------------------------------------------

    def create_workflow(self, row: WorkflowRow) -> tuple[WorkflowRow, bool]:
        """Insert ``row`` unless its id exists; return (stored row, created)."""

        def create(conn: sqlite3.Connection) -> tuple[WorkflowRow, bool]:
            cur = conn.execute(
                f"INSERT INTO workflows ({WF_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (id) DO NOTHING",
                workflow_values(row),
            )
            if cur.rowcount == 1:
                return row, True
            found = conn.execute(
                f"SELECT {WF_COLUMNS} FROM workflows WHERE id = ?", (row.id,)
            ).fetchone()
            return workflow_row(found), False

        return self._run(create)

    def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        """Return the workflow with this id, or None."""
        found = self._run(
            lambda c: c.execute(
                f"SELECT {WF_COLUMNS} FROM workflows WHERE id = ?", (workflow_id,)
            ).fetchone()
        )
        return None if found is None else workflow_row(found)

    def list_workflows(
        self, status: WorkflowStatus | None, name: str | None, limit: int
    ) -> list[WorkflowRow]:
        """Newest first, filtered by status and name when given."""
        clauses, params = [], []
        if status is not None:
            clauses.append("status = ?")
            params.append(status.value)
        if name is not None:
            clauses.append("name = ?")
            params.append(name)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {WF_COLUMNS} FROM workflows {where} ORDER BY created_at DESC LIMIT ?"
        rows = self._run(lambda c: c.execute(sql, (*params, limit)).fetchall())
        return [workflow_row(r) for r in rows]

    def finish_workflow(
        self,
        workflow_id: str,
        lease: Lease,
        status: WorkflowStatus,
        output: str | None,
        error: str | None,
    ) -> None:
        """Record the final outcome and drop ownership, if ``lease`` is current; approvals it
        still has pending are closed (nobody can decide them any more)."""
        now = time.time()

        def finish(conn: sqlite3.Connection) -> int:
            with self._transaction(conn):
                count = conn.execute(
                    "UPDATE workflows SET status = ?, output = ?, error = ?, owner = NULL, "
                    "updated_at = ? WHERE id = ? AND owner = ? AND epoch = ?",
                    (status.value, output, error, now, workflow_id, lease.owner, lease.epoch),
                ).rowcount
                if count == 1:
                    conn.execute(
                        "UPDATE approvals SET status = 'CLOSED', decided_at = ? WHERE "
                        "workflow_id = ? AND status = 'PENDING'",
                        (now, workflow_id),
                    )
                return int(count)

        if self._run(finish) != 1:
            raise OwnershipLost(f"worker {lease.owner} no longer owns workflow {workflow_id!r}")

    def reset_workflow(self, workflow_id: str) -> bool:
        """Make a finished, unsuccessful workflow runnable again (see the protocol)."""
        cur = self._run(
            lambda c: c.execute(
                "UPDATE workflows SET status = 'PENDING', owner = NULL, output = NULL, "
                "error = NULL, stalls = 0, cancel_requested = 0, updated_at = ? "
                "WHERE id = ? AND status IN ('ERROR', 'CANCELLED', 'DEAD_LETTER')",
                (time.time(), workflow_id),
            )
        )
        return bool(cur.rowcount == 1)

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
        return [step_row(r) for r in rows]

    def append_step(self, row: StepRow, lease: Lease) -> None:
        """Commit one journal entry, fenced on the lease, in one statement and one fsync."""
        params = (
            row.workflow_id, row.position, row.key, row.name, row.status.value, row.output,
            row.error, row.started_at, row.finished_at, row.attempts,
            row.workflow_id, lease.owner, lease.epoch,
        )  # fmt: skip
        if self._run(lambda c: c.execute(_APPEND_SQL, params).rowcount) != 1:
            raise OwnershipLost(
                f"worker {lease.owner} cannot record step {row.key} of workflow "
                f"{row.workflow_id!r}: it no longer holds the workflow, or the step is recorded"
            )

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
                    return step_row(found)
                row = body(conn)  # its exceptions roll back and propagate as they are
                if not conn.in_transaction:
                    raise ConfigurationError(
                        f"step {row.name!r} of workflow {workflow_id!r} committed or rolled "
                        "back the transaction perdure gave it: never call commit() or "
                        "rollback() in a @perdure.transaction step"
                    )
                conn.execute(f"INSERT INTO steps ({STEP_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                             step_values(row))  # fmt: skip
                return row

        return self._run(transact)

    def append_attempt(self, row: AttemptRow, lease: Lease) -> None:
        """Record a failed attempt, fenced on the lease (one statement, one fsync)."""
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
        return attempt_rows(workflow_id, rows)

    # -- waiting ---------------------------------------------------------------------------

    def suspend_workflow(
        self, workflow_id: str, lease: Lease, wake_at: float | None, topic: str | None
    ) -> None:
        """Unload a waiting workflow (WAITING, no owner), fenced on the lease."""
        cur = self._run(
            lambda c: c.execute(
                # A cancellation asked before the suspension wakes it at once (wake_at = 0,
                # as request_cancel does for a workflow already waiting).
                "UPDATE workflows SET status = 'WAITING', owner = NULL, wake_at = CASE WHEN "
                "cancel_requested = 1 THEN 0 ELSE ? END, "
                "wait_topic = ?, updated_at = ? WHERE id = ? AND owner = ? AND epoch = ? "
                f"AND {RUNNABLE}",
                (wake_at, topic, time.time(), workflow_id, lease.owner, lease.epoch),
            )
        )
        if cur.rowcount != 1:
            raise OwnershipLost(f"worker {lease.owner} no longer holds workflow {workflow_id!r}")

    def claim_ready(
        self, worker_id: str, names: Collection[str], now: float, limit: int
    ) -> list[WorkflowRow]:
        """Take WAITING workflows whose timer is due, whose message came, or that were
        cancelled."""
        if not names:
            return []
        params: dict[str, Any] = {"me": worker_id, "now": now, "limit": limit}
        wanted = _named_list(params, "name", names)
        # Driven by the two partial indexes (due timers; unconsumed messages), so a poll
        # costs microseconds however many workflows wait. A cancelled waiting workflow has
        # wake_at = 0 (see request_cancel), so it is a due timer.
        sql = (
            "UPDATE workflows SET owner = :me, status = 'RUNNING', epoch = epoch + 1, "
            "wake_at = NULL, wait_topic = NULL, updated_at = :now WHERE id IN ("
            "SELECT id FROM workflows WHERE status = 'WAITING' AND wake_at <= :now "
            f"AND name IN ({wanted}) "
            "UNION SELECT m.workflow_id FROM messages m WHERE m.consumed_by IS NULL AND EXISTS "
            "(SELECT 1 FROM workflows w WHERE w.id = m.workflow_id AND w.status = 'WAITING' "
            f"AND w.wait_topic = m.topic AND w.name IN ({wanted})) LIMIT :limit) "
            f"RETURNING {WF_COLUMNS}"
        )

        def claim(conn: sqlite3.Connection) -> list[Any]:
            with self._transaction(conn):
                return conn.execute(sql, params).fetchall()

        return [workflow_row(r) for r in self._run(claim)]

    def next_wake(self, names: Collection[str]) -> float | None:
        """The earliest timer among WAITING workflows of these names."""
        if not names:
            return None
        params: dict[str, Any] = {}
        wanted = _named_list(params, "name", names)
        found = self._run(
            lambda c: c.execute(
                "SELECT MIN(wake_at) FROM workflows WHERE status = 'WAITING' AND "
                f"name IN ({wanted})",
                params,
            ).fetchone()
        )
        return None if found is None or found[0] is None else float(found[0])

    def send_message(
        self, workflow_id: str, topic: str, payload: str, idempotency_key: str | None
    ) -> bool:
        """Queue a message; False if its idempotency key was used before."""
        cur = self._run(
            lambda c: c.execute(
                "INSERT INTO messages (workflow_id, topic, payload, idempotency_key, sent_at) "
                "VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                (workflow_id, topic, payload, idempotency_key, time.time()),
            )
        )
        return bool(cur.rowcount == 1)

    def consume_message(
        self, workflow_id: str, topic: str, step: StepRow, lease: Lease
    ) -> str | None:
        """Take the oldest message on ``topic`` and journal it as ``step``, atomically."""

        def consume(conn: sqlite3.Connection) -> str | None:
            with self._transaction(conn):
                _hold(conn, workflow_id, lease)
                found = conn.execute(
                    "SELECT seq, payload FROM messages WHERE workflow_id = ? AND topic = ? "
                    "AND consumed_by IS NULL ORDER BY seq LIMIT 1",
                    (workflow_id, topic),
                ).fetchone()
                if found is None:
                    return None
                conn.execute(
                    "UPDATE messages SET consumed_by = ? WHERE seq = ?", (step.key, found[0])
                )
                conn.execute(
                    f"INSERT INTO steps ({STEP_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (step.workflow_id, step.position, step.key, step.name, step.status.value,
                     found[1], None, step.started_at, step.finished_at, step.attempts),
                )  # fmt: skip
                return str(found[1])

        return self._run(consume)

    def set_event(self, workflow_id: str, key: str, value: str) -> None:
        """Publish (or replace) a workflow's event value."""
        self._run(
            lambda c: c.execute(
                "INSERT INTO events (workflow_id, key, value, updated_at) VALUES (?,?,?,?) "
                "ON CONFLICT (workflow_id, key) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (workflow_id, key, value, time.time()),
            )
        )

    def get_event(self, workflow_id: str, key: str) -> str | None:
        """A workflow's event value, or None."""
        found = self._run(
            lambda c: c.execute(
                "SELECT value FROM events WHERE workflow_id = ? AND key = ?", (workflow_id, key)
            ).fetchone()
        )
        return None if found is None else str(found[0])

    def request_approval(self, row: ApprovalRow) -> None:
        """Record a pending approval (a no-op if already recorded)."""
        self._run(
            lambda c: c.execute(
                "INSERT INTO approvals (workflow_id, name, details, status, requested_at) "
                "VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                (row.workflow_id, row.name, row.details, "PENDING", row.requested_at),
            )
        )

    def decide_approval(
        self,
        workflow_id: str,
        name: str,
        status: str,
        by: str | None,
        comment: str | None,
        message: str,
    ) -> bool:
        """Decide a pending approval and queue the decision message, in one transaction."""

        def decide(conn: sqlite3.Connection) -> bool:
            with self._transaction(conn):
                now = time.time()
                cur = conn.execute(
                    "UPDATE approvals SET status = ?, decided_at = ?, decided_by = ?, "
                    "comment = ? WHERE workflow_id = ? AND name = ? AND status = 'PENDING'",
                    (status, now, by, comment, workflow_id, name),
                )
                if cur.rowcount != 1:
                    return False
                conn.execute(
                    "INSERT INTO messages (workflow_id, topic, payload, idempotency_key, "
                    "sent_at) VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                    (workflow_id, approval_topic(name), message, "decision", now),
                )
                return True

        return self._run(decide)

    def close_approval(self, workflow_id: str, name: str, status: str) -> ApprovalRow | None:
        """Mark a pending approval as ended without a decision; return the row as it is
        then (a decision that landed first stays, and is returned)."""

        def close(conn: sqlite3.Connection) -> Any:
            with self._transaction(conn):
                conn.execute(
                    "UPDATE approvals SET status = ?, decided_at = ? WHERE workflow_id = ? "
                    "AND name = ? AND status = 'PENDING'",
                    (status, time.time(), workflow_id, name),
                )
                return conn.execute(
                    f"SELECT {APPROVAL_COLUMNS} FROM approvals JOIN workflows ON "
                    "workflows.id = approvals.workflow_id WHERE approvals.workflow_id = ? "
                    "AND approvals.name = ?",
                    (workflow_id, name),
                ).fetchone()

        found = self._run(close)
        return None if found is None else ApprovalRow(*found)

    def list_approvals(self, pending_only: bool, limit: int) -> list[ApprovalRow]:
        """Approvals, oldest first."""
        where = "WHERE approvals.status = 'PENDING'" if pending_only else ""
        order = "" if pending_only else "DESC"  # the oldest waiting first; else the newest
        rows = self._run(
            lambda c: c.execute(
                f"SELECT {APPROVAL_COLUMNS} FROM approvals JOIN workflows ON "
                f"workflows.id = approvals.workflow_id {where} ORDER BY requested_at {order} "
                "LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [ApprovalRow(*r) for r in rows]

    def request_cancel(self, workflow_id: str) -> WorkflowRow | None:
        """Flag an unfinished workflow for cancellation; return its row."""

        def flag(conn: sqlite3.Connection) -> Any:
            conn.execute(
                "UPDATE workflows SET cancel_requested = 1, updated_at = ?, wake_at = CASE "
                f"WHEN status = 'WAITING' THEN 0 ELSE wake_at END WHERE id = ? AND {UNFINISHED}",
                (time.time(), workflow_id),
            )
            return conn.execute(
                f"SELECT {WF_COLUMNS} FROM workflows WHERE id = ?", (workflow_id,)
            ).fetchone()

        found = self._run(flag)
        return None if found is None else workflow_row(found)

    def owned(self, worker_id: str) -> list[WorkflowRow]:
        """Unfinished workflows ``worker_id`` holds."""
        rows = self._run(
            lambda c: c.execute(
                f"SELECT {WF_COLUMNS} FROM workflows WHERE owner = ? AND {UNFINISHED}",
                (worker_id,),
            ).fetchall()
        )
        return [workflow_row(r) for r in rows]

    def cancel_requests(self, worker_id: str) -> list[str]:
        """Ids of unfinished workflows held by ``worker_id`` whose cancellation is asked."""
        rows = self._run(
            lambda c: c.execute(
                f"SELECT id FROM workflows WHERE owner = ? AND cancel_requested = 1 "
                f"AND {UNFINISHED}",
                (worker_id,),
            ).fetchall()
        )
        return [r[0] for r in rows]

    # -- ownership -------------------------------------------------------------------------

    def heartbeat(self, worker: WorkerRow, lease_seconds: float) -> None:
        """Record that ``worker`` is alive for ``lease_seconds`` from now."""
        now = time.time()
        self._run(
            lambda c: c.execute(
                "INSERT INTO workers (id, host, pid, heartbeat_at, expires_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, "
                "expires_at = excluded.expires_at",
                (worker.id, worker.host, worker.pid, now, now + lease_seconds),
            )
        )

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
    ) -> list[WorkflowRow]:
        """Take over unfinished workflows whose owner is gone (see the protocol)."""
        if not names:
            return []
        params: dict[str, Any] = {"me": worker_id, "now": time.time(), "limit": limit}
        dead = _named_list(params, "dead", dead_workers)
        wanted = _named_list(params, "name", names)
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
            f"AND name IN ({wanted}) {only} ORDER BY created_at LIMIT :limit) "
            f"RETURNING {WF_COLUMNS}"
        )

        def claim(conn: sqlite3.Connection) -> list[Any]:
            with self._transaction(conn):
                return conn.execute(sql, params).fetchall()

        return [workflow_row(r) for r in self._run(claim)]

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
                    f"WHERE owner = ? AND {UNFINISHED}",
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
                f"(SELECT owner FROM workflows WHERE owner IS NOT NULL AND {UNFINISHED})",
                params,
            )
        )


def _named_list(params: dict[str, Any], prefix: str, values: Collection[str]) -> str:
    """Add ``values`` to ``params`` as :prefix0, :prefix1...; return the placeholder list."""
    names = []
    for i, value in enumerate(values):
        params[f"{prefix}{i}"] = value
        names.append(f":{prefix}{i}")
    return ", ".join(names) or "NULL"


def _hold(conn: sqlite3.Connection, workflow_id: str, lease: Lease) -> None:
    """Check, inside the caller's transaction, that ``lease`` is the workflow's current lease.

    Raises:
        OwnershipLost: it is not.
    """
    owned = conn.execute(
        "SELECT 1 FROM workflows WHERE id = ? AND owner = ? AND epoch = ?",
        (workflow_id, lease.owner, lease.epoch),
    ).fetchone()
    if owned is None:
        raise OwnershipLost(f"worker {lease.owner} no longer holds workflow {workflow_id!r}")
