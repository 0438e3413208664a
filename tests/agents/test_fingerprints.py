"""Changed prompts, models and tools: each journaled model call records a fingerprint of what it
was asked with, and a replay that meets another one reports it. The real openai and anthropic
SDK clients run against the local fake server (tests/apps/fake_llm.py), which counts requests;
engine tests run on both backends.

What is proved: a run recorded with one system prompt, unloaded while it waits and resumed by
an engine whose code has another prompt, logs one warning naming the position and what
changed (the model by name, other parts as "<part> changed"), replays the recorded answer
without a request and finishes; with ``on_change="error"`` it ends in ERROR with
``CallChangedError`` before the side effect after the call, the journal untouched, and
finishes once the old prompt is deployed again; a changed user message (conversation data) is
not a change; the three APIs, sync and async, journal a fingerprint that holds the model and
hashes, never prompt text; ``perdure.testing.replay`` and ``perdure replay --check`` list
changes under "warn" and diverge under "error"; exports without fingerprints (the corpus)
replay without reports.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

import perdure
from perdure import agents
from perdure.store import StepRow
from perdure.testing import ReplayDivergence, export_run, replay

sys.path.insert(0, str(Path(__file__).parent.parent / "apps"))
sys.path.insert(0, str(Path(__file__).parent.parent / "cli"))
sys.path.insert(0, str(Path(__file__).parent.parent / "corpus"))
import corpus_app
from cli_helpers import one_error_line, run_cli
from fake_llm import CHAT, MESSAGES, RESPONSES, FakeLLM

from conftest import wait_until

KEY = "sk-test-fingerprints"
PROMPT_A = "You are a terse support agent. SECRET-PROMPT-A"
PROMPT_B = "You are a chatty support agent. SECRET-PROMPT-B"
CHAT_CALL = "openai.chat.completions.create"
HASH = re.compile(r"^[0-9a-f]{16}$")


@agents.tool
def lookup(query: str) -> str:
    """Look something up.

    Args:
        query: what to look up.
    """
    return f"facts about {query}"


@agents.tool
def search(text: str) -> str:
    """Search the web.

    Args:
        text: what to search for.
    """
    return f"results for {text}"


@dataclass
class Deployed:
    """What the deployed code asks the model with: a test edits it between recording a run
    and resuming it, as a deployment would."""

    system: str = PROMPT_A
    developer: str | None = None
    model: str = "gpt-a"
    tools: tuple[agents.Tool[Any, Any], ...] = ()
    tool_choice: str | None = None
    response_format: dict[str, Any] | None = None
    user: str = "hello"
    on_change: Any = "warn"
    ledger: list[str] = field(default_factory=list)


code = Deployed()


@pytest.fixture(autouse=True)
def deployed() -> Iterator[Deployed]:
    """Every test starts from the same deployed code and an empty ledger."""
    global code
    code = Deployed()
    yield code


@pytest.fixture
def server() -> Iterator[FakeLLM]:
    """The fake model; it never calls tools (turns=0), so each workflow makes one call."""
    with FakeLLM(turns=0) as fake:
        yield fake


def chat_request() -> dict[str, Any]:
    """The chat completions request of the deployed code."""
    messages = [{"role": "system", "content": code.system}]
    if code.developer is not None:
        messages.append({"role": "developer", "content": code.developer})
    messages.append({"role": "user", "content": code.user})
    kwargs: dict[str, Any] = {"model": code.model, "messages": messages}
    if code.tools:
        kwargs["tools"] = [t.openai_schema() for t in code.tools]
    if code.tool_choice is not None:
        kwargs["tool_choice"] = code.tool_choice
    if code.response_format is not None:
        kwargs["response_format"] = code.response_format
    return kwargs


@perdure.step
def book(answer: str) -> str:
    """The side effect after the model call: it writes the ledger."""
    code.ledger.append(answer)
    return f"booked {answer}"


def ask(base_url: str) -> str:
    """One chat completion of the deployed code, through a durable client."""
    client = agents.durable(openai.OpenAI(base_url=base_url, api_key=KEY),
                            on_change=code.on_change)  # fmt: skip
    return str(client.chat.completions.create(**chat_request()).choices[0].message.content)


@perdure.workflow(name="fp_ask_then_wait")
def ask_then_wait(base_url: str) -> str:
    answer = ask(base_url)
    go = perdure.receive("go")
    return book(f"{answer} ({go})")


@perdure.workflow(name="fp_ask_once")
def ask_once(base_url: str) -> str:
    return book(ask(base_url))


# -- resuming a run under changed code ---------------------------------------------------------


@dataclass
class Resumed:
    """A run recorded by the first engine, then resumed by a second one under changed code."""

    outcome: Any  # the result, or the exception the run ended with
    status: perdure.WorkflowStatus
    before: list[StepRow]  # the journal when the first engine stopped
    after: list[StepRow]  # the journal when the second engine stopped


def record_then_resume(
    db_url: str, server: FakeLLM, change: Callable[[], None], workflow_id: str
) -> Resumed:
    """Run ``ask_then_wait`` until it waits (after its model call) and stop the engine;
    ``change`` the deployed code; start a new engine and send the message it waits for."""
    with perdure.Engine(db_url, shutdown_grace=0.5) as first:
        handle = first.start(ask_then_wait, server.openai_url, id=workflow_id)
        wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
        before = first.store.load_steps(workflow_id)
    assert server.count(CHAT) == 1
    change()
    with perdure.Engine(db_url, shutdown_grace=0.5) as second:
        second.send(workflow_id, "go", "ok")
        handle = second.handle(workflow_id)
        try:
            outcome: Any = handle.result(timeout=30)
        except perdure.PerdureError as exc:
            outcome = exc
        return Resumed(outcome, handle.status(), before, second.store.load_steps(workflow_id))


def change_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings perdure logged about changed calls."""
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    return [text for text in messages if "recorded with other parameters" in text]


