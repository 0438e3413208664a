"""DBOS's side of ``bench/compare.py``: its system database (fresh per measurement) and its
launch, with what it runs with read back for the report (see ``_sys_dbos.py``)."""

from __future__ import annotations

import argparse
import sqlite3
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from dbos import DBOS

from _common import database_url, recreate_pg_database

SYS_DB = "cmp_dbos_sys"
APP_VERSION = "cmp-1"
EXECUTOR_ID = "cmp-dbos"


class Backend:
    """The system database of one backend, fresh (removed, or dropped and recreated)."""

    def __init__(self, args: argparse.Namespace, fresh: bool = True) -> None:
        self.name = args.backend
        if args.backend == "sqlite":
            self.path = Path(args.dir).resolve() / "dbos_sys.sqlite"
            if fresh:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                # journal_mode=WAL is persistent in the file: every connection DBOS opens
                # later uses it. synchronous is per connection; SQLite's default is FULL.
                with sqlite3.connect(self.path) as conn:
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.close()
            self.url = f"sqlite:///{self.path}"
            self.prefix = ""
        else:
            if fresh:
                self.url = recreate_pg_database(args.url, SYS_DB)
            else:
                self.url = database_url(args.url, SYS_DB)
            self.prefix = "dbos."
        self.notes = ""

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query on the system database, on a connection of its own."""
        if self.name == "sqlite":
            conn = sqlite3.connect(self.path, timeout=30)
            try:
                return conn.execute(sql.replace("%s", "?"), params).fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as pg:
            return list(pg.execute(sql.encode(), params).fetchall())

    def count(self, table: str, where: str, params: tuple[Any, ...] = ()) -> int:
        rows = self.query(f"SELECT count(*) FROM {self.prefix}{table} WHERE {where}", params)
        return int(rows[0][0])


def launch(backend: Backend) -> None:
    """Configure DBOS on ``backend`` and launch it (recovering this executor's workflows)."""
    DBOS(
        config={
            "name": "cmp-dbos",
            "system_database_url": backend.url,
            "log_level": "WARNING",
            "application_version": APP_VERSION,
            "executor_id": EXECUTOR_ID,
        }
    )
    DBOS.launch()
    backend.notes = describe(backend)


def describe(backend: Backend) -> str:
    """What the system database runs with, as read back through DBOS's own engine."""
    from dbos._dbos import _get_dbos_instance

    engine = _get_dbos_instance()._sys_db.engine
    pool = getattr(engine.pool, "size", lambda: "?")()
    with engine.connect() as conn:
        if backend.name == "sqlite":
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            level = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(int(sync or 0), sync)
            return (
                f"SQLite system database, journal_mode={mode} (set by us: DBOS leaves the "
                f"default DELETE), synchronous={level} (SQLite's default; DBOS sets none), "
                f"DBOS's pool of {pool} connections, BEGIN IMMEDIATE transactions"
            )
        sync = conn.exec_driver_sql("SHOW synchronous_commit").scalar()
    return (
        f"PostgreSQL system database {SYS_DB}, DBOS defaults (pool of {pool} connections, "
        f"LISTEN/NOTIFY), synchronous_commit={sync}"
    )


def version() -> str:
    return f"dbos {package_version('dbos')}"
