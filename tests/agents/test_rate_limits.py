"""Rate limits of model calls (``durable(client, rate_limit=RateLimit(...))``), on both backends.

The store's rate windows first (take, charge, block, prune; two stores on one database never
exceed a limit together), then end to end with the real openai and anthropic SDK clients
against the local fake server (tests/apps/fake_llm.py), whose request arrival times show what
the limiter let through: concurrent workflows on two engines keep under a request limit; a
window holding more tokens than the limit holds back the next call; a provider's 429 with
Retry-After holds back every workflow's calls of that model; replay takes nothing; async
workflows wait on the event loop; a wait ends when the workflow is cancelled or the engine
stops. Time bounds are generous (CI machines are small).
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

import perdure
from conftest import wait_until
from perdure import agents
from perdure.agents import RateLimit
from perdure.store import Store, WorkflowStatus, open_store

sys.path.insert(0, str(Path(__file__).parent.parent / "apps"))
from fake_llm import CHAT, FakeLLM

KEY = "sk-test-rate-limits"
FAST = perdure.RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=0)


class TimedLLM(FakeLLM):
    """The fake server, also recording when each API request arrived (its own clock)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[float, str, str]] = []  # (time, path, the request's text)

    def _admit(self, path: str, body: Any, headers: dict[str, str]) -> Any:
        admitted = super()._admit(path, body, headers)
        with self._lock:
            self.arrivals.append((time.time(), path, _said(body)))
        return admitted

    def times(self, prefix: str = "") -> list[float]:
        """Arrival times of the requests whose text starts with ``prefix``, in order."""
        with self._lock:
            return sorted(t for t, _, text in self.arrivals if text.startswith(prefix))


def _said(body: Any) -> str:
    """The text of a request's last user message (or the Responses API's input)."""
    if isinstance(body.get("input"), str):
        return str(body["input"])
    messages = body.get("messages") or [{}]
    content = messages[-1].get("content", "")
    return content if isinstance(content, str) else ""


@pytest.fixture
def server() -> Iterator[TimedLLM]:
    with TimedLLM() as fake:
        yield fake


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = open_store(db_url)
    yield s
    s.close()


def rate_rows(store: Any) -> list[tuple[str, int, bool]]:
    """(key, tokens, charged) of every call the limiter holds, oldest first."""
    sql = "SELECT key, tokens, charged_at IS NOT NULL FROM rate_calls ORDER BY id"
    return [
        (str(k), int(t), bool(c)) for k, t, c in store._run(lambda c: c.execute(sql).fetchall())
    ]


def most_in_any_window(times: list[float], width: float) -> int:
    """The most arrivals found in any window ``[t, t + width)``."""
    return max((sum(1 for u in times if t <= u < t + width) for t in times), default=0)


# -- the API -----------------------------------------------------------------------------------


def test_rate_limits_are_checked_when_given() -> None:
    assert RateLimit(requests=3) == RateLimit(3, None, 60.0)
    assert RateLimit(tokens=1000, per=1.5).tokens == 1000
    for bad in ({}, {"requests": 0}, {"tokens": -5}, {"requests": 1.5}, {"requests": True},
                {"requests": 1, "per": 0}, {"requests": 1, "per": math.nan},
                {"requests": 1, "per": math.inf}):  # fmt: skip
        with pytest.raises(perdure.ConfigurationError, match="RateLimit"):
            RateLimit(**bad)
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key=KEY)
    agents.durable(client, rate_limit={"gpt": RateLimit(requests=1), "*": RateLimit(tokens=9)})
    for wrong in ({"gpt": 3}, "3/min", (3, 60.0)):
        with pytest.raises(perdure.ConfigurationError, match="rate_limit"):
            agents.durable(client, rate_limit=wrong)  # type: ignore[arg-type]


# -- the store's rate windows ------------------------------------------------------------------


def test_take_admits_the_requests_of_a_window_then_says_how_long_to_wait(store: Store) -> None:
    grants = [store.take_rate("openai:m", 3, None, 1.0) for _ in range(3)]
    assert all(g.call_id is not None and g.wait == 0.0 for g in grants)
    assert len({g.call_id for g in grants}) == 3
    refused = store.take_rate("openai:m", 3, None, 1.0)
    assert refused.call_id is None and 0.5 < refused.wait <= 1.0
    assert store.take_rate("openai:other", 3, None, 1.0).call_id is not None  # keys are apart
    time.sleep(refused.wait + 0.05)
    assert store.take_rate("openai:m", 3, None, 1.0).call_id is not None  # the window moved


