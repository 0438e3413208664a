"""Queue limits across real worker processes: a queue with ``concurrency=3`` (and
``worker_concurrency=2``, so that three at once needs two workers) served by four workers never
runs more than three at once (measured from a ledger of start and end times
written by the workflows themselves), and a rate limit holds across workers (measured from
the times the database recorded for each admission). Both backends: PostgreSQL (workers on
many machines) and SQLite (workers sharing one file)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import perdure
from conftest import run_app

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Four worker processes serving the queues of tests/apps/queue_worker_app.py."""
    ledger = tmp_path / "ledger.txt"
    procs = [run_app("queue_worker_app", db_url, str(ledger)) for _ in range(4)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.stderr and proc.stderr.read()
        yield db_url, ledger
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if "Traceback" in err:
                print(err)


def _peak(ledger: Path) -> tuple[int, set[str]]:
    """The most runs in progress at once, from the ledger's start/end lines; and the pids
    that ran any."""
    events = []
    pids = set()
    for line in ledger.read_text().splitlines():
        kind, _tag, at, pid = line.split()
        events.append((float(at), 0 if kind == "end" else 1))  # an end before a start at a tie
        pids.add(pid)
    level = peak = 0
    for _, start in sorted(events):
        level += 1 if start else -1
        peak = max(peak, level)
    return peak, pids


def test_concurrency_3_holds_across_four_workers(workers: tuple[str, Path]) -> None:
    url, ledger = workers
    with perdure.Engine(url, recover=False) as client:
        handles = [
            client.enqueue("shared", "ledger_job", tag=f"job-{i}", hold=0.15) for i in range(24)
        ]
        pids = {h.result(timeout=60) for h in handles}
    peak, ran_in = _peak(ledger)
    print(f"peak {peak} at once, {len(pids)} worker processes ran the 24 workflows")
    assert peak <= 3
    assert peak == 3  # the limit is used, not a single worker serializing everything
    # worker_concurrency=2: reaching 3 at once took at least two workers sharing the limit
    assert len(pids) >= 2 and len(ran_in) == len(pids)
    assert len(ledger.read_text().splitlines()) == 48  # each ran once: 24 starts, 24 ends


def test_a_rate_limit_holds_across_four_workers(workers: tuple[str, Path]) -> None:
    url, _ = workers
    with perdure.Engine(url, recover=False) as client:
        handles = [client.enqueue("rated", "ledger_job", tag=f"r{i}", hold=0.0) for i in range(12)]
        pids = {h.result(timeout=60) for h in handles}
        store = client.store
        admitted = sorted(t for t in (_dequeued_at(store, h.id) for h in handles) if t is not None)
    assert len(admitted) == 12
    # at most 4 admissions in any 1 s window: the 5th is >= 1 s after the 1st, and so on
    gaps = [admitted[i + 4] - admitted[i] for i in range(len(admitted) - 4)]
    print(f"admissions over {admitted[-1] - admitted[0]:.2f} s by {len(pids)} workers; "
          f"smallest 5-admission span {min(gaps):.3f} s")  # fmt: skip
    assert min(gaps) >= 1.0
    assert admitted[-1] - admitted[0] >= 2.0


def _dequeued_at(store: object, workflow_id: str) -> float | None:
    """When the database recorded the workflow's admission (read through the store's own
    connection: the column is not part of the public records)."""
    run = store._run
    mark = "?" if type(store).__name__ == "SQLiteStore" else "%s"
    row = run(
        lambda conn: conn.execute(
            f"SELECT dequeued_at FROM workflows WHERE id = {mark}", (workflow_id,)
        ).fetchone()
    )
    return None if row is None or row[0] is None else float(row[0])
