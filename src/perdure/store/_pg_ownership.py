"""PostgreSQL: cancellation requests, workers, and who owns what (a part of the store).

A worker proves it is alive with a heartbeat row whose expiry is the database's clock plus the
lease. Recovery claims the unfinished workflows of workers that are gone (dead by the
database's clock, or named dead by the caller), oldest first, skipping rows another claimer
holds (``FOR UPDATE SKIP LOCKED``); a claim bumps the workflow's epoch, which fences off any
write of the previous owner. "What does this worker hold" reads the owner index of live
workflows (only PENDING and RUNNING rows have an owner), never the whole history.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from .. import _failpoints
from ._pg_base import _NOW, Conn, PgBase, _mark
from ._protocol import WorkerRow, WorkflowRow
from ._rows import OWNED, RUNNABLE, UNFINISHED, WF_COLUMNS, versions_sql

_CLAIMABLE = (
    f"{RUNNABLE} AND owner IS DISTINCT FROM %(me)s AND (owner IS NULL "
    "OR owner = ANY(%(dead)s::text[]) OR NOT EXISTS (SELECT 1 FROM workers WHERE "
    f"workers.id = workflows.owner AND workers.expires_at >= {_NOW}))"
)
_STEP_COUNT = "SELECT COUNT(*) FROM steps WHERE steps.workflow_id = workflows.id"


class PgOwnership(PgBase):
    """Cancellation requests, heartbeats, claims and releases (see the module docs)."""

    # -- cancellation ----------------------------------------------------------------------

    def request_cancel(self, workflow_id: str) -> WorkflowRow | None:
        """Flag an unfinished workflow for cancellation; return its row."""

        def flag(conn: Conn) -> Any:
            with conn.transaction():
                flagged = conn.execute(
                    f"UPDATE workflows SET cancel_requested = 1, updated_at = {_NOW}, "
                    "wake_at = CASE WHEN status = 'WAITING' THEN 0 ELSE wake_at END, "
                    "status = CASE WHEN status = 'ENQUEUED' THEN 'CANCELLED' ELSE status END "
                    f"WHERE id = %s AND {UNFINISHED}",
                    (workflow_id,),
                ).rowcount
                if flagged:
                    self._notify(conn)  # a waiting workflow is woken to run its cancellation
                return conn.execute(
                    f"SELECT {WF_COLUMNS} FROM workflows WHERE id = %s", (workflow_id,)
                ).fetchone()

        found = self._run(flag)
        return None if found is None else self._wf(found)

    def owned(self, worker_id: str) -> list[WorkflowRow]:
        """Unfinished workflows ``worker_id`` holds."""
        rows = self._fetchall(
            f"SELECT {WF_COLUMNS} FROM workflows WHERE owner = %s AND {OWNED}",
            (worker_id,),
        )
        return [self._wf(r) for r in rows]

    def cancel_requests(self, worker_id: str) -> list[str]:
        """Ids of unfinished workflows held by ``worker_id`` whose cancellation is asked."""
        rows = self._fetchall(
            f"SELECT id FROM workflows WHERE owner = %s AND cancel_requested = 1 AND {OWNED}",
            (worker_id,),
        )
        return [r[0] for r in rows]

    # -- ownership -------------------------------------------------------------------------

    def heartbeat(self, worker: WorkerRow, lease_seconds: float) -> None:
        """Record that ``worker`` is alive for ``lease_seconds`` from now (database clock)."""

        def renew(conn: Conn) -> None:
            if _failpoints.ARMED:
                _failpoints.hit("lease.renew", conn)
            conn.execute(
                "INSERT INTO workers (id, host, pid, heartbeat_at, expires_at) "
                "SELECT %s, %s, %s, t, t + %s FROM (SELECT "
                f"{_NOW} AS t) AS clock "
                "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, "
                "expires_at = excluded.expires_at",
                (worker.id, worker.host, worker.pid, float(lease_seconds)),
            )

        self._run(renew)

    def list_workers(self) -> list[WorkerRow]:
        """Every worker row, live or not."""
        rows = self._fetchall("SELECT id, host, pid, heartbeat_at, expires_at FROM workers")
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
        params: dict[str, Any] = {
            "me": worker_id,
            "limit": limit,
            "dead": list(dead_workers),
            "names": list(names),
        }
        runnable = versions_sql(params, versions, "version", _mark)
        only = ""
        if workflow_id is not None:
            params["only"] = workflow_id
            only = "AND id = %(only)s"
        query = (
            f"UPDATE workflows SET owner = %(me)s, status = 'RUNNING', updated_at = {_NOW}, "
            "recoveries = recoveries + (owner IS NOT NULL)::int, epoch = epoch + 1, "
            "stalls = CASE WHEN owner IS NULL THEN (CASE WHEN stalls > 0 AND "
            f"({_STEP_COUNT}) > claimed_steps THEN 1 ELSE stalls END) WHEN "
            f"({_STEP_COUNT}) > claimed_steps THEN 1 ELSE stalls + 1 END, "
            f"claimed_steps = ({_STEP_COUNT}) "
            f"WHERE id IN (SELECT id FROM workflows WHERE {_CLAIMABLE} "
            f"AND name = ANY(%(names)s::text[]){runnable} {only} ORDER BY created_at "
            "LIMIT %(limit)s "
            f"FOR UPDATE SKIP LOCKED) RETURNING {WF_COLUMNS}"
        )
        return self._claimed(self._claiming(query, params, "recovery.claim"))

    def orphaned_names(self, worker_id: str, dead_workers: Sequence[str]) -> dict[str, int]:
        """Count claimable workflows by name, whatever their name."""
        rows = self._fetchall(
            f"SELECT name, COUNT(*) FROM workflows WHERE {_CLAIMABLE} GROUP BY name",
            {"me": worker_id, "dead": list(dead_workers)},
        )
        return {str(name): int(count) for name, count in rows}

    def release(self, worker_id: str) -> int:
        """Give up every unfinished workflow ``worker_id`` owns, and forget the worker."""

        def release(conn: Conn) -> int:
            with conn.transaction():
                count = conn.execute(
                    f"UPDATE workflows SET owner = NULL, status = 'PENDING', updated_at = {_NOW} "
                    f"WHERE owner = %s AND {OWNED}",
                    (worker_id,),
                ).rowcount
                conn.execute("DELETE FROM workers WHERE id = %s", (worker_id,))
                if count:
                    self._notify(conn)  # released work: another worker may take it now
                return count

        return self._run(release)

    def forget_workers(self, worker_ids: Sequence[str]) -> None:
        """Delete worker rows that own nothing any more."""
        if not worker_ids:
            return
        self._rowcount(
            "DELETE FROM workers WHERE id = ANY(%s::text[]) AND id NOT IN "
            f"(SELECT owner FROM workflows WHERE owner IS NOT NULL AND {OWNED})",
            (list(worker_ids),),
        )
