"""perdure side by side with DBOS Transact, LangGraph and the raw floors (``make bench``).

Run from the repository root (it re-runs itself under ``.venv/bin/python`` if needed)::

    python bench/compare.py                      # every scenario, both backends (long)
    python bench/compare.py --quick              # small sizes: a smoke run of a minute or two
    python bench/compare.py --only steps,agent --systems perdure,raw --backends sqlite
    python bench/compare.py --json results.json  # also every raw result and the machine

Scenarios (sizes by default; ``--quick`` shrinks them): ``steps`` (one workflow of 1,000
trivial steps: per-step wall and CPU, 3 interleaved repetitions, medians), ``throughput``
(1,000 workflows of 10 steps at 1 and 50 in flight, and of 3 steps at 50), ``recovery`` (1,000
workflows SIGKILLed mid-way, then the time until a new process has finished them all),
``waiting`` (10,000 workflows waiting for a message: memory, threads, wake-up latency of 100)
and ``agent`` (a 50-turn tool-calling conversation against a local fake LLM answering in 50 ms:
``bench/_fake_llm.py``; 3 interleaved repetitions, medians, like ``steps``).

Every measurement is a fresh child process, ``bench/_sys_<system>.py <scenario> --backend ...``,
which prints one ``RESULT {json}`` line (contract: ``_common.child_parser`` and the module
docstrings of the ``_sys_*.py`` files). perdure and the floors (``_sys_raw.py``) run under the
project's interpreter; DBOS and LangGraph under ``bench/.peers/.venv``, created or updated here
from ``bench/peers-requirements.txt`` (pinned) when missing or when that file changed (a stamp
in the venv holds its hash). SQLite files go to a fresh temporary folder beside the repository
(``--dir``; not a tmpfs), deleted afterwards; on PostgreSQL (``--url``) each system drops and
recreates its own database (``cmp_<system>``); they are dropped at the end.

Then the TARGETS block (issue 10): PASS or MISS for each. Missing a target is a finding: the exit
status is 0 anyway; it is 1 only if a child failed, or PostgreSQL or pip could not be reached
when required (PostgreSQL not reachable with the default ``--backends``: SQLite only, loudly).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PROJECT_PYTHON = REPO / ".venv" / "bin" / "python"
if __name__ == "__main__" and PROJECT_PYTHON.exists() and Path(sys.prefix) != REPO / ".venv":
    os.execv(str(PROJECT_PYTHON), [str(PROJECT_PYTHON), *sys.argv])

from _common import cpu_model, filesystem, memory_total  # noqa: E402 (after the re-exec)
from _compare_report import report  # noqa: E402

PEER_VENV = BENCH / ".peers" / ".venv"
PEER_PYTHON = PEER_VENV / "bin" / "python"
REQUIREMENTS = BENCH / "peers-requirements.txt"
STAMP = PEER_VENV / ".requirements-sha256"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432"
SCENARIOS = ["steps", "throughput", "recovery", "waiting", "agent"]
#: scenarios whose figure is a small difference over a floor: medians of --repeat runs (one
#: 50-turn conversation moved by ±5 % from run to run, as much as the target's margin)
REPEATED = ("steps", "agent")
SYSTEMS = ["perdure", "dbos", "langgraph", "raw"]
PEERS = {"dbos", "langgraph"}
DATABASES = ["cmp_perdure", "cmp_dbos", "cmp_dbos_sys", "cmp_langgraph", "cmp_raw"]
TIMEOUTS = {"steps": 300, "throughput": 1200, "recovery": 1200, "waiting": 1200, "agent": 600}
PACKAGES = [
    "perdure",
    "dbos",
    "langgraph",
    "langgraph-checkpoint-sqlite",
    "langgraph-checkpoint-postgres",
    "psycopg",
    "openai",
    "SQLAlchemy",
]
START_PG = (
    "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
    "(Debian; or `service postgresql start`), or point --url at a server whose role may "
    "create and drop databases"
)


@dataclass
class Sizes:
    """The sizes of every scenario: the spec's by default, ``--quick`` for a smoke run."""

    steps: int = 1000
    workflows: int = 1000
    recovery: int = 1000
    waiting: int = 10000
    sample: int = 100
    turns: int = 50
    latency_ms: float = 50.0


