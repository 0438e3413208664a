"""Token accounting: what a workflow's model calls cost, from its journal.

Each journaled model call (``openai.*`` and ``anthropic.*`` steps) records the provider's usage
in its response; :func:`usage` sums them. A recovered run replays the calls journaled before
the crash instead of sending them again: :func:`usage` also says how many calls and tokens
that saved: each time a run resumes a journal holding model calls, :func:`note_replay` adds
them to the workflow's ``perdure.replay_saved`` event, which ``perdure show`` reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import ConfigurationError

MODEL_STEPS = ("openai.", "anthropic.")
#: the event under which a workflow keeps what replay saved it (see :func:`note_replay`)
REPLAY_EVENT = "perdure.replay_saved"


@dataclass(frozen=True)
class Price:
    """What a model costs, in your currency per million tokens (prices change: perdure ships
    none; take them from the provider's price list)."""

    input_per_million: float
    output_per_million: float


@dataclass(frozen=True)
class Usage:
    """Tokens reported by a workflow's model calls.

    Attributes:
        calls: model calls journaled. input_tokens, output_tokens: their sums.
        by_model: the same figures per model, as the responses name it (e.g.
            ``"gpt-4o-mini-2024-07-18"``). Not part of equality.
    """

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    by_model: Mapping[str, Usage] = field(default_factory=dict, compare=False, repr=False)

    @property
    def total_tokens(self) -> int:
        """Input and output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        models = dict(self.by_model)
        for model, part in other.by_model.items():
            models[model] = models[model] + part if model in models else part
        return Usage(self.calls + other.calls, self.input_tokens + other.input_tokens,
                     self.output_tokens + other.output_tokens, models)  # fmt: skip

    def cost(self, prices: Mapping[str, Price]) -> float:
        """What these calls cost at ``prices``, keyed by model name or by a prefix of it
        (``"gpt-4o-mini"`` prices ``"gpt-4o-mini-2024-07-18"``; the longest prefix wins).

        Raises:
            ConfigurationError: a model the calls used has no price.
        """
        total = 0.0
        for model, part in self.by_model.items():
            keys = [key for key in prices if model.startswith(key)]
            if not keys:
                raise ConfigurationError(
                    f"no price for model {model!r} ({part.calls} calls, {part.total_tokens:,} "
                    f"tokens): add it, or a prefix of its name, to the prices"
                )
            price = prices[max(keys, key=len)]
            total += part.input_tokens * price.input_per_million / 1e6
            total += part.output_tokens * price.output_per_million / 1e6
        return total


def usage(steps: Iterable[Any]) -> Usage:
    """Sum the usage of the model calls among ``steps`` (``engine.list_steps(id)``, or store
    rows whose ``output`` is journal JSON)."""
    total = Usage()
    for step in steps:
        if str(getattr(step, "name", "")).startswith(MODEL_STEPS):
            total = total + call_usage(getattr(step, "output", None))
    return total


def call_usage(output: Any) -> Usage:
    """The usage one model call's recorded response reports (zero if it has none)."""
    if isinstance(output, str):
        import json

        try:
            output = json.loads(output)
        except ValueError:
            return Usage(1, by_model={"unknown": Usage(1)})
    if isinstance(output, Mapping) and "$model" in output:
        output = output.get("data")
    model = output.get("model") if isinstance(output, Mapping) else getattr(output, "model", None)
    model = model if isinstance(model, str) and model else "unknown"
    found = output.get("usage") if isinstance(output, Mapping) else getattr(output, "usage", None)
    if found is None:
        return Usage(1, by_model={model: Usage(1)})

    def count(*names: str) -> int:
        for name in names:
            value = found.get(name) if isinstance(found, Mapping) else getattr(found, name, None)
            if isinstance(value, int):
                return value
        return 0

    tokens_in = count("prompt_tokens", "input_tokens")
    tokens_out = count("completion_tokens", "output_tokens")
    return Usage(1, tokens_in, tokens_out, {model: Usage(1, tokens_in, tokens_out)})


def note_replay(earlier: Callable[[], str | None], journal: Iterable[Any]) -> str | None:
    """The new value of the replay event when a run resumes ``journal`` (None: no model call
    in it, nothing to note). ``earlier`` reads the event's JSON value so far; it is called
    only when there is something to note (a resumed workflow without model calls costs no
    read)."""
    import json

    replayed = usage(journal)
    if not replayed.calls:
        return None
    previous = earlier()
    so_far = json.loads(previous) if previous else {}
    return json.dumps({
        "model_calls": int(so_far.get("model_calls", 0)) + replayed.calls,
        "input_tokens": int(so_far.get("input_tokens", 0)) + replayed.input_tokens,
        "output_tokens": int(so_far.get("output_tokens", 0)) + replayed.output_tokens,
        "resumes": int(so_far.get("resumes", 0)) + 1,
    })  # fmt: skip


def replay_saved(value: str | None) -> Usage:
    """What replay saved, from the event's JSON value."""
    import json

    if not value:
        return Usage()
    data = json.loads(value)
    return Usage(int(data.get("model_calls", 0)), int(data.get("input_tokens", 0)),
                 int(data.get("output_tokens", 0)))  # fmt: skip
