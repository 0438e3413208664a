"""Suspend and resume across real process deaths: durable timers and messages.

Child processes (``tests/apps/wait_app.py``) run the workflows (workers) or send messages
(senders, which open ``perdure.Engine(url, recover=False)`` and do not register the
workflows); workers are killed with SIGKILL, and new workers on the same database resume the
work. Every ``note`` step writes a JSON ledger line (tag, value, pid, time.time()), so the
ledger shows how often each body ran, in which process and when. This process only
orchestrates, and reads the database straight from the SQLite file.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import query_db, run_app, wait_until

pytestmark = pytest.mark.crash


@dataclass(frozen=True)
class Note:
    tag: str
    value: Any
    pid: int
    at: float


def notes(ledger: Path, tag: str | None = None) -> list[Note]:
    if not ledger.exists():
        return []
    found = [Note(**json.loads(line)) for line in ledger.read_text().splitlines()]
    return [n for n in found if tag is None or n.tag == tag]


def workflow_state(db: Path, workflow_id: str) -> tuple[Any, ...] | None:
    """(status, owner, wake_at, wait_topic) of the workflow, or None."""
    rows = query_db(
        db, "SELECT status, owner, wake_at, wait_topic FROM workflows WHERE id = ?", workflow_id
    )
    return rows[0] if rows else None


def journal(db: Path, workflow_id: str) -> list[tuple[str, str, Any]]:
    """(key, name, decoded output) of every journal entry, by position."""
    rows = query_db(
        db,
        "SELECT key, name, output FROM steps WHERE workflow_id = ? ORDER BY position, key",
        workflow_id,
    )
    return [(key, name, None if out is None else json.loads(out)) for key, name, out in rows]


def messages(db: Path, workflow_id: str) -> list[tuple[Any, ...]]:
    """(seq, topic, decoded payload, idempotency_key, consumed_by), in send order."""
    rows = query_db(
        db,
        "SELECT seq, topic, payload, idempotency_key, consumed_by FROM messages "
        "WHERE workflow_id = ? ORDER BY seq",
        workflow_id,
    )
    return [(seq, topic, json.loads(p), key, by) for seq, topic, p, key, by in rows]


class App:
    """One ``wait_app.py`` child process."""

    def __init__(self, db: Path, ledger: Path, mode: str, *args: str) -> None:
        self.started = time.time()
        common = ["--db", f"sqlite:///{db}", "--ledger", str(ledger), "--mode", mode]
        self.proc = run_app("wait_app", *common, *args)

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def output(self, timeout: float = 30) -> Any:
        """The JSON line the child printed; it must have exited 0."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"wait_app did not finish in {timeout} s:\n{out}\n{err}")
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=30)  # reaped: its pid is seen dead at once
        assert self.proc.returncode == -signal.SIGKILL

    def stop(self) -> None:
        """Kill the child if it still runs (cleanup after a failure)."""
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


# -- 1. a durable timer across a SIGKILL ---------------------------------------------------


@pytest.mark.parametrize("restart", ["before-due", "after-due"])
def test_a_sleep_across_sigkill_fires_once_and_on_time(tmp_path: Path, restart: str) -> None:
    db, ledger = tmp_path / "p.db", tmp_path / "ledger.jsonl"
    worker = App(db, ledger, "sleep", "--id", "s", "--seconds", "2.0")
    try:
        wait_until(lambda: (workflow_state(db, "s") or ("",))[0] == "WAITING", timeout=15)
    finally:
        worker.sigkill()
    assert [n.pid for n in notes(ledger, "A")] == [worker.pid]
    [wake_at] = [out for _, name, out in journal(db, "s") if name == "perdure.sleep"]
    assert [e[1] for e in journal(db, "s")] == ["wait_note", "perdure.sleep"]
    assert workflow_state(db, "s") == ("WAITING", None, pytest.approx(wake_at), None)
    assert notes(ledger, "B") == []

    if restart == "before-due":
        assert time.time() < wake_at - 0.5, "the kill came too late to test an early restart"
    else:
        time.sleep(max(0.0, wake_at + 0.5 - time.time()))
    resumer = App(db, ledger, "resume", "--id", "s")
    result = resumer.output()

    a, b = result["result"]
    assert [(n.pid, n.at) for n in notes(ledger, "A")] == [(worker.pid, a)]  # A ran once
    assert [(n.pid, n.at) for n in notes(ledger, "B")] == [(resumer.pid, b)]  # B ran once
    assert b >= wake_at, f"the timer fired {wake_at - b:.3f} s early"
    if restart == "before-due":
        assert b - wake_at < 1.0, f"the timer fired {b - wake_at:.3f} s late"
    else:
        assert b - resumer.started < 1.0, f"a due timer fired {b - resumer.started:.3f} s late"
    assert [e[1] for e in journal(db, "s")] == ["wait_note", "perdure.sleep", "wait_note"]
    assert workflow_state(db, "s") == ("SUCCESS", None, None, None)


