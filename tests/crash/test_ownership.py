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


def ledger_pids(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def test_live_owner_keeps_its_workflow_and_a_dead_one_loses_it(tmp_path: Path) -> None:
    db, ledger = f"sqlite:///{tmp_path / 'p.db'}", tmp_path / "ledger.txt"
    owner = run_app("hold_app", db, str(ledger), "w1", "40")
    assert owner.stdout is not None
    assert owner.stdout.readline().strip() == "started"
    with perdure.Engine(db, recovery_interval=0.1, heartbeat_interval=0.1, lease_seconds=1) as me:
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


def test_unregistered_workflows_wait_for_a_process_that_has_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db, ledger = f"sqlite:///{tmp_path / 'p.db'}", tmp_path / "ledger.txt"
    dying = run_app("hold_app", db, str(ledger), "g1", "3", "ghost_flow", "--die")
    dying.communicate(timeout=30)
    assert dying.returncode == -signal.SIGKILL
    caplog.set_level(logging.ERROR, logger="perdure")
    with perdure.Engine(db, recovery_interval=0.1, heartbeat_interval=0.1) as me:
        time.sleep(0.5)
        assert me.get_workflow("g1").status is perdure.WorkflowStatus.RUNNING
    assert any("ghost_flow" in r.getMessage() for r in caplog.records)

    resumer = run_app("hold_app", db, str(ledger), "g1", "3", "ghost_flow")
    out, err = resumer.communicate(timeout=60)
    assert resumer.returncode == 0, err
    assert out.split() == ["started", "3"]
