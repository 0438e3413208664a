"""The chaos run's verdict (``bench/chaos.py``): what the database and the ledger files hold
once every worker has stopped, checked against what must hold, and the recovery times read
from the journal. Everything here runs after the run; nothing here touches a process.
"""

from __future__ import annotations

import itertools
import json
import math
from bisect import bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _chaos_faults import Database, Freeze, Kill, Restart
from _chaos_worker import WORKFLOW, expected_result

TRANSACTION, PLAIN = "apply", "note"


@dataclass(frozen=True)
class Entry:
    """One journal entry of a workflow."""

    position: int
    key: str
    name: str
    status: str
    output: Any
    started_at: float
    finished_at: float


@dataclass
class Evidence:
    """Everything the run left behind."""

    workflows: dict[str, tuple[str, Any, float]]  # id -> (status, result, updated_at)
    journal: dict[str, list[Entry]]  # id -> entries by position
    effects: dict[tuple[str, int], list[tuple[int, int]]]  # (id, pos) -> [(pid, execution)]
    executions: int  # transaction bodies executed, committed or not (the sequence)
    ledger: dict[tuple[str, int], list[Run]]  # (id, pos) -> its executions
    takeovers: int  # sum of the workflows' recoveries
    commits: list[float]  # the database's time of each committed transaction step, sorted

    @classmethod
    def load(cls, db: Database, ledger_dir: Path) -> Evidence:
        """Read the schema's tables and the ledger files."""
        workflows = {
            wf: (status, json.loads(out) if out is not None else None, float(updated))
            for wf, status, out, updated in db.rows(
                "SELECT id, status, output, updated_at FROM workflows WHERE name = %s",
                (WORKFLOW,),
            )
        }
        journal: dict[str, list[Entry]] = defaultdict(list)
        for wf, pos, key, name, status, out, began, ended in db.rows(
            "SELECT workflow_id, position, key, name, status, output, started_at, finished_at "
            "FROM steps ORDER BY workflow_id, position"
        ):
            output = json.loads(out) if out is not None else None
            journal[wf].append(Entry(pos, key, name, status, output, began, ended))
        effects: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
        commits = []
        for wf, pos, pid, execution, at in db.rows(
            "SELECT workflow_id, position, pid, execution, at FROM chaos_effects"
        ):
            effects[wf, pos].append((pid, execution))
            commits.append(float(at))
        [(last, called)] = db.rows("SELECT last_value, is_called FROM chaos_executions")
        [(takeovers,)] = db.rows("SELECT COALESCE(SUM(recoveries), 0) FROM workflows")
        return cls(
            workflows,
            journal,
            effects,
            int(last) if called else 0,
            read_ledger(ledger_dir),
            int(takeovers),
            sorted(commits),
        )


@dataclass(frozen=True)
class Run:
    """One execution of a plain step's body, as the ledger recorded it."""

    pid: int
    token: str
    began: float


def read_ledger(folder: Path) -> dict[tuple[str, int], list[Run]]:
    """(workflow, position) -> every execution of that plain step."""
    runs: dict[tuple[str, int], list[Run]] = defaultdict(list)
    for path in sorted(folder.glob("ledger.*")):
        for line in path.read_text().splitlines():
            wf, pos, pid, token, began = line.split()
            runs[wf, int(pos)].append(Run(int(pid), token, float(began)))
    return runs


# -- the table -------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the invariant table; ``ok`` None means information only."""

    label: str
    value: str
    expected: str = ""
    ok: bool | None = None
    detail: str = ""


@dataclass
class Table:
    """The invariant table."""

    rows: list[Row] = field(default_factory=list)

    def info(self, label: str, value: object) -> None:
        self.rows.append(Row(label, str(value)))

    def must(self, label: str, value: int, expected: str, ok: bool, detail: str = "") -> None:
        self.rows.append(Row(label, str(value), expected, ok, "" if ok else detail))

    def zero(self, label: str, value: int, detail: str = "") -> None:
        self.must(label, value, "0", value == 0, detail)

    @property
    def violations(self) -> list[Row]:
        return [r for r in self.rows if r.ok is False]

    def render(self) -> str:
        """The table as text, then the details of each violation."""
        width = max(len(r.label) for r in self.rows)
        value_width = max(7, *(len(r.value) for r in self.rows))
        lines = [
            f"{'':{width}}  {'value':>{value_width}}  {'expected':<10} verdict",
            "-" * (width + value_width + 24),
        ]
        for r in self.rows:
            verdict = "" if r.ok is None else ("ok" if r.ok else "VIOLATION")
            lines.append(
                f"{r.label:{width}}  {r.value:>{value_width}}  {r.expected:<10} {verdict}".rstrip()
            )
        for r in self.violations:
            if r.detail:
                lines.append(f"VIOLATION {r.label}: {r.detail}")
        return "\n".join(lines)


# -- the checks ------------------------------------------------------------------------------


def sample(items: list[Any], n: int = 5) -> str:
    """The first ``n`` items, for a violation's detail."""
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f" ... ({len(items)} in all)" if len(items) > n else "")