# -- 2. a message from a second process to a workflow suspended in a third ------------------


def _suspended_receiver(db: Path, ledger: Path) -> App:
    worker = App(db, ledger, "receive", "--id", "r", "--topic", "go")
    try:
        wait_until(lambda: workflow_state(db, "r") == ("WAITING", None, None, "go"), timeout=15)
    except BaseException:
        worker.stop()
        raise
    assert [e[1] for e in journal(db, "r")] == ["wait_note"]
    return worker


def _send(
    db: Path, ledger: Path, workflow_id: str, topic: str, payload: Any, key: str | None = None
) -> bool:
    args = ["--id", workflow_id, "--topic", topic, "--payload", json.dumps(payload)]
    sender = App(db, ledger, "send", *args, *(["--key", key] if key is not None else []))
    return bool(sender.output()["sent"])


def _assert_received_once(db: Path, ledger: Path, payload: Any, by: int) -> None:
    entries = journal(db, "r")
    assert [e[1] for e in entries] == ["wait_note", "perdure.receive", "wait_note"]
    receive_key = entries[1][0]
    assert entries[1][2] == payload
    assert [(m[1], m[2], m[4]) for m in messages(db, "r")] == [("go", payload, receive_key)]
    assert [(n.value, n.pid) for n in notes(ledger, "got")] == [(payload, by)]
    assert len(notes(ledger, "waiting")) == 1
    assert workflow_state(db, "r") == ("SUCCESS", None, None, None)


def test_a_message_from_another_process_wakes_a_suspended_workflow(tmp_path: Path) -> None:
    db, ledger = tmp_path / "p.db", tmp_path / "ledger.jsonl"
    worker = _suspended_receiver(db, ledger)
    try:
        sent_at = time.time()
        assert _send(db, ledger, "r", "go", {"n": 1})
        assert worker.output(timeout=20) == {"result": {"n": 1}}
    finally:
        worker.stop()
    (got,) = notes(ledger, "got")
    # The sender's engine wakes nothing here; the worker polls every 0.1 s.
    assert got.at - sent_at < 2.0, f"the worker woke {got.at - sent_at:.2f} s after the send"
    _assert_received_once(db, ledger, {"n": 1}, by=worker.pid)


def test_a_message_to_a_workflow_whose_worker_was_killed_is_taken_by_a_new_worker(
    tmp_path: Path,
) -> None:
    db, ledger = tmp_path / "p.db", tmp_path / "ledger.jsonl"
    worker = _suspended_receiver(db, ledger)
    worker.sigkill()
    assert _send(db, ledger, "r", "go", {"n": 1})
    assert workflow_state(db, "r") == ("WAITING", None, None, "go")  # nobody took it yet

    second = App(db, ledger, "resume", "--id", "r")
    assert second.output(timeout=20) == {"result": {"n": 1}}
    _assert_received_once(db, ledger, {"n": 1}, by=second.pid)
    assert [n.pid for n in notes(ledger, "waiting")] == [worker.pid]


# -- 3. 1,000 messages, exactly once and in order, across three SIGKILLs -------------------

COUNT = 1000


def _consumed(db: Path, workflow_id: str) -> int:
    rows = query_db(
        db,
        "SELECT COUNT(*) FROM messages WHERE workflow_id = ? AND consumed_by IS NOT NULL",
        workflow_id,
    )
    return int(rows[0][0]) if rows else 0


