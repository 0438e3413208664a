"""Token accounting from recorded responses: per model, and priced."""

from __future__ import annotations

import json

import pytest

import perdure
from perdure.agents import Price, Usage, usage


class Step:
    def __init__(self, name: str, output: object) -> None:
        self.name, self.output = name, output


def chat(model: str, prompt: int, completion: int) -> Step:
    body = {"model": model, "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}
    return Step("openai.chat.completions.create", json.dumps(body))


def message(model: str, tokens_in: int, tokens_out: int) -> Step:
    body = {"model": model, "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out}}
    return Step("anthropic.messages.create", body)


def test_usage_is_summed_per_model_and_overall() -> None:
    steps = [
        chat("gpt-4o-mini-2024-07-18", 100, 10),
        chat("gpt-4o-mini-2024-07-18", 200, 20),
        message("claude-sonnet-4-5", 1000, 500),
        Step("lookup", {"usage": {"input_tokens": 99}}),  # not a model call
    ]
    total = usage(steps)
    assert total == Usage(3, 1300, 530)
    assert total.by_model == {
        "gpt-4o-mini-2024-07-18": Usage(2, 300, 30),
        "claude-sonnet-4-5": Usage(1, 1000, 500),
    }


def test_cost_prices_each_model_by_its_longest_matching_prefix() -> None:
    total = usage([chat("gpt-4o-mini-2024-07-18", 1_000_000, 100_000),
                   message("claude-sonnet-4-5", 2_000_000, 0)])  # fmt: skip
    prices = {
        "gpt-4o": Price(2.5, 10.0),  # a shorter prefix loses to the longer one
        "gpt-4o-mini": Price(0.15, 0.6),
        "claude-sonnet": Price(3.0, 15.0),
    }
    assert total.cost(prices) == pytest.approx(0.15 + 0.06 + 6.0)


def test_a_model_without_a_price_is_named() -> None:
    total = usage([chat("o3-2025", 10, 10)])
    with pytest.raises(perdure.ConfigurationError, match="no price for model 'o3-2025'"):
        total.cost({"gpt-4o": Price(1, 1)})


def test_a_response_without_usage_counts_as_a_call_of_its_model() -> None:
    total = usage([Step("openai.responses.create", {"model": "gpt-5"})])
    assert total == Usage(1, 0, 0) and total.by_model == {"gpt-5": Usage(1)}
