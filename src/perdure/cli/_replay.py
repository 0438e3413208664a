"""``perdure export`` and ``perdure replay --check``: a recorded run as a portable JSON file,
and an offline check that the current code still replays it (no step runs, no model call,
no database)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from .._decorators import registered
from .._errors import CallChangedError, NonDeterminismError, PerdureError
from .._export import export_run, load_export
from ..testing import replay
from ._common import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    db_option,
    echo_json,
    fail,
    json_option,
    opened,
    operations,
    reporting_errors,
)
from ._render import one_line
from ._worker import _import_user_module


@click.command("export", short_help="Write a run (its journal) as portable JSON.")
@click.argument("workflow_id", metavar="ID")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write to FILE instead of standard output.")  # fmt: skip
@db_option
def export_command(workflow_id: str, output: Path | None, db: str) -> None:
    """Write workflow ID as a portable JSON document (format perdure.run/1): the workflow's
    inputs, status and result, every journal entry (recorded step, LLM and tool outputs) and
    the failed attempts of retried steps. Check it offline against the current code with
    `perdure replay --check FILE --app MODULE` or perdure.testing.replay() in a test.

    Exits 1 when no workflow has this id, 3 when the database cannot be read.
    """
    with opened(db) as store, reporting_errors():
        document = export_run(store, workflow_id)
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)
    if output is None:
        click.echo(text)
        return
    try:
        output.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {str(output)!r}: {exc.strerror}", EXIT_USAGE)


@click.command("replay", short_help="Check that the current code replays an exported run.")
@click.option("--check", "export", required=True, metavar="EXPORT",
              type=click.Path(dir_okay=False, path_type=Path),
              help="The exported run to check (a file written by `perdure export`).")  # fmt: skip
@click.option("--app", "module", required=True, metavar="MODULE",
              help="The module that registers the workflow (dotted name or .py path).")  # fmt: skip
@json_option
def replay_command(export: Path, module: str, as_json: bool) -> None:
    """Replay the journal of an exported run against the current code of its workflow
    (imported from MODULE), in this process, without running any step: every step call
    must find its recorded entry. Prints "replayed N steps: compatible", after a warning
    for each model call recorded with another model, prompt template or tools than the code
    now uses (policy on_change="warn"; with "error" that is a divergence).

    Exits 0 when the code replays the run (up to the end of its journal if the run was
    unfinished), with or without warnings, 1 on a divergence (the position, and the step
    recorded there against the step the code calls now, or the call and what changed), 2
    for an unreadable export or module. --json prints {"ok", "workflow_id", "name",
    "replayed", "finished", "stopped_at", "call_changes", "divergence"}.
    """
    try:
        recorded = load_export(export)
    except PerdureError as exc:
        fail(str(exc), EXIT_USAGE)
    _import_user_module(module)
    spec = registered(recorded.workflow.name)
    if spec is None:
        fail(f"module {module!r} registers no workflow named {recorded.workflow.name!r}",
             EXIT_USAGE)  # fmt: skip
    quiet = _CallChangesPrinted()  # printed below, once, rather than logged too
    logging.getLogger("perdure").addFilter(quiet)
    try:
        report = replay(export, spec.fn)
    except NonDeterminismError as exc:
        _diverged(recorded.workflow.id, recorded.workflow.name, exc, as_json)
    except PerdureError as exc:
        fail(f"{type(exc).__name__}: {exc}", EXIT_USAGE)
    finally:
        logging.getLogger("perdure").removeFilter(quiet)
    done = "compatible" if report.finished else "compatible up to the end of the unfinished run"
    if as_json:
        echo_json(_result(report.workflow_id, report.name, True, report.replayed,
                          report.finished, report.stopped_at, None,
                          report.call_changes))  # fmt: skip
        return
    for change in report.call_changes:
        click.echo(f"perdure: warning: {change} (the recorded answer was replayed)", err=True)
    count = len(report.call_changes)
    changed = f" ({count} call{'s' if count > 1 else ''} changed)" if count else ""
    click.echo(f"replayed {report.replayed} steps: {done}{changed}")


class _CallChangesPrinted(logging.Filter):
    """Drops the engine's log records of changed calls: the command prints them itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not isinstance(getattr(record, "perdure_call_change", None), CallChangedError)


def _diverged(workflow_id: str, name: str, exc: NonDeterminismError, as_json: bool) -> None:
    if as_json:
        divergence = {"position": exc.position, "recorded": exc.recorded,
                      "current": exc.current, "message": str(exc)}  # fmt: skip
        echo_json(_result(workflow_id, name, False, None, None, None, divergence))
        raise click.exceptions.Exit(EXIT_NOT_FOUND)
    fail(str(exc), EXIT_NOT_FOUND)


def _result(
    workflow_id: str,
    name: str,
    ok: bool,
    replayed: int | None,
    finished: bool | None,
    stopped_at: str | None,
    divergence: dict[str, Any] | None,
    call_changes: tuple[str, ...] = (),
) -> dict[str, Any]:
    return {"ok": ok, "workflow_id": workflow_id, "name": name, "replayed": replayed,
            "finished": finished, "stopped_at": stopped_at,
            "call_changes": list(call_changes), "divergence": divergence}  # fmt: skip


@click.command("diff", short_help="Show where two runs diverged.")
@click.argument("left", metavar="ID1")
@click.argument("right", metavar="ID2")
@db_option
@json_option
def diff_command(left: str, right: str, db: str, as_json: bool) -> None:
    """Compare the journals of runs ID1 and ID2 entry by entry (replay key, step name,
    status, recorded output and error) and show the first position where they differ, with
    each side's entry there; also whether their inputs and final statuses agree. Exit 0
    whether or not they differ (1: a run does not exist). --json prints the comparison."""
    with operations(db) as ops:
        data = ops.diff(left, right)
    if as_json:
        echo_json(data)
        return
    click.echo(f"{left}: {data['status']['left']}    {right}: {data['status']['right']}")
    click.echo("inputs: " + ("the same" if data["same_inputs"] else "different"))
    divergence = data["divergence"]
    if divergence is None:
        click.echo(f"journals: the same {data['common_steps']} steps")
        return
    click.echo(f"journals: the first {data['common_steps']} steps agree; they diverge at "
               f"position {divergence['position']}:")  # fmt: skip
    for side, run in (("left", left), ("right", right)):
        entry = divergence[side]
        if entry is None:
            click.echo(f"  {run}: (journal ends)")
            continue
        outcome = entry["error"] or entry["output"]
        text = one_line(json.dumps(outcome, ensure_ascii=False, default=str))
        click.echo(f"  {run}: {entry['name']} [{entry['key']}] {entry['status']} "
                   f"{text[:80]}")  # fmt: skip
