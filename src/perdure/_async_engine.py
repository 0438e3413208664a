"""AsyncEngine: the async front end of :class:`~perdure.Engine`, with the same method names.

It wraps one Engine whose async workflows run on the caller's event loop (the loop that
entered ``async with``), so they share it with the application; sync workflows still run on
the engine's daemon threads. Store calls made on behalf of the caller run in a thread, so the
loop never waits on an fsync.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, overload

from . import _context
from ._encryption import Encryption
from ._engine import Engine
from ._handle import AsyncWorkflowHandle
from ._queues import Queue
from ._records import StepInfo, WorkflowInfo
from .store import WorkflowStatus

R = TypeVar("R")


class AsyncEngine:
    """Runs durable workflows from async code: ``async with AsyncEngine(url) as engine:``.

    Takes the same arguments as :class:`~perdure.Engine`; every method has the same name and
    meaning, as a coroutine.
    """

    def __init__(
        self,
        url: str = "sqlite:///perdure.db",
        *,
        durability: Literal["full", "normal"] = "full",
        max_threads: int = 64,
        lease_seconds: float = 10.0,
        heartbeat_interval: float = 1.0,
        recovery_interval: float = 2.0,
        shutdown_grace: float = 2.0,
        recover: bool = True,
        max_entry_bytes: int = 32 * 1024 * 1024,
        blob_threshold: int = 256 * 1024,
        encryption: Encryption | None = None,
    ) -> None:
        self._options: dict[str, Any] = {
            "durability": durability,
            "max_threads": max_threads,
            "lease_seconds": lease_seconds,
            "heartbeat_interval": heartbeat_interval,
            "recovery_interval": recovery_interval,
            "shutdown_grace": shutdown_grace,
            "recover": recover,
            "max_entry_bytes": max_entry_bytes,
            "blob_threshold": blob_threshold,
            "encryption": encryption,
        }
        self.url = url
        self._engine: Engine | None = None
        self._previous_factory: Any = None
        self._factory: Any = None

    async def __aenter__(self) -> AsyncEngine:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def engine(self) -> Engine:
        """The sync Engine underneath (opened by :meth:`open`)."""
        if self._engine is None:
            self._engine = Engine(self.url, _loop=asyncio.get_running_loop(), **self._options)
        return self._engine

    async def open(self) -> AsyncEngine:
        """Open the database, join as a worker, resume what is unfinished.

        Installs a task factory on the running loop (wrapping any factory already there) so
        tasks a workflow starts get their own replay branch; :meth:`close` restores it.
        """
        loop = asyncio.get_running_loop()
        if self._factory is None:
            self._previous_factory = loop.get_task_factory()
            self._factory = _context.task_factory(self._previous_factory)
            loop.set_task_factory(self._factory)
        await asyncio.to_thread(self.engine.open)
        return self

    async def close(self) -> None:
        """Stop promptly (see :meth:`Engine.close`)."""
        await asyncio.to_thread(self.engine.close)
        loop = asyncio.get_running_loop()
        if self._factory is not None and loop.get_task_factory() is self._factory:
            loop.set_task_factory(self._previous_factory)
        self._factory = None

    @overload
    async def start(
        self, fn: Callable[..., Awaitable[R]], *args: Any, id: str | None = None, **kwargs: Any
    ) -> AsyncWorkflowHandle[R]: ...

    @overload
    async def start(
        self, fn: Callable[..., R], *args: Any, id: str | None = None, **kwargs: Any
    ) -> AsyncWorkflowHandle[R]: ...

    @overload
    async def start(
        self, fn: str, *args: Any, id: str | None = None, **kwargs: Any
    ) -> AsyncWorkflowHandle[Any]: ...

    async def start(
        self, fn: Callable[..., Any] | str, *args: Any, id: str | None = None, **kwargs: Any
    ) -> AsyncWorkflowHandle[Any]:
        """Start a workflow (see :meth:`Engine.start`)."""
        handle = await asyncio.to_thread(lambda: self.engine.start(fn, *args, id=id, **kwargs))
        return AsyncWorkflowHandle(self.engine, handle.id)

    async def enqueue(
        self,
        queue: Queue | str,
        fn: Callable[..., Any] | str,
        *args: Any,
        id: str | None = None,
        priority: int | None = None,
        **kwargs: Any,
    ) -> AsyncWorkflowHandle[Any]:
        """Put a workflow in a queue (see :meth:`Engine.enqueue`)."""
        handle = await asyncio.to_thread(
            lambda: self.engine.enqueue(queue, fn, *args, id=id, priority=priority, **kwargs)
        )
        return AsyncWorkflowHandle(self.engine, handle.id)

    async def run(self, fn: Callable[..., Any] | str, *args: Any, id: str | None = None,
                  timeout: float | None = None, **kwargs: Any) -> Any:  # fmt: skip
        """Start a workflow and wait for its result (see :meth:`Engine.run`)."""
        handle = await self.start(fn, *args, id=id, **kwargs)
        return await handle.result(timeout=timeout)

    async def handle(self, workflow_id: str) -> AsyncWorkflowHandle[Any]:
        """A handle on an existing workflow (raises ``WorkflowNotFound``)."""
        await asyncio.to_thread(self.engine.get_workflow, workflow_id)
        return AsyncWorkflowHandle(self.engine, workflow_id)

    async def get_workflow(self, workflow_id: str) -> WorkflowInfo:
        """See :meth:`Engine.get_workflow`."""
        return await asyncio.to_thread(self.engine.get_workflow, workflow_id)

    async def list_workflows(
        self,
        status: WorkflowStatus | str | None = None,
        name: str | None = None,
        limit: int = 100,
    ) -> list[WorkflowInfo]:
        """See :meth:`Engine.list_workflows`."""
        return await asyncio.to_thread(self.engine.list_workflows, status, name, limit)

    async def list_steps(self, workflow_id: str) -> list[StepInfo]:
        """See :meth:`Engine.list_steps`."""
        return await asyncio.to_thread(self.engine.list_steps, workflow_id)

    async def recover(self) -> list[AsyncWorkflowHandle[Any]]:
        """See :meth:`Engine.recover`."""
        handles = await asyncio.to_thread(self.engine.recover)
        return [AsyncWorkflowHandle(self.engine, h.id) for h in handles]
