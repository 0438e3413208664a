"""The workflows of the export corpus (tests/corpus/*.json): every later perdure version must
replay these recorded runs against this code (tests/engine/test_corpus.py).

Never change what these workflows do: a recorded run is a contract. A new behaviour to keep
covered gets a new workflow here and a new export (tests/corpus/make_corpus.py).
"""

from __future__ import annotations

import openai

import perdure
from perdure import agents

FAST = perdure.RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=0)
failures_left = [1]


@perdure.step(retry=FAST)
def flaky_fetch(n: int) -> int:
    """Fails on its first attempt (in the recording), then returns ``n * 2``."""
    if failures_left[0] > 0:
        failures_left[0] -= 1
        raise ConnectionError("the first attempt fails")
    return n * 2


@perdure.step
def charge(amount: int) -> str:
    return f"charged {amount}"


@perdure.workflow(name="corpus_retried")
def retried(n: int) -> dict[str, object]:
    amount = flaky_fetch(n)
    return {"receipt": charge(amount), "at": perdure.now(), "id": perdure.uuid4()}


@perdure.workflow(name="corpus_waits")
def waits(n: int) -> str:
    perdure.sleep(0.01)
    extra = perdure.receive("go")
    perdure.set_event("progress", "received")
    return charge(n + int(extra))


@agents.tool
def lookup(query: str) -> str:
    """Look something up.

    Args:
        query: what to look up.
    """
    return f"facts about {query}"


@perdure.workflow(name="corpus_agent")
def agent(base_url: str) -> str:
    client = openai.OpenAI(base_url=base_url, api_key="sk-corpus", max_retries=0)
    helper = agents.Agent(client, model="gpt-test", tools=[lookup], instructions="be brief")
    return helper.run("what is perdure?").text


@perdure.workflow(name="corpus_patched")
def patched(n: int) -> str:
    """Recorded (schema 7) with a change marker: the new branch; a step after it."""
    opened = charge(n)
    receipt = charge(n + 1) if perdure.patched("second-charge") else "no second charge"
    return f"{opened}; {receipt}"


#: every corpus workflow by its registered name (the name an export records)
WORKFLOWS = {
    "corpus_retried": retried,
    "corpus_waits": waits,
    "corpus_agent": agent,
    "corpus_patched": patched,
}
