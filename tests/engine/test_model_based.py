"""Model-based tests: random sequences of operations, checked against a reference model.

A hypothesis state machine (:class:`ModelMachine`) drives one fresh database per example
through a random sequence of operations, and keeps a reference model in plain Python objects
of what every workflow must look like after each one. After every rule the machine waits
until the database agrees with the model (``settle``: every started workflow *eventually*
reaches the state the model allows) and then checks the invariants (``check``).

Workflow shapes (all in this module, plus one in ``tests/apps/model_app.py``):

* ``chain``: steps in a row, each with an effect ledger entry, each registering a
  compensation; ``flaky``: the same, with steps that fail transiently N times and then
  succeed. Their bodies pass a *gate* first: a body runs only once the test grants it a
  permit (``advance``), so the model knows exactly which attempts ran.
* ``receiver``: a ``perdure.receive("in")`` loop; each message is handed to a step.
* ``sleeper``: ``perdure.sleep(one day)`` on a ``FakeClock``, then a step.
* ``saga``: a booking step, its compensation, then ``perdure.receive("confirm")``.
* ``child chain``: a chain run by a child process that SIGKILLs itself inside a step.

Rules: start each shape (every example starts with one to three, and chains may run some
attempts at once); ``advance`` (a chain's next attempts run); ``send`` (a message, through the
worker or, while none runs, a client engine; sometimes with an idempotency key already used);
``advance_clock`` (a day passes); ``cancel`` (an unfinished workflow); ``crash`` (see below);
``crash_mid_step`` (a chain's body has done its side effect, and the engine dies before the
commit); ``recover`` (a new engine on the database); ``resume`` (a dead-lettered chain);
``kill_a_child_process``. At the end (``teardown``) every workflow is driven to its end, and
cancelling a finished one must leave it as it is.

Invariants, after every rule: each workflow's status is the one the model predicts (a chain
abandoned by dead workers without progress in between is dead-lettered, as
docs/failures.md says); journal positions are 0..n-1 without gaps; a chain's journal holds
exactly the steps the model says succeeded, with their values and attempt counts, and its
failed attempts are journaled; every step body ran exactly as often as the model counts (a
body whose outcome was lost in a crash counts once more), and nothing journaled runs again:
the ledger count of a step journaled before a crash never changes afterwards; results equal
the model's; messages are consumed in send order, each once; a cancelled workflow ends
CANCELLED with each of its compensations run once, newest first.

Crashes. In this process an engine "crashes" in one of two ways: it is closed while step
bodies are blocked (it releases its workflows; the next engine takes them at once), or its
store is closed under it first (nothing is released; the next engine takes the workflows
over when their lease expires, as from a dead worker). The bodies the crashed engine was
running are then unwound with a ``BaseException`` that has no side effect, as a dead
process's threads would be. What this does *not* cover, and the child process does: the
death of the process itself (the OS reclaiming its threads, its SQLite connection and its
PostgreSQL session, the pid check that detects a dead worker on the same host). What neither
covers: a kill in the middle of a database write (torn pages and WAL recovery are SQLite's
and PostgreSQL's business; the crash tests in ``tests/crash`` kill at chosen instants), and a
crash in the middle of compensations (crashes happen at rule boundaries or inside a chain's
step body).

Settings (``MODEL_SETTINGS``): 50 examples of up to 30 rules, ``derandomize=True``, so every
run (CI included) tests the same sequences and a failure reproduces; about 40 s on SQLite and
50 s on PostgreSQL. ``PERDURE_MODEL_RANDOM=1`` (with ``PERDURE_MODEL_EXAMPLES``) explores new
sequences locally.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import perdure
from conftest import APPS, POSTGRES_URL, run_app
from perdure import StepInfo, WorkflowStatus
from perdure.testing import FakeClock

DAY = 86_400.0
MAX_FLOWS = 10  # workflows per example
MAX_RUNNING = 4  # unfinished at once: new ones start as others end
CHILD_STEPS = 3
SETTLE_SECONDS = 20.0
#: the engines' Engine(max_recoveries=): low, so that dead-lettering happens in the examples
MAX_RECOVERIES = 1
S = WorkflowStatus
#: makes a fresh database: (its url, a function that drops it)
NewDatabase = Callable[[], tuple[str, Callable[[], None]]]


def _load_child_app() -> ModuleType:
    """Import ``tests/apps/model_app.py`` once, so its workflow is registered here too."""
    name = "perdure_test_model_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, APPS / "model_app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


CHILD = _load_child_app()
VERSION: str = CHILD.VERSION


# -- what step bodies share with the test ----------------------------------------------------


class Killed(BaseException):
    """Unwinds a step body of an engine the test crashed: its process is gone, so the body
    has no further side effect (a ``BaseException``: nothing journals it, and the engine,
    already stopping, does not treat it as the workflow's failure)."""


class World:
    """The step bodies' shared state: per-workflow gates, and the effect ledger.

    A gated body waits in :meth:`enter` until the test has granted its workflow one more
    permit than have been used. Bodies remember the *generation* (the engine) they started
    in; :meth:`kill` ends a generation, and its bodies raise :class:`Killed` wherever they
    wait.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.ledger: Counter[tuple[Any, ...]] = Counter()
        self.effects: list[tuple[Any, ...]] = []
        self.allowed: Counter[str] = Counter()
        self.entered: Counter[str] = Counter()
        self.waiting: Counter[tuple[str, int]] = Counter()
        self.hold: set[str] = set()
        self.held: set[str] = set()
        self.generation = 0
        self.dead = -1

    def record(self, *effect: Any) -> int:
        """Note a side effect; returns how often it happened before."""
        with self.cond:
            before = self.ledger[effect]
            self.ledger[effect] += 1
            self.effects.append(effect)
            return before

    def grant(self, workflow_id: str, hold: bool = False) -> None:
        """Let one more attempt of the workflow run; ``hold``: it stops after its effect."""
        with self.cond:
            self.allowed[workflow_id] += 1
            if hold:
                self.hold.add(workflow_id)
            self.cond.notify_all()

    def enter(self, workflow_id: str) -> int:
        """Wait for a permit; returns the body's generation.

        Raises:
            Killed: the engine running this body was crashed meanwhile.
        """
        with self.cond:
            generation = self.generation
            self.waiting[workflow_id, generation] += 1
            self.cond.notify_all()
            try:
                while generation > self.dead and (
                    self.entered[workflow_id] >= self.allowed[workflow_id]
                ):
                    self.cond.wait()
            finally:
                self.waiting[workflow_id, generation] -= 1
            if generation <= self.dead:
                raise Killed
            self.entered[workflow_id] += 1
            return generation

    def park_if_held(self, workflow_id: str, generation: int) -> None:
        """If the test holds this attempt, stop here (after its side effect) until killed."""
        with self.cond:
            if workflow_id not in self.hold:
                return
            self.hold.discard(workflow_id)
            self.held.add(workflow_id)
            self.cond.notify_all()
            while generation > self.dead:
                self.cond.wait()
        raise Killed

    def at_gate(self, workflow_id: str) -> bool:
        """Whether a body of the live engine waits at the workflow's gate, every permit used
        (so everything before it is committed)."""
        with self.cond:
            idle = self.entered[workflow_id] == self.allowed[workflow_id]
            return idle and self.waiting[workflow_id, self.generation] > 0

    def kill(self) -> None:
        """End the current generation: its bodies raise :class:`Killed`."""
        with self.cond:
            self.dead = self.generation
            self.generation += 1
            self.cond.notify_all()


WORLD = World()
FAST_RETRY = perdure.RetryPolicy(
    max_attempts=20, initial_interval=0.5, backoff=1.0, jitter=0.0, max_elapsed=None
)


@perdure.step(name="mb_work", retry=FAST_RETRY)
def work(fails: int, base: int, index: int) -> int:
    """A gated chain step: fails transiently while it ran fewer than ``fails`` times."""
    workflow_id = perdure.workflow_id()
    generation = WORLD.enter(workflow_id)
    before = WORLD.record("work", workflow_id, index)
    WORLD.park_if_held(workflow_id, generation)
    if before < fails:
        raise perdure.TransientError(f"step {index} fails ({before + 1} of {fails})")
    return base + index * index


@perdure.step(name="mb_undo")
def undo(index: int) -> None:
    """The compensation of chain step ``index``."""
    WORLD.record("undo", perdure.workflow_id(), index)


@perdure.workflow(name="mb_chain")
def chain(base: int, fails: list[int]) -> int:
    """Steps in a row, each undone by ``undo`` if the chain is cancelled later."""
    total = 0
    for index, count in enumerate(fails):
        total += work(count, base, index)
        perdure.compensate(undo, index)
    return total


@perdure.step(name="mb_seen")
def seen(message: int) -> int:
    """Hand a received message to the outside world."""
    WORLD.record("seen", perdure.workflow_id(), message)
    return message


@perdure.workflow(name="mb_receiver")
def receiver(count: int) -> list[int]:
    """Receive ``count`` messages on topic "in", each handed to ``seen``."""
    return [seen(perdure.receive("in")) for _ in range(count)]


@perdure.step(name="mb_woke")
def woke() -> str:
    """The step after the timer."""
    WORLD.record("woke", perdure.workflow_id())
    return "woke"


@perdure.workflow(name="mb_sleeper")
def sleeper() -> str:
    """Sleep a day (of the fake clock), then a step."""
    perdure.sleep(DAY)
    return woke()


@perdure.step(name="mb_book")
def book(item: str) -> str:
    """Book something."""
    WORLD.record("book", perdure.workflow_id())
    return f"booking-{item}"


@perdure.step(name="mb_unbook")
def unbook(booking: str) -> None:
    """Undo a booking."""
    WORLD.record("unbook", perdure.workflow_id())


@perdure.workflow(name="mb_saga")
def saga(item: str) -> str:
    """Book, register the undo, wait for a confirmation message."""
    booking = book(item)
    perdure.compensate(unbook, booking)
    return f"{booking} {perdure.receive('confirm')}"


# -- the reference model ---------------------------------------------------------------------


@dataclass(kw_only=True)
class Flow:
    """The model of one started workflow: what its status and journal must be."""

    id: str
    status: str = "running"  # running, SUCCESS, CANCELLED or DEAD_LETTER
    cancel: bool = False

    def resolve(self, engine_open: bool) -> None:
        """Apply what an engine does to the workflow without further input."""
        if self.status == "running" and engine_open and self.cancel:
            self.status = "CANCELLED"

    def on_crash(self, abrupt: bool) -> None:
        """The engine running it crashed (``abrupt``: without releasing it)."""

    def on_claim(self) -> None:
        """A new engine took it over after a crash."""

    def settled(self, machine: ModelMachine, status: WorkflowStatus) -> bool:
        """Whether the database shows this workflow where the model has it."""
        if self.status != "running":
            return status.value == self.status
        return status is S.WAITING

    def expected(self) -> Any:
        """The result of a SUCCESS."""
        raise NotImplementedError

    def check(self, machine: ModelMachine, steps: list[StepInfo]) -> None:
        """The journal and the ledger agree with the model."""


@dataclass(kw_only=True)
class ChainModel(Flow):
    """A chain of gated steps, step ``i`` failing ``fails[i]`` times before it succeeds."""

    base: int
    fails: list[int]
    execs: list[int] = field(default_factory=list)  # body executions of each step
    failed_rows: list[int] = field(default_factory=list)  # journaled failed attempts
    done: int = 0  # steps journaled as succeeded
    in_flight_cancel: bool = False  # cancelled while its body waits at the gate
    # poison-workflow accounting, as docs/failures.md states it: takeovers from a dead
    # worker in a row without a new journal entry are stalls; a release is not one
    stalls: int = 0
    claimed_steps: int = 0  # journal entries when it was last claimed
    abandoned: str = ""  # at the last crash: "released", or "dead" (lease left to expire)

    def __post_init__(self) -> None:
        self.execs = [0] * len(self.fails)
        self.failed_rows = [0] * len(self.fails)

    def execute(self, lost: bool = False) -> None:
        """One permitted attempt of the current step runs; ``lost``: the engine dies after
        its side effect, before its outcome is committed."""
        index = self.done
        before = self.execs[index]
        self.execs[index] += 1
        if lost:
            return
        if before < self.fails[index]:
            self.failed_rows[index] += 1
        else:
            self.done += 1
        if self.done == len(self.fails):
            self.status = "SUCCESS"
        elif self.cancel:
            self.status = "CANCELLED"  # the next step boundary honours the cancellation
        self.in_flight_cancel = False

    def resolve(self, engine_open: bool) -> None:
        if not self.in_flight_cancel:
            super().resolve(engine_open)

    def on_crash(self, abrupt: bool) -> None:
        self.in_flight_cancel = False  # the next run checks the cancellation at once
        if self.status == "running":
            self.abandoned = "dead" if abrupt else "released"

    def on_claim(self) -> None:
        progressed = self.done > self.claimed_steps
        if self.abandoned == "dead":
            self.stalls = 1 if progressed else self.stalls + 1
        elif self.abandoned == "released" and self.stalls > 0 and progressed:
            self.stalls = 1
        self.claimed_steps = self.done
        self.abandoned = ""
        if self.status == "running" and self.stalls > MAX_RECOVERIES:
            self.status = "DEAD_LETTER"  # claimed, and given up instead of run

    def resume(self) -> None:
        """``engine.resume``: back to running from its journal, stalls and cancellation
        forgotten."""
        self.status, self.stalls, self.cancel = "running", 0, False

    def settled(self, machine: ModelMachine, status: WorkflowStatus) -> bool:
        if self.status != "running":
            return status.value == self.status
        if machine.engine is None:
            return status in (S.PENDING, S.RUNNING)
        return status is S.RUNNING and WORLD.at_gate(self.id)

    def expected(self) -> int:
        return sum(self.base + i * i for i in range(len(self.fails)))

    def check(self, machine: ModelMachine, steps: list[StepInfo]) -> None:
        works = [(s.key, s.status, s.output, s.attempts) for s in steps if s.name == "mb_work"]
        assert works == [
            (str(i), perdure.StepStatus.SUCCESS, self.base + i * i, self.failed_rows[i] + 1)
            for i in range(self.done)
        ], f"{self.id}: journal {works}, model done={self.done}"
        failures = Counter(a.key for a in machine.observer.list_attempts(self.id))
        assert failures == Counter({str(i): n for i, n in enumerate(self.failed_rows) if n}), (
            f"{self.id}: journaled failed attempts {dict(failures)}, model {self.failed_rows}"
        )
        ran = [WORLD.ledger["work", self.id, i] for i in range(len(self.fails))]
        assert ran == self.execs, f"{self.id}: bodies ran {ran} times, model {self.execs}"
        undone = [e[2] for e in WORLD.effects if e[:2] == ("undo", self.id)]
        wanted = list(reversed(range(self.done))) if self.status == "CANCELLED" else []
        assert undone == wanted, f"{self.id}: compensations ran {undone}, model {wanted}"


@dataclass(kw_only=True)
class MessageModel(Flow):
    """A workflow fed by messages on one topic: a receiver, or a saga's confirmation."""

    topic: str
    delivered: list[int] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)

    def deliver(self, payload: int, key: str | None) -> bool:
        """A send; False when its idempotency key was used before (nothing is queued)."""
        if key is not None and key in self.keys:
            return False
        if key is not None:
            self.keys.add(key)
        self.delivered.append(payload)
        return True


