"""PostgreSQL: rate limits of model calls, and queues' limits (a part of the store).

Queues: workers taking from one limited queue serialize on a transaction-level advisory lock
(:data:`QUEUE_LOCK` and a hash of the queue's name), so the counts they read cannot change
before their update commits. Model calls:

Workers taking room under one key serialize on a transaction-level advisory lock (the key's
hash under :data:`RATE_LOCK`), so the calls counted and the call recorded cannot be split by
another worker's take; the lock is released when the transaction ends. Every time is the
database's clock (``clock_timestamp()``, read once under the lock), so workers with skewed
clocks agree on the window. Transient failures are retried by ``PgBase._run``: a take whose
acknowledgement was lost may be recorded twice, which only errs on the side of fewer calls.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from ._pg_base import _NOW, Conn, PgBase, _mark
from ._protocol import QueueLimits, RateGrant, WorkflowRow
from ._rate_window import take_room
from ._rows import ACTIVE, WF_COLUMNS, stamp_sql

#: The first key of the advisory locks that serialize taking room under a rate limit
#: ("prlm"; the second key is a hash of the limit's key). Distinct from the queue locks.
RATE_LOCK = int.from_bytes(b"prlm", "big")
#: The first key of the advisory locks that serialize taking work off a limited queue
#: ("pdur"; the second key is a hash of the queue's name).
QUEUE_LOCK = int.from_bytes(b"pdur", "big")


class PgLimits(PgBase):
    """Model-call rate windows and provider blocks, and queue limits, shared by every worker
    of the database."""

    def take_rate(
        self, key: str, requests: int | None, tokens: int | None, per: float
    ) -> RateGrant:
        """Take room for one call under ``key`` if its limits admit it now (see the
        protocol)."""

        def take(conn: Conn) -> RateGrant:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (RATE_LOCK, key))
                found = conn.execute(f"SELECT {_NOW}").fetchone()
                assert found is not None
                now = float(found[0])
                return take_room(conn, "%s", key, now, requests, tokens, per)

        return self._run(take)

    def charge_rate(self, key: str, call_id: int, tokens: int) -> None:
        """Record the tokens a taken call used; they count from now (database clock)."""
        self._rowcount(
            f"UPDATE rate_calls SET tokens = %s, charged_at = {_NOW} WHERE id = %s AND key = %s",
            (int(tokens), call_id, key),
        )

    def block_rate(self, key: str, seconds: float) -> None:
        """Give ``key`` no room for ``seconds`` from now, keeping a longer block."""
        self._rowcount(
            f"INSERT INTO rate_blocks (key, blocked_until) VALUES (%s, {_NOW} + %s) "
            "ON CONFLICT (key) DO UPDATE SET "
            "blocked_until = GREATEST(rate_blocks.blocked_until, excluded.blocked_until)",
            (key, max(0.0, float(seconds))),
        )

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
        """Take ENQUEUED workflows the queue's limits admit (see the protocol). Workers
        taking from one limited queue serialize on a transaction-level advisory lock, so the
        counts they read cannot change before their update commits."""
        if not names or limit <= 0:
            return []
        params: dict[str, Any] = {"me": worker_id, "q": queue, "names": list(names)}
        version = stamp_sql(params, stamp, _mark)

        def take(conn: Conn) -> list[Any]:
            with conn.transaction():
                room = limit
                if limits != QueueLimits():
                    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                                 (QUEUE_LOCK, queue))  # fmt: skip
                    room = min([room, *_queue_room(conn, params, limits)])
                if room <= 0:
                    return []
                return conn.execute(
                    f"UPDATE workflows SET status = 'RUNNING', owner = %(me)s, epoch = epoch + 1, "
                    f"dequeued_at = {_NOW}, updated_at = {_NOW}{version} WHERE id IN "
                    "(SELECT id FROM workflows WHERE status = 'ENQUEUED' AND queue = %(q)s "
                    "AND name = ANY(%(names)s::text[]) ORDER BY priority, created_at "
                    "LIMIT %(room)s "
                    f"FOR UPDATE SKIP LOCKED) RETURNING {WF_COLUMNS}",
                    {**params, "room": room},
                ).fetchall()

        return self._claimed(self._run(take))


#: How many of the queue's workflows were taken in the rate window. The window's start is a
#: scalar subquery, computed once before the scan: ``clock_timestamp()`` is volatile, so
#: compared directly it cannot bound an index scan, and every row the queue ever held (its
#: whole history) would be read on each dequeue (23 ms with 20,000 past rows, under the
#: queue's lock; 0.2 ms this way).
RATE_WINDOW_COUNT = (
    "SELECT COUNT(*) FROM workflows WHERE queue = %(q)s "
    f"AND dequeued_at > (SELECT {_NOW} - %(per)s)"
)


def _queue_room(conn: Conn, params: dict[str, Any], limits: QueueLimits) -> list[int]:
    """How many more workflows each of the queue's limits admits now (one figure per limit
    that is set), counted inside the caller's locked transaction."""
    room: list[int] = []
    if limits.concurrency is not None:
        found = conn.execute(
            f"SELECT COUNT(*) FROM workflows WHERE queue = %(q)s AND {ACTIVE}", params
        ).fetchone()
        room.append(limits.concurrency - int(found[0] if found else 0))
    if limits.worker_concurrency is not None:
        found = conn.execute(
            "SELECT COUNT(*) FROM workflows WHERE queue = %(q)s AND owner = %(me)s AND "
            "status = 'RUNNING'",
            params,
        ).fetchone()
        room.append(limits.worker_concurrency - int(found[0] if found else 0))
    if limits.rate_limit is not None:
        count, per = limits.rate_limit
        found = conn.execute(RATE_WINDOW_COUNT, {**params, "per": float(per)}).fetchone()
        room.append(count - int(found[0] if found else 0))
    return room
