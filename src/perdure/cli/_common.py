"""What every ``perdure`` command shares: the ``--db`` and ``--json`` options, opening the
store, and turning perdure's errors into one-line messages and the documented exit codes
(from :data:`perdure._operations.ERROR_CODES`, the table the HTTP API uses too)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import click

from .._encryption import Encryption
from .._errors import PerdureError
from .._operations import Operations, error_code
from ..store import Store, open_store
from ._render import one_line

DEFAULT_DB = "sqlite:///perdure.db"
EXIT_OK = 0
EXIT_NOT_FOUND = 1  # no such workflow, no such pending approval, not in a state for that
EXIT_USAGE = 2
EXIT_STORE = 3

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> NoReturn:
    """Print ``perdure: message`` on one line to stderr and exit with ``code``."""
    click.echo(f"perdure: {one_line(message)}", err=True)
    raise click.exceptions.Exit(code)


@contextmanager
def reporting_errors() -> Iterator[None]:
    """Turn perdure's errors into one-line messages and their exit codes (see
    :func:`perdure._operations.error_code`); errors outside that table exit 1 with their
    type named."""
    try:
        yield
    except PerdureError as exc:
        code, _, exit_code = error_code(exc)
        fail(str(exc) if code != "error" else f"{type(exc).__name__}: {exc}", exit_code)


@contextmanager
def opened(url: str) -> Iterator[Store]:
    """The store ``url`` names (opening it migrates it), closed on the way out; errors
    reported as exit codes. Encrypted payloads are read with the keys of
    ``PERDURE_ENCRYPTION_KEYS`` (see docs/security.md)."""
    with reporting_errors():
        store = open_store(url, encryption=Encryption.from_env())
        try:
            yield store
        finally:
            store.close()


@contextmanager
def operations(url: str) -> Iterator[Operations]:
    """:class:`~perdure._operations.Operations` on the bare store ``url`` names: no engine,
    so a command never joins as a worker; errors reported as exit codes."""
    with opened(url) as store, reporting_errors():
        yield Operations(store)


def db_option(fn: F) -> F:
    """``--db URL``, else ``$PERDURE_DB``, else :data:`DEFAULT_DB`."""
    return click.option(
        "--db",
        "db",
        envvar="PERDURE_DB",
        default=DEFAULT_DB,
        show_default=True,
        metavar="URL",
        help="Database URL (env: PERDURE_DB), e.g. sqlite:///path/to/perdure.db.",
    )(fn)


def json_option(fn: F) -> F:
    """``--json``: print JSON instead of text."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON (strict: no NaN)."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False))
