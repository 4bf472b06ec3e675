"""A background task that handles queued items in batches: whatever was queued while the
previous batch was being handled (after waiting `linger_s` for more, when set). The namespace
actor publishes replies and writes execution statistics to Redis this way, so the agent never
waits for either."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batches(Generic[T]):
    def __init__(
        self, name: str, handle: Callable[[list[T]], Awaitable[None]], linger_s: float = 0.0
    ) -> None:
        self.name = name
        self.handle = handle
        self.linger_s = linger_s
        self._queued: list[T] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._handling = 0

    def put(self, item: T) -> None:
        self._queued.append(item)
        self._ready.set()
        if self._task is None or self._task.done():  # started lazily: inside the running loop
            self._task = asyncio.create_task(self._run(), name=self.name)

    def __len__(self) -> int:
        """Items queued or being handled."""
        return len(self._queued) + self._handling

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            if self.linger_s > 0:
                await asyncio.sleep(self.linger_s)  # more items join this batch meanwhile
            self._ready.clear()
            batch, self._queued = self._queued, []
            self._handling = len(batch)
            try:
                await self.handle(batch)  # handles its own errors: a batch must not end the task
            finally:
                self._handling = 0
