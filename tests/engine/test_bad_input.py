"""Bad input gets a clear error and loses nothing: a missing database, awkward payloads on
every channel, corrupt rows written behind perdure's back, invalid ids and names.

The codec's own cases (every supported type, unsupported values with their path, garbage
text) are unit tests in ``tests/unit/test_serialize.py``; here each kind of awkward value goes
through a real engine on both backends, as a workflow argument, a step result, a message, an
event and approval details, and must round-trip exactly (the first run and a replay alike) or
be refused with a ``SerializationError`` that says where and what, with nothing committed.
Corrupt rows are written with raw SQL (sqlite3 / psycopg); each must give a typed error
naming the row, never a silent wrong value or any code run on the row's say-so.
docs/serialization.md ("Bad input") lists the cases.
"""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

import perdure
from conftest import POSTGRES_URL, wait_until

gate = threading.Event()
bodies: list[str] = []


@perdure.step
def first() -> int:
    bodies.append("first")
    return 1


@perdure.step
def wait_for_gate() -> int:
    bodies.append("wait")
    gate.wait(30)
    return 2


@perdure.workflow(name="bad_input_flow")
def bad_input_flow() -> int:
    return first() + wait_for_gate()


def test_a_database_in_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "perdure.db"
    with pytest.raises(perdure.StoreUnavailableError, match="does not exist"):
        perdure.Engine(f"sqlite:///{missing}").open()


