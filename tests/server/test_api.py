"""The HTTP API of ``perdure serve``, over real HTTP: uvicorn on a free loopback port (in a
thread, with an engine in this process running ``tests/apps/api_app.py``'s workflows), and
the real ``perdure serve`` command in a subprocess.

What is checked: every API route refuses a request without a valid token (401) and an
operator route a read token (403); start → message → approval → result round trips (both
backends), approve and reject; errors are JSON with stable codes; the OpenAPI document is
valid and schemathesis fuzzes every operation without a 500; the token configuration is
parsed strictly without ever echoing a secret; ``perdure serve`` refuses to run without
tokens and listens on 127.0.0.1 by default.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from server_helpers import serving

import perdure
from conftest import APPS, wait_until
from perdure.server import Token, create_app, load_tokens

OPERATOR = "op-7Hq2-secret-5c1e9a"
READER = "rd-x91-secret-0b7d4f"
TOKENS = load_tokens(f"operator:olivia:{OPERATOR}\nread:rita:{READER}")
AS_OPERATOR = {"Authorization": f"Bearer {OPERATOR}"}
AS_READER = {"Authorization": f"Bearer {READER}"}
ODD_ID = "order 7 · ünïcode/with slash?#%"


def _load_app_module() -> None:
    """Register the workflows of tests/apps/api_app.py in this process (once)."""
    spec = importlib.util.spec_from_file_location("api_app", APPS / "api_app.py")
    assert spec is not None and spec.loader is not None
    sys.modules["api_app"] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if "api_app" not in sys.modules:
    _load_app_module()


# -- serving -------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'perdure.db'}"


@contextmanager
def api(url: str, *, worker: bool = True) -> Iterator[httpx.Client]:
    """An HTTP client on a served app over ``url`` (with an engine in this process when
    ``worker``), sending no token unless a request says so."""
    with ExitStack() as stack:
        engine = stack.enter_context(perdure.Engine(url, shutdown_grace=0.5)) if worker else None
        base = stack.enter_context(serving(create_app(url, tokens=TOKENS, engine=engine)))
        yield stack.enter_context(httpx.Client(base_url=base, timeout=40))


@pytest.fixture
def client(sqlite_url: str) -> Iterator[httpx.Client]:
    with api(sqlite_url) as http:
        yield http


def wf(workflow_id: str, *rest: str) -> str:
    """The URL path of a workflow (and of something under it), every part percent-encoded."""
    parts = [quote(part, safe="") for part in (workflow_id, *rest)]
    return "/api/v1/workflows/" + "/".join(parts)


def error_of(response: httpx.Response, status: int) -> str:
    """The stable error code of an error response, after checking its status and shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return str(body["error"]["code"])


def api_operations(client: httpx.Client) -> list[tuple[str, str]]:
    """(method, concrete path) of every operation of the OpenAPI document under /api/v1,
    path parameters filled in, and of the document itself."""
    document = client.get("/api/v1/openapi.json", headers=AS_READER).json()
    found = [("GET", "/api/v1/openapi.json")]
    for path, methods in document["paths"].items():
        for method in methods:
            concrete = path.replace("{workflow_id}", quote(ODD_ID, safe=""))
            found.append((method.upper(), concrete.replace("{name}", "ship")))
    return [op for op in found if op[1].startswith("/api/v1/")]


# -- authentication and roles ------------------------------------------------------------


