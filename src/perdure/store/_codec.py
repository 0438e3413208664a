"""Payloads on their way into and out of the database: encryption, then the blob store.

Every payload a store writes goes through :class:`Codec`: it is encrypted when the store has
an :class:`~perdure.Encryption` (bound to its workflow, field and position), then, for the
fields that may be large (workflow inputs and results, step results), offloaded to the blob
store when above its threshold. Reads undo both in reverse order. So the engine, the CLI and
the HTTP API see plain journal text, never ciphertext or a blob reference, and the stores keep
their SQL: they hand each payload to the codec with the row it belongs to.

Associated data: ``perdure/1|<length of the workflow id>|<workflow id>|<field>|<position>``
in UTF-8 (the length makes the split unambiguous whatever the id holds; the field never holds
``|``; the position comes last), with these fields and positions:

=====================  ============================
field                  position
=====================  ============================
``workflow.inputs``    ``""``
``workflow.output``    ``""``
``workflow.error``     ``""``
``step.output``        the step's replay key
``step.error``         the step's replay key
``attempt.error``      ``<step key>#<attempt>``
``message.payload``    the topic
``event.value``        the event key
``approval.details``   the approval's name
``approval.comment``   the approval's name
=====================  ============================

A value copied to another row (another workflow, another step, another field) fails to
decrypt with :class:`~perdure.CorruptRecordError` naming the row it was read from. A row
encrypted with a key this process lacks raises :class:`~perdure.MissingKeyError` naming the
key id: a configuration problem of this process, not damage, so nothing is dead-lettered for
it. Rows written before encryption was turned on are read as they are (unless
``Encryption(allow_plaintext=False)``).

Blobs and encryption: the envelope is what goes to the blob store, so blob contents are
ciphertext too, and equal payloads no longer share one blob (each row's envelope differs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from .._encryption import ENV_VARIABLE, ENVELOPE_PREFIX, Encryption, key_id_of
from .._errors import CorruptRecordError, MissingKeyError
from ._blobs import _PREFIX as _BLOB_PREFIX
from ._blobs import Blobs
from ._protocol import ApprovalRow, AttemptRow, Lease, StepRow, WorkflowRow
from ._rows import workflow_row

log = logging.getLogger("perdure")
R = TypeVar("R")

_WHAT = {
    "workflow.inputs": "the input record of workflow {wf!r}",
    "workflow.output": "the result of workflow {wf!r}",
    "workflow.error": "the error of workflow {wf!r}",
    "step.output": "the output of journal row {key!r} of workflow {wf!r}",
    "step.error": "the error of journal row {key!r} of workflow {wf!r}",
    "attempt.error": "the error of failed attempt {key!r} of workflow {wf!r}",
    "message.payload": "a message on topic {key!r} to workflow {wf!r}",
    "event.value": "event {key!r} of workflow {wf!r}",
    "approval.details": "the details of approval {key!r} of workflow {wf!r}",
    "approval.comment": "the comment on approval {key!r} of workflow {wf!r}",
}


def associated_data(workflow_id: str, field: str, position: str = "") -> bytes:
    """The bytes a payload is bound to: its workflow, its field and its position."""
    text = f"perdure/1|{len(workflow_id)}|{workflow_id}|{field}|{position}"
    return text.encode("utf-8", "surrogatepass")


def describe(workflow_id: str, field: str, position: str = "") -> str:
    """The row a payload belongs to, for error messages."""
    return _WHAT[field].format(wf=workflow_id, key=position)


class Codec:
    """A store's payload codec: its blob store and its encryption (None: payloads in clear)."""

    def __init__(self, blobs: Blobs, encryption: Encryption | None = None) -> None:
        self.blobs = blobs
        self.encryption = encryption
        #: text this short stays inline whatever its bytes (4 bytes per char at most)
        self._inline_chars = blobs.threshold // 4

    # -- one payload ----------------------------------------------------------------------

    def seal(
        self,
        text: str | None,
        workflow_id: str,
        field: str,
        position: str = "",
        *,
        offload: bool = False,
        conn: Any = None,
    ) -> str | None:
        """``text`` as stored: encrypted (when configured), then offloaded when ``offload``
        and above the blob threshold (the blob written on ``conn`` where given)."""
        if text is None:
            return None
        if self.encryption is not None:
            text = self.encryption.encrypt(text, associated_data(workflow_id, field, position))
        return self.blobs.offload(text, conn) if offload else text

    def unseal(
        self,
        text: str | None,
        workflow_id: str,
        field: str,
        position: str = "",
        *,
        offload: bool = False,
    ) -> str | None:
        """``text`` as read back: its blob fetched (``offload`` fields), then decrypted.

        Raises:
            CorruptRecordError: a missing or altered blob, a value that fails authentication
                (altered, or copied from another row), or a clear value where
                ``allow_plaintext`` is off.
            MissingKeyError: the value is encrypted with a key this process lacks.
        """
        if text is None:
            return None
        if offload and text.startswith(_BLOB_PREFIX):
            text = self.blobs.resolve(text, describe(workflow_id, field, position))
        if text.startswith(ENVELOPE_PREFIX):
            where = describe(workflow_id, field, position)
            if self.encryption is None:
                key_id = key_id_of(text)
                raise MissingKeyError(
                    f"{where} is encrypted (key id {key_id!r}), and this process has no "
                    f"encryption keys: set {ENV_VARIABLE}='<key id>:<base64 key>,...' for the "
                    "perdure command, or pass Engine(encryption=perdure.Encryption(...))",
                    key_id,
                )
            return self.encryption.decrypt(text, associated_data(workflow_id, field, position),
                                           where)  # fmt: skip
        if self.encryption is not None and not self.encryption.allow_plaintext:
            raise CorruptRecordError(
                f"{describe(workflow_id, field, position)} is not encrypted, and this process "
                "refuses clear values (Encryption(allow_plaintext=False)): it was written "
                "before encryption was turned on, or by someone else; check the row"
            )
        return text

    # -- rows -----------------------------------------------------------------------------

    def workflow_out(self, row: WorkflowRow) -> WorkflowRow:
        """``row`` as written: inputs, result and error sealed."""
        if self.encryption is None:
            inputs, output = self.blobs.offload(row.inputs), self.blobs.offload(row.output)
            if inputs is row.inputs and output is row.output:
                return row
            return dataclasses.replace(row, inputs=inputs, output=output)
        output, error = self.result_out(row.id, row.output, row.error)
        sealed = self.seal(row.inputs, row.id, "workflow.inputs", offload=True)
        assert sealed is not None
        return dataclasses.replace(row, inputs=sealed, output=output, error=error)

    def workflow_in(self, row: WorkflowRow) -> WorkflowRow:
        """``row`` as read: inputs, result and error unsealed."""
        if not (_stored(row.inputs) or _stored(row.output) or _stored(row.error)):
            return self._plain(row, row.inputs, row.output, row.error)
        inputs = self.unseal(row.inputs, row.id, "workflow.inputs", offload=True)
        assert inputs is not None
        return dataclasses.replace(
            row,
            inputs=inputs,
            output=self.unseal(row.output, row.id, "workflow.output", offload=True),
            error=self.unseal(row.error, row.id, "workflow.error"),
        )

    def result_out(
        self, workflow_id: str, output: str | None, error: str | None
    ) -> tuple[str | None, str | None]:
        """A workflow's final result and error, as written."""
        return (
            self.seal(output, workflow_id, "workflow.output", offload=True),
            self.seal(error, workflow_id, "workflow.error"),
        )

    def step_out(self, row: StepRow, conn: Any = None) -> StepRow:
        """``row`` as written: its output and error sealed (``conn``: see :meth:`seal`)."""
        if self.encryption is None:
            if row.output is None or len(row.output) <= self._inline_chars:
                return row  # the common case, decided without a call
            output = self.blobs.offload(row.output, conn)
            return row if output is row.output else dataclasses.replace(row, output=output)
        wf, key = row.workflow_id, row.key
        return dataclasses.replace(
            row,
            output=self.seal(row.output, wf, "step.output", key, offload=True, conn=conn),
            error=self.seal(row.error, wf, "step.error", key),
        )

    def step_in(self, row: StepRow) -> StepRow:
        """``row`` as read: its output and error unsealed."""
        if not (_stored(row.output) or _stored(row.error)):
            return self._plain(row, row.output, row.error)
        wf, key = row.workflow_id, row.key
        return dataclasses.replace(
            row,
            output=self.unseal(row.output, wf, "step.output", key, offload=True),
            error=self.unseal(row.error, wf, "step.error", key),
        )

    def step_error(self, workflow_id: str) -> Callable[[str, str | None], str | None]:
        """Read the stored error of one of ``workflow_id``'s steps, by key."""
        return lambda key, text: self.unseal(text, workflow_id, "step.error", key)

    def attempt_out(self, row: AttemptRow) -> AttemptRow:
        """``row`` as written: its error sealed."""
        if self.encryption is None:
            return row
        error = self.seal(row.error, row.workflow_id, "attempt.error", _attempt(row))
        assert error is not None
        return dataclasses.replace(row, error=error)

    def attempts_in(self, rows: Iterable[AttemptRow]) -> list[AttemptRow]:
        """``rows`` as read: their errors unsealed."""
        read = []
        for row in rows:
            if _stored(row.error):
                error = self.unseal(row.error, row.workflow_id, "attempt.error", _attempt(row))
                assert error is not None
                row = dataclasses.replace(row, error=error)
            else:
                self._plain(row, row.error)
            read.append(row)
        return read

    def message_out(self, workflow_id: str, topic: str, payload: str) -> str:
        """A message's payload as written."""
        return self.seal(payload, workflow_id, "message.payload", topic) or payload

    def message_in(self, workflow_id: str, topic: str, text: str) -> str:
        """A message's payload as read."""
        return self.unseal(text, workflow_id, "message.payload", topic) or text

    def event_out(self, workflow_id: str, key: str, value: str) -> str:
        """An event's value as written."""
        return self.seal(value, workflow_id, "event.value", key) or value

    def event_in(self, workflow_id: str, key: str, text: str) -> str:
        """An event's value as read."""
        return self.unseal(text, workflow_id, "event.value", key) or text

    def details_out(self, row: ApprovalRow) -> str:
        """An approval's details as written."""
        return self.seal(row.details, row.workflow_id, "approval.details", row.name) or ""

    def comment_out(self, workflow_id: str, name: str, comment: str | None) -> str | None:
        """The comment on a decision, as written."""
        return self.seal(comment, workflow_id, "approval.comment", name)

    def approval_in(self, row: ApprovalRow) -> ApprovalRow:
        """``row`` as read: its details and comment unsealed."""
        if not (_stored(row.details) or _stored(row.comment)):
            return self._plain(row, row.details, row.comment)
        wf, name = row.workflow_id, row.name
        return dataclasses.replace(
            row,
            details=self.unseal(row.details, wf, "approval.details", name) or "",
            comment=self.unseal(row.comment, wf, "approval.comment", name),
        )

    # -- claims ---------------------------------------------------------------------------

    def claimed(
        self,
        rows: Iterable[Sequence[Any]],
        give_back: Callable[[str, Lease], object],
        dead_letter: Callable[[str, Lease, str | None], object],
    ) -> list[WorkflowRow]:
        """Workflows just claimed, read. One encrypted with a key this process lacks is given
        back at once, unstalled, and logged as an error: a worker that cannot read a workflow
        must not sit on it, and another may hold the key. One whose row is damaged (a payload
        that fails authentication, a missing blob) can be read by no worker: it is
        dead-lettered with the error naming the row, instead of being claimed again at every
        sweep; its journal is left as it is."""
        readable = []
        for raw in rows:
            try:
                row = workflow_row(raw)
            except CorruptRecordError as exc:  # a column that is not what perdure wrote
                lease = _raw_lease(raw)
                log.error("perdure: workflow %r is dead-lettered: %s", raw[0], exc)
                if lease is not None:
                    dead_letter(str(raw[0]), lease, self._error_record(str(raw[0]), exc))
                continue
            try:
                readable.append(self.workflow_in(row))
            except MissingKeyError as exc:
                log.error(
                    "perdure: workflow %r cannot be run by this process, which cannot read it "
                    "(%s); it was given back for a worker that can", row.id, exc,
                )  # fmt: skip
                if row.lease is not None:
                    give_back(row.id, row.lease)
            except CorruptRecordError as exc:
                log.error("perdure: workflow %r is dead-lettered: %s", row.id, exc)
                if row.lease is not None:
                    dead_letter(row.id, row.lease, self._error_record(row.id, exc))
        return readable

    def _error_record(self, workflow_id: str, exc: CorruptRecordError) -> str | None:
        """The (sealed) error of a workflow dead-lettered because its row is damaged."""
        record = json.dumps({"type": "perdure._errors:CorruptRecordError",
                             "message": str(exc), "args": [str(exc)]})  # fmt: skip
        return self.result_out(workflow_id, None, record)[1]

    # -- helpers --------------------------------------------------------------------------

    def _plain(self, row: R, *texts: str | None) -> R:
        """``row`` unchanged when none of ``texts`` is sealed: refused if clear values are."""
        strict = self.encryption is not None and not self.encryption.allow_plaintext
        if strict and any(text is not None for text in texts):
            raise CorruptRecordError(
                f"{_row_name(row)} holds a value that is not encrypted, and this process "
                "refuses clear values (Encryption(allow_plaintext=False)): it was written "
                "before encryption was turned on, or by someone else; check the row"
            )
        return row


def _stored(text: str | None) -> bool:
    """Whether ``text`` is encrypted or a blob reference (else it is read as it is)."""
    return text is not None and text.startswith((ENVELOPE_PREFIX, _BLOB_PREFIX))


def _attempt(row: AttemptRow) -> str:
    return f"{row.key}#{row.attempt}"


def _row_name(row: object) -> str:
    if isinstance(row, WorkflowRow):
        return f"workflow row {row.id!r}"
    if isinstance(row, StepRow):
        return f"journal row {row.key!r} of workflow {row.workflow_id!r}"
    if isinstance(row, AttemptRow):
        return f"failed attempt {_attempt(row)!r} of workflow {row.workflow_id!r}"
    if isinstance(row, ApprovalRow):
        return f"approval {row.name!r} of workflow {row.workflow_id!r}"
    return "a row"


def _raw_lease(raw: Sequence[Any]) -> Lease | None:
    """The lease of a claimed row read from its raw owner and epoch columns (``WF_COLUMNS``
    order), when those are readable; None otherwise."""
    try:
        return None if raw[6] is None else Lease(str(raw[6]), int(raw[10]))
    except (TypeError, ValueError, IndexError):
        return None
