"""perdure.agents: durable LLM calls through the official SDKs, tools and an agent loop.

* :func:`durable` wraps an ``openai`` or ``anthropic`` client: its model calls become
  journaled steps whose responses replay as the SDK's own types.
* :func:`tool` makes a function a tool: a journaled step with a JSON schema, a stable
  idempotency key and an optional human approval gate.
* :class:`Agent` runs the model → tools → model loop inside a workflow.
* :func:`usage` sums the tokens a workflow's model calls reported.
* :class:`RateLimit` limits requests and tokens per provider and model, across workers.

The SDKs are optional extras: ``pip install 'perdure[openai]'`` / ``'perdure[anthropic]'``.
See ``docs/agents.md``.
"""

from .._usage import Price, Usage, usage
from ._agent import Agent, AgentResult, TurnBudgetExceeded
from ._llm import durable
from ._rate import RateLimit
from ._tools import Tool, ToolRejected, tool

__all__ = [
    "Agent",
    "AgentResult",
    "Price",
    "RateLimit",
    "Tool",
    "ToolRejected",
    "TurnBudgetExceeded",
    "Usage",
    "durable",
    "tool",
    "usage",
]
