"""A durable support agent on the official OpenAI or Anthropic SDK.

    python examples/support_agent.py                       # OpenAI chat completions
    python examples/support_agent.py --provider anthropic  # Anthropic messages

With ``OPENAI_API_KEY`` (or ``ANTHROPIC_API_KEY``) set it calls the real API (``OPENAI_BASE_URL``
/ ``ANTHROPIC_BASE_URL`` and ``--model`` are honoured). Without a key it runs offline against
the scripted fake server of the test suite (tests/apps/fake_llm.py), which counts requests.

The agent looks an order up, then wants to refund it: refunds need a human, so the run waits
(holding no thread) until this script, playing the human, approves it. Run the script twice:
the second run finds the finished run in ``support.db`` and returns its answer from the
journal, sending no model request at all.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import perdure
from perdure import agents


@agents.tool
def lookup_order(order_id: str) -> dict[str, Any]:
    """Find an order.

    Args:
        order_id: the order's id, like "A-17".
    """
    return {"order_id": order_id, "amount": 420, "status": "delivered late"}


@agents.tool(requires_approval=True)
def refund(amount: int, idempotency_key: str) -> str:
    """Refund the customer (amounts in euros)."""
    print(f"  refunding {amount} (idempotency key {idempotency_key})")
    return f"refunded {amount}"


#: where the model is (set by main; not a workflow input: the offline server's port changes)
BASE_URL: str | None = None


def make_client(provider: str) -> Any:
    base_url = BASE_URL
    if provider == "openai":
        import openai

        return openai.OpenAI(base_url=base_url) if base_url else openai.OpenAI()
    import anthropic

    return anthropic.Anthropic(base_url=base_url) if base_url else anthropic.Anthropic()


@perdure.workflow(name="support_agent")
def support(provider: str, model: str, ticket: str) -> dict[str, Any]:
    agent = agents.Agent(make_client(provider), model=model,
                         tools=[lookup_order, refund],
                         instructions="You are a support agent. Use the tools.")  # fmt: skip
    result = agent.run(ticket)
    return {"answer": result.text, "turns": result.turns,
            "tokens": result.input_tokens + result.output_tokens}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--provider", choices=["openai", "anthropic"], default="openai")
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    global BASE_URL
    key = "OPENAI_API_KEY" if args.provider == "openai" else "ANTHROPIC_API_KEY"
    offline = not os.environ.get(key)
    fake = None
    if offline:  # the scripted stand-in of the test suite; it calls each tool in turn
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "apps"))
        from fake_llm import FakeLLM

        fake = FakeLLM(turns=2).__enter__()
        os.environ[key] = "sk-offline-example"
        BASE_URL = fake.openai_url if args.provider == "openai" else fake.url
    else:
        BASE_URL = os.environ.get(f"{args.provider.upper()}_BASE_URL")
    model = args.model or ("gpt-4o-mini" if args.provider == "openai" else "claude-sonnet-4-5")
    ticket = "Order A-17 arrived two weeks late. I want my money back."
    if offline:  # what the scripted model should do: look up, then refund
        ticket += " TURNS=2 TOOLS=lookup_order,refund"
    with perdure.Engine("sqlite:///support.db") as engine:
        handle = engine.start(support, args.provider, model, ticket,
                              id=f"ticket-A-17-{args.provider}")  # fmt: skip
        while not handle.status().finished:
            for request in engine.pending_approvals():
                print(f"  approval asked: {request.details}")
                engine.approve(request.workflow_id, request.name, by="example")
            time.sleep(0.05)
        outcome = handle.result()
        steps = [s.name for s in engine.list_steps(handle.id)]
    print(f"steps journaled: {', '.join(steps)}")
    if fake is not None:
        print(f"model requests sent by this run: {fake.count()}")
    print(f"answer: {outcome['answer']}")


if __name__ == "__main__":
    main()
