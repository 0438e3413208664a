"""Every example in examples/ runs, so the README cannot rot."""

from __future__ import annotations

import os
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


def test_the_support_agent_runs_on_both_sdks_and_replays(tmp_path: Path) -> None:
    script = EXAMPLES / "support_agent.py"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}  # offline
    for provider in ("openai", "anthropic"):
        runs = [
            subprocess.run([sys.executable, script, "--provider", provider], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=60, check=True).stdout
            for _ in range(2)
        ]  # fmt: skip
        assert "approval asked:" in runs[0] and "refunding 1" in runs[0]
        assert "model requests sent by this run: 3" in runs[0]
        assert "approval asked" not in runs[1] and "refunding" not in runs[1]
        assert "model requests sent by this run: 0" in runs[1]  # all from the journal
        assert runs[0].splitlines()[-1] == runs[1].splitlines()[-1]
        assert runs[1].splitlines()[-1] == "answer: done after 2 tool results: refunded 1"
