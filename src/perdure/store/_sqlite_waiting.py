"""SQLite: waiting workflows, messages, events and approvals (a part of the store)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection
from typing import Any

from .. import _failpoints
from ._protocol import ApprovalRow, Lease, OwnershipLost, StepRow, WorkflowRow, approval_topic
from ._rows import APPROVAL_COLUMNS, RUNNABLE, STEP_COLUMNS, STEP_MARKS, WF_COLUMNS, versions_sql
from ._sqlite_base import SQLiteBase, _hold, _mark, _named_list


class SQLiteWaiting(SQLiteBase):
    """Suspension and wake-up, messages, events and approvals."""

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
        self,
        worker_id: str,
        names: Collection[str],
        now: float,
        limit: int,
        versions: Collection[str] | None = None,
    ) -> list[WorkflowRow]:
        """Take WAITING workflows whose timer is due, whose message came, or that were
        cancelled."""
        if not names:
            return []
        # ``now`` is the workflows' clock (due timers); the row's update time is the
        # database's, as everywhere (the stray sweep compares it with the database's clock)
        params: dict[str, Any] = {"me": worker_id, "now": now, "limit": limit,
                                  "stamp": time.time()}  # fmt: skip
        wanted = _named_list(params, "name", names)
        runnable = versions_sql(params, versions, "version", _mark)
        runnable_w = versions_sql(params, versions, "w.version", _mark)
        # Driven by the two partial indexes (due timers; unconsumed messages), so a poll
        # costs microseconds however many workflows wait. A cancelled waiting workflow has
        # wake_at = 0 (see request_cancel), so it is a due timer.
        sql = (
            "UPDATE workflows SET owner = :me, status = 'RUNNING', epoch = epoch + 1, "
            "wake_at = NULL, wait_topic = NULL, updated_at = :stamp WHERE id IN ("
            "SELECT id FROM workflows WHERE status = 'WAITING' AND wake_at <= :now "
            f"AND name IN ({wanted}){runnable} "
            "UNION SELECT m.workflow_id FROM messages m WHERE m.consumed_by IS NULL AND EXISTS "
            "(SELECT 1 FROM workflows w WHERE w.id = m.workflow_id AND w.status = 'WAITING' "
            f"AND w.wait_topic = m.topic AND w.name IN ({wanted}){runnable_w}) LIMIT :limit) "
            f"RETURNING {WF_COLUMNS}"
        )

        def claim(conn: sqlite3.Connection) -> list[Any]:
            with self._transaction(conn):
                rows = conn.execute(sql, params).fetchall()
                if rows and _failpoints.ARMED:
                    _failpoints.hit("timer.fire", conn)
                return rows

        return self._claimed(self._run(claim))

    def next_wake(
        self, names: Collection[str], versions: Collection[str] | None = None
    ) -> float | None:
        """The earliest timer among WAITING workflows of these names (and versions)."""
        if not names:
            return None
        params: dict[str, Any] = {}
        wanted = _named_list(params, "name", names)
        runnable = versions_sql(params, versions, "version", _mark)
        found = self._run(
            lambda c: c.execute(
                "SELECT MIN(wake_at) FROM workflows WHERE status = 'WAITING' "
                "AND wake_at IS NOT NULL AND "
                f"name IN ({wanted}){runnable}",
                params,
            ).fetchone()
        )
        return None if found is None or found[0] is None else float(found[0])

    def send_message(
        self, workflow_id: str, topic: str, payload: str, idempotency_key: str | None
    ) -> bool:
        """Queue a message; False if its idempotency key was used before."""
        payload = self.codec.message_out(workflow_id, topic, payload)
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
                payload = self.codec.message_in(workflow_id, topic, str(found[1]))
                conn.execute(
                    f"INSERT INTO steps ({STEP_COLUMNS}) VALUES ({STEP_MARKS})",
                    (step.workflow_id, step.position, step.key, step.name, step.status.value,
                     self.codec.seal(payload, workflow_id, "step.output", step.key), None,
                     step.started_at, step.finished_at, step.attempts, step.fingerprint),
                )  # fmt: skip
                if _failpoints.ARMED:
                    _failpoints.hit("store.consume", conn)
                return payload

        return self._run(consume)

    def set_event(self, workflow_id: str, key: str, value: str) -> None:
        """Publish (or replace) a workflow's event value."""
        value = self.codec.event_out(workflow_id, key, value)
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
        return None if found is None else self.codec.event_in(workflow_id, key, str(found[0]))

    def request_approval(self, row: ApprovalRow) -> None:
        """Record a pending approval (a no-op if already recorded)."""
        details = self.codec.details_out(row)
        self._run(
            lambda c: c.execute(
                "INSERT INTO approvals (workflow_id, name, details, status, requested_at) "
                "VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                (row.workflow_id, row.name, details, "PENDING", row.requested_at),
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
        comment = self.codec.comment_out(workflow_id, name, comment)
        message = self.codec.message_out(workflow_id, approval_topic(name), message)

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
        return None if found is None else self.codec.approval_in(ApprovalRow(*found))

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
        return [self.codec.approval_in(ApprovalRow(*r)) for r in rows]
