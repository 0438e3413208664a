"""Encryption at rest (``Engine(encryption=perdure.Encryption(...))``), on both backends.

What is checked: a distinct canary in each kind of payload (workflow inputs, result and error,
a step's output and error, a failed attempt's error, a message, an event, an approval's
details and comment, a blob-sized result) appears nowhere in the raw database (the SQLite
file, its WAL and its blob files; every column of every PostgreSQL table), while the same
run without encryption shows each one (so the dump does look where each payload lives);
everything reads back, replays and forks; a ciphertext copied to another position, field or
workflow is a ``CorruptRecordError`` naming the row it was read from, never the other row's
value; key rotation; rows written before encryption was turned on; a process without the
key (an error naming the key id, a claimed workflow given back); the ``perdure`` command
with ``PERDURE_ENCRYPTION_KEYS``.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import perdure
from conftest import wait_until
from perdure.store import open_store
from raw_dump import raw_database

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
ENC = perdure.Encryption({"k1": K1})
FIELDS = (
    "inputs", "workflow-output", "workflow-error", "step-output", "step-error",
    "attempt-error", "message", "event", "approval-details", "approval-comment", "blob",
)  # fmt: skip
ENVELOPE = re.compile(r"perdure-enc:1:(k1|k2):[A-Za-z0-9+/]+={0,2}")
calls: Counter[str] = Counter()


def canary(field: str) -> str:
    return f"CANARY-{field}-7f3a9c"


@perdure.step
def produce(secret: str) -> dict[str, str]:
    calls["produce"] += 1
    return {"note": canary("step-output"), "len": str(len(secret))}


@perdure.step
def big() -> str:
    calls["big"] += 1
    return canary("blob") + "x" * 8000  # above the 1 KiB threshold of these tests


@perdure.step(retry=perdure.RetryPolicy(max_attempts=2, initial_interval=0.01, jitter=0))
def flaky() -> None:
    calls["flaky"] += 1  # the first attempt's error is kept as a failed attempt's
    raise perdure.TransientError(canary("attempt-error" if calls["flaky"] == 1 else "step-error"))


@perdure.workflow(name="canary_flow")
def canary_flow(secret: str) -> dict[str, Any]:
    note = produce(secret)
    blob = big()
    try:
        flaky()
        failed = False
    except perdure.StepFailedError:
        failed = True
    perdure.set_event("state", {"value": canary("event")})
    message = perdure.receive("inbox")
    decision = perdure.wait_for_approval("ship", details={"why": canary("approval-details")})
    return {"note": note, "blob": len(blob), "failed": failed, "message": message,
            "comment": decision.comment, "result": canary("workflow-output")}  # fmt: skip


@perdure.workflow(name="failing_flow")
def failing_flow() -> None:
    raise ValueError(canary("workflow-error"))


@perdure.step
def echo(value: str) -> str:
    calls[f"echo:{value}"] += 1
    return f"value-of-{value}"


@perdure.workflow(name="two_steps")
def two_steps(tag: str) -> list[str]:
    perdure.set_event("tag", f"event-of-{tag}")
    return [echo(f"{tag}0"), echo(f"{tag}1")]


@perdure.workflow(name="waits_for_a_message")
def waits_for_a_message(tag: str) -> str:
    first = echo(tag)
    return f"{first}+{perdure.receive('go')}"


@perdure.workflow(name="sleeps_first")
def sleeps_first() -> str:
    perdure.sleep(1.0)
    return "woke"


def _engine(db_url: str, encryption: perdure.Encryption | None = ENC) -> perdure.Engine:
    return perdure.Engine(
        db_url, encryption=encryption, blob_threshold=1024, shutdown_grace=0.5,
        suspend_after=0.05,
    )  # fmt: skip


def _run_canaries(engine: perdure.Engine) -> dict[str, Any]:
    calls.clear()
    handle = engine.start(canary_flow, canary("inputs"), id="canaries")
    engine.send("canaries", "inbox", {"text": canary("message")})
    wait_until(lambda: bool(engine.pending_approvals()), timeout=30)
    [pending] = engine.pending_approvals()
    assert pending.details == {"why": canary("approval-details")}
    engine.approve("canaries", "ship", by="olivia", comment=canary("approval-comment"))
    result = handle.result(timeout=30)
    with pytest.raises(ValueError, match=canary("workflow-error")):
        engine.run(failing_flow, id="fails", timeout=30)
    return result


def _raw(engine: perdure.Engine, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows read with raw SQL on the engine's own connection (``?`` placeholders)."""
    store: Any = engine.store
    if not engine.url.startswith("sqlite"):
        query = query.replace("?", "%s")
    return [tuple(r) for r in store._run(lambda c: c.execute(query, params).fetchall())]


