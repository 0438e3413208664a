"""PostgreSQL plumbing shared by the store's parts: the connection pool, the retry of
transient failures, migrations, and the SQL fragments every part uses.

psycopg 3 (sync API) with a connection pool: the engine calls the store from several threads,
and each call borrows a connection for one statement or one transaction. Connections are in
autocommit mode, so a single statement is its own transaction; the few multi-statement
operations run in an explicit transaction.

Transient failures (a lost connection, a server restarting, a serialization failure or a
deadlock) are retried with backoff by :meth:`PgBase._run`, for up to ``outage_timeout``
seconds: an outage pauses the engine and it goes on when the database is back. Writes whose
commit may have landed although the acknowledgement was lost check for their own effect
before running again, so a retry never applies a write twice.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from .. import _failpoints
from .._encryption import Encryption
from .._errors import ConfigurationError, StoreError, StoreUnavailableError
from ._blobs import DEFAULT_BLOB_THRESHOLD, TableBlobs
from ._codec import Codec
from ._group import GroupCommit, Outcome
from ._migrations import load_migrations, migration_failed
from ._protocol import Lease, OwnershipLost, StepRow, WorkflowRow
from ._rows import step_row, workflow_row

T = TypeVar("T")
log = logging.getLogger("perdure")

#: ``settled`` found no trace of the write: run it (again).
_UNSETTLED: Any = object()
_IDLE = psycopg.pq.TransactionStatus.IDLE

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
Conn = psycopg.Connection[Any]


class KeptCursorConnection(psycopg.Connection[Any]):
    """The store's pooled connections: each keeps one cursor for statements whose result is
    read at once (:func:`run`). ``Connection.execute`` builds a new cursor every time (its
    adapters map, transformer and row maker): about 18 µs of CPU, measured, next to a
    journal write's 50 µs of driver work."""

    _kept: psycopg.Cursor[Any] | None = None

    def run(self, query: Any, params: Any = None) -> psycopg.Cursor[Any]:
        """``execute`` on the kept cursor: read its result before the next statement on this
        connection (which replaces it)."""
        cursor = self._kept
        if cursor is None or cursor.closed:
            cursor = self._kept = self.cursor()
        return cursor.execute(query, params)


def run(conn: Conn, query: Any, params: Any = None) -> psycopg.Cursor[Any]:
    """``conn.execute(query, params)``, on the connection's kept cursor when it has one: for
    a statement whose row count or single row is read before the next statement. Reads of
    many rows keep their own cursor (``_fetchall``): a kept cursor holds its last result
    until the connection's next statement."""
    if isinstance(conn, KeptCursorConnection):
        return conn.run(query, params)
    return conn.execute(query, params)


#: perdure's own query parameters in a PostgreSQL URL (libpq never sees them)
URL_OPTIONS = frozenset({"schema", "pool_size", "outage_timeout"})


def url_options(url: str) -> tuple[str, dict[str, str]]:
    """Take perdure's own query parameters (:data:`URL_OPTIONS`) out of a PostgreSQL URL:
    the libpq URL, and those parameters."""
    parts = urlsplit(url)
    own: dict[str, str] = {}
    kept = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in URL_OPTIONS:
            own[key] = value
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), own


def split_url(url: str) -> tuple[str, str | None]:
    """The libpq URL without perdure's parameters, and the ``schema`` one."""
    conninfo, own = url_options(url)
    return conninfo, own.get("schema")


def _number(own: dict[str, str], key: str, default: float, kind: type[float] | type[int]) -> Any:
    """A positive numeric URL parameter, or ``default``."""
    if key not in own:
        return default
    try:
        value = kind(own[key])
    except ValueError:
        value = 0
    if not value > 0:
        raise ConfigurationError(f"URL parameter {key}={own[key]!r} must be a positive number")
    return value


