"""The tables and the TARGETS block of ``bench/compare.py``: medians of the child results per
(scenario, sizes, system, backend), the ratios between systems, PASS/MISS per target of
issue 10. Standard library only."""

from __future__ import annotations

import argparse
import statistics
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compare import Run

Key = tuple[str, str, str, str]  # scenario, label, system, backend


@dataclass
class Entry:
    """Every repetition of one case."""

    results: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unsupported: str = ""

    def get(self, name: str) -> float | None:
        """The median of a numeric field over the repetitions; None when absent."""
        values = [
            r[name]
            for r in self.results
            if isinstance(r.get(name), int | float) and not isinstance(r.get(name), bool)
        ]
        return statistics.median(values) if values else None

    def text(self, name: str) -> str:
        for result in self.results:
            if result.get(name) not in (None, ""):
                return str(result[name])
        return ""


def aggregate(runs: list[Run]) -> dict[Key, Entry]:
    found: dict[Key, Entry] = {}
    for run in runs:
        entry = found.setdefault(run.case.key, Entry())
        if run.error:
            entry.errors.append(run.error)
        elif run.result is not None and "unsupported" in run.result:
            entry.unsupported = str(run.result["unsupported"])
        elif run.result is not None:
            entry.results.append(run.result)
            # Another way of doing it, measured in the same child ("alt", "alt_async"...):
            # a row of its own, "<system>-alt", "<system>-async"...
            for name, alt in run.result.items():
                if not (name.startswith("alt") and isinstance(alt, dict)):
                    continue
                scenario, label, system, backend = run.case.key
                row = f"{system}-{name[3:].lstrip('_') or 'alt'}"
                note = "; ".join(str(alt[k]) for k in ("api", "notes") if alt.get(k)) or name
                found.setdefault((scenario, label, row, backend), Entry()).results.append(
                    {"version": run.result.get("version", ""), **alt, "notes": note}
                )
    return found


# -- formatting ------------------------------------------------------------------------------


def num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def ratio(top: float | None, bottom: float | None) -> float | None:
    if top is None or bottom is None or bottom == 0:
        return None
    return top / bottom


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(
        h.ljust(w) if i < 2 else h.rjust(w)
        for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    )
    print(line)
    print("-" * len(line))
    for row in rows:
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


Columns = Callable[[str, str, Entry], list[str]]


def section(
    title: str,
    scenario: str,
    agg: dict[Key, Entry],
    headers: list[str],
    columns: Columns,
    explain: str,
) -> None:
    """One scenario's tables (one per sizes label), then failures, unsupported and notes."""
    labels = list(dict.fromkeys(k[1] for k in agg if k[0] == scenario))
    if not labels:
        return
    shown: set[str] = set()  # notes already printed under an earlier table
    for label in labels:
        print(f"\n== {title}: {label} ==")
        rows: list[list[str]] = []
        trailer: list[str] = []
        for (sc, lab, system, backend), entry in agg.items():
            if sc != scenario or lab != label:
                continue
            if entry.results:
                rows.append([system, backend, *columns(system, backend, entry)])
                if entry.errors:
                    trailer.append(
                        f"  {system}/{backend}: {len(entry.errors)} repetition(s) "
                        f"FAILED: {entry.errors[0].splitlines()[0]}"
                    )
            elif entry.errors:
                rows.append([system, backend, "FAILED"] + [""] * (len(headers) - 3))
                detail = entry.errors[0].replace("\n", "\n    | ")
                trailer.append(f"  {system}/{backend} FAILED:\n    | {detail}")
            else:
                rows.append([system, backend, "unsupported"] + [""] * (len(headers) - 3))
                trailer.append(f"  {system}/{backend} unsupported: {entry.unsupported}")
            if entry.results:
                note = f"{system}/{backend} [{entry.text('version')}]: {entry.text('notes')}"
                trailer.append(
                    textwrap.fill(note, 100, initial_indent="  ", subsequent_indent="      ")
                )
        table(headers, rows)
        if explain:
            print(explain)
        for line in trailer:
            if line not in shown or "FAILED" in line:
                print(line)
                shown.add(line)


