"""The queries that run on a timer, whatever the table's size, read an index, not the table.

A worker asks "which of my workflows were cancelled?" at every heartbeat, and a dequeue from a
rate-limited queue counts what the queue took in its window. Both ran as full scans of the
``workflows`` table, history included (6 ms at 40,000 rows on PostgreSQL, growing with every
workflow ever run). Each test captures the exact statements the store sends and asks the
database for their plan, with sequential scans priced out as they would be on a big table.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from perdure.store import QueueLimits, open_store
from perdure.store.postgres import PostgresStore
from perdure.store.sqlite import SQLiteStore


def _heartbeat_queries(store: Any) -> None:
    store.owned("worker-1")
    store.cancel_requests("worker-1")


#: statements that read workflows rows (a DELETE's subquery included)
_READS = ("SELECT", "UPDATE", "DELETE")

#: every limit a queue can have, so each of its counts runs
_LIMITED = QueueLimits(concurrency=5, worker_concurrency=2, rate_limit=(10, 60.0))


def _periodic_queries(store: Any) -> None:
    """What a worker runs on its timers (the heartbeat's, recovery's, the waker's queries, a
    dequeue from a queue with every limit set) and when it closes."""
    _heartbeat_queries(store)
    store.claim("worker-1", ["flow"], ["worker-0"], 10)
    store.orphaned_names("worker-1", ["worker-0"])
    store.claim_ready("worker-1", ["flow"], 100.0, 10)
    store.next_wake(["flow"])
    store.dequeue("worker-1", "mail", ["flow"], 1, _LIMITED)
    store.forget_workers(["worker-0"])  # after each recovery sweep
    store.release("worker-1")  # when an engine closes


# -- SQLite ------------------------------------------------------------------------------------


#: partial indexes that hold only live workflows: scanning one whole is cheap at any history
_LIVE_INDEXES = ("workflows_unfinished", "workflows_waiting", "workflows_enqueued",
                 "workflows_queue_active")  # fmt: skip


def _reads_history(detail: str) -> bool:
    """Whether a SQLite plan step reads every workflow ever run: a scan of the table, or of an
    index over all its rows (a search, or a scan of a live-only partial index, does not)."""
    if not detail.startswith("SCAN workflows"):
        return False
    return not any(detail.endswith(f" INDEX {name}") for name in _LIVE_INDEXES)


def test_sqlite_periodic_queries_search_an_index(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'plans.db'}")
    assert isinstance(store, SQLiteStore)
    try:
        sent: list[str] = []
        store._conn.set_trace_callback(sent.append)  # the statements, parameters bound
        _periodic_queries(store)
        store._conn.set_trace_callback(None)
        reads = [sql for sql in sent if sql.lstrip().upper().startswith(_READS)]
        assert len(reads) >= 9, sent
        for sql in reads:
            plan = store._conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
            details = [row[-1] for row in plan]
            assert not any(_reads_history(d) for d in details), (sql, details)
    finally:
        store.close()


# -- PostgreSQL --------------------------------------------------------------------------------


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an ``EXPLAIN (FORMAT JSON)`` plan tree."""
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


def _pg_reads_history(plan: dict[str, Any]) -> bool:
    """Whether a PostgreSQL plan reads every workflow ever run: a sequential scan of the
    table, or a scan of an index over all its rows with nothing bounding it."""
    for node in _nodes(plan):
        if node["Node Type"] == "Seq Scan" and node.get("Relation Name") == "workflows":
            return True
        index = node.get("Index Name", "")
        unbounded = "Index Cond" not in node
        if index.startswith("workflows") and index not in _LIVE_INDEXES and unbounded:
            return True
    return False


def _pg_plans(store: PostgresStore, statements: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    def explain(conn: Any) -> list[dict[str, Any]]:
        with conn.transaction():
            conn.execute("SET LOCAL enable_seqscan = off")  # plan as for a big table
            return [
                conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchone()[0][0]["Plan"]
                for sql, params in statements
            ]

    plans: list[dict[str, Any]] = store._run(explain)
    return plans


def _recording(store: PostgresStore, method: str, sent: list[tuple[str, Any]]) -> None:
    real: Callable[..., Any] = getattr(store, method)

    def record(sql: str, params: Any = None) -> Any:
        sent.append((sql, params))
        return real(sql, params)

    setattr(store, method, record)


def test_postgres_heartbeat_queries_scan_an_index(pg_url: str) -> None:
    store = open_store(pg_url)
    assert isinstance(store, PostgresStore)
    try:
        sent: list[tuple[str, Any]] = []
        _recording(store, "_fetchall", sent)
        _heartbeat_queries(store)
        assert len(sent) == 2, sent
        for (sql, _), plan in zip(sent, _pg_plans(store, sent), strict=True):
            scans = [n for n in _nodes(plan) if n.get("Relation Name") == "workflows"]
            assert scans and all(n["Node Type"] != "Seq Scan" for n in scans), (sql, plan)
    finally:
        store.close()


def test_postgres_periodic_queries_scan_an_index(pg_url: str) -> None:
    store = open_store(pg_url)
    assert isinstance(store, PostgresStore)
    try:
        sent = _spied(store, _periodic_queries)
        reads = [
            (q, p) for q, p in sent
            if "workflows" in str(q) and str(q).lstrip().upper().startswith(_READS)
        ]  # fmt: skip
        assert len(reads) >= 6, sent
        for (sql, _), plan in zip(reads, _pg_plans(store, reads), strict=True):
            assert not _pg_reads_history(plan), (sql, plan)
    finally:
        store.close()


def _spied(store: PostgresStore, calls: Callable[[Any], None]) -> list[tuple[str, Any]]:
    """The statements ``calls(store)`` sends, in order, with their parameters."""
    sent: list[tuple[str, Any]] = []
    real_run = store._run

    def spying(fn: Callable[[Any], Any], settled: Any = None) -> Any:
        return real_run(lambda conn: fn(_Spy(conn, sent)))

    store._run = spying  # type: ignore[method-assign]
    try:
        calls(store)
    finally:
        store._run = real_run  # type: ignore[method-assign]
    return sent


def test_a_rate_limited_queue_counts_its_window_through_the_index(pg_url: str) -> None:
    """The window's start bounds the index scan: a dequeue reads the rows taken in the
    window, not every row the queue ever held (a volatile clock compared in the filter made
    each dequeue of a queue with 20,000 past rows take 23 ms, under the queue's lock)."""
    store = open_store(pg_url)
    assert isinstance(store, PostgresStore)
    try:
        sent = _spied(store, lambda s: s.dequeue("worker-1", "mail", ["flow"], 1, _LIMITED))
        counts = [(sql, p) for sql, p in sent if "dequeued_at >" in str(sql) and "COUNT" in sql]
        assert len(counts) == 1, sent
        (plan,) = _pg_plans(store, counts)
        conditions = [n.get("Index Cond", "") for n in _nodes(plan)]
        assert any("dequeued_at" in c for c in conditions), plan
    finally:
        store.close()


class _Spy:
    """A connection that records the statements run on it."""

    def __init__(self, conn: Any, sent: list[tuple[str, Any]]) -> None:
        self._conn = conn
        self._sent = sent

    def execute(self, sql: Any, params: Any = None, **kwargs: Any) -> Any:
        self._sent.append((sql, params))
        return self._conn.execute(sql, params, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)
