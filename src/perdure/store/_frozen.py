"""A faster ``__init__`` for the store's frozen, slotted row dataclasses.

A frozen dataclass's generated ``__init__`` sets each field with ``object.__setattr__``
(frozen classes refuse plain assignment), which looks the field's descriptor up by name on
every call: building a :class:`~perdure.store.StepRow` cost about 1.2 µs, a sizeable part of a
journaled step's Python (every step builds one, every replayed entry too). :func:`fast_init`
replaces that ``__init__`` with one of the same signature that calls each slot's descriptor
directly, the lookups done once, when the class is defined. The class stays frozen
(assignment still raises ``FrozenInstanceError``); construction, defaults, keyword
arguments, equality, hashing and ``dataclasses.replace`` behave exactly as before.

The function is generated from source, as :mod:`dataclasses` generates the one it replaces.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, TypeVar

T = TypeVar("T")


def fast_init(cls: type[T]) -> type[T]:
    """Give ``cls`` (a ``@dataclass(frozen=True, slots=True)``) an ``__init__`` that sets its
    slots through their descriptors; applied on top of the ``@dataclass`` decorator.

    Raises:
        TypeError: ``cls`` is not such a dataclass, or a field uses a feature this does not
            reproduce (``default_factory``, ``init=False``, ``__post_init__``, ``InitVar``).
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"fast_init needs a frozen, slotted dataclass, not {cls!r}")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"fast_init does not call {cls.__name__}.__post_init__")
    namespace: dict[str, Any] = {}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for index, field in enumerate(dataclasses.fields(cls)):  # type: ignore[arg-type]
        if field.default_factory is not dataclasses.MISSING or not field.init:
            raise TypeError(f"fast_init does not reproduce field {field.name!r} of {cls!r}")
        param = field.name
        if field.default is not dataclasses.MISSING:
            namespace[f"_default_{index}"] = field.default
            param += f"=_default_{index}"
        (keyword if field.kw_only else positional).append(param)
        namespace[f"_set_{index}"] = cls.__dict__[field.name].__set__
        body.append(f"    _set_{index}(self, {field.name})")
    signature = ", ".join(["self", *positional, *(["*", *keyword] if keyword else [])])
    # Built as dataclasses builds its own: a factory run in the class's module, so the new
    # __init__ has that module's globals (typing.get_type_hints resolves its annotations)
    # and gets the setters and defaults as closure variables, nothing added to the module.
    lines = "\n".join(f"    {line}" for line in body) or "        pass"
    source = (
        f"def __create_init__({', '.join(namespace)}):\n"
        f"  def __init__({signature}):\n{lines}\n"
        "  return __init__\n"
    )
    made: dict[str, Any] = {}
    exec(source, sys.modules[cls.__module__].__dict__, made)  # noqa: S102 (as dataclasses does)
    init = made["__create_init__"](**namespace)
    original = cls.__init__
    init.__qualname__ = original.__qualname__
    init.__annotations__ = original.__annotations__
    init.__doc__ = original.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
