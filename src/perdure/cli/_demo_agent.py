"""The demo's research agent: a durable workflow of model calls and tool calls.

Run by ``perdure demo`` in a child process (``python -m perdure.cli._demo_agent ...``). The
model is an offline scripted one by default; with ``OPENAI_BASE_URL`` set, any
OpenAI-compatible endpoint is called through the official ``openai`` SDK instead
(``OPENAI_MODEL`` picks the model, default ``gpt-4o-mini``).

Every step body appends ``<pid> <step name>`` to a ledger file, so the demo can show which
process really executed what. The tools read an offline corpus; ``save_note`` has a real side
effect: it appends to a notes file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import perdure
from perdure import PerdureError

QUESTION = "Why do AI agents need durable execution?"

CORPUS = {
    "https://example.org/crash-recovery": (
        "A crash at step 9 of 10 restarts a plain agent from scratch: every paid model call "
        "and every tool call runs again, side effects included."
    ),
    "https://example.org/journaling": (
        "A durable engine commits each step's result before moving on; after a crash it "
        "replays finished steps from the journal and resumes at the step in flight."
    ),
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {arg: {"type": "string"}},
                "required": [arg],
            },
        },
    }
    for name, arg, description in [
        ("search_web", "query", "Search the web; returns result URLs."),
        ("fetch_page", "url", "Fetch a page's text."),
        ("save_note", "text", "Save a research note for the user."),
    ]
]

_paths: dict[str, str] = {}


def _ledger(name: str) -> None:
    with open(_paths["ledger"], "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()} {name}\n")
        f.flush()
        os.fsync(f.fileno())


# -- the model -----------------------------------------------------------------------------


def _scripted_reply(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """A deterministic stand-in for an LLM: plans by how many tool results it has seen."""
    seen = [m for m in messages if m["role"] == "tool"]
    plan: list[tuple[str, dict[str, str]] | str] = [
        ("search_web", {"query": "durable execution for AI agents"}),
        ("fetch_page", {"url": "https://example.org/crash-recovery"}),
        ("fetch_page", {"url": "https://example.org/journaling"}),
        ("save_note", {"text": "Agents need durability: crashes must not repeat paid calls."}),
        "Agents run long, costly, side-effecting steps. Durable execution journals each step, "
        "so a crash resumes at the step in flight instead of paying for everything again.",
    ]
    move = plan[min(len(seen), len(plan) - 1)]
    prompt_tokens = sum(len(str(m.get("content", ""))) // 4 for m in messages) + 40
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 30}
    time.sleep(0.4)  # a model takes time to answer
    if isinstance(move, str):
        return {"content": move, "tool_calls": [], "usage": usage}
    name, args = move
    call = {"id": f"call_{len(seen)}", "name": name, "arguments": json.dumps(args)}
    return {"content": None, "tool_calls": [call], "usage": usage}


def _openai_reply(messages: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        import openai
    except ImportError:
        raise PerdureError(
            "OPENAI_BASE_URL is set but the openai SDK is not installed: "
            "pip install 'perdure[openai]'"
        ) from None
    client = openai.OpenAI()
    response = client.chat.completions.create(
        model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
        messages=cast(Any, messages),
        tools=cast(Any, TOOLS),
    )
    message = response.choices[0].message
    calls = [
        {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
        for c in message.tool_calls or []
        if c.type == "function"
    ]
    usage = response.usage
    return {
        "content": message.content,
        "tool_calls": calls,
        "usage": {
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "completion_tokens": usage.completion_tokens if usage else 0,
        },
    }


def model_name() -> str:
    """What answers the model calls in this environment."""
    if os.environ.get("OPENAI_BASE_URL"):
        return f"{os.environ.get('OPENAI_MODEL', 'gpt-4o-mini')} at {os.environ['OPENAI_BASE_URL']}"
    return "scripted (offline)"


@perdure.step
def call_model(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """One model call; its reply (with token usage) is journaled."""
    _ledger("call_model")
    if os.environ.get("OPENAI_BASE_URL"):
        return _openai_reply(messages)
    return _scripted_reply(messages)


# -- the tools -----------------------------------------------------------------------------


@perdure.step
def search_web(query: str) -> list[str]:
    """Search the offline corpus."""
    _ledger("search_web")
    time.sleep(0.3)
    return list(CORPUS)


@perdure.step
def fetch_page(url: str) -> str:
    """Fetch a page of the offline corpus."""
    _ledger("fetch_page")
    time.sleep(0.3)
    return CORPUS.get(url, f"404: {url} not found")


@perdure.step
def save_note(text: str) -> str:
    """A real side effect: append a note to the notes file."""
    _ledger("save_note")
    with open(_paths["notes"], "a", encoding="utf-8") as f:
        f.write(text + "\n")
    time.sleep(0.3)
    return "saved"


TOOL_STEPS: dict[str, Callable[..., Any]] = {
    "search_web": search_web,
    "fetch_page": fetch_page,
    "save_note": save_note,
}


@perdure.workflow(name="research_agent")
def research_agent(question: str, max_turns: int = 8) -> str:
    """Model call → tool calls → model call, until the model answers."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a careful research assistant."},
        {"role": "user", "content": question},
    ]
    for _ in range(max_turns):
        reply = call_model(messages)
        if not reply["tool_calls"]:
            return str(reply["content"])
        messages.append(
            {"role": "assistant", "content": reply["content"], "tool_calls": [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in reply["tool_calls"]
            ]}
        )  # fmt: skip
        for call in reply["tool_calls"]:
            tool = TOOL_STEPS.get(call["name"])
            args = json.loads(call["arguments"] or "{}")
            result = tool(**args) if tool else f"unknown tool {call['name']}"
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": str(result)})
    return "The agent ran out of turns."


def main(argv: list[str] | None = None) -> int:
    """Child-process entry point: start (or rejoin) the agent run and wait for its answer."""
    parser = argparse.ArgumentParser(prog="perdure-demo-agent")
    parser.add_argument("--db", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--notes", required=True)
    args = parser.parse_args(argv)
    _paths.update(ledger=args.ledger, notes=args.notes)
    with perdure.Engine(args.db) as engine:
        handle = engine.start(research_agent, QUESTION, id=args.id)
        print(handle.result(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
