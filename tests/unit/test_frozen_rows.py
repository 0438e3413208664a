"""The store's row classes with :func:`perdure.store._frozen.fast_init`'s ``__init__`` behave
exactly as the frozen dataclasses they are: same signature, same fields from the same
arguments (positional, keyword, defaulted), still frozen, hashable, replaceable; and
``fast_init`` refuses the classes whose ``__init__`` it would not reproduce."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

import pytest

from perdure.store import AttemptRow, Lease, StepRow, StepStatus, WorkflowRow, WorkflowStatus
from perdure.store._frozen import fast_init

ROWS = [StepRow, AttemptRow, WorkflowRow, Lease]


def _plain_twin(cls: type) -> type:
    """The same dataclass without fast_init: the generated __init__ of the standard library."""
    fields = [(f.name, f.type, f) for f in dataclasses.fields(cls)]
    return dataclasses.make_dataclass(f"Plain{cls.__name__}", fields, frozen=True, slots=True)


def _values(cls: type) -> dict[str, Any]:
    """A distinct value for every field (so a field set from the wrong argument shows)."""
    values: dict[str, Any] = {}
    for i, field in enumerate(dataclasses.fields(cls)):
        if "StepStatus" in str(field.type):
            values[field.name] = StepStatus.ERROR
        elif "WorkflowStatus" in str(field.type):
            values[field.name] = WorkflowStatus.WAITING
        elif str(field.type).startswith("bool"):
            values[field.name] = True
        elif str(field.type).startswith(("int", "float")):
            values[field.name] = 1000 + i
        else:
            values[field.name] = f"value-{i}"
    return values


@pytest.mark.parametrize("cls", ROWS, ids=lambda c: c.__name__)
def test_the_signature_is_the_dataclass_one(cls: type) -> None:
    plain = _plain_twin(cls)
    assert inspect.signature(cls) == inspect.signature(plain)
    assert cls.__init__.__qualname__ == f"{cls.__name__}.__init__"
    assert cls.__init__.__module__ == cls.__module__
    # its string annotations resolve in the class's module, as the generated one's did
    hints = typing.get_type_hints(cls.__init__)
    assert hints == {**typing.get_type_hints(cls), "return": type(None)}


@pytest.mark.parametrize("cls", ROWS, ids=lambda c: c.__name__)
def test_every_way_of_calling_sets_the_same_fields(cls: type) -> None:
    plain = _plain_twin(cls)
    values = _values(cls)
    names = list(values)
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]

    def same(*args: Any, **kwargs: Any) -> None:
        fast_row, plain_row = cls(*args, **kwargs), plain(*args, **kwargs)
        assert dataclasses.asdict(fast_row) == dataclasses.asdict(plain_row)

    same(*values.values())  # all positional
    same(**values)  # all by keyword
    same(*[values[n] for n in required])  # defaults
    half = len(names) // 2
    same(*[values[n] for n in names[:half]], **{n: values[n] for n in names[half:]})
    with pytest.raises(TypeError):
        cls(*[values[n] for n in required[:-1]])  # one missing
    with pytest.raises(TypeError):
        cls(*values.values(), "one too many")
    with pytest.raises(TypeError):
        cls(**values, unknown=1)


@pytest.mark.parametrize("cls", ROWS, ids=lambda c: c.__name__)
def test_rows_stay_frozen_hashable_and_replaceable(cls: type) -> None:
    values = _values(cls)
    row = cls(**values)
    first = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(row, first, "changed")
    assert hash(row) == hash(cls(**values))
    assert row == cls(**values)
    changed = dataclasses.replace(row, **{first: "changed"})
    assert getattr(changed, first) == "changed"
    assert getattr(row, first) == values[first]


def test_fast_init_refuses_what_it_would_not_reproduce() -> None:
    @dataclasses.dataclass
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (Mutable, NoSlots, Factory, PostInit):
        with pytest.raises(TypeError):
            fast_init(cls)


def test_keyword_only_fields_stay_keyword_only() -> None:
    @fast_init
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Keyed:
        a: int
        b: str = "b"

    assert Keyed(a=1) == Keyed(a=1, b="b")
    assert (Keyed(a=2, b="c").a, Keyed(a=2, b="c").b) == (2, "c")
    with pytest.raises(TypeError):
        Keyed(1)  # type: ignore[misc]