def _set(**changes: Any) -> Callable[[], None]:
    def deploy() -> None:
        for name, value in changes.items():
            setattr(code, name, value)

    return deploy


@pytest.mark.parametrize(
    ("change", "reported"),
    [
        (_set(system=PROMPT_B), "system changed"),
        (_set(model="gpt-b"), "model 'gpt-a' -> 'gpt-b'"),
        (_set(tools=(lookup, search)), "tools changed"),
        (_set(user="something else entirely"), None),  # conversation data: not a change
    ],
    ids=["system", "model", "tools", "user-message"],
)
def test_a_resumed_run_warns_of_a_changed_call_and_replays_the_recorded_answer(
    db_url: str,
    server: FakeLLM,
    caplog: pytest.LogCaptureFixture,
    change: Callable[[], None],
    reported: str | None,
) -> None:
    code.tools = (lookup,)
    caplog.set_level(logging.WARNING, logger="perdure")
    resumed = record_then_resume(db_url, server, change, "warned")
    assert resumed.status is perdure.WorkflowStatus.SUCCESS
    # the answer recorded for the first request (the fake answers "done after 0 tool
    # results" when tools are offered), not a new one: no request was sent
    assert resumed.outcome == "booked done after 0 tool results:  (ok)"
    assert server.count(CHAT) == 1
    assert code.ledger == ["done after 0 tool results:  (ok)"]
    assert resumed.after[0] == resumed.before[0]  # the recorded call is left as it was
    warnings = change_warnings(caplog)
    if reported is None:
        assert warnings == []
        return
    [warning] = warnings  # once, though the call replayed in a resumed run
    assert f"'{CHAT_CALL}' at position 0" in warning and f"({reported})" in warning
    assert "workflow 'warned'" in warning


