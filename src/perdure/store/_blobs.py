"""Large payloads out of the journal: a content-addressed blob store shared by the SQL stores.

A payload (a step's output, a workflow's inputs or result) whose journal JSON is larger than
the store's ``blob_threshold`` (256 KiB by default) is written once to a blob store, under the
SHA-256 of its bytes, and the journal row keeps a short reference in its place::

    {"$blob":"sha256:9f86d0...","bytes":1048576}

The value codec never writes a top-level dict whose key starts with ``$`` other than its own
tags (such dicts are written as ``{"$map": ...}``), so a reference cannot be mistaken for user
data. Stores resolve references as they read rows: the engine, the CLI and the usage figures
see the payload itself, never the reference.

Where blobs live: files beside the SQLite database (``<database>.blobs/ab/<sha256>``, written to
a temporary file, fsynced and renamed before the journal row that names them commits), or the
``blobs`` table of the PostgreSQL schema. A blob is written before the row that references it;
a crash between the two leaves an unreferenced blob, never a reference without its blob. Equal
payloads share one blob. Reading checks the digest: a missing or altered blob raises
:class:`~perdure.CorruptRecordError` naming it, never a silent wrong replay.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, overload

from .._errors import CorruptRecordError
from ._protocol import StepRow, WorkflowRow

#: payloads whose journal JSON is larger than this many bytes go to the blob store
DEFAULT_BLOB_THRESHOLD = 256 * 1024

_PREFIX = '{"$blob":"sha256:'
_REFERENCE = re.compile(r'\{"\$blob":"sha256:([0-9a-f]{64})","bytes":(\d+)\}')


def reference(digest: str, size: int) -> str:
    """The journal text that stands for a blob."""
    return f'{_PREFIX}{digest}","bytes":{size}}}'


class Blobs(ABC):
    """Where a store keeps payloads above its threshold (see the module docs)."""

    def __init__(self, threshold: int = DEFAULT_BLOB_THRESHOLD) -> None:
        if threshold < 1024:
            raise ValueError(f"blob_threshold must be at least 1024 bytes, not {threshold}")
        self.threshold = threshold

    @abstractmethod
    def put(self, digest: str, data: bytes, conn: Any = None) -> None:
        """Store ``data`` durably under ``digest`` (a no-op if it is there already); on
        ``conn``, the connection of the caller's open transaction, where the store has one."""

    @abstractmethod
    def get(self, digest: str) -> bytes | None:
        """The bytes stored under ``digest``, or None if there are none."""

    @overload
    def offload(self, text: str, conn: Any = None) -> str: ...
    @overload
    def offload(self, text: None, conn: Any = None) -> None: ...
    @overload
    def offload(self, text: str | None, conn: Any = None) -> str | None: ...

    def offload(self, text: str | None, conn: Any = None) -> str | None:
        """``text`` itself, or, above the threshold, a reference to it once it is stored."""
        if text is None or len(text) <= self.threshold // 4:  # 4 bytes per char at most
            return text
        data = text.encode("utf-8", "surrogatepass")
        if len(data) <= self.threshold:
            return text
        digest = hashlib.sha256(data).hexdigest()
        self.put(digest, data, conn)
        return reference(digest, len(data))

    @overload
    def resolve(self, text: str, where: str = ...) -> str: ...
    @overload
    def resolve(self, text: str | None, where: str = ...) -> str | None: ...

    def resolve(self, text: str | None, where: str = "a journal row") -> str | None:
        """``text`` itself, or the payload its reference names.

        Raises:
            CorruptRecordError: the blob is missing or its bytes do not match its digest.
        """
        if text is None or not text.startswith(_PREFIX):
            return text
        match = _REFERENCE.fullmatch(text)
        if match is None:
            raise CorruptRecordError(f"{where} holds a malformed blob reference: {text[:120]!r}")
        digest = match.group(1)
        data = self.get(digest)
        if data is None:
            raise CorruptRecordError(
                f"{where} refers to blob sha256:{digest} ({int(match.group(2)):,} bytes), which "
                f"is missing from {self.describe()}: restore it from a backup taken with the "
                "database"
            )
        if hashlib.sha256(data).hexdigest() != digest:
            raise CorruptRecordError(
                f"{where} refers to blob sha256:{digest}, whose bytes in {self.describe()} do "
                "not match that digest (altered or truncated): restore it from a backup"
            )
        return data.decode("utf-8", "surrogatepass")

    @abstractmethod
    def describe(self) -> str:
        """Where the blobs are, for error messages."""

    # -- rows ------------------------------------------------------------------------------

    def step_out(self, row: StepRow, conn: Any = None) -> StepRow:
        """``row`` as written: its output offloaded if large."""
        output = self.offload(row.output, conn)
        return row if output is row.output else dataclasses.replace(row, output=output)

    def step_in(self, row: StepRow) -> StepRow:
        """``row`` as read: its output resolved."""
        if row.output is None or not row.output.startswith(_PREFIX):
            return row
        where = f"journal row {row.key!r} of workflow {row.workflow_id!r}"
        return dataclasses.replace(row, output=self.resolve(row.output, where))

    def workflow_out(self, row: WorkflowRow) -> WorkflowRow:
        """``row`` as written: its inputs and output offloaded if large."""
        inputs, output = self.offload(row.inputs), self.offload(row.output)
        if inputs is row.inputs and output is row.output:
            return row
        return dataclasses.replace(row, inputs=inputs, output=output)

    def workflow_in(self, row: WorkflowRow) -> WorkflowRow:
        """``row`` as read: its inputs and output resolved."""
        inputs, output = row.inputs, row.output
        if not (inputs or "").startswith(_PREFIX) and not (output or "").startswith(_PREFIX):
            return row
        where = f"workflow row {row.id!r}"
        return dataclasses.replace(
            row, inputs=self.resolve(inputs, where), output=self.resolve(output, where)
        )


