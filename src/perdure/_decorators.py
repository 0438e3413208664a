"""``@workflow`` and ``@step``: mark functions; decoration needs no engine.

``@workflow`` registers the function by name in this process's registry (recovery finds a
workflow's code by the name stored with it) and returns the function unchanged: calling it
directly just runs it. ``@step`` wraps the function: inside a running workflow each call is
journaled (or replayed); anywhere else the wrapper just calls the function.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import typing
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, overload

from ._errors import ConfigurationError

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

_SPEC_ATTR = "__perdure_workflow__"


@dataclass
class WorkflowSpec:
    """A registered workflow: its name and function, with lazily resolved type hints."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    _hints: dict[str, Any] | None = field(default=None, repr=False)
    _signature: inspect.Signature | None = field(default=None, repr=False)

    def signature(self) -> inspect.Signature | None:
        """The function's signature (None for callables that have none)."""
        if self._signature is None:
            try:
                self._signature = inspect.signature(self.fn)
            except (TypeError, ValueError):
                return None
        return self._signature

    def hints(self) -> dict[str, Any]:
        """Parameter and return annotations, resolved once (forward references included)."""
        if self._hints is None:
            try:
                self._hints = typing.get_type_hints(self.fn)
            except Exception:  # unresolvable annotations: fall back to no hints
                self._hints = {}
        return self._hints


@dataclass
class StepSpec:
    """A step's name and function, with its return annotation resolved on first use."""

    name: str
    fn: Callable[..., Any]
    _return_hint: Any = field(default=None, repr=False)
    _resolved: bool = field(default=False, repr=False)

    def return_hint(self) -> Any:
        """The step's return annotation, or None."""
        if not self._resolved:
            try:
                self._return_hint = typing.get_type_hints(self.fn).get("return")
            except Exception:
                self._return_hint = None
            self._resolved = True
        return self._return_hint


def _mark_coroutine_function(fn: Callable[..., Any]) -> None:
    """Let ``inspect``/``asyncio.iscoroutinefunction`` see the async step wrapper as async."""
    mark = getattr(inspect, "markcoroutinefunction", None)  # Python 3.12+
    if mark is not None:
        mark(fn)
    else:
        fn._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]


_registry: dict[str, WorkflowSpec] = {}
_registry_lock = threading.Lock()


def registered(name: str) -> WorkflowSpec | None:
    """The workflow registered under ``name`` in this process, or None."""
    return _registry.get(name)


def registered_names() -> list[str]:
    """Every registered workflow name."""
    return list(_registry)


def spec_of(fn: Callable[..., Any]) -> WorkflowSpec | None:
    """The spec of a function decorated with ``@workflow``, or None."""
    spec = getattr(fn, _SPEC_ATTR, None)
    return spec if isinstance(spec, WorkflowSpec) else None


def _register(spec: WorkflowSpec) -> None:
    with _registry_lock:
        old = _registry.get(spec.name)
        if old is not None and _origin(old.fn) != _origin(spec.fn):
            raise ConfigurationError(
                f"two workflows are named {spec.name!r}: {_origin(old.fn)} and "
                f"{_origin(spec.fn)}; give one of them another name with "
                "@perdure.workflow(name=...)"
            )
        _registry[spec.name] = spec


def _origin(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


@overload
def workflow(fn: F, /) -> F: ...


@overload
def workflow(*, name: str | None = None) -> Callable[[F], F]: ...


def workflow(fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Mark a function (``def`` or ``async def``) as a durable workflow.

    Use bare (``@perdure.workflow``) or with arguments (``@perdure.workflow(name="triage")``).
    The name, by default the function's ``__qualname__``, is stored with every run and is how
    a recovering process finds the code: keep it stable across deployments.

    Args:
        fn: the function (when used bare).
        name: the registered name.

    Returns:
        The function itself, registered; calling it directly runs it without durability.

    Raises:
        ConfigurationError: another function is already registered under that name.
    """

    def decorate(f: F) -> F:
        if not callable(f):
            raise ConfigurationError("@perdure.workflow decorates a function")
        spec = WorkflowSpec(name or f.__qualname__, f, inspect.iscoroutinefunction(f))
        _register(spec)
        setattr(f, _SPEC_ATTR, spec)
        return f

    return decorate(fn) if fn is not None else decorate


@overload
def step(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def step(*, name: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def step(
    fn: Callable[P, R] | None = None, /, *, name: str | None = None
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a function (``def`` or ``async def``) as a step: its outcome is journaled.

    Inside a workflow, each call takes the next journal position. The first time, the body
    runs and its return value (or exception) is committed before the call returns; on replay
    the recorded value is returned (or the recorded exception raised) and the body does not
    run. Outside a workflow, or inside another step, the function simply runs.

    The return value must be serializable (see ``docs/serialization.md``); annotate the return
    type so replay in a fresh process can rebuild dataclasses, enums and pydantic models.

    Args:
        fn: the function (when used bare).
        name: the name journaled with each call (default: the function's ``__qualname__``).

    Returns:
        A wrapper with the same signature.
    """

    def decorate(f: Callable[P, R]) -> Callable[P, R]:
        from . import _context

        spec = StepSpec(name or f.__qualname__, f)
        if inspect.iscoroutinefunction(f):

            @functools.wraps(f)
            def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, Any]:
                # A plain function returning a coroutine: the journal position is taken at
                # call time, so steps started together (asyncio.gather) replay in call order.
                return _context.call_step_async(spec, args, kwargs)

            _mark_coroutine_function(async_wrapper)
            return typing.cast(Callable[P, R], async_wrapper)

        @functools.wraps(f)
        def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return typing.cast(R, _context.call_step_sync(spec, args, kwargs))

        return sync_wrapper

    return decorate(fn) if fn is not None else decorate
