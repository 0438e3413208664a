"""SIGKILL while many workflows' steps are being committed in groups (real child process).

Group commit must not weaken the journal's promise: a writer is released only once its entry
is durable. A child runs 40 workflows of 40 steps at once (half sync on threads, half async
on the engine's loop), each step body writing a ledger line; the parent SIGKILLs it in the
middle, reads what the journal held at that instant, and lets a new process recover. Then:

- no workflow had run a step past the first one its journal lacked (a writer released before
  its entry was durable would have gone on to the next step: its ledger line would show);
- every step journaled before the kill ran exactly once (never re-executed on recovery);
- at most the one step in flight per workflow ran twice;
- every workflow finished with the right result and a gap-free journal.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import run_app, wait_until
from perdure.store import open_store

pytestmark = pytest.mark.crash

WORKFLOWS, STEPS = 40, 40


def _ledger(path: Path) -> Counter[tuple[str, int]]:
    counts: Counter[tuple[str, int]] = Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            workflow_id, position = line.split()
            counts[(workflow_id, int(position))] += 1
    return counts


def _journal(url: str) -> dict[str, list[int]]:
    store = open_store(url)
    try:
        return {
            f"g{i}": [row.position for row in store.load_steps(f"g{i}")] for i in range(WORKFLOWS)
        }
    finally:
        store.close()


def test_sigkill_during_group_commits_loses_nothing_and_releases_no_one_early(
    db_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    args = ["--db", db_url, "--ledger", str(ledger), "--workflows", str(WORKFLOWS),
            "--steps", str(STEPS)]  # fmt: skip
    child = run_app("group_app", *args, "--mode", "run")
    try:
        assert child.stdout is not None
        # every workflow exists (the recovery below waits for each), then most are mid-run
        assert child.stdout.readline().strip() == "started"
        # killed with about a third of the steps done: every workflow is mid-run
        wait_until(lambda: sum(_ledger(ledger).values()) >= WORKFLOWS * STEPS // 3, timeout=60)
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    ran_before = _ledger(ledger)
    journal_before = _journal(db_url)
    assert sum(len(p) for p in journal_before.values()) < WORKFLOWS * STEPS, "killed too late"

    for workflow_id, positions in journal_before.items():
        assert positions == list(range(len(positions))), f"{workflow_id}: gap {positions}"
        furthest = max((p for (w, p) in ran_before if w == workflow_id), default=-1)
        assert furthest <= len(positions), (
            f"{workflow_id} ran step {furthest} with only {len(positions)} steps journaled: a "
            "writer was released before its entry was durable"
        )

    started = time.monotonic()
    recovery = run_app("group_app", *args, "--mode", "recover")
    out, err = recovery.communicate(timeout=180)
    assert recovery.returncode == 0, err
    results = json.loads(out.strip().splitlines()[-1])
    assert results == {f"g{i}": sum(range(STEPS)) for i in range(WORKFLOWS)}
    assert time.monotonic() - started < 120

    ran = _ledger(ledger)
    for workflow_id, positions in _journal(db_url).items():
        assert positions == list(range(STEPS)), f"{workflow_id}: {positions}"
        committed = set(journal_before[workflow_id])
        twice = [p for p in range(STEPS) if ran[(workflow_id, p)] == 2]
        assert all(ran[(workflow_id, p)] >= 1 for p in range(STEPS))
        assert all(ran[(workflow_id, p)] <= 2 for p in range(STEPS))
        assert not committed & set(twice), f"{workflow_id}: journaled steps {twice} ran again"
        assert len(twice) <= 1, f"{workflow_id}: steps {twice} ran twice"
