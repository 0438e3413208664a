"""The routes under ``/api/v1``: each one a thin call to :class:`perdure._operations.Operations`.

Routes that touch the store are plain ``def`` functions, which FastAPI runs in its thread
pool, so a slow database never blocks the event loop; the long-poll of ``.../result`` is a
coroutine that sleeps between reads instead of holding a thread for up to 30 s.

Every route declares the bearer scheme and the role it needs. The :class:`AuthGate`
middleware has already checked the token by then; the dependencies here check it again, and
hand the route the caller's :class:`Token` (its name is the ``by`` of decisions).

Ids and approval names may hold any character, ``/`` included (percent-encoded by the
client): the path parameters use Starlette's ``path`` converter, and the routes that end in
a fixed word (``/result``, ``/cancel``...) are registered before ``GET /workflows/{id}``. An
id is matched greedily, so only an id that itself ends in ``/result`` (say) cannot be read
with ``GET /workflows/{id}``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BeforeValidator

from .. import _admin
from .._fork import UNSET
from .._operations import Operations
from ..store import WorkflowStatus
from ._models import (
    NO_NUL,
    ApprovalList,
    CancelOut,
    DecisionRequest,
    ErrorOut,
    ForkRequest,
    MessageRequest,
    OkOut,
    ResultOut,
    SentOut,
    StartRequest,
    WhoAmIOut,
    WorkflowDetail,
    WorkflowList,
    WorkflowOut,
)
from ._tokens import Role, Token

__all__ = ["API_PREFIX", "SCOPE_CALLER", "ApiError", "api_router", "error_body"]

API_PREFIX = "/api/v1"
#: the ASGI scope key under which :class:`AuthGate` leaves the caller's token
SCOPE_CALLER = "perdure.caller"
#: the longest ``?wait=`` of a result long-poll, in seconds
MAX_WAIT = 30.0
APPROVALS_LIMIT = 100
MAX_LIMIT = 1000


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with this HTTP status."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON body of every error response."""
    return {"error": {"code": code, "message": message}}


# -- dependencies --------------------------------------------------------------------------

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API token from PERDURE_API_TOKENS or `perdure serve --tokens FILE`. "
    "Read tokens may call the GET routes; operator tokens every route.",
)
_Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]


def _caller(request: Request, role: Role) -> Token:
    token = request.scope.get(SCOPE_CALLER)
    if not isinstance(token, Token):
        raise ApiError(401, "unauthorized", "a valid API token is required",
                       {"WWW-Authenticate": "Bearer"})  # fmt: skip
    if not token.allows(role):
        raise ApiError(403, "forbidden", f"token {token.name!r} has the read role: this "
                       "needs an operator token")  # fmt: skip
    return token


async def _reader(request: Request, _: _Credentials) -> Token:
    return _caller(request, "read")


async def _operator(request: Request, _: _Credentials) -> Token:
    return _caller(request, "operator")


async def _operations(request: Request) -> Operations:
    operations = request.app.state.operations
    assert isinstance(operations, Operations)
    return operations


