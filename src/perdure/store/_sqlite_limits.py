"""SQLite: rate limits of model calls (a part of the store).

Taking room is one write transaction (``BEGIN IMMEDIATE``): every process sharing the file
serializes on its write lock, so the count read and the call recorded cannot be split by
another taker. Time is this machine's clock, which every process sharing the file shares.
"""

from __future__ import annotations

import sqlite3
import time

from ._protocol import RateGrant
from ._rate_window import take_room
from ._sqlite_base import SQLiteBase


class SQLiteLimits(SQLiteBase):
    """Model-call rate windows and provider blocks, shared by every process on the file."""

    def take_rate(
        self, key: str, requests: int | None, tokens: int | None, per: float
    ) -> RateGrant:
        """Take room for one call under ``key`` if its limits admit it now (see the
        protocol)."""

        def take(conn: sqlite3.Connection) -> RateGrant:
            with self._transaction(conn):
                now = time.time()  # read under the write lock: no taker can slip in before
                return take_room(conn, "?", key, now, requests, tokens, per)

        return self._run(take)

    def charge_rate(self, key: str, call_id: int, tokens: int) -> None:
        """Record the tokens a taken call used; they count from now."""
        self._run(
            lambda c: c.execute(
                "UPDATE rate_calls SET tokens = ?, charged_at = ? WHERE id = ? AND key = ?",
                (int(tokens), time.time(), call_id, key),
            )
        )

    def block_rate(self, key: str, seconds: float) -> None:
        """Give ``key`` no room for ``seconds`` from now, keeping a longer block."""
        self._run(
            lambda c: c.execute(
                "INSERT INTO rate_blocks (key, blocked_until) VALUES (?, ?) ON CONFLICT (key) "
                "DO UPDATE SET blocked_until = MAX(blocked_until, excluded.blocked_until)",
                (key, time.time() + max(0.0, float(seconds))),
            )
        )
