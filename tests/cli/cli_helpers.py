"""Helpers shared by the command-line tests: run the real ``perdure`` command in a child
process, with an environment free of the caller's ``PERDURE_DB`` and terminal width."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment without PERDURE_DB and COLUMNS, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PERDURE_DB", "COLUMNS")}
    env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real command line, as ``python -m perdure.cli ARGS``."""
    return subprocess.run(
        [sys.executable, "-m", "perdure.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(env) if env is not None else cli_env(),
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single ``perdure: ...`` line a failed command wrote to stderr (nothing on stdout)."""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("perdure: ")
    assert done.stdout == ""
    return lines[0]
