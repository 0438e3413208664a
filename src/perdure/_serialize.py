"""The journal's value codec: JSON text with tags for what JSON cannot say, never pickle.

Plain JSON values (str, int, float, bool, None, lists, dicts with string keys) are written as
they are. Everything else supported is written as a one-key tagged object, so a value reads
back as the same type without needing annotations::

    tuple        {"$tuple": [...]}            datetime   {"$datetime": "2026-11-26T06:00:00+00:00"}
    bytes        {"$bytes": "<base64>"}       date/time  {"$date": ...} / {"$time": ...}
    UUID         {"$uuid": "..."}             timedelta  {"$timedelta": [days, s, us]}
    Decimal      {"$decimal": "1.10"}         set        {"$set": [...]} / {"$frozenset": [...]}
    NaN, ±inf    {"$float": "nan"}            odd dict   {"$map": [[key, value], ...]}
    Enum         {"$enum": "mod:Qual", "value": ...}
    dataclass    {"$dataclass": "mod:Qual", "fields": {...}}
    pydantic     {"$model": "mod:Qual", "data": {...}}

A class named in a tag is looked up only among classes this process already knows: ones it
has encoded, ones named by the caller's type hint (a step's return annotation, a workflow's
parameters), and ones defined in modules already imported. No module is ever imported and no
code runs on the strength of what a row says, beyond constructing an Enum, dataclass or
pydantic model of a known class. A class that cannot be found is a ``SerializationError``
(strict) or is left as its tagged dict (lenient, for display tools such as the CLI).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import json
import math
import sys
import types
import typing
import uuid
import zoneinfo
from decimal import Decimal
from typing import Any

from ._errors import SerializationError

MAX_DEPTH = 200

_KNOWN_CLASSES: dict[str, type] = {}
#: annotations already walked by ``remember_hint``
_HINTS_SEEN: set[Any] = set()

# One encoder, built once: json.dumps with non-default arguments builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _c_encoder() -> Any:
    """The C encoder ``_ENCODER.encode`` would build on every call, built once: reusable
    because it keeps no state between calls when it tracks no markers (``to_json`` output has
    no cycles: it is built fresh and depth-capped). None without the C accelerator."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    return make(None, _ENCODER.default, json.encoder.encode_basestring_ascii, None, ":", ",",
                False, False, False)  # fmt: skip


_C_ENCODE = _c_encoder()


class UnserializableValue(Exception):
    """Raised by :func:`to_json` with the offending type and where in the value it sits."""

    def __init__(self, type_name: str, path: str, reason: str = "") -> None:
        self.type_name = type_name
        self.path = path
        self.reason = reason
        super().__init__(f"{type_name} at {path or 'the top level'}{reason}")