def _write(engine: perdure.Engine, query: str, *params: Any) -> None:
    store: Any = engine.store
    if not engine.url.startswith("sqlite"):
        query = query.replace("?", "%s")
    store._run(lambda c: c.execute(query, params))


def _output(engine: perdure.Engine, workflow_id: str, key: str) -> str:
    [(output,)] = _raw(
        engine, "SELECT output FROM steps WHERE workflow_id = ? AND key = ?", workflow_id, key
    )
    return str(output)


# -- nothing in clear ----------------------------------------------------------------------


def test_without_encryption_the_dump_shows_every_canary(db_url: str) -> None:
    """The control: each canary is found where its payload lives when stored in clear, so the
    encrypted run below cannot pass by looking in the wrong place."""
    with _engine(db_url, encryption=None) as engine:
        _run_canaries(engine)
        dump = raw_database(db_url)
    for field in FIELDS:
        assert canary(field).encode() in dump, field


def test_no_payload_is_stored_in_clear_and_everything_reads_back(db_url: str) -> None:
    calls.clear()
    with _engine(db_url) as engine:
        result = _run_canaries(engine)
        while_open = raw_database(db_url)  # WAL included, before any checkpoint
        assert result == {
            "note": {"note": canary("step-output"), "len": str(len(canary("inputs")))},
            "blob": len(canary("blob")) + 8000, "failed": True,
            "message": {"text": canary("message")}, "comment": canary("approval-comment"),
            "result": canary("workflow-output"),
        }  # fmt: skip
        # the run was unloaded while it waited: it resumed by replaying its encrypted journal
        assert calls == {"produce": 1, "big": 1, "flaky": 2}
        info = engine.get_workflow("canaries")
        assert [*info.args, *info.kwargs.values()] == [canary("inputs")]
        assert info.output == result
        steps = {step.name: step for step in engine.list_steps("canaries")}
        assert steps["flaky"].error is not None
        assert canary("step-error") in steps["flaky"].error.message
        assert canary("attempt-error") in steps["flaky"].failures[0].error.message
        assert engine.get_event("canaries", "state") == {"value": canary("event")}
        failed = engine.get_workflow("fails").error
        assert failed is not None and canary("workflow-error") in failed.message
        # every payload column holds an envelope (or a blob reference to one)
        for (output,) in _raw(engine, "SELECT output FROM steps WHERE output IS NOT NULL"):
            assert ENVELOPE.fullmatch(output) or output.startswith('{"$blob"'), output
    after_close = raw_database(db_url)
    for dump in (while_open, after_close):
        for field in FIELDS:
            assert canary(field).encode() not in dump, field
    # a new process with the key reads it all back
    store = open_store(db_url, encryption=ENC)
    try:
        row = store.get_workflow("canaries")
        assert row is not None and canary("workflow-output") in (row.output or "")
        big_output = store.load_steps("canaries")[1].output or ""
        assert big_output.startswith(f'"{canary("blob")}')
    finally:
        store.close()


