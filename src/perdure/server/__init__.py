"""The HTTP API of ``perdure serve``: an ASGI app (FastAPI) over the admin operations.

Needs the ``server`` extra (``pip install 'perdure[server]'``: FastAPI and uvicorn). This
module imports neither until :func:`create_app` is called, so :func:`load_tokens` and
:class:`Token` work without them.

::

    from perdure.server import create_app, load_tokens

    app = create_app("sqlite:///perdure.db", tokens=load_tokens(os.environ["PERDURE_API_TOKENS"]))
    # uvicorn.run(app, host="127.0.0.1", port=8000)

See docs/api.md for the routes, the token configuration and the error codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .._errors import ConfigurationError
from ._tokens import Token, load_tokens

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .._encryption import Encryption
    from .._engine import Engine

__all__ = ["Token", "create_app", "load_tokens", "require_server_extra"]


def require_server_extra() -> None:
    """Check that FastAPI and uvicorn are installed.

    Raises:
        ConfigurationError: one is missing; the message names the extra to install.
    """
    for module in ("fastapi", "uvicorn"):
        try:
            __import__(module)
        except ImportError:
            raise ConfigurationError(
                f"the HTTP API needs {module}, which is not installed: "
                "pip install 'perdure[server]'"
            ) from None


def create_app(
    url: str,
    *,
    tokens: Mapping[str, Token],
    engine: Engine | None = None,
    encryption: Encryption | None = None,
) -> FastAPI:
    """The HTTP API as an ASGI application (routes in docs/api.md).

    Args:
        url: the database URL; the app opens its own store on it (closed when the app shuts
            down). Ignored when ``engine`` is given: the app then uses ``engine.store``.
        tokens: the API tokens by secret (see :func:`load_tokens`). Requests under
            ``/api/v1`` without one of them are refused (401); an empty mapping refuses all.
        engine: an open engine on the same database, making this process a worker: needed
            to start workflows (they must be registered here), and resumed workflows run in
            it. The caller keeps it open while the app runs, and closes it.
        encryption: the keys the app's own store reads and writes encrypted payloads with
            (``perdure.Encryption.from_env()`` for ``PERDURE_ENCRYPTION_KEYS``); ignored when
            ``engine`` is given (its store has its own). See docs/security.md.

    Returns:
        A FastAPI application; serve it with uvicorn or any ASGI server.

    Raises:
        ConfigurationError: FastAPI is not installed (``pip install 'perdure[server]'``), or
            ``url`` is not a database URL.
        StoreUnavailableError: the database cannot be opened.
    """
    require_server_extra()
    from ._app import build_app

    return build_app(url, tokens, engine, encryption)