Reader = Annotated[Token, Depends(_reader)]
Operator = Annotated[Token, Depends(_operator)]
Ops = Annotated[Operations, Depends(_operations)]
WorkflowId = Annotated[
    str, Path(pattern=NO_NUL, description="the workflow id (any characters, percent-encoded)")
]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented error responses of a route (401, 500 and 503 always)."""
    described = {
        400: "invalid_request, invalid_payload",
        401: "unauthorized: no valid token",
        403: "forbidden: a read token on an operator route",
        404: "workflow_not_found, unknown_workflow",
        409: "invalid_state, approval_not_pending, workflow_conflict",
        500: "store_error, internal (the details are in the server log)",
        503: "store_unavailable",
    }
    return {s: {"model": ErrorOut, "description": described[s]}
            for s in sorted({401, 500, 503, *statuses})}  # fmt: skip


def _upper(value: Any) -> Any:
    """Status names in any case (``?status=waiting``)."""
    return value.upper() if isinstance(value, str) else value


def _not_a_number(value: Any) -> Any:
    """Refuse the Unix timestamps pydantic would take for a datetime: ``since`` is ISO 8601."""
    if isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit():
        raise ValueError("expected an ISO 8601 date-time, e.g. 2025-01-31T12:00:00Z")
    return value


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


# -- routes --------------------------------------------------------------------------------


def api_router() -> APIRouter:
    """The ``/api/v1`` routes."""
    router = APIRouter(prefix=API_PREFIX)
    _reading_routes(router)
    _acting_routes(router)
    # Last: its {workflow_id:path} would otherwise swallow .../result.
    router.add_api_route(
        "/workflows/{workflow_id:path}",
        _describe,
        methods=["GET"],
        response_model=WorkflowDetail,
        responses=_errors(400, 403, 404),
        tags=["workflows"],
        summary="A workflow with its journal, retries and token usage",
        name="describe",
    )
    return router


def _describe(workflow_id: WorkflowId, ops: Ops, _: Reader) -> JSONResponse:
    return _json(ops.describe(workflow_id))


def _reading_routes(router: APIRouter) -> None:
    @router.get("/openapi.json", include_in_schema=False)
    def openapi(request: Request, _: Reader) -> JSONResponse:
        return _json(request.app.openapi())

    @router.get(
        "/whoami",
        response_model=WhoAmIOut,
        responses=_errors(),
        tags=["meta"],
        summary="The caller's token name and role",
    )
    def whoami(caller: Reader) -> JSONResponse:
        return _json({"name": caller.name, "role": caller.role})

    @router.get(
        "/workflows",
        response_model=WorkflowList,
        responses=_errors(400, 403),
        tags=["workflows"],
        summary="Workflows, newest first",
    )
    def list_workflows(
        ops: Ops,
        _: Reader,
        status: Annotated[WorkflowStatus | None, BeforeValidator(_upper), Query()] = None,
        name: Annotated[
            str | None, Query(pattern=NO_NUL, description="the exact registered name")
        ] = None,
        since: Annotated[
            dt.datetime | None,
            BeforeValidator(_not_a_number),
            Query(description="created at or after (ISO 8601; naive = UTC)"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = _admin.DEFAULT_LIMIT,
    ) -> JSONResponse:
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
        infos = ops.list_workflows(status, name or None, since, limit)
        return _json({"workflows": [_admin.workflow_to_dict(info) for info in infos]})

    @router.get(
        "/workflows/{workflow_id:path}/result",
        response_model=ResultOut,
        responses=_errors(400, 403, 404),
        tags=["workflows"],
        summary="The status, and the result or error once it ended",
    )
    async def result(
        request: Request,
        workflow_id: WorkflowId,
        ops: Ops,
        _: Reader,
        wait: Annotated[
            float, Query(ge=0, le=MAX_WAIT, description="long-poll up to this many seconds")
        ] = 0,
    ) -> JSONResponse:
        return _json(await _wait_for_result(request, ops, workflow_id, wait))

    @router.get(
        "/approvals",
        response_model=ApprovalList,
        responses=_errors(400, 403),
        tags=["approvals"],
        summary="Approvals, newest first",
    )
    def approvals(
        ops: Ops,
        _: Reader,
        all: Annotated[bool, Query(description="include decided ones")] = False,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = APPROVALS_LIMIT,
    ) -> JSONResponse:
        infos = ops.approvals(pending_only=not all, limit=limit)
        return _json({"approvals": [_admin.approval_to_dict(info) for info in infos]})


async def _wait_for_result(
    request: Request, ops: Operations, workflow_id: str, wait: float
) -> dict[str, Any]:
    """The workflow's result data, read again (every 50 ms, backing off to 0.5 s) until it
    ended, ``wait`` seconds passed or the client went away."""
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        data = await run_in_threadpool(ops.result, workflow_id)
        remaining = deadline - time.monotonic()
        if WorkflowStatus(data["status"]).finished or remaining <= 0:
            return data
        if await request.is_disconnected():
            return data
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.5)


def _acting_routes(router: APIRouter) -> None:
    @router.post(
        "/workflows",
        status_code=201,
        response_model=WorkflowOut,
        responses=_errors(400, 403, 404, 409),
        tags=["workflows"],
        summary="Start (or enqueue) a workflow registered in the server",
    )
    def start(body: StartRequest, ops: Ops, _: Operator) -> JSONResponse:
        info = ops.start(body.name, body.args, body.kwargs, body.id, body.queue)
        return _json(_admin.workflow_to_dict(info), 201)

    @router.post(
        "/workflows/{workflow_id:path}/cancel",
        status_code=202,
        response_model=CancelOut,
        responses=_errors(400, 403, 404),
        tags=["workflows"],
        summary="Ask a workflow to stop",
    )
    def cancel(workflow_id: WorkflowId, ops: Ops, _: Operator) -> JSONResponse:
        status = ops.cancel(workflow_id)
        return _json({"id": workflow_id, "status": status.value}, 202)

    @router.post(
        "/workflows/{workflow_id:path}/resume",
        status_code=202,
        response_model=WorkflowOut,
        responses=_errors(400, 403, 404, 409),
        tags=["workflows"],
        summary="Run an ERROR, CANCELLED or DEAD_LETTER workflow again",
    )
    def resume(workflow_id: WorkflowId, ops: Ops, _: Operator) -> JSONResponse:
        return _json(_admin.workflow_to_dict(ops.resume(workflow_id)), 202)

    @router.post(
        "/workflows/{workflow_id:path}/retry",
        status_code=202,
        response_model=WorkflowOut,
        responses=_errors(400, 403, 404, 409),
        tags=["workflows"],
        summary="Resume, running again the step whose failure ended the workflow",
    )
    def retry(workflow_id: WorkflowId, ops: Ops, _: Operator) -> JSONResponse:
        info = ops.resume(workflow_id, retry_failed_step=True)
        return _json(_admin.workflow_to_dict(info), 202)

    @router.post(
        "/workflows/{workflow_id:path}/fork",
        status_code=201,
        response_model=WorkflowOut,
        responses=_errors(400, 403, 404, 409),
        tags=["workflows"],
        summary="Fork a workflow: a new run replaying its journal up to a position",
    )
    def fork(workflow_id: WorkflowId, body: ForkRequest, ops: Ops, _: Operator) -> JSONResponse:
        replacement = body.replace_output if body.replaces else UNSET
        info = ops.fork(workflow_id, body.from_step, body.new_id, replacement)
        return _json(_admin.workflow_to_dict(info), 201)

    @router.post(
        "/workflows/{workflow_id:path}/messages",
        status_code=202,
        response_model=SentOut,
        responses=_errors(400, 403, 404),
        tags=["workflows"],
        summary="Send a message to a workflow",
    )
    def send(workflow_id: WorkflowId, body: MessageRequest, ops: Ops, _: Operator) -> JSONResponse:
        sent = ops.send(workflow_id, body.topic, body.payload, body.key)
        return _json({"sent": sent}, 202)

    for verb, approved in (("approve", True), ("reject", False)):
        router.add_api_route(
            f"/workflows/{{workflow_id:path}}/approvals/{{name:path}}/{verb}",
            _decision(approved),
            methods=["POST"],
            response_model=OkOut,
            responses=_errors(400, 403, 404, 409),
            tags=["approvals"],
            summary=f"{verb.capitalize()} a pending approval",
            name=verb,
        )


def _decision(approved: bool) -> Any:
    def decide(
        workflow_id: WorkflowId,
        name: Annotated[str, Path(pattern=NO_NUL, description="the approval's name")],
        ops: Ops,
        caller: Operator,
        body: Annotated[DecisionRequest | None, Body()] = None,
    ) -> JSONResponse:
        comment = None if body is None else body.comment
        ops.decide(workflow_id, name, approved, by=caller.name, comment=comment)
        return _json({"ok": True})

    return decide
