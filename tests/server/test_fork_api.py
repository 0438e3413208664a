"""``POST /api/v1/workflows/{id}/fork`` over real HTTP (uvicorn on a loopback port).

A three-step workflow (fetch, ask a scripted model, publish) counts its step calls in a
ledger. Forked through the API of a server whose engine has it registered, the fork runs at
once in that engine; forked through a server without an engine, it is recorded PENDING with
the original's code version and runs when a worker opens. What is checked: 201 with the
fork's record (origin, position, version), the steps before the position replay, the steps
from it run (from the next one with ``replace_output``, whose value, null included, is what
the workflow sees), the original is unchanged; a read token gets 403 and creates nothing;
a bad position or value is a 4xx error body with a stable code, an unknown workflow 404.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from server_helpers import serving

import perdure
from perdure.server import create_app, load_tokens

OPERATOR = "op-fork-secret-0c9e7a1b"
READER = "rd-fork-secret-5d2f8e3c"
TOKENS = load_tokens(f"operator:olivia:{OPERATOR}\nread:rita:{READER}")
AS_OPERATOR = {"Authorization": f"Bearer {OPERATOR}"}
AS_READER = {"Authorization": f"Bearer {READER}"}

ledger: Counter[str] = Counter()
published: list[Any] = []
model = {"answer": "42 is prime"}


@perdure.step
def api_fork_fetch(question: str) -> str:
    ledger["fetch"] += 1
    return f"context for {question}"


@perdure.step
def api_fork_ask(context: str) -> Any:
    ledger["ask"] += 1
    return model["answer"]


@perdure.step
def api_fork_publish(answer: Any) -> str:
    ledger["publish"] += 1
    published.append(answer)
    return f"published {answer!r}"


@perdure.workflow(name="api_fork_flow")
def api_fork_flow(question: str) -> str:
    return api_fork_publish(api_fork_ask(api_fork_fetch(question)))


ASK = 1  # the journal position of the model call


def wf(workflow_id: str, *rest: str) -> str:
    """The URL path of a workflow (and of something under it), every part percent-encoded."""
    return "/api/v1/workflows/" + "/".join(quote(part, safe="") for part in (workflow_id, *rest))


def error_of(response: httpx.Response, status: int) -> str:
    """The stable error code of an error response, after checking its status and shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return str(body["error"]["code"])


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    """A database holding one finished run, ``q-1``, whose model answer was wrong."""
    ledger.clear()
    published.clear()
    model["answer"] = "42 is prime"
    db = f"sqlite:///{tmp_path / 'perdure.db'}"
    with perdure.Engine(db, shutdown_grace=0.5) as engine:
        assert engine.run(api_fork_flow, "is 42 prime?", id="q-1", timeout=20) == (
            "published '42 is prime'"
        )
    yield db


@contextmanager
def api(url: str, *, worker: bool) -> Iterator[httpx.Client]:
    """An HTTP client on a served app over ``url``, with an engine in the server (which has
    the workflow registered) when ``worker``."""
    with ExitStack() as stack:
        engine = stack.enter_context(perdure.Engine(url, shutdown_grace=0.5)) if worker else None
        base = stack.enter_context(serving(create_app(url, tokens=TOKENS, engine=engine)))
        yield stack.enter_context(httpx.Client(base_url=base, timeout=40))