def test_blob_contents_are_ciphertext_bound_to_their_row(db_url: str) -> None:
    with _engine(db_url) as engine:
        _run_canaries(engine)
        reference = _output(engine, "canaries", "1")
        assert reference.startswith('{"$blob":"sha256:')  # the envelope itself went to a blob
        digest = reference.split("sha256:")[1].split('"')[0]
        if db_url.startswith("sqlite"):
            path = db_url.removeprefix("sqlite:///") + f".blobs/{digest[:2]}/{digest}"
            with open(path, "rb") as f:
                content = f.read().decode()
        else:
            [(data,)] = _raw(engine, "SELECT data FROM blobs WHERE digest = ?", digest)
            content = bytes(data).decode()
        assert ENVELOPE.fullmatch(content)
        # the reference copied to another row: the blob's ciphertext is bound to its own row
        _write(engine, "UPDATE steps SET output = ? WHERE workflow_id = ? AND key = ?",
               reference, "canaries", "0")  # fmt: skip
        with pytest.raises(perdure.CorruptRecordError, match="journal row '0' of workflow"):
            engine.store.load_steps("canaries")


# -- swapped rows --------------------------------------------------------------------------


def test_ciphertexts_swapped_between_rows_fail_naming_the_row(db_url: str) -> None:
    calls.clear()
    with _engine(db_url) as engine:
        assert engine.run(two_steps, "a", id="wa", timeout=30) == ["value-of-a0", "value-of-a1"]
        assert engine.run(two_steps, "b", id="wb", timeout=30) == ["value-of-b0", "value-of-b1"]
        a1, a2, b1 = (
            _output(engine, "wa", "1"),
            _output(engine, "wa", "2"),
            _output(engine, "wb", "1"),
        )
        update = "UPDATE steps SET output = ? WHERE workflow_id = ? AND key = ?"

        # between positions of one workflow
        _write(engine, update, a2, "wa", "1")
        _write(engine, update, a1, "wa", "2")
        with pytest.raises(perdure.CorruptRecordError) as caught:
            engine.store.load_steps("wa")
        message = str(caught.value)
        assert "the output of journal row '1' of workflow 'wa'" in message
        assert "fails authentication" in message and "value-of" not in message
        with pytest.raises(perdure.CorruptRecordError, match="journal row '1' of workflow 'wa'"):
            engine.list_steps("wa")

        # between workflows: wb's entry 1 in wa's place
        _write(engine, update, a1, "wa", "2")
        _write(engine, update, b1, "wa", "1")
        with pytest.raises(perdure.CorruptRecordError, match="journal row '1' of workflow 'wa'"):
            engine.store.load_steps("wa")

        # a resumed run does not replay the planted value: it stops, and nothing runs again
        _write(engine, "UPDATE workflows SET status = 'ERROR' WHERE id = 'wa'")
        with pytest.raises(perdure.DeadLetteredError, match="fails authentication"):
            engine.resume("wa").result(timeout=30)
        assert calls["echo:b0"] == 1 and calls["echo:a0"] == 1 and calls["echo:a1"] == 1

        # workflow inputs, events and a field moved to another field fail the same way
        [(inputs_b,)] = _raw(engine, "SELECT inputs FROM workflows WHERE id = 'wb'")
        # (key 'tag': a run may also hold perdure's own events, a trace context say)
        [(event_b,)] = _raw(
            engine, "SELECT value FROM events WHERE workflow_id = 'wb' AND key = 'tag'"
        )
        [(output_b,)] = _raw(engine, "SELECT output FROM workflows WHERE id = 'wb'")
        _write(
            engine, "UPDATE events SET value = ? WHERE workflow_id = 'wa' AND key = 'tag'", event_b
        )
        with pytest.raises(perdure.CorruptRecordError, match="event 'tag' of workflow 'wa'"):
            engine.get_event("wa", "tag")
        _write(engine, "UPDATE workflows SET inputs = ? WHERE id = 'wa'", inputs_b)
        with pytest.raises(perdure.CorruptRecordError, match="the input record of workflow 'wa'"):
            engine.get_workflow("wa")
        _write(engine, "UPDATE workflows SET error = ? WHERE id = 'wb'", output_b)
        with pytest.raises(perdure.CorruptRecordError, match="the error of workflow 'wb'"):
            engine.get_workflow("wb")


