"""A worker process for the agent crash test: an OpenAI agent (the real SDK, against the test's
fake server) whose tool appends "<pid> <query>" to a ledger and takes a while, so the parent can
SIGKILL the process in the middle of the conversation.

Usage: agent_app.py DATABASE_URL OPENAI_BASE_URL LEDGER start|recover
"""

from __future__ import annotations

import os
import sys
import time

import openai

import perdure
from perdure import agents


@agents.tool
def slow_lookup(query: str) -> str:
    """Look something up (slowly)."""
    with open(sys.argv[3], "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()} {query}\n")
        f.flush()
        os.fsync(f.fileno())
    time.sleep(0.3)
    return f"facts about {query}"


@perdure.workflow(name="crash_agent")
def crash_agent(base_url: str) -> str:
    client = openai.OpenAI(base_url=base_url, api_key="sk-test")
    return agents.Agent(client, model="m", tools=[slow_lookup], max_turns=10).run("go").text


def main() -> None:
    url, base_url, _, mode = sys.argv[1:5]
    with perdure.Engine(url, lease_seconds=2, heartbeat_interval=0.5) as engine:
        if mode == "start":
            handle = engine.start(crash_agent, base_url, id="agent-run")
        else:
            handle = engine.handle("agent-run")
        print(handle.result(timeout=60), flush=True)


if __name__ == "__main__":
    main()