def test_every_api_route_refuses_a_missing_or_wrong_token(client: httpx.Client) -> None:
    operations = api_operations(client)
    assert len(operations) >= 13
    wrong = [
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": f"Bearer {OPERATOR}x"},
        {"Authorization": f"Basic {OPERATOR}"},
        {"Authorization": "Bearer"},
        {"Authorization": OPERATOR},
    ]
    for method, path in [*operations, ("GET", "/api/v1/no-such-route")]:
        for headers in wrong:
            response = client.request(method, path, headers=headers, content=b"{not json")
            assert error_of(response, 401) == "unauthorized", (method, path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
            assert OPERATOR not in response.text
    document = client.get("/api/v1/openapi.json", headers=AS_READER).json()
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    for path, methods in document["paths"].items():
        for operation in methods.values():
            expected: list[dict[str, list[str]]] = [] if path == "/healthz" else [{"bearer": []}]
            assert operation.get("security", []) == expected, path


def test_read_token_is_forbidden_on_every_operator_route(client: httpx.Client) -> None:
    operations = api_operations(client)
    acting = [(m, p) for m, p in operations if m != "GET"]
    assert {p.rsplit("/", 1)[-1] for _, p in acting} >= {
        "workflows", "cancel", "resume", "retry", "messages", "approve", "reject",
    }  # fmt: skip
    for method, path in acting:
        for body in (b"", b"{not json", b'{"topic": "go", "payload": 1}'):
            response = client.request(method, path, headers=AS_READER, content=body)
            assert error_of(response, 403) == "forbidden", (method, path, body)
    # Reading is what a read token is for; an operator token can do everything it can.
    for headers in (AS_READER, AS_OPERATOR):
        assert client.get("/api/v1/workflows", headers=headers).status_code == 200
    who = client.get("/api/v1/whoami", headers=AS_READER).json()
    assert who == {"name": "rita", "role": "read"}


def test_public_routes_need_no_token(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"ok": True}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for default in ("/docs", "/redoc", "/openapi.json"):  # FastAPI's own pages are off
        assert error_of(client.get(default), 401) == "unauthorized", default  # deny by default
        assert error_of(client.get(default, headers=AS_READER), 404) == "not_found", default


@pytest.mark.parametrize("root_path", ["", "/ap", "/api/", "/perdure"])
def test_a_route_added_later_is_still_behind_the_gate(sqlite_url: str, root_path: str) -> None:
    """Deny by default: the gate guards every path but the dashboard's files and /healthz,
    whatever prefix the app is served under, even a route that declares no role."""
    app = create_app(sqlite_url, tokens=TOKENS)
    app.add_api_route("/api/v1/unguarded", lambda: {"leak": True})
    app.add_api_route("/internal", lambda: {"leak": True})
    from starlette.testclient import TestClient

    with TestClient(app, root_path=root_path) as http:
        for path in ("/api/v1/unguarded", "/internal"):
            for method in ("GET", "HEAD", "POST", "OPTIONS"):
                answer = http.request(method, root_path.rstrip("/") + path)
                assert answer.status_code == 401, (method, path, answer.text)
            if not root_path.endswith("/"):  # the route itself works, with a token
                answer = http.get(root_path + path, headers=AS_READER)
                assert answer.json() == {"leak": True}
        if not root_path.endswith("/"):
            assert http.get(root_path + "/healthz").status_code == 200


def test_the_dashboard_page_forbids_other_origins_and_frames(client: httpx.Client) -> None:
    page = client.get("/")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"


# -- the round trip ------------------------------------------------------------------------


def _approval(client: httpx.Client, workflow_id: str) -> dict[str, Any]:
    """The pending approval of ``workflow_id``, once the workflow asked for it."""
    found: list[dict[str, Any]] = []

    def asked() -> bool:
        listed = client.get("/api/v1/approvals", headers=AS_READER).json()["approvals"]
        found[:] = [a for a in listed if a["workflow_id"] == workflow_id]
        return bool(found)

    wait_until(asked, timeout=20)
    return found[0]


def _start_and_send(client: httpx.Client, workflow_id: str) -> None:
    started = client.post(
        "/api/v1/workflows",
        headers=AS_OPERATOR,
        json={"name": "api_order", "args": ["o-7"], "id": workflow_id},
    )
    assert started.status_code == 201, started.text
    assert started.json()["id"] == workflow_id and started.json()["name"] == "api_order"
    sent = client.post(
        wf(workflow_id, "messages"),
        headers=AS_OPERATOR,
        json={"topic": "go", "payload": {"qty": 2}, "key": "m-1"},
    )
    assert sent.status_code == 202 and sent.json() == {"sent": True}
    again = client.post(
        wf(workflow_id, "messages"),
        headers=AS_OPERATOR,
        json={"topic": "go", "payload": {"qty": 2}, "key": "m-1"},
    )
    assert again.json() == {"sent": False}


def test_start_message_approve_result_round_trip(db_url: str) -> None:
    with api(db_url) as client:
        _start_and_send(client, ODD_ID)
        approval = _approval(client, ODD_ID)
        assert approval["name"] == "ship" and approval["status"] == "PENDING"
        assert approval["details"] == {"order": "o-7", "message": {"qty": 2}}
        # The request is recorded just before the workflow unloads to wait for it.
        wait_until(lambda: client.get(wf(ODD_ID, "result"), headers=AS_READER).json()
                   == {"id": ODD_ID, "status": "WAITING"})  # fmt: skip

        decided = client.post(
            wf(ODD_ID, "approvals", "ship", "approve"),
            headers=AS_OPERATOR,
            json={"comment": "ship it"},
        )
        assert decided.status_code == 200 and decided.json() == {"ok": True}
        result = client.get(wf(ODD_ID, "result"), params={"wait": 20}, headers=AS_READER)
        assert result.json() == {
            "id": ODD_ID,
            "status": "SUCCESS",
            "output": {"order": "o-7", "message": {"qty": 2}, "approved": True,
                       "by": "olivia", "comment": "ship it"},
        }  # fmt: skip

        shown = client.get(wf(ODD_ID), headers=AS_READER).json()
        assert shown["status"] == "SUCCESS" and shown["steps"] and "usage" in shown
        listed = client.get("/api/v1/workflows", params={"name": "api_order"}, headers=AS_READER)
        assert [w["id"] for w in listed.json()["workflows"]] == [ODD_ID]
        decided_list = client.get("/api/v1/approvals", params={"all": "true"}, headers=AS_READER)
        (done,) = decided_list.json()["approvals"]
        assert done["status"] == "APPROVED" and done["decided_by"] == "olivia"
        again = client.post(wf(ODD_ID, "approvals", "ship", "approve"), headers=AS_OPERATOR)
        assert error_of(again, 409) == "approval_not_pending"


def test_reject_round_trip(client: httpx.Client) -> None:
    _start_and_send(client, "order-rejected")
    _approval(client, "order-rejected")
    rejected = client.post(wf("order-rejected", "approvals", "ship", "reject"), headers=AS_OPERATOR)
    assert rejected.status_code == 200, rejected.text
    result = client.get(wf("order-rejected", "result"), params={"wait": 20}, headers=AS_READER)
    output = result.json()["output"]
    assert output["approved"] is False and output["by"] == "olivia" and output["comment"] is None


def test_result_long_poll_returns_when_the_wait_is_over(client: httpx.Client) -> None:
    client.post("/api/v1/workflows", headers=AS_OPERATOR,
                json={"name": "api_order", "args": ["o-8"], "id": "slow"})  # fmt: skip
    began = time.monotonic()
    response = client.get(wf("slow", "result"), params={"wait": 0.6}, headers=AS_READER)
    assert response.json()["status"] in ("RUNNING", "WAITING")
    assert 0.5 <= time.monotonic() - began < 5
    too_long = client.get(wf("slow", "result"), params={"wait": 31}, headers=AS_READER)
    assert error_of(too_long, 400) == "invalid_request"


def test_cancel_resume_and_retry(client: httpx.Client) -> None:
    app_module: Any = sys.modules["api_app"]
    client.post("/api/v1/workflows", headers=AS_OPERATOR,
                json={"name": "api_fail", "args": ["boom"], "id": "failing"})  # fmt: skip
    ended = client.get(wf("failing", "result"), params={"wait": 20}, headers=AS_READER).json()
    assert ended["status"] == "ERROR" and ended["error"]["message"] == "boom"
    assert app_module.CHECKS["boom"] == 1

    def run_ended_after(before: str) -> bool:
        info = client.get(wf("failing"), headers=AS_READER).json()
        return bool(info["status"] == "ERROR" and info["updated_at"] > before)

    # resume replays the recorded failure: the run ends ERROR again, the step did not run
    before = client.get(wf("failing"), headers=AS_READER).json()["updated_at"]
    response = client.post(wf("failing", "resume"), headers=AS_OPERATOR)
    assert response.status_code == 202 and response.json()["id"] == "failing", response.text
    wait_until(lambda: run_ended_after(before), timeout=20)
    assert app_module.CHECKS["boom"] == 1
    # retry, once the cause is fixed, runs the failed step again
    app_module.FIXED.add("boom")
    response = client.post(wf("failing", "retry"), headers=AS_OPERATOR)
    assert response.status_code == 202, response.text
    done = client.get(wf("failing", "result"), params={"wait": 20}, headers=AS_READER).json()
    assert done == {"id": "failing", "status": "SUCCESS", "output": "fixed boom"}
    assert app_module.CHECKS["boom"] == 2

    client.post("/api/v1/workflows", headers=AS_OPERATOR,
                json={"name": "api_order", "args": ["o-9"], "id": "to-cancel"})  # fmt: skip
    cancelled = client.post(wf("to-cancel", "cancel"), headers=AS_OPERATOR)
    assert cancelled.status_code == 202
    assert cancelled.json()["id"] == "to-cancel" and cancelled.json()["status"] != "CANCELLED"
    result = client.get(wf("to-cancel", "result"), params={"wait": 20}, headers=AS_READER)
    assert result.json()["status"] == "CANCELLED"


# -- errors --------------------------------------------------------------------------------


def test_errors_are_json_with_stable_codes(client: httpx.Client) -> None:
    op = AS_OPERATOR
    for method, path in [("GET", wf("nope")), ("GET", wf("nope", "result")),
                         ("POST", wf("nope", "cancel")), ("POST", wf("nope", "resume")),
                         ("POST", wf("nope", "retry"))]:  # fmt: skip
        assert error_of(client.request(method, path, headers=op), 404) == "workflow_not_found"
    message = {"topic": "go", "payload": 1}
    assert error_of(client.post(wf("nope", "messages"), headers=op, json=message),
                    404) == "workflow_not_found"  # fmt: skip

    echo = {"name": "api_echo", "args": [{"a": [1, 2]}], "id": "echo"}
    assert client.post("/api/v1/workflows", headers=op, json=echo).status_code == 201
    assert client.get(wf("echo", "result"), params={"wait": 20}, headers=op).json()["output"] == {
        "a": [1, 2]
    }
    assert error_of(client.post(wf("echo", "resume"), headers=op), 409) == "invalid_state"
    assert error_of(client.post(wf("echo", "retry"), headers=op), 409) == "invalid_state"
    conflict = {**echo, "args": ["other"]}
    assert error_of(client.post("/api/v1/workflows", headers=op, json=conflict),
                    409) == "workflow_conflict"  # fmt: skip
    unknown = {"name": "no_such_workflow"}
    assert error_of(client.post("/api/v1/workflows", headers=op, json=unknown),
                    404) == "unknown_workflow"  # fmt: skip
    pending = wf("echo", "approvals", "ship", "approve")
    assert error_of(client.post(pending, headers=op), 409) == "approval_not_pending"

    bad_bodies = [b"{not json", b"[]", b'{"name": 3}', b'{"name": "api_echo", "extra": 1}',
                  b'{"name": "api_echo", "kwargs": {"nope": 1}}', b'{"name": ""}']  # fmt: skip
    for body in bad_bodies:
        response = client.post("/api/v1/workflows", headers=op, content=body)
        assert error_of(response, 400) == "invalid_request", body
    for bad in ({"topic": "go"}, {"topic": "go", "payload": None}, {"topic": "", "payload": 1}):
        response = client.post(wf("echo", "messages"), headers=op, json=bad)
        assert error_of(response, 400) == "invalid_request", bad
    for params in ({"limit": 0}, {"limit": "x"}, {"status": "bogus"}, {"since": "yesterday"}):
        response = client.get("/api/v1/workflows", headers=op, params=params)
        assert error_of(response, 400) == "invalid_request", params
    # Text no database takes: NUL (PostgreSQL refuses it), lone surrogates (not Unicode).
    text_cases: list[tuple[str, str, bytes | None]] = [
        ("GET", "/api/v1/workflows/a%00b", None),
        ("GET", "/api/v1/workflows?name=a%00b", None),
        ("POST", wf("echo", "messages"), b'{"topic": "go\\u0000", "payload": 1}'),
        ("POST", wf("echo", "messages"), b'{"topic": "go", "payload": ["\\ud800"]}'),
        ("POST", wf("echo", "messages"), b'{"topic": "go", "payload": {"\\udfff": 1}}'),
        ("POST", wf("echo", "approvals", "a\x00b", "approve"), b"{}"),
        ("POST", "/api/v1/workflows", b'{"name": "api_echo", "args": [1], "id": "x\\u0000"}'),
        ("POST", "/api/v1/workflows", b'{"name": "api_echo", "kwargs": {"id": 1}}'),
        (
            "POST",
            "/api/v1/workflows",
            b'{"name": "api_echo", "args": ' + b"[" * 9000 + b"]" * 9000 + b"}",
        ),
    ]
    for method, path, content in text_cases:
        response = client.request(method, path, headers=op, content=content)
        assert error_of(response, 400) == "invalid_request", (path, content)
    assert error_of(client.get("/api/v1/nothing-here", headers=op), 404) == "not_found"
    assert error_of(client.delete("/api/v1/whoami", headers=op), 405) == "method_not_allowed"
    both = client.request("OPTIONS", "/api/v1/workflows", headers=op)
    assert error_of(both, 405) == "method_not_allowed" and both.headers["allow"] == "GET, POST"
    assert client.put(wf("echo", "cancel"), headers=op).headers["allow"] == "POST"


def test_server_errors_are_logged_not_shown(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(sqlite_url, tokens=TOKENS)
    operations = app.state.operations

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise perdure.StoreUnavailableError("db.internal:5432 refused the connection")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug with a secret detail")

    monkeypatch.setattr(operations, "list_workflows", unavailable)
    monkeypatch.setattr(operations, "approvals", broken)
    with serving(app) as base, httpx.Client(base_url=base, headers=AS_READER) as client:
        down = client.get("/api/v1/workflows")
        assert error_of(down, 503) == "store_unavailable" and "db.internal" not in down.text
        bug = client.get("/api/v1/approvals")
        assert error_of(bug, 500) == "internal"
        assert "secret detail" not in bug.text and "Traceback" not in bug.text
    logged = caplog.text
    assert "db.internal:5432" in logged and "a bug with a secret detail" in logged


def test_since_filter_takes_naive_times_as_utc(client: httpx.Client) -> None:
    body = {"name": "api_echo", "args": [1], "id": "dated"}
    assert client.post("/api/v1/workflows", headers=AS_OPERATOR, json=body).status_code == 201
    for since, expected in (("2000-01-01T00:00:00", ["dated"]), ("2999-01-01T00:00:00Z", [])):
        listed = client.get("/api/v1/workflows", params={"since": since}, headers=AS_READER)
        assert [w["id"] for w in listed.json()["workflows"]] == expected, since


def test_start_without_an_engine_says_to_pass_app(sqlite_url: str) -> None:
    with api(sqlite_url, worker=False) as client:
        response = client.post("/api/v1/workflows", headers=AS_OPERATOR,
                               json={"name": "api_echo", "args": [1]})  # fmt: skip
        assert error_of(response, 400) == "invalid_request"
        assert "--app" in response.json()["error"]["message"]
        assert client.get("/api/v1/workflows", headers=AS_READER).json() == {"workflows": []}


# -- token configuration -------------------------------------------------------------------


def test_load_tokens_reads_lines_commas_and_comments() -> None:
    tokens = load_tokens(
        "# the API tokens\n\noperator:alice:s3:cr:et:0123456789\n"
        "  read:grafana:abc-0123456789abc , read:oncall:def-0123456789def\n"
    )
    assert tokens == {
        "s3:cr:et:0123456789": Token(name="alice", role="operator"),
        "abc-0123456789abc": Token(name="grafana", role="read"),
        "def-0123456789def": Token(name="oncall", role="read"),
    }
    assert load_tokens("") == {} and load_tokens("# nothing\n\n") == {}
    assert Token("a", "operator").allows("read") and not Token("b", "read").allows("operator")


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ("operator:alice:fine-0123456789abc\nTOPSECRET-ONLY", "line 2"),
        ("admin:alice:TOPSECRET-ONLY", "line 1"),
        ("read::TOPSECRET-ONLY", "line 1"),
        ("read:alice:", "line 1"),
        ("read:alice:TOPSECRET ONLY", "line 1"),
        ("read:a:x-0123456789abcdef, TOPSECRET-ONLY", "entry 2 of line 1"),
        ("read:a:TOPSECRET-ONLY-0123\noperator:b:TOPSECRET-ONLY-0123", "line 2"),
        ("read:alice:TOPSECRET", "line 1"),  # too short to be a secret
    ],
)
def test_malformed_tokens_name_the_line_never_the_secret(spec: str, where: str) -> None:
    with pytest.raises(perdure.ConfigurationError) as caught:
        load_tokens(spec, source="tokens.txt")
    message = str(caught.value)
    assert f"{where} of tokens.txt" in message
    assert "TOPSECRET" not in message


