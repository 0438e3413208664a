"""The arithmetic of a model-call rate window, shared by the SQLite and PostgreSQL stores.

The stores lock a key and read the time their own way, then :func:`take_room` (the same SQL on
both) reads the key's recent calls and asks :func:`wait_for_room`, pure, whether one more call
fits now, and if not, how long until it may.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._protocol import RateGrant

#: The shortest wait reported when there is no room (a wait of 0 would mean "go").
MIN_WAIT = 0.001
#: How long a call that was never charged (its request failed, or its process died) keeps its
#: row after its window: a charge for it may still come while its response is on the way.
UNCHARGED_GRACE = 900.0


def wait_for_room(
    now: float,
    per: float,
    requests: int | None,
    tokens: int | None,
    taken: Sequence[float],
    charged: Sequence[tuple[float, int]],
    blocked_until: float | None,
) -> float:
    """Seconds until one more call fits (0.0: it fits now).

    Args:
        now: the store's clock.
        per: the window, in seconds.
        requests: calls allowed per window (None: no limit).
        tokens: the call starts only while fewer tokens than this were charged in the window
            (None: no limit).
        taken: when the key's calls in the window were taken, oldest first.
        charged: (when, tokens) of the key's calls charged in the window, oldest first.
        blocked_until: the end of a provider's block of the key, if any.
    """
    waits = [0.0]
    if blocked_until is not None:
        waits.append(blocked_until - now)
    if requests is not None and len(taken) >= requests:
        # the call that must leave the window for the count to drop below the limit
        waits.append(taken[len(taken) - requests] + per - now)
    if tokens is not None:
        used = sum(spent for _, spent in charged)
        for at, spent in charged:
            if used < tokens:
                break
            used -= spent
            waits.append(at + per - now)
    wait = max(waits)
    return max(wait, MIN_WAIT) if wait > 0 else 0.0


def read_window(
    conn: Any, mark: str, key: str, edge: float, now: float, counted: bool, summed: bool
) -> tuple[list[float], list[tuple[float, int]], float | None]:
    """The key's calls taken (if ``counted``) and charged (if ``summed``) after ``edge``,
    oldest first, and its block, on a DB-API connection whose parameter marker is ``mark``."""
    taken = []
    if counted:
        taken = conn.execute(
            f"SELECT taken_at FROM rate_calls WHERE key = {mark} AND taken_at > {mark} "
            "ORDER BY taken_at",
            (key, edge),
        ).fetchall()
    charged = []
    if summed:
        charged = conn.execute(
            f"SELECT charged_at, tokens FROM rate_calls WHERE key = {mark} "
            f"AND charged_at > {mark} ORDER BY charged_at",
            (key, edge),
        ).fetchall()
    block = conn.execute(
        f"SELECT blocked_until FROM rate_blocks WHERE key = {mark} AND blocked_until > {mark}",
        (key, now),
    ).fetchone()
    return (
        [float(r[0]) for r in taken],
        [(float(r[0]), int(r[1])) for r in charged],
        None if block is None else float(block[0]),
    )


def take_room(
    conn: Any,
    mark: str,
    key: str,
    now: float,
    requests: int | None,
    tokens: int | None,
    per: float,
) -> RateGrant:
    """Inside the caller's locked transaction, at the store's time ``now``: drop the key's
    expired rows, then record one call if the limits admit it (see ``Store.take_rate``)."""
    edge = now - per
    # an uncharged call may still be charged for a while (its response is on the way);
    # without a token limit nothing will charge it
    grace = UNCHARGED_GRACE if tokens is not None else 0.0
    conn.execute(
        f"DELETE FROM rate_calls WHERE key = {mark} AND taken_at <= {mark} AND "
        f"COALESCE(charged_at, taken_at + {mark}) <= {mark}",
        (key, edge, grace, edge),
    )
    conn.execute(
        f"DELETE FROM rate_blocks WHERE key = {mark} AND blocked_until <= {mark}", (key, now)
    )
    window = read_window(conn, mark, key, edge, now, requests is not None, tokens is not None)
    wait = wait_for_room(now, per, requests, tokens, *window)
    if wait > 0:
        return RateGrant(None, wait)
    row = conn.execute(
        f"INSERT INTO rate_calls (key, taken_at) VALUES ({mark}, {mark}) RETURNING id",
        (key, now),
    ).fetchone()
    return RateGrant(int(row[0]), 0.0)