def test_tokens_charged_in_the_window_hold_back_the_next_call(store: Store) -> None:
    first = store.take_rate("anthropic:c", None, 100, 1.0)
    assert first.call_id is not None
    store.charge_rate("anthropic:c", first.call_id, 60)
    time.sleep(0.4)
    second = store.take_rate("anthropic:c", None, 100, 1.0)  # 60 < 100: room
    assert second.call_id is not None
    store.charge_rate("anthropic:c", second.call_id, 60)
    held = store.take_rate("anthropic:c", None, 100, 1.0)  # 120 >= 100: none
    assert held.call_id is None and 0.3 < held.wait <= 0.6  # until the first charge leaves
    time.sleep(held.wait + 0.05)  # the first charge left the window: 60 < 100
    assert store.take_rate("anthropic:c", None, 100, 1.0).call_id is not None
    assert sorted(t for k, t, _ in rate_rows(store) if k == "anthropic:c") == [0, 60]


def test_a_block_holds_the_key_for_everyone_and_keeps_the_longest(store: Store) -> None:
    store.block_rate("openai:m", 0.6)
    store.block_rate("openai:m", 0.1)  # a shorter block does not shorten it
    held = store.take_rate("openai:m", 100, None, 60.0)
    assert held.call_id is None and 0.4 < held.wait <= 0.6
    assert store.take_rate("openai:n", 100, None, 60.0).call_id is not None
    time.sleep(held.wait + 0.05)
    assert store.take_rate("openai:m", 100, None, 60.0).call_id is not None


def test_calls_older_than_the_window_are_pruned(store: Store) -> None:
    for _ in range(3):
        store.take_rate("openai:r", 10, None, 0.2)
    uncharged = store.take_rate("openai:t", None, 1000, 0.2)
    charged = store.take_rate("openai:t", None, 1000, 0.2)
    assert charged.call_id is not None
    store.charge_rate("openai:t", charged.call_id, 5)
    time.sleep(0.3)
    store.take_rate("openai:r", 10, None, 0.2)
    store.take_rate("openai:t", None, 1000, 0.2)
    keys = [k for k, _, _ in rate_rows(store)]
    assert keys.count("openai:r") == 1  # the three old calls are gone
    # under a token limit an old call that was never charged stays a while (its response may
    # still be on the way); the old charged one is gone
    assert uncharged.call_id is not None and keys.count("openai:t") == 2


def test_two_stores_on_one_database_never_exceed_a_limit_together(db_url: str) -> None:
    stores = [open_store(db_url), open_store(db_url)]
    start = threading.Barrier(12)
    granted: list[int] = []

    def taker(s: Store) -> None:
        start.wait()
        for _ in range(3):
            grant = s.take_rate("openai:shared", 5, None, 60.0)
            if grant.call_id is not None:
                granted.append(grant.call_id)

    threads = [threading.Thread(target=taker, args=(stores[i % 2],)) for i in range(12)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(granted) == 5  # 36 tries by 12 threads over 2 stores: exactly the limit
        assert len(rate_rows(stores[0])) == 5
    finally:
        for s in stores:
            s.close()


# -- end to end --------------------------------------------------------------------------------


def _client(provider: str, url: str) -> Any:
    if provider == "anthropic":
        return anthropic.Anthropic(base_url=url, api_key=KEY)
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY)


def _ask(client: Any, provider: str, model: str, text: str) -> str:
    if provider == "anthropic":
        said = [{"role": "user", "content": text}]
        message = client.messages.create(model=model, max_tokens=200, messages=said)
        return str(message.content[0].text)
    if provider == "responses":
        return str(client.responses.create(model=model, input=text).output_text)
    said = [{"role": "user", "content": text}]
    return str(
        client.chat.completions.create(model=model, messages=said).choices[0].message.content
    )


@perdure.workflow(name="rate_calls")
def calls(
    url: str, provider: str, model: str, texts: list[str], requests: int | None,
    tokens: int | None, per: float,
) -> list[str]:  # fmt: skip
    limit = RateLimit(requests=requests, tokens=tokens, per=per)
    client = agents.durable(_client(provider, url), retry=FAST, rate_limit=limit)
    return [_ask(client, provider, model, text) for text in texts]