# -- perdure serve, for real ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("PERDURE_API_TOKENS", "PERDURE_DB")}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "perdure.cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**environment, **(env or {})},
    )


def test_serve_refuses_to_run_without_tokens(sqlite_url: str, tmp_path: Path) -> None:
    bare = _serve("--db", sqlite_url, "--port", str(_free_port()))
    out, err = bare.communicate(timeout=60)
    assert bare.returncode == 2, (out, err)
    assert "no API tokens configured" in err and "PERDURE_API_TOKENS" in err
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# ours\noperator:alice\n", encoding="utf-8")
    for args, env in (
        (["--tokens", str(tokens)], None),
        ([], {"PERDURE_API_TOKENS": "read:bob:TOPSECRET, oops-TOPSECRET"}),
        ([], {"PERDURE_API_TOKENS": " # only a comment"}),
    ):
        proc = _serve("--db", sqlite_url, "--port", str(_free_port()), *args, env=env)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (args, env, out, err)
        assert err.startswith("perdure: ") and "TOPSECRET" not in out + err


def test_serve_command_end_to_end_on_loopback(sqlite_url: str, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"operator:olivia:{OPERATOR}\nread:rita:{READER}\n", encoding="utf-8")
    tokens.chmod(0o600)
    port = _free_port()
    app = str(APPS / "api_app.py")
    # No --host: it must listen on 127.0.0.1 only.
    proc = _serve("--db", sqlite_url, "--app", app, "--port", str(port), "--tokens", str(tokens))
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=40) as client:

            def up() -> bool:
                assert proc.poll() is None, proc.communicate()
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(up, timeout=30)
            assert error_of(client.get("/api/v1/workflows"), 401) == "unauthorized"
            _start_and_send(client, "served")
            _approval(client, "served")
            client.post(wf("served", "approvals", "ship", "approve"), headers=AS_OPERATOR)
            result = client.get(wf("served", "result"), params={"wait": 20}, headers=AS_READER)
            assert result.json()["output"]["approved"] is True
            assert result.json()["output"]["by"] == "olivia"
        # Listening on 127.0.0.1 only: another loopback address of this host is refused.
        with pytest.raises(OSError), socket.create_connection(("127.0.0.2", port), timeout=2):
            pass
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, (out, err)
    assert f"at http://127.0.0.1:{port}" in out
    assert "1 operator token(s), 1 read token(s)" in out
    assert OPERATOR not in out + err and READER not in out + err