def fork(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    """POST a fork of ``q-1`` as the operator."""
    return client.post(wf("q-1", "fork"), headers=AS_OPERATOR, json=body)


def result(client: httpx.Client, workflow_id: str) -> dict[str, Any]:
    answer = client.get(wf(workflow_id, "result"), params={"wait": 20}, headers=AS_READER)
    data: dict[str, Any] = answer.json()
    return data


def test_an_operator_forks_and_the_fork_runs_in_the_server(url: str) -> None:
    with api(url, worker=True) as client:
        original = client.get(wf("q-1"), headers=AS_READER).json()
        model["answer"] = "42 is not prime"  # the model is fixed: run the call again
        forked = fork(client, {"from_step": ASK, "new_id": "q-1 fixed/ü"})
        assert forked.status_code == 201, forked.text
        record = forked.json()
        assert (record["id"], record["name"]) == ("q-1 fixed/ü", "api_fork_flow")
        assert (record["forked_from"], record["forked_at"]) == ("q-1", ASK)
        assert record["version"] == original["version"] is not None
        assert result(client, "q-1 fixed/ü") == {
            "id": "q-1 fixed/ü", "status": "SUCCESS", "output": "published '42 is not prime'"
        }  # fmt: skip
        assert ledger == Counter(fetch=1, ask=2, publish=2)  # fetch replayed

        # With a replacement, the model is not asked: the workflow sees the given value.
        replaced = fork(client, {"from_step": ASK, "replace_output": {"prime": False}})
        assert replaced.status_code == 201, replaced.text
        fork_id = replaced.json()["id"]
        assert fork_id.startswith("q-1-fork-")
        assert result(client, fork_id)["output"] == "published {'prime': False}"
        assert ledger == Counter(fetch=1, ask=2, publish=3)
        assert published[-1] == {"prime": False}

        # null is a value to record, not the absence of one.
        nulled = fork(client, {"from_step": ASK, "replace_output": None})
        assert result(client, nulled.json()["id"])["output"] == "published None"
        assert ledger == Counter(fetch=1, ask=2, publish=4)

        shown = client.get(wf("q-1 fixed/ü"), headers=AS_READER).json()
        assert shown["forked_from"] == "q-1" and len(shown["steps"]) == 3
        after = client.get(wf("q-1"), headers=AS_READER).json()
        assert after == original


def test_without_an_engine_the_fork_waits_for_a_worker(url: str) -> None:
    with api(url, worker=False) as client:
        forked = fork(client, {"from_step": ASK, "replace_output": "42 is composite"})
        assert forked.status_code == 201, forked.text
        record = forked.json()
        assert record["status"] == "PENDING" and record["owner"] is None
        version = client.get(wf("q-1"), headers=AS_READER).json()["version"]
        assert record["version"] == version  # a worker of the original's version runs it
    assert ledger == Counter(fetch=1, ask=1, publish=1)
    with perdure.Engine(url, shutdown_grace=0.5) as worker:  # its first sweep takes the fork
        assert worker.handle(record["id"]).result(timeout=30) == "published '42 is composite'"
    assert ledger == Counter(fetch=1, ask=1, publish=2)


def test_a_read_token_cannot_fork(url: str) -> None:
    with api(url, worker=True) as client:
        refused = client.post(wf("q-1", "fork"), headers=AS_READER, json={"from_step": ASK})
        assert error_of(refused, 403) == "forbidden"
        assert error_of(client.post(wf("q-1", "fork"), json={"from_step": ASK}),
                        401) == "unauthorized"  # fmt: skip
        listed = client.get("/api/v1/workflows", headers=AS_READER).json()["workflows"]
        assert [w["id"] for w in listed] == ["q-1"]
    assert ledger == Counter(fetch=1, ask=1, publish=1)


def _nested(depth: int) -> Any:
    """A JSON value nested ``depth`` lists deep: valid JSON, too deep for the journal."""
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"from_step": 3, "replace_output": 1}, 400, "invalid_request"),  # no entry 3
        ({"from_step": 4}, 400, "invalid_request"),  # past the journal's end
        ({"from_step": -1}, 400, "invalid_request"),
        ({"from_step": "1"}, 400, "invalid_request"),
        ({"from_step": True}, 400, "invalid_request"),
        ({}, 400, "invalid_request"),
        ({"from_step": 1, "extra": 1}, 400, "invalid_request"),
        ({"from_step": 1, "new_id": ""}, 400, "invalid_request"),
        ({"from_step": 1, "new_id": "a\nb"}, 400, "invalid_request"),
        ({"from_step": 1, "new_id": "q-1"}, 409, "workflow_conflict"),
        ({"from_step": 1, "replace_output": _nested(300)}, 400, "invalid_payload"),
    ],
)  # fmt: skip
def test_bad_fork_requests_are_refused_with_a_stable_code(
    url: str, body: dict[str, Any], status: int, code: str
) -> None:
    with api(url, worker=True) as client:
        before = client.get(wf("q-1"), headers=AS_READER).json()
        response = fork(client, body)
        assert error_of(response, status) == code
        listed = client.get("/api/v1/workflows", headers=AS_READER).json()["workflows"]
        assert [w["id"] for w in listed] == ["q-1"]
        assert client.get(wf("q-1"), headers=AS_READER).json() == before


def test_forking_an_unknown_workflow_is_404(url: str) -> None:
    with api(url, worker=True) as client:
        response = client.post(wf("nope", "fork"), headers=AS_OPERATOR, json={"from_step": 0})
        assert error_of(response, 404) == "workflow_not_found"
        assert "nope" in response.json()["error"]["message"]


def test_the_openapi_document_describes_the_fork_route(url: str) -> None:
    with api(url, worker=False) as client:
        document = client.get("/api/v1/openapi.json", headers=AS_READER).json()
    operation = document["paths"]["/api/v1/workflows/{workflow_id}/fork"]["post"]
    assert set(operation["responses"]) >= {"201", "400", "401", "403", "404", "409"}
    schema = document["components"]["schemas"]["ForkRequest"]
    assert schema["required"] == ["from_step"]
    assert set(schema["properties"]) == {"from_step", "new_id", "replace_output"}
    workflow = document["components"]["schemas"]["WorkflowOut"]["properties"]
    assert {"version", "forked_from", "forked_at"} <= set(workflow)
