"""perdure's PostgreSQL backend against DBOS Transact, side by side: per-step overhead and
throughput with 1, 2 and 4 worker processes.

Run from the repository root (it re-runs itself under ``.venv/bin/python`` if needed)::

    python bench/pg_workers.py [--steps 1000] [--workflows 400] [--workers 1,2,4] [--repeat 3]
    python bench/pg_workers.py --quick          # small sizes: a smoke check (about 30 s)
    python bench/pg_workers.py --perdure-ref HEAD   # perdure as committed, not the work tree

Needs a PostgreSQL server (default ``postgresql://postgres@127.0.0.1:5432``, ``--server``)
whose role may create and drop the databases ``perdure_bench`` and ``dbos_bench``: both are
dropped and created again before every measurement. DBOS (PyPI package ``dbos``) is installed
with pip, on first use, into a virtualenv of its own (``bench/.peers/.venv``, ``--peer-venv``;
git and ruff ignore it as a ``.venv`` folder); it is never installed into the project's venv.

Method
------

Every measurement runs in child processes: ``bench/_perdure_child.py`` under the project's
interpreter for perdure and for the raw floor, ``bench/_dbos_child.py`` under the peer
virtualenv's interpreter for DBOS. Both define the same workload at module level: a workflow
``chain(n)`` of ``n`` sequential steps, each step ``add_one(x) -> x + 1``. Each engine runs with
its defaults (perdure: ``perdure.Engine(url)``, a pool of up to 8 connections, 64 workflow
threads; DBOS: ``DBOS(config={...})`` + ``DBOS.launch()``, a pool of up to 20 connections), on
the same server, each in a database of its own created just before.

1. Per-step overhead. One workflow of ``--steps`` steps (1,000), started and awaited the same
   way on both sides (perdure: ``engine.start(chain, n).result()``; DBOS:
   ``DBOS.start_workflow(chain, n).get_result()``; the workflow runs on the engine's own
   threads), after one untimed warm-up run of the same size in the same process. The floor,
   measured in the same run on the same server: one autocommitted psycopg ``INSERT`` per step
   into ``raw_journal (workflow_id, position, output)`` on one connection. Wall time
   (``time.perf_counter``) and CPU time (``time.process_time``: every thread of the client
   process) of the timed run, in the child, divided by the number of steps.
2. Throughput. ``--workflows`` workflows (400) of ``--flow-steps`` steps (10) in total, split
   evenly across 1, 2 and 4 worker processes (``--workers``). Each worker opens its engine
   (the tables were created beforehand by a setup process), warms up with ``--warmup``
   workflows (16), prints ``READY`` and waits for a line on stdin; once every worker is ready,
   the orchestrator starts its clock and writes the line to all of them. Each worker keeps
   ``--inflight`` workflows (16) in flight: that many client threads each start a workflow and
   wait for its result, then the next. The clock stops when the last worker reports.
   Throughput = workflows / that wall time.
3. What each side writes (untimed; ``--no-count`` skips it): the server's transaction and row
   counters for the database (``pg_stat_database``: ``xact_commit``, ``tup_inserted``,
   ``tup_updated``), read once every backend of the database has exited (so its counters are
   flushed), around child runs of 0 workflows, 1 workflow of S steps, 1 of 2S steps and K
   workflows of 0 steps: per step = (2S run - S run) / S, per workflow = (K run - 0 run) / K.
   Read-only transactions count as commits too, and background polling (perdure's heartbeat
   and waker, DBOS's queue and notification threads) lands in the difference in proportion to
   the run's length: the figures are close, not exact.

In scenarios 1 and 2 the orchestrator also reads, over the timed window, the CPU time of the
server processes connected to the benchmark's database (``pg_stat_activity`` pids, read in
``/proc`` when the server runs on this machine; WAL writer and checkpointer not included) and
the whole machine's CPU use (``/proc/stat``): the server's share of the work, and whether the
box was saturated. Other clients of the same server (another database's tests) do not land in
the server figure but do compete for the machine: the report counts the transactions other
databases committed during the run.

Repetitions (``--repeat``, 3) are interleaved: round robin over the variants, rotating their
order each time, so a slow spell of the machine does not land on one side only. Medians are
reported, ratios are median over median. The exit status is 0 whichever side wins: this is a
benchmark, not a test (it is 1 only if the server cannot be reached or DBOS cannot be
installed).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _pg_workers_report import (
    describe,
    report_errors,
    report_steps,
    report_throughput,
    report_writes,
)
from _pg_workers_run import ChildFailed, Server, Side, run_barrier, run_child

if TYPE_CHECKING:
    pass

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PROJECT_PYTHON = REPO / ".venv" / "bin" / "python"
DEFAULT_PEER_VENV = BENCH / ".peers" / ".venv"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"
PERDURE_DB = "perdure_bench"
DBOS_DB = "dbos_bench"


# -- the peer virtualenv, and a pinned perdure -----------------------------------------------


def ensure_peer_venv(venv: Path, requirement: str) -> Path:
    """The peer virtualenv's interpreter; create the venv and pip-install DBOS on first use."""
    python = venv / "bin" / "python"
    if python.exists() and _has_module(python, "dbos"):
        return python
    print(f"creating {venv} and installing {requirement!r} with pip (first use only)...")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ],
        check=True,
    )
    return python