def class_key(cls: type) -> str:
    """Return the ``module:qualname`` key a tag uses for ``cls``."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _remember(cls: type) -> str:
    key = class_key(cls)
    _KNOWN_CLASSES[key] = cls  # the latest definition wins (reloads, notebooks)
    return key


def dumps(value: Any) -> str:
    """Encode ``value`` as journal JSON text.

    Raises:
        UnserializableValue: the value holds something the codec does not support.
    """
    t = type(value)
    if t is int and value.bit_length() <= 64:  # the hot path: a step's plain result
        return int.__repr__(value)
    if t is str:
        return json.encoder.encode_basestring_ascii(value)
    if _C_ENCODE is None:
        return _ENCODER.encode(to_json(value))
    return "".join(_C_ENCODE(to_json(value), 0))


def to_json(value: Any, path: str = "", depth: int = 0) -> Any:
    """Turn ``value`` into plain JSON-compatible data with tags for the richer types."""
    t = type(value)
    if t is str or t is bool or value is None:
        return value
    if t is int:
        if value.bit_length() > 14_000:  # Python refuses to print ints past 4,300 digits
            raise UnserializableValue("int", path, ": too many digits for JSON")
        return value
    if depth > MAX_DEPTH:
        raise UnserializableValue(t.__name__, path, f": nested deeper than {MAX_DEPTH} levels")
    if t is float:
        return value if math.isfinite(value) else {"$float": repr(value)}
    if t is list:
        return [to_json(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if t is dict:
        return _dict_to_json(value, path, depth)
    encoder = _ENCODERS.get(t)
    if encoder is not None:
        return encoder(value, path, depth)
    return _object_to_json(value, path, depth)


def _dict_to_json(value: dict[Any, Any], path: str, depth: int) -> Any:
    if all(type(k) is str and not k.startswith("$") for k in value):
        return {k: to_json(v, f"{path}[{k!r}]", depth + 1) for k, v in value.items()}
    return {
        "$map": [
            [to_json(k, f"{path}<key>", depth + 1), to_json(v, f"{path}[{k!r}]", depth + 1)]
            for k, v in value.items()
        ]
    }


def _seq(tag: str) -> Any:
    def encode(value: Any, path: str, depth: int) -> Any:
        items = [to_json(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        if tag in ("$set", "$frozenset"):
            items.sort(key=lambda item: json.dumps(item, sort_keys=True))
        return {tag: items}

    return encode


_ENCODERS: dict[type, Any] = {
    tuple: _seq("$tuple"),
    set: _seq("$set"),
    frozenset: _seq("$frozenset"),
    bytes: lambda v, p, d: {"$bytes": base64.b64encode(v).decode("ascii")},
    bytearray: lambda v, p, d: {"$bytes": base64.b64encode(bytes(v)).decode("ascii")},
    dt.datetime: lambda v, p, d: _datetime_to_json(v),
    dt.date: lambda v, p, d: {"$date": v.isoformat()},
    dt.time: lambda v, p, d: {"$time": v.isoformat()},
    dt.timedelta: lambda v, p, d: {"$timedelta": [v.days, v.seconds, v.microseconds]},
    uuid.UUID: lambda v, p, d: {"$uuid": str(v)},
    Decimal: lambda v, p, d: {"$decimal": str(v)},
}


def _datetime_to_json(value: dt.datetime) -> dict[str, str]:
    encoded = {"$datetime": value.isoformat()}
    if isinstance(value.tzinfo, zoneinfo.ZoneInfo):
        encoded["tz"] = value.tzinfo.key  # keep the zone, not just today's offset
    return encoded


def _object_to_json(value: Any, path: str, depth: int) -> Any:
    cls = type(value)
    if isinstance(value, enum.Enum):
        return {"$enum": _remember(cls), "value": to_json(value.value, path, depth + 1)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: to_json(getattr(value, f.name), f"{path}.{f.name}", depth + 1)
            for f in dataclasses.fields(value)
        }
        return {"$dataclass": _remember(cls), "fields": fields}
    if _is_pydantic_model(value):
        try:
            data = value.model_dump(mode="json", round_trip=True, by_alias=False)
        except Exception as exc:  # pydantic raises its own error types for unserializable fields
            raise UnserializableValue(cls.__qualname__, path, f": {exc}") from exc
        # mode="json" can still leave NaN/inf floats in the data: encode it like any value.
        return {"$model": _remember(cls), "data": to_json(data, path, depth + 1)}
    raise UnserializableValue(f"{cls.__module__}.{cls.__qualname__}", path)


def _is_pydantic_model(value: Any) -> bool:
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(value, pydantic.BaseModel)


# -- decoding ------------------------------------------------------------------------------


def loads(text: str, hint: Any = None, *, strict: bool = True) -> Any:
    """Decode journal JSON text written by :func:`dumps`.

    Args:
        text: the stored JSON text.
        hint: a type annotation; classes it names become resolvable for this decode.
        strict: raise on a tag whose class cannot be found; when false, leave it as a dict.

    Raises:
        SerializationError: the text is not valid journal JSON, or names an unknown class.
    """
    if hint is not None:
        remember_hint(hint)
    try:
        raw = json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise SerializationError(f"stored value is not valid JSON: {exc}") from None
    try:
        return from_json(raw, strict)
    except RecursionError:
        raise SerializationError("stored value is nested too deeply to read") from None


def from_json(raw: Any, strict: bool = True) -> Any:
    """Turn decoded JSON data back into Python values, rebuilding tagged types."""
    t = type(raw)
    if t is list:
        return [from_json(v, strict) for v in raw]
    if t is not dict:
        return raw
    if len(raw) >= 1:
        tag = next(iter(raw))
        if tag.startswith("$"):
            return _decode_tagged(tag, raw, strict)
    return {k: from_json(v, strict) for k, v in raw.items()}


def _decode_tagged(tag: str, raw: dict[str, Any], strict: bool) -> Any:
    body = raw[tag]
    try:
        if tag == "$datetime" and "tz" in raw:
            zone = zoneinfo.ZoneInfo(raw["tz"])
            return dt.datetime.fromisoformat(body).astimezone(zone)
        simple = _SIMPLE_DECODERS.get(tag)
        if simple is not None:
            return simple(body, strict)
        if tag in ("$enum", "$dataclass", "$model"):
            return _decode_class(tag, raw, strict)
    except (SerializationError, RecursionError):
        raise
    except Exception as exc:
        raise SerializationError(f"cannot read stored {tag[1:]} value {body!r}: {exc}") from exc
    raise SerializationError(f"unknown tag {tag!r} in stored value (written by a newer perdure?)")


_SIMPLE_DECODERS: dict[str, Any] = {
    "$tuple": lambda b, s: tuple(from_json(v, s) for v in b),
    "$set": lambda b, s: {from_json(v, s) for v in b},
    "$frozenset": lambda b, s: frozenset(from_json(v, s) for v in b),
    "$map": lambda b, s: {from_json(k, s): from_json(v, s) for k, v in b},
    "$bytes": lambda b, s: base64.b64decode(b, validate=True),
    "$datetime": lambda b, s: dt.datetime.fromisoformat(b),  # "tz" handled in _decode_tagged
    "$date": lambda b, s: dt.date.fromisoformat(b),
    "$time": lambda b, s: dt.time.fromisoformat(b),
    "$timedelta": lambda b, s: dt.timedelta(days=b[0], seconds=b[1], microseconds=b[2]),
    "$uuid": lambda b, s: uuid.UUID(b),
    "$decimal": lambda b, s: Decimal(b),
    "$float": lambda b, s: float(b) if b in ("nan", "inf", "-inf") else _bad_float(b),
}


def _bad_float(body: Any) -> float:
    raise ValueError(f"not a special float: {body!r}")


def _decode_class(tag: str, raw: dict[str, Any], strict: bool) -> Any:
    key = raw[tag]
    cls = resolve_class(key)
    if cls is None:
        if strict:
            raise SerializationError(
                f"stored value is a {key} but that class is not known in this process: import "
                "its module, or annotate the step's return type (or the workflow's parameter) "
                "with it"
            )
        return {k: from_json(v, strict) if k != tag else v for k, v in raw.items()}
    if tag == "$enum":
        return cls(from_json(raw["value"], strict))
    if tag == "$model":
        # JSON-mode data validated in Python mode: strict models must accept it (strings for
        # datetimes, lists for tuples), so validation is lax here.
        # Dumped by field name, so validated by field name (aliases may differ).
        data = from_json(raw["data"], strict)
        try:
            return cls.model_validate(  # type: ignore[attr-defined]
                data, strict=False, by_alias=False, by_name=True
            )
        except TypeError:  # pydantic < 2.11 has no by_name: aliases must match field names
            return cls.model_validate(data, strict=False)  # type: ignore[attr-defined]
    obj = typing.cast(Any, cls).__new__(cls)
    stored = raw["fields"]
    for f in dataclasses.fields(cls):
        if f.name in stored:
            value = from_json(stored[f.name], strict)
        elif f.default is not dataclasses.MISSING:
            value = f.default  # a field added since this row was written
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise SerializationError(
                f"stored {key} has no field {f.name!r} and the class gives it no default"
            )
        object.__setattr__(obj, f.name, value)
    return obj


def resolve_class(key: str) -> type | None:
    """Find a class by ``module:qualname`` among classes this process already knows.

    Modules are never imported here: the module must be in ``sys.modules`` already.
    Only Enum, dataclass and pydantic model classes are returned.
    """
    cls = _KNOWN_CLASSES.get(key)
    if cls is not None:
        return cls
    module_name, _, qualname = key.partition(":")
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None) if obj is not None else None
    if isinstance(obj, type) and _is_rebuildable_class(obj):
        _KNOWN_CLASSES[key] = obj
        return obj
    return None


def _is_rebuildable_class(cls: type) -> bool:
    if issubclass(cls, enum.Enum) or dataclasses.is_dataclass(cls):
        return True
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and issubclass(cls, pydantic.BaseModel)


def remember_hint(hint: Any) -> None:
    """Make the classes a type annotation names resolvable (``list[Model] | None`` etc.)."""
    try:
        if hint in _HINTS_SEEN:  # a step's hint is the same at every call
            return
        _HINTS_SEEN.add(hint)
    except TypeError:  # an unhashable annotation: walked every time
        pass
    _remember_hint(hint)


def _remember_hint(hint: Any) -> None:
    if isinstance(hint, type):
        if _is_rebuildable_class(hint):
            _remember(hint)
        return
    for arg in typing.get_args(hint):
        _remember_hint(arg)
    origin = typing.get_origin(hint)
    if isinstance(origin, type) and origin is not types.UnionType:
        _remember_hint(origin)


# -- exceptions ----------------------------------------------------------------------------


def dumps_error(exc: BaseException) -> str:
    """Encode an exception as journal JSON: its type, message and, when they encode, its
    constructor arguments and attributes (so replay can raise an equal exception)."""
    cls = type(exc)
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {cls.__qualname__}>"
    record: dict[str, Any] = {"type": f"{cls.__module__}:{cls.__qualname__}", "message": message}
    try:
        reduced = exc.__reduce__()
        if isinstance(reduced, tuple) and len(reduced) >= 2 and reduced[0] is cls:
            record["args"] = to_json(list(reduced[1]))
            if len(reduced) > 2 and reduced[2]:
                record["state"] = to_json(reduced[2])
        _ENCODER.encode(record)  # args that encode but cannot print (huge ints) go too
    except (UnserializableValue, TypeError, ValueError):
        record.pop("args", None)
        record.pop("state", None)
    return _ENCODER.encode(record)


def is_error_record(text: str | None) -> bool:
    """Whether ``text`` is an error record as :func:`dumps_error` writes it (a JSON object
    with a type and a message), whether or not its class can be rebuilt here."""
    try:
        record = json.loads(text or "")
    except (ValueError, RecursionError):
        return False
    return isinstance(record, dict) and isinstance(record.get("type"), str) and "message" in record


def error_summary(text: str) -> tuple[str, str]:
    """Return (type name, message) of a stored error, for display."""
    try:
        record = json.loads(text)
        return str(record["type"]).replace(":", "."), str(record["message"])
    except (ValueError, KeyError, TypeError):
        return "unreadable error record", text[:200]


def loads_error(text: str) -> BaseException | None:
    """Rebuild a stored exception, or return None if its class is not available here.

    The class must be an ``Exception`` subclass in a module this process has imported.
    """
    try:
        record = json.loads(text)
        module_name, _, qualname = record["type"].partition(":")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None) if obj is not None else None
    if not (isinstance(obj, type) and issubclass(obj, Exception)) or "args" not in record:
        return None
    try:
        args = from_json(record["args"])
        state = record.get("state")
        try:
            exc = obj(*args)
        except Exception:
            # An __init__ whose parameters differ from its args (it formats a message and
            # calls super().__init__(message)): restore the recorded state without it.
            exc = obj.__new__(obj)
            exc.args = tuple(args)
        if isinstance(state, dict):
            exc.__dict__.update(from_json(state))
    except Exception:
        return None
    return exc
