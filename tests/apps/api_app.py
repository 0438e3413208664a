"""The application the HTTP API tests serve: ``perdure serve --app tests/apps/api_app.py``
imports it, and the in-process tests load it the same way.

- ``api_order(order)``: receives a message on "go", asks for the approval "ship" (with the
  order and the message as details), and returns what happened: ``{"order", "message",
  "approved", "by", "comment"}``.
- ``api_echo(value)``: returns ``value`` at once.
- ``api_fail(reason)``: its step ``api_check`` fails for good (``PermanentError(reason)``)
  until ``reason`` is in ``FIXED``, then it returns "fixed <reason>" (a workflow to resume or
  retry); ``CHECKS`` counts the step's executions.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import perdure


@perdure.workflow(name="api_order")
def api_order(order: str) -> dict[str, Any]:
    message = perdure.receive("go")
    decision = perdure.wait_for_approval("ship", details={"order": order, "message": message})
    return {
        "order": order,
        "message": message,
        "approved": decision.approved,
        "by": decision.by,
        "comment": decision.comment,
    }


@perdure.workflow(name="api_echo")
def api_echo(value: Any) -> Any:
    return value


FIXED: set[str] = set()
CHECKS: Counter[str] = Counter()


@perdure.step(name="api_check")
def api_check(reason: str) -> str:
    CHECKS[reason] += 1
    if reason not in FIXED:
        raise perdure.PermanentError(reason)
    return f"fixed {reason}"


@perdure.workflow(name="api_fail")
def api_fail(reason: str) -> str:
    return api_check(reason)
