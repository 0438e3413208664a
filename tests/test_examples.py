"""Every example in examples/ runs, so the README cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_quickstart_runs_once_and_replays(tmp_path: Path) -> None:
    script = EXAMPLES / "quickstart.py"
    first = subprocess.run([sys.executable, script], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60, check=True)  # fmt: skip
    second = subprocess.run([sys.executable, script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=True)  # fmt: skip
    assert first.stdout.count("charging 42") == 1
    assert "charging" not in second.stdout  # the finished run is returned, not re-run
    assert first.stdout.splitlines()[-1] == second.stdout.splitlines()[-1]
    assert second.stdout.splitlines()[-1].startswith("order-1: receipt-42 at ")
