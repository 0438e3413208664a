"""API tokens: who may call the HTTP API, and with which role.

The configuration is text (the ``PERDURE_API_TOKENS`` environment variable, or the file of
``perdure serve --tokens FILE``) holding one entry per line, or several entries on a line
separated by commas::

    # role:name:secret
    operator:alice:9c1d0f7e0b0f4d6fa1b7
    read:grafana:f3a45d9be7cc41c9, read:oncall:0d0e0a77a4f84e53

``role`` is ``read`` (look) or ``operator`` (look and act); ``name`` says who holds the token
and is recorded as the ``by`` of the decisions it makes; ``secret`` is what the client sends
as ``Authorization: Bearer <secret>``. Blank lines and lines starting with ``#`` are ignored.
A secret may hold ``:`` but no comma nor whitespace; a name holds no ``:``.

Nothing here ever puts a secret into an error message or a log line. Secrets are compared
with :func:`hmac.compare_digest` against every configured token, so the time a check takes
does not depend on which token (if any) matched, nor on how much of a secret was right.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from .._errors import ConfigurationError

__all__ = ["ROLES", "Role", "Token", "authenticate", "load_tokens"]

Role = Literal["read", "operator"]
ROLES: tuple[Role, ...] = get_args(Role)


@dataclass(frozen=True)
class Token:
    """Who holds an API token, and what it allows.

    Attributes:
        name: the holder (a person or a system), recorded as the ``by`` of its decisions.
        role: ``"read"`` (the GET routes) or ``"operator"`` (every route).
    """

    name: str
    role: Role

    def allows(self, role: Role) -> bool:
        """Whether this token may use a route that needs ``role`` (operator can do all)."""
        return self.role == "operator" or role == "read"


def load_tokens(spec: str, *, source: str = "the token configuration") -> dict[str, Token]:
    """Parse a token configuration (see the module docs) into ``{secret: Token}``.

    Args:
        spec: the configuration text.
        source: what the text came from, for error messages (``"tokens.txt"``).

    Returns:
        The tokens by secret; empty when ``spec`` holds no entry.

    Raises:
        ConfigurationError: an entry is malformed (names the line, never the secret) or two
            entries share a secret.
    """
    tokens: dict[str, Token] = {}
    for line_number, line in enumerate(spec.splitlines(), start=1):
        if line.strip().startswith("#"):
            continue
        entries = [entry.strip() for entry in line.split(",")]
        for index, entry in enumerate(entries, start=1):
            if not entry:
                continue
            where = f"line {line_number}" if len(entries) == 1 else (
                f"entry {index} of line {line_number}"
            )  # fmt: skip
            secret, token = _parse_entry(entry, f"{where} of {source}")
            if secret in tokens:
                raise ConfigurationError(
                    f"{where} of {source} repeats the secret of another token: give every "
                    "token its own secret"
                )
            tokens[secret] = token
    return tokens


#: the shortest secret accepted (a guessable token is no authentication)
MIN_SECRET = 16


def _parse_entry(entry: str, where: str) -> tuple[str, Token]:
    """``(secret, Token)`` of one ``role:name:secret`` entry. Messages never quote the entry:
    a malformed one may well be a bare secret."""
    role, _, rest = entry.partition(":")
    name, _, secret = rest.partition(":")
    role, name = role.strip(), name.strip()
    if role not in ROLES:
        raise ConfigurationError(
            f"{where} is not a token entry: expected role:name:secret with role "
            f"{' or '.join(ROLES)}"
        )
    if not name:
        raise ConfigurationError(f"{where} has no name: expected role:name:secret")
    if not secret or secret != secret.strip() or any(c.isspace() for c in secret):
        raise ConfigurationError(
            f"{where} has an empty secret or one with whitespace: expected role:name:secret"
        )
    if len(secret) < MIN_SECRET:
        raise ConfigurationError(
            f"{where} has a secret shorter than {MIN_SECRET} characters: use a random one, "
            "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return secret, Token(name=name, role=role)


def authenticate(tokens: Mapping[str, Token], presented: bytes) -> Token | None:
    """The token whose secret is ``presented`` (the raw bytes of the bearer credential), or
    None. Compares against every configured secret, in constant time each."""
    found: Token | None = None
    for secret, token in tokens.items():
        if hmac.compare_digest(secret.encode("utf-8"), presented):
            found = token
    return found
