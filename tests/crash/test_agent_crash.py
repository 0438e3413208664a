"""An agent run killed with SIGKILL in the middle of its conversation resumes in a new process
without sending any finished model call again: the fake server counts the requests."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from conftest import run_app

sys.path.insert(0, str(Path(__file__).parent.parent / "apps"))
from fake_llm import CHAT, FakeLLM

pytestmark = [pytest.mark.crash, pytest.mark.timeout(120)]


def test_a_killed_agent_resumes_without_repeating_model_calls(db_url: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    with FakeLLM(turns=5) as server:
        first = run_app("agent_app", db_url, server.openai_url, str(ledger), "start")
        deadline = time.monotonic() + 30
        while not (ledger.exists() and len(ledger.read_text().splitlines()) >= 3):
            assert time.monotonic() < deadline, first.stderr and first.stderr.read()
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)  # inside the third tool call
        first.communicate(timeout=10)  # reaps it and closes its pipes
        sent_before = server.count(CHAT)
        assert sent_before == 3  # three model calls answered, each followed by a tool call
        second = run_app("agent_app", db_url, server.openai_url, str(ledger), "recover")
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert out.strip().startswith("done after 5 tool results: facts about q-4")
        # 6 model calls in all: the 3 answered before the kill were replayed, not re-sent
        assert server.count(CHAT) == 6
    lines = [line.split() for line in ledger.read_text().splitlines()]
    queries = [q for _, q in lines]
    assert queries == ["q-0", "q-1", "q-2", "q-2", "q-3", "q-4"]  # only the killed one re-ran
    assert lines[2][0] != lines[3][0]  # ... by the new process
