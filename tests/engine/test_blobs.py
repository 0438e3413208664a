"""Large payloads go to the blob store; the journal keeps a reference (on both backends).

A step result, workflow inputs or a workflow result above ``Engine(blob_threshold=)`` is stored
once under its SHA-256 (files beside a SQLite database, the ``blobs`` table on PostgreSQL); the
journal row holds ``{"$blob":"sha256:...","bytes":N}``; every read (replay, results, listings)
sees the payload. A missing or altered blob is a clear ``CorruptRecordError``, never a wrong
replay.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import perdure
from perdure.store import open_store

calls: Counter[str] = Counter()
BIG = 300 * 1024  # above the default 256 KiB threshold
REFERENCE = re.compile(r'\{"\$blob":"sha256:([0-9a-f]{64})","bytes":(\d+)\}')


@perdure.step
def fetch_document(n: int) -> dict[str, Any]:
    calls["fetch"] += 1
    return {"n": n, "text": "é" * (BIG // 2)}  # 2 bytes a character: size is in bytes


@perdure.step
def small(n: int) -> int:
    calls["small"] += 1
    return n


@perdure.workflow(name="blob_flow")
def blob_flow(n: int, attachment: str) -> dict[str, Any]:
    document = fetch_document(n)
    copy = fetch_document(n)  # the same payload again: one blob serves both entries
    return {"document": document, "same": copy == document, "small": small(n),
            "attachment": len(attachment), "echo": attachment}  # fmt: skip


def raw(engine: perdure.Engine, sql: str) -> list[tuple[Any, ...]]:
    store: Any = engine.store
    return [tuple(r) for r in store._run(lambda conn: conn.execute(sql).fetchall())]


def test_large_payloads_are_journaled_by_reference_and_read_back_whole(
    engine: perdure.Engine,
) -> None:
    calls.clear()
    attachment = "a" * BIG
    result = engine.run(blob_flow, 7, attachment, id="big", timeout=30)
    assert result["document"]["text"] == "é" * (BIG // 2) and result["same"]
    assert result["echo"] == attachment  # the workflow result is a blob too

    steps = raw(engine, "SELECT key, output FROM steps WHERE workflow_id = 'big' ORDER BY key")
    assert [key for key, _ in steps] == ["0", "1", "2"]
    (_, out0), (_, out1), (_, out2) = steps
    ref0, ref1 = REFERENCE.fullmatch(out0), REFERENCE.fullmatch(out1)
    assert ref0 is not None and ref1 is not None, "large step outputs are references"
    assert ref0.group(1) == ref1.group(1)  # equal payloads share one blob
    assert out2 == "7"  # small ones stay inline
    [(inputs, output)] = raw(engine, "SELECT inputs, output FROM workflows WHERE id = 'big'")
    assert REFERENCE.fullmatch(inputs) and REFERENCE.fullmatch(output)
    assert len(inputs) < 120 and len(output) < 120

    # the referenced bytes are the entry's JSON, and hash to its digest
    full = engine.store.load_steps("big")[0].output
    assert full is not None and json.loads(full)["text"] == "é" * (BIG // 2)
    data = full.encode()
    assert int(ref0.group(2)) == len(data) > BIG
    assert hashlib.sha256(data).hexdigest() == ref0.group(1)
    # listings and the handle see payloads, not references
    assert engine.handle("big").result(timeout=5)["echo"] == attachment
    assert engine.list_steps("big")[0].output["text"].startswith("éé")  # type: ignore[index]


def test_a_replay_reads_large_results_back_from_the_blob_store(engine: perdure.Engine) -> None:
    calls.clear()
    engine.run(blob_flow, 1, "tiny", id="replayed", timeout=30)
    assert calls == {"fetch": 2, "small": 1}
    store: Any = engine.store
    store._run(
        lambda conn: conn.execute("UPDATE workflows SET status = 'ERROR' WHERE id = 'replayed'")
    )
    replayed = engine.resume("replayed").result(timeout=30)
    assert calls == {"fetch": 2, "small": 1}  # nothing ran again
    assert replayed["document"]["text"] == "é" * (BIG // 2) and replayed["echo"] == "tiny"


def test_the_threshold_is_configurable(db_url: str) -> None:
    calls.clear()
    with perdure.Engine(db_url, shutdown_grace=0.5, blob_threshold=1024 * 1024) as engine:
        engine.run(blob_flow, 2, "x", id="inline", timeout=30)
        [(output,)] = raw(engine, "SELECT output FROM steps WHERE workflow_id = 'inline' "
                                  "AND key = '0'")  # fmt: skip
        assert not output.startswith('{"$blob"')  # under 1 MiB: inline
    with pytest.raises(ValueError, match="at least 1024"):
        open_store(db_url, blob_threshold=10)


def _blob_path(db_url: str, digest: str) -> Path:
    return Path(f"{db_url.removeprefix('sqlite:///')}.blobs") / digest[:2] / digest


def _damage(engine: perdure.Engine, db_url: str, digest: str, how: str) -> None:
    """Remove (``"missing"``) or alter (``"altered"``) one blob where the backend keeps it."""
    if db_url.startswith("sqlite"):
        path = _blob_path(db_url, digest)
        assert path.is_file(), "SQLite blobs are files beside the database"
        if how == "missing":
            path.unlink()
        else:
            path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
        return
    sql = (
        f"DELETE FROM blobs WHERE digest = '{digest}'"
        if how == "missing"
        else f"UPDATE blobs SET data = substring(data from 1 for 100) WHERE digest = '{digest}'"
    )
    store: Any = engine.store
    store._run(lambda conn: conn.execute(sql))


@pytest.mark.parametrize("how", ["missing", "altered"])
def test_a_missing_or_altered_blob_is_a_clear_error_not_a_wrong_replay(
    engine: perdure.Engine, db_url: str, how: str
) -> None:
    calls.clear()
    engine.run(blob_flow, 3, "y", id="damaged", timeout=30)
    [(output,)] = raw(engine, "SELECT output FROM steps WHERE workflow_id = 'damaged' "
                              "AND key = '0'")  # fmt: skip
    match = REFERENCE.fullmatch(output)
    assert match is not None
    _damage(engine, db_url, match.group(1), how)
    word = "missing" if how == "missing" else "do not match"
    with pytest.raises(perdure.CorruptRecordError, match=word) as caught:
        engine.store.load_steps("damaged")
    message = str(caught.value)
    assert "journal row '0' of workflow 'damaged'" in message and match.group(1) in message
    assert "restore it from a backup" in message
    # the damaged workflow does not replay silently either: resuming it fails the same way
    store: Any = engine.store
    store._run(
        lambda conn: conn.execute("UPDATE workflows SET status = 'ERROR' WHERE id = 'damaged'")
    )
    with pytest.raises(perdure.DeadLetteredError, match="its journal cannot be read") as dead:
        engine.resume("damaged").result(timeout=30)
    assert match.group(1) in str(dead.value)  # the stored reason names the blob
    assert engine.get_workflow("damaged").status == "DEAD_LETTER"  # at once, not after retries
    assert calls["fetch"] == 2  # no step ran again on the strength of a damaged journal
    assert raw(engine, "SELECT output FROM steps WHERE workflow_id = 'damaged' "
                       "AND key = '0'") == [(output,)]  # fmt: skip  # the journal is untouched


def test_blobs_survive_a_reopened_database(db_url: str) -> None:
    calls.clear()
    with perdure.Engine(db_url, shutdown_grace=0.5) as engine:
        engine.run(blob_flow, 4, "z", id="kept", timeout=30)
    store = open_store(db_url)  # a new process would open it the same way
    try:
        full = store.load_steps("kept")[0].output
        assert full is not None and len(full.encode()) > BIG
        row = store.get_workflow("kept")
        assert row is not None and row.output is not None and '"echo":"z"' in row.output
    finally:
        store.close()
