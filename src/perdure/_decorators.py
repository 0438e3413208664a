"""``@workflow``, ``@step`` and ``@transaction``: mark functions; decoration needs no engine.

``@workflow`` registers the function by name in this process's registry (recovery finds a
workflow's code by the name stored with it) and returns the function unchanged: calling it
directly just runs it. ``@step`` wraps the function: inside a running workflow each call is
journaled (or replayed); anywhere else the wrapper just calls the function.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import inspect
import threading
import typing
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from ._errors import ConfigurationError
from ._retry import RetryPolicy

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
F = TypeVar("F", bound=Callable[..., Any])


class Step(Protocol[P, R_co]):
    """A function decorated with ``@perdure.step``: call it like the function."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def options(
        self, *, retry: RetryPolicy | None = None, timeout: float | None = None
    ) -> Step[P, R_co]:
        """The same step with another retry policy or timeout, for one call site."""
        ...


_SPEC_ATTR = "__perdure_workflow__"


@dataclass
class WorkflowSpec:
    """A registered workflow: its name and function, with lazily resolved type hints."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    deadline: float | None = None
    _hints: dict[str, Any] | None = field(default=None, repr=False)
    _signature: inspect.Signature | None = field(default=None, repr=False)
    _plain: bool | None = field(default=None, repr=False)

    def plain_parameters(self) -> bool:
        """Whether every parameter is an ordinary one (by position or by keyword: no
        ``*args``, ``**kwargs``, positional-only or keyword-only), computed once."""
        if self._plain is None:
            signature = self.signature()
            self._plain = signature is not None and all(
                p.kind is p.POSITIONAL_OR_KEYWORD for p in signature.parameters.values()
            )
        return self._plain

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
    """A step's name, function and options, with its return annotation resolved on first use.

    ``retry`` None means the engine's default policy; ``timeout`` None means no limit.
    """

    name: str
    fn: Callable[..., Any]
    _return_hint: Any = field(default=None, repr=False)
    _resolved: bool = field(default=False, repr=False)
    retry: RetryPolicy | None = None
    timeout: float | None = None
    transactional: bool = False
    #: what this call is made with (JSON, journaled with it), compared on replay
    fingerprint: str | None = None
    #: on replay with another fingerprint: "warn" (log), "error" (CallChangedError), "ignore"
    on_change: str = "warn"

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
def workflow(
    *, name: str | None = None, deadline: float | dt.timedelta | None = None
) -> Callable[[F], F]: ...


def workflow(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    deadline: float | dt.timedelta | None = None,
) -> F | Callable[[F], F]:
    """Mark a function (``def`` or ``async def``) as a durable workflow.

    Use bare (``@perdure.workflow``) or with arguments (``@perdure.workflow(name="triage")``).
    The name, by default the function's ``__qualname__``, is stored with every run and is how
    a recovering process finds the code: keep it stable across deployments.

    Args:
        fn: the function (when used bare).
        name: the registered name.
        deadline: how long a run may take from its start (seconds or a timedelta); past it,
            the next step call raises ``DeadlineExceededError``, compensations run, and the
            run ends in ERROR. Step timeouts and retry waits are capped by it.

    Returns:
        The function itself, registered; calling it directly runs it without durability.

    Raises:
        ConfigurationError: another function is already registered under that name, or the
            deadline is not positive.
    """
    seconds = deadline.total_seconds() if isinstance(deadline, dt.timedelta) else deadline
    if seconds is not None and not seconds > 0:
        raise ConfigurationError(f"a workflow deadline must be positive, not {deadline!r}")

    def decorate(f: F) -> F:
        if not callable(f):
            raise ConfigurationError("@perdure.workflow decorates a function")
        spec = WorkflowSpec(name or f.__qualname__, f, inspect.iscoroutinefunction(f), seconds)
        _register(spec)
        setattr(f, _SPEC_ATTR, spec)
        return f

    return decorate(fn) if fn is not None else decorate


@overload
def step(fn: Callable[P, R], /) -> Step[P, R]: ...


@overload
def step(
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
) -> Callable[[Callable[P, R]], Step[P, R]]: ...


def step(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
) -> Step[P, R] | Callable[[Callable[P, R]], Step[P, R]]:
    """Mark a function (``def`` or ``async def``) as a step: its outcome is journaled.

    Inside a workflow, each call takes the next journal key. The first time, the body runs
    (retried per ``retry``) and its return value (or final exception) is committed before the
    call returns; on replay the recorded value is returned (or the recorded exception raised)
    and the body does not run. Outside a workflow, or inside another step, the function
    simply runs, once.

    The return value must be serializable (see ``docs/serialization.md``); annotate the return
    type so replay in a fresh process can rebuild dataclasses, enums and pydantic models.

    Args:
        fn: the function (when used bare).
        name: the name journaled with each call (default: the function's ``__qualname__``).
        retry: how failed attempts are retried (default: the engine's policy, see
            ``docs/failures.md``).
        timeout: seconds one attempt may run; a sync step runs on its own thread so it can
            be abandoned (its late result is discarded). Raises ``StepTimeoutError``.

    Returns:
        A wrapper with the same signature, and ``.options(retry=, timeout=)`` to override
        them for one call site.

    Raises:
        ConfigurationError: ``timeout`` is not positive.
    """
    if timeout is not None and not timeout > 0:
        raise ConfigurationError(
            f"a step timeout must be a positive number of seconds, not {timeout!r}"
        )

    def decorate(f: Callable[P, R]) -> Step[P, R]:
        return _wrap(StepSpec(name or f.__qualname__, f, retry=retry, timeout=timeout))

    return decorate(fn) if fn is not None else decorate


@overload
def transaction(fn: Callable[P, R], /) -> Step[P, R]: ...


@overload
def transaction(
    *, name: str | None = None, retry: RetryPolicy | None = None
) -> Callable[[Callable[P, R]], Step[P, R]]: ...


def transaction(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
) -> Step[P, R] | Callable[[Callable[P, R]], Step[P, R]]:
    """Mark a plain ``def`` as an exactly-once database step.

    Inside a workflow the body runs on perdure's own database connection, inside the
    transaction that journals its result: get that connection with
    ``perdure.connection()`` (``sqlite3`` on SQLite, ``psycopg`` on PostgreSQL) and write
    your application's tables, which live in the same database. The writes and the journal
    entry commit together or not at all, so a crash anywhere never applies them twice and
    never loses them. An exception from the body rolls its writes back and is retried like
    any step's (see ``retry``). Never commit or roll back on that connection yourself, and
    keep the body short: on SQLite it holds the database's write lock.

    Outside a workflow the function simply runs (``perdure.connection()`` then raises).

    Raises:
        ConfigurationError: the function is a coroutine function (the connection is
            blocking; call a sync transaction step from async workflows).
    """

    def decorate(f: Callable[P, R]) -> Step[P, R]:
        if inspect.iscoroutinefunction(f):
            raise ConfigurationError(
                f"@perdure.transaction needs a plain def, and {f.__qualname__} is async: the "
                "transaction's connection is a blocking one (async workflows may call it)"
            )
        return _wrap(StepSpec(name or f.__qualname__, f, retry=retry, transactional=True))

    return decorate(fn) if fn is not None else decorate


def _wrap(spec: StepSpec) -> Step[Any, Any]:
    from . import _steps

    f = spec.fn

    def options(*, retry: RetryPolicy | None = None, timeout: float | None = None) -> Any:
        if spec.transactional and timeout is not None:
            raise ConfigurationError(
                f"transaction step {spec.name!r} cannot take a timeout: its body runs inside a "
                "database transaction, which cannot be abandoned half-way"
            )
        return _wrap(
            dataclasses.replace(spec, retry=retry or spec.retry, timeout=timeout or spec.timeout)
        )

    if inspect.iscoroutinefunction(f):

        @functools.wraps(f)
        def async_wrapper(*args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
            # A plain function returning a coroutine: the journal key is taken at call time,
            # so steps started together (asyncio.gather) replay in call order.
            return _steps.call_step_async(spec, args, kwargs)

        _mark_coroutine_function(async_wrapper)
        async_wrapper.options = options  # type: ignore[attr-defined]
        async_wrapper.__perdure_step__ = spec  # type: ignore[attr-defined]
        return typing.cast(Step[Any, Any], async_wrapper)

    @functools.wraps(f)
    def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
        return _steps.call_step_sync(spec, args, kwargs)

    sync_wrapper.options = options  # type: ignore[attr-defined]
    sync_wrapper.__perdure_step__ = spec  # type: ignore[attr-defined]
    return typing.cast(Step[Any, Any], sync_wrapper)
