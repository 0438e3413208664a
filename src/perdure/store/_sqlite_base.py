"""SQLite plumbing shared by the store's parts: the connection, its lock, transactions and
migrations, and the helpers every part uses."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from itertools import compress, repeat
from operator import is_, is_not
from pathlib import Path
from typing import Any, Literal, TypeVar

from .. import _failpoints
from .._encryption import Encryption
from .._errors import ConfigurationError, StoreError, StoreUnavailableError
from ._blobs import DEFAULT_BLOB_THRESHOLD, FileBlobs
from ._codec import Codec
from ._group import GroupCommit
from ._migrations import load_migrations, migration_failed
from ._protocol import Lease, OwnershipLost, StepRow, WorkflowRow
from ._rows import step_row, workflow_row

T = TypeVar("T")


class SQLiteBase:
    """One connection guarded by a lock (see :class:`~perdure.store.sqlite.SQLiteStore` for
    the arguments)."""

    def __init__(
        self,
        path: str,
        *,
        durability: Literal["full", "normal"] = "full",
        busy_timeout: float = 5.0,
        blob_threshold: int = DEFAULT_BLOB_THRESHOLD,
        encryption: Encryption | None = None,
    ) -> None:
        if durability not in ("full", "normal"):
            raise ConfigurationError(f"durability must be 'full' or 'normal', not {durability!r}")
        self.path = path
        self.blobs = FileBlobs(path, blob_threshold)
        self.codec = Codec(self.blobs, encryption)
        self._lock = threading.RLock()  # a transaction step's body may call the store
        self._closed = False
        if path != ":memory:":
            parent = Path(path).expanduser().resolve().parent
            if not parent.is_dir():
                raise StoreUnavailableError(
                    f"cannot open SQLite database {path!r}: folder {str(parent)!r} does not exist"
                )
        try:
            self._conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={durability.upper()}")
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open SQLite database {path!r}: {exc}") from exc
        #: journal entries of concurrent writers, committed together
        self._group: GroupCommit[tuple[int, Any]] = GroupCommit(self._write_batch)

    def _write_batch(self, batch: list[tuple[int, Any]]) -> list[Any]:
        """One transaction over a batch of writes (the store's own)."""
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
        self._run(
            lambda c: c.execute(
                "UPDATE workflows SET owner = NULL, status = 'DEAD_LETTER', error = ?, "
                "updated_at = ? WHERE id = ? AND owner = ? AND epoch = ?",
                (error, time.time(), workflow_id, lease.owner, lease.epoch),
            )
        )

    def _give_back(self, workflow_id: str, lease: Lease) -> None:
        self._run(
            lambda c: c.execute(
                "UPDATE workflows SET owner = NULL, status = 'PENDING', updated_at = ? "
                "WHERE id = ? AND owner = ? AND epoch = ?",
                (time.time(), workflow_id, lease.owner, lease.epoch),
            )
        )

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` under the store's lock, SQLite errors translated."""
        with self._lock:
            if self._closed:
                raise StoreUnavailableError(f"the store for {self.path!r} is closed")
            try:
                if _failpoints.ARMED:
                    _failpoints.connection_used(self._conn)
                return fn(self._conn, *args)
            except sqlite3.OperationalError as exc:
                raise StoreUnavailableError(f"SQLite database {self.path!r}: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"SQLite database {self.path!r}: {exc}") from exc

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")  # never leave the write lock held after a failure
            raise

    # -- schema ----------------------------------------------------------------------------

    def migrate(self) -> None:
        """Apply the migration files this database has not seen yet."""
        migrations = load_migrations("sqlite")

        def apply(conn: sqlite3.Connection) -> None:
            with self._transaction(conn):
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS perdure_schema "
                    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
                )
                current = conn.execute("SELECT MAX(version) FROM perdure_schema").fetchone()[0]
                current = current or 0
                newest = migrations[-1].version if migrations else 0
                if current > newest:
                    raise StoreError(
                        f"SQLite database {self.path!r} has schema version {current}, newer than "
                        f"this perdure knows ({newest}): upgrade perdure to open it"
                    )
                for migration in migrations:
                    if migration.version <= current:
                        continue
                    try:
                        for statement in migration.statements:
                            conn.execute(statement)
                    except sqlite3.Error as exc:
                        if exc.sqlite_errorname in ("SQLITE_BUSY", "SQLITE_LOCKED"):
                            raise  # another process holds the lock: unavailable, not broken
                        where = f"SQLite database {self.path!r}"
                        raise migration_failed(where, migration, current, exc) from exc
                    conn.execute(
                        "INSERT INTO perdure_schema VALUES (?, ?, ?)",
                        (migration.version, migration.name, time.time()),
                    )

        self._run(apply)

    def database_time(self) -> float | None:
        """None: the database file shares this machine's clock."""
        return None

    def subscribe(self, wake: Callable[[], None]) -> bool:
        """SQLite cannot notify other processes: returns False (engines poll the file)."""
        return False

    def close(self) -> None:
        """Close the connection; later calls raise ``StoreUnavailableError``."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


_WITH_NULLS: dict[tuple[str, tuple[bool, ...]], str] = {}


def _nulls_inline(sql: str, values: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """``sql`` (one ``?`` per value, no other ``?``) with a literal NULL in place of each
    None value, and the values left to bind; the statements are cached per pattern of Nones.

    sqlite3 binds ``None`` only after looking for an adapter for it, a failed attribute
    lookup that costs some 2,000 instructions per parameter; a new workflow row has eight or
    so Nones. ``column = NULL`` in a WHERE clause matches nothing either way."""
    nulls = tuple(map(is_, values, repeat(None)))  # C-level loops: no frame per value
    if True not in nulls:
        return sql, values
    inlined = _WITH_NULLS.get((sql, nulls))
    if inlined is None:
        parts = sql.split("?")
        if len(parts) != len(values) + 1:
            raise ValueError(f"{len(values)} values for {len(parts) - 1} placeholders: {sql}")
        marks = ["NULL" if null else "?" for null in nulls]
        inlined = parts[0] + "".join(m + p for m, p in zip(marks, parts[1:], strict=True))
        _WITH_NULLS[sql, nulls] = inlined
    return inlined, tuple(compress(values, map(is_not, values, repeat(None))))


def _named_list(params: dict[str, Any], prefix: str, values: Collection[str]) -> str:
    """Add ``values`` to ``params`` as :prefix0, :prefix1...; return the placeholder list."""
    names = []
    for i, value in enumerate(values):
        params[f"{prefix}{i}"] = value
        names.append(f":{prefix}{i}")
    return ", ".join(names) or "NULL"


def _mark(name: str) -> str:
    """SQLite's placeholder for the named parameter ``name``."""
    return f":{name}"


def _hold(conn: sqlite3.Connection, workflow_id: str, lease: Lease) -> None:
    """Check, inside the caller's transaction, that ``lease`` is the workflow's current lease.

    Raises:
        OwnershipLost: it is not.
    """
    owned = conn.execute(
        "SELECT 1 FROM workflows WHERE id = ? AND owner = ? AND epoch = ?",
        (workflow_id, lease.owner, lease.epoch),
    ).fetchone()
    if owned is None:
        raise OwnershipLost(f"worker {lease.owner} no longer holds workflow {workflow_id!r}")