# -- keys ----------------------------------------------------------------------------------


def test_key_rotation(db_url: str) -> None:
    with _engine(db_url, perdure.Encryption({"k1": K1})) as engine:
        engine.run(two_steps, "old", id="old", timeout=30)
        assert _output(engine, "old", "1").startswith("perdure-enc:1:k1:")
    rotated = perdure.Encryption({"k2": K2, "k1": K1}, current="k2")
    assert repr(rotated) == "Encryption(keys=['k2', 'k1'], current='k2', allow_plaintext=True)"
    with _engine(db_url, rotated) as engine:
        assert engine.get_workflow("old").output == ["value-of-old0", "value-of-old1"]
        assert [s.output for s in engine.list_steps("old")][1:] == ["value-of-old0",
                                                                    "value-of-old1"]  # fmt: skip
        engine.run(two_steps, "new", id="new", timeout=30)
        assert _output(engine, "new", "1").startswith("perdure-enc:1:k2:")
        assert _output(engine, "old", "1").startswith("perdure-enc:1:k1:")  # left as written
        [(inputs,)] = _raw(engine, "SELECT inputs FROM workflows WHERE id = 'new'")
        assert inputs.startswith("perdure-enc:1:k2:")
    store = open_store(db_url, encryption=perdure.Encryption({"k2": K2}))  # k1 dropped
    try:
        row = store.get_workflow("new")
        assert row is not None and row.output == '["value-of-new0","value-of-new1"]'
        with pytest.raises(perdure.MissingKeyError) as caught:
            store.get_workflow("old")
        assert caught.value.key_id == "k1"
        message = str(caught.value)
        assert "the input record of workflow 'old' is encrypted with key id 'k1'" in message
        assert "PERDURE_ENCRYPTION_KEYS" in message and base64.b64encode(K2).decode() not in message
    finally:
        store.close()
    store = open_store(db_url)  # no keys at all
    try:
        with pytest.raises(perdure.MissingKeyError, match="no encryption keys") as caught:
            store.load_steps("new")
        assert "key id 'k2'" in str(caught.value)
    finally:
        store.close()


def test_rows_written_before_encryption_still_read_and_replay(db_url: str) -> None:
    calls.clear()
    with _engine(db_url, encryption=None) as engine:
        engine.start(waits_for_a_message, "legacy", id="legacy")
        wait_until(lambda: engine.get_workflow("legacy").status == "WAITING", timeout=30)
    with _engine(db_url) as engine:
        legacy = engine.get_workflow("legacy")
        assert [*legacy.args, *legacy.kwargs.values()] == ["legacy"]
        engine.send("legacy", "go", "now")
        handle: perdure.WorkflowHandle[str] = perdure.WorkflowHandle(engine, "legacy")
        assert handle.result(timeout=30) == "value-of-legacy+now"
        assert calls["echo:legacy"] == 1  # replayed from the clear journal entry
        assert _output(engine, "legacy", "0") == '"value-of-legacy"'  # left as it was
        assert _output(engine, "legacy", "1").startswith("perdure-enc:1:k1:")
        [(output,)] = _raw(engine, "SELECT output FROM workflows WHERE id = 'legacy'")
        assert output.startswith("perdure-enc:1:k1:")
    strict = perdure.Encryption({"k1": K1}, allow_plaintext=False)
    store = open_store(db_url, encryption=strict)
    try:
        with pytest.raises(perdure.CorruptRecordError, match="is not encrypted"):
            store.get_workflow("legacy")  # its inputs were written in clear
    finally:
        store.close()