@dataclass(kw_only=True)
class ReceiverModel(MessageModel):
    """``count`` receives, each message handed to a step."""

    count: int
    consumed: list[int] = field(default_factory=list)

    def resolve(self, engine_open: bool) -> None:
        super().resolve(engine_open)
        if self.status == "running" and engine_open:
            self.consumed = self.delivered[: self.count]
            if len(self.consumed) == self.count:
                self.status = "SUCCESS"

    def settled(self, machine: ModelMachine, status: WorkflowStatus) -> bool:
        steps = machine.observer.list_steps(self.id)
        received = sum(1 for s in steps if s.name == "perdure.receive")
        return super().settled(machine, status) and received == len(self.consumed)

    def expected(self) -> list[int]:
        return self.consumed

    def check(self, machine: ModelMachine, steps: list[StepInfo]) -> None:
        received = [s.output for s in steps if s.name == "perdure.receive"]
        assert received == self.consumed, f"{self.id}: received {received}, sent {self.delivered}"
        handed = [e[2] for e in WORLD.effects if e[:2] == ("seen", self.id)]
        assert handed == self.consumed, f"{self.id}: handed on {handed}, model {self.consumed}"


@dataclass(kw_only=True)
class SagaModel(MessageModel):
    """Book, then wait for a confirmation; cancelled: the booking is undone once."""

    item: str

    def resolve(self, engine_open: bool) -> None:
        super().resolve(engine_open)
        if self.status == "running" and engine_open and self.delivered:
            self.status = "SUCCESS"

    def expected(self) -> str:
        return f"booking-{self.item} {self.delivered[0]}"

    def check(self, machine: ModelMachine, steps: list[StepInfo]) -> None:
        assert WORLD.ledger["book", self.id] == 1
        unbooked = WORLD.ledger["unbook", self.id]
        assert unbooked == (1 if self.status == "CANCELLED" else 0), f"{self.id}: {unbooked}"


