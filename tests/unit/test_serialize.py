"""The journal codec (``perdure._serialize``): round trips, strict JSON, errors, safety.

Pure and fast: no engine, no database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import os
import socket
import subprocess
import sys
import threading
import types
import uuid
from decimal import Decimal
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from perdure import SerializationError
from perdure import _serialize as ser
from perdure._serialize import UnserializableValue

MOD = __name__  # the module name tags use for the classes below (depends on import mode)

# -- types used as values ------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    GREEN = ("g", 1)  # a tuple value: must come back as the tuple, then the member


class Tone(enum.Enum):
    WARM = "warm"
    COOL = "cool"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Perm(enum.Flag):
    R = 1
    W = 2
    X = 4


class Mode(enum.StrEnum):
    FAST = "fast"
    SAFE = "$safe"  # a value that looks like a tag


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: float


@dataclasses.dataclass(slots=True)
class Slotted:
    name: str
    items: list[int]


@dataclasses.dataclass(frozen=True, slots=True)
class FrozenSlotted:
    day: dt.date
    blob: bytes


@dataclasses.dataclass
class Box:
    value: Any
    label: str = "box"


@dataclasses.dataclass
class Outer:
    point: Point
    inner: Slotted
    frozen: FrozenSlotted
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


class Address(pydantic.BaseModel):
    city: str
    zip: str | None = None


class Customer(pydantic.BaseModel):
    id: uuid.UUID
    name: str
    joined: dt.datetime
    tags: list[str]
    address: Address
    score: float
    balance: Decimal
    tone: Tone
    priority: Priority
    dims: tuple[int, int]


class StrictEvent(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True)

    at: dt.datetime
    id: uuid.UUID
    color: Color
    pair: tuple[int, int]


class Measurement(pydantic.BaseModel):
    value: float


class Plain:
    """An ordinary class: never rebuildable from a tag."""


class Reducible:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


# -- comparing decoded values ------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types, all the way down (NaN equals NaN, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, Decimal):
        if a.is_nan():
            return b.is_nan() and a.is_snan() == b.is_snan() and a.is_signed() == b.is_signed()
        return str(a) == str(b)  # same value *and* same exponent ("1.10" stays "1.10")
    if isinstance(a, enum.Enum):
        return a is b
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return (
            len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b, strict=True))
            and all(same(x, y) for x, y in zip(a.values(), b.values(), strict=True))
        )
    if isinstance(a, (set, frozenset)):
        return len(a) == len(b) and all(any(same(x, y) for y in b) for x in a)
    if isinstance(a, (dt.datetime, dt.time)):
        return a == b and a.utcoffset() == b.utcoffset()
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return bool(a == b)


def round_trip(value: Any, hint: Any = None) -> Any:
    return ser.loads(ser.dumps(value), hint)


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"non-standard JSON constant {name} in the journal text")


def strict_json(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


# -- strategies ------------------------------------------------------------------------------

texts = st.text(st.characters(exclude_categories=())) | st.sampled_from(
    ["", "\ud800", "\udfff", "é", "日本語", "😀", "$tuple", "$", "$$x", "\x00"]
)


def _zones(unit: dt.timedelta) -> st.SearchStrategy[dt.tzinfo]:
    # Whole seconds at most: CPython 3.11's fromisoformat() drops a UTC offset of under a
    # second ("+00:00:00.000001"), and no real zone has sub-second offsets.
    limit = (24 * 3600 - 1) // unit.total_seconds()
    offsets = st.integers(-limit, limit).map(lambda n: n * unit)
    return st.builds(dt.timezone, offsets) | st.just(dt.UTC)


fixed_zones = _zones(dt.timedelta(seconds=1))
datetimes = st.datetimes() | st.datetimes(timezones=fixed_zones)
times = st.times() | st.times(timezones=fixed_zones)
enums = st.sampled_from([*Color, *Tone, *Priority, *Perm, Perm.R | Perm.W, *Mode])
finite = st.floats(allow_nan=False, allow_infinity=False)
decimals = st.decimals(allow_nan=False, allow_infinity=False)

hashable_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | finite
    | texts
    | st.binary(max_size=20)
    | st.dates()
    | datetimes
    | times
    | st.timedeltas()
    | st.uuids()
    | decimals
    | enums
    | st.builds(Point, st.integers(), finite)
)
hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
leaves = (
    hashable_leaves
    | st.floats()  # NaN and infinities included
    | st.decimals()  # NaN, sNaN and infinities included
    | st.builds(Slotted, texts, st.lists(st.integers(), max_size=3))
    | st.builds(FrozenSlotted, st.dates(), st.binary(max_size=8))
)
customers = st.builds(
    Customer,
    id=st.uuids(),
    name=texts,
    joined=st.datetimes() | st.datetimes(timezones=_zones(dt.timedelta(minutes=1))),
    tags=st.lists(texts, max_size=3),
    address=st.builds(Address, city=texts, zip=st.none() | texts),
    score=finite,
    balance=decimals,
    tone=st.sampled_from(Tone),
    priority=st.sampled_from(Priority),
    dims=st.tuples(st.integers(), st.integers()),
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(texts, inner, max_size=4)
        | st.dictionaries(hashables, inner, max_size=4)
        | st.sets(hashables, max_size=4)
        | st.frozensets(hashables, max_size=4)
        | st.builds(Box, inner, texts)
        | st.builds(
            Outer,
            st.builds(Point, st.integers(), st.floats()),
            st.builds(Slotted, texts, st.lists(st.integers(), max_size=3)),
            st.builds(FrozenSlotted, st.dates(), st.binary(max_size=8)),
            st.dictionaries(texts, inner, max_size=3),
        )
    ),
    max_leaves=25,
)

fast = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


# -- round trips -----------------------------------------------------------------------------


@fast
@given(values)
def test_round_trip_preserves_value_and_types(value: Any) -> None:
    text = ser.dumps(value)
    assert same(ser.loads(text), value)


@fast
@given(values)
def test_output_is_strict_json(value: Any) -> None:
    data = strict_json(ser.dumps(value))
    # re-encoding the parsed data strictly must work too: no NaN/Infinity smuggled anywhere
    json.dumps(data, allow_nan=False)


@fast
@given(values | st.integers() | st.text())
def test_the_fast_paths_write_what_the_plain_encoder_writes(value: Any) -> None:
    # dumps skips the encoder for ints and strings and reuses one C encoder for the rest:
    # the text must be byte for byte what a fresh JSONEncoder writes (journals are compared
    # as text: idempotent starts, replay checks)
    plain = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode(ser.to_json(value))
    assert ser.dumps(value) == plain


def test_ints_past_the_fast_path_and_odd_strings_encode_as_before() -> None:
    for value in (2**63, -(2**63), 2**64, 2**70, "\u2028", '"\\', "\ud800", "é" * 3):
        assert ser.dumps(value) == json.dumps(value, ensure_ascii=True)


@fast
@given(customers)
def test_pydantic_models_round_trip(model: Customer) -> None:
    back = round_trip(model)
    assert type(back) is Customer
    assert back == model
    assert type(back.address) is Address
    assert back.tone is model.tone and back.priority is model.priority


@fast
@given(st.lists(hashables, max_size=6))
def test_set_encoding_does_not_depend_on_insertion_order(items: list[Any]) -> None:
    # workflow inputs are compared as text for idempotent start(): equal sets must encode equally
    forward: set[Any] = set()
    for item in items:
        forward.add(item)
    backward: set[Any] = set()
    for item in reversed(items):
        backward.add(item)
    assert forward == backward
    # {False, 0} keeps whichever equal element came first: those sets hold different values
    assume(sorted(map(repr, forward)) == sorted(map(repr, backward)))
    assert ser.dumps(forward) == ser.dumps(backward)
    assert ser.dumps(frozenset(forward)) == ser.dumps(frozenset(backward))


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -(2**80),
        1.5,
        -0.0,
        float("inf"),
        float("-inf"),
        "",
        "\ud800",
        "naïve ☃",
        b"",
        b"\x00\xff\xfe",
        (),
        (1, (2, (3,))),
        [],
        [(), [], {}],
        {},
        {"$tuple": [1, 2]},
        {"$": 1, "a": 2},
        {"a": 1, "$b": 2},
        {1: "int key", (1, 2): "tuple key", None: "none key", 2.5: "float key"},
        {True: "bool key", dt.date(2020, 1, 1): "date key"},
        {frozenset({1, 2}): "fs key", Color.RED: "enum key", b"k": "bytes key"},
        set(),
        {1, "a", (2, 3)},
        frozenset(),
        frozenset({frozenset({1}), 2}),
        dt.datetime(2026, 11, 26, 6, 0),  # noqa: DTZ001 - naive on purpose
        dt.datetime(2026, 11, 26, 6, 0, 0, 123456, tzinfo=dt.UTC),
        dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30))),
        dt.date(2000, 2, 29),
        dt.time(23, 59, 59, 999999),
        dt.time(1, 2, tzinfo=dt.timezone(dt.timedelta(hours=9))),
        dt.timedelta(days=-3, seconds=5, microseconds=7),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        Decimal("1.10"),
        Decimal("-0"),
        Decimal("1E+400"),
        Decimal("Infinity"),
        Decimal("NaN"),
        Decimal("-sNaN"),
        Color.GREEN,
        Priority.HIGH,
        Perm.R | Perm.X,
        Mode.SAFE,
        Point(1, 2.5),
        Slotted("s", [1, 2]),
        FrozenSlotted(dt.date(2020, 1, 1), b"\x01"),
        Outer(Point(0, float("nan")), Slotted("", []), FrozenSlotted(dt.date.min, b""), {"k": {1}}),
        Box(Box(Box((Color.RED, {Priority.LOW: [Point(3, 4.0)]})))),
    ],
    ids=repr,
)
def test_round_trip_examples(value: Any) -> None:
    text = ser.dumps(value)
    strict_json(text)
    assert same(ser.loads(text), value)


def test_nan_round_trips_as_nan() -> None:
    back = round_trip([float("nan"), {"x": float("nan")}, (Decimal("NaN"),)])
    assert math.isnan(back[0]) and math.isnan(back[1]["x"])
    assert type(back[2]) is tuple and back[2][0].is_nan()


def test_tag_like_user_data_is_not_mistaken_for_a_tag() -> None:
    tricky = {"$datetime": "2020-01-01T00:00:00", "$bytes": "AAAA"}
    assert round_trip(tricky) == tricky
    assert round_trip(["$uuid", {"$set": []}]) == ["$uuid", {"$set": []}]
    assert round_trip(Mode.SAFE) is Mode.SAFE


def test_pydantic_nested_in_containers_and_dataclasses() -> None:
    addr = Address(city="Lyon")
    value = {"who": [addr, (addr,)], 3: Box(addr)}
    back = round_trip(value)
    assert back == value
    assert type(back["who"][1]) is tuple and type(back[3].value) is Address


def test_aware_datetime_keeps_its_instant_and_offset() -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        paris = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone database")
    when = dt.datetime(2026, 7, 1, 12, 0, tzinfo=paris)
    back = round_trip(when)
    assert back == when
    assert back.utcoffset() == dt.timedelta(hours=2)


def test_pydantic_strict_model_round_trips() -> None:
    """A model with ``strict=True`` must read back what the codec wrote for it.

    The codec dumps models with ``mode="json"`` (datetimes, UUIDs and enums become strings,
    tuples become lists) but validates them back in Python mode, where a strict model
    rejects those JSON forms.
    """
    event = StrictEvent(
        at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        id=uuid.UUID(int=7),
        color=Color.RED,
        pair=(1, 2),
    )
    back = round_trip(event, StrictEvent)
    assert type(back) is StrictEvent
    assert back == event


@pytest.mark.parametrize("special", [float("nan"), float("inf"), float("-inf")])
def test_pydantic_model_with_non_finite_float_is_round_tripped_or_cleanly_refused(
    special: float,
) -> None:
    """Either the value comes back, or dumps raises UnserializableValue (so the engine can
    turn it into a SerializationError naming the step); never a stray ValueError."""
    model = Measurement(value=special)
    try:
        text = ser.dumps(model)
    except UnserializableValue as exc:
        assert "Measurement" in exc.type_name
        return
    back = ser.loads(text, Measurement)
    assert type(back) is Measurement
    assert same(back.value, special)


def test_int_too_long_for_json_is_round_tripped_or_cleanly_refused() -> None:
    huge = 10**5000  # beyond Python's 4300-digit int/str conversion limit
    try:
        text = ser.dumps([huge])
    except UnserializableValue as exc:
        assert exc.type_name == "int"
        return
    assert ser.loads(text) == [huge]


def test_hint_class_wins_over_an_older_class_with_the_same_key() -> None:
    """Two classes can share a ``module:qualname`` (a class redefined by a notebook cell or
    importlib.reload, a class made by a factory). A step annotated ``-> Model`` must get
    *that* Model back, not whichever same-named class the process met first."""

    def make() -> type:
        @dataclasses.dataclass
        class Reloaded:
            x: int

        return Reloaded

    old, new = make(), make()
    assert ser.class_key(old) == ser.class_key(new)
    ser.dumps(old(1))  # the process has seen the old definition
    back = ser.loads(ser.dumps(new(2)), new)
    assert type(back) is new


# -- unsupported values ----------------------------------------------------------------------


def _generator() -> Any:
    yield 1


@pytest.fixture
def sock() -> Any:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    yield s
    s.close()


@pytest.mark.parametrize(
    ("make", "type_fragment"),
    [
        (lambda: object(), "builtins.object"),
        (lambda: _generator(), "generator"),
        (lambda: (lambda: 1), "function"),
        (lambda: Reducible(), "Reducible"),
        (lambda: Plain(), "Plain"),
        (lambda: threading.Lock(), "lock"),
        (lambda: sys, "module"),
        (lambda: Plain, "type"),
        (lambda: 1j, "complex"),
        (lambda: range(3), "range"),
    ],
    ids=[
        "object", "generator", "lambda", "reduce", "plain", "lock", "module", "class",
        "complex", "range",
    ],
)  # fmt: skip
def test_unsupported_values_raise_with_type_and_path(make: Any, type_fragment: str) -> None:
    bad = make()
    with pytest.raises(UnserializableValue) as info:
        ser.dumps({"a": [1, {"b": bad}]})
    assert type_fragment in info.value.type_name
    assert info.value.path == "['a'][1]['b']"
    assert type_fragment in str(info.value)

    with pytest.raises(UnserializableValue) as top:
        ser.dumps(bad)
    assert top.value.path == ""
    assert "top level" in str(top.value)


def test_unsupported_socket(sock: socket.socket) -> None:
    with pytest.raises(UnserializableValue) as info:
        ser.dumps((0, sock))
    assert "socket" in info.value.type_name
    assert info.value.path == "[1]"


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (Box(value=[0, object()]), ".value[1]"),
        (Outer(Point(0, 0.0), Slotted("s", [object()]), FrozenSlotted(dt.date.min, b"")),  # type: ignore[list-item]
         ".inner.items[0]"),
        ({1: {"x": object()}}, "[1]['x']"),
        ({object(): 1}, "<key>"),
        ({"k": (1, 2, {3, 4}, [object()])}, "['k'][3][0]"),
        ([{"$odd": object()}], "[0]['$odd']"),
    ],
    ids=["dataclass-field", "nested-dataclass", "map-value", "map-key", "tuple", "dollar-key"],
)  # fmt: skip
def test_unsupported_value_path_names_where_it_sits(value: Any, path: str) -> None:
    with pytest.raises(UnserializableValue) as info:
        ser.dumps(value)
    assert info.value.path == path
    assert info.value.type_name == "builtins.object"


def test_pydantic_model_with_unserializable_field_is_refused() -> None:
    class Holder(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
        lock: Any

    with pytest.raises(UnserializableValue) as info:
        ser.dumps({"h": Holder(lock=threading.Lock())})
    assert "Holder" in info.value.type_name
    assert info.value.path == "['h']"


def _nest(depth: int, kind: str) -> Any:
    value: Any = 1
    for _ in range(depth):
        if kind == "list":
            value = [value]
        elif kind == "tuple":
            value = (value,)
        elif kind == "dict":
            value = {"k": value}
        elif kind == "map":
            value = {1: value}
        elif kind == "set":
            value = frozenset({value})
        else:
            value = Box(value)
    return value


KINDS = ["list", "tuple", "dict", "map", "set", "dataclass"]


@pytest.mark.parametrize("kind", KINDS)
def test_deep_nesting_is_a_clean_error(kind: str) -> None:
    deep = _nest(10_000, kind)
    with pytest.raises(UnserializableValue) as info:
        ser.dumps(deep)
    assert "deeper" in info.value.reason


def test_self_referencing_value_is_a_clean_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    cyclic: dict[str, Any] = {}
    cyclic["me"] = cyclic
    for value in (loop, cyclic):
        with pytest.raises(UnserializableValue):
            ser.dumps(value)


@pytest.mark.parametrize("kind", KINDS)
def test_deepest_accepted_value_reads_back(kind: str) -> None:
    """Whatever dumps accepts must load back: a committed value that cannot be replayed
    would wedge the workflow forever."""
    depth = ser.MAX_DEPTH + 5
    while True:
        try:
            text = ser.dumps(_nest(depth, kind))
            break
        except UnserializableValue:
            depth -= 1
    assert depth >= 50
    assert ser.loads(text) == _nest(depth, kind)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        '{"$tuple":[' * 50_000 + "]}" * 50_000,
    ],
    ids=["lists", "dicts", "tuples"],
)
def test_loads_deeply_nested_text_is_a_clean_error(text: str) -> None:
    """A corrupt or hostile row nested too deep must raise SerializationError, not let a
    RecursionError escape from the decoder."""
    with pytest.raises(SerializationError):
        ser.loads(text)


# -- decoding: garbage, unknown classes, safety ------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "{",
        "[1,",
        '{"a" 1}',
        "\x00",
        '{"$nope": 1}',
        '{"$bytes": "!!not base64!!"}',
        '{"$datetime": "yesterday"}',
        '{"$date": 5}',
        '{"$time": "25:00"}',
        '{"$timedelta": "x"}',
        '{"$uuid": "zz"}',
        '{"$decimal": "abc"}',
        '{"$float": "1.5"}',
        '{"$float": "__import__(\'os\')"}',
        '{"$tuple": 5}',
        '{"$set": [[1]]}',
        '{"$map": [[[1], 2]]}',
        '{"$map": [1, 2]}',
        '[1, {"$tuple": [{"$nope": 0}]}]',
        '{"$enum": "{MOD}:Color", "value": "purple"}',
        '{"$enum": "{MOD}:Color"}',
        '{"$dataclass": "{MOD}:Slotted", "fields": {"not_a_field": 1}}',
        '{"$model": "{MOD}:Address", "data": {"city": 5}}',
        '{"$model": "{MOD}:Address"}',
    ],
)
def test_garbage_raises_serialization_error(text: str) -> None:
    text = text.replace("{MOD}", MOD)
    with pytest.raises(SerializationError):
        ser.loads(text)


def test_garbage_of_wrong_python_type_raises_serialization_error() -> None:
    for bad in (None, 5, object()):
        with pytest.raises(SerializationError):
            ser.loads(bad)  # type: ignore[arg-type]


UNKNOWN = [
    '{"$dataclass": "perdure_no_such_module:Thing", "fields": {"a": 1}}',
    '{"$model": "perdure_no_such_module:Thing", "data": {"a": 1}}',
    '{"$enum": "perdure_no_such_module:Thing", "value": 1}',
    '{"$dataclass": "{MOD}:NoSuchClass", "fields": {}}',
    '{"$dataclass": "{MOD}:Plain", "fields": {}}',
    '{"$model": "collections:OrderedDict", "data": {}}',
]


@pytest.mark.parametrize("text", UNKNOWN)
def test_strict_decode_of_unknown_class_raises(text: str) -> None:
    text = text.replace("{MOD}", MOD)
    with pytest.raises(SerializationError) as info:
        ser.loads(text)
    key = next(iter(json.loads(text).values()))
    assert key in str(info.value)


@pytest.mark.parametrize("text", UNKNOWN)
def test_lenient_decode_of_unknown_class_leaves_the_tagged_dict(text: str) -> None:
    text = text.replace("{MOD}", MOD)
    assert ser.loads(text, strict=False) == json.loads(text)


def test_lenient_decode_still_rebuilds_what_it_can_inside_an_unknown_class() -> None:
    text = ser.dumps([Color.RED, (1, 2)])
    raw = json.dumps({"$dataclass": "perdure_no_such_module:T", "fields": {"x": json.loads(text)}})
    back = ser.loads(raw, strict=False)
    assert back == {"$dataclass": "perdure_no_such_module:T", "fields": {"x": [Color.RED, (1, 2)]}}


def test_class_defined_in_a_function_is_found_through_the_hint_only() -> None:
    @dataclasses.dataclass
    class Local:
        n: int

    # a row written by another process: this process never encoded a Local
    text = json.dumps({"$dataclass": ser.class_key(Local), "fields": {"n": 3}})
    ser._KNOWN_CLASSES.pop(ser.class_key(Local), None)
    with pytest.raises(SerializationError):
        ser.loads(text)
    for hint in (Local, Local | None, list[Local], dict[str, tuple[Local, ...]]):
        ser._KNOWN_CLASSES.pop(ser.class_key(Local), None)
        back = ser.loads(text, hint)
        assert type(back) is Local and back.n == 3


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    calls: list[tuple[str, Any]] = []

    def spy(name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, args))
            raise AssertionError(f"{name} was called")

        return record

    monkeypatch.setattr(os, "system", spy("os.system"))
    monkeypatch.setattr(os, "remove", spy("os.remove"))
    monkeypatch.setattr(subprocess, "check_output", spy("subprocess.check_output"))

    class FakePopen:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            calls.append(("subprocess.Popen", args))
            raise AssertionError("Popen was called")

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    return calls


DANGEROUS = [
    "os:system",
    "os:remove",
    "subprocess:Popen",
    "subprocess:check_output",
    "builtins:eval",
    "builtins:exec",
    "builtins:open",
    "builtins:object",
    "builtins:type",
    "{MOD}:Plain",
    "{MOD}:Reducible",
    "perdure._serialize:dumps",
]


@pytest.mark.parametrize("key", DANGEROUS)
def test_tags_never_call_arbitrary_callables(key: str, spies: list[Any]) -> None:
    key = key.replace("{MOD}", MOD)
    assert ser.resolve_class(key) is None
    bodies = [
        {"$dataclass": key, "fields": {"args": "echo pwned"}},
        {"$model": key, "data": {"args": ["echo", "pwned"]}},
        {"$enum": key, "value": "echo pwned"},
    ]
    for body in bodies:
        text = json.dumps(body)
        with pytest.raises(SerializationError):
            ser.loads(text)
        assert ser.loads(text, strict=False) == body
        with pytest.raises(SerializationError):
            ser.loads(json.dumps({"k": [1, body]}))
    assert spies == []


def test_tags_never_import_a_module() -> None:
    name = "this"  # imports print the Zen of Python: harmless, and easy to spot
    if name in sys.modules:
        pytest.skip("module already imported")
    for text in (
        '{"$dataclass": "this:s", "fields": {}}',
        '{"$model": "this:s", "data": {}}',
        '{"$enum": "this:s", "value": 1}',
    ):
        with pytest.raises(SerializationError):
            ser.loads(text)
    assert ser.resolve_class("this:s") is None
    assert name not in sys.modules


def test_resolve_class_finds_only_rebuildable_classes_of_imported_modules() -> None:
    assert ser.resolve_class(ser.class_key(Color)) is Color
    assert ser.resolve_class(ser.class_key(Slotted)) is Slotted
    assert ser.resolve_class(ser.class_key(Customer)) is Customer
    assert ser.resolve_class(f"{MOD}:Plain") is None
    assert ser.resolve_class(f"{MOD}:nope.deeper") is None
    assert ser.resolve_class("") is None
    assert ser.resolve_class("no_colon_here") is None


# -- exceptions ------------------------------------------------------------------------------


class CodedError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


class OnlyMessageError(Exception):
    """Calls super().__init__ with different arguments than its own signature."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


