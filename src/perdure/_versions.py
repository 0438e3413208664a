"""Code versions: which version of a workflow's code a run was started by, and which runs
this process may resume.

Every workflow row records a version when it starts: the engine's application version when
the user sets one (``Engine(version="2026.11.2")``), else a hash of the workflow function's
source and of the names of the steps it calls (``src-3f9a1c0d2b7e``). An engine takes over
(recovery, wake-ups, resumption) only runs of versions it can run: its own, plus those the
user declares compatible (``Engine(compatible_versions=[...])``, or ``"any"``). The others
are left, unclaimed, for a process running their version, and reported (``perdure
versions``, and a log line). A queued workflow has run nothing: the worker that takes it off
its queue records its own version.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import time
import types
from collections.abc import Callable, Collection
from typing import Any, Literal

from ._decorators import WorkflowSpec, registered
from ._errors import ConfigurationError

log = logging.getLogger("perdure")

Compatible = Collection[str] | Literal["any"]


def source_version(spec: WorkflowSpec) -> str:
    """``src-`` and 12 hex digits: a hash of the workflow's source (or, where the source is
    not available, its bytecode) and the names of the steps it calls. Editing the function,
    or renaming a step it calls, gives a new version; editing a step's body does not (the
    step's result is what a replay reads back)."""
    fn = inspect.unwrap(spec.fn)
    digest = hashlib.sha256(spec.name.encode())
    try:
        digest.update(inspect.getsource(fn).encode())
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        digest.update(repr(code.co_code if code is not None else fn).encode())
    for name in sorted(step_names(fn)):
        digest.update(b"\0" + name.encode())
    return f"src-{digest.hexdigest()[:12]}"


def step_names(fn: Callable[..., Any]) -> set[str]:
    """Names of the perdure steps a function refers to: globals and closure variables named
    in its code (nested functions and comprehensions included) that are steps."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return set()
    scope: dict[str, Any] = dict(getattr(fn, "__globals__", {}))
    for var, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or (), strict=False):
        try:
            scope[var] = cell.cell_contents
        except ValueError:  # an empty cell
            continue
    found: set[str] = set()
    for name in _names(code):
        spec = getattr(scope.get(name), "__perdure_step__", None)
        if spec is not None:
            found.add(str(spec.name))
    return found


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names) | set(code.co_freevars)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


class Versions:
    """An engine's versioning policy.

    Args:
        version: the application version every workflow started here records; None: each
            workflow's source hash (:func:`source_version`).
        compatible: versions this engine also runs (besides its own), or ``"any"``.
    """

    def __init__(self, version: str | None, compatible: Compatible) -> None:
        if version is not None and (not isinstance(version, str) or not version.strip()):
            raise ConfigurationError(f"a code version is a non-empty string, not {version!r}")
        if isinstance(compatible, str) and compatible != "any":
            raise ConfigurationError(
                f"compatible_versions is a list of versions or 'any', not {compatible!r}"
            )
        self.version = version
        self.any = compatible == "any"
        self.compatible: frozenset[str] = frozenset() if self.any else frozenset(compatible)
        self._hashes: dict[int, tuple[WorkflowSpec, str]] = {}
        self._last_report = -1e9

    def of(self, spec: WorkflowSpec) -> str:
        """The version a run of ``spec`` started here records."""
        if self.version is not None:
            return self.version
        cached = self._hashes.get(id(spec))
        if cached is None or cached[0] is not spec:
            cached = self._hashes[id(spec)] = (spec, source_version(spec))
        return cached[1]

    def accepted(self, names: Collection[str]) -> frozenset[str] | None:
        """The versions this engine runs, for workflows of these names; None: any."""
        if self.any:
            return None
        own = {self.of(spec) for name in names if (spec := registered(name)) is not None}
        return frozenset(own) | self.compatible

    def stamp(self, names: Collection[str]) -> dict[str, str]:
        """name -> the version this engine records for a queued workflow it takes."""
        return {name: self.of(spec) for name in names if (spec := registered(name)) is not None}

    def report(self, counts: Callable[[], list[tuple[str, str | None, int]]]) -> None:
        """Log, at most once a minute, unfinished workflows of a registered name that this
        engine leaves alone because of their version. ``counts`` reads (name, version,
        count) of the unfinished workflows: called at most once a minute too."""
        now = time.monotonic()
        if self.any or now - self._last_report < 60:
            return
        self._last_report = now
        rows = counts()
        accepted = self.accepted([name for name, _, _ in rows]) or frozenset()
        for name, version, count in rows:
            spec = registered(name)
            if spec is None or version is None or version in accepted:
                continue
            log.warning(
                "perdure: %d unfinished workflow(s) of %r were started by code version %r; "
                "this process runs %r and leaves them for a process running that version. If "
                "the code is compatible (perdure replay --check on an export says so), declare "
                "it: Engine(compatible_versions=[%r]); see docs/change-safety.md",
                count, name, version, self.of(spec), version,
            )  # fmt: skip
