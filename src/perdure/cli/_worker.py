"""``perdure worker MODULE``: run a worker for a module's workflows until SIGTERM or SIGINT;
and ``perdure migrate``: bring a database's schema up to this perdure.

The worker imports the user's module (a dotted name importable from the current folder, or
a path to a ``.py`` file) so that its ``@perdure.workflow`` functions and queues are
registered, opens an :class:`~perdure.Engine` and waits. On SIGTERM or SIGINT it closes the
engine: in-flight steps get ``--shutdown-grace`` seconds to finish and commit, and every
unfinished workflow is released, so another worker resumes it at once (see
:meth:`perdure.Engine.close`).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, ModuleType

import click

from .. import __version__
from .._decorators import registered_names
from .._encryption import Encryption
from .._engine import Engine
from .._queues import Queue, registered_queues
from .._versions import Compatible
from ..store._migrations import load_migrations
from ._common import (
    EXIT_USAGE,
    db_option,
    echo_json,
    fail,
    json_option,
    opened,
    reporting_errors,
)
from ._render import without_password

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_DEFAULT_MAX_THREADS = 64
_DEFAULT_GRACE = 2.0


@click.command("worker", short_help="Run a worker for a module's workflows.")
@click.argument("module", metavar="MODULE")
@db_option
@click.option(
    "--max-threads",
    type=click.IntRange(min=1),
    default=_DEFAULT_MAX_THREADS,
    show_default=True,
    help="How many sync workflows run at once; more wait their turn.",
)
@click.option(
    "--queue",
    "queues",
    multiple=True,
    metavar="NAME",
    help="Also take work off queue NAME (declared here without limits unless MODULE declares "
    "it). Repeat for more.",
)
@click.option(
    "--shutdown-grace",
    type=click.FloatRange(min=0),
    default=_DEFAULT_GRACE,
    show_default=True,
    metavar="SECONDS",
    help="On SIGTERM or SIGINT, how long in-flight steps get to finish before the worker "
    "releases their workflows.",
)
@click.option(
    "--version",
    "version",
    metavar="VERSION",
    help="The application version workflows started here record (default: per workflow, a "
    "hash of its source and step names). See docs/change-safety.md.",
)
@click.option(
    "--compatible-version",
    "compatible",
    multiple=True,
    metavar="VERSION",
    help="Also resume workflows started by this code version (their journals replay with "
    "this code), or 'any'. Repeat for more.",
)
def worker_command(
    module: str,
    db: str,
    max_threads: int,
    queues: tuple[str, ...],
    shutdown_grace: float,
    version: str | None,
    compatible: tuple[str, ...],
) -> None:
    """Run a worker: import MODULE so its @perdure.workflow functions (and perdure.Queue
    declarations) are registered, then run them until SIGTERM or SIGINT.

    MODULE is a dotted module name importable from the current folder (myapp.workflows) or
    a path to a .py file (its folder goes on sys.path, so it can import its neighbours).
    The worker resumes the unfinished workflows of those names, wakes waiting ones, takes
    work off the declared queues, and acts on `perdure cancel/resume/retry/send/approve`.

    On SIGTERM or SIGINT it stops: in-flight steps get --shutdown-grace seconds to finish
    and commit, then every unfinished workflow is released, so another worker resumes it at
    once; then it exits 0. Exits 2 when MODULE cannot be imported or registers no workflow.

    Workflows started by another version of their code are left for a worker running that
    version (`perdure versions` lists them), unless declared with --compatible-version.
    """
    with _signals_caught() as stop:
        _import_user_module(module)
        names = sorted(registered_names())
        if not names:
            fail(
                f"{module} registers no workflow: decorate its workflow functions with "
                "@perdure.workflow (or import the modules that do)",
                EXIT_USAGE,
            )
        with reporting_errors():
            for name in queues:
                if all(queue.name != name for queue in registered_queues()):
                    Queue(name)
            _log_to_stderr()
            accepted: Compatible = "any" if "any" in compatible else compatible
            engine = Engine(
                db, max_threads=max_threads, shutdown_grace=shutdown_grace, version=version,
                compatible_versions=accepted, encryption=Encryption.from_env(),
            ).open()  # fmt: skip
        try:
            click.echo(_ready_line(engine, names, db))
            received = stop.wait()
            click.echo(
                f"worker {engine.worker.id} stopping ({received}): in-flight steps get "
                f"{shutdown_grace:g} s to finish, unfinished workflows are released"
            )
        finally:
            engine.close()


@click.command("versions", short_help="Count unfinished workflows by code version.")
@db_option
@json_option
def versions_command(db: str, as_json: bool) -> None:
    """Count unfinished workflows by name and by the version of the code that started them.

    A worker resumes only workflows of its own code version (and those it declares with
    --compatible-version): before retiring the workers of an old version, check here that no
    unfinished workflow of that version is left. See docs/change-safety.md.
    """
    with opened(db) as store:
        counts = store.version_counts()
    if as_json:
        echo_json([{"name": n, "version": v, "unfinished": c} for n, v, c in counts])
        return
    if not counts:
        click.echo("no unfinished workflows")
        return
    width = max(len(name) for name, _, _ in counts)
    click.echo(f"{'NAME':<{width}}  {'VERSION':<20}  UNFINISHED")
    for name, version, count in counts:
        click.echo(f"{name:<{width}}  {version or '(not recorded)':<20}  {count}")


def _ready_line(engine: Engine, names: list[str], db: str) -> str:
    """``worker ID ready: N workflows registered: a, b; database URL; queues: q``."""
    served = sorted(queue.name for queue in registered_queues())
    on_queues = f"; queues: {', '.join(served)}" if served else ""
    workflows = f"{len(names)} workflow{'' if len(names) == 1 else 's'} registered"
    return (
        f"worker {engine.worker.id} ready: {workflows}: {', '.join(names)}; "
        f"database {without_password(db)}{on_queues}"
    )


class _Stop:
    """The first stop signal received. The handler only assigns an attribute (taking no
    lock: a handler that waits for a lock the interrupted main thread holds would hang), and
    :meth:`wait` polls it."""

    def __init__(self) -> None:
        self.name = ""

    def set(self, signum: int, frame: FrameType | None) -> None:
        if not self.name:
            self.name = signal.Signals(signum).name

    def wait(self) -> str:
        """Block until a stop signal came; return its name."""
        while not self.name:
            time.sleep(0.1)
        return self.name


@contextmanager
def _signals_caught() -> Iterator[_Stop]:
    """Catch SIGTERM and SIGINT from now on (one arriving while the module is imported or
    the engine opens stops the worker as soon as it is ready), and restore their handlers
    on the way out."""
    stop = _Stop()
    previous = {sig: signal.signal(sig, stop.set) for sig in _STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _log_to_stderr() -> None:
    """perdure's own log (warnings, and on stopping how many workflows were released) on
    stderr with times, unless the user's module configured logging itself."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s")
        logging.getLogger("perdure").setLevel(logging.INFO)


