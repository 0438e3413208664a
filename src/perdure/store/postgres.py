"""The PostgreSQL store: many workers on many machines, coordinated by one database.

psycopg 3 (sync API) with a connection pool: the engine calls the store from several threads,
and each call borrows a connection for one statement or one transaction. Connections are in
autocommit mode, so a single statement is its own transaction; the few multi-statement
operations (a migration, consuming a message, deciding an approval, finishing a workflow) run
in an explicit transaction.

Time: heartbeats, leases and claims use the database's clock (``clock_timestamp()``), so
workers with skewed clocks agree on who is alive. The ``now`` given to ``claim_ready`` is the
engine's clock (timers are set by it) and is used as given.

Fencing: a journal write locks the workflow row ``FOR SHARE`` while it checks the lease, so a
claim (which takes the row ``FOR UPDATE``) cannot slip in between the check and the commit: a
worker that lost its lease commits nothing. Claims skip rows another transaction holds
(``FOR UPDATE SKIP LOCKED``), so concurrent claimers never block each other or take the same
workflow.

A URL's ``?schema=NAME`` (or the ``schema`` argument) puts perdure's tables in that PostgreSQL
schema (created by ``migrate`` if missing), e.g. one schema per test or per application.
"""

from __future__ import annotations

import logging
import re
import time
import typing
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

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
log = logging.getLogger("perdure")

#: ``settled`` found no trace of the write: run it (again).
_UNSETTLED: Any = object()

#: SQLSTATEs worth retrying: the statement did not take effect and may succeed if run again
#: (serialization failure, deadlock, lock timeout, server shutdown or restart, too many
#: connections, connection failures).
TRANSIENT_SQLSTATES = frozenset(
    {"40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300", "08000", "08001", "08003",
     "08004", "08006", "08007"}
)  # fmt: skip


def transient(exc: psycopg.Error) -> bool:
    """Whether a database error is worth retrying: a known transient SQLSTATE, or a failure
    of the connection itself (no SQLSTATE: the server closed it, the pool timed out)."""
    if exc.sqlstate is not None:
        return exc.sqlstate in TRANSIENT_SQLSTATES
    return isinstance(exc, psycopg.OperationalError)


#: Key of the transaction-level advisory lock that serializes migrations ("perdure").
MIGRATION_LOCK = int.from_bytes(b"perdure", "big")

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_NOW = "extract(epoch from clock_timestamp())::double precision"
_CLAIMABLE = (
    f"{RUNNABLE} AND owner IS DISTINCT FROM %(me)s AND (owner IS NULL "
    "OR owner = ANY(%(dead)s::text[]) OR NOT EXISTS (SELECT 1 FROM workers WHERE "
    f"workers.id = workflows.owner AND workers.expires_at >= {_NOW}))"
)
_STEP_COUNT = "SELECT COUNT(*) FROM steps WHERE steps.workflow_id = workflows.id"
_FENCE = (
    "WITH owned AS (SELECT 1 FROM workflows WHERE id = %(wf)s AND owner = %(owner)s "
    "AND epoch = %(epoch)s FOR SHARE) "
)
_APPEND_SQL = (
    f"{_FENCE}INSERT INTO steps ({STEP_COLUMNS}) SELECT %(wf)s, %(position)s, %(key)s, "
    "%(name)s, %(status)s, %(output)s, %(error)s, %(started_at)s, %(finished_at)s, "
    "%(attempts)s FROM owned ON CONFLICT DO NOTHING"
)
_ATTEMPT_SQL = (
    f"{_FENCE}INSERT INTO step_attempts ({ATTEMPT_COLUMNS}) SELECT %(wf)s, %(key)s, "
    "%(attempt)s, %(name)s, %(error)s, %(started_at)s, %(failed_at)s, %(retry_at)s "
    "FROM owned ON CONFLICT DO NOTHING"
)

Conn = psycopg.Connection[Any]


