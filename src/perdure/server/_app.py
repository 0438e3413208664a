"""The ASGI application of ``perdure serve``: a FastAPI app over :class:`Operations`.

Layers, outermost first:

* :class:`AuthGate`, a plain ASGI middleware, guards every path under ``/api/v1``: no valid
  bearer token, 401; a read token on anything but GET or HEAD, 403. It runs before routing
  and before any body is read, so an unauthenticated client learns nothing, not even which
  routes exist, and a route added later without a security dependency is still guarded
  (deny by default).
* The routes (:mod:`._routes`) declare the bearer scheme (so the OpenAPI document carries
  it) and check the role again.
* Exception handlers turn every error into ``{"error": {"code", "message"}}`` with a stable
  code: perdure's errors through :func:`perdure._operations.error_code`, request validation
  as 400 ``invalid_request`` (instead of FastAPI's 422), unknown routes and methods as 404
  ``not_found`` and 405 ``method_not_allowed``, anything else as 500 ``internal``. A 5xx
  is logged with its details; its body says only what kind of failure it was (no
  traceback, no database name).

The dashboard's static files (``static/``, written by hand, no build step) are public: the
page asks for a token and sends it with each API call.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from .._encryption import Encryption
from .._engine import Engine
from .._errors import PerdureError
from .._operations import Operations, error_code
from ..store import Store, open_store
from ._models import NO_NUL
from ._routes import SCOPE_CALLER, ApiError, api_router, error_body
from ._tokens import Token, authenticate

__all__ = ["AuthGate", "build_app"]

log = logging.getLogger("perdure")  # one logger: its filter adds workflow_id and step

STATIC = Path(__file__).parent / "static"
#: the dashboard runs only its own files: no inline script, no other origin, never in a frame
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
SAFE_METHODS = frozenset({"GET"})
_HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden",
               404: "not_found", 405: "method_not_allowed"}  # fmt: skip
_SERVER_ERRORS = {
    "store_unavailable": "the database is unavailable; the server log has the details",
    "store_error": "the database failed or holds a record perdure cannot read; the server "
    "log has the details",
    "internal": "internal server error; the server log has the details",
}
_NOT_INSTALLED = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>perdure</title></head>
<body><h1>perdure</h1><p>The dashboard is not installed in this copy of perdure. The HTTP API
is at <code>/api/v1</code>; its OpenAPI document is <code>/api/v1/openapi.json</code> (it
needs a token).</p></body></html>
"""


