"""The demo's research agent: a ``perdure.agents.Agent`` over the official openai SDK.

Run by ``perdure demo`` in a child process (``python -m perdure.cli._demo_agent ...``). The
model is an offline scripted one by default, served in-process as an HTTP transport of the
SDK's own HTTP library, so every model call goes through ``openai.OpenAI`` and is journaled
by ``perdure.agents``; with ``OPENAI_BASE_URL`` set, any OpenAI-compatible endpoint answers
instead (``OPENAI_MODEL`` picks the model, default ``gpt-4o-mini``).

Every model request and every tool body appends ``<pid> <step name>`` to a ledger file, so
the demo can show which process really executed what. The tools read an offline corpus;
``save_note`` has a real side effect: it appends to a notes file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import perdure
from perdure import PerdureError, agents

#: the journal's name for a model call (and the ledger's)
MODEL_STEP = "openai.chat.completions.create"

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


def _scripted_transport(transport_module: Any) -> Any:
    """An in-process stand-in for an OpenAI-compatible server, as an HTTP transport of the
    SDK's own HTTP library: the scripted model answers in the chat completions format."""

    def handle(request: Any) -> Any:
        body = json.loads(request.content)
        reply = _scripted_reply(body["messages"])
        calls = [{"id": c["id"], "type": "function",
                  "function": {"name": c["name"], "arguments": c["arguments"]}}
                 for c in reply["tool_calls"]]  # fmt: skip
        message: dict[str, Any] = {"role": "assistant", "content": reply["content"]}
        if calls:
            message["tool_calls"] = calls
        usage = {**reply["usage"],
                 "total_tokens": sum(reply["usage"].values())}  # fmt: skip
        return transport_module.Response(200, json={
            "id": f"scripted-{len(body['messages'])}", "object": "chat.completion",
            "created": int(time.time()), "model": body["model"], "usage": usage,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if calls else "stop"}],
        })  # fmt: skip

    return transport_module.MockTransport(handle)


class _Ledgered:
    """An HTTP transport that writes each model request to the ledger, then sends it on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def handle_request(self, request: Any) -> Any:
        _ledger(MODEL_STEP)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def make_client() -> Any:
    """An ``openai.OpenAI`` client: for ``OPENAI_BASE_URL`` when it is set, else for the
    offline scripted model. Either way every request is written to the ledger."""
    try:
        import openai
    except ImportError:
        raise PerdureError(
            "the demo's agent uses the openai SDK, which is not installed: "
            "pip install 'perdure[openai]'"
        ) from None
    try:  # the HTTP library the SDK itself uses (httpx2 in recent releases, httpx before)
        http: Any = __import__("httpx2")
    except ImportError:
        http = __import__("httpx")
    if os.environ.get("OPENAI_BASE_URL"):
        inner = http.HTTPTransport()
        return openai.OpenAI(http_client=http.Client(transport=_Ledgered(inner)))
    scripted = _Ledgered(_scripted_transport(http))
    return openai.OpenAI(api_key="offline", base_url="http://scripted-model.invalid/v1",
                         http_client=http.Client(transport=scripted))  # fmt: skip


def model_name() -> str:
    """What answers the model calls in this environment."""
    if os.environ.get("OPENAI_BASE_URL"):
        return f"{os.environ.get('OPENAI_MODEL', 'gpt-4o-mini')} at {os.environ['OPENAI_BASE_URL']}"
    return "scripted (offline)"


# -- the tools -----------------------------------------------------------------------------


@agents.tool
def search_web(query: str) -> list[str]:
    """Search the web; returns result URLs.

    Args:
        query: what to search for.
    """
    _ledger("tool.search_web")
    time.sleep(0.3)
    return list(CORPUS)


@agents.tool
def fetch_page(url: str) -> str:
    """Fetch a page's text.

    Args:
        url: the page's address.
    """
    _ledger("tool.fetch_page")
    time.sleep(0.3)
    return CORPUS.get(url, f"404: {url} not found")


@agents.tool
def save_note(text: str) -> str:
    """Save a research note for the user (a real side effect: a line in the notes file).

    Args:
        text: the note.
    """
    _ledger("tool.save_note")
    with open(_paths["notes"], "a", encoding="utf-8") as f:
        f.write(text + "\n")
    time.sleep(0.3)
    return "saved"


@perdure.workflow(name="research_agent")
def research_agent(question: str, max_turns: int = 8) -> str:
    """Model call → tool calls → model call, until the model answers (perdure.agents.Agent)."""
    agent = agents.Agent(
        make_client(), model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
        tools=[search_web, fetch_page, save_note],
        instructions="You are a careful research assistant.", max_turns=max_turns,
    )  # fmt: skip
    return agent.run(question).text


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