def report(runs: list[Run], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Print every scenario's tables and the TARGETS block; return the targets' verdicts."""
    agg = aggregate(runs)
    sizes = args.sizes

    def find(scenario: str, label: str, system: str, backend: str) -> Entry | None:
        entry = agg.get((scenario, label, system, backend))
        return entry if entry and entry.results else None

    def value(scenario: str, label: str, system: str, backend: str, name: str) -> float | None:
        entry = find(scenario, label, system, backend)
        return entry.get(name) if entry else None

    steps_label = f"{sizes.steps} steps"
    raw1 = f"{sizes.workflows}x10 @1"

    def steps_cols(system: str, backend: str, e: Entry) -> list[str]:
        wall, cpu = e.get("wall_us"), e.get("cpu_us")
        raw = value("steps", steps_label, "raw", backend, "wall_us")
        per_w = value("steps", steps_label, "perdure", backend, "wall_us")
        per_c = value("steps", steps_label, "perdure", backend, "cpu_us")
        return [
            num(wall, 2),
            num(cpu, 2),
            times(ratio(wall, raw)),
            times(ratio(wall, per_w)),
            times(ratio(cpu, per_c)),
            str(len(e.results)),
        ]

    section(
        "per-step overhead",
        "steps",
        agg,
        ["system", "backend", "wall us", "CPU us", "wall/raw", "wall/perdure", "CPU/perdure", "n"],
        steps_cols,
        "  medians of n runs; wall/raw = over the raw durable INSERT (raw) on the same backend",
    )

    def throughput_cols(system: str, backend: str, e: Entry) -> list[str]:
        rate = value("throughput", raw1, "raw", backend, "steps_per_s")
        mine = e.get("workflows_per_s")
        label = next(k[1] for k, v in agg.items() if v is e)
        perdure = value("throughput", label, "perdure", backend, "workflows_per_s")
        return [
            num(mine),
            num(e.get("steps_per_s"), 0),
            num(e.get("wall_s"), 2),
            num(e.get("cpu_s"), 2),
            f"{num(e.get('ok'), 0)}/{num(e.get('errors'), 0)}",
            times(ratio(e.get("steps_per_s"), rate)),
            times(ratio(perdure, mine)),
        ]

    section(
        "throughput",
        "throughput",
        agg,
        [
            "system",
            "backend",
            "wf/s",
            "steps/s",
            "wall s",
            "CPU s",
            "ok/err",
            "vs 1-commit",
            "perdure/this",
        ],
        throughput_cols,
        f"  vs 1-commit = steps/s over raw's one-commit-per-step rate ({raw1}, same backend); "
        "perdure/this = perdure's workflows/s over this system's",
    )

    rec_label = f"{sizes.recovery} workflows"

    def recovery_cols(system: str, backend: str, e: Entry) -> list[str]:
        perdure = value("recovery", rec_label, "perdure", backend, "recovery_s")
        return [
            num(e.get("recovery_s"), 2),
            num(e.get("startup_s"), 2),
            num(e.get("completed"), 0),
            num(e.get("step1_reexecuted"), 0),
            times(ratio(e.get("recovery_s"), perdure)),
        ]

    section(
        "recovery after SIGKILL",
        "recovery",
        agg,
        [
            "system",
            "backend",
            "recovery s",
            "startup s",
            "completed",
            "step1 re-run",
            "this/perdure",
        ],
        recovery_cols,
        "  recovery s: from spawning the recovering process to all complete (start-up included)",
    )

    def waiting_cols(system: str, backend: str, e: Entry) -> list[str]:
        return [
            num(e.get("workflows"), 0),
            num(e.get("start_s"), 2),
            num(e.get("rss_mb")),
            num(e.get("kb_per_workflow"), 2),
            num(e.get("threads"), 0),
            num(e.get("wake_p50_ms"), 2),
            num(e.get("wake_p99_ms"), 2),
        ]

    section(
        "waiting",
        "waiting",
        agg,
        [
            "system",
            "backend",
            "W",
            "start s",
            "RSS MB",
            "KB/wf",
            "threads",
            "wake p50 ms",
            "wake p99 ms",
        ],
        waiting_cols,
        "",
    )

    agent_label = f"{sizes.turns} turns @{sizes.latency_ms:g} ms"

    def agent_cols(system: str, backend: str, e: Entry) -> list[str]:
        loop = value("agent", agent_label, "raw", backend, "wall_s")
        over = ratio(e.get("wall_s"), loop)
        return [
            num(e.get("turns"), 0),
            num(e.get("wall_s"), 3),
            num(e.get("cpu_s"), 3),
            "-" if over is None else f"{(over - 1) * 100:+.1f}%",
            num(e.get("journal_bytes"), 0),
        ]

    section(
        "agent loop",
        "agent",
        agg,
        ["system", "backend", "turns", "wall s", "CPU s", "vs loop", "journal bytes"],
        agent_cols,
        "  vs loop = wall time over the openai SDK loop without durability (raw), same backend",
    )
    return targets(args, value, steps_label, raw1, rec_label, agent_label)


def targets(
    args: argparse.Namespace,
    value: Callable[[str, str, str, str, str], float | None],
    steps_label: str,
    raw1: str,
    rec_label: str,
    agent_label: str,
) -> list[dict[str, Any]]:
    """The TARGETS block: PASS/MISS per target and backend; n/a where a figure is missing."""
    found: list[dict[str, Any]] = []
    w = args.sizes.workflows

    def check(what: str, backend: str, got: float | None, limit: float, at_most: bool) -> None:
        if got is None:
            verdict, shown = "n/a ", "missing figures"
        else:
            good = got <= limit if at_most else got >= limit
            verdict = "PASS" if good else "MISS"
            shown = f"{got:.2f} {'<=' if at_most else '>='} {limit:g}"
        found.append(
            {
                "target": what,
                "backend": backend,
                "value": got,
                "limit": limit,
                "verdict": verdict.strip(),
            }
        )
        print(f"  {verdict}  {what:<58} {backend:<8} {shown}")

    print("\n== TARGETS (issue 10) ==")
    if args.quick:
        print("  (--quick sizes: indicative only; the targets are stated for the default sizes)")
    only = set(args.only)
    for b in args.backends if "steps" in only else []:
        perdure = value("steps", steps_label, "perdure", b, "wall_us")
        perdure_cpu = value("steps", steps_label, "perdure", b, "cpu_us")
        raw = value("steps", steps_label, "raw", b, "wall_us")
        check("per-step wall / raw durable insert", b, ratio(perdure, raw), 1.3, True)
        dbos = value("steps", steps_label, "dbos", b, "wall_us")
        check("per-step wall: DBOS / perdure", b, ratio(dbos, perdure), 5, False)
        lg_cpu = value("steps", steps_label, "langgraph", b, "cpu_us")
        check("per-step CPU: LangGraph / perdure", b, ratio(lg_cpu, perdure_cpu), 6, False)
        dbos_cpu = value("steps", steps_label, "dbos", b, "cpu_us")
        check("per-step CPU: DBOS / perdure", b, ratio(dbos_cpu, perdure_cpu), 12, False)
    if "sqlite" in args.backends and "throughput" in only:
        at50 = value("throughput", f"{w}x10 @50", "perdure", "sqlite", "steps_per_s")
        rate = value("throughput", raw1, "raw", "sqlite", "steps_per_s")
        check(
            f"{w}x10 @50 steps/s / raw 1-commit-per-step rate",
            "sqlite",
            ratio(at50, rate),
            3,
            False,
        )
    for b in args.backends if "recovery" in only else []:
        mine = value("recovery", rec_label, "perdure", b, "recovery_s")
        check(
            f"recovery of {args.sizes.recovery}: DBOS / perdure time",
            b,
            ratio(value("recovery", rec_label, "dbos", b, "recovery_s"), mine),
            5,
            False,
        )
    for b in args.backends if "throughput" in only else []:
        label = f"{w}x3 @50"
        mine = value("throughput", label, "perdure", b, "workflows_per_s")
        for peer, limit in [("dbos", 5), ("langgraph", 3)]:
            theirs = value("throughput", label, peer, b, "workflows_per_s")
            check(f"{label} workflows/s: perdure / {peer}", b, ratio(mine, theirs), limit, False)
    for b in args.backends if "agent" in only else []:
        mine = value("agent", agent_label, "perdure", b, "wall_s")
        loop = value("agent", agent_label, "raw", b, "wall_s")
        check(
            f"agent {agent_label}: perdure wall / no-durability loop",
            b,
            ratio(mine, loop),
            1.05,
            True,
        )
    counts = {v: sum(1 for t in found if t["verdict"] == v) for v in ("PASS", "MISS", "n/a")}
    print(
        f"  -- {counts['PASS']} PASS, {counts['MISS']} MISS, {counts['n/a']} n/a "
        "(missing a target is a finding: exit status 0)"
    )
    return found