def test_a_worker_without_the_key_gives_the_workflow_back(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with _engine(db_url) as engine:
        engine.start(sleeps_first, id="sleeper")
        wait_until(lambda: engine.get_workflow("sleeper").status == "WAITING", timeout=30)
    caplog.set_level(logging.ERROR, logger="perdure")
    with _engine(db_url, perdure.Encryption({"k2": K2})) as engine:  # the wrong key
        wait_until(lambda: "given back" in caplog.text, timeout=30)
        [(status,)] = _raw(engine, "SELECT status FROM workflows")
        assert status in ("PENDING", "WAITING", "RUNNING")  # never failed or dead-lettered
    assert "workflow 'sleeper' cannot be run by this process" in caplog.text
    assert "key id 'k1'" in caplog.text
    with _engine(db_url) as engine:  # a worker with the key finishes it
        handle: perdure.WorkflowHandle[str] = perdure.WorkflowHandle(engine, "sleeper")
        assert handle.result(timeout=30) == "woke"


def test_a_claimed_workflow_with_a_damaged_row_is_dead_lettered_once(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with _engine(db_url) as engine:
        engine.start(sleeps_first, id="victim")
        engine.start(sleeps_first, id="other")
        wait_until(lambda: engine.get_workflow("victim").status == "WAITING", timeout=30)
        wait_until(lambda: engine.get_workflow("other").status == "WAITING", timeout=30)
        [(other_inputs,)] = _raw(engine, "SELECT inputs FROM workflows WHERE id = 'other'")
        mark = "%s" if db_url.startswith("postgresql") else "?"
        # another workflow's inputs under this one: authentic ciphertext, wrong row
        _write(engine, f"UPDATE workflows SET inputs = {mark} WHERE id = 'victim'", other_inputs)
    caplog.set_level(logging.ERROR, logger="perdure")
    with _engine(db_url) as engine:
        wait_until(lambda: engine.get_workflow("other").status == "SUCCESS", timeout=30)
        [(status, error)] = _raw(engine, "SELECT status, error FROM workflows WHERE id = 'victim'")
        assert status == "DEAD_LETTER"
        assert error is not None and "victim" not in str(error)  # the error is sealed too
        with pytest.raises(perdure.CorruptRecordError, match="victim"):
            engine.get_workflow("victim")  # reading it still names the damaged row
    assert caplog.text.count("workflow 'victim' is dead-lettered") == 1  # not re-claimed


@perdure.workflow(name="two_messages")
def two_messages() -> list[str]:
    return [perdure.receive("first"), perdure.receive("second")]


def test_a_run_whose_journal_needs_a_missing_key_is_released_not_failed(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with _engine(db_url, encryption=None) as engine:  # inputs in clear: any worker claims it
        engine.start(two_messages, id="half")
        wait_until(lambda: engine.get_workflow("half").status == "WAITING", timeout=30)
    with _engine(db_url) as engine:  # its first message journaled with k1
        engine.send("half", "first", "one")
        wait_until(lambda: [s.output for s in engine.list_steps("half")] == ["one"], timeout=30)
        wait_until(lambda: engine.get_workflow("half").status == "WAITING", timeout=30)
    caplog.set_level(logging.ERROR, logger="perdure")
    with _engine(db_url, perdure.Encryption({"k2": K2})) as engine:  # k1 missing here
        engine.send("half", "second", "two")
        wait_until(lambda: "cannot be run here" in caplog.text, timeout=30)
        [(status, stalls)] = _raw(engine, "SELECT status, stalls FROM workflows")
        assert status != "DEAD_LETTER" and stalls == 0  # not counted as a crash
    assert "key id 'k1'" in caplog.text
    both = perdure.Encryption({"k2": K2, "k1": K1}, current="k2")
    with _engine(db_url, both) as engine:
        handle: perdure.WorkflowHandle[list[str]] = perdure.WorkflowHandle(engine, "half")
        assert handle.result(timeout=30) == ["one", "two"]


def test_fork_re_encrypts_the_copied_journal_for_the_new_workflow(db_url: str) -> None:
    calls.clear()
    with _engine(db_url) as engine:
        engine.run(two_steps, "f", id="original", timeout=30)
        fork = engine.fork("original", from_step=2, new_id="forked")
        assert fork.result(timeout=30) == ["value-of-f0", "value-of-f1"]
        assert calls["echo:f0"] == 1 and calls["echo:f1"] == 2  # entry 1 replayed, 2 ran again
        copied, source = _output(engine, "forked", "1"), _output(engine, "original", "1")
        assert ENVELOPE.fullmatch(copied) and copied != source  # sealed again, for 'forked'
        assert engine.list_steps("forked")[1].output == "value-of-f0"


def test_encryption_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(perdure.ConfigurationError, match="is 16 bytes; AES-256 needs 32"):
        perdure.Encryption({"k1": bytes(16)})
    with pytest.raises(perdure.ConfigurationError, match="say which one new writes use"):
        perdure.Encryption({"k1": K1, "k2": K2})
    with pytest.raises(perdure.ConfigurationError, match="not one of the keys"):
        perdure.Encryption({"k1": K1}, current="k9")
    with pytest.raises(perdure.ConfigurationError, match="key id 'k:1' must be"):
        perdure.Encryption({"k:1": K1})
    text = f"k2:{base64.b64encode(K2).decode()}, k1:{base64.b64encode(K1).decode()}"
    parsed = perdure.Encryption.parse(text)
    assert parsed.key_ids == ("k2", "k1") and parsed.current == "k2"
    short = f"k1:{base64.b64encode(K1).decode()},k2:{base64.b64encode(b'short').decode()}"
    with pytest.raises(perdure.ConfigurationError, match="entry 2 of PERDURE_ENCRYPTION_KEYS") as e:
        perdure.Encryption.parse(short)
    assert base64.b64encode(K1).decode() not in str(e.value)  # never the key material
    assert perdure.Encryption.from_env("PERDURE_TEST_UNSET_VARIABLE") is None
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(perdure.ConfigurationError, match=r"pip install 'perdure\[crypto\]'"):
        perdure.Encryption({"k1": K1})  # the extra is missing


def test_the_perdure_command_reads_with_the_keys_of_the_environment(db_url: str) -> None:
    from cli.cli_helpers import cli_env, run_cli

    with _engine(db_url) as engine:
        engine.run(two_steps, "cli", id="for-cli", timeout=30)
    keys = f"k1:{base64.b64encode(K1).decode()}"
    done = run_cli("show", "for-cli", "--db", db_url, "--json",
                   env=cli_env(PERDURE_ENCRYPTION_KEYS=keys))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "value-of-cli1" in done.stdout and "perdure-enc" not in done.stdout
    done = run_cli("show", "for-cli", "--db", db_url, env=cli_env())
    assert done.returncode == 3
    assert "key id 'k1'" in done.stderr and "PERDURE_ENCRYPTION_KEYS" in done.stderr
    assert os.environ.get("PERDURE_ENCRYPTION_KEYS") is None


def test_the_http_api_decrypts_with_its_keys_and_reveals_nothing_without(db_url: str) -> None:
    import httpx

    sys.path.insert(0, str(Path(__file__).parent.parent / "server"))
    from server_helpers import serving

    from perdure.server import create_app, load_tokens

    with _engine(db_url) as engine:
        engine.run(two_steps, "api", id="for-api", timeout=30)
    secret = "op-secret-for-encryption-test"
    tokens = load_tokens(f"read:reader:{secret}")
    headers = {"Authorization": f"Bearer {secret}"}
    with serving(create_app(db_url, tokens=tokens, encryption=ENC)) as base:
        answer = httpx.get(f"{base}/api/v1/workflows/for-api", headers=headers, timeout=30)
    assert answer.status_code == 200
    assert answer.json()["output"] == ["value-of-api0", "value-of-api1"]
    assert "perdure-enc" not in answer.text
    with serving(create_app(db_url, tokens=tokens)) as base:  # no keys: a server-side error
        answer = httpx.get(f"{base}/api/v1/workflows/for-api", headers=headers, timeout=30)
    assert answer.status_code == 500 and answer.json()["error"]["code"] == "store_error"
    assert "k1" not in answer.text and "perdure-enc" not in answer.text  # details: the log