def split_url(url: str) -> tuple[str, str | None]:
    """Take perdure's own ``schema`` query parameter out of a PostgreSQL URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = None
    kept = []
    for key, value in query:
        if key == "schema":
            schema = value
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), schema


class PostgresStore:
    """A :class:`~perdure.store.Store` on a PostgreSQL database.

    Args:
        url: a libpq URL (``postgresql://user@host:5432/db``); a ``schema`` query parameter
            selects the PostgreSQL schema perdure's tables live in.
        schema: the schema (overrides the URL's); default: the server's search_path.
        min_size: connections the pool keeps open.
        max_size: most connections the pool opens at once.
        connect_timeout: seconds to wait for the database when opening the store.
        outage_timeout: how long a call retries transient failures (connection lost, server
            restarting, serialization failure, deadlock) before it raises
            ``StoreUnavailableError``.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout: float = 10.0,
        outage_timeout: float = 120.0,
    ) -> None:
        conninfo, url_schema = split_url(url)
        schema = schema if schema is not None else url_schema
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ConfigurationError(
                f"PostgreSQL schema name {schema!r} must be lowercase letters, digits and _"
            )
        self.schema = schema
        self.outage_timeout = outage_timeout
        self._label = _redact(conninfo) + (f" (schema {schema})" if schema else "")
        self._closed = False
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, int(connect_timeout)),
        }
        given_params = dict(parse_qsl(urlsplit(conninfo).query))
        if "application_name" not in given_params:
            kwargs["application_name"] = "perdure"
        if schema is not None:
            given = given_params.get("options", "")
            kwargs["options"] = f"{given} -c search_path={schema}".strip()
        try:  # one direct connection first: a clear, immediate error if it cannot connect
            psycopg.connect(conninfo, **kwargs).close()
        except psycopg.Error as exc:
            raise StoreUnavailableError(
                f"cannot open PostgreSQL database {self._label}: {exc}"
            ) from exc
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs=kwargs,
            timeout=connect_timeout,
            open=False,
            name="perdure",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except (psycopg.Error, ValueError) as exc:
            self._pool.close()
            raise StoreUnavailableError(
                f"cannot open PostgreSQL database {self._label}: {exc}"
            ) from exc

    # -- plumbing --------------------------------------------------------------------------

    def _run(self, fn: Callable[[Conn], T], settled: Callable[[Conn], Any] | None = None) -> T:
        """Run ``fn`` on a pooled connection, retrying transient failures.

        A lost connection, a server shutting down or restarting, a serialization failure or
        a deadlock (see :func:`transient`) is retried with backoff for up to
        ``outage_timeout`` seconds: a database outage pauses the caller and it goes on when
        the database is back. ``fn`` must be safe to run again after a failure. A write
        whose commit may have landed although its acknowledgement was lost passes
        ``settled``: before a retry it looks for the write's effect and returns its result
        (anything but ``_UNSETTLED``) when the first try did commit.
        """
        give_up_at: float | None = None
        delay = 0.02
        while True:
            if self._closed:
                raise StoreUnavailableError(f"the store for {self._label} is closed")
            try:
                with self._pool.connection() as conn:
                    if give_up_at is not None and settled is not None:
                        found = settled(conn)
                        if found is not _UNSETTLED:
                            return typing.cast(T, found)
                    result = fn(conn)
                if give_up_at is not None:
                    log.warning("perdure: PostgreSQL database %s is reachable again", self._label)
                return result
            except psycopg.Error as exc:
                if not transient(exc):
                    raise StoreError(f"PostgreSQL database {self._label}: {exc}") from exc
                now = time.monotonic()
                if give_up_at is None:
                    give_up_at = now + self.outage_timeout
                    log.warning(
                        "perdure: PostgreSQL database %s failed (%s); retrying for up to %.0f s",
                        self._label, str(exc).strip(), self.outage_timeout,
                    )  # fmt: skip
                if now >= give_up_at:
                    raise StoreUnavailableError(
                        f"PostgreSQL database {self._label} is unavailable (still failing "
                        f"after {self.outage_timeout:.0f} s of retries): {exc}"
                    ) from exc
                time.sleep(min(delay, max(0.0, give_up_at - now)))
                delay = min(delay * 2, 1.0)

    def _rowcount(
        self, query: str, params: Any, settled: Callable[[Conn], Any] | None = None
    ) -> int:
        return self._run(lambda c: c.execute(query, params).rowcount, settled)

    def _fetchall(self, query: str, params: Any = None) -> list[Any]:
        return self._run(lambda c: c.execute(query, params).fetchall())

    def _fetchone(self, query: str, params: Any = None) -> Any:
        return self._run(lambda c: c.execute(query, params).fetchone())

    # -- schema ----------------------------------------------------------------------------

    def migrate(self) -> None:
        """Apply the migration files this database has not seen yet, once across workers."""
        migrations = load_migrations("postgres")

        def apply(conn: Conn) -> None:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                schema = self.schema
                # Looked up first: CREATE SCHEMA needs a privilege on the database that an
                # application role may lack even when its schema exists.
                if schema is not None and not self._schema_exists(conn, schema):
                    conn.execute(
                        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                    )
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS perdure_schema (version INTEGER PRIMARY KEY, "
                    "name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
                )
                found = conn.execute("SELECT MAX(version) FROM perdure_schema").fetchone()
                current = (found[0] if found else None) or 0
                newest = migrations[-1].version if migrations else 0
                if current > newest:
                    raise StoreError(
                        f"PostgreSQL database {self._label} has schema version {current}, newer "
                        f"than this perdure knows ({newest}): upgrade perdure to open it"
                    )
                for migration in migrations:
                    if migration.version <= current:
                        continue
                    for statement in migration.statements:
                        conn.execute(statement.encode())  # literal SQL, not a template
                    conn.execute(
                        f"INSERT INTO perdure_schema VALUES (%s, %s, {_NOW})",
                        (migration.version, migration.name),
                    )

        self._run(apply)

    @staticmethod
    def _schema_exists(conn: Conn, schema: str) -> bool:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        return found.fetchone() is not None

    def close(self) -> None:
        """Close the pool; later calls raise ``StoreUnavailableError``."""
        if not self._closed:
            self._closed = True
            self._pool.close()

    # -- workflows -------------------------------------------------------------------------

    def create_workflow(self, row: WorkflowRow) -> tuple[WorkflowRow, bool]:
        """Insert ``row`` unless its id exists; return (stored row, created)."""
        marks = ", ".join(["%s"] * 16)

        def create(conn: Conn) -> tuple[WorkflowRow, bool]:
            cur = conn.execute(
                f"INSERT INTO workflows ({WF_COLUMNS}) VALUES ({marks}) "
                "ON CONFLICT (id) DO NOTHING",
                workflow_values(row),
            )
            if cur.rowcount == 1:
                return row, True
            found = conn.execute(
                f"SELECT {WF_COLUMNS} FROM workflows WHERE id = %s", (row.id,)
            ).fetchone()
            if found is None:  # deleted in between: nothing perdure does, but be exact
                raise StoreError(f"workflow {row.id!r} vanished while being created")
            stored = workflow_row(found)
            # this very insert, retried after its acknowledgement was lost: same creator
            mine = (stored.owner, stored.created_at, stored.epoch) == (row.owner, row.created_at, 1)
            return stored, mine and stored.inputs == row.inputs

        return self._run(create)

    def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        """Return the workflow with this id, or None."""
        found = self._fetchone(f"SELECT {WF_COLUMNS} FROM workflows WHERE id = %s", (workflow_id,))
        return None if found is None else workflow_row(found)

    def list_workflows(
        self, status: WorkflowStatus | None, name: str | None, limit: int
    ) -> list[WorkflowRow]:
        """Newest first, filtered by status and name when given."""
        clauses, params = [], []
        if status is not None:
            clauses.append("status = %s")
            params.append(status.value)
        if name is not None:
            clauses.append("name = %s")
            params.append(name)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT {WF_COLUMNS} FROM workflows {where} ORDER BY created_at DESC LIMIT %s"
        return [workflow_row(r) for r in self._fetchall(query, (*params, limit))]

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

        def finish(conn: Conn) -> int:
            with conn.transaction():
                count = conn.execute(
                    f"UPDATE workflows SET status = %s, output = %s, error = %s, owner = NULL, "
                    f"updated_at = {_NOW} WHERE id = %s AND owner = %s AND epoch = %s",
                    (status.value, output, error, workflow_id, lease.owner, lease.epoch),
                ).rowcount
                if count == 1:
                    conn.execute(
                        f"UPDATE approvals SET status = 'CLOSED', decided_at = {_NOW} WHERE "
                        "workflow_id = %s AND status = 'PENDING'",
                        (workflow_id,),
                    )
                return count

        def settled(conn: Conn) -> Any:
            found = conn.execute(
                "SELECT 1 FROM workflows WHERE id = %s AND status = %s AND owner IS NULL "
                "AND epoch = %s AND output IS NOT DISTINCT FROM %s "
                "AND error IS NOT DISTINCT FROM %s",
                (workflow_id, status.value, lease.epoch, output, error),
            ).fetchone()
            return 1 if found is not None else _UNSETTLED

        if self._run(finish, settled) != 1:
            raise OwnershipLost(f"worker {lease.owner} no longer owns workflow {workflow_id!r}")

    def reset_workflow(self, workflow_id: str) -> bool:
        """Make a finished, unsuccessful workflow runnable again (see the protocol)."""
        return (
            self._rowcount(
                "UPDATE workflows SET status = 'PENDING', owner = NULL, output = NULL, "
                f"error = NULL, stalls = 0, cancel_requested = 0, updated_at = {_NOW} "
                "WHERE id = %s AND status IN ('ERROR', 'CANCELLED', 'DEAD_LETTER')",
                (workflow_id,),
            )
            == 1
        )

    def release_workflow(self, workflow_id: str, lease: Lease, stalled: bool = False) -> bool:
        """Give one unfinished workflow back (PENDING, no owner) if ``lease`` is current."""
        return (
            self._rowcount(
                f"UPDATE workflows SET owner = NULL, status = 'PENDING', updated_at = {_NOW}, "
                f"stalls = stalls + %s WHERE id = %s AND owner = %s AND epoch = %s "
                f"AND {UNFINISHED}",
                (int(stalled), workflow_id, lease.owner, lease.epoch),
            )
            == 1
        )

    # -- journal ---------------------------------------------------------------------------

    def load_steps(self, workflow_id: str) -> list[StepRow]:
        """The workflow's journal, by position."""
        rows = self._fetchall(
            f"SELECT {STEP_COLUMNS} FROM steps WHERE workflow_id = %s "
            'ORDER BY position, key COLLATE "C"',
            (workflow_id,),
        )
        return [step_row(r) for r in rows]

    def append_step(self, row: StepRow, lease: Lease) -> None:
        """Commit one journal entry, fenced on the lease, in one statement."""
        params = {
            "wf": row.workflow_id, "owner": lease.owner, "epoch": lease.epoch,
            "position": row.position, "key": row.key, "name": row.name,
            "status": row.status.value, "output": row.output, "error": row.error,
            "started_at": row.started_at, "finished_at": row.finished_at,
            "attempts": row.attempts,
        }  # fmt: skip
        if self._rowcount(_APPEND_SQL, params, self._journaled(params)) != 1:
            raise OwnershipLost(
                f"worker {lease.owner} cannot record step {row.key} of workflow "
                f"{row.workflow_id!r}: it no longer holds the workflow, or the step is recorded"
            )

    def append_step_atomically(
        self, workflow_id: str, key: str, lease: Lease, body: Callable[[Any], StepRow]
    ) -> StepRow:
        """Run ``body`` on a pooled connection inside the transaction that journals the row
        it returns (see the protocol). The workflow row stays locked ``FOR SHARE`` meanwhile,
        so no claim can take the workflow while the body runs."""

        def transact(conn: Conn) -> StepRow:
            with conn.transaction():
                _hold(conn, workflow_id, lease)
                found = conn.execute(
                    f"SELECT {STEP_COLUMNS} FROM steps WHERE workflow_id = %s AND key = %s",
                    (workflow_id, key),
                ).fetchone()
                if found is not None:
                    return step_row(found)
                row = body(conn)  # its exceptions roll back and propagate as they are
                conn.execute(
                    f"INSERT INTO steps ({STEP_COLUMNS}) VALUES "
                    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    step_values(row),
                )
                return row

        return self._run(transact)

    def append_attempt(self, row: AttemptRow, lease: Lease) -> None:
        """Record a failed attempt, fenced on the lease, in one statement."""
        params = {
            "wf": row.workflow_id, "owner": lease.owner, "epoch": lease.epoch,
            "key": row.key, "attempt": row.attempt, "name": row.name, "error": row.error,
            "started_at": row.started_at, "failed_at": row.failed_at, "retry_at": row.retry_at,
        }  # fmt: skip
        if self._rowcount(_ATTEMPT_SQL, params, self._journaled(params)) != 1:
            raise OwnershipLost(
                f"worker {lease.owner} cannot record attempt {row.attempt} of step {row.key} of "
                f"workflow {row.workflow_id!r}: it no longer holds the workflow"
            )

    @staticmethod
    def _journaled(params: dict[str, Any]) -> Callable[[Conn], Any]:
        """``settled`` for a fenced journal write: it landed if its row is there and the
        lease is still current (only the current lease's run writes that key)."""
        table, attempt = ("step_attempts", "AND attempt = %(attempt)s") if "attempt" in params \
            else ("steps", "")  # fmt: skip

        def settled(conn: Conn) -> Any:
            found = conn.execute(
                f"SELECT 1 FROM {table} JOIN workflows ON workflows.id = {table}.workflow_id "
                f"WHERE workflow_id = %(wf)s AND key = %(key)s {attempt} "
                "AND owner = %(owner)s AND epoch = %(epoch)s",
                params,
            ).fetchone()
            return 1 if found is not None else _UNSETTLED

        return settled

    def load_attempts(self, workflow_id: str) -> list[AttemptRow]:
        """Every recorded failed attempt of the workflow."""
        rows = self._fetchall(
            f"SELECT {ATTEMPT_COLUMNS} FROM step_attempts WHERE workflow_id = %s "
            'ORDER BY failed_at, key COLLATE "C", attempt',
            (workflow_id,),
        )
        return attempt_rows(workflow_id, rows)

    # -- waiting ---------------------------------------------------------------------------

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
        self, worker_id: str, names: Collection[str], now: float, limit: int
    ) -> list[WorkflowRow]:
        """Take WAITING workflows whose timer is due, whose message came, or that were
        cancelled."""
        if not names:
            return []
        params = {"me": worker_id, "now": now, "limit": limit, "names": list(names)}
        # The candidates come from the two partial indexes (due timers; unconsumed messages);
        # the rows are then locked, skipping those another claimer holds. A cancelled waiting
        # workflow has wake_at = 0 (see request_cancel), so it is a due timer.
        query = (
            "UPDATE workflows SET owner = %(me)s, status = 'RUNNING', epoch = epoch + 1, "
            "wake_at = NULL, wait_topic = NULL, updated_at = %(now)s WHERE id IN ("
            "SELECT id FROM workflows WHERE status = 'WAITING' "
            "AND name = ANY(%(names)s::text[]) AND id IN ("
            "SELECT id FROM workflows WHERE status = 'WAITING' AND wake_at <= %(now)s "
            "UNION SELECT m.workflow_id FROM messages m JOIN workflows w ON "
            "w.id = m.workflow_id AND w.wait_topic = m.topic WHERE m.consumed_by IS NULL "
            "AND w.status = 'WAITING') "
            "LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
            f"RETURNING {WF_COLUMNS}"
        )
        return [workflow_row(r) for r in self._fetchall(query, params)]

    def next_wake(self, names: Collection[str]) -> float | None:
        """The earliest timer among WAITING workflows of these names."""
        if not names:
            return None
        found = self._fetchone(
            "SELECT MIN(wake_at) FROM workflows WHERE status = 'WAITING' AND "
            "name = ANY(%s::text[])",
            (list(names),),
        )
        return None if found is None or found[0] is None else float(found[0])

    def send_message(
        self, workflow_id: str, topic: str, payload: str, idempotency_key: str | None
    ) -> bool:
        """Queue a message; False if its idempotency key was used before."""
        return (
            self._rowcount(
                "INSERT INTO messages (workflow_id, topic, payload, idempotency_key, sent_at) "
                f"VALUES (%s, %s, %s, %s, {_NOW}) ON CONFLICT DO NOTHING",
                (workflow_id, topic, payload, idempotency_key),
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
                conn.execute(
                    f"INSERT INTO steps ({STEP_COLUMNS}) VALUES "
                    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (step.workflow_id, step.position, step.key, step.name, step.status.value,
                     found[1], None, step.started_at, step.finished_at, step.attempts),
                )  # fmt: skip
                return str(found[1])

        def settled(conn: Conn) -> Any:
            found = conn.execute(
                "SELECT output FROM steps WHERE workflow_id = %s AND key = %s",
                (workflow_id, step.key),
            ).fetchone()
            return _UNSETTLED if found is None else found[0]

        return self._run(consume, settled)

    def set_event(self, workflow_id: str, key: str, value: str) -> None:
        """Publish (or replace) a workflow's event value."""
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
        return None if found is None else str(found[0])

    def request_approval(self, row: ApprovalRow) -> None:
        """Record a pending approval (a no-op if already recorded)."""
        self._rowcount(
            "INSERT INTO approvals (workflow_id, name, details, status, requested_at) "
            "VALUES (%s, %s, %s, 'PENDING', %s) ON CONFLICT DO NOTHING",
            (row.workflow_id, row.name, row.details, row.requested_at),
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
                return True

        return self._run(decide)

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
        return None if found is None else ApprovalRow(*found)

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
        return [ApprovalRow(*r) for r in rows]

    def request_cancel(self, workflow_id: str) -> WorkflowRow | None:
        """Flag an unfinished workflow for cancellation; return its row."""

        def flag(conn: Conn) -> Any:
            with conn.transaction():
                conn.execute(
                    f"UPDATE workflows SET cancel_requested = 1, updated_at = {_NOW}, "
                    "wake_at = CASE WHEN status = 'WAITING' THEN 0 ELSE wake_at END "
                    f"WHERE id = %s AND {UNFINISHED}",
                    (workflow_id,),
                )
                return conn.execute(
                    f"SELECT {WF_COLUMNS} FROM workflows WHERE id = %s", (workflow_id,)
                ).fetchone()

        found = self._run(flag)
        return None if found is None else workflow_row(found)

    def owned(self, worker_id: str) -> list[WorkflowRow]:
        """Unfinished workflows ``worker_id`` holds."""
        rows = self._fetchall(
            f"SELECT {WF_COLUMNS} FROM workflows WHERE owner = %s AND {UNFINISHED}",
            (worker_id,),
        )
        return [workflow_row(r) for r in rows]

    def cancel_requests(self, worker_id: str) -> list[str]:
        """Ids of unfinished workflows held by ``worker_id`` whose cancellation is asked."""
        rows = self._fetchall(
            f"SELECT id FROM workflows WHERE owner = %s AND cancel_requested = 1 AND {UNFINISHED}",
            (worker_id,),
        )
        return [r[0] for r in rows]

    # -- ownership -------------------------------------------------------------------------

    def heartbeat(self, worker: WorkerRow, lease_seconds: float) -> None:
        """Record that ``worker`` is alive for ``lease_seconds`` from now (database clock)."""
        self._rowcount(
            "INSERT INTO workers (id, host, pid, heartbeat_at, expires_at) "
            "SELECT %s, %s, %s, t, t + %s FROM (SELECT "
            f"{_NOW} AS t) AS clock "
            "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, "
            "expires_at = excluded.expires_at",
            (worker.id, worker.host, worker.pid, float(lease_seconds)),
        )

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
            f"AND name = ANY(%(names)s::text[]) {only} ORDER BY created_at LIMIT %(limit)s "
            f"FOR UPDATE SKIP LOCKED) RETURNING {WF_COLUMNS}"
        )
        return [workflow_row(r) for r in self._fetchall(query, params)]

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
                    f"WHERE owner = %s AND {UNFINISHED}",
                    (worker_id,),
                ).rowcount
                conn.execute("DELETE FROM workers WHERE id = %s", (worker_id,))
                return count

        return self._run(release)

    def forget_workers(self, worker_ids: Sequence[str]) -> None:
        """Delete worker rows that own nothing any more."""
        if not worker_ids:
            return
        self._rowcount(
            "DELETE FROM workers WHERE id = ANY(%s::text[]) AND id NOT IN "
            f"(SELECT owner FROM workflows WHERE owner IS NOT NULL AND {UNFINISHED})",
            (list(worker_ids),),
        )


def _redact(conninfo: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(conninfo)
    if parts.password is None:
        return repr(conninfo)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return repr(urlunsplit(parts._replace(netloc=netloc)))


def _hold(conn: Conn, workflow_id: str, lease: Lease) -> None:
    """Check that ``lease`` is the workflow's current lease, locking its row FOR SHARE until
    the transaction ends (a claim skips it meanwhile).

    Raises:
        OwnershipLost: it is not.
    """
    owned = conn.execute(
        "SELECT 1 FROM workflows WHERE id = %s AND owner = %s AND epoch = %s FOR SHARE",
        (workflow_id, lease.owner, lease.epoch),
    ).fetchone()
    if owned is None:
        raise OwnershipLost(f"worker {lease.owner} no longer holds workflow {workflow_id!r}")