class BrokenStrError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def test_builtin_exceptions_round_trip() -> None:
    for exc in (
        ValueError("x"),
        KeyError("missing"),
        RuntimeError(),
        OSError(2, "No such file", "f.txt"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        TimeoutError("slow"),
    ):
        back = ser.loads_error(ser.dumps_error(exc))
        assert type(back) is type(exc)
        assert back.args == exc.args
        assert str(back) == str(exc)


def test_custom_exception_with_init_args_and_attributes_round_trips() -> None:
    back = ser.loads_error(ser.dumps_error(CodedError(429, "slow down")))
    assert type(back) is CodedError
    assert back.code == 429 and back.detail == "slow down"
    assert back.args == (429, "slow down")


def test_exception_attributes_round_trip() -> None:
    exc = ValueError("bad")
    exc.retry_after = dt.timedelta(seconds=5)  # type: ignore[attr-defined]
    exc.where = ("step", 3)  # type: ignore[attr-defined]
    back = ser.loads_error(ser.dumps_error(exc))
    assert type(back) is ValueError
    assert back.retry_after == dt.timedelta(seconds=5)  # type: ignore[attr-defined]
    assert back.where == ("step", 3)  # type: ignore[attr-defined]


def test_exception_notes_round_trip() -> None:
    exc = ValueError("bad")
    exc.add_note("while doing x")
    back = ser.loads_error(ser.dumps_error(exc))
    assert back is not None and back.__notes__ == ["while doing x"]


def test_exception_from_an_unimported_module_is_none() -> None:
    module = types.ModuleType("perdure_test_transient_errors")
    exec("class GoneError(Exception):\n    pass\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        text = ser.dumps_error(module.GoneError("gone"))
    finally:
        del sys.modules[module.__name__]
    assert ser.loads_error(text) is None
    assert ser.error_summary(text) == ("perdure_test_transient_errors.GoneError", "gone")


def test_exception_whose_init_differs_from_its_args_is_rebuilt_from_its_state() -> None:
    back = ser.loads_error(ser.dumps_error(OnlyMessageError(1, "x")))
    assert type(back) is OnlyMessageError
    assert back.args == ("1: x",) and str(back) == "1: x" and back.code == 1


def test_exception_that_cannot_be_rebuilt_is_none_not_a_crash() -> None:
    text = ser.dumps_error(ValueError(threading.Lock()))  # args cannot be journaled
    strict_json(text)
    assert ser.loads_error(text) is None
    assert ser.error_summary(text)[0] == "builtins.ValueError"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "[]",
        "{}",
        '{"type": 5}',
        '{"type": "os:system", "message": "x", "args": ["echo pwned"]}',
        '{"type": "subprocess:Popen", "message": "x", "args": [["echo", "pwned"]]}',
        '{"type": "builtins:KeyboardInterrupt", "message": "", "args": []}',
        '{"type": "builtins:SystemExit", "message": "", "args": [1]}',
        '{"type": "builtins:ValueError", "message": "x"}',
        '{"type": "builtins:ValueError", "message": "x", "args": {"$nope": 1}}',
    ],
)
def test_loads_error_refuses_garbage_and_non_exceptions(text: str, spies: list[Any]) -> None:
    assert ser.loads_error(text) is None
    assert spies == []


@pytest.mark.parametrize(
    "exc",
    [ValueError(10**5000), BrokenStrError("x")],
    ids=["int-too-long", "broken-str"],
)
def test_dumps_error_never_raises(exc: BaseException) -> None:
    """dumps_error records whatever a step raised; if it raises itself, the step's outcome
    cannot be committed and the workflow sees a perdure-internal error instead."""
    text = ser.dumps_error(exc)
    strict_json(text)
    assert ser.error_summary(text)[0].endswith(type(exc).__name__)
