"""``perdure serve``: run the HTTP API (and the dashboard) over a database of workflows.

::

    perdure serve [--db URL] [--app MODULE ...] [--host 127.0.0.1] [--port 8000] [--tokens FILE]

Secure by default: it listens on 127.0.0.1 unless ``--host`` says otherwise, and it refuses
to start without API tokens (``--tokens FILE``, else ``PERDURE_API_TOKENS``; see
:mod:`perdure.server._tokens` for the format). It prints the URL and how many tokens of each
role it loaded, never a secret.

Without ``--app`` the server only reads and records (like the other commands): a resumed
workflow, a message or a decision is taken up by whichever worker process has the workflow
registered. With ``--app MODULE`` (a dotted name importable from the current folder, or a
path to a ``.py`` file; repeatable; imported as ``perdure worker`` does) it imports the
application first, so its workflows are registered, and runs an :class:`perdure.Engine`:
the server process is then also a worker, and ``POST /api/v1/workflows`` can start
workflows.

Exit codes: 0 after a clean shutdown (Ctrl-C, SIGTERM), 2 for a usage error (no tokens, a
malformed token file, a module that cannot be imported, the server extra missing), 3 when
the database is unavailable.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

import click

from .._encryption import Encryption
from .._engine import Engine
from .._errors import ConfigurationError
from ..server import Token, create_app, load_tokens, require_server_extra
from ._common import db_option, reporting_errors
from ._render import without_password
from ._worker import _import_user_module, _log_to_stderr, _signals_caught

__all__ = ["TOKENS_ENV", "serve_command"]

TOKENS_ENV = "PERDURE_API_TOKENS"
_GRACEFUL_SHUTDOWN = 5  # seconds given to open requests (a long-poll waits up to 30)


@click.command("serve", short_help="Serve the HTTP API and the dashboard.")
@db_option
@click.option(
    "--app",
    "apps",
    multiple=True,
    metavar="MODULE",
    help="Import this module (dotted name, or a .py file) so its workflows are registered, "
    "and run a worker in the server. Repeatable.",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, metavar="HOST", help="Interface to listen on."
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    metavar="PORT",
    help="TCP port.",
)
@click.option(
    "--tokens",
    "tokens_file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help=f"API tokens, one role:name:secret per line (default: ${TOKENS_ENV}).",
)
def serve_command(
    db: str, apps: tuple[str, ...], host: str, port: int, tokens_file: Path | None
) -> None:
    """Serve the HTTP API (/api/v1, OpenAPI at /api/v1/openapi.json) and the dashboard (/).

    Every API call needs `Authorization: Bearer <secret>` of a configured token: role read
    (GET routes) or operator (everything). Tokens come from --tokens FILE or
    $PERDURE_API_TOKENS (entries separated by newlines or commas); the server does not start
    without one. It listens on 127.0.0.1 unless --host says otherwise.
    """
    # uvicorn handles SIGINT/SIGTERM while it serves, then restores the handlers it found and
    # raises the signal again: ours only note it, so the engine below closes cleanly (its
    # unfinished workflows released for the next worker) and the command exits 0.
    with _signals_caught() as stop:
        with reporting_errors():
            require_server_extra()
            tokens = _configured_tokens(tokens_file)
            encryption = Encryption.from_env()  # PERDURE_ENCRYPTION_KEYS: read and decrypt
        for module in apps:
            _import_user_module(module)
        import uvicorn

        _log_to_stderr()
        with reporting_errors(), _engine(db, bool(apps), encryption) as engine:
            app = create_app(db, tokens=tokens, engine=engine, encryption=encryption)
            _announce(db, host, port, tokens, engine is not None)
            config = uvicorn.Config(
                app, host=host, port=port, timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN
            )
            if not stop.name:  # no stop signal came while starting
                uvicorn.Server(config).run()


def _configured_tokens(tokens_file: Path | None) -> dict[str, Token]:
    """The tokens of ``--tokens FILE``, else of the environment; none is a usage error."""
    if tokens_file is not None:
        try:
            text = tokens_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read --tokens {tokens_file}: {exc}") from None
        tokens = load_tokens(text, source=str(tokens_file))
        _warn_if_shared(tokens_file)
    else:
        tokens = load_tokens(os.environ.get(TOKENS_ENV, ""), source=f"${TOKENS_ENV}")
    if not tokens:
        raise ConfigurationError(
            f"no API tokens configured: pass --tokens FILE or set {TOKENS_ENV}, with entries "
            "role:name:secret (role read or operator); the server refuses to run without one"
        )
    return tokens


def _warn_if_shared(path: Path) -> None:
    with contextlib.suppress(OSError):
        if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            click.echo(
                f"perdure: warning: {path} is readable by other users; chmod 600 it", err=True
            )


@contextlib.contextmanager
def _engine(db: str, worker: bool, encryption: Encryption | None) -> Iterator[Engine | None]:
    """An open engine on ``db`` when this server is to be a worker, else None."""
    if not worker:
        yield None
        return
    with Engine(db, encryption=encryption) as engine:
        yield engine


def _announce(db: str, host: str, port: int, tokens: Mapping[str, Token], worker: bool) -> None:
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    roles = {role: sum(t.role == role for t in tokens.values()) for role in ("operator", "read")}
    click.echo(f"perdure: serving {without_password(db)} at {url}")
    click.echo(f"perdure: API {url}/api/v1 (OpenAPI at {url}/api/v1/openapi.json), dashboard "
               f"{url}/")  # fmt: skip
    click.echo(f"perdure: {roles['operator']} operator token(s), {roles['read']} read token(s)")
    if worker:
        click.echo("perdure: running a worker for the --app workflows")
    else:
        click.echo("perdure: no --app: starting workflows is off; your workers run the rest")
    if not _is_loopback(host):
        click.echo(
            f"perdure: warning: listening on {host}: the API is reachable from other machines "
            "over plain HTTP; put it behind a TLS proxy",
            err=True,
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