def _has_module(python: Path, module: str) -> bool:
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([str(python), "-c", probe], check=False).returncode == 0


def peer_versions(python: Path) -> dict[str, str]:
    probe = (
        "import json, platform; from importlib.metadata import version\n"
        "print(json.dumps({'python': platform.python_version(), 'dbos': version('dbos'), "
        "'psycopg': version('psycopg'), 'sqlalchemy': version('sqlalchemy')}))"
    )
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True)
    found: dict[str, str] = json.loads(out.stdout)
    return found


def extract_perdure(ref: str, into: Path) -> dict[str, str]:
    """``src/perdure`` as of git ``ref``, unpacked under ``into`` (read-only for the repository:
    ``git archive``); returns the environment that makes the children import it."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref, "src/perdure"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return {**os.environ, "PYTHONPATH": str(into / "src")}


def git(*args: str) -> str:
    if shutil.which("git") is None:
        return ""
    found = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    )
    return found.stdout.strip()


# -- scenario 1: per-step overhead -----------------------------------------------------------


@dataclass
class StepVariant:
    side: Side
    wall: list[float] = field(default_factory=list)  # seconds per step, one per repetition
    cpu: list[float] = field(default_factory=list)  # client CPU seconds per step
    server: list[float] = field(default_factory=list)  # postgres CPU seconds per step
    errors: list[str] = field(default_factory=list)


def measure_steps(variant: StepVariant, server: Server, steps: int) -> bool:
    side = variant.side
    server.recreate(side.db)
    try:
        window = run_barrier(
            side, server, [side.command("steps", server.url(side.db), steps=steps)]
        )
    except ChildFailed as exc:
        variant.errors.append(str(exc))
        return False
    found = window.results[0]
    if not found.get("ok"):
        variant.errors.append("wrong result")
        return False
    variant.wall.append(found["wall"] / steps)
    variant.cpu.append(found["cpu"] / steps)
    if window.server_cpu is not None:
        variant.server.append(window.server_cpu / steps)
    return True


# -- scenario 2: throughput with N worker processes ------------------------------------------


@dataclass
class Throughput:
    side: Side
    workers: int
    rates: list[float] = field(default_factory=list)  # workflows per second, per repetition
    cpu: list[float] = field(default_factory=list)  # client CPU seconds per workflow
    server: list[float] = field(default_factory=list)  # postgres CPU seconds per workflow
    busy: list[float] = field(default_factory=list)  # machine CPU use in the window, 0..1
    errors: list[str] = field(default_factory=list)


def measure_throughput(
    point: Throughput, server: Server, total: int, steps: int, inflight: int, warmup: int
) -> bool:
    side = point.side
    server.recreate(side.db)
    shares = [total // point.workers + (i < total % point.workers) for i in range(point.workers)]
    cmds = [
        side.command(
            "throughput",
            server.url(side.db),
            name=f"w{i}",
            workflows=share,
            steps=steps,
            inflight=inflight,
            warmup=warmup,
        )
        for i, share in enumerate(shares)
    ]
    try:
        run_child(side, server, "setup", name="setup")  # tables created once, before the workers
        window = run_barrier(side, server, cmds)
    except ChildFailed as exc:
        point.errors.append(str(exc))
        return False
    ok = sum(r["ok"] for r in window.results)
    failed = sum(r["errors"] for r in window.results)
    if failed:
        first = next(r["error"] for r in window.results if r["errors"])
        point.errors.append(f"{failed} of {total} workflows failed: {first}")
    point.rates.append(ok / window.wall)
    point.cpu.append(sum(r["cpu"] for r in window.results) / max(ok, 1))
    if window.server_cpu is not None:
        point.server.append(window.server_cpu / max(ok, 1))
    point.busy.append(window.busy)
    return True


# -- scenario 3: what each side writes -------------------------------------------------------


@dataclass
class Writes:
    side: Side
    per_step: dict[str, float] = field(default_factory=dict)
    per_workflow: dict[str, float] = field(default_factory=dict)
    error: str = ""


def measure_writes(side: Side, server: Server, steps: int, workflows: int) -> Writes:
    found = Writes(side)
    server.recreate(side.db)
    try:
        run_child(side, server, "setup", name="setup")
        marks = [server.counters(side.db)]
        for n_workflows, n_steps in ((0, 0), (1, steps), (1, 2 * steps), (workflows, 0)):
            run_child(side, server, "count", name="count", workflows=n_workflows, steps=n_steps)
            marks.append(server.counters(side.db))
    except ChildFailed as exc:
        found.error = str(exc)
        return found
    delta = [
        {k: after[k] - before[k] for k in after} for before, after in itertools.pairwise(marks)
    ]
    empty, one, two, many = delta
    found.per_step = {k: (two[k] - one[k]) / steps for k in empty}
    found.per_workflow = {k: (many[k] - empty[k]) / workflows for k in empty}
    return found


# -- main ------------------------------------------------------------------------------------


def worker_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,2,4, not {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive counts, not {text!r}")
    return counts


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--steps", type=positive, help="steps of the per-step workflow [1000]")
    parser.add_argument("--workflows", type=positive, help="throughput workflows in total [400]")
    parser.add_argument("--workers", type=worker_counts, help="worker processes [1,2,4]")
    parser.add_argument("--repeat", type=positive, help="timed repetitions per variant [3]")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes for a smoke check: 100, 64, 1,2, 1"
    )
    parser.add_argument(
        "--flow-steps", type=positive, default=10, help="steps per throughput workflow [10]"
    )
    parser.add_argument(
        "--inflight", type=positive, default=16, help="workflows in flight per worker process [16]"
    )
    parser.add_argument("--warmup", type=int, default=16, help="untimed workflows per worker [16]")
    parser.add_argument("--no-count", action="store_true", help="skip the write counting")
    parser.add_argument(
        "--server", default=DEFAULT_SERVER, help=f"PostgreSQL, without database [{DEFAULT_SERVER}]"
    )
    parser.add_argument(
        "--peer-venv", type=Path, default=DEFAULT_PEER_VENV, help="DBOS's venv [bench/.peers/.venv]"
    )
    parser.add_argument("--dbos-requirement", default="dbos", help="what pip installs there [dbos]")
    parser.add_argument(
        "--perdure-ref",
        help="measure src/perdure as of this git ref (git archive into a temporary folder) "
        "instead of the work tree",
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    args = parser.parse_args(argv)
    quick = {"steps": 100, "workflows": 64, "workers": [1, 2], "repeat": 1}
    full = {"steps": 1000, "workflows": 400, "workers": [1, 2, 4], "repeat": 3}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def interleaved(items: list[Any], rep: int) -> list[Any]:
    shift = rep % len(items)
    return items[shift:] + items[:shift]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        server = Server(args.server)
    except Exception as exc:
        print(f"cannot reach PostgreSQL at {args.server}: {exc}", file=sys.stderr)
        return 1
    try:
        peer_python = ensure_peer_venv(args.peer_venv, args.dbos_requirement)
        peer = peer_versions(peer_python)
    except (subprocess.CalledProcessError, OSError, ValueError) as exc:
        print(f"cannot set up DBOS in {args.peer_venv}: {exc}", file=sys.stderr)
        server.close()
        return 1
    with ExitStack() as stack:
        stack.callback(server.close)
        env: dict[str, str] | None = None
        if args.perdure_ref:
            snapshot = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="perdure-")))
            env = extract_perdure(args.perdure_ref, snapshot)
            source = f"git {args.perdure_ref} = {git('rev-parse', '--short', args.perdure_ref)}"
        else:
            dirty = git("status", "--porcelain", "--untracked-files=no", "src")
            source = f"work tree at {git('rev-parse', '--short', 'HEAD')}"
            source += " (src/ has uncommitted changes)" if dirty else ""
        ours = PROJECT_PYTHON if PROJECT_PYTHON.exists() else Path(sys.executable)
        child = BENCH / "_perdure_child.py"
        raw = Side(
            "raw", "raw psycopg INSERT, autocommit (the floor)", ours, child, PERDURE_DB, env
        )
        perdure_side = Side(
            "perdure", "perdure Engine, sync workflow", ours, child, PERDURE_DB, env
        )
        dbos_side = Side(
            "dbos",
            f"DBOS Transact {peer.get('dbos')}, sync workflow",
            peer_python,
            BENCH / "_dbos_child.py",
            DBOS_DB,
        )
        if not args.keep:
            for db in (PERDURE_DB, DBOS_DB):
                stack.callback(server.drop, db)

        describe(server, peer, source)
        started = time.monotonic()
        elsewhere0 = server.commits_elsewhere((PERDURE_DB, DBOS_DB))
        boot = server.started_at()

        steps = [StepVariant(side) for side in (raw, perdure_side, dbos_side)]
        print(f"\n[1/3] per-step overhead: {len(steps)} variants x {args.repeat} ", end="")
        for rep in range(args.repeat):
            for variant in interleaved(steps, rep):
                if not measure_steps(variant, server, args.steps):  # listed; one more try
                    measure_steps(variant, server, args.steps)
            print(".", end="", flush=True)

        points = [
            Throughput(side, workers)
            for workers in args.workers
            for side in (perdure_side, dbos_side)
        ]
        print(f"\n[2/3] throughput: {len(points)} points x {args.repeat} ", end="", flush=True)
        for rep in range(args.repeat):
            for point in interleaved(points, rep):
                for _ in range(2):  # a failed run is listed and tried once more
                    if measure_throughput(
                        point, server, args.workflows, args.flow_steps, args.inflight, args.warmup
                    ):
                        break
                print(".", end="", flush=True)

        writes: list[Writes] = []
        count_steps, count_workflows = (50, 20) if args.quick else (200, 50)
        if not args.no_count:
            print("\n[3/3] counting writes ", end="", flush=True)
            for side in (perdure_side, dbos_side):
                writes.append(measure_writes(side, server, count_steps, count_workflows))
                print(".", end="", flush=True)
        elsewhere = server.commits_elsewhere((PERDURE_DB, DBOS_DB)) - elsewhere0
        print(f"\n(done in {time.monotonic() - started:.0f} s)")

        report_steps(steps, args.steps, args.repeat)
        report_throughput(points, args.workflows, args.flow_steps, args.inflight, args.repeat)
        if writes:
            report_writes(writes, count_steps, count_workflows)
        report_errors(
            [(v.side.label, v.errors) for v in steps]
            + [(f"{p.side.key} x{p.workers}", p.errors) for p in points],
            elsewhere,
            restarted=server.started_at() != boot,
        )
    return 0


def _reexec_in_project_venv() -> None:
    """``python bench/pg_workers.py`` from outside the venv: run again under the venv's python."""
    needed = ("psycopg", "perdure")
    if all(importlib.util.find_spec(name) for name in needed) or not PROJECT_PYTHON.exists():
        return
    if Path(sys.prefix).resolve() == PROJECT_PYTHON.parent.parent.resolve():
        return  # already there: the import errors that follow are the real message
    os.execv(str(PROJECT_PYTHON), [str(PROJECT_PYTHON), __file__, *sys.argv[1:]])


if __name__ == "__main__":
    _reexec_in_project_venv()
    sys.exit(main())
