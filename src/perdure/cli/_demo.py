"""``perdure demo``: a research agent killed with SIGKILL mid-run, then resumed.

The agent (``_demo_agent.py``) runs in a child process. This process watches its journal,
kills the child with SIGKILL in the middle of a step, starts a new child on the same database
and workflow id, and then shows, step by step, what the second process replayed from the
journal and what it executed, checked against the side-effect ledger both children wrote.
Everything printed is read from the journal, the ledger or the notes file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .._records import StepInfo
from ..store import Store, open_store
from ._demo_agent import MODEL_STEP, model_name

WORKFLOW_ID = "research-1"
KILL_AFTER = 8  # journal entries committed before the kill (the note is saved by then)


def run_demo(db_url: str | None = None, *, kill_after: int = KILL_AFTER) -> int:
    """Run the demo; return the process exit code (0 when the story checked out)."""
    workdir = Path(tempfile.mkdtemp(prefix="perdure-demo-"))
    url = db_url or f"sqlite:///{workdir / 'demo.db'}"
    ledger, notes = workdir / "ledger.txt", workdir / "notes.txt"
    print("perdure demo: a research agent that survives SIGKILL\n")
    print(f"  database : {url}")
    print(f"  model    : {model_name()}")
    print(f"  ledger   : {ledger}  (each step body writes '<pid> <step>' when it runs)\n")
    store = open_store(url)
    try:
        return _story(store, url, ledger, notes, kill_after)
    finally:
        store.close()


def _story(store: Store, url: str, ledger: Path, notes: Path, kill_after: int) -> int:
    command = [sys.executable, "-m", "perdure.cli._demo_agent", "--db", url,
               "--id", WORKFLOW_ID, "--ledger", str(ledger), "--notes", str(notes)]  # fmt: skip
    first = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    print(f"run 1: agent started in child process {first.pid}")
    shown = _watch(store, first, shown=0, until=kill_after)
    if first.poll() is not None:
        print(f"  the child exited (code {first.returncode}) before the kill; nothing to show")
        return 1
    time.sleep(0.15)  # let the next step get under way, then kill it mid-step
    first.send_signal(signal.SIGKILL)
    first.wait()
    committed = len(store.load_steps(WORKFLOW_ID))
    print(f"  SIGKILL sent to process {first.pid} ({committed} steps were committed)\n")

    second = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    print(f"run 2: same workflow id, new child process {second.pid}")
    _watch(store, second, shown=shown, until=None)
    answer = (second.communicate()[0] or "").strip()
    if second.returncode != 0:
        print(f"  run 2 failed with exit code {second.returncode}")
        return 1
    print(f"\nanswer: {answer}\n")
    return _report(store.load_steps(WORKFLOW_ID), ledger, notes, first.pid, second.pid, committed)


def _watch(store: Store, child: subprocess.Popen[str], shown: int, until: int | None) -> int:
    """Print journal entries as they commit, until ``until`` entries or the child exits."""
    while True:
        steps = store.load_steps(WORKFLOW_ID)
        for row in steps[shown:]:
            info = StepInfo.from_row(row)
            ms = info.duration.total_seconds() * 1000
            print(f"  [{info.position}] {info.name:<30} committed  {ms:6.0f} ms{_tokens(info)}")
        shown = len(steps)
        if (until is not None and shown >= until) or child.poll() is not None:
            return shown
        time.sleep(0.02)


def _tokens(info: StepInfo) -> str:
    usage = _usage(info)
    return f"  {usage} tokens" if usage else ""


def _usage(info: StepInfo) -> int:
    output: Any = info.output
    if info.name != MODEL_STEP or not isinstance(output, dict):
        return 0
    usage = output.get("usage") or {}
    return int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))


def _report(
    rows: list[Any], ledger: Path, notes: Path, pid1: int, pid2: int, committed: int
) -> int:
    steps = [StepInfo.from_row(r) for r in rows]
    ran: dict[int, list[str]] = {pid1: [], pid2: []}
    for line in ledger.read_text(encoding="utf-8").splitlines():
        pid, name = line.split()
        ran.setdefault(int(pid), []).append(name)
    names = [s.name for s in steps]
    in_flight = ran[pid1][committed:]
    print(f"{'pos':>3}  {'step':<30} {'run 1 (pid ' + str(pid1) + ')':<24} run 2 (pid {pid2})")
    for s in steps:
        before = s.position < committed
        first = "executed, committed" if before else ""
        if s.position == committed and in_flight:
            first = "in flight when killed"
        second = "replayed from journal" if before else "executed"
        print(f"{s.position:>3}  {s.name:<30} {first:<24} {second}")
    checks = {
        "run 1 ran the bodies of the committed steps, then the one in flight": ran[pid1]
        == names[:committed] + in_flight,
        "run 2 ran only the steps after the journal's end": ran[pid2] == names[committed:],
    }
    replayed_calls = [s for s in steps[:committed] if s.name == MODEL_STEP]
    total_calls = names.count(MODEL_STEP)
    saved_tokens = sum(_usage(s) for s in replayed_calls)
    note_lines = notes.read_text(encoding="utf-8").splitlines() if notes.exists() else []
    checks["the note was saved exactly once"] = len(note_lines) == 1
    print(
        f"\nmodel calls: {total_calls} in the run; {len(replayed_calls)} made before the crash "
        f"were replayed from the journal, not sent again ({saved_tokens} tokens not re-paid)"
    )
    executions = Counter(ran[pid1] + ran[pid2])
    redone = sum(executions.values()) - len(steps)
    print(
        f"step bodies executed: {sum(executions.values())} for {len(steps)} steps "
        f"({redone} re-executed: only the step in flight at the kill)"
    )
    print(f"notes file: {len(note_lines)} note(s)")
    for label, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {label}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(run_demo(os.environ.get("PERDURE_DB")))
