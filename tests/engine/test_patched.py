"""``perdure.patched()`` and ``deprecate_patch()``: a workflow edited in a compatible way
replays old runs down the old branch and runs new ones down the new branch.

A run is interrupted by closing the engine while the workflow waits for a message; the
workflow is then redefined (a deployment) under the same application version, and a second
engine resumes it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import perdure
from conftest import wait_until
from perdure.testing import export_run, replay

ledger: Counter[str] = Counter()
VERSION = "app-1"  # one application version: the change is declared compatible


@pytest.fixture(autouse=True)
def _reset() -> None:
    ledger.clear()


@perdure.step
def first() -> str:
    ledger["first"] += 1
    return "first"


@perdure.step
def old_receipt() -> str:
    ledger["old_receipt"] += 1
    return "paper receipt"


@perdure.step
def new_receipt() -> str:
    ledger["new_receipt"] += 1
    return "email receipt"


@perdure.step
def last(message: str) -> str:
    ledger["last"] += 1
    return f"done {message}"


def deploy(kind: str) -> Callable[..., Any]:
    """Register one version of the 'receipts' workflow (a deployment of new code)."""
    if kind == "old":

        @perdure.workflow(name="receipts")
        def receipts() -> list[str]:
            return [first(), old_receipt(), str(perdure.receive("go")), last("x")]

    elif kind == "patched":

        @perdure.workflow(name="receipts")
        def receipts() -> list[str]:
            opened = first()
            receipt = new_receipt() if perdure.patched("email-receipt") else old_receipt()
            return [opened, receipt, str(perdure.receive("go")), last("x")]

    elif kind == "deprecated":

        @perdure.workflow(name="receipts")
        def receipts() -> list[str]:
            opened = first()
            perdure.deprecate_patch("email-receipt")
            return [opened, new_receipt(), str(perdure.receive("go")), last("x")]

    else:  # the call removed altogether

        @perdure.workflow(name="receipts")
        def receipts() -> list[str]:
            return [first(), new_receipt(), str(perdure.receive("go")), last("x")]

    return receipts


def _engine(db_url: str) -> perdure.Engine:
    return perdure.Engine(db_url, shutdown_grace=0.2, suspend_after=0.0, version=VERSION)


def _start_and_leave_waiting(db_url: str, kind: str, workflow_id: str) -> None:
    fn = deploy(kind)
    with _engine(db_url) as engine:
        engine.start(fn, id=workflow_id)
        wait_until(
            lambda: engine.get_workflow(workflow_id).status is perdure.WorkflowStatus.WAITING
        )


def _finish(db_url: str, kind: str, workflow_id: str) -> Any:
    deploy(kind)
    with _engine(db_url) as engine:
        engine.send(workflow_id, "go", "go")
        return engine.handle(workflow_id).result(timeout=10)


def test_an_old_run_replays_down_the_old_branch(db_url: str) -> None:
    # the receive comes after the patch point, so the old run recorded old_receipt there
    _start_and_leave_waiting(db_url, "old", "old-run")
    assert ledger == Counter({"first": 1, "old_receipt": 1})
    assert _finish(db_url, "patched", "old-run") == ["first", "paper receipt", "go", "done x"]
    assert ledger == Counter({"first": 1, "old_receipt": 1, "last": 1})  # nothing re-ran


def test_a_new_run_takes_the_new_branch_and_replays_it(db_url: str) -> None:
    _start_and_leave_waiting(db_url, "patched", "new-run")
    assert ledger == Counter({"first": 1, "new_receipt": 1})
    assert _finish(db_url, "patched", "new-run") == ["first", "email receipt", "go", "done x"]
    assert ledger == Counter({"first": 1, "new_receipt": 1, "last": 1})
    with _engine(db_url) as engine:
        names = [step.name for step in engine.list_steps("new-run")]
    # the marker is journaled before the branch runs; it takes a position, not a step key
    assert names[:3] == ["first", "perdure.patched", "new_receipt"]


def test_patched_runs_replay_after_the_call_is_deprecated_then_removed(db_url: str) -> None:
    _start_and_leave_waiting(db_url, "patched", "a")
    _start_and_leave_waiting(db_url, "patched", "b")
    assert _finish(db_url, "deprecated", "a") == ["first", "email receipt", "go", "done x"]
    assert _finish(db_url, "removed", "b") == ["first", "email receipt", "go", "done x"]
    assert ledger["new_receipt"] == 2 and ledger["old_receipt"] == 0


def test_deprecate_patch_stops_an_old_run_before_anything_new_runs(db_url: str) -> None:
    _start_and_leave_waiting(db_url, "old", "stale")
    with _engine(db_url) as engine:
        before = engine.store.load_steps("stale")
    deploy("deprecated")
    with _engine(db_url) as engine:
        engine.send("stale", "go", "go")
        with pytest.raises(perdure.PatchRemovedError) as info:
            engine.handle("stale").result(timeout=10)
        after = engine.store.load_steps("stale")
    assert info.value.change_id == "email-receipt"
    assert "perdure.patched('email-receipt')" in str(info.value)
    assert ledger == Counter({"first": 1, "old_receipt": 1})  # new_receipt, last: never
    assert after == before


def test_the_replay_check_takes_the_branch_each_run_recorded(db_url: str) -> None:
    _start_and_leave_waiting(db_url, "old", "old-run")
    _finish(db_url, "old", "old-run")
    _start_and_leave_waiting(db_url, "patched", "new-run")
    _finish(db_url, "patched", "new-run")
    with _engine(db_url) as engine:
        old_export = export_run(engine.store, "old-run")
        new_export = export_run(engine.store, "new-run")
    patched_fn = deploy("patched")
    assert replay(old_export, patched_fn).finished
    assert replay(new_export, patched_fn).finished
    old_fn = deploy("old")
    with pytest.raises(perdure.NonDeterminismError):
        replay(new_export, old_fn)  # recorded new_receipt, the old code calls old_receipt


def test_patched_outside_a_workflow_and_bad_change_ids() -> None:
    assert perdure.patched("anything") is True
    perdure.deprecate_patch("anything")  # a no-op outside a workflow
    for bad in ("", "tab\there", 3):
        with pytest.raises(perdure.ConfigurationError, match="change id"):
            perdure.patched(bad)  # type: ignore[arg-type]
