"""Encryption at rest: AES-256-GCM for every payload perdure stores (see docs/security.md).

:class:`Encryption` holds the keys (by key id) and which one new writes use. The stores call
:meth:`Encryption.encrypt` on each payload they write (a workflow's inputs, a step's output, a
message...) and :meth:`Encryption.decrypt` on each they read, so the engine never sees
ciphertext. A stored payload is then one line of ASCII text, the *envelope*::

    perdure-enc:1:<key id>:<base64 of nonce (12 bytes) + ciphertext + GCM tag (16 bytes)>

The prefix cannot be mistaken for journal JSON (which starts with ``{ [ " - t f n`` or a
digit) or for a blob reference (``{"$blob":...``). The associated data of each payload names
its workflow, its field and its position (built by ``perdure.store._codec``), so a payload
copied to another row, field or workflow fails to decrypt instead of being read as that row's
value. Nonces are random (96 bits): keep one key for fewer than 2**32 writes (rotate yearly or
so; see docs/security.md). This module needs the ``crypto`` extra
(``pip install 'perdure[crypto]'``) only once an :class:`Encryption` is built.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._errors import ConfigurationError, CorruptRecordError, MissingKeyError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: what every encrypted payload starts with (version 1: AES-256-GCM, 12-byte random nonce)
ENVELOPE_PREFIX = "perdure-enc:1:"
#: the environment variable the ``perdure`` command reads its keys from
ENV_VARIABLE = "PERDURE_ENCRYPTION_KEYS"
KEY_BYTES = 32
NONCE_BYTES = 12
_TAG_BYTES = 16
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ENVELOPE = re.compile(r"perdure-enc:1:([A-Za-z0-9_.-]{1,64}):([A-Za-z0-9+/]*={0,2})")


class Encryption:
    """Encrypt every payload perdure stores with AES-256-GCM (``pip install 'perdure[crypto]'``).

    Pass it to ``Engine(url, encryption=...)`` (or ``open_store``, ``create_app``); the
    ``perdure`` command reads it from ``PERDURE_ENCRYPTION_KEYS`` (see :meth:`from_env`).
    Payloads are encrypted: workflow inputs, results and errors; step results and errors;
    failed attempts' errors; messages; events; approval details and comments; and so blobs.
    Ids, names, statuses, times, topics and keys stay in clear (docs/security.md lists them).

    Args:
        keys: the keys by key id (1 to 64 characters of ``A-Z a-z 0-9 _ . -``); each key is 32
            random bytes (``os.urandom(32)``, or ``openssl rand -base64 32`` decoded). Keep a
            retired key here as long as rows written with it exist: they are read with it.
        current: the id of the key new writes use; may be left out when there is one key.
        allow_plaintext: read rows written before encryption was turned on (default True:
            the migration path). False refuses any unencrypted payload as a
            ``CorruptRecordError``, so that nobody with write access to the database can plant
            a clear value for a run to replay.

    Raises:
        ConfigurationError: no keys, a malformed key id, a key that is not 32 bytes, a
            ``current`` that is not among the keys, or the ``cryptography`` package missing.
    """

    __slots__ = ("_ciphers", "allow_plaintext", "current")

    def __init__(
        self,
        keys: Mapping[str, bytes],
        current: str | None = None,
        *,
        allow_plaintext: bool = True,
    ) -> None:
        aesgcm = _aesgcm()
        if not keys:
            raise ConfigurationError("Encryption needs at least one key: keys={'k1': key_bytes}")
        if current is None:
            if len(keys) != 1:
                raise ConfigurationError(
                    f"Encryption has {len(keys)} keys ({', '.join(map(repr, keys))}): say which "
                    "one new writes use with current='...'"
                )
            current = next(iter(keys))
        if current not in keys:
            raise ConfigurationError(
                f"Encryption(current={current!r}) is not one of the keys given "
                f"({', '.join(map(repr, keys))})"
            )
        self._ciphers: dict[str, AESGCM] = {}
        for key_id, key in keys.items():
            self._ciphers[_valid_key_id(key_id)] = aesgcm(_valid_key(key_id, key))
        self.current = current
        self.allow_plaintext = allow_plaintext

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The configured key ids, the current one first."""
        return (self.current, *(k for k in self._ciphers if k != self.current))

    def __repr__(self) -> str:  # never the key material
        return (
            f"Encryption(keys={list(self.key_ids)!r}, current={self.current!r}, "
            f"allow_plaintext={self.allow_plaintext})"
        )

    @classmethod
    def parse(cls, text: str, *, source: str = ENV_VARIABLE) -> Encryption:
        """Keys written as ``"k2:<base64>,k1:<base64>"``: comma-separated ``key id:base64
        key`` entries, the first one current (new writes use it).

        Args:
            text: the entries.
            source: where the text comes from, for error messages.

        Raises:
            ConfigurationError: an entry is malformed (the message names its number, never
                its content), or see :class:`Encryption`.
        """
        keys: dict[str, bytes] = {}
        entries = [entry.strip() for entry in text.split(",") if entry.strip()]
        for number, entry in enumerate(entries, 1):
            key_id, sep, encoded = entry.partition(":")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if not sep or not _KEY_ID.fullmatch(key_id.strip()) or len(key) != KEY_BYTES:
                raise ConfigurationError(
                    f"entry {number} of {source} is not 'key_id:base64 key' with a key of "
                    f"{KEY_BYTES} bytes once decoded (make one with: openssl rand -base64 32)"
                )
            if key_id.strip() in keys:
                raise ConfigurationError(f"entry {number} of {source} repeats key id {key_id!r}")
            keys[key_id.strip()] = key
        if not keys:
            raise ConfigurationError(f"{source} holds no key: write 'k1:<base64 key>'")
        return cls(keys, current=next(iter(keys)))

    @classmethod
    def from_env(cls, variable: str = ENV_VARIABLE) -> Encryption | None:
        """The keys in the environment variable ``variable`` (``PERDURE_ENCRYPTION_KEYS``,
        formatted as for :meth:`parse`), or None when it is unset or empty.

        Raises:
            ConfigurationError: as :meth:`parse`.
        """
        text = os.environ.get(variable, "").strip()
        return cls.parse(text, source=variable) if text else None

    def encrypt(self, text: str, associated_data: bytes) -> str:
        """``text`` as an envelope (see the module docs), with the current key.

        Args:
            text: the payload.
            associated_data: what the payload is bound to; decryption needs the same bytes.
        """
        nonce = os.urandom(NONCE_BYTES)
        data = text.encode("utf-8", "surrogatepass")
        sealed = self._ciphers[self.current].encrypt(nonce, data, associated_data)
        return f"{ENVELOPE_PREFIX}{self.current}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, envelope: str, associated_data: bytes, where: str = "a payload") -> str:
        """The text an envelope holds.

        Args:
            envelope: a value :meth:`encrypt` returned.
            associated_data: the bytes it was encrypted with.
            where: the row, for error messages.

        Raises:
            MissingKeyError: it was encrypted with a key id not configured here.
            CorruptRecordError: it is malformed, or fails authentication (altered, or copied
                from another row, field or workflow).
        """
        key_id, _, body = envelope.removeprefix(ENVELOPE_PREFIX).partition(":")
        cipher = self._ciphers.get(key_id)
        if cipher is None or not envelope.startswith(ENVELOPE_PREFIX):
            if _ENVELOPE.fullmatch(envelope) is None:
                raise CorruptRecordError(
                    f"{where} holds a malformed encrypted value ({envelope[:40]!r}...): "
                    "restore the row from a backup"
                )
            raise MissingKeyError(
                f"{where} is encrypted with key id {key_id!r}, which this process does not "
                f"have (it has {', '.join(map(repr, self.key_ids))}): add that key to "
                f"{ENV_VARIABLE} or Encryption(keys=...); keep a key configured as long as rows "
                "written with it exist",
                key_id,
            )
        try:
            raw = base64.b64decode(body, validate=True)  # refuses anything but base64
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) < NONCE_BYTES + _TAG_BYTES:
            raise CorruptRecordError(
                f"{where} holds a malformed or truncated encrypted value: restore the row from "
                "a backup"
            )
        try:
            data = cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], associated_data)
        except _invalid_tag() as exc:
            raise CorruptRecordError(
                f"{where} fails authentication with key {key_id!r}: it was altered, or copied "
                "there from another row, field or workflow (each value is bound to its own). "
                "Nothing was read from it; restore the row from a backup"
            ) from exc
        return data.decode("utf-8", "surrogatepass")


def key_id_of(text: str) -> str:
    """The key id an envelope names (``"?"`` when it names none readable)."""
    match = _ENVELOPE.fullmatch(text)
    return "?" if match is None else match.group(1)


def _valid_key_id(key_id: Any) -> str:
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise ConfigurationError(
            f"encryption key id {key_id!r} must be 1 to 64 characters of A-Z a-z 0-9 _ . -"
        )
    return key_id


def _valid_key(key_id: str, key: Any) -> bytes:
    if not isinstance(key, bytes | bytearray | memoryview):
        raise ConfigurationError(
            f"encryption key {key_id!r} must be bytes ({KEY_BYTES} random bytes), not "
            f"{type(key).__name__}: decode a base64 key with base64.b64decode"
        )
    if len(key) != KEY_BYTES:
        raise ConfigurationError(
            f"encryption key {key_id!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES} "
            "(os.urandom(32), or openssl rand -base64 32 decoded)"
        )
    return bytes(key)


def _aesgcm() -> type[AESGCM]:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:
        raise ConfigurationError(
            f"encryption at rest needs the cryptography package, which is not installed "
            f"({exc}): pip install 'perdure[crypto]'"
        ) from None
    return AESGCM


def _invalid_tag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag

    return InvalidTag