@dataclass(kw_only=True)
class SleeperModel(Flow):
    """A one-day timer, then a step."""

    due: bool = False

    def resolve(self, engine_open: bool) -> None:
        super().resolve(engine_open)
        if self.status == "running" and engine_open and self.due:
            self.status = "SUCCESS"

    def expected(self) -> str:
        return "woke"

    def check(self, machine: ModelMachine, steps: list[StepInfo]) -> None:
        woken = WORLD.ledger["woke", self.id]
        assert woken == (1 if self.status == "SUCCESS" else 0), f"{self.id}: woke {woken}"


@dataclass(kw_only=True)
class ChildModel(Flow):
    """A chain started by a child process that killed itself inside step ``kill_at``."""

    ledger: Path
    kill_at: int

    def resolve(self, engine_open: bool) -> None:
        if self.status == "running" and engine_open:
            self.status = "SUCCESS"

    def settled(self, machine: ModelMachine, status: WorkflowStatus) -> bool:
        if self.status == "running":
            return status is S.RUNNING  # owned by the dead child until an engine takes it
        return super().settled(machine, status)

    def expected(self) -> int:
        return sum(p * p for p in range(CHILD_STEPS))

    def check(self, machine: ModelMachine, steps: list[StepInfo]) -> None:
        counts = Counter(self.ledger.read_text().split("\n")[:-1])
        if self.status == "SUCCESS":  # the step in flight ran twice; nothing else did
            wanted = {f"{self.id} {p}": 1 + (p == self.kill_at) for p in range(CHILD_STEPS)}
        else:
            wanted = {f"{self.id} {p}": 1 for p in range(self.kill_at + 1)}
        assert dict(counts) == wanted, f"{self.id}: ledger {dict(counts)}"