class PgBase:
    """The connection pool and its plumbing (see :class:`~perdure.store.postgres.PostgresStore`
    for the arguments)."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout: float = 10.0,
        outage_timeout: float = 120.0,
        blob_threshold: int = DEFAULT_BLOB_THRESHOLD,
        encryption: Encryption | None = None,
    ) -> None:
        conninfo, own = url_options(url)
        schema = schema if schema is not None else own.get("schema")
        max_size = _number(own, "pool_size", max_size, int)
        outage_timeout = _number(own, "outage_timeout", outage_timeout, float)
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ConfigurationError(
                f"PostgreSQL schema name {schema!r} must be lowercase letters, digits and _"
            )
        self.schema = schema
        self.outage_timeout = outage_timeout
        self._label = _redact(conninfo) + (f" (schema {schema})" if schema else "")
        self._closed = False
        self._outage = False  # a call is retrying transient failures (for logging)
        self.blobs = TableBlobs(self._run, "%s", self._label, blob_threshold)
        self.codec = Codec(self.blobs, encryption)
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
        self._conninfo, self._connect_kwargs = conninfo, kwargs
        #: the LISTEN/NOTIFY channel of this database (and schema): at most 63 characters
        self.channel = (f"perdure_{schema}" if schema else "perdure")[:63]
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
            connection_class=KeptCursorConnection,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except (psycopg.Error, ValueError) as exc:
            self._pool.close()
            raise StoreUnavailableError(
                f"cannot open PostgreSQL database {self._label}: {exc}"
            ) from exc
        #: journal entries of concurrent writers, committed together
        self._group: GroupCommit[dict[str, Any]] = GroupCommit(self._write_steps)
        #: the journal connection: a pooled connection the group's leader keeps between
        #: writes (see _run_journal); none with a pool too small to spare one
        self._journal: Conn | None = None
        self._spare = max_size >= 3

    def _write_steps(self, batch: list[dict[str, Any]]) -> list[Outcome]:
        """One transaction over a batch of journal entries (the store's own)."""
        raise NotImplementedError

    # -- plumbing --------------------------------------------------------------------------

    def _wf(self, r: Sequence[Any]) -> WorkflowRow:
        """A workflow row read from the database, its payloads unsealed."""
        return self.codec.workflow_in(workflow_row(r))

    def _step(self, r: Sequence[Any]) -> StepRow:
        """A journal row read from the database, its payloads unsealed."""
        return self.codec.step_in(step_row(r))

    def _claimed(self, rows: Sequence[Sequence[Any]]) -> list[WorkflowRow]:
        """Workflows this worker just claimed, read; one it cannot read is given back
        (see :meth:`Codec.claimed`)."""
        return self.codec.claimed(rows, self._give_back, self._dead_letter_unreadable)

    def _dead_letter_unreadable(self, workflow_id: str, lease: Lease, error: str | None) -> None:
        self._rowcount(
            f"UPDATE workflows SET owner = NULL, status = 'DEAD_LETTER', error = %s, "
            f"updated_at = {_NOW} WHERE id = %s AND owner = %s AND epoch = %s",
            (error, workflow_id, lease.owner, lease.epoch),
        )

    def _give_back(self, workflow_id: str, lease: Lease) -> None:
        def release(conn: Conn) -> None:
            conn.execute(
                f"UPDATE workflows SET owner = NULL, status = 'PENDING', updated_at = {_NOW} "
                "WHERE id = %s AND owner = %s AND epoch = %s",
                (workflow_id, lease.owner, lease.epoch),
            )
            self._notify(conn)  # another worker may take it at once

        self._run(release)

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
                    if _failpoints.ARMED:
                        _failpoints.connection_used(conn)
                    if give_up_at is not None and settled is not None:
                        found = settled(conn)
                        if found is not _UNSETTLED:
                            return typing.cast(T, found)
                    result = fn(conn)
                if give_up_at is not None and self._outage:
                    self._outage = False
                    log.warning("perdure: PostgreSQL database %s is reachable again", self._label)
                return result
            except psycopg.Error as exc:
                if not transient(exc):
                    raise StoreError(f"PostgreSQL database {self._label}: {exc}") from exc
                now = time.monotonic()
                if give_up_at is None:
                    give_up_at = now + self.outage_timeout
                if not self._outage:  # logged once per outage, not once per waiting call
                    self._outage = True
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

    def _run_journal(self, fn: Callable[[Conn], T], settled: Callable[[Conn], Any]) -> T:
        """Run a journal write ``fn`` on the journal connection, or as :meth:`_run` does.

        Only the group commit's leader writes the journal, one batch at a time, so it keeps
        one pooled connection between writes instead of borrowing one per step (the pool's
        checkout and return cost about a tenth of a step). Any failure on it hands the write
        to :meth:`_run` (retries, outages), which first looks whether the failed try committed
        (``settled``), so a write is never applied twice; a broken connection is dropped.
        """
        conn = self._journal
        if conn is None and self._spare and not self._closed:
            try:
                conn = self._journal = self._pool.getconn(timeout=1.0)
            except psycopg.Error:
                conn = None  # the pool cannot spare one now: the usual path
        if conn is not None:
            try:
                if _failpoints.ARMED:
                    _failpoints.connection_used(conn)
                return fn(conn)
            except psycopg.Error:
                if conn.broken or conn.closed or conn.info.transaction_status != _IDLE:
                    self._drop_journal()

            def again(c: Conn) -> T:
                found = settled(c)
                return fn(c) if found is _UNSETTLED else typing.cast(T, found)

            return self._run(again, settled)
        return self._run(fn, settled)

    def _drop_journal(self) -> None:
        conn, self._journal = self._journal, None
        if conn is not None:
            try:
                self._pool.putconn(conn)  # the pool closes it if it is broken
            except Exception:  # the pool is closing
                conn.close()

    def _rowcount(
        self, query: str, params: Any, settled: Callable[[Conn], Any] | None = None
    ) -> int:
        return self._run(lambda c: run(c, query, params).rowcount, settled)

    def _fetchall(self, query: str, params: Any = None) -> list[Any]:
        return self._run(lambda c: c.execute(query, params).fetchall())

    def _fetchone(self, query: str, params: Any = None) -> Any:
        return self._run(lambda c: c.execute(query, params).fetchone())

    def _claiming(self, query: str, params: Any, failpoint: str) -> list[Any]:
        """The rows a claiming ``UPDATE ... RETURNING`` took, in a transaction of its own
        (the ``failpoint`` sits before its COMMIT, when it took any).

        Never a prepared statement: after five runs PostgreSQL may switch a prepared statement
        to a generic plan, and for these (candidates from partial indexes, the row count known
        only from the parameters) the generic plan read every waiting workflow: with 8,000
        waiting, a wake-up's claim took 14 ms instead of 1.6 ms (planning included)."""

        def claim(conn: Conn) -> list[Any]:
            with conn.transaction():
                rows = conn.execute(query, params, prepare=False).fetchall()
                if rows and _failpoints.ARMED:
                    _failpoints.hit(failpoint, conn)
                return rows

        return self._run(claim)

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
                    try:
                        for statement in migration.statements:
                            conn.execute(statement.encode())  # literal SQL, not a template
                    except psycopg.Error as exc:
                        if transient(exc):
                            raise  # retried by _run
                        raise migration_failed(self._label, migration, current, exc) from exc
                    conn.execute(
                        f"INSERT INTO perdure_schema VALUES (%s, %s, {_NOW})",
                        (migration.version, migration.name),
                    )

        self._run(apply)

    @staticmethod
    def _schema_exists(conn: Conn, schema: str) -> bool:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        return found.fetchone() is not None

    def database_time(self) -> float | None:
        """The server's clock, seconds since the epoch."""
        found = self._fetchone(f"SELECT {_NOW}")
        return None if found is None else float(found[0])

    # -- notifications -----------------------------------------------------------------------

    def subscribe(self, wake: Callable[[], None]) -> bool:
        """Call ``wake`` (from a listener thread) whenever a process using this database
        notifies perdure's channel: a message or decision was sent, a cancellation asked, a
        workflow enqueued, a queue slot freed. Returns True: this backend notifies."""
        thread = threading.Thread(
            target=self._listen, args=(wake,), name="perdure-listener", daemon=True
        )
        thread.start()
        return True

    def _listen(self, wake: Callable[[], None]) -> None:
        """LISTEN on a dedicated connection until the store closes; reconnect with backoff
        when the connection is lost, and wake once after (for what was sent meanwhile)."""
        delay = 0.1
        while not self._closed:
            try:
                with psycopg.connect(self._conninfo, **self._connect_kwargs) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    delay = 0.1
                    wake()
                    while not self._closed:
                        for _ in conn.notifies(timeout=1.0):
                            wake()
            except Exception as exc:  # the listener must outlive any one failure
                if self._closed:
                    return
                log.warning("perdure: LISTEN connection lost (%s); reconnecting", exc)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _notify(self, conn: Conn) -> None:
        """Notify perdure's channel (delivered when the caller's transaction commits)."""
        conn.execute("SELECT pg_notify(%s, '')", (self.channel,))

    def close(self) -> None:
        """Close the pool; later calls raise ``StoreUnavailableError``."""
        if not self._closed:
            self._closed = True
            self._drop_journal()
            self._pool.close()


def _redact(conninfo: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(conninfo)
    if parts.password is None:
        return repr(conninfo)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return repr(urlunsplit(parts._replace(netloc=netloc)))


def _mark(name: str) -> str:
    """psycopg's placeholder for the named parameter ``name``."""
    return f"%({name})s"


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
