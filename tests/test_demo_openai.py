"""`perdure demo` against an OpenAI-compatible endpoint, through the real openai SDK.

The endpoint is a local fake server that counts requests: the model calls replayed from the
journal after the SIGKILL must not reach it again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "apps"))

from fake_openai import FakeOpenAI


def test_demo_through_the_openai_sdk_sends_each_model_call_once(tmp_path: Path) -> None:
    with FakeOpenAI(delay=0.4) as server:
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test",
               "OPENAI_MODEL": "fake-model"}  # fmt: skip
        env.pop("PERDURE_DB", None)
        done = subprocess.run([sys.executable, "-m", "perdure.cli", "demo"], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path, env=env)  # fmt: skip
        sent = list(server.requests)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert f"fake-model at {server.base_url}" in out
    assert out.count("  ok   ") == 3
    # 5 distinct model calls in the run; only the one in flight at the kill was sent twice.
    tool_results = [sum(1 for m in r["messages"] if m["role"] == "tool") for r in sent]
    assert sorted(set(tool_results)) == [0, 1, 2, 3, 4]
    assert len(sent) <= 6
    assert all(r["model"] == "fake-model" and r["tools"] for r in sent)