# -- the state machine -----------------------------------------------------------------------


def _some_failing(fails: list[int]) -> list[int]:
    """``fails`` with at least one step that fails (the last, if none did)."""
    return fails if any(fails) else [*fails[:-1], 1]


SHAPES = ["chain", "flaky", "receiver", "sleeper", "saga"]
#: how often each step of a flaky chain fails before it succeeds (one at least fails)
FLAKY = st.lists(st.integers(0, 2), min_size=1, max_size=3).map(_some_failing)


def _closing(engine: perdure.Engine) -> bool:
    """Whether ``engine`` has begun to stop."""
    try:
        engine.store  # noqa: B018 - raises once the engine stops
    except perdure.EngineClosedError:
        return True
    return False


class ModelMachine(RuleBasedStateMachine):
    """Random operations on one database, checked against the model after each."""

    #: makes a fresh database of the test's backend; set by the test
    new_database: ClassVar[NewDatabase]
    #: a folder for the child processes' ledgers
    workdir: ClassVar[Path]

    def __init__(self) -> None:
        super().__init__()
        global WORLD
        WORLD = World()  # a new one: bodies an earlier example's engines left keep the old one
        self.url, self._drop = type(self).new_database()
        self.clock = FakeClock()
        self.flows: dict[str, Flow] = {}
        self.counter = 0
        self.children = 0
        self.frozen: dict[tuple[Any, ...], int] = {}
        self.healthy = True
        self.observer = perdure.Engine(self.url, recover=False, version=VERSION).open()
        self.engine: perdure.Engine | None = self._open()

    def _open(self) -> perdure.Engine:
        return perdure.Engine(
            self.url, clock=self.clock, version=VERSION, shutdown_grace=0.1,
            heartbeat_interval=0.1, lease_seconds=0.5, recovery_interval=0.1, poll_interval=0.05,
            max_recoveries=MAX_RECOVERIES,
        ).open()  # fmt: skip

    def _room(self) -> bool:
        """Whether a new workflow may start (an engine runs, and the bounds allow it)."""
        running = sum(1 for f in self.flows.values() if f.status == "running")
        return self.engine is not None and len(self.flows) < MAX_FLOWS and running < MAX_RUNNING

    def _new_id(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}-{self.counter}"

    def _begin(self) -> None:
        self.healthy = False  # until the next invariant check passes

    def _running(self, kind: type[Flow]) -> list[Flow]:
        return [f for f in self.flows.values() if isinstance(f, kind) and f.status == "running"]

    def _live_chains(self) -> list[Flow]:
        return [f for f in self._running(ChainModel) if not f.cancel]

    # -- starting --------------------------------------------------------------------------

    @initialize(data=st.data(), shapes=st.lists(st.sampled_from(SHAPES), min_size=1, max_size=3))
    def start_some(self, data: st.DataObject, shapes: list[str]) -> None:
        """Every example begins with a few workflows of random shapes."""
        self._begin()
        for shape in shapes:
            if shape == "chain":
                self.start_chain(data.draw(st.integers(1, 3)), data.draw(st.integers(0, 3)))
            elif shape == "flaky":
                self.start_flaky(data.draw(FLAKY), data.draw(st.integers(0, 5)))
            elif shape == "receiver":
                self.start_receiver(data.draw(st.integers(1, 3)))
            elif shape == "sleeper":
                self.start_sleeper()
            else:
                self.start_saga()

    def _start(self, flow: Flow, fn: Callable[..., Any], *args: Any) -> None:
        assert self.engine is not None
        self.flows[flow.id] = flow
        handle = self.engine.start(fn, *args, id=flow.id)
        assert handle.id == flow.id

    @precondition(lambda self: self._room())
    @rule(length=st.integers(1, 3), attempts=st.integers(0, 3))
    def start_chain(self, length: int, attempts: int) -> None:
        """A chain of ``length`` steps that all succeed at once; its first ``attempts``
        attempts may run."""
        self._begin()
        self._start_chain([0] * length, attempts)

    @precondition(lambda self: self._room())
    @rule(
        fails=FLAKY,
        attempts=st.integers(0, 5),
    )
    def start_flaky(self, fails: list[int], attempts: int) -> None:
        """A chain whose steps fail transiently ``fails[i]`` times, then succeed."""
        self._begin()
        self._start_chain(fails, attempts)

    def _start_chain(self, fails: list[int], attempts: int) -> None:
        flow = ChainModel(id=self._new_id("chain"), base=100 * (self.counter + 1), fails=fails)
        self._start(flow, chain, flow.base, fails)
        self._advance(flow, attempts)

    @precondition(lambda self: self._room())
    @rule(count=st.integers(1, 3))
    def start_receiver(self, count: int) -> None:
        """A workflow that receives ``count`` messages."""
        self._begin()
        flow = ReceiverModel(id=self._new_id("receiver"), topic="in", count=count)
        self._start(flow, receiver, count)

    @precondition(lambda self: self._room())
    @rule()
    def start_sleeper(self) -> None:
        """A workflow that sleeps a day of the fake clock."""
        self._begin()
        self._start(SleeperModel(id=self._new_id("sleeper")), sleeper)

    @precondition(lambda self: self._room())
    @rule()
    def start_saga(self) -> None:
        """A workflow that books, then waits for a confirmation."""
        self._begin()
        flow = SagaModel(id=self._new_id("saga"), topic="confirm", item=str(self.counter))
        self._start(flow, saga, flow.item)

    # -- acting on workflows -----------------------------------------------------------------

    @precondition(lambda self: self.engine is not None and bool(self._running(ChainModel)))
    @rule(data=st.data(), attempts=st.integers(1, 3))
    def advance(self, data: st.DataObject, attempts: int) -> None:
        """Let a chain's next ``attempts`` attempts run (fewer if it ends first)."""
        self._begin()
        flow = data.draw(st.sampled_from(self._running(ChainModel)), label="chain")
        assert isinstance(flow, ChainModel)
        self._advance(flow, attempts)

    def _advance(self, flow: ChainModel, attempts: int) -> None:
        for _ in range(attempts):
            if flow.status == "running":
                WORLD.grant(flow.id)
                flow.execute()

    def _targets(self) -> list[Flow]:
        return [f for f in self.flows.values() if isinstance(f, MessageModel)]

    @precondition(lambda self: bool(self._targets()))
    @rule(data=st.data(), key=st.sampled_from([None, "k1", "k2"]))
    def send(self, data: st.DataObject, key: str | None) -> None:
        """Send a message (to any receiver or saga, finished ones too), through the worker
        or, while no worker runs, through a client engine."""
        self._begin()
        flow = data.draw(st.sampled_from(self._targets()), label="target")
        assert isinstance(flow, MessageModel)
        self.counter += 1
        sender = self.engine or self.observer
        sent = sender.send(flow.id, flow.topic, self.counter, idempotency_key=key)
        assert sent == flow.deliver(self.counter, key)

    def _asleep(self) -> list[SleeperModel]:
        return [f for f in self.flows.values() if isinstance(f, SleeperModel)
                and f.status == "running" and not f.due]  # fmt: skip

    @precondition(lambda self: bool(self._asleep()))
    @rule()
    def advance_clock(self) -> None:
        """A day and a second pass on the fake clock: sleeping workflows are due."""
        self._begin()
        self._pass_a_day()

    def _pass_a_day(self) -> None:
        self.clock.advance(DAY + 1)
        for flow in self._asleep():
            flow.due = True

    def _cancellable(self) -> list[Flow]:
        return [f for f in self.flows.values() if f.status == "running" and not f.cancel
                and not isinstance(f, ChildModel)]  # fmt: skip

    @precondition(lambda self: bool(self._cancellable()))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """Cancel an unfinished workflow, through the worker or a client engine."""
        self._begin()
        flow = data.draw(st.sampled_from(self._cancellable()), label="workflow")
        (self.engine or self.observer).cancel(flow.id)
        flow.cancel = True
        if isinstance(flow, ChainModel) and self.engine is not None:
            flow.in_flight_cancel = True  # its body waits at the gate: it finishes first

    # -- crashes -------------------------------------------------------------------------------

    @precondition(lambda self: self.engine is not None)
    @rule(abrupt=st.booleans())
    def crash(self, abrupt: bool) -> None:
        """Stop the engine while step bodies wait; ``abrupt``: nothing is released."""
        self._begin()
        self._crash(abrupt)

    @precondition(lambda self: self.engine is not None and bool(self._live_chains()))
    @rule(data=st.data(), abrupt=st.booleans())
    def crash_mid_step(self, data: st.DataObject, abrupt: bool) -> None:
        """A chain's next attempt does its side effect, and the engine dies before the
        commit: the attempt runs again in the next engine."""
        self._begin()
        flow = data.draw(st.sampled_from(self._live_chains()), label="chain")
        assert isinstance(flow, ChainModel)
        WORLD.grant(flow.id, hold=True)
        _wait_for(lambda: flow.id in WORLD.held, "the held body to do its side effect")
        WORLD.held.discard(flow.id)
        flow.execute(lost=True)
        self._crash(abrupt)

    def _crash(self, abrupt: bool) -> None:
        engine, self.engine = self.engine, None
        assert engine is not None
        for flow in self._running(ChainModel):  # journaled before the crash: never run again
            assert isinstance(flow, ChainModel)
            for index in range(flow.done):
                self.frozen["work", flow.id, index] = flow.execs[index]
        if abrupt:
            engine.store.close()  # the database goes away under the engine: nothing released
        closer = threading.Thread(target=engine.close, name="model-crash")
        closer.start()
        _wait_for(lambda: _closing(engine), "the engine to begin stopping")
        WORLD.kill()  # the dead engine's step bodies stop, without a side effect
        closer.join(10)
        assert not closer.is_alive(), "engine.close() hung"
        for flow in self.flows.values():
            flow.on_crash(abrupt)

    @precondition(lambda self: self.engine is None)
    @rule()
    def recover(self) -> None:
        """A new engine on the database: it takes over what the crashed one left."""
        self._begin()
        self.engine = self._open()
        for flow in self.flows.values():
            flow.on_claim()

    def _dead_letters(self) -> list[ChainModel]:
        return [f for f in self.flows.values()
                if isinstance(f, ChainModel) and f.status == "DEAD_LETTER"]  # fmt: skip

    @precondition(lambda self: self.engine is not None and bool(self._dead_letters()))
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        """Resume a dead-lettered chain: it runs again from its journal."""
        self._begin()
        flow = data.draw(st.sampled_from(self._dead_letters()), label="chain")
        assert self.engine is not None
        self.engine.resume(flow.id)
        flow.resume()

    @precondition(lambda self: self.children < 1 and len(self.flows) < MAX_FLOWS)
    @rule(kill_at=st.integers(0, CHILD_STEPS - 1))
    def kill_a_child_process(self, kill_at: int) -> None:
        """A child process runs a chain and dies by SIGKILL inside step ``kill_at``."""
        self._begin()
        self.children += 1
        flow = ChildModel(
            id=self._new_id("child"), ledger=self.workdir / f"{uuid.uuid4().hex}.txt",
            kill_at=kill_at,
        )  # fmt: skip
        self.flows[flow.id] = flow
        child = run_app(
            "model_app", "--db", self.url, "--id", flow.id, "--ledger", str(flow.ledger),
            "--steps", str(CHILD_STEPS), "--kill-at", str(kill_at),
        )  # fmt: skip
        _, err = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL, err

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        """Every workflow reaches the state the model allows, and the invariants hold."""
        for flow in self.flows.values():
            flow.resolve(self.engine is not None)
        self._settle()
        self._check()
        self.healthy = True

    def _settle(self) -> None:
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            observed = {f.id: self.observer.get_workflow(f.id) for f in self.flows.values()}
            pending = [
                (flow.id, flow.status, observed[flow.id].status.value, observed[flow.id].error)
                for flow in self.flows.values()
                if not flow.settled(self, observed[flow.id].status)
            ]
            if not pending:
                return
            assert time.monotonic() < deadline, f"not where the model has them: {pending}"
            time.sleep(0.01)

    def _check(self) -> None:
        for flow in self.flows.values():
            steps = self.observer.list_steps(flow.id)
            positions = [s.position for s in steps]
            assert positions == list(range(len(steps))), f"{flow.id}: positions {positions}"
            flow.check(self, steps)
            handle = self.observer.handle(flow.id)
            if flow.status == "SUCCESS":
                assert handle.result(timeout=5) == flow.expected()
            elif flow.status == "CANCELLED":
                with pytest.raises(perdure.WorkflowCancelledError):
                    handle.result(timeout=5)
            elif flow.status == "DEAD_LETTER":
                with pytest.raises(perdure.DeadLetteredError):
                    handle.result(timeout=5)
        for effect, count in self.frozen.items():
            assert WORLD.ledger[effect] == count, f"{effect} ran again after it was journaled"

    # -- the end ---------------------------------------------------------------------------------

    def teardown(self) -> None:
        """Drive every workflow to its end (liveness: nothing is stuck), check, clean up."""
        try:
            if self.healthy:
                self._finish_everything()
        finally:
            WORLD.kill()
            if self.engine is not None:
                self.engine.close()
            self.observer.close()
            self._drop()

    def _finish_everything(self) -> None:
        if self.engine is None:
            self.recover()
        self._pass_a_day()
        self.agrees_with_the_model()
        for flow in list(self.flows.values()):
            if isinstance(flow, MessageModel):
                while flow.status == "running" and not flow.cancel:
                    self.counter += 1
                    assert self.observer.send(flow.id, flow.topic, self.counter)
                    flow.deliver(self.counter, None)
                    self.agrees_with_the_model()
            if isinstance(flow, ChainModel) and flow.status == "DEAD_LETTER":
                assert self.engine is not None
                self.engine.resume(flow.id)
                flow.resume()
                self.agrees_with_the_model()
            while isinstance(flow, ChainModel) and flow.status == "running":
                WORLD.grant(flow.id)
                flow.execute()
                self.agrees_with_the_model()
        self.agrees_with_the_model()
        unfinished = [f.id for f in self.flows.values() if f.status == "running"]
        assert not unfinished, f"still running at the end: {unfinished}"
        for flow in self.flows.values():  # cancelling a finished workflow leaves it as it is
            assert self.engine is not None
            assert self.engine.cancel(flow.id).value == flow.status
        self.agrees_with_the_model()


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