class PerdureAPI(FastAPI):
    """FastAPI, with an OpenAPI document that shows the errors this API really returns (400
    ``invalid_request`` for a malformed request, not FastAPI's 422)."""

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document (built once)."""
        if self.openapi_schema is None:
            document = get_openapi(
                title=self.title,
                version=self.version,
                description=self.description,
                routes=self.routes,
            )
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = document.get("components", {}).get("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            self.openapi_schema = document
        return self.openapi_schema


class AuthGate:
    """ASGI middleware: authenticate every request under ``/api/v1`` (see the module docs),
    and put its :class:`Token` in the scope for the routes."""

    def __init__(self, app: ASGIApp, tokens: Mapping[str, Token]) -> None:
        self.app = app
        self.tokens = dict(tokens)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 401/403 at once."""
        # Deny by default: only the dashboard's files and /healthz are public; anything else,
        # under /api/v1 or not (an unknown path included), needs a token.
        if scope["type"] == "lifespan" or _public(_route_path(scope)):
            await self.app(scope, receive, send)
            return
        token = authenticate(self.tokens, _bearer_credential(scope))
        if token is None:
            response = JSONResponse(
                error_body(
                    "unauthorized",
                    "a valid API token is required: send Authorization: Bearer <token>",
                ),
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        elif scope["method"] not in SAFE_METHODS and not token.allows("operator"):
            response = JSONResponse(
                error_body(
                    "forbidden",
                    f"token {token.name!r} has the read role: this needs an operator token",
                ),
                status_code=403,
            )
        else:
            await self.app({**scope, SCOPE_CALLER: token}, receive, send)
            return
        await response(scope, receive, send)


def _public(path: str) -> bool:
    """Whether a route path is served without a token: the dashboard's page and files, and
    the health check."""
    return path in ("/", "/healthz") or path.startswith("/static/")


def _route_path(scope: Scope) -> str:
    """The path the routes see, computed as Starlette's router computes it: without the
    ``root_path`` of a mount or a proxy prefix, and only where that prefix ends at a ``/``."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


def _bearer_credential(scope: Scope) -> bytes:
    """The raw credential of an ``Authorization: Bearer`` header (b"" when there is none)."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, credential = bytes(value).strip().partition(b" ")
            if scheme.lower() == b"bearer":
                return credential.strip()
            return b""
    return b""


def build_app(
    url: str,
    tokens: Mapping[str, Token],
    engine: Engine | None,
    encryption: Encryption | None = None,
) -> FastAPI:
    """The app (see :func:`perdure.server.create_app`)."""
    owned = None if engine is not None else open_store(url, encryption=encryption)
    store = engine.store if engine is not None else owned
    assert store is not None

    app = PerdureAPI(
        title="perdure",
        version=__version__,
        description="Start, inspect, message, approve and cancel perdure workflows. Every "
        "route under /api/v1 needs Authorization: Bearer <token>; read tokens may only GET.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        lifespan=_closing(owned),
    )
    app.state.operations = Operations(store, engine)
    app.add_middleware(AuthGate, tokens=tokens)

    @app.get("/healthz", tags=["meta"], summary="Liveness (public)")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    router = api_router()
    app.include_router(router)
    _add_dashboard(app)
    routes = [r for r in (*app.routes, *router.routes) if isinstance(r, APIRoute)]
    _add_error_handlers(app, routes)
    return app


def _closing(store: Store | None) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan that closes the store the app opened (None: the engine's, not ours)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if store is not None:
                store.close()

    return lifespan


def _add_dashboard(app: FastAPI) -> None:
    """GET / serves the dashboard's index.html, /static/ its files; without them, GET / says
    the dashboard is not installed."""
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        page = STATIC / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html", headers=PAGE_HEADERS)
        return HTMLResponse(_NOT_INSTALLED, headers=PAGE_HEADERS)


def _add_error_handlers(app: FastAPI, routes: Sequence[APIRoute]) -> None:
    """Every error as ``{"error": {"code", "message"}}`` (see the module docs). ``routes``:
    all of them, to list in ``Allow`` every method a path takes (Starlette names only those
    of the first route whose path matched)."""

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse(error_body(exc.code, exc.message), exc.status, headers=exc.headers)

    async def perdure_error(request: Request, exc: Exception) -> Response:
        code, status, _ = error_code(exc)
        message = str(exc) or type(exc).__name__
        if status >= 500:  # the details (which database, what failed) go to the log only
            log.error("perdure: %s %s failed", request.method, request.url.path, exc_info=exc)
            message = _SERVER_ERRORS.get(code, _SERVER_ERRORS["internal"])
        return JSONResponse(error_body(code, message), status)

    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(error_body("invalid_request", _validation_message(exc)), 400)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed(routes, request.scope["path"]))
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers)

    async def internal(request: Request, exc: Exception) -> Response:
        log.error("perdure: %s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal", _SERVER_ERRORS["internal"]), 500)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(PerdureError, perdure_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal)


def _allowed(routes: Sequence[APIRoute], path: str) -> list[str]:
    """The methods of the routes that match ``path``. GET ``/workflows/{id}`` matches any
    longer path too (an id may hold ``/``): it counts only where no route ending in a fixed
    word (``.../cancel``) matches, as the OpenAPI document describes the paths."""
    matched = [r for r in routes if r.path_regex.match(path)]
    specific = [r for r in matched if not r.path.endswith(":path}")] or matched
    return sorted({method for r in specific for method in r.methods or ()})


def _validation_message(exc: RequestValidationError) -> str:
    """``where: what`` for each problem (``body.topic: Field required``), without echoing
    the values sent."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error.get("loc", ()))
        what = error.get("msg", "invalid")
        if (error.get("ctx") or {}).get("pattern") == NO_NUL:
            what = "must not contain NUL characters"
        parts.append(f"{where}: {what}" if where else what)
    more = len(exc.errors()) - len(parts)
    return "; ".join(str(p) for p in parts) + (f" (and {more} more)" if more > 0 else "")