# -- OpenAPI and fuzzing -------------------------------------------------------------------


# schemathesis 4 itself calls the `random` module inside some of its hypothesis strategies,
# which hypothesis warns about now and then (and the suite turns warnings into errors): that
# warning is the tool's, not a finding about perdure.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_openapi_document_is_valid_and_fuzzing_finds_no_server_error(client: httpx.Client) -> None:
    document = client.get("/api/v1/openapi.json", headers=AS_READER).json()
    assert document["openapi"].startswith("3.")
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()  # against the OpenAPI meta-schema; raises if invalid

    # A waiting workflow, so that part of the fuzzing reaches a real one.
    _start_and_send(client, "fuzz-target")
    fuzzing = Fuzzing(str(client.base_url))
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 13
    for operation in operations:
        targets: list[dict[str, Any] | None] = [None]
        # (Not to cancel it, nor to long-poll its result for up to 30 s an example.)
        if "{workflow_id}" in operation.path and not operation.path.endswith(
            ("/cancel", "/resume", "/retry", "/result")
        ):
            targets.append({"workflow_id": "fuzz-target"})
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for path_parameters in targets:
                fuzzing.run(operation, operation.as_strategy(mode, path_parameters=path_parameters))
    print(f"\nschemathesis: {len(operations)} operations, {fuzzing.runs} runs "
          f"({fuzzing.nothing_to_break} with nothing to break), {fuzzing.statuses.total()} "
          f"requests: {sorted(fuzzing.statuses.items())}", dict(fuzzing.per_operation))  # fmt: skip
    assert set(fuzzing.per_operation) == {op.label for op in operations}
    assert all(status < 500 for status in fuzzing.statuses)


# Not positive_data_acceptance: schema-valid arguments can still not fit a workflow's
# signature (400); nor negative_data_rejection: unknown query parameters are ignored.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
]


class Fuzzing:
    """Runs schemathesis cases against the served API with an operator token (20 examples
    per strategy, derandomized), failing on any 5xx and on any response that does not match
    the OpenAPI document (status, content type, headers, body schema) or that a request
    without valid credentials got past authentication with; counts what it sent."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.statuses: Counter[int] = Counter()
        self.per_operation: Counter[str] = Counter()
        self.runs = 0
        self.nothing_to_break = 0

    def run(self, operation: Any, strategy: Any) -> None:
        @hypothesis.settings(
            max_examples=20,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=strategy)
        def fuzz(case: Any) -> None:
            response = case.call(base_url=self.base, headers=AS_OPERATOR, timeout=40)
            self.statuses[response.status_code] += 1
            self.per_operation[operation.label] += 1
            assert response.status_code < 500, (case.as_curl_command(), response.text)
            case.validate_response(response, checks=CHECKS, headers=AS_OPERATOR)

        self.runs += 1
        try:
            fuzz()
        except Unsatisfiable:  # a negative strategy for an operation with nothing to break
            self.nothing_to_break += 1
