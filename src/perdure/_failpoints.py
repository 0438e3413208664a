"""Failpoints: named places in the engine and the stores where a test run injects a fault.

A failpoint is a call ``hit("step.after_commit")`` at a place where a crash, an unexpected
exception or a lost database connection would test perdure's guarantees. Disarmed (always,
outside test runs) each one costs a single check of the module-level boolean :data:`ARMED`
at its call site (``if _failpoints.ARMED: _failpoints.hit(...)``), nothing else.

Arming
------

Two environment variables, read once when perdure is imported::

    PERDURE_TESTING=1
    PERDURE_FAILPOINTS="step.after_commit=kill@3,message.consume=raise@1"

``PERDURE_FAILPOINTS`` is a comma-separated list of ``name=action@hit`` entries:

- ``name`` is one of :data:`POINTS` (an unknown name is refused: a typo must not make a
  test pass by never firing);
- ``action`` is ``kill``, ``raise`` or ``drop`` (below);
- ``hit`` is N >= 1: act on the Nth time this process reaches the point (``@1`` when left
  out). Each entry acts once; give a point several entries to act on several hits
  (``store.finish=raise@1,store.finish=raise@2``). Hits are counted per process, across all
  threads and workflows, from the moment perdure is imported.

Decision: failpoints act only in a process that also sets ``PERDURE_TESTING=1``. A
production process that inherits ``PERDURE_FAILPOINTS`` by mistake (a copied environment, a
leftover CI variable) does not run with faults armed, nor silently ignores them: opening a
store (every ``Engine``, every CLI command) raises :class:`~perdure.ConfigurationError`
naming both variables, so it refuses to start instead of crashing itself later. A
malformed ``PERDURE_FAILPOINTS`` is refused the same way in a test run. Importing perdure
never fails because of them.

Actions
-------

``kill``
    ``SIGKILL`` to this process, at once: a real crash (no ``finally``, no atexit, no flush
    of anything not yet written).
``raise``
    raises :class:`FailpointError`, a plain ``Exception`` subclass (not a ``PerdureError``),
    so it meets the code around the point as an unexpected failure would.
``drop``
    cuts the database connection there. At a point inside a store operation: on
    PostgreSQL the connection's socket is shut down in both directions, so the next
    statement (or the ``COMMIT``) fails as after a real network cut (``consuming input
    failed: server closed the connection unexpectedly``) and the server rolls the open
    transaction back; on SQLite, an embedded library with no connection to cut,
    ``sqlite3.OperationalError("disk I/O error")`` is raised at that point inside the
    transaction, the nearest equivalent (the store rolls back and reports the database
    unavailable). At a point of the engine, where no connection is in hand, the cut is
    applied to the connection of the next store call made by the same thread, before its
    first statement.

Every action first writes one line to stderr, ``perdure failpoint: <name> hit <N>: <action>``
(unbuffered), so a test knows the fault fired.

Points
------

See :data:`POINTS` for the list with where each one sits. Engine points live in
``_context.py`` (journal writes), ``_runs.py`` (a run's outcome) and ``_recovery.py`` (a
claimed workflow's launch); store points sit inside the store's transaction, before its
``COMMIT`` (before the one statement, for single-statement writes), in ``store/sqlite.py``,
``store/_sqlite_waiting.py``, ``store/postgres.py`` and ``store/_pg_waiting.py`` (and
``store/_pg_base.py``, for the claims). This module imports nothing from the engine, so
stores may use it. The crash matrix (``tests/crash/test_crash_matrix.py``) runs every point
with every action on both backends; see ``docs/reliability.md``.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import threading
from collections.abc import Mapping
from typing import Any

from ._errors import ConfigurationError

#: Every failpoint, and where it sits.
POINTS: dict[str, str] = {
    # engine
    "step.before_commit": "a step's journal write is about to be made: a plain step's body "
    "has returned (its side effect is done) and its entry is not written; a transaction "
    "step's transaction has not begun (context: commit, transact)",
    "step.after_commit": "a journal write returned (committed), and the workflow has not yet "
    "seen the step's value: after commit, before acknowledgement (context: commit, "
    "transact, consume)",
    "message.consume": "a receive is about to take its message (context: consume)",
    "workflow.finish": "a run's body has ended and its outcome is about to be stored "
    "(runner: finish)",
    "workflow.launch": "a workflow this engine just claimed (taken over, woken, dequeued) is "
    "about to be launched: the claim is committed, no run has started (recovery: _resume)",
    # stores: inside the transaction, before COMMIT
    "store.append_step": "a plain step's journal entry, before its one statement",
    "store.append_transaction": "a transaction step: its body ran and its entry is inserted, "
    "before COMMIT",
    "store.consume": "a message is marked consumed and journaled, before COMMIT",
    "store.finish": "a workflow's outcome is about to commit (SQLite: written, before COMMIT; "
    "PostgreSQL: before the one statement that writes and commits it)",
    "timer.fire": "claim_ready took waiting workflows (a timer due, a message come, a "
    "cancellation), before COMMIT",
    "recovery.claim": "claim took over workflows of a dead or stopped worker, before COMMIT",
    "lease.renew": "a worker's heartbeat (its lease renewal), before its one statement",
}

#: What a failpoint can do.
ACTIONS = ("kill", "raise", "drop")

#: True only in a test run with failpoints configured: the single check on the disarmed path.
ARMED = False


class FailpointError(Exception):
    """The failure a ``raise`` failpoint injects: an ``Exception`` that is not a
    ``PerdureError``, so the code around the point meets it as an unexpected failure."""


_plan: dict[str, dict[int, str]] = {}  # point -> {hit number: action}
_hits: dict[str, int] = {}
_lock = threading.Lock()
_refusal: ConfigurationError | None = None
_pending = threading.local()  # .drop: cut the connection of this thread's next store call


def configure(environ: Mapping[str, str] | None = None) -> None:
    """(Re)read the two variables from ``environ`` (default: ``os.environ``), arm or disarm
    accordingly, and reset the hit counts. Called once at import; tests call it again.

    Never raises: a refusal (failpoints outside a test run, a malformed list) is kept and
    raised by :func:`check` when a store is opened.
    """
    global ARMED, _plan, _refusal
    env = os.environ if environ is None else environ
    ARMED, _plan, _refusal = False, {}, None
    with _lock:
        _hits.clear()
    spec = env.get("PERDURE_FAILPOINTS", "").strip()
    if not spec:
        return
    if env.get("PERDURE_TESTING", "") != "1":
        _refusal = ConfigurationError(
            f"PERDURE_FAILPOINTS is set ({spec!r}) but PERDURE_TESTING is not 1: failpoints "
            "crash or break this process on purpose and are for test runs only. Unset "
            "PERDURE_FAILPOINTS (it was probably inherited by mistake), or set "
            "PERDURE_TESTING=1 in a test run"
        )
        return
    try:
        plan = parse(spec)
    except ConfigurationError as exc:
        _refusal = exc
        return
    _plan, ARMED = plan, True


def parse(spec: str) -> dict[str, dict[int, str]]:
    """The plan a ``PERDURE_FAILPOINTS`` value describes: point -> {hit number: action}.

    Raises:
        ConfigurationError: an entry is malformed, or names an unknown point or action.
    """
    plan: dict[str, dict[int, str]] = {}
    for raw in spec.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, rest = entry.partition("=")
        action, at, count = rest.partition("@")
        name, action = name.strip(), action.strip()
        if not sep or name not in POINTS or action not in ACTIONS:
            raise ConfigurationError(
                f"PERDURE_FAILPOINTS entry {entry!r} is not name=action@hit with a known name "
                f"and action (actions: {', '.join(ACTIONS)}; points: {', '.join(POINTS)})"
            )
        hit = count.strip() if at else "1"
        if not hit.isdigit() or int(hit) < 1:
            raise ConfigurationError(
                f"PERDURE_FAILPOINTS entry {entry!r}: the hit after @ is a whole number >= 1"
            )
        plan.setdefault(name, {})[int(hit)] = action
    return plan


def check() -> None:
    """Refuse to open a store when failpoints are set outside a test run, or malformed.

    Raises:
        ConfigurationError: saying which variable to fix.
    """
    if _refusal is not None:
        raise _refusal


def hit(name: str, conn: Any = None) -> None:
    """The failpoint ``name`` is reached (call only when :data:`ARMED`): count the hit, and
    act if the plan says so for this hit.

    Args:
        name: one of :data:`POINTS`.
        conn: the database connection the code at this point is using (stores), or None
            (engine points: a ``drop`` then cuts this thread's next store connection).

    Raises:
        FailpointError: a ``raise`` action.
        sqlite3.OperationalError: a ``drop`` on a SQLite connection.
    """
    with _lock:
        count = _hits[name] = _hits.get(name, 0) + 1
        action = _plan.get(name, {}).get(count)
    if action is None:
        return
    os.write(2, f"perdure failpoint: {name} hit {count}: {action}\n".encode())
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise FailpointError(f"failpoint {name} (hit {count}): injected failure")
    elif conn is None:
        _pending.drop = name
    else:
        _cut(conn)


def hits(name: str) -> int:
    """How many times this process reached ``name`` since failpoints were configured."""
    with _lock:
        return _hits.get(name, 0)


def connection_used(conn: Any) -> None:
    """A store is about to use ``conn`` for a call (call only when :data:`ARMED`): apply
    a ``drop`` an engine point of this thread left pending."""
    name = getattr(_pending, "drop", None)
    if name is not None:
        _pending.drop = None
        _cut(conn)


def _cut(conn: Any) -> None:
    if isinstance(conn, sqlite3.Connection):
        raise sqlite3.OperationalError("disk I/O error")
    # psycopg: shut the socket down under the driver, as a network cut would; the driver
    # notices at its next read or write, and the server ends the session (rolling back).
    cut = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        cut.shutdown(socket.SHUT_RDWR)
    finally:
        cut.close()


configure()