def check_outcomes(table: Table, ev: Evidence, ids: list[str], steps: int) -> None:
    """Every acknowledged workflow finished SUCCESS with the right result."""
    statuses = Counter(ev.workflows[wf][0] if wf in ev.workflows else "MISSING" for wf in ids)
    unfinished = [
        wf
        for wf in ids
        if statuses_of(ev, wf) in ("MISSING", "ENQUEUED", "PENDING", "RUNNING", "WAITING")
    ]
    failed = [wf for wf in ids if statuses_of(ev, wf) in ("ERROR", "CANCELLED", "DEAD_LETTER")]
    wrong = [
        wf
        for wf in ids
        if statuses_of(ev, wf) == "SUCCESS" and ev.workflows[wf][1] != expected_result(wf, steps)
    ]
    by_status = dict(sorted(statuses.items()))
    table.must(
        "finished SUCCESS",
        statuses["SUCCESS"],
        str(len(ids)),
        statuses["SUCCESS"] == len(ids),
        f"statuses {by_status}",
    )
    table.zero("lost (acknowledged, not finished)", len(unfinished), sample(unfinished))
    table.zero("failed (ERROR, DEAD_LETTER, CANCELLED)", len(failed), sample(failed))
    table.zero("wrong results", len(wrong), sample(wrong))


def statuses_of(ev: Evidence, wf: str) -> str:
    return ev.workflows[wf][0] if wf in ev.workflows else "MISSING"


def check_journals(table: Table, ev: Evidence, ids: list[str], steps: int) -> None:
    """Each finished workflow's journal holds positions 0..steps-1, no gap, no extra, each
    the step expected there, succeeded."""
    expected = [(p, TRANSACTION if p % 2 == 0 else PLAIN, "SUCCESS") for p in range(steps)]
    bad = [
        wf
        for wf in ids
        if statuses_of(ev, wf) == "SUCCESS"
        and [(e.position, e.name, e.status) for e in ev.journal.get(wf, [])] != expected
    ]
    table.zero("journals with a gap or an extra entry", len(bad), sample(bad))


def check_transactions(table: Table, ev: Evidence, ids: list[str], steps: int) -> None:
    """Each transaction step's effect is in the database exactly once, and it is the
    execution its journal entry recorded (committed together)."""
    twice, missing = [], []
    for wf in ids:
        for entry in ev.journal.get(wf, []):
            if entry.name != TRANSACTION:
                continue
            rows = ev.effects.get((wf, entry.position), [])
            if len(rows) > 1:
                twice.append((wf, entry.position, rows))
            elif not rows or rows[0][1] != entry.output["execution"]:
                missing.append((wf, entry.position, rows, entry.output))
    journaled = {(wf, e.position) for wf in ids for e in ev.journal.get(wf, [])}
    orphans = [key for key in ev.effects if key not in journaled]
    committed = sum(len(rows) for rows in ev.effects.values())
    table.zero("applied twice (transaction steps)", len(twice), sample(twice))
    table.zero(
        "transaction effects missing or not the journaled execution",
        len(missing) + len(orphans),
        sample(missing + orphans),
    )
    table.info("transaction steps committed", committed)
    table.info(
        "transaction bodies rolled back (killed, fenced, or restart)", ev.executions - committed
    )


def check_plain_steps(table: Table, ev: Evidence, ids: list[str], faulty: set[int]) -> None:
    """Each plain step's journaled result came from an execution the ledger recorded; an
    execution whose result was not journaled (an extra attempt) ran in a process that was
    killed or frozen."""
    no_execution, unexplained, extra = [], [], 0
    for wf in ids:
        for entry in ev.journal.get(wf, []):
            if entry.name != PLAIN:
                continue
            runs = ev.ledger.get((wf, entry.position), [])
            token = entry.output["token"]
            if token not in {r.token for r in runs}:
                no_execution.append((wf, entry.position))
            others = [r.pid for r in runs if r.token != token]
            extra += len(others)
            if any(pid not in faulty for pid in others):
                unexplained.append((wf, entry.position, others, token))
    table.zero(
        "plain steps journaled without an execution", len(no_execution), sample(no_execution)
    )
    table.info("extra attempts (plain step bodies re-run)", extra)
    table.zero(
        "  of which in a process neither killed nor frozen", len(unexplained), sample(unexplained)
    )


def entry_pid(ev: Evidence, wf: str, entry: Entry) -> int | None:
    """The process whose execution a journal entry recorded."""
    if entry.name == TRANSACTION:
        rows = [
            pid
            for pid, ex in ev.effects.get((wf, entry.position), [])
            if ex == entry.output["execution"]
        ]
    else:
        token = entry.output["token"]
        rows = [r.pid for r in ev.ledger.get((wf, entry.position), []) if r.token == token]
    return rows[0] if rows else None


