"""Structured logging: the running workflow's id and step on log records, and a JSON format.

:class:`LogContextFilter` adds ``workflow_id`` and ``step`` attributes to the records it sees,
read from the context of the code that logs: the workflow running in this thread or task,
and the step whose attempt is running (None outside). It is installed on the ``perdure``
logger when perdure is imported, so perdure's own records always carry both; add it to your
handler (``handler.addFilter(perdure.LogContextFilter())``) to give your own records the same
fields. :class:`JsonLogFormatter` writes each record as one JSON object per line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from . import _context


def _current_fields() -> tuple[str | None, str | None]:
    """(workflow id, step name) of the code running in this thread or task."""
    ctx = _context._current.get()
    return (None if ctx is None else ctx.workflow_id), _context._step_name.get()


class LogContextFilter(logging.Filter):
    """A logging filter that adds the running workflow's id and step to every record.

    Sets ``record.workflow_id`` (the id of the workflow running where the record was logged,
    or None outside workflows) and ``record.step`` (the name of the step whose body is
    running, or None outside steps), unless the record already has them (given with
    ``extra=``, or set by this filter earlier on its way). It never drops a record.

    Add it to a handler to cover every logger that handler serves::

        handler.addFilter(perdure.LogContextFilter())
        handler.setFormatter(logging.Formatter("%(workflow_id)s %(step)s %(message)s"))

    With a ``QueueHandler``, add it to the ``QueueHandler`` (which runs where the record is
    logged), not to the handlers of the ``QueueListener`` thread.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields; always True (the record is kept)."""
        fields = record.__dict__
        if "workflow_id" not in fields or "step" not in fields:
            workflow_id, step = _current_fields()
            fields.setdefault("workflow_id", workflow_id)
            fields.setdefault("step", step)
        return True


class JsonLogFormatter(logging.Formatter):
    """A logging formatter that writes each record as one line of JSON.

    Keys: ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message`` (with
    its arguments merged), ``workflow_id``, ``step`` (as :class:`LogContextFilter` sets
    them; read from the running code when no filter did) and ``exception`` (the formatted
    traceback, or null); ``stack`` too when the record was logged with ``stack_info``.
    Values that are not JSON are written as their ``str()``.

    Example::

        handler = logging.StreamHandler()
        handler.setFormatter(perdure.JsonLogFormatter())
        logging.getLogger().addHandler(handler)
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON object (no newline inside)."""
        fields = record.__dict__
        workflow_id, step = (
            (fields["workflow_id"], fields["step"])
            if "workflow_id" in fields and "step" in fields
            else _current_fields()
        )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "workflow_id": workflow_id,
            "step": step,
            "exception": record.exc_text or None,
        }
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


logging.getLogger("perdure").addFilter(LogContextFilter())
