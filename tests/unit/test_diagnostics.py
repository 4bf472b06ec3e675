"""`kill -USR1`: every task's await chain, through coroutines and async generators."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from nexus_streams.diagnostics import dump_tasks


async def _numbers(gate: asyncio.Event) -> AsyncIterator[int]:
    await gate.wait()
    yield 1


async def _reads_the_generator(gate: asyncio.Event) -> None:
    async for _ in _numbers(gate):
        pass


async def test_the_dump_names_each_frame_down_into_an_async_generator() -> None:
    gate = asyncio.Event()
    task = asyncio.create_task(_reads_the_generator(gate), name="reader")
    await asyncio.sleep(0)
    dump = dump_tasks()
    gate.set()
    await task
    reader = dump.split("task reader:")[1].split("\ntask ")[0]
    lines = [line.strip() for line in reader.strip().splitlines()]
    assert [line.rsplit(" in ", 1)[1] for line in lines[:2]] == ["_reads_the_generator", "_numbers"]
    assert all("test_diagnostics.py:" in line for line in lines[:2])