def test_workflows_on_two_engines_share_one_request_limit(db_url: str, server: TimedLLM) -> None:
    with perdure.Engine(db_url) as one, perdure.Engine(db_url) as two:
        handles = [
            engine.start(
                calls, server.url, "openai", "m", [f"w{i}-a", f"w{i}-b"], 3, None, 1.0, id=f"w{i}"
            )
            for i, engine in enumerate([one, two] * 3)
        ]
        for handle in handles:
            said = [text.split(": ")[1] for text in handle.result(timeout=60)]
            assert said == [f"{handle.id}-a", f"{handle.id}-b"]
    times = server.times("w")
    assert len(times) == 12
    # 3 per second, counted when the limiter lets a request go: the server sees them later,
    # after a delay that varies (a first request on a new connection of a loaded 2-core
    # machine was seen arriving 0.18 s after the others), so arrivals are checked with
    # slack: never more than 3 in any 0.5 s, and the 12 took at least three windows more.
    # Without the limiter all 12 arrive within milliseconds.
    assert most_in_any_window(times, 0.5) == 3
    assert times[-1] - times[0] >= 2.5


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_window_holding_more_tokens_than_the_limit_holds_back_the_next_call(
    engine: perdure.Engine, server: TimedLLM, provider: str
) -> None:
    # each call reports about 200 tokens (400 characters in, as many out): the third call
    # finds ~400 >= 300 in the window and waits until the first call's tokens leave it
    texts = [f"t{i}" + "x" * 398 for i in range(3)]
    out = engine.run(calls, server.url, provider, "m", texts, None, 300, 1.5, id="tok",
                     timeout=30)  # fmt: skip
    assert [s.split(": ")[1] for s in out] == texts
    first, second, third = server.times("t")
    assert second - first < 1.0  # ~200 tokens < 300: no wait
    assert third - first >= 1.3  # 1.5 s after the first call's tokens were charged
    used = [agents.usage([s]).total_tokens for s in engine.list_steps("tok")]
    assert min(used) > 150  # what the responses reported, input and output
    charged = [t for _, t, _ in rate_rows(engine.store)]
    assert charged[-2:] == used[-2:]  # (the first call's row was pruned with its window)


@perdure.workflow(name="rate_mixed")
def mixed(url: str) -> list[str]:
    limits = {"gpt-x": RateLimit(tokens=10**9), "*": RateLimit(requests=100)}
    gpt = agents.durable(_client("openai", url), rate_limit=limits)
    claude = agents.durable(
        _client("anthropic", url), rate_limit={"claude-x": RateLimit(tokens=10**9)}
    )
    streamed = gpt.chat.completions.create(
        model="gpt-x", messages=[{"role": "user", "content": "f"}], stream=True, on_chunk=id
    )
    return [_ask(gpt, "openai", "gpt-x", "a"), _ask(gpt, "responses", "gpt-x", "b"),
            _ask(gpt, "openai", "gpt-y", "c"), _ask(claude, "anthropic", "claude-x", "d"),
            _ask(claude, "anthropic", "claude-y", "e"),
            str(streamed.choices[0].message.content)]  # fmt: skip


def test_each_api_charges_its_reported_usage_under_its_provider_and_model(
    engine: perdure.Engine, server: TimedLLM
) -> None:
    engine.run(mixed, server.url, id="mixed", timeout=30)
    steps = [s for s in engine.list_steps("mixed") if s.name.startswith(("openai.", "anthropic."))]
    reported = [agents.usage([s]).total_tokens for s in steps]
    # one row per limited call: gpt-x (chat streamed, chat, Responses), gpt-y under "*"
    # (requests only: not charged), claude-x; claude-y has no limit (no "*" for that client)
    assert rate_rows(engine.store) == [
        ("openai:gpt-x", reported[0], True),
        ("openai:gpt-x", reported[1], True),
        ("openai:gpt-x", reported[2], True),
        ("openai:gpt-y", 0, False),
        ("anthropic:claude-x", reported[4], True),
    ]
    assert all(r > 0 for r in reported)


@perdure.workflow(name="rate_first")
def first_of_two(url: str, text: str, model: str) -> str:
    client = agents.durable(_client("openai", url), retry=FAST,
                            rate_limit=RateLimit(requests=100))  # fmt: skip
    return _ask(client, "openai", model, text)