def test_with_on_change_error_the_run_stops_before_the_next_side_effect(
    db_url: str, server: FakeLLM
) -> None:
    code.on_change = "error"
    resumed = record_then_resume(db_url, server, _set(system=PROMPT_B), "strict")
    assert resumed.status is perdure.WorkflowStatus.ERROR
    error = resumed.outcome
    assert isinstance(error, perdure.CallChangedError)
    assert isinstance(error, perdure.NonDeterminismError)
    assert (error.workflow_id, error.position, error.name) == ("strict", "0", CHAT_CALL)
    assert error.changes == ["system changed"]
    assert "position 0" in str(error) and "engine.fork" in str(error)
    assert code.ledger == []  # the side effect after the call never ran
    assert resumed.after == resumed.before  # nothing journaled
    assert server.count(CHAT) == 1
    # deploying the old prompt again lets the run finish from its journal
    code.system = PROMPT_A
    with perdure.Engine(db_url, shutdown_grace=0.5) as engine:
        assert engine.resume("strict").result(timeout=30).startswith("booked hello: ")
    assert server.count(CHAT) == 1 and len(code.ledger) == 1


def test_with_on_change_ignore_nothing_is_reported(
    db_url: str, server: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    code.on_change = "ignore"
    caplog.set_level(logging.WARNING, logger="perdure")
    resumed = record_then_resume(db_url, server, _set(system=PROMPT_B, model="gpt-b"), "quiet")
    assert resumed.status is perdure.WorkflowStatus.SUCCESS
    assert change_warnings(caplog) == [] and server.count(CHAT) == 1


def test_forking_from_the_changed_call_asks_the_model_again(
    engine: perdure.Engine, server: FakeLLM
) -> None:
    engine.run(ask_once, server.openai_url, id="old-prompt", timeout=30)
    code.system, code.on_change = PROMPT_B, "error"
    fork = engine.fork("old-prompt", from_step=0, new_id="new-prompt")
    assert fork.result(timeout=30) == "booked hello: hello"
    assert server.count(CHAT) == 2  # the fork sent the call again, with the new prompt
    [_, again] = [body for path, body in server.requests if path == CHAT]
    assert again["messages"][0]["content"] == PROMPT_B
    [old_call, _] = engine.store.load_steps("old-prompt")
    [new_call, _] = engine.store.load_steps("new-prompt")
    assert old_call.fingerprint != new_call.fingerprint


# -- what is journaled -------------------------------------------------------------------------

SYSTEM_TEXTS = ("SECRET-CHAT-SYSTEM", "SECRET-DEVELOPER", "SECRET-INSTRUCTIONS",
                "SECRET-CLAUDE-SYSTEM")  # fmt: skip
FORMAT = {"type": "json_schema",
          "json_schema": {"name": "answer", "schema": {"type": "object"}}}  # fmt: skip


def three_requests() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A request of each API with every fingerprinted part."""
    chat = {"model": "gpt-chat", "tools": [lookup.openai_schema()], "tool_choice": "auto",
            "response_format": FORMAT,
            "messages": [{"role": "system", "content": SYSTEM_TEXTS[0]},
                         {"role": "user", "content": "SECRET-USER-TEXT"}]}  # fmt: skip
    responses = {"model": "gpt-resp", "instructions": SYSTEM_TEXTS[2],
                 "tools": [lookup.responses_schema()],
                 "text": {"format": {"type": "json_schema", "name": "answer",
                                     "schema": {"type": "object"}}},
                 "input": [{"role": "developer", "content": SYSTEM_TEXTS[1]},
                           {"role": "user", "content": "SECRET-USER-TEXT"}]}  # fmt: skip
    claude = {"model": "claude-x", "max_tokens": 50, "system": SYSTEM_TEXTS[3],
              "tools": [lookup.anthropic_schema()], "tool_choice": {"type": "auto"},
              "messages": [{"role": "user", "content": "SECRET-USER-TEXT"}]}  # fmt: skip
    return chat, responses, claude


@perdure.workflow(name="fp_three_apis")
def three_apis(openai_url: str, anthropic_url: str) -> int:
    gpt = agents.durable(openai.OpenAI(base_url=openai_url, api_key=KEY))
    claude = agents.durable(anthropic.Anthropic(base_url=anthropic_url, api_key=KEY))
    chat, responses, message = three_requests()
    gpt.chat.completions.create(**chat)
    gpt.responses.create(**responses)
    claude.messages.create(**message)
    return 3


@perdure.workflow(name="fp_three_apis_async")
async def three_apis_async(openai_url: str, anthropic_url: str) -> int:
    gpt = agents.durable(openai.AsyncOpenAI(base_url=openai_url, api_key=KEY))
    claude = agents.durable(anthropic.AsyncAnthropic(base_url=anthropic_url, api_key=KEY))
    chat, responses, message = three_requests()
    await gpt.chat.completions.create(**chat)
    await gpt.responses.create(**responses)
    await claude.messages.create(**message)
    return 3


@pytest.mark.parametrize("workflow", [three_apis, three_apis_async], ids=["sync", "async"])
def test_each_api_journals_a_fingerprint_of_model_and_hashes_without_prompt_text(
    engine: perdure.Engine, server: FakeLLM, workflow: Any
) -> None:
    engine.run(workflow, server.openai_url, server.anthropic_url, id="apis", timeout=30)
    assert (server.count(CHAT), server.count(RESPONSES), server.count(MESSAGES)) == (1, 1, 1)
    rows = engine.store.load_steps("apis")
    prints = {row.name: json.loads(row.fingerprint or "null") for row in rows}
    assert {name: sorted(parts) for name, parts in prints.items()} == {
        CHAT_CALL: ["format", "model", "system", "tool_choice", "tools"],
        "openai.responses.create": ["format", "model", "system", "tools"],
        "anthropic.messages.create": ["model", "system", "tool_choice", "tools"],
    }
    assert [parts["model"] for parts in prints.values()] == ["gpt-chat", "gpt-resp", "claude-x"]
    for parts in prints.values():
        assert all(HASH.match(value) for name, value in parts.items() if name != "model")
    journal = json.dumps([row.fingerprint for row in rows])
    assert "SECRET" not in journal  # neither prompt nor user text, nor the API key
    exported = export_run(engine.store, "apis")["steps"]
    assert [step["fingerprint"] for step in exported] == [row.fingerprint for row in rows]


def test_the_system_part_hashes_the_prompt_and_not_the_conversation(
    engine: perdure.Engine, server: FakeLLM
) -> None:
    """Two runs with the same prompt and other user messages journal equal fingerprints;
    another prompt gives another system hash and leaves the other parts alone."""
    code.tools = (lookup,)
    engine.run(ask_once, server.openai_url, id="p1", timeout=30)
    code.user = "a different question"
    engine.run(ask_once, server.openai_url, id="p2", timeout=30)
    code.system = PROMPT_B
    engine.run(ask_once, server.openai_url, id="p3", timeout=30)
    first, second, third = (json.loads(engine.store.load_steps(i)[0].fingerprint or "{}")
                            for i in ("p1", "p2", "p3"))  # fmt: skip
    assert first == second
    assert third["system"] != first["system"] and third["tools"] == first["tools"]
    assert set(first) == {"model", "system", "tools"}  # absent parts are left out


# -- offline replay checks ---------------------------------------------------------------------


@pytest.fixture
def recorded(engine: perdure.Engine, server: FakeLLM) -> dict[str, Any]:
    """An export of ``ask_once`` recorded with the default deployed code plus a tool."""
    code.tools = (lookup,)
    engine.run(ask_once, server.openai_url, id="rec", timeout=30)
    document: dict[str, Any] = json.loads(json.dumps(export_run(engine.store, "rec")))
    code.ledger.clear()
    return document


WARNED = f"position 0, {CHAT_CALL}: "


@pytest.mark.parametrize(
    ("change", "reported"),
    [
        ({"system": PROMPT_B}, "system changed"),
        ({"developer": "also be polite"}, "system changed"),  # a developer message added
        ({"model": "gpt-b"}, "model 'gpt-a' -> 'gpt-b'"),
        ({"tools": (lookup, search)}, "tools changed"),
        ({"tools": ()}, "tools changed"),  # removed
        ({"tool_choice": "required"}, "tool_choice changed"),  # added
        ({"response_format": {"type": "json_object"}}, "format changed"),
        ({"model": "gpt-b", "system": PROMPT_B},
         "model 'gpt-a' -> 'gpt-b'; system changed"),
        ({"user": "another question"}, None),
    ],
    ids=["system", "developer", "model", "tools", "no-tools", "tool-choice", "format",
         "model-and-system", "user-message"],
)  # fmt: skip
def test_a_replay_check_lists_changed_calls_under_warn_and_diverges_under_error(
    recorded: dict[str, Any], change: dict[str, Any], reported: str | None
) -> None:
    global code
    code = replace(code, **change)
    report = replay(recorded, ask_once)
    assert report.finished and report.replayed == 2
    assert report.call_changes == (() if reported is None else (WARNED + reported,))
    code = replace(code, on_change="error")
    if reported is None:
        assert replay(recorded, ask_once).call_changes == ()
        return
    with pytest.raises(ReplayDivergence) as caught:
        replay(recorded, ask_once)
    err = caught.value
    assert (err.position, err.recorded, err.current) == ("0", CHAT_CALL, CHAT_CALL)
    assert "diverged at position 0" in str(err) and reported in str(err)
    assert "on_change='error'" in str(err)
    code = replace(code, on_change="ignore")
    assert replay(recorded, ask_once).call_changes == ()
    assert code.ledger == []  # no step body ran


def test_the_same_code_replays_without_a_report(recorded: dict[str, Any]) -> None:
    code.on_change = "error"
    report = replay(recorded, ask_once)
    assert report.finished and report.call_changes == ()


def test_an_export_without_fingerprints_replays_without_reports(recorded: dict[str, Any]) -> None:
    for step in recorded["steps"]:
        del step["fingerprint"]  # as perdure wrote exports before fingerprints
    code.system, code.model, code.on_change = PROMPT_B, "gpt-b", "error"
    report = replay(recorded, ask_once)  # nothing to compare with: no divergence
    assert report.finished and report.call_changes == ()


def test_the_corpus_agent_run_without_fingerprints_still_replays() -> None:
    path = Path(corpus_app.__file__).parent / "corpus-agent.json"
    steps = json.loads(path.read_text())["steps"]
    assert all("fingerprint" not in step for step in steps)
    report = replay(path, corpus_app.agent)
    assert report.finished and report.replayed == len(steps)
    assert report.call_changes == ()


@perdure.workflow(name="fp_agent")
def agent_run(base_url: str, wrap: bool) -> str:
    client: Any = openai.OpenAI(base_url=base_url, api_key=KEY)
    if wrap:  # a client made durable first (its own policy: the default)
        client = agents.durable(client)
    agent = agents.Agent(client, model=code.model, tools=[lookup], instructions=code.system,
                         on_change=code.on_change)  # fmt: skip
    return agent.run("TURNS=2 what is perdure?").text


@pytest.mark.parametrize("wrap", [False, True], ids=["raw-client", "durable-client"])
def test_an_agent_passes_its_on_change_policy_to_its_model_calls(
    engine: perdure.Engine, server: FakeLLM, wrap: bool
) -> None:
    text = engine.run(agent_run, server.openai_url, wrap, id="agent", timeout=30)
    assert text.startswith("done after 2 tool results")
    export = json.loads(json.dumps(export_run(engine.store, "agent")))
    calls = [s for s in export["steps"] if s["name"] == CHAT_CALL]
    assert len(calls) == 3 and len({s["fingerprint"] for s in calls}) == 1
    code.system = PROMPT_B
    report = replay(export, agent_run)  # instructions are the system message: every turn
    assert report.call_changes == tuple(f"position {s['key']}, {CHAT_CALL}: system changed"
                                        for s in calls)  # fmt: skip
    code.on_change = "error"
    with pytest.raises(ReplayDivergence, match=r"diverged at position 0.*system changed"):
        replay(export, agent_run)
    assert server.count(CHAT) == 3


def test_an_unknown_policy_is_refused() -> None:
    client = openai.OpenAI(base_url="http://127.0.0.1:9", api_key=KEY)
    with pytest.raises(perdure.ConfigurationError, match="on_change is one of 'warn', 'error'"):
        agents.durable(client, on_change="fail")  # type: ignore[arg-type]
    with pytest.raises(perdure.ConfigurationError, match="not 'strict'"):
        agents.Agent(client, model="m", on_change="strict")  # type: ignore[arg-type]
    with pytest.raises(perdure.ConfigurationError, match="not 'strict'"):
        agents.Agent(agents.durable(client), model="m", on_change="strict")  # type: ignore[arg-type]


# -- perdure replay --check --------------------------------------------------------------------

APP = """
import openai
import perdure
from perdure import agents


@perdure.step
def book(answer: str) -> str:
    return f"booked {{answer}}"


@perdure.workflow(name="fp_ask_once")
def ask_once(base_url: str) -> str:
    client = agents.durable(openai.OpenAI(base_url=base_url, api_key="k"), on_change={policy!r})
    answer = client.chat.completions.create(
        model="gpt-a",
        messages=[{{"role": "system", "content": {system!r}}},
                  {{"role": "user", "content": "hello"}}],
    )
    return book(str(answer.choices[0].message.content))
"""


def test_replay_check_prints_changed_calls_as_warnings_and_fails_under_error(
    tmp_path: Path, server: FakeLLM
) -> None:
    with perdure.Engine(f"sqlite:///{tmp_path / 'perdure.db'}", shutdown_grace=0.5) as engine:
        engine.run(ask_once, server.openai_url, id="cli", timeout=30)
        export = tmp_path / "run.json"
        export.write_text(json.dumps(export_run(engine.store, "cli")))
    app = tmp_path / "fp_app.py"
    app.write_text(APP.format(policy="warn", system=PROMPT_A))
    done = run_cli("replay", "--check", str(export), "--app", str(app))
    assert (done.returncode, done.stdout, done.stderr) == (0, "replayed 2 steps: compatible\n", "")
    app.write_text(APP.format(policy="warn", system=PROMPT_B))
    done = run_cli("replay", "--check", str(export), "--app", str(app))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "replayed 2 steps: compatible (1 call changed)\n"
    assert done.stderr == (f"perdure: warning: position 0, {CHAT_CALL}: system changed (the "
                           "recorded answer was replayed)\n")  # fmt: skip
    done = run_cli("replay", "--check", str(export), "--app", str(app), "--json")
    report = json.loads(done.stdout)
    assert (done.returncode, report["ok"], report["divergence"]) == (0, True, None)
    assert report["call_changes"] == [f"position 0, {CHAT_CALL}: system changed"]
    app.write_text(APP.format(policy="error", system=PROMPT_B))
    done = run_cli("replay", "--check", str(export), "--app", str(app))
    assert done.returncode == 1
    line = one_error_line(done)
    assert "diverged at position 0" in line and "system changed" in line and CHAT_CALL in line
    done = run_cli("replay", "--check", str(export), "--app", str(app), "--json")
    report = json.loads(done.stdout)
    assert (done.returncode, report["ok"], report["divergence"]["position"]) == (1, False, "0")
