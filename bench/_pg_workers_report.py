"""The tables ``bench/pg_workers.py`` prints: the machine and software, per-step overhead,
throughput by worker count, what each side writes, and the errors met."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
from importlib.metadata import version
from typing import TYPE_CHECKING

from _common import cpu_model, memory_total

if TYPE_CHECKING:
    from _pg_workers_run import Server
    from pg_workers import StepVariant, Throughput, Writes


# -- reporting -------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def med(values: list[float], scale: float = 1e3, digits: int = 3) -> str:
    return f"{statistics.median(values) * scale:.{digits}f}" if values else "n/a"


def describe(server: Server, peer: dict[str, str], perdure_source: str) -> None:
    import psycopg

    settings = server.settings()
    print("perdure vs DBOS Transact on PostgreSQL")
    print(f"  date        {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"  machine     {cpu_model()}, {os.cpu_count()} logical cores, {memory_total()} memory")
    print(f"  postgresql  {server.one('SHOW server_version')} at {server.base}")
    print("              " + " ".join(f"{k}={v}" for k, v in sorted(settings.items())))
    print(
        f"  perdure     {version('perdure')}, {perdure_source}; psycopg {psycopg.__version__}, "
        f"python {platform.python_version()}"
    )
    print(
        f"  dbos        {peer.get('dbos')}, psycopg {peer.get('psycopg')}, SQLAlchemy "
        f"{peer.get('sqlalchemy')}, python {peer.get('python')} (peer venv)"
    )


def report_steps(found: list[StepVariant], steps: int, repeat: int) -> None:
    median = statistics.median
    print(
        f"\n1. per-step overhead: one workflow of {steps} sequential steps, median of {repeat}, "
        "ms per step"
    )
    header = (
        f"{'variant':<44} {'wall':>6} {'min-max':>12} {'CPU':>6} {'server':>6} "
        f"{'wall/raw':>8} {'CPU/raw':>7}"
    )
    print(header)
    print("-" * len(header))
    raw = next((v for v in found if v.side.key == "raw" and v.wall), None)
    for v in found:
        if not v.wall:
            print(f"{v.side.label:<44} {'failed':>6}")
            continue
        ratios = ""
        if raw is not None:
            ratios = (
                f"{median(v.wall) / median(raw.wall):>8.2f} {median(v.cpu) / median(raw.cpu):>7.2f}"
            )
        spread = f"{ms(min(v.wall))}-{ms(max(v.wall))}"
        print(
            f"{v.side.label:<44} {ms(median(v.wall)):>6} {spread:>12} {ms(median(v.cpu)):>6} "
            f"{med(v.server):>6} {ratios}"
        )
    ours = next((v for v in found if v.side.key == "perdure" and v.wall), None)
    peer = next((v for v in found if v.side.key == "dbos" and v.wall), None)
    if ours is not None and peer is not None:
        wall = median(ours.wall) / median(peer.wall)
        cpu = median(ours.cpu) / median(peer.cpu)
        print(
            f"perdure/DBOS: wall {wall:.2f}, CPU {cpu:.2f} "
            f"(DBOS takes {1 / wall:.1f}x perdure's wall time and {1 / cpu:.1f}x its CPU per step)"
        )
    print("(CPU: the client process, all threads; server: its database's backends, same window)")


def report_throughput(
    points: list[Throughput], total: int, steps: int, inflight: int, repeat: int
) -> None:
    median = statistics.median
    print(
        f"\n2. throughput: {total} workflows of {steps} steps split across the workers, "
        f"{inflight} in flight per worker, median of {repeat}"
    )
    header = (
        f"{'workers':>7}  {'engine':<8} {'wf/s':>7} {'min-max':>11} {'steps/s':>8} "
        f"{'CPU ms/wf':>9} {'server ms/wf':>12} {'box CPU':>7} {'vs 1st':>6}"
    )
    print(header)
    print("-" * len(header))
    base: dict[str, float] = {}
    for p in points:
        if not p.rates:
            print(f"{p.workers:>7}  {p.side.key:<8} {'failed':>7}")
            continue
        rate = median(p.rates)
        base.setdefault(p.side.key, rate)  # the first worker count listed is the base
        spread = f"{min(p.rates):.0f}-{max(p.rates):.0f}"
        print(
            f"{p.workers:>7}  {p.side.key:<8} {rate:>7.1f} {spread:>11} {rate * steps:>8.0f} "
            f"{med(p.cpu, digits=2):>9} {med(p.server, digits=2):>12} {median(p.busy):>7.0%} "
            f"{rate / base[p.side.key]:>6.2f}"
        )
    print("perdure/DBOS workflows/s:", end="")
    for workers in sorted({p.workers for p in points}):
        pair = {p.side.key: p for p in points if p.workers == workers and p.rates}
        if "perdure" in pair and "dbos" in pair:
            ratio = median(pair["perdure"].rates) / median(pair["dbos"].rates)
            print(f"  {workers} worker(s) {ratio:.2f}", end="")
    print(
        "\n(CPU ms/wf: the worker processes; server ms/wf: the database's backends; box CPU: the "
        "whole machine's\nCPU use in the timed window; vs 1st: workflows/s against the first "
        "worker count)"
    )


def report_writes(found: list[Writes], steps: int, workflows: int) -> None:
    print(
        f"\n3. what each side writes, from pg_stat_database (per step: 2x{steps}-step run minus "
        f"{steps}-step run;\n   per workflow: {workflows} workflows of 0 steps, start to result)"
    )
    header = (
        f"{'engine':<8} {'commits/step':>12} {'ins/step':>9} {'upd/step':>9}   "
        f"{'commits/wf':>10} {'ins/wf':>7} {'upd/wf':>7}"
    )
    print(header)
    print("-" * len(header))
    print(f"{'raw':<8} {1.0:>12.2f} {1.0:>9.2f} {0.0:>9.2f}   (by construction)")
    for w in found:
        if w.error:
            print(f"{w.side.key:<8} failed: {w.error}")
            continue
        s, f = w.per_step, w.per_workflow
        print(
            f"{w.side.key:<8} {s['commits']:>12.2f} {s['inserted']:>9.2f} {s['updated']:>9.2f}   "
            f"{f['commits']:>10.2f} {f['inserted']:>7.2f} {f['updated']:>7.2f}"
        )
    print(
        "(commits include read-only transactions and background polling during the run: "
        "close, not exact)"
    )


def report_errors(groups: list[tuple[str, list[str]]], elsewhere: int, restarted: bool) -> None:
    print(f"\nother databases on this server committed {elsewhere} transactions during the run")
    if restarted:
        print("the PostgreSQL server was restarted during the run (not by this script)")
    errors = [(label, e) for label, errs in groups for e in errs]
    if not errors:
        print("errors: none")
        return
    print(f"errors ({len(errors)}; a failed run was tried once more, and only a good run counts):")
    for label, error in errors:
        print(f"  {label}: {error}")
