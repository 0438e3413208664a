"""PostgreSQL: rate limits of model calls (a part of the store).

Workers taking room under one key serialize on a transaction-level advisory lock (the key's
hash under :data:`RATE_LOCK`), so the calls counted and the call recorded cannot be split by
another worker's take; the lock is released when the transaction ends. Every time is the
database's clock (``clock_timestamp()``, read once under the lock), so workers with skewed
clocks agree on the window. Transient failures are retried by ``PgBase._run``: a take whose
acknowledgement was lost may be recorded twice, which only errs on the side of fewer calls.
"""

from __future__ import annotations

from ._pg_base import _NOW, Conn, PgBase
from ._protocol import RateGrant
from ._rate_window import take_room

#: The first key of the advisory locks that serialize taking room under a rate limit
#: ("prlm"; the second key is a hash of the limit's key). Distinct from the queue locks.
RATE_LOCK = int.from_bytes(b"prlm", "big")


class PgLimits(PgBase):
    """Model-call rate windows and provider blocks, shared by every worker of the database."""

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