class FileBlobs(Blobs):
    """Blobs as files in a folder beside a SQLite database (in memory for ``:memory:``)."""

    def __init__(self, database: str, threshold: int = DEFAULT_BLOB_THRESHOLD) -> None:
        super().__init__(threshold)
        self.folder = None if database == ":memory:" else Path(f"{database}.blobs")
        self._memory: dict[str, bytes] = {}

    def describe(self) -> str:
        return "memory" if self.folder is None else f"the folder {str(self.folder)!r}"

    def _path(self, digest: str) -> Path:
        assert self.folder is not None
        return self.folder / digest[:2] / digest

    def put(self, digest: str, data: bytes, conn: Any = None) -> None:
        if self.folder is None:
            self._memory[digest] = data
            return
        path = self._path(digest)
        if path.exists() and path.stat().st_size == len(data):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        _fsync_dir(self.folder)

    def get(self, digest: str) -> bytes | None:
        if self.folder is None:
            return self._memory.get(digest)
        try:
            return self._path(digest).read_bytes()
        except FileNotFoundError:
            return None


class TableBlobs(Blobs):
    """Blobs as rows of the ``blobs`` table, through the store's own connections.

    Args:
        run: the store's way to run a function on a connection (with its retries).
        mark: the driver's parameter marker (``%s`` or ``?``).
        label: the database, for error messages.
    """

    def __init__(
        self,
        run: Callable[[Callable[[Any], Any]], Any],
        mark: str,
        label: str,
        threshold: int = DEFAULT_BLOB_THRESHOLD,
    ) -> None:
        super().__init__(threshold)
        self._run, self._label = run, label
        self._insert = (
            f"INSERT INTO blobs (digest, data, size) VALUES ({mark}, {mark}, {mark}) "
            "ON CONFLICT (digest) DO NOTHING"
        )
        self._select = f"SELECT data FROM blobs WHERE digest = {mark}"

    def describe(self) -> str:
        return f"the blobs table of {self._label}"

    def put(self, digest: str, data: bytes, conn: Any = None) -> None:
        if conn is not None:
            conn.execute(self._insert, (digest, data, len(data)))
        else:
            self._run(lambda c: c.execute(self._insert, (digest, data, len(data))))

    def get(self, digest: str) -> bytes | None:
        found = self._run(lambda c: c.execute(self._select, (digest,)).fetchone())
        return None if found is None else bytes(found[0])


def _fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