# -- the test ----------------------------------------------------------------------------------


#: Decision: the examples are derandomized (the same sequences on every run, CI included).
#: The rules do real I/O on real threads, so a failure found by a random seed in CI would be
#: hard to reproduce and the run time would vary; a fixed set of sequences is a regression
#: test whose failures reproduce. Exploring new sequences is a local, opt-in run:
#: PERDURE_MODEL_RANDOM=1 PERDURE_MODEL_EXAMPLES=200 pytest tests/engine/test_model_based.py
MODEL_SETTINGS = settings(
    max_examples=int(os.environ.get("PERDURE_MODEL_EXAMPLES", "50")),
    stateful_step_count=30,
    derandomize=not os.environ.get("PERDURE_MODEL_RANDOM"),
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture
def new_database(db_url: str, tmp_path: Path) -> Iterator[NewDatabase]:
    """Makes a fresh database of the test's backend for each example: a SQLite file, or a
    PostgreSQL schema (each dropped after its example, and any left over after the test)."""
    schemas: list[str] = []

    def drop(schema: str) -> None:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())

    def postgres() -> tuple[str, Callable[[], None]]:
        schema = f"perdure_model_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}".encode())
        schemas.append(schema)
        separator = "&" if "?" in POSTGRES_URL else "?"
        return f"{POSTGRES_URL}{separator}schema={schema}", lambda: drop(schema)

    def sqlite() -> tuple[str, Callable[[], None]]:
        return f"sqlite:///{tmp_path / f'model-{uuid.uuid4().hex[:8]}.db'}", lambda: None

    yield postgres if db_url.startswith("postgresql") else sqlite
    for schema in schemas:
        drop(schema)


@pytest.mark.timeout(600)
def test_random_operations_agree_with_the_model(new_database: NewDatabase, tmp_path: Path) -> None:
    """Random sequences of starts, progress, messages, cancellations, crashes, recoveries
    and process kills leave every workflow where the reference model says (module doc)."""
    ModelMachine.new_database = staticmethod(new_database)
    ModelMachine.workdir = tmp_path
    run_state_machine_as_test(ModelMachine, settings=MODEL_SETTINGS)
