"""`perdure demo` (what `make demo` runs) tells a true story: it checks itself against the
ledger the agent's step bodies wrote, and exits non-zero if any check fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def test_demo_kills_resumes_and_checks_out(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "PERDURE_DB")}
    done = subprocess.run(
        [sys.executable, "-m", "perdure.cli", "demo"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "SIGKILL sent to process" in out
    assert "FAIL" not in out
    assert out.count("  ok   ") == 3
    assert re.search(r"model calls: 5 in the run; [1-5] made before the crash were replayed", out)
    replayed = re.findall(r"replayed from journal", out)
    assert len(replayed) >= 4
    assert "in flight when killed" in out
