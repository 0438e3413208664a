"""Serialization through the public API: typed replay (same process and a new one) and
unserializable values refused before anything is committed."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import math
import signal
import subprocess
import sys
import textwrap
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pydantic
import pytest

import perdure

# -- values --------------------------------------------------------------------------------


class Line(pydantic.BaseModel):
    sku: str
    qty: int


class Invoice(pydantic.BaseModel):
    number: int
    total: Decimal
    issued: dt.datetime
    lines: list[Line]


@dataclasses.dataclass(frozen=True)
class Receipt:
    invoice_number: int
    paid_at: dt.datetime
    codes: tuple[str, ...]


class Measurement(pydantic.BaseModel):
    value: float


ISSUED = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)

# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 't.db'}"


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# -- typed replay in this process -------------------------------------------------------------

LEDGER: list[str] = []
GATE = threading.Event()


@perdure.step
def make_invoice(number: int) -> Invoice:
    LEDGER.append("invoice")
    return Invoice(
        number=number,
        total=Decimal("12.30"),
        issued=ISSUED,
        lines=[Line(sku="A", qty=1), Line(sku="B", qty=2)],
    )


@perdure.step
def pay(invoice: Invoice) -> Receipt:
    LEDGER.append("receipt")
    return Receipt(invoice.number, ISSUED + dt.timedelta(hours=1), ("x", "y"))


@perdure.step
def archive(receipt: Receipt) -> str:
    LEDGER.append("archive")
    return f"archived {receipt.invoice_number}"


@perdure.workflow(name="ser_model_replay")
def billing(number: int) -> dict[str, Any]:
    invoice = make_invoice(number)
    receipt = pay(invoice)
    GATE.wait(10)  # the first engine is closed while the workflow waits here
    archived = archive(receipt)
    return {
        "invoice_is_model": type(invoice) is Invoice,
        "lines_are_models": all(type(line) is Line for line in invoice.lines),
        "receipt_is_dataclass": type(receipt) is Receipt,
        "invoice": invoice,
        "receipt": receipt,
        "archived": archived,
    }


def test_model_and_dataclass_steps_replay_as_their_types(url: str) -> None:
    LEDGER.clear()
    GATE.clear()
    with perdure.Engine(url, shutdown_grace=0.1) as first:
        first.start(billing, 7, id="bill-7")
        wait_for(lambda: len(first.list_steps("bill-7")) == 2)
        steps = first.list_steps("bill-7")
        assert [s.name for s in steps] == ["make_invoice", "pay"]
        assert type(steps[0].output) is Invoice
        assert steps[0].output.total == Decimal("12.30")
        assert type(steps[0].output.lines[1]) is Line
        assert type(steps[1].output) is Receipt
        assert steps[1].output.codes == ("x", "y")
    # the first engine released the run; its abandoned thread may not start another step
    GATE.set()
    with perdure.Engine(url) as second:
        result = second.handle("bill-7").result(timeout=10)
        assert second.get_workflow("bill-7").recoveries == 0  # released at close, not crashed
    assert result["invoice_is_model"] is True
    assert result["lines_are_models"] is True
    assert result["receipt_is_dataclass"] is True
    assert type(result["invoice"]) is Invoice and result["invoice"].number == 7
    assert result["invoice"].issued == ISSUED
    assert result["receipt"] == Receipt(7, ISSUED + dt.timedelta(hours=1), ("x", "y"))
    assert result["archived"] == "archived 7"
    # replayed, not re-run: each body ran exactly once across both engines
    assert LEDGER == ["invoice", "receipt", "archive"]


# -- typed replay in a new process ----------------------------------------------------------------

APP = textwrap.dedent(
    """
    import dataclasses
    import datetime as dt
    import json
    import os
    import signal
    import sys
    from decimal import Decimal

    import pydantic

    import perdure

    DB, LEDGER, MODE = sys.argv[1], sys.argv[2], sys.argv[3]


    class Order(pydantic.BaseModel):
        sku: str
        qty: int


    class Quote(pydantic.BaseModel):
        sku: str
        total: Decimal
        valid_until: dt.datetime


    @dataclasses.dataclass(frozen=True)
    class Reservation:
        code: str
        slots: tuple[int, ...]


    def log(entry):
        with open(LEDGER, "a", encoding="utf-8") as f:
            f.write(entry + "\\n")


    @perdure.step
    def quote(order: Order) -> Quote:
        log("quote")
        return Quote(
            sku=order.sku,
            total=Decimal("9.99") * order.qty,
            valid_until=dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc),
        )


    @perdure.step
    def reserve(q: Quote) -> Reservation:
        log("reserve")
        return Reservation(code=q.sku + "-R", slots=(1, 2, 3))


    @perdure.step
    def late() -> str:
        log("late")
        if MODE == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        return "late done"


    @perdure.workflow(name="ser_proc_replay")
    def checkout(order: Order) -> dict:
        q = quote(order)
        r = reserve(q)
        tail = late()
        return {
            "order_is_model": type(order) is Order,
            "quote_is_model": type(q) is Quote,
            "reservation_is_dataclass": type(r) is Reservation,
            "total": str(q.total),
            "valid_until": q.valid_until.isoformat(),
            "slots_type": type(r.slots).__name__,
            "code": r.code,
            "tail": tail,
        }


    with perdure.Engine(f"sqlite:///{DB}") as engine:
        if MODE == "crash":
            engine.start(checkout, Order(sku="A-1", qty=3), id="order-1").result(timeout=30)
            sys.exit(3)  # never reached: the late step kills the process
        print(json.dumps(engine.handle("order-1").result(timeout=30)))
    """
)


@pytest.mark.crash
def test_model_step_replays_as_model_in_a_new_process(tmp_path: Path) -> None:
    app = tmp_path / "ser_proc_app.py"
    app.write_text(APP, encoding="utf-8")
    db, ledger = tmp_path / "t.db", tmp_path / "ledger.txt"

    def run(mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(app), str(db), str(ledger), mode],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    crashed = run("crash")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert ledger.read_text().split() == ["quote", "reserve", "late"]

    resumed = run("resume")
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert result == {
        "order_is_model": True,
        "quote_is_model": True,
        "reservation_is_dataclass": True,
        "total": "29.97",
        "valid_until": "2026-12-01T00:00:00+00:00",
        "slots_type": "tuple",
        "code": "A-1-R",
        "tail": "late done",
    }
    # the model and dataclass steps ran once; only the uncommitted step ran again
    assert ledger.read_text().split() == ["quote", "reserve", "late", "late"]

    # a process without the application's classes still reads the journal (leniently)
    with perdure.Engine(f"sqlite:///{db}", recover=False) as viewer:
        steps = viewer.list_steps("order-1")
        assert [s.name for s in steps] == ["quote", "reserve", "late"]
        assert steps[0].output["$model"].endswith(":Quote")
        assert steps[0].output["data"]["total"] == "29.97"
        assert steps[1].output["$dataclass"].endswith(":Reservation")
        assert steps[1].output["fields"]["slots"] == (1, 2, 3)


# -- unserializable step values -------------------------------------------------------------------

RAN: list[str] = []


@perdure.step
def fine() -> int:
    return 41


@perdure.step
def grab_lock() -> Any:
    RAN.append("grab_lock")
    return {"handle": [threading.Lock()]}


@perdure.workflow(name="ser_unserializable_step_caught")
def catches_lock() -> str:
    fine()
    try:
        grab_lock()
    except perdure.SerializationError as exc:
        return f"caught: {exc}"
    return "no error"


@perdure.workflow(name="ser_unserializable_step_uncaught")
def raises_lock() -> int:
    fine()
    grab_lock()
    return 1


def test_unserializable_step_value_is_a_serialization_error_in_the_workflow(url: str) -> None:
    RAN.clear()
    with perdure.Engine(url) as engine:
        message = engine.run(catches_lock, id="lock-1", timeout=10)
        steps = engine.list_steps("lock-1")
    assert message.startswith("caught: ")
    assert "grab_lock" in message
    assert "_thread.lock" in message
    assert "['handle'][0]" in message
    assert RAN == ["grab_lock"]
    # the step before committed; nothing at the failing step's position
    assert [(s.position, s.name) for s in steps] == [(0, "fine")]
    assert steps[0].output == 41


def test_uncaught_unserializable_step_value_fails_the_workflow(url: str) -> None:
    with perdure.Engine(url) as engine:
        with pytest.raises(perdure.SerializationError) as info:
            engine.run(raises_lock, id="lock-2", timeout=10)
        assert "grab_lock" in str(info.value) and "_thread.lock" in str(info.value)
        assert [s.name for s in engine.list_steps("lock-2")] == ["fine"]
        record = engine.get_workflow("lock-2")
    assert record.status is perdure.WorkflowStatus.ERROR
    assert record.error is not None
    assert record.error.type.endswith("SerializationError")


@perdure.step
async def async_socketish() -> Any:
    await asyncio.sleep(0)
    return (1, object())


@perdure.workflow(name="ser_unserializable_async_step")
async def async_catches() -> str:
    try:
        await async_socketish()
    except perdure.SerializationError as exc:
        return str(exc)
    return "no error"


def test_unserializable_async_step_value_is_a_serialization_error(url: str) -> None:
    with perdure.Engine(url) as engine:
        message = engine.run(async_catches, id="async-1", timeout=10)
        assert engine.list_steps("async-1") == []
    assert "async_socketish" in message
    assert "builtins.object" in message


@perdure.step
def measure() -> Measurement:
    return Measurement(value=float("nan"))


@perdure.workflow(name="ser_nan_model_step")
def measures() -> str:
    try:
        m = measure()
    except perdure.SerializationError as exc:
        return f"refused: {exc}"
    return "nan kept" if math.isnan(m.value) else f"changed to {m.value!r}"


def test_model_with_nan_is_kept_or_refused_as_serialization_error(url: str) -> None:
    """A pydantic model holding NaN either round-trips or is refused with a
    SerializationError naming the step and the type; never a bare ValueError."""
    with perdure.Engine(url) as engine:
        outcome = engine.run(measures, id="nan-1", timeout=10)
        steps = engine.list_steps("nan-1")
    if outcome.startswith("refused: "):
        assert "measure" in outcome and "Measurement" in outcome
        assert steps == []
    else:
        assert outcome == "nan kept"
        assert type(steps[0].output) is Measurement and math.isnan(steps[0].output.value)


@perdure.workflow(name="ser_unserializable_result")
def returns_lock() -> Any:
    fine()
    return threading.Lock()


def test_unserializable_workflow_result_fails_the_workflow(url: str) -> None:
    with perdure.Engine(url) as engine:
        with pytest.raises(perdure.SerializationError) as info:
            engine.run(returns_lock, id="result-1", timeout=10)
        assert engine.get_workflow("result-1").status is perdure.WorkflowStatus.ERROR
    assert "result-1" in str(info.value) and "_thread.lock" in str(info.value)


# -- unserializable workflow arguments ------------------------------------------------------------

STARTED: list[Any] = []


@perdure.workflow(name="ser_unserializable_args")
def takes_anything(value: Any, *, extra: Any = None) -> str:
    STARTED.append(value)
    return "ran"


@pytest.mark.parametrize(
    ("args", "kwargs", "type_fragment"),
    [
        ((threading.Lock(),), {}, "_thread.lock"),
        (({"ok": [1, object()]},), {}, "builtins.object"),
        ((1,), {"extra": (x for x in ())}, "generator"),
    ],
    ids=["lock", "nested-object", "kwarg-generator"],
)
def test_unserializable_argument_records_nothing(
    url: str, args: tuple[Any, ...], kwargs: dict[str, Any], type_fragment: str
) -> None:
    STARTED.clear()
    with perdure.Engine(url) as engine:
        with pytest.raises(perdure.SerializationError) as info:
            engine.start(takes_anything, *args, id="args-1", **kwargs)
        assert "ser_unserializable_args" in str(info.value)
        assert type_fragment in str(info.value)
        assert engine.list_workflows() == []
        with pytest.raises(perdure.WorkflowNotFound):
            engine.get_workflow("args-1")
        # the id is still free: a good start with it works
        assert engine.run(takes_anything, "fine", id="args-1", timeout=10) == "ran"
        assert [w.id for w in engine.list_workflows()] == ["args-1"]
    assert STARTED == ["fine"]


@perdure.workflow(name="ser_typed_args")
def typed_args(invoice: Invoice, receipt: Receipt, when: dt.date) -> list[str]:
    return [type(invoice).__name__, type(receipt).__name__, type(when).__name__]


def test_model_and_dataclass_arguments_arrive_as_their_types(url: str) -> None:
    invoice = Invoice(number=1, total=Decimal("1"), issued=ISSUED, lines=[])
    receipt = Receipt(1, ISSUED, ())
    with perdure.Engine(url) as engine:
        names = engine.run(typed_args, invoice, receipt, dt.date(2026, 1, 1), timeout=10)
        [info] = engine.list_workflows()
    assert names == ["Invoice", "Receipt", "date"]
    # journaled by parameter name
    assert info.kwargs == {"invoice": invoice, "receipt": receipt, "when": dt.date(2026, 1, 1)}
    assert type(info.kwargs["invoice"]) is Invoice and type(info.kwargs["receipt"]) is Receipt