def stale_commits(ev: Evidence, freeze: Freeze) -> list[tuple[str, int]]:
    """Journal entries that the frozen worker committed after SIGCONT for workflows taken
    from it during the freeze, from executions it began before it was stopped (must be
    none: its lease was gone, its writes fenced). Re-claiming a workflow later and running
    new steps for it is legitimate and not counted (those begin after SIGCONT)."""
    stale = []
    for wf in freeze.taken:
        for entry in ev.journal.get(wf, []):
            if (
                entry.finished_at > freeze.stopped_at
                and entry.started_at < freeze.continued_at
                and entry_pid(ev, wf, entry) == freeze.pid
            ):
                stale.append((wf, entry.position))
    return stale


def freeze_rows(table: Table, ev: Evidence, freeze: Freeze) -> None:
    """What the frozen worker held, what others took over, and what of its work was fenced
    off when it was continued."""
    taken = set(freeze.taken)
    fenced = [
        (wf, pos)
        for (wf, pos), runs in ev.ledger.items()
        if wf in taken
        for r in runs
        if r.pid == freeze.pid
        and r.began < freeze.stopped_at
        and r.token != journal_entry(ev, wf, pos).output["token"]
    ]
    held = f"{len(freeze.in_flight)} / {len(taken)}"
    table.info("  stopped for, s", f"{freeze.continued_at - freeze.stopped_at:.1f}")
    table.info("  workflows it held / taken over by others", held)
    table.info("  plain step bodies it was in, not journaled (fenced)", len(fenced))


def journal_entry(ev: Evidence, wf: str, position: int) -> Entry:
    """The journal entry of ``wf`` at ``position`` (a placeholder if there is none)."""
    for entry in ev.journal.get(wf, []):
        if entry.position == position:
            return entry
    return Entry(position, "", PLAIN, "MISSING", {"token": ""}, 0.0, 0.0)


# -- recovery times --------------------------------------------------------------------------


@dataclass
class Progress:
    """When each workflow made progress: its journal entries' finish times and its end."""

    per_workflow: dict[str, list[float]]

    @classmethod
    def of(cls, ev: Evidence) -> Progress:
        per: dict[str, list[float]] = {}
        for wf, entries in ev.journal.items():
            per[wf] = sorted(e.finished_at for e in entries)
        for wf, (status, _, updated) in ev.workflows.items():
            if status == "SUCCESS":
                per.setdefault(wf, []).append(updated)
                per[wf].sort()
        return cls(per)

    def next_after(self, wf: str, at: float) -> float | None:
        times = self.per_workflow.get(wf, [])
        i = bisect_right(times, at)
        return times[i] if i < len(times) else None

    def recovery(self, in_flight: tuple[str, ...], at: float) -> float | None:
        """Seconds from ``at`` until every one of ``in_flight`` moved on (a step journaled,
        or the workflow finished), or None if there was nothing to recover."""
        nexts = [self.next_after(wf, at) for wf in in_flight]
        found = [t for t in nexts if t is not None]
        return max(found) - at if found else None


def commit_pause(commits: list[float], restart: Restart) -> float | None:
    """The longest time without a committed transaction step around a restart: between the
    last commit before the command began and the first commit after it returned, the
    largest gap between consecutive commits (None if nothing committed after it)."""
    after = bisect_right(commits, restart.ended)
    if after == len(commits):
        return None
    before = bisect_right(commits, restart.began) - 1
    start = [commits[before]] if before >= 0 else [restart.began]
    window = start + commits[before + 1 : after + 1]
    return max(b - a for a, b in itertools.pairwise(window))


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile (p in 0..100) of non-empty ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def spread(values: list[float]) -> str:
    """The p50, p99 and max of ``values`` in seconds, as ``a / b / c``; ``-`` if empty."""
    if not values:
        return "-"
    return " / ".join(
        f"{v:.2f}" for v in (percentile(values, 50), percentile(values, 99), max(values))
    )


def recovery_rows(
    table: Table, ev: Evidence, kills: list[Kill], restarts: list[Restart], freeze: Freeze | None
) -> dict[str, list[float]]:
    """Add the recovery times to the table; return them by kind."""
    progress = Progress.of(ev)
    after_kill = [
        r
        for k in kills
        if k.in_flight
        for r in [progress.recovery(k.in_flight, k.at)]
        if r is not None
    ]
    unknown = sum(1 for k in kills if k.in_flight is None)
    with_work = sum(1 for k in kills if k.in_flight)
    outages = [r.ended - r.began for r in restarts]
    paused = [t for r in restarts for t in [commit_pause(ev.commits, r)] if t is not None]
    table.info("  kills of a worker holding workflows", with_work)
    table.info("  kills while the server was down (holdings unknown)", unknown)
    table.info("recovery after a kill, s (p50 / p99 / max)", spread(after_kill))
    table.info("restart command duration, s (p50 / p99 / max)", spread(outages))
    table.info("commits paused by a restart, s (p50 / p99 / max)", spread(paused))
    times = {"kill": after_kill, "restart_command": outages, "restart_pause": paused}
    if freeze is not None and freeze.stopped_at:
        took = progress.recovery(freeze.in_flight, freeze.stopped_at)
        table.info(
            "takeover of the frozen worker's workflows, s", "-" if took is None else f"{took:.2f}"
        )
        times["freeze"] = [] if took is None else [took]
    return times