def test_a_429_with_retry_after_holds_back_every_workflows_calls_of_that_model(
    engine: perdure.Engine, server: TimedLLM
) -> None:
    server.fail_next(429, retry_after=2.0, path=CHAT)
    first = engine.start(first_of_two, server.url, "first", "m", id="first")
    wait_until(lambda: bool(engine.list_attempts("first")))  # refused; the key is blocked
    second = engine.start(first_of_two, server.url, "second", "m", id="second")
    other = engine.start(first_of_two, server.url, "other", "n", id="other")
    assert other.result(timeout=30) == "hello: other"
    assert second.result(timeout=30) == "hello: second"
    assert first.result(timeout=30) == "hello: first"
    refused = server.times("first")[0]
    assert server.times("second")[0] - refused >= 1.6  # waited for the other run's Retry-After
    assert server.times("first")[1] - refused >= 1.6
    assert server.times("other")[0] - refused < 1.2  # another model: not blocked


def test_a_replay_takes_nothing_from_the_limiter(engine: perdure.Engine, server: TimedLLM) -> None:
    texts = ["r-a", "r-b"]
    out = engine.run(calls, server.url, "openai", "m", texts, 2, None, 600.0, id="rep",
                     timeout=30)  # fmt: skip
    assert len(rate_rows(engine.store)) == 2  # the window is full for ten minutes
    store: Any = engine.store
    store._run(lambda c: c.execute("UPDATE workflows SET status = 'ERROR' WHERE id = 'rep'"))
    started = time.monotonic()
    assert engine.resume("rep").result(timeout=20) == out  # would wait 600 s if it took room
    assert time.monotonic() - started < 10
    assert len(rate_rows(engine.store)) == 2 and len(server.times("r-")) == 2


@perdure.workflow(name="rate_async")
async def async_calls(url: str, model: str, texts: list[str]) -> list[str]:
    limits = {"slow": RateLimit(requests=1, per=1.0)}
    client = agents.durable(openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY),
                            retry=FAST, rate_limit=limits)  # fmt: skip

    async def ask(text: str) -> str:
        reply = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}]
        )
        return str(reply.choices[0].message.content)

    return list(await asyncio.gather(*(ask(text) for text in texts)))


def test_async_calls_wait_on_the_event_loop_without_blocking_it(
    engine: perdure.Engine, server: TimedLLM
) -> None:
    slow = engine.start(async_calls, server.url, "slow", ["s0", "s1", "s2"], id="slow")
    wait_until(lambda: len(server.times("s")) == 1)  # the other two calls wait for room
    started = time.monotonic()
    # another async workflow on the same event loop, under no limit, is not held up
    fast = engine.run(async_calls, server.url, "fast", ["f0", "f1"], id="fast", timeout=30)
    assert time.monotonic() - started < 0.8 and fast == ["hello: f0", "hello: f1"]
    assert sorted(slow.result(timeout=30)) == ["hello: s0", "hello: s1", "hello: s2"]
    times = server.times("s")
    assert most_in_any_window(times, 0.5) == 1 and times[-1] - times[0] >= 1.5


@perdure.workflow(name="rate_blocked_async")
async def blocked_async(url: str) -> str:
    client = agents.durable(openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY),
                            rate_limit=RateLimit(requests=5))  # fmt: skip
    reply = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "async"}]
    )
    return str(reply.choices[0].message.content)


def test_a_wait_ends_at_once_when_the_workflow_is_cancelled_or_the_engine_stops(
    db_url: str, server: TimedLLM
) -> None:
    engine = perdure.Engine(db_url, shutdown_grace=5.0).open()
    try:
        engine.store.block_rate("openai:m", 60.0)  # as a 429 with Retry-After: 60 would
        cancelled = engine.start(calls, server.url, "openai", "m", ["c"], 5, None, 60.0, id="c")
        time.sleep(0.3)
        engine.cancel("c")
        with pytest.raises(perdure.WorkflowCancelledError):
            cancelled.result(timeout=5)
        engine.start(calls, server.url, "openai", "m", ["s"], 5, None, 60.0, id="sync")
        engine.start(blocked_async, server.url, id="async")
        time.sleep(0.3)
    finally:
        started = time.monotonic()
        engine.close()
    assert time.monotonic() - started < 2.5  # not the 5 s grace: the waits ended at once
    assert server.times() == []  # nothing was sent
    store = open_store(db_url)
    try:
        for workflow_id in ("sync", "async"):  # released, to resume later
            row = store.get_workflow(workflow_id)
            assert row is not None and row.status is WorkflowStatus.PENDING
    finally:
        store.close()
