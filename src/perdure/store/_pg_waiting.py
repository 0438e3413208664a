"""PostgreSQL: waiting workflows, messages, events and approvals (a part of the store)."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any

from .. import _failpoints
from ._pg_base import _NOW, _UNSETTLED, Conn, PgBase, _hold, _mark
from ._protocol import ApprovalRow, Lease, OwnershipLost, StepRow, WorkflowRow, approval_topic
from ._rows import (
    APPROVAL_COLUMNS,
    PG_STEP_MARKS,
    RUNNABLE,
    STEP_COLUMNS,
    WF_COLUMNS,
    versions_sql,
)


class PgWaiting(PgBase):
    """Suspension and wake-up, messages, events and approvals."""

    def suspend_workflow(
        self, workflow_id: str, lease: Lease, wake_at: float | None, topic: str | None
    ) -> None:
        """Unload a waiting workflow (WAITING, no owner), fenced on the lease."""
        count = self._rowcount(
            # A cancellation asked before the suspension wakes it at once (wake_at = 0, as
            # request_cancel does for a workflow already waiting).
            "UPDATE workflows SET status = 'WAITING', owner = NULL, wake_at = CASE WHEN "
            "cancel_requested = 1 THEN 0 ELSE %s::double precision END, "
            f"wait_topic = %s, updated_at = {_NOW} WHERE id = %s AND owner = %s AND epoch = %s "
            f"AND {RUNNABLE}",
            (wake_at, topic, workflow_id, lease.owner, lease.epoch),
        )
        if count != 1:
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
        params: dict[str, Any] = {"me": worker_id, "now": now, "limit": limit,
                                  "names": list(names)}  # fmt: skip
        runnable = versions_sql(params, versions, "version", _mark)
        # The candidates come from the two partial indexes (due timers; unconsumed messages);
        # the rows are then locked, skipping those another claimer holds. A cancelled waiting
        # workflow has wake_at = 0 (see request_cancel), so it is a due timer.
        query = (
            "UPDATE workflows SET owner = %(me)s, status = 'RUNNING', epoch = epoch + 1, "
            f"wake_at = NULL, wait_topic = NULL, updated_at = {_NOW} WHERE id IN ("
            "SELECT id FROM workflows WHERE status = 'WAITING' "
            f"AND name = ANY(%(names)s::text[]){runnable} AND id IN ("
            "SELECT id FROM workflows WHERE status = 'WAITING' AND wake_at <= %(now)s "
            "UNION SELECT m.workflow_id FROM messages m JOIN workflows w ON "
            "w.id = m.workflow_id AND w.wait_topic = m.topic WHERE m.consumed_by IS NULL "
            "AND w.status = 'WAITING') "
            "LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
            f"RETURNING {WF_COLUMNS}"
        )
        return self._claimed(self._claiming(query, params, "timer.fire"))

    def next_wake(
        self, names: Collection[str], versions: Collection[str] | None = None
    ) -> float | None:
        """The earliest timer among WAITING workflows of these names (and versions)."""
        if not names:
            return None
        params: dict[str, Any] = {"names": list(names)}
        runnable = versions_sql(params, versions, "version", _mark)
        # wake_at IS NOT NULL (MIN skips NULLs anyway) keeps the scan to the workflows with a
        # timer: without it, every waiting workflow's row was read at each pass of the waker
        found = self._fetchone(
            "SELECT MIN(wake_at) FROM workflows WHERE status = 'WAITING' AND wake_at IS NOT NULL "
            "AND "
            f"name = ANY(%(names)s::text[]){runnable}",
            params,
        )
        return None if found is None or found[0] is None else float(found[0])

    def send_message(
        self, workflow_id: str, topic: str, payload: str, idempotency_key: str | None
    ) -> bool:
        """Queue a message; False if its idempotency key was used before.

        A send without a key gets one of its own (``perdure:<uuid>``), so that a retry after
        a lost acknowledgement finds the message it sent instead of sending it twice.
        """
        key = idempotency_key if idempotency_key is not None else f"perdure:{uuid.uuid4()}"
        payload = self.codec.message_out(workflow_id, topic, payload)

        def settled(conn: Conn) -> Any:
            found = conn.execute(
                "SELECT 1 FROM messages WHERE workflow_id = %s AND topic = %s "
                "AND idempotency_key = %s",
                (workflow_id, topic, key),
            ).fetchone()
            return 1 if found is not None else _UNSETTLED

        # one statement: the insert, and a notification only if it inserted
        return (
            self._rowcount(
                "WITH sent AS (INSERT INTO messages (workflow_id, topic, payload, "
                f"idempotency_key, sent_at) VALUES (%s, %s, %s, %s, {_NOW}) ON CONFLICT DO "
                "NOTHING RETURNING 1) SELECT pg_notify(%s, '') FROM sent",
                (workflow_id, topic, payload, key, self.channel),
                settled,
            )
            == 1
        )

    def consume_message(
        self, workflow_id: str, topic: str, step: StepRow, lease: Lease
    ) -> str | None:
        """Take the oldest message on ``topic`` and journal it as ``step``, atomically."""

        def consume(conn: Conn) -> str | None:
            with conn.transaction():
                _hold(conn, workflow_id, lease)
                found = conn.execute(
                    "SELECT seq, payload FROM messages WHERE workflow_id = %s AND topic = %s "
                    "AND consumed_by IS NULL ORDER BY seq LIMIT 1 FOR UPDATE",
                    (workflow_id, topic),
                ).fetchone()
                if found is None:
                    return None
                conn.execute(
                    "UPDATE messages SET consumed_by = %s WHERE seq = %s", (step.key, found[0])
                )
                payload = self.codec.message_in(workflow_id, topic, str(found[1]))
                conn.execute(
                    f"INSERT INTO steps ({STEP_COLUMNS}) VALUES ({PG_STEP_MARKS})",
                    (step.workflow_id, step.position, step.key, step.name, step.status.value,
                     self.codec.seal(payload, workflow_id, "step.output", step.key), None,
                     step.started_at, step.finished_at, step.attempts, step.fingerprint),
                )  # fmt: skip
                if _failpoints.ARMED:
                    _failpoints.hit("store.consume", conn)
                return payload

        def settled(conn: Conn) -> Any:
            found = conn.execute(
                "SELECT output FROM steps WHERE workflow_id = %s AND key = %s",
                (workflow_id, step.key),
            ).fetchone()
            if found is None:
                return _UNSETTLED
            return self.codec.unseal(found[0], workflow_id, "step.output", step.key)

        return self._run(consume, settled)

    def set_event(self, workflow_id: str, key: str, value: str) -> None:
        """Publish (or replace) a workflow's event value."""
        value = self.codec.event_out(workflow_id, key, value)
        self._rowcount(
            "INSERT INTO events (workflow_id, key, value, updated_at) "
            f"VALUES (%s, %s, %s, {_NOW}) "
            "ON CONFLICT (workflow_id, key) DO UPDATE SET value = excluded.value, "
            "updated_at = excluded.updated_at",
            (workflow_id, key, value),
        )

    def get_event(self, workflow_id: str, key: str) -> str | None:
        """A workflow's event value, or None."""
        found = self._fetchone(
            "SELECT value FROM events WHERE workflow_id = %s AND key = %s", (workflow_id, key)
        )
        return None if found is None else self.codec.event_in(workflow_id, key, str(found[0]))

    def request_approval(self, row: ApprovalRow) -> None:
        """Record a pending approval (a no-op if already recorded)."""
        self._rowcount(
            "INSERT INTO approvals (workflow_id, name, details, status, requested_at) "
            "VALUES (%s, %s, %s, 'PENDING', %s) ON CONFLICT DO NOTHING",
            (row.workflow_id, row.name, self.codec.details_out(row), row.requested_at),
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

        def decide(conn: Conn) -> bool:
            with conn.transaction():
                cur = conn.execute(
                    f"UPDATE approvals SET status = %s, decided_at = {_NOW}, decided_by = %s, "
                    "comment = %s WHERE workflow_id = %s AND name = %s AND status = 'PENDING' "
                    "RETURNING decided_at",
                    (status, by, comment, workflow_id, name),
                )
                decided = cur.fetchone()
                if decided is None:
                    return False
                conn.execute(
                    "INSERT INTO messages (workflow_id, topic, payload, idempotency_key, "
                    "sent_at) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (workflow_id, approval_topic(name), message, "decision", decided[0]),
                )
                self._notify(conn)
                return True

        def settled(conn: Conn) -> Any:  # this very decision, acknowledged too late
            found = conn.execute(
                "SELECT 1 FROM approvals WHERE workflow_id = %s AND name = %s AND status = %s "
                "AND decided_by IS NOT DISTINCT FROM %s AND comment IS NOT DISTINCT FROM %s",
                (workflow_id, name, status, by, comment),
            ).fetchone()
            return True if found is not None else _UNSETTLED

        return self._run(decide, settled)

    def close_approval(self, workflow_id: str, name: str, status: str) -> ApprovalRow | None:
        """Mark a pending approval as ended without a decision; return the row as it is
        then (a decision that landed first stays, and is returned)."""
        self._rowcount(
            f"UPDATE approvals SET status = %s, decided_at = {_NOW} WHERE workflow_id = %s "
            "AND name = %s AND status = 'PENDING'",
            (status, workflow_id, name),
        )
        found = self._fetchone(
            f"SELECT {APPROVAL_COLUMNS} FROM approvals JOIN workflows ON "
            "workflows.id = approvals.workflow_id WHERE approvals.workflow_id = %s "
            "AND approvals.name = %s",
            (workflow_id, name),
        )
        return None if found is None else self.codec.approval_in(ApprovalRow(*found))

    def list_approvals(self, pending_only: bool, limit: int) -> list[ApprovalRow]:
        """PENDING approvals oldest first, or all newest first."""
        where = "WHERE approvals.status = 'PENDING'" if pending_only else ""
        order = "" if pending_only else "DESC"  # the oldest waiting first; else the newest
        rows = self._fetchall(
            f"SELECT {APPROVAL_COLUMNS} FROM approvals JOIN workflows ON "
            f"workflows.id = approvals.workflow_id {where} ORDER BY requested_at {order} "
            "LIMIT %s",
            (limit,),
        )
        return [self.codec.approval_in(ApprovalRow(*r)) for r in rows]
