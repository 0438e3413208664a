"""Numbered SQL migration files, shared by every backend.

Files live in ``migrations/<dialect>/NNNN_description.sql``. Each is applied once, in order,
in one transaction with the insert of its number into ``perdure_schema``. A shipped file is
never edited; a schema change is a new file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from .._errors import StoreError

_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    """One migration file: its number, name, and its statements in order."""

    version: int
    name: str
    statements: tuple[str, ...]


def load_migrations(dialect: str) -> list[Migration]:
    """Read the migration files for ``dialect``, sorted by number."""
    folder = resources.files("perdure.store") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), entry.name, _split(entry.read_text("utf-8"))))
    found.sort(key=lambda m: m.version)
    return found


def migration_failed(
    database: str, migration: Migration, current: int, exc: Exception
) -> StoreError:
    """The error of a migration file whose statements failed (the transaction rolled back):
    most often a ``perdure_schema`` table that records an older version than the tables
    have (edited by hand, or restored from another database)."""
    return StoreError(
        f"{database}: migration {migration.name} failed ({str(exc).strip()}); the database's "
        f"perdure_schema table records schema version {current}, which its tables do not "
        "match. Nothing was changed: make perdure_schema list the migrations the tables have"
    )


def _split(script: str) -> tuple[str, ...]:
    """Split a script into statements at semicolons that end a line (no triggers here)."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    parts = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
    return tuple(p.strip() for p in parts if p.strip())
