"""Several processes on one database: one live owner per workflow, prompt takeover of a dead
process's workflows, never of a live one's; unregistered names wait for a process that has
them."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import pytest

import perdure
from conftest import run_app

pytestmark = pytest.mark.crash


ran_here: list[int] = []


@perdure.step(name="slow")
def slow(position: int) -> int:
    ran_here.append(position)
    return position


@perdure.workflow(name="hold_flow")
def hold_flow(steps: int) -> int:  # the same workflow as tests/apps/hold_app.py
    return sum(slow(i) for i in range(steps))


#: this file's copy of hold_app's workflow is other source text, so another code version:
#: the recovering engine declares the child's version compatible
ANY = "any"


def ledger_pids(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def test_live_owner_keeps_its_workflow_and_a_dead_one_loses_it(tmp_path: Path) -> None:
    db, ledger = f"sqlite:///{tmp_path / 'p.db'}", tmp_path / "ledger.txt"
    owner = run_app("hold_app", db, str(ledger), "w1", "40")
    assert owner.stdout is not None
    assert owner.stdout.readline().strip() == "started"
    with perdure.Engine(db, recovery_interval=0.1, heartbeat_interval=0.1, lease_seconds=1,
                        compatible_versions=ANY) as me:  # fmt: skip
        time.sleep(2.0)  # many recovery sweeps, and longer than the lease
        info = me.get_workflow("w1")
        assert info.status is perdure.WorkflowStatus.RUNNING
        assert info.recoveries == 0
        assert set(ledger_pids(ledger)) == {str(owner.pid)}

        owner.send_signal(signal.SIGKILL)
        owner.communicate(timeout=10)
        killed_at = time.monotonic()
        handle = me.handle("w1")
        assert handle.result(timeout=30) == sum(range(40))
        assert time.monotonic() - killed_at < 15
        assert me.get_workflow("w1").recoveries == 1
    # This process ran the rest: from the step in flight at the kill to the end, once each.
    owner_positions = [int(line.split()[1]) for line in ledger.read_text().splitlines()]
    assert ran_here == list(range(ran_here[0], 40))
    assert ran_here[0] in (owner_positions[-1], owner_positions[-1] + 1)


def test_a_frozen_worker_loses_its_workflow_and_cannot_commit_after(tmp_path: Path) -> None:
    """SIGSTOP a worker past its lease: another takes over; resumed, it commits nothing."""
    ran_here.clear()
    db, ledger = f"sqlite:///{tmp_path / 'p.db'}", tmp_path / "ledger.txt"
    owner = run_app("hold_app", db, str(ledger), "f1", "20", env={"HOLD_LEASE": "1"})
    assert owner.stdout is not None
    assert owner.stdout.readline().strip() == "started"
    while len(ledger_pids(ledger)) < 3:
        time.sleep(0.01)
    owner.send_signal(signal.SIGSTOP)
    frozen_lines = len(ledger_pids(ledger))
    try:
        with perdure.Engine(db, recovery_interval=0.1, heartbeat_interval=0.1,
                        compatible_versions=ANY) as me:  # fmt: skip
            assert me.handle("f1").result(timeout=30) == sum(range(20))
            info = me.get_workflow("f1")
            steps = me.list_steps("f1")
    finally:
        owner.send_signal(signal.SIGCONT)
    out, err = owner.communicate(timeout=30)
    assert owner.returncode == 0, err
    assert out.split() == [str(sum(range(20)))]  # it saw our result
    assert info.recoveries == 1
    assert sorted(int(s.key) for s in steps) == list(range(20))
    # Woken up, the frozen worker finished the step it was in, but its commit was fenced off
    # and it ran nothing more.
    owner_lines = ledger.read_text().splitlines()
    assert len(owner_lines) == frozen_lines
    assert ran_here[0] == int(owner_lines[-1].split()[1])  # we re-ran its step in flight
    assert ran_here == list(range(ran_here[0], 20))


def test_unregistered_workflows_wait_for_a_process_that_has_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db, ledger = f"sqlite:///{tmp_path / 'p.db'}", tmp_path / "ledger.txt"
    dying = run_app("hold_app", db, str(ledger), "g1", "3", "ghost_flow", "--die")
    dying.communicate(timeout=30)
    assert dying.returncode == -signal.SIGKILL
    caplog.set_level(logging.ERROR, logger="perdure")
    with perdure.Engine(db, recovery_interval=0.1, heartbeat_interval=0.1,
                        compatible_versions=ANY) as me:  # fmt: skip
        time.sleep(0.5)
        assert me.get_workflow("g1").status is perdure.WorkflowStatus.RUNNING
    assert any("ghost_flow" in r.getMessage() for r in caplog.records)

    resumer = run_app("hold_app", db, str(ledger), "g1", "3", "ghost_flow")
    out, err = resumer.communicate(timeout=60)
    assert resumer.returncode == 0, err
    assert out.split() == ["started", "3"]
