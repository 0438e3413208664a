"""The chaos run's account of itself (``bench/chaos.py``): the machine, the server and the
parameters it prints first, and which perdure code runs, the work tree or a snapshot of a
commit (``--perdure-ref``)."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import psycopg

import perdure
from _chaos_faults import libpq_url
from _common import cpu_model, memory_total

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SNAPSHOT_DIR, SNAPSHOT_LABEL = "PERDURE_CHAOS_SNAPSHOT", "PERDURE_CHAOS_SOURCE"
CHAOS = BENCH / "chaos.py"


def perdure_source() -> str:
    """Which perdure runs: a snapshot of a commit (``--perdure-ref``), or the work tree."""
    return os.environ.get(SNAPSHOT_LABEL) or f"work tree, {git_revision()}"


def rerun_on_snapshot(ref: str, argv: list[str]) -> None:
    """Unpack ``src/perdure`` as of ``ref`` (``git archive``) and run this script again with
    it first on the path, for the supervisor and (inherited) every worker. Does not return."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref, "src/perdure"],
        capture_output=True,
        check=True,
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="perdure-chaos-src-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", ref], capture_output=True, text=True
    ).stdout.strip()
    env = {**os.environ, "PYTHONPATH": str(folder / "src"), SNAPSHOT_DIR: str(folder)}
    env[SNAPSHOT_LABEL] = f"git {ref} = commit {commit} (snapshot in {folder})"
    os.execve(sys.executable, [sys.executable, str(CHAOS), *argv], env)


def git_revision() -> str:
    """The repository's commit, marked when the work tree differs from it."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "no git"
    return f"commit {rev}" + (", src/ modified" if dirty else "") if rev else "no git"


def describe(
    opts: argparse.Namespace, url: str, schema: str, restart: list[str] | None, folder: Path
) -> None:
    """The machine, the server, the parameters and how to repeat the run (``url``: the
    database with its ``?schema=``; ``restart``: the server's restart command, if any)."""
    with psycopg.connect(libpq_url(url), connect_timeout=5) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    print("perdure chaos run")
    print(f"  date        {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC")
    print(f"  machine     {cpu_model()}, {os.cpu_count()} logical CPUs, {memory_total()} RAM")
    print(f"  postgresql  {row[0] if row else '?'} at {libpq_url(url)}, schema {schema}")
    print(
        f"  python      {platform.python_version()}, perdure {perdure.__version__} "
        f"({perdure_source()}; imported from {Path(perdure.__file__).parent})"
    )
    print(
        f"  workload    {opts.workflows} workflows x {opts.steps} steps over {opts.duration:g} s, "
        f"{opts.workers} workers (lease {opts.lease:g} s, heartbeat {opts.heartbeat:g} s, "
        f"recovery every {opts.recovery_interval:g} s, {opts.max_threads} threads)"
    )
    kill = "every {:g}-{:g} s".format(*opts.kill_every) if opts.kill_every else "never"
    restart = "every {:g}-{:g} s".format(*opts.restart_every) if opts.restart_every else "never"
    print(
        f"  faults      kill {kill}, restart {restart} "
        f"({shlex.join(restart) if restart else 'no command'}), "
        f"freeze {'on' if opts.freeze else 'off'}, seed {opts.seed}"
    )
    print(f"  folder      {folder}")
    print(f"  repeat with {shlex.join([sys.argv[0], *sys.argv[1:]])}  (same --seed)", flush=True)