def test_a_thousand_messages_arrive_exactly_once_in_order_across_restarts(
    tmp_path: Path,
) -> None:
    db, ledger = tmp_path / "p.db", tmp_path / "ledger.jsonl"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    thresholds = sorted(rng.sample(range(60, COUNT - 60), 3))
    worker = App(db, ledger, "many", "--id", "m", "--count", str(COUNT))
    sender: App | None = None
    killed: list[tuple[int, int]] = []  # (pid, messages consumed when it was killed)
    try:
        wait_until(lambda: workflow_state(db, "m") is not None, timeout=15)
        args = ["--id", "m", "--count", str(COUNT), "--pace", "0.004"]
        sender = App(db, ledger, "send-many", *args)
        for threshold in thresholds:
            wait_until(lambda t=threshold: _consumed(db, "m") >= t, timeout=30)
            time.sleep(rng.uniform(0, 0.05))  # not always right after a consume
            worker.sigkill()
            killed.append((worker.pid, _consumed(db, "m")))
            worker = App(db, ledger, "resume", "--id", "m")
        assert sender.output(timeout=30) == {"sent": COUNT}
        result = worker.output(timeout=30)
    finally:
        worker.stop()
        if sender is not None:
            sender.stop()
    context = f"seed {seed}, thresholds {thresholds}, killed {killed}"

    assert result == {"result": list(range(COUNT))}, context
    # Every message row consumed exactly once, by a distinct receive of the journal.
    rows = messages(db, "m")
    assert [m[2] for m in rows] == list(range(COUNT)), context
    assert [m[3] for m in rows] == [str(i) for i in range(COUNT)]
    consumers = [m[4] for m in rows]
    assert None not in consumers, context
    assert len(set(consumers)) == COUNT, context
    receives = [(key, out) for key, name, out in journal(db, "m") if name == "perdure.receive"]
    assert [out for _, out in receives] == list(range(COUNT)), context
    assert {key: out for key, out in receives} == {m[4]: m[2] for m in rows}, context
    # The step after each receive ran for every payload, in order; only a step in flight at
    # a kill can have run twice.
    got = [n.value for n in notes(ledger, "got")]
    assert list(dict.fromkeys(got)) == list(range(COUNT)), context
    twice = [v for v, c in Counter(got).items() if c > 1]
    assert max(Counter(got).values()) <= 2 and len(twice) <= len(killed), (twice, context)
    assert len({n.pid for n in notes(ledger, "got")}) >= 2, context  # really across restarts

    # A resend with a used idempotency key adds nothing, even long after it was consumed.
    assert not _send(db, ledger, "m", "m", 5, key="5")
    assert len(messages(db, "m")) == COUNT


# -- 4. the same idempotency key from two processes at once -----------------------------------

KEYS = 25


def test_duplicate_sends_from_two_processes_are_delivered_once(tmp_path: Path) -> None:
    db, ledger = tmp_path / "p.db", tmp_path / "ledger.jsonl"
    worker = App(db, ledger, "dup", "--id", "d", "--count", str(KEYS), "--seconds", "1.5")
    try:
        wait_until(lambda: workflow_state(db, "d") == ("WAITING", None, None, "dup"), timeout=15)
        at = str(time.time() + 1.0)  # both senders start sending at the same instant
        args = ["--id", "d", "--count", str(KEYS), "--at", at]
        senders = {tag: App(db, ledger, "send-keys", *args, "--tag", tag) for tag in "ab"}
        sent = {tag: app.output()["sent"] for tag, app in senders.items()}
        result = worker.output(timeout=30)["result"]
    finally:
        worker.stop()

    keys = [f"k{i}" for i in range(KEYS)]
    assert sorted(sent["a"] + sent["b"], key=keys.index) == keys  # each key accepted once
    rows = messages(db, "d")
    assert sorted(m[3] for m in rows) == sorted(keys)
    # The workflow got every key's message once, in send order, then nothing more.
    assert result == [m[2] for m in rows] + [None]
    assert sorted(i for _, i in result[:-1]) == list(range(KEYS))
    for tag, i in result[:-1]:
        assert f"k{i}" in sent[tag]
    assert all(m[4] is not None for m in rows)