def test_a_corrupt_journal_row_fails_the_run_clearly_and_is_kept(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    with perdure.Engine(f"sqlite:///{db}", shutdown_grace=0.1) as engine:
        engine.start(bad_input_flow, id="c1")
        while bodies.count("wait") < 1:
            threading.Event().wait(0.005)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE steps SET output = '{\"trunc' WHERE workflow_id = 'c1'")
    conn.commit()
    conn.close()
    gate.set()
    with perdure.Engine(f"sqlite:///{db}") as engine:
        with pytest.raises(perdure.SerializationError) as info:
            engine.handle("c1").result(timeout=10)
        assert engine.get_workflow("c1").status is perdure.WorkflowStatus.ERROR
    message = str(info.value)
    assert "step 'first'" in message
    assert "position 0" in message
    assert "'c1'" in message
    conn = sqlite3.connect(db)
    kept = conn.execute("SELECT output FROM steps WHERE workflow_id = 'c1'").fetchall()
    conn.close()
    assert kept == [('{"trunc',)]  # the row is left as it was, for a human to inspect
    assert bodies == ["first", "wait"]  # the corrupt step was not silently re-run


@perdure.step
def huge(n: int) -> str:
    return "x" * n


@perdure.workflow(name="bad_input_huge")
def returns_huge(n: int) -> int:
    try:
        huge(n)
    except perdure.SerializationError as exc:
        return len(str(exc))
    return -1


def test_a_result_over_the_entry_cap_fails_clearly_and_commits_nothing(db_url: str) -> None:
    with perdure.Engine(db_url, max_entry_bytes=1000, shutdown_grace=0.5) as engine:
        assert engine.run(returns_huge, 500, id="small", timeout=10) == -1
        assert engine.run(returns_huge, 5000, id="big", timeout=10) > 0
        assert [s.name for s in engine.list_steps("big")] == []  # nothing journaled
        with pytest.raises(perdure.SerializationError, match="1,000-byte cap"):
            engine.run(huge_flow, id="raised", timeout=10)


@perdure.workflow(name="bad_input_huge_flow")
def huge_flow() -> str:
    return huge(2000)


# -- helpers -----------------------------------------------------------------------------------


def raw_sql(db_url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement straight on the test database, behind perdure's back (``?``
    placeholders on both backends); the rows it returns."""
    if db_url.startswith("sqlite:///"):
        lite = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            return lite.execute(statement, params).fetchall()
        finally:
            lite.close()
    schema = db_url.rpartition("schema=")[2]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as pg:
        pg.execute(f"SET search_path TO {schema}".encode())
        cur = pg.execute(statement.replace("?", "%s").encode(), params)
        return cur.fetchall() if cur.description else []


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (NaN equals NaN, time zones too)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dt.datetime):
        return bool(a == b and a.tzinfo == b.tzinfo and a.utcoffset() == b.utcoffset())
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    return bool(a == b)


MARKER: list[Path] = []  # the file a Reducer writes if anything ever calls its __reduce__


class Reducer:
    """An object whose ``__reduce__`` has a side effect: perdure must never call it."""

    def __reduce__(self) -> tuple[Any, ...]:
        MARKER[0].write_text("__reduce__ was called")
        return (print, ("__reduce__ result was used",))


@pytest.fixture(autouse=True)
def _marker(tmp_path: Path) -> Iterator[Path]:
    MARKER[:] = [tmp_path / "reduce-was-called"]
    yield MARKER[0]
    assert not MARKER[0].exists(), "an object's __reduce__ was executed"


def _nest(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


# -- awkward payloads that must round-trip exactly ------------------------------------------------


ROUND_TRIPS: dict[str, Callable[[], Any]] = {
    "nan and infinities": lambda: [math.nan, math.inf, -math.inf, {"x": math.nan}],
    "lone surrogates": lambda: ["\ud800", "a\udfffb", {"\udbff": "\udc00"}],
    "NUL and control characters": lambda: "a\x00b\x1f\x7f\u2028",
    "bytes": lambda: [b"", b"\x00\xff\xfe", bytearray(b"\x01")],
    "naive datetime": lambda: dt.datetime(2026, 3, 29, 1, 30),  # noqa: DTZ001 - naive on purpose
    "aware datetime": lambda: dt.datetime(
        2026, 3, 29, 1, 30, tzinfo=dt.timezone(-dt.timedelta(hours=5))
    ),
    "zoned datetime": lambda: dt.datetime(2026, 3, 29, 1, 30, tzinfo=ZoneInfo("Europe/Paris")),
    "sets": lambda: [{1, "a", (2, 3)}, frozenset({b"x", None}), set()],
    "dict keys that are not strings or start with $": lambda: {1: "a", None: 2, "$blob": 3},
    "deep but allowed nesting": lambda: _nest(150),
}


def _expected(value: Any) -> Any:
    """What the journal gives back for ``value`` (a bytearray reads back as bytes)."""
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, list):
        return [_expected(v) for v in value]
    return value


@perdure.step(name="bad_echo")
def echo(value: Any) -> Any:
    return value


@perdure.workflow(name="bad_channels")
def channels(value: Any) -> list[Any]:
    """The value as an argument, an event, a step result and (after an unload and a replay)
    a message."""
    perdure.set_event("value", value)
    stepped = echo(value)
    received = perdure.receive("in")
    return [value, stepped, received]


@perdure.workflow(name="bad_approval")
def asks(value: Any) -> bool:
    return perdure.wait_for_approval("check", details=value).approved


@pytest.mark.parametrize("kind", list(ROUND_TRIPS))
def test_awkward_values_round_trip_exactly_on_every_channel(db_url: str, kind: str) -> None:
    value, wanted = ROUND_TRIPS[kind](), _expected(ROUND_TRIPS[kind]())
    with perdure.Engine(db_url, shutdown_grace=0.5) as engine:
        handle = engine.start(channels, value, id="w")
        assert same(engine.get_event("w", "value", timeout=10), wanted)
        wait_until(lambda: engine.get_workflow("w").status is perdure.WorkflowStatus.WAITING)
        assert engine.send("w", "in", value)  # the run resumes from its journal: a replay
        assert all(same(got, wanted) for got in handle.result(timeout=10))
        assert same(engine.get_workflow("w").kwargs, {"value": wanted})
        engine.start(asks, value, id="a")
        wait_until(lambda: bool(engine.pending_approvals()))
        assert same(engine.pending_approvals()[0].details, wanted)


def test_values_over_the_entry_cap_are_refused_as_step_results_only(db_url: str) -> None:
    """``max_entry_bytes`` caps one step's result (test above: refused, nothing committed);
    inputs, messages, events and approval details are not capped by it, and round-trip."""
    big = "x" * 20_000
    with perdure.Engine(db_url, max_entry_bytes=10_000, blob_threshold=5_000) as engine:
        engine.start(asks, big, id="a")
        wait_until(lambda: bool(engine.pending_approvals()))
        assert engine.pending_approvals()[0].details == big
        handle = engine.start(channels, big, id="w")
        assert engine.get_event("w", "value", timeout=10) == big
        with pytest.raises(perdure.SerializationError, match=r"'bad_echo'.*20,002 bytes"):
            handle.result(timeout=10)
        assert [s.name for s in engine.list_steps("w")] == ["perdure.set_event"]


# -- values that must be refused, naming where, with nothing committed ------------------------


REFUSED: dict[str, tuple[Callable[[], Any], str]] = {
    "generator": (lambda: (n for n in range(3)), "generator"),
    "object with __reduce__": (lambda: Reducer(), "Reducer"),
    "10,000 levels of nesting": (lambda: _nest(10_000), "nested deeper than 200 levels"),
    "lock": (lambda: threading.Lock(), "lock"),
    "set holding an object": (lambda: {1, Reducer()}, "Reducer"),
}


@perdure.step(name="bad_make")
def make(kind: str) -> Any:
    return REFUSED[kind][0]()


@perdure.workflow(name="bad_refusals")
def refusals(kind: str) -> dict[str, str]:
    """Try the refused value as a step result, an event and approval details; what each
    attempt raised."""
    attempts: dict[str, Callable[[], Any]] = {
        "step": lambda: make(kind),
        "event": lambda: perdure.set_event("bad", REFUSED[kind][0]()),
        "approval": lambda: perdure.wait_for_approval("bad", details=REFUSED[kind][0]()),
    }
    seen: dict[str, str] = {}
    for channel, attempt in attempts.items():
        try:
            attempt()
            seen[channel] = "accepted"
        except perdure.SerializationError as exc:
            seen[channel] = str(exc)
    return seen


@perdure.workflow(name="bad_inbox")
def inbox() -> Any:
    return perdure.receive("in")


@pytest.mark.parametrize("kind", list(REFUSED))
def test_unjournalable_values_are_refused_where_they_enter(db_url: str, kind: str) -> None:
    make_value, type_name = REFUSED[kind]
    with perdure.Engine(db_url, shutdown_grace=0.5) as engine:
        with pytest.raises(perdure.SerializationError) as argument:
            engine.start(channels, make_value(), id="refused")
        assert "'bad_channels'" in str(argument.value) and type_name in str(argument.value)
        assert "Nothing was recorded" in str(argument.value)
        with pytest.raises(perdure.WorkflowNotFound):
            engine.get_workflow("refused")

        seen = engine.run(refusals, kind, id="r", timeout=10)
        assert "step 'bad_make'" in seen["step"] and type_name in seen["step"]
        assert "event 'bad'" in seen["event"] and type_name in seen["event"]
        assert "approval 'bad'" in seen["approval"] and type_name in seen["approval"]
        assert engine.list_steps("r") == []  # nothing journaled for any of the three
        assert engine.get_event("r", "bad") is None
        assert engine.pending_approvals() == []

        handle = engine.start(inbox, id="inbox")
        with pytest.raises(perdure.SerializationError) as message:
            engine.send("inbox", "in", make_value())
        assert "'inbox'" in str(message.value) and type_name in str(message.value)
        engine.send("inbox", "in", "the first message that was sent")
        assert handle.result(timeout=10) == "the first message that was sent"


# -- corrupt rows written behind perdure's back ---------------------------------------------------


GATE = threading.Event()
RAN: list[str] = []


@pytest.fixture
def held_gate() -> Iterator[threading.Event]:
    GATE.clear()
    RAN.clear()
    yield GATE
    GATE.set()  # frees a body an engine abandoned


@perdure.step(name="bad_first")
def first_step() -> int:
    RAN.append("first")
    return 1


@perdure.step(name="bad_second")
def second_step() -> int:
    RAN.append("second")
    return 2


@perdure.step(name="bad_held")
def held() -> int:
    RAN.append("held")
    GATE.wait(30)
    return 3


@perdure.workflow(name="bad_journal")
def journal_flow() -> list[Any]:
    """Three steps; the first one's failures are caught, the way tool errors often are."""
    try:
        value: Any = first_step()
    except Exception as exc:
        value = f"fallback after {type(exc).__name__}"
    return [value, second_step(), held()]


def _corrupt_and_resume(
    db_url: str, gate: threading.Event, statement: str
) -> tuple[perdure.Engine, list[tuple[Any, ...]]]:
    """Run ``journal_flow`` until it holds in its third step, stop the engine, run
    ``statement`` on the database; a new engine (which resumes the run when entered), and the
    journal as the statement left it."""
    with perdure.Engine(db_url, shutdown_grace=0.1) as engine:
        engine.start(journal_flow, id="j")
        wait_until(lambda: "held" in RAN)
    raw_sql(db_url, statement)
    gate.set()
    return perdure.Engine(db_url, shutdown_grace=0.5), raw_sql(db_url, JOURNAL)


JOURNAL = "SELECT key, position, name, status, output, error FROM steps ORDER BY key"


def _outcome(engine: perdure.Engine) -> BaseException:
    with pytest.raises(perdure.PerdureError) as info:
        engine.handle("j").result(timeout=10)
    return info.value


BROKEN_VALUE = [
    ("truncated output", "UPDATE steps SET output = '{\"tru' WHERE key = '0'", "not valid JSON"),
    ("output missing", "UPDATE steps SET output = NULL WHERE key = '0'", "holds no value"),
    ("empty output", "UPDATE steps SET output = '' WHERE key = '0'", "not valid JSON"),
    ("damaged error record",
     "UPDATE steps SET status = 'ERROR', output = NULL, error = '{\"type\": \"buil' "
     "WHERE key = '0'", "error record is damaged"),
    ("error record missing",
     "UPDATE steps SET status = 'ERROR', output = NULL, error = NULL WHERE key = '0'",
     "error record is damaged"),
    ("tag naming a class that is not rebuildable",
     "UPDATE steps SET output = "
     f"'{{\"$dataclass\": \"{__name__}:Reducer\", \"fields\": {{}}}}' WHERE key = '0'",
     "not known in this process"),
    ("unknown tag", "UPDATE steps SET output = '{\"$pickle\": \"gASV\"}' WHERE key = '0'",
     "unknown tag"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "statement", "reason"), BROKEN_VALUE, ids=[c[0] for c in BROKEN_VALUE]
)
def test_an_unreadable_recorded_value_fails_the_run_even_if_the_code_catches_it(
    db_url: str, held_gate: threading.Event, case: str, statement: str, reason: str
) -> None:
    """Before: the SerializationError was raised into the workflow code, which caught it and
    finished with its fallback (SUCCESS, a silent wrong value); a NULL or empty output
    replayed as None. Now the error is latched like non-determinism: the run ends ERROR."""
    engine, corrupted = _corrupt_and_resume(db_url, held_gate, statement)
    with engine:
        error = _outcome(engine)
        assert engine.get_workflow("j").status is perdure.WorkflowStatus.ERROR
    assert isinstance(error, perdure.SerializationError), error
    message = str(error)
    assert "step 'bad_first' (position 0 of workflow 'j')" in message and reason in message
    assert RAN == ["first", "second", "held"]  # nothing ran again, nothing ran past the row
    assert raw_sql(db_url, JOURNAL) == corrupted  # left as it was found, for a human


CORRUPT_ROW = [
    ("unknown status", "UPDATE steps SET status = 'MAYBE' WHERE key = '1'",
     perdure.DeadLetteredError, "'MAYBE' is not a valid StepStatus"),
    ("duplicated position", "UPDATE steps SET position = 0 WHERE key = '1'",
     perdure.DeadLetteredError, "row '1' (bad_second) of workflow 'j' has position 0, as row '0'"),
    ("negative position", "UPDATE steps SET position = -1 WHERE key = '1'",
     perdure.DeadLetteredError, "has position -1"),
    ("renamed step", "UPDATE steps SET name = 'bad_renamed' WHERE key = '0'",
     perdure.NonDeterminismError, "recorded step 'bad_renamed'"),
    ("rows swapped between positions",
     "UPDATE steps SET name = CASE key WHEN '0' THEN 'bad_second' ELSE 'bad_first' END, "
     "output = CASE key WHEN '0' THEN '2' ELSE '1' END WHERE key IN ('0', '1')",
     perdure.NonDeterminismError, "recorded step 'bad_second'"),
    ("an entry the code never reaches",
     "INSERT INTO steps SELECT workflow_id, '9', 9, name, status, output, error, started_at, "
     "finished_at, attempts, fingerprint FROM steps WHERE key = '1'",
     perdure.NonDeterminismError, "the journal holds step 'bad_second'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "statement", "error_type", "fragment"), CORRUPT_ROW, ids=[c[0] for c in CORRUPT_ROW]
)
def test_a_corrupt_journal_row_is_a_typed_error_naming_it(
    db_url: str,
    held_gate: threading.Event,
    case: str,
    statement: str,
    error_type: type[BaseException],
    fragment: str,
) -> None:
    """A row the engine cannot read dead-letters the run before anything runs (the schema
    allows duplicated positions: its key is (workflow_id, key), and replay goes by key); a
    row that names another step than the code calls is non-determinism. Either way the
    journal is left as it was found, and nothing recorded runs again."""
    engine, corrupted = _corrupt_and_resume(db_url, held_gate, statement)
    with engine:
        error = _outcome(engine)
    assert isinstance(error, error_type), error
    assert set(corrupted) <= set(raw_sql(db_url, JOURNAL))  # nothing changed or removed
    assert fragment in str(error)
    assert RAN == ["first", "second", "held"] or (
        case == "an entry the code never reaches" and RAN[-1] == "held"  # it reached the end
    )


def test_positions_swapped_alone_still_replay_by_key(
    db_url: str, held_gate: threading.Event
) -> None:
    """Entries are replayed by their key, not their position: swapping only the positions of
    two rows changes the order ``list_steps`` shows, not what the run replays."""
    swap = "UPDATE steps SET position = 1 - position WHERE key IN ('0', '1')"
    engine, _ = _corrupt_and_resume(db_url, held_gate, swap)
    with engine:
        assert engine.handle("j").result(timeout=10) == [1, 2, 3]
    assert RAN == ["first", "second", "held", "held"]  # only the step in flight ran again


def test_an_error_record_naming_a_callable_runs_nothing(
    db_url: str, held_gate: threading.Event
) -> None:
    """A well-formed failure record whose type is not an exception class replays as a
    ``RecordedStepError``; the callable it names is never called."""
    record = (
        '{"type": "os:system", "message": "boom", '
        f'"args": ["touch {MARKER[0]}"], "state": {{"x": 1}}}}'
    )
    statement = (
        f"UPDATE steps SET status = 'ERROR', output = NULL, error = '{record}' WHERE key = '0'"
    )
    engine, _ = _corrupt_and_resume(db_url, held_gate, statement)
    with engine:
        value = engine.handle("j").result(timeout=10)
    assert value == ["fallback after RecordedStepError", 2, 3]


def test_corrupt_workflow_inputs_fail_the_run_naming_it(
    db_url: str, held_gate: threading.Event
) -> None:
    corrupt = "UPDATE workflows SET inputs = '{\"args\": ['"
    engine, _ = _corrupt_and_resume(db_url, held_gate, corrupt)
    with engine:
        error = _outcome(engine)
        assert engine.get_workflow("j").status is perdure.WorkflowStatus.ERROR
    assert isinstance(error, perdure.SerializationError)
    assert "workflow 'j' (bad_journal) cannot read its stored inputs" in str(error)
    assert RAN == ["first", "second", "held"]


def test_an_unknown_workflow_status_is_a_corrupt_record_and_others_run(db_url: str) -> None:
    with perdure.Engine(db_url) as engine:
        engine.run(inbox_or_value, "one", id="bad-status", timeout=10)
    raw_sql(db_url, "UPDATE workflows SET status = 'HALF_DONE' WHERE id = 'bad-status'")
    with perdure.Engine(db_url) as engine:
        with pytest.raises(perdure.CorruptRecordError, match=r"'bad-status'.*'HALF_DONE'"):
            engine.get_workflow("bad-status")
        assert engine.run(inbox_or_value, "two", id="fine", timeout=10) == "two"


@perdure.workflow(name="bad_value")
def inbox_or_value(value: str) -> str:
    return value


@pytest.mark.parametrize("output", [None, '{"tru'], ids=["missing", "truncated"])
def test_an_unreadable_workflow_result_is_an_error_naming_it(
    db_url: str, output: str | None
) -> None:
    """Before: a SUCCESS row whose result was NULL read back as None."""
    with perdure.Engine(db_url) as engine:
        assert engine.run(inbox_or_value, "kept", id="done", timeout=10) == "kept"
    raw_sql(db_url, "UPDATE workflows SET output = ? WHERE id = 'done'", output)
    with (
        perdure.Engine(db_url) as engine,
        pytest.raises(perdure.SerializationError, match="result of workflow 'done'"),
    ):
        engine.handle("done").result(timeout=10)


def test_a_schema_version_this_perdure_does_not_know_is_refused(db_url: str) -> None:
    perdure.Engine(db_url).open().close()
    raw_sql(db_url, "INSERT INTO perdure_schema VALUES (99, '0099_future.sql', 0)")
    with pytest.raises(perdure.StoreError, match="schema version 99, newer than this perdure"):
        perdure.Engine(db_url).open()


def test_a_schema_table_behind_its_tables_is_a_clear_migration_error(db_url: str) -> None:
    """Before: SQLite said "duplicate column name: version" as a StoreUnavailableError (as if
    the database were down); PostgreSQL a bare StoreError. Now the migration is named."""
    perdure.Engine(db_url).open().close()
    newest = raw_sql(db_url, "SELECT MAX(version), COUNT(*) FROM perdure_schema")[0]
    raw_sql(db_url, "DELETE FROM perdure_schema WHERE version = ?", newest[0])
    with pytest.raises(perdure.StoreError) as info:
        perdure.Engine(db_url).open()
    assert not isinstance(info.value, perdure.StoreUnavailableError)
    assert f"migration {newest[0]:04d}_" in str(info.value)
    assert f"records schema version {newest[0] - 1}" in str(info.value)
    assert raw_sql(db_url, "SELECT COUNT(*) FROM perdure_schema")[0][0] == newest[1] - 1


# -- invalid workflow ids and names ---------------------------------------------------------------


BAD_IDS = ["", "a\x00b", "line\nbreak", "tab\there", "\x7f", "x" * 256, "lone \ud800 surrogate"]


@pytest.fixture
def engine_with_a_run(db_url: str) -> Iterator[perdure.Engine]:
    with perdure.Engine(db_url, shutdown_grace=0.5) as engine:
        engine.run(inbox_or_value, "ok", id="ok", timeout=10)
        yield engine


ID_OPERATIONS: dict[str, Callable[[perdure.Engine, str], Any]] = {
    "start": lambda e, bad: e.start(inbox_or_value, "x", id=bad),
    "enqueue": lambda e, bad: e.enqueue("bad-input-queue", inbox_or_value, "x", id=bad),
    "send": lambda e, bad: e.send(bad, "topic", 1),
    "fork to": lambda e, bad: e.fork("ok", 0, new_id=bad),
    "fork from": lambda e, bad: e.fork(bad, 0),
    "cancel": lambda e, bad: e.cancel(bad),
    "get_workflow": lambda e, bad: e.get_workflow(bad),
    "handle": lambda e, bad: e.handle(bad),
    "list_steps": lambda e, bad: e.list_steps(bad),
    "get_event": lambda e, bad: e.get_event(bad, "key"),
    "approve": lambda e, bad: e.approve(bad, "name"),
}


@pytest.mark.parametrize("operation", list(ID_OPERATIONS))
def test_invalid_workflow_ids_are_a_configuration_error(
    engine_with_a_run: perdure.Engine, operation: str
) -> None:
    """Before: send, and every lookup, answered WorkflowNotFound on SQLite but raised a
    UnicodeEncodeError (lone surrogate) or a StoreError (NUL) on PostgreSQL."""
    engine = engine_with_a_run
    for bad in BAD_IDS:
        with pytest.raises(perdure.ConfigurationError, match="workflow id"):
            ID_OPERATIONS[operation](engine, bad)
    assert [w.id for w in engine.list_workflows()] == ["ok"]  # nothing was recorded


BAD_NAMES = ["", "lone \ud800", "nul\x00", "new\nline"]


@perdure.workflow(name="bad_topic")
def receives_on(topic: str) -> Any:
    return perdure.receive(topic)


def test_invalid_topics_event_keys_and_approval_names_are_a_configuration_error(
    engine_with_a_run: perdure.Engine,
) -> None:
    """Before: a lone surrogate in a topic raised UnicodeEncodeError from send() on both
    backends; a NUL was stored by SQLite and refused by PostgreSQL."""
    engine = engine_with_a_run
    for bad in BAD_NAMES:
        with pytest.raises(perdure.ConfigurationError, match="message topic"):
            engine.send("ok", bad, 1)
        with pytest.raises(perdure.ConfigurationError, match="event key"):
            engine.get_event("ok", bad)
        with pytest.raises(perdure.ConfigurationError, match="approval name"):
            engine.approve("ok", bad)
    with pytest.raises(perdure.ConfigurationError, match="message topic"):
        engine.run(receives_on, "lone \ud800", timeout=10)  # inside the workflow too


def test_an_unreadable_workflow_row_does_not_strand_the_others_claimed_with_it(
    tmp_path: Path, held_gate: threading.Event
) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"  # PostgreSQL's typed columns cannot hold this
    with perdure.Engine(url, shutdown_grace=0.1) as engine:
        engine.start(journal_flow, id="bad")
        engine.start(journal_flow, id="good")
        wait_until(lambda: RAN.count("held") == 2)
    raw_sql(url, "UPDATE workflows SET deadline_at = 'soon' WHERE id = 'bad'")
    held_gate.set()
    with perdure.Engine(url, recovery_interval=0.2, heartbeat_interval=0.1) as engine:
        assert engine.handle("good").result(timeout=5) == [1, 2, 3]
        # the unreadable row is dead-lettered (by the claim that read it), not re-claimed
        [(status, error)] = raw_sql(url, "SELECT status, error FROM workflows WHERE id = 'bad'")
        assert status == "DEAD_LETTER" and "CorruptRecordError" in error and "bad" in error
