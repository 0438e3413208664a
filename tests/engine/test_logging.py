"""Structured logging: the running workflow's id and step on log records, and JSON lines.

What is proved: a record logged by user code through a handler carrying
``perdure.LogContextFilter`` has ``workflow_id`` and ``step`` (the step's name inside a step
body, None in the workflow body outside steps, both None outside workflows), in sync and
async workflows, in concurrent tasks and in a sync step run on a timeout thread; perdure's
own records carry them with no setup; ``perdure.JsonLogFormatter`` writes one parseable JSON
object per record with those fields and the exception text.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

import perdure

log = logging.getLogger("tests.shop")


class Collect(logging.Handler):
    """Keeps the records it handles."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def fields(self) -> list[tuple[str, str | None, str | None]]:
        """(message, workflow_id, step) of each record."""
        return [(r.getMessage(), r.__dict__.get("workflow_id", "-"), r.__dict__.get("step", "-"))
                for r in self.records]  # fmt: skip


@pytest.fixture
def collected() -> Iterator[Collect]:
    handler = Collect()
    handler.addFilter(perdure.LogContextFilter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler
    log.removeHandler(handler)


@perdure.step(name="logging.charge")
def charge(amount: int) -> str:
    log.info("charging %d", amount)
    return f"receipt-{amount}"


@perdure.workflow(name="logging.checkout")
def checkout(amount: int) -> str:
    log.info("checkout started")
    receipt = charge(amount)
    log.info("mine", extra={"workflow_id": "given", "step": "by hand"})
    return receipt


def test_records_logged_in_a_workflow_carry_its_id_and_step(
    engine: perdure.Engine, collected: Collect
) -> None:
    log.info("before")
    engine.run(checkout, 5, id="logged", timeout=30)
    log.info("after")

    assert collected.fields() == [
        ("before", None, None),
        ("checkout started", "logged", None),
        ("charging 5", "logged", "logging.charge"),
        ("mine", "given", "by hand"),  # fields given with extra= are kept
        ("after", None, None),
    ]


@perdure.step(name="logging.tick")
async def tick(n: int) -> int:
    await asyncio.sleep(0.01 * (3 - n))
    log.info("tick %d", n)
    return n


@perdure.step(name="logging.slow", timeout=10)
def slow() -> str:
    log.info("on the timeout thread")
    return "done"


@perdure.workflow(name="logging.ticking")
async def ticking() -> int:
    results = await asyncio.gather(tick(1), tick(2))
    log.info("ticked")
    return sum(results)


@perdure.workflow(name="logging.with_timeout")
def with_timeout() -> str:
    return slow()


def test_concurrent_async_steps_and_timeout_threads_carry_their_step(
    engine: perdure.Engine, collected: Collect
) -> None:
    assert engine.run(ticking, id="ticks", timeout=30) == 3
    assert engine.run(with_timeout, id="timed", timeout=30) == "done"

    assert sorted(collected.fields()) == [
        ("on the timeout thread", "timed", "logging.slow"),
        ("tick 1", "ticks", "logging.tick"),
        ("tick 2", "ticks", "logging.tick"),
        ("ticked", "ticks", None),
    ]


@perdure.step(name="logging.fail", retry=perdure.NO_RETRY)
def fail() -> None:
    try:
        raise ValueError("card declined")
    except ValueError:
        log.exception("charge failed")
        raise


@perdure.workflow(name="logging.declined")
def declined() -> None:
    log.info("paying")
    fail()


def test_the_json_formatter_writes_one_object_per_record(engine: perdure.Engine) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(perdure.JsonLogFormatter())  # no filter: it reads the context itself
    log.addHandler(handler)
    try:
        with pytest.raises(ValueError):
            engine.run(declined, id="json", timeout=30)
        log.warning("outside %s", "any workflow")
    finally:
        log.removeHandler(handler)

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [set(line) for line in lines] == [
        {"time", "level", "logger", "message", "workflow_id", "step", "exception"}
    ] * 3
    paying, failed, outside = lines
    assert paying["message"] == "paying" and paying["level"] == "INFO"
    assert (paying["workflow_id"], paying["step"], paying["exception"]) == ("json", None, None)
    assert failed["logger"] == "tests.shop" and failed["level"] == "ERROR"
    assert (failed["workflow_id"], failed["step"]) == ("json", "logging.fail")
    assert "Traceback" in failed["exception"] and "ValueError: card declined" in failed["exception"]
    assert outside["message"] == "outside any workflow"
    assert (outside["workflow_id"], outside["step"]) == (None, None)
    assert outside["time"].endswith("+00:00")


@perdure.step(name="logging.reserve")
def reserve() -> str:
    return "reserved"


@perdure.step(name="logging.release", retry=perdure.NO_RETRY)
def release() -> None:
    raise RuntimeError("release refused")


@perdure.workflow(name="logging.undone")
def undone() -> None:
    reserve()
    perdure.compensate(release)
    raise LookupError("out of stock")


def test_perdures_own_records_carry_the_workflow_with_no_setup(
    engine: perdure.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="perdure")
    with pytest.raises(LookupError):
        engine.run(undone, id="undone", timeout=30)

    [record] = [r for r in caplog.records if "compensation" in r.getMessage()]
    assert record.name == "perdure"
    assert (record.__dict__["workflow_id"], record.__dict__["step"]) == ("undone", None)
