"""The storage boundary: the ``Store`` protocol, its rows, and ``open_store(url)``.

The engine talks to a database only through :class:`Store`. Backends live beside this file
(``sqlite.py``, ``postgres.py``) and pass one conformance suite.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import unquote

from .. import _failpoints
from .._encryption import Encryption
from .._errors import ConfigurationError
from ._blobs import DEFAULT_BLOB_THRESHOLD
from ._protocol import (
    ApprovalRow,
    AttemptRow,
    Lease,
    OwnershipLost,
    QueueLimits,
    StepRow,
    StepStatus,
    Store,
    WorkerRow,
    WorkflowRow,
    WorkflowStatus,
    approval_topic,
)
from ._rows import failing_step_key

__all__ = [
    "DEFAULT_BLOB_THRESHOLD",
    "ApprovalRow",
    "AttemptRow",
    "Lease",
    "OwnershipLost",
    "QueueLimits",
    "StepRow",
    "StepStatus",
    "Store",
    "WorkerRow",
    "WorkflowRow",
    "WorkflowStatus",
    "approval_topic",
    "failing_step_key",
    "open_store",
]


def open_store(
    url: str,
    *,
    durability: Literal["full", "normal"] = "full",
    blob_threshold: int = DEFAULT_BLOB_THRESHOLD,
    encryption: Encryption | None = None,
) -> Store:
    """Open (and migrate) the store a URL names.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` and ``sqlite:///:memory:``
    are understood, and ``postgresql://user@host:port/dbname`` (also ``postgres://``; an optional
    ``?schema=NAME`` puts perdure's tables in that PostgreSQL schema), which needs the
    ``postgres`` extra (``pip install 'perdure[postgres]'``). With ``encryption``, every payload
    is encrypted as it is written and decrypted as it is read (see docs/security.md).

    Raises:
        ConfigurationError: the URL's scheme is not supported, or failpoints are set
            outside a test run (``PERDURE_FAILPOINTS`` without ``PERDURE_TESTING=1``).
        StoreUnavailableError: the database cannot be opened.
    """
    _failpoints.check()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigurationError(
            f"database URL {url!r} has no scheme: use sqlite:///path/to/file.db"
        )
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        if not rest.startswith("/"):
            raise ConfigurationError(
                f"SQLite URL {url!r} needs three slashes: sqlite:///relative.db or "
                "sqlite:////absolute/path.db"
            )
        path, _, query = rest[1:].partition("?")
        if query:  # a literal "?" in a file name is written %3F
            raise ConfigurationError(
                f"SQLite URL {url!r} has a query ({query!r}), which SQLite URLs do not take: "
                "pass options as arguments (Engine(url, durability='normal')); write a '?' "
                "in a file name as %3F"
            )
        store = SQLiteStore(
            unquote(path), durability=durability, blob_threshold=blob_threshold,
            encryption=encryption,
        )  # fmt: skip
        store.migrate()
        return store
    if scheme in ("postgresql", "postgres"):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise ConfigurationError(
                f"PostgreSQL URL {url!r} needs psycopg 3 and psycopg_pool, which are not "
                f"installed ({exc}): pip install 'perdure[postgres]'"
            ) from exc
        pg = PostgresStore(url, blob_threshold=blob_threshold, encryption=encryption)
        try:
            pg.migrate()
        except BaseException:
            pg.close()
            raise
        return pg
    raise ConfigurationError(
        f"database URL scheme {scheme!r} is not supported: use sqlite:///path/to/file.db or "
        "postgresql://user@host/dbname"
    )
