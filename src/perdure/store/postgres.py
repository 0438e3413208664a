"""The PostgreSQL store: many workers on many machines, coordinated by one database.

psycopg 3 (sync API) with a connection pool: the engine calls the store from several threads,
and each call borrows a connection for one statement or one transaction. Connections are in
autocommit mode, so a single statement is its own transaction; the few multi-statement
operations (a migration, consuming a message, deciding an approval, finishing a workflow) run
in an explicit transaction.

Time: heartbeats, leases and claims use the database's clock (``clock_timestamp()``), so
workers with skewed clocks agree on who is alive. The ``now`` given to ``claim_ready`` is the
engine's clock (timers are set by it) and is used as given.

Fencing: a journal write locks the workflow row ``FOR SHARE`` while it checks the lease, so a
claim (which takes the row ``FOR UPDATE``) cannot slip in between the check and the commit: a
worker that lost its lease commits nothing. Claims skip rows another transaction holds
(``FOR UPDATE SKIP LOCKED``), so concurrent claimers never block each other or take the same
workflow.

A URL's ``?schema=NAME`` (or the ``schema`` argument) puts perdure's tables in that PostgreSQL
schema (created by ``migrate`` if missing), e.g. one schema per test or per application.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from .. import _failpoints
from .._errors import StoreError
from ._group import Outcome, step_not_recorded
from ._pg_base import (
    _NOW,
    _UNSETTLED,
    MIGRATION_LOCK,
    TRANSIENT_SQLSTATES,
    Conn,
    _hold,
    run,
    split_url,
    transient,
)
from ._pg_limits import PgLimits
from ._pg_ownership import PgOwnership
from ._pg_waiting import PgWaiting
from ._protocol import (
    AttemptRow,
    Lease,
    OwnershipLost,
    StepRow,
    WorkflowRow,
    WorkflowStatus,
)
from ._rows import (
    ATTEMPT_COLUMNS,
    PG_STEP_MARKS,
    RESET_EVENT,
    RESET_STATUS,
    STATUS_TEXT,
    STEP_COLUMNS,
    UNFINISHED,
    WF_COLUMNS,
    attempt_rows,
    forget_failed_step,
    step_row,
    step_values,
    workflow_row,
    workflow_values,
)

__all__ = ["MIGRATION_LOCK", "TRANSIENT_SQLSTATES", "PostgresStore", "split_url", "transient"]

_STEPS_SQL = (
    f'SELECT {STEP_COLUMNS} FROM steps WHERE workflow_id = %s ORDER BY position, key COLLATE "C"'
)
_ATTEMPTS_SQL = (
    f"SELECT {ATTEMPT_COLUMNS} FROM step_attempts WHERE workflow_id = %s "
    'ORDER BY failed_at, key COLLATE "C", attempt'
)
_FENCE = (
    "WITH owned AS (SELECT 1 FROM workflows WHERE id = %(wf)s AND owner = %(owner)s "
    "AND epoch = %(epoch)s FOR SHARE) "
)
_APPEND_SQL = (
    f"{_FENCE}INSERT INTO steps ({STEP_COLUMNS}) SELECT %(wf)s, %(position)s, %(key)s, "
    "%(name)s, %(status)s, %(output)s, %(error)s, %(started_at)s, %(finished_at)s, "
    "%(attempts)s, %(fingerprint)s FROM owned ON CONFLICT DO NOTHING"
)
#: a workflow's outcome, fenced on its lease; approvals it still has pending are closed with it
_FINISH_SQL = (
    "WITH done AS (UPDATE workflows SET status = %(status)s, output = %(output)s, "
    f"error = %(error)s, owner = NULL, updated_at = {_NOW} WHERE id = %(wf)s "
    "AND owner = %(owner)s AND epoch = %(epoch)s RETURNING queue), "
    f"closed AS (UPDATE approvals SET status = 'CLOSED', decided_at = {_NOW} "
    "WHERE workflow_id = %(wf)s AND status = 'PENDING' AND EXISTS (SELECT 1 FROM done)) "
    "SELECT queue FROM done"
)
_ATTEMPT_SQL = (
    f"{_FENCE}INSERT INTO step_attempts ({ATTEMPT_COLUMNS}) SELECT %(wf)s, %(key)s, "
    "%(attempt)s, %(name)s, %(error)s, %(started_at)s, %(failed_at)s, %(retry_at)s "
    "FROM owned ON CONFLICT DO NOTHING"
)


def _append_params(row: StepRow, lease: Lease) -> dict[str, Any]:
    return {
        "wf": row.workflow_id, "owner": lease.owner, "epoch": lease.epoch,
        "position": row.position, "key": row.key, "name": row.name,
        "status": STATUS_TEXT[row.status], "output": row.output, "error": row.error,
        "started_at": row.started_at, "finished_at": row.finished_at,
        "attempts": row.attempts, "fingerprint": row.fingerprint,
    }  # fmt: skip


class PostgresStore(PgWaiting, PgLimits, PgOwnership):
    """A :class:`~perdure.store.Store` on a PostgreSQL database.

    Args:
        url: a libpq URL (``postgresql://user@host:5432/db``). perdure's own query
            parameters: ``schema`` (the PostgreSQL schema of its tables), ``pool_size`` (sets
            ``max_size``) and ``outage_timeout``, so an ``Engine(url)`` can set them.
        schema: the schema (overrides the URL's); default: the server's search_path.
        min_size: connections the pool keeps open.
        max_size: most connections the pool opens at once.
        connect_timeout: seconds to wait for the database when opening the store.
        outage_timeout: how long a call retries transient failures (connection lost, server
            restarting, serialization failure, deadlock) before it raises
            ``StoreUnavailableError``.
    """

    # -- workflows -------------------------------------------------------------------------

    def create_workflow(self, row: WorkflowRow) -> tuple[WorkflowRow, bool]:
        """Insert ``row`` unless its id exists; return (stored row, created)."""
        marks = ", ".join(["%s"] * len(WF_COLUMNS.split(",")))
        written = self.codec.workflow_out(row)

        def create(conn: Conn) -> tuple[WorkflowRow, bool]:
            cur = run(
                conn,
                f"INSERT INTO workflows ({WF_COLUMNS}) VALUES ({marks}) "
                "ON CONFLICT (id) DO NOTHING",
                workflow_values(written),
            )
            if cur.rowcount == 1:
                if row.status is WorkflowStatus.ENQUEUED:
                    self._notify(conn)  # workers take it off its queue at once
                return row, True
            found = conn.execute(
                f"SELECT {WF_COLUMNS} FROM workflows WHERE id = %s", (row.id,)
            ).fetchone()
            if found is None:  # deleted in between: nothing perdure does, but be exact
                raise StoreError(f"workflow {row.id!r} vanished while being created")
            stored = workflow_row(found)  # its payloads are fetched below, off this connection
            # this very insert, retried after its acknowledgement was lost: same creator
            mine = (stored.owner, stored.created_at, stored.epoch) == (row.owner, row.created_at, 1)
            return stored, mine and stored.inputs == written.inputs

        stored, created = self._run(create)
        return (row, True) if stored is row else (self.codec.workflow_in(stored), created)

    def fork_workflow(self, row: WorkflowRow, steps: Sequence[StepRow]) -> tuple[WorkflowRow, bool]:
        """Create ``row`` with ``steps`` as its journal in one transaction (see the
        protocol). A retry after a lost acknowledgement finds the row and returns it as not
        created: the caller compares it with what it asked for."""
        marks = ", ".join(["%s"] * len(WF_COLUMNS.split(",")))
        written = self.codec.workflow_out(row)  # sealed for the fork's own id

        def fork(conn: Conn) -> tuple[WorkflowRow, bool]:
            with conn.transaction():
                cur = conn.execute(
                    f"INSERT INTO workflows ({WF_COLUMNS}) VALUES ({marks}) "
                    "ON CONFLICT (id) DO NOTHING",
                    workflow_values(written),
                )
                if cur.rowcount != 1:
                    found = conn.execute(
                        f"SELECT {WF_COLUMNS} FROM workflows WHERE id = %s", (row.id,)
                    ).fetchone()
                    if found is None:  # deleted in between: nothing perdure does
                        raise StoreError(f"workflow {row.id!r} vanished while being forked")
                    return self._wf(found), False
                with conn.cursor() as cursor:
                    cursor.executemany(
                        f"INSERT INTO steps ({STEP_COLUMNS}) VALUES ({PG_STEP_MARKS})",
                        [step_values(self.codec.step_out(step, conn)) for step in steps],
                    )
                if row.owner is None:
                    self._notify(conn)  # a worker may take it at once
                return row, True

        return self._run(fork)

    def version_counts(self) -> list[tuple[str, str | None, int]]:
        """(name, code version, count) of unfinished workflows."""
        rows = self._fetchall(
            f"SELECT name, version, COUNT(*) FROM workflows WHERE {UNFINISHED} "
            "GROUP BY name, version ORDER BY name, version"
        )
        return [(str(r[0]), r[1], int(r[2])) for r in rows]

    def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        """Return the workflow with this id, or None."""
        found = self._fetchone(f"SELECT {WF_COLUMNS} FROM workflows WHERE id = %s", (workflow_id,))
        return None if found is None else self._wf(found)

    def list_workflows(
        self,
        status: WorkflowStatus | None,
        name: str | None,
        limit: int,
        created_after: float | None = None,
    ) -> list[WorkflowRow]:
        """Newest first, filtered by status, name and creation time when given."""
        clauses: list[str] = []
        params: list[Any] = []
        if created_after is not None:
            clauses.append("created_at >= %s")
            params.append(created_after)
        if status is not None:
            clauses.append("status = %s")
            params.append(status.value)
        if name is not None:
            clauses.append("name = %s")
            params.append(name)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT {WF_COLUMNS} FROM workflows {where} ORDER BY created_at DESC LIMIT %s"
        return [self._wf(r) for r in self._fetchall(query, (*params, limit))]

    def finish_workflow(
        self,
        workflow_id: str,
        lease: Lease,
        status: WorkflowStatus,
        output: str | None,
        error: str | None,
    ) -> None:
        """Record the final outcome and drop ownership, if ``lease`` is current; approvals it
        still has pending are closed (nobody can decide them any more)."""
        output, error = self.codec.result_out(workflow_id, output, error)

        params = {"status": status.value, "output": output, "error": error, "wf": workflow_id,
                  "owner": lease.owner, "epoch": lease.epoch}  # fmt: skip

        def finish(conn: Conn) -> int:
            if _failpoints.ARMED:
                _failpoints.hit("store.finish", conn)
            # one statement, so one round trip and its own transaction (a BEGIN, a second
            # UPDATE and a COMMIT were three more round trips for every workflow)
            done = run(conn, _FINISH_SQL, params).fetchone()
            if done is None:
                return 0
            if done[0] is not None:
                self._notify(conn)  # a queue slot is free
            return 1

        def settled(conn: Conn) -> Any:
            found = conn.execute(
                "SELECT 1 FROM workflows WHERE id = %s AND status = %s AND owner IS NULL "
                "AND epoch = %s AND output IS NOT DISTINCT FROM %s "
                "AND error IS NOT DISTINCT FROM %s",
                (workflow_id, status.value, lease.epoch, output, error),
            ).fetchone()
            return 1 if found is not None else _UNSETTLED

        if self._run(finish, settled) != 1:
            raise OwnershipLost(f"worker {lease.owner} no longer owns workflow {workflow_id!r}")

    def reset_workflow(
        self, workflow_id: str, retry_failed_step: bool = False, version: str | None = None
    ) -> bool:
        """Make a finished, unsuccessful workflow runnable again (see the protocol); workers
        are notified at once. Each reset leaves a token of its own in the workflow's events,
        in the same transaction: a reset whose acknowledgement was lost is recognised by it
        (the workflow may already be running, or have failed again, by the time the retry
        looks), and never applied twice."""
        mark = self.codec.event_out(workflow_id, RESET_EVENT, json.dumps(uuid.uuid4().hex))

        def reset(conn: Conn) -> bool:
            with conn.transaction():
                found = conn.execute(
                    "SELECT error FROM workflows WHERE id = %s "
                    "AND status IN ('ERROR', 'CANCELLED', 'DEAD_LETTER') FOR UPDATE",
                    (workflow_id,),
                ).fetchone()
                if found is None:
                    return False
                if retry_failed_step:
                    error = self.codec.unseal(found[0], workflow_id, "workflow.error")
                    forget_failed_step(
                        conn, "%s", workflow_id, error, self.codec.step_error(workflow_id)
                    )
                conn.execute(
                    f"UPDATE workflows SET status = {RESET_STATUS}, owner = NULL, "
                    f"output = NULL, error = NULL, stalls = 0, cancel_requested = 0, "
                    f"updated_at = {_NOW}, version = COALESCE(%s, version) WHERE id = %s",
                    (version, workflow_id),
                )
                conn.execute(
                    "INSERT INTO events (workflow_id, key, value, updated_at) "
                    f"VALUES (%s, %s, %s, {_NOW}) ON CONFLICT (workflow_id, key) "
                    "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    (workflow_id, RESET_EVENT, mark),
                )
                self._notify(conn)
                return True

        def settled(conn: Conn) -> Any:
            found = conn.execute(
                "SELECT value FROM events WHERE workflow_id = %s AND key = %s",
                (workflow_id, RESET_EVENT),
            ).fetchone()
            return True if found is not None and found[0] == mark else _UNSETTLED

        return self._run(reset, settled)

    def release_workflow(self, workflow_id: str, lease: Lease, stalled: bool = False) -> bool:
        """Give one unfinished workflow back (PENDING, no owner) if ``lease`` is current."""
        return (
            self._rowcount(
                f"UPDATE workflows SET owner = NULL, status = 'PENDING', updated_at = {_NOW}, "
                f"stalls = stalls + %s WHERE id = %s AND owner = %s AND epoch = %s "
                f"AND {UNFINISHED}",
                (int(stalled), workflow_id, lease.owner, lease.epoch),
            )
            == 1
        )

    # -- journal ---------------------------------------------------------------------------

    def load_steps(self, workflow_id: str) -> list[StepRow]:
        """The workflow's journal, by position."""
        return [self._step(r) for r in self._fetchall(_STEPS_SQL, (workflow_id,))]

    def load_run(self, workflow_id: str) -> tuple[list[StepRow], list[AttemptRow]]:
        """The journal and the failed attempts, read in one round trip (a pipeline)."""

        def read(conn: Conn) -> tuple[list[Any], list[Any]]:
            with conn.pipeline():
                steps = conn.execute(_STEPS_SQL, (workflow_id,))
                attempts = conn.execute(_ATTEMPTS_SQL, (workflow_id,))
            return steps.fetchall(), attempts.fetchall()

        rows, tried = self._run(read)
        return [self._step(r) for r in rows], self._attempts(workflow_id, tried)

    def append_step(self, row: StepRow, lease: Lease) -> None:
        """Commit one journal entry, fenced on the lease. Entries of workflows stepping at
        the same time share one transaction (see ``perdure.store._group``)."""
        outcome = self._group.submit([_append_params(self.codec.step_out(row), lease)])[0]
        if outcome is not None:
            raise outcome

    def append_steps(self, entries: Sequence[tuple[StepRow, Lease]]) -> list[Outcome]:
        """Commit several journal entries together, each fenced on its own lease (see the
        protocol)."""
        out = self.codec.step_out
        return self._group.submit([_append_params(out(row), lease) for row, lease in entries])

    def _write_steps(self, batch: list[dict[str, Any]]) -> list[Outcome]:
        """One transaction over ``batch``, its statements pipelined (one round trip); a lone
        entry is one autocommitted statement."""

        def write(conn: Conn) -> list[int]:
            if len(batch) == 1:
                if _failpoints.ARMED:
                    _failpoints.hit("store.append_step", conn)
                return [run(conn, _APPEND_SQL, batch[0]).rowcount]
            with conn.transaction(), conn.pipeline():
                cursors = []
                for params in batch:
                    if _failpoints.ARMED:
                        _failpoints.hit("store.append_step", conn)
                    cursors.append(conn.execute(_APPEND_SQL, params))
            return [cursor.rowcount for cursor in cursors]

        counts = self._run_journal(write, self._batch_journaled(batch))
        return [None if n == 1 else step_not_recorded(p["wf"], p["key"], p["owner"])
                for n, p in zip(counts, batch, strict=True)]  # fmt: skip

    @classmethod
    def _batch_journaled(cls, batch: list[dict[str, Any]]) -> Callable[[Conn], Any]:
        """``settled`` for a batch of journal entries: the batch is one transaction, so it
        landed if any of its rows is there (under its lease); each then counts as written
        if its own row is (an entry whose fence failed wrote nothing either time). The
        checks are built only if it is called (after a failure), not on every write."""

        def settled(conn: Conn) -> Any:
            found = [cls._journaled(params)(conn) is not _UNSETTLED for params in batch]
            return [int(hit) for hit in found] if any(found) else _UNSETTLED

        return settled

    def append_step_atomically(
        self, workflow_id: str, key: str, lease: Lease, body: Callable[[Any], StepRow]
    ) -> StepRow:
        """Run ``body`` on a pooled connection inside the transaction that journals the row
        it returns (see the protocol). The workflow row stays locked ``FOR SHARE`` meanwhile,
        so no claim can take the workflow while the body runs."""

        def transact(conn: Conn) -> StepRow:
            with conn.transaction():
                _hold(conn, workflow_id, lease)
                found = conn.execute(
                    f"SELECT {STEP_COLUMNS} FROM steps WHERE workflow_id = %s AND key = %s",
                    (workflow_id, key),
                ).fetchone()
                if found is not None:
                    return step_row(found)  # its output is fetched below, off this connection
                try:
                    row = body(conn)  # its exceptions roll back and propagate as they are
                except Exception as exc:
                    if conn.broken:  # our own connection died under the body: not its fault
                        raise psycopg.OperationalError(f"connection lost: {exc}") from exc
                    raise
                conn.execute(
                    f"INSERT INTO steps ({STEP_COLUMNS}) VALUES ({PG_STEP_MARKS})",
                    step_values(self.codec.step_out(row, conn)),
                )
                if _failpoints.ARMED:
                    _failpoints.hit("store.append_transaction", conn)
                return row

        return self.codec.step_in(self._run(transact))

    def append_attempt(self, row: AttemptRow, lease: Lease) -> None:
        """Record a failed attempt, fenced on the lease, in one statement."""
        row = self.codec.attempt_out(row)
        params = {
            "wf": row.workflow_id, "owner": lease.owner, "epoch": lease.epoch,
            "key": row.key, "attempt": row.attempt, "name": row.name, "error": row.error,
            "started_at": row.started_at, "failed_at": row.failed_at, "retry_at": row.retry_at,
        }  # fmt: skip
        if self._rowcount(_ATTEMPT_SQL, params, self._journaled(params)) != 1:
            raise OwnershipLost(
                f"worker {lease.owner} cannot record attempt {row.attempt} of step {row.key} of "
                f"workflow {row.workflow_id!r}: it no longer holds the workflow"
            )

    @staticmethod
    def _journaled(params: dict[str, Any]) -> Callable[[Conn], Any]:
        """``settled`` for a fenced journal write: it landed if its row is there and the
        lease is still current (only the current lease's run writes that key)."""
        table, attempt = ("step_attempts", "AND attempt = %(attempt)s") if "attempt" in params \
            else ("steps", "")  # fmt: skip

        def settled(conn: Conn) -> Any:
            found = conn.execute(
                f"SELECT 1 FROM {table} JOIN workflows ON workflows.id = {table}.workflow_id "
                f"WHERE workflow_id = %(wf)s AND key = %(key)s {attempt} "
                "AND owner = %(owner)s AND epoch = %(epoch)s",
                params,
            ).fetchone()
            return 1 if found is not None else _UNSETTLED

        return settled

    def load_attempts(self, workflow_id: str) -> list[AttemptRow]:
        """Every recorded failed attempt of the workflow."""
        return self._attempts(workflow_id, self._fetchall(_ATTEMPTS_SQL, (workflow_id,)))

    def _attempts(self, workflow_id: str, rows: list[Any]) -> list[AttemptRow]:
        return self.codec.attempts_in(attempt_rows(workflow_id, rows))