QUICK = Sizes(
    steps=200, workflows=100, recovery=100, waiting=500, sample=20, turns=10, latency_ms=10.0
)


@dataclass(frozen=True)
class Case:
    """One thing to measure: a scenario's sizes, for one system on one backend."""

    scenario: str
    label: str  # the sizes, as shown in the tables ("1000x10 @50")
    system: str  # "perdure", "dbos", "langgraph", "raw", "raw-call"
    backend: str
    options: tuple[str, ...]  # the child's size options

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.scenario, self.label, self.system, self.backend)


@dataclass
class Run:
    """One child process's outcome."""

    case: Case
    rep: int
    result: dict[str, Any] | None = None
    error: str = ""
    seconds: float = 0.0
    command: list[str] = field(default_factory=list)


# -- the peer virtualenv and PostgreSQL ------------------------------------------------------


def requirements_hash() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ensure_peer_venv() -> Path:
    """``bench/.peers/.venv``'s interpreter, created and pip-installed from
    ``peers-requirements.txt`` when missing or when that file changed since the last install."""
    wanted = requirements_hash()
    if PEER_PYTHON.exists() and STAMP.exists() and STAMP.read_text().strip() == wanted:
        return PEER_PYTHON
    if not PEER_PYTHON.exists():
        print(f"creating {PEER_VENV} (the peers' own virtualenv)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    print(f"pip install -r {REQUIREMENTS.relative_to(REPO)} into {PEER_VENV}...", flush=True)
    pip = [str(PEER_PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    STAMP.write_text(wanted + "\n")
    return PEER_PYTHON


def pg_server_version(url: str) -> str | None:
    """The server's version when PostgreSQL answers at ``url`` (as the admin database)."""
    from _common import database_url

    try:
        import psycopg
    except ImportError:
        return None
    try:
        with psycopg.connect(database_url(url, "postgres"), connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error:
        return None
    return str(row[0]) if row else "?"


def drop_databases(url: str) -> None:
    import psycopg

    from _common import database_url

    try:
        with psycopg.connect(database_url(url, "postgres"), autocommit=True) as admin:
            for name in DATABASES:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error as exc:
        print(f"(could not drop the cmp_* databases: {exc})")


# -- the machine -----------------------------------------------------------------------------


def probe_packages(python: Path | str) -> dict[str, str]:
    code = (
        "import json, platform, sqlite3\nfrom importlib.metadata import version\nfound = {}\n"
        f"for name in {PACKAGES!r}:\n"
        "    try:\n        found[name] = version(name)\n    except Exception:\n        pass\n"
        "found['python'] = platform.python_version(); found['sqlite'] = sqlite3.sqlite_version\n"
        "print(json.dumps(found))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    try:
        found: dict[str, str] = json.loads(out.stdout)
    except ValueError:
        return {"error": out.stderr.strip()[-300:]}
    return found


def git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return done.stdout.strip()

    if shutil.which("git") is None:
        return "?"
    dirty = " (work tree modified)" if git("status", "--porcelain", "--untracked-files=no") else ""
    return (git("rev-parse", "--short=12", "HEAD") or "?") + dirty


def machine(workdir: Path, pg_version: str | None, peer: Path | None) -> dict[str, Any]:
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory": memory_total(),
        "disk": filesystem(workdir),
        "same_filesystem_as_repo": os.stat(workdir).st_dev == os.stat(REPO).st_dev,
        "os": platform.platform(),
        "python": f"{platform.python_version()} ({sys.executable})",
        "sqlite": sqlite3.sqlite_version,
        "postgresql": pg_version or "not reachable",
        "git_commit": git_commit(),
        "project_packages": probe_packages(sys.executable),
        "peer_packages": probe_packages(peer) if peer else {},
    }


def print_machine(info: dict[str, Any]) -> None:
    print("perdure side-by-side benchmark (issue 10)")
    for key in ["date_utc", "cpu", "cores", "memory", "disk", "os", "python", "sqlite"]:
        print(f"  {key:<10} {info[key]}")
    print(
        f"  {'same fs':<10} temp folder on the repository's filesystem: "
        f"{info['same_filesystem_as_repo']}"
    )
    print(f"  {'postgres':<10} {info['postgresql']}")
    print(f"  {'git':<10} {info['git_commit']}")
    for label, key in [("project", "project_packages"), ("peers", "peer_packages")]:
        found = info[key]
        if found:
            print(f"  {label:<10} " + ", ".join(f"{k} {v}" for k, v in sorted(found.items())))


# -- the cases -------------------------------------------------------------------------------


def cases(args: argparse.Namespace, sizes: Sizes) -> dict[str, list[Case]]:
    """Every case of every selected scenario, by scenario, in their run order."""
    found: dict[str, list[Case]] = {}
    chosen = [s for s in args.systems if s in SYSTEMS]

    def add(scenario: str, label: str, systems: list[str], options: list[str]) -> None:
        for backend in args.backends:
            for system in systems:
                found.setdefault(scenario, []).append(
                    Case(scenario, label, system, backend, tuple(options))
                )

    if "steps" in args.only:
        per_step = [s for s in chosen if s != "raw"]
        if "raw" in chosen:
            per_step += ["raw", "raw-call"]
        add("steps", f"{sizes.steps} steps", per_step, ["--steps", str(sizes.steps)])
    if "throughput" in args.only:
        for steps, inflight in [(10, 1), (10, 50), (3, 50)]:
            options = ["--workflows", str(sizes.workflows), "--steps", str(steps)]
            label = f"{sizes.workflows}x{steps} @{inflight}"
            add("throughput", label, chosen, [*options, "--concurrency", str(inflight)])
    peers_only = [s for s in chosen if s != "raw"]  # no floor for recovery and waiting
    if "recovery" in args.only:
        add(
            "recovery",
            f"{sizes.recovery} workflows",
            peers_only,
            ["--workflows", str(sizes.recovery)],
        )
    if "waiting" in args.only:
        options = ["--workflows", str(sizes.waiting), "--sample", str(sizes.sample)]
        add("waiting", f"{sizes.waiting} waiting", peers_only, options)
    if "agent" in args.only:
        options = ["--turns", str(sizes.turns), "--latency-ms", f"{sizes.latency_ms:g}"]
        add("agent", f"{sizes.turns} turns @{sizes.latency_ms:g} ms", chosen, options)
    return found


# -- running a child -------------------------------------------------------------------------


def interpreter(case: Case, peer: Path | None, project_has_openai: bool) -> Path | str:
    if case.system in PEERS or (
        case.scenario == "agent" and case.system == "raw" and not project_has_openai
    ):
        if peer is None:
            raise RuntimeError("the peer virtualenv is needed but was not set up")
        return peer
    return sys.executable


def tail(text: str, lines: int = 12) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept)


def run_child(case: Case, rep: int, python: Path | str, args: argparse.Namespace) -> Run:
    """Run one child in a fresh temporary folder, its own session (so a timeout kills its
    children too); collect its RESULT line."""
    script = BENCH / f"_sys_{'raw' if case.system.startswith('raw') else case.system}.py"
    run = Run(case, rep)
    if not script.exists():
        run.error = f"{script.relative_to(REPO)} does not exist"
        return run
    workdir = Path(tempfile.mkdtemp(prefix="perdure-cmp-", dir=args.dir))
    command = [str(python), str(script), case.scenario, "--backend", case.backend]
    command += ["--dir", str(workdir), "--url", args.url, *case.options]
    if case.system == "raw-call":
        command += ["--kind", "call"]
    elif case.system == "raw" and case.scenario == "steps":
        command += ["--kind", "insert"]
    stop_llm = None
    if case.scenario == "agent":
        from _fake_llm import start

        llm_url, stop_llm = start(args.sizes.latency_ms, args.sizes.turns)
        command += ["--llm-url", llm_url]
    run.command = command
    timeout = args.timeout or TIMEOUTS[case.scenario]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CMP_RECOVERING", None)
    started = time.perf_counter()
    try:
        with (
            open(workdir / "stdout.txt", "w+", encoding="utf-8") as out,
            open(workdir / "stderr.txt", "w+", encoding="utf-8") as err,
        ):
            child = subprocess.Popen(
                command,
                cwd=REPO,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
            try:
                code = child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)  # leftovers of the child's own children
            if code is None:
                child.wait()
            run.seconds = time.perf_counter() - started
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
    finally:
        if stop_llm is not None:
            stop_llm()
        shutil.rmtree(workdir, ignore_errors=True)
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if code is None:
        run.error = f"timed out after {timeout:g} s (--timeout)\n{tail(stderr)}".strip()
    elif code != 0:
        run.error = f"exit status {code}\n{tail(stderr)}".strip()
    elif not lines:
        run.error = f"no RESULT line on stdout\n{tail(stdout + stderr)}".strip()
    else:
        try:
            run.result = json.loads(lines[-1][len("RESULT ") :])
        except ValueError as exc:
            run.error = f"bad RESULT line: {exc}: {lines[-1][:200]}"
    return run


def run_all(plan: dict[str, list[Case]], args: argparse.Namespace, peer: Path | None) -> list[Run]:
    """Run the plan: ``steps`` and ``agent`` (small differences, measured against a floor)
    repeated ``--repeat`` times, rotating the order of the systems each time (interleaved);
    the other scenarios ``--repeat-others`` times."""
    has_openai = importlib.util.find_spec("openai") is not None
    order: list[tuple[Case, int]] = []
    for scenario, found in plan.items():
        repeat = args.repeat if scenario in REPEATED else args.repeat_others
        for rep in range(repeat):
            if scenario == "steps":
                shift = rep % max(1, len(found))
                order += [(case, rep) for case in found[shift:] + found[:shift]]
            else:
                order += [(case, rep) for case in found]
    runs: list[Run] = []
    for number, (case, rep) in enumerate(order, 1):
        where = f"[{number}/{len(order)}] {case.scenario} {case.label}: {case.system} "
        print(f"{where}on {case.backend} (rep {rep + 1}) ... ", end="", flush=True)
        run = run_child(case, rep, interpreter(case, peer, has_openai), args)
        state = "FAILED" if run.error else ("unsupported" if _unsupported(run) else "ok")
        print(f"{state} ({run.seconds:.1f} s)", flush=True)
        if run.error:
            print("    | " + run.error.replace("\n", "\n    | "), flush=True)
        runs.append(run)
    return runs


def _unsupported(run: Run) -> bool:
    return run.result is not None and "unsupported" in run.result


# -- main ------------------------------------------------------------------------------------


def names(choices: list[str]) -> Any:
    def parse(text: str) -> list[str]:
        found = [part.strip() for part in text.split(",") if part.strip()]
        wrong = [name for name in found if name not in choices]
        if wrong or not found:
            raise argparse.ArgumentTypeError(f"choose among {','.join(choices)}, not {text!r}")
        return found

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--only", type=names(SCENARIOS), default=SCENARIOS, help="scenarios")
    parser.add_argument("--systems", type=names(SYSTEMS), default=SYSTEMS)
    parser.add_argument(
        "--backends",
        type=names(["sqlite", "postgres"]),
        default=None,
        help="default: sqlite,postgres (sqlite only if PostgreSQL is down)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--repeat",
        type=int,
        help="repetitions of steps and agent, interleaved [3; 1 with --quick]",
    )
    parser.add_argument("--repeat-others", type=int, default=1, help="of the others [1]")
    parser.add_argument("--steps", type=int, help="steps of the per-step workflow [1000]")
    parser.add_argument("--workflows", type=int, help="throughput workflows [1000]")
    parser.add_argument("--recovery-workflows", type=int, help="[1000]")
    parser.add_argument("--waiting-workflows", type=int, help="[10000]")
    parser.add_argument("--sample", type=int, help="waiting workflows woken and timed [100]")
    parser.add_argument("--turns", type=int, help="agent conversation turns [50]")
    parser.add_argument("--latency-ms", type=float, help="the fake LLM's latency [50]")
    parser.add_argument("--timeout", type=float, help="seconds per child (default by scenario)")
    parser.add_argument("--json", type=Path, help="write every result and the machine here")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"PostgreSQL server [{DEFAULT_URL}]")
    parser.add_argument(
        "--dir",
        type=Path,
        default=REPO.parent,
        help="where the temporary folders go [beside the repository]",
    )
    parser.add_argument("--keep", action="store_true", help="keep the cmp_* databases")
    args = parser.parse_args(argv)
    sizes = Sizes(**vars(QUICK)) if args.quick else Sizes()
    for option, attr in [
        ("steps", "steps"),
        ("workflows", "workflows"),
        ("recovery_workflows", "recovery"),
        ("waiting_workflows", "waiting"),
        ("sample", "sample"),
        ("turns", "turns"),
        ("latency_ms", "latency_ms"),
    ]:
        if getattr(args, option) is not None:
            setattr(sizes, attr, getattr(args, option))
    args.sizes = sizes
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    args.dir = args.dir.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pg_version = pg_server_version(args.url)
    if args.backends is None:
        args.backends = ["sqlite", "postgres"]
        if pg_version is None:
            args.backends = ["sqlite"]
            banner = "!" * 100
            print(
                f"{banner}\n!! PostgreSQL is NOT reachable at {args.url}: running SQLite ONLY."
                f"\n!! To include PostgreSQL, {START_PG}.\n{banner}",
                flush=True,
            )
    elif "postgres" in args.backends and pg_version is None:
        print(f"error: PostgreSQL is not reachable at {args.url}; {START_PG}.", file=sys.stderr)
        return 1
    plan = cases(args, args.sizes)
    need_peer = any(
        case.system in PEERS
        or (
            case.scenario == "agent"
            and case.system == "raw"
            and importlib.util.find_spec("openai") is None
        )
        for found in plan.values()
        for case in found
    )
    peer = None
    if need_peer:
        try:
            peer = ensure_peer_venv()
        except (subprocess.CalledProcessError, OSError) as exc:
            print(
                f"error: could not set up the peers' venv {PEER_VENV}: {exc} (is PyPI "
                "reachable? pip's message is above)",
                file=sys.stderr,
            )
            return 1
    probe = Path(tempfile.mkdtemp(prefix="perdure-cmp-", dir=args.dir))
    try:
        info = machine(probe, pg_version, peer or (PEER_PYTHON if PEER_PYTHON.exists() else None))
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    print_machine(info)
    if args.quick:
        print("\n--quick: small sizes, a smoke run; the targets are for the default sizes")
    print(f"\nbackends: {','.join(args.backends)}; sizes: {vars(args.sizes)}\n", flush=True)
    try:
        runs = run_all(plan, args, peer)
    finally:
        if "postgres" in args.backends and not args.keep:
            drop_databases(args.url)
    targets = report(runs, args)
    failed_setup = any(run.error for run in runs)
    if pg_version is None and "postgres" not in args.backends:
        print(f"\n!! PostgreSQL was NOT reachable at {args.url}: SQLite ONLY above. {START_PG}.")
    if args.json:
        payload = {
            "machine": info,
            "sizes": vars(args.sizes),
            "backends": args.backends,
            "quick": args.quick,
            "runs": [
                {
                    **vars(run.case),
                    "rep": run.rep,
                    "result": run.result,
                    "error": run.error,
                    "seconds": run.seconds,
                    "command": run.command,
                }
                for run in runs
            ],
            "targets": targets,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")
    if failed_setup:
        print("\nexit status 1: at least one child FAILED (above)")
    return 1 if failed_setup else 0


if __name__ == "__main__":
    sys.exit(main())
