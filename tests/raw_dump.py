"""Everything perdure keeps for a database, read the way someone with access to the database
(not to perdure's keys) reads it: for the encryption and secret-canary tests.

SQLite: the bytes of the database file, its ``-wal`` and ``-shm`` files and every blob file
beside it. PostgreSQL: every column of every row of every table in perdure's schema (``bytea``
as its raw bytes, the rest as text).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
from psycopg import sql


def raw_database(db_url: str) -> bytes:
    """Every byte perdure stores for ``db_url``, concatenated (see the module docs)."""
    if db_url.startswith("sqlite:///"):
        return _sqlite_bytes(Path(db_url.removeprefix("sqlite:///")))
    return _postgres_bytes(db_url)


def _sqlite_bytes(database: Path) -> bytes:
    files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    blobs = Path(f"{database}.blobs")
    if blobs.is_dir():
        files += sorted(p for p in blobs.rglob("*") if p.is_file())
    assert database.is_file(), f"no database at {database}"
    return b"\n".join(p.read_bytes() for p in files if p.is_file())


def _postgres_bytes(db_url: str) -> bytes:
    parts = urlsplit(db_url)
    schema = dict(parse_qsl(parts.query))["schema"]
    conninfo = parts._replace(query="").geturl()
    chunks: list[bytes] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        ).fetchall()
        assert tables, f"no tables in schema {schema}"
        for (table,) in tables:
            query = sql.SQL("SELECT * FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            for row in conn.execute(query).fetchall():
                chunks.extend(_value_bytes(value) for value in row)
    return b"\n".join(chunks)


def _value_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | memoryview | bytearray):
        return bytes(value)
    return str(value).encode("utf-8", "surrogatepass")