def _import_user_module(target: str) -> ModuleType:
    """Import MODULE, a dotted name importable from the current folder or a ``.py`` path;
    on failure, a usage error (exit 2) naming the cause and where it was raised."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    is_path = target.endswith(".py") or "/" in target or os.sep in target
    try:
        return _import_file(Path(target)) if is_path else importlib.import_module(target)
    except click.exceptions.Exit:  # _import_file's own usage errors
        raise
    except ModuleNotFoundError as exc:
        if not is_path and exc.name is not None and _is_prefix(exc.name, target):
            fail(
                f"cannot import {target!r}: no module named {exc.name!r} in the current folder "
                "or on sys.path; pass a dotted module name or a path to a .py file",
                EXIT_USAGE,
            )
        fail(_import_failure(target, exc), EXIT_USAGE)
    except (Exception, SystemExit) as exc:  # whatever the module's top level raised
        fail(_import_failure(target, exc), EXIT_USAGE)


def _is_prefix(name: str, dotted: str) -> bool:
    """Whether module ``name`` is ``dotted`` or one of its parent packages."""
    return dotted == name or dotted.startswith(name + ".")


def _import_file(path: Path) -> ModuleType:
    """Import a ``.py`` file as a module named after it, its folder first on sys.path."""
    if not path.is_file():
        fail(f"cannot import {str(path)!r}: no such file", EXIT_USAGE)
    path = path.resolve()
    name = path.stem
    known = sys.modules.get(name)
    if known is not None:
        if getattr(known, "__file__", None) == str(path):
            return known
        fail(
            f"cannot import {str(path)!r} as module {name!r}: a module of that name is already "
            f"loaded ({getattr(known, '__file__', None) or 'built in'}); rename the file",
            EXIT_USAGE,
        )
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        fail(f"cannot import {str(path)!r}: not a Python source file", EXIT_USAGE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its classes must be importable by name (the journal's codec)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_failure(target: str, exc: BaseException) -> str:
    """``cannot import 'app': NameError: name 'x' is not defined (app.py, line 3)``."""
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({exc.filename}, line {exc.lineno})"
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if not f.filename.startswith("<frozen ")]  # fmt: skip
        if frames and frames[-1].filename != __file__:
            where = f" ({frames[-1].filename}, line {frames[-1].lineno})"
    return f"cannot import {target!r}: {type(exc).__name__}: {exc}{where}"


@click.command("migrate", short_help="Create or upgrade the database's tables.")
@db_option
@json_option
def migrate_command(db: str, as_json: bool) -> None:
    """Create perdure's tables in the database, or upgrade them to this version of perdure,
    and print the schema version. Running it again does nothing. (Every command and engine
    migrates the database it opens; this lets a deployment do it first, on its own.)

    --json prints {"database", "schema_version"}. Exits 3 when the database is unreachable,
    or has a schema newer than this perdure knows.
    """
    with opened(db):  # opening migrates, and refuses a schema newer than ours
        pass
    # open_store accepted the URL, so its scheme is sqlite, postgresql or postgres.
    dialect = "sqlite" if db.partition("://")[0] == "sqlite" else "postgres"
    version = max(m.version for m in load_migrations(dialect))
    if as_json:
        echo_json({"database": without_password(db), "schema_version": version})
    else:
        click.echo(f"database {without_password(db)} is at schema version {version} "
                   f"(perdure {__version__})")  # fmt: skip
