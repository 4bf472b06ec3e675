"""The write path's bound (streams/writer.py): a partition holds at most the cycle in flight and
one open cycle of `max_bytes`, however far ahead of the broker its input is."""

from __future__ import annotations

import asyncio
from typing import Any

from nexus_streams.streams.stores import MemoryStores, PartitionedMemoryStore
from nexus_streams.streams.writer import StateWriter


class SlowBroker:
    """Sends a batch when the test lets it: `release` one flush at a time."""

    def __init__(self) -> None:
        self.gate = asyncio.Semaphore(0)
        self.sent = 0

    async def __call__(self, builder: Any, partition: int) -> int:
        await self.gate.acquire()
        self.sent += 1
        return self.sent * 1000


def writer_with(broker: SlowBroker) -> StateWriter:
    store = PartitionedMemoryStore.__new__(PartitionedMemoryStore)
    store.partitions = {}
    stores = MemoryStores(store)

    async def publish(replies: list[Any]) -> None:
        return None

    return StateWriter(lambda: stores, broker, publish)


async def test_wait_room__an_open_cycle_over_the_limit_waits_for_the_flush_in_flight() -> None:
    broker = SlowBroker()
    writer = writer_with(broker)
    writer.put(0, b"k0", b"x" * 100)
    writer.seal(0)  # in flight, held by the broker
    await asyncio.sleep(0)
    for i in range(1, 20):
        writer.put(0, b"k%d" % i, b"x" * 100)
    assert writer.open_bytes(0) >= 1000
    waiting = asyncio.create_task(writer.wait_room(0, 1000))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # the input would wait here
    broker.gate.release()  # the first flush lands: the open cycle is taken
    await asyncio.wait_for(waiting, 1)
    assert writer.open_bytes(0) == 0
    broker.gate.release()
    await asyncio.wait_for(writer.wait_flushed(0), 1)
    assert broker.sent == 2


async def test_wait_room__under_the_limit_or_nothing_in_flight__no_wait() -> None:
    writer = writer_with(SlowBroker())
    await asyncio.wait_for(writer.wait_room(0, 1000), 1)  # nothing there
    writer.put(0, b"k", b"x" * 2000)
    await asyncio.wait_for(writer.wait_room(0, 1000), 1)  # over, but no flush in flight
    writer.put(1, b"k", b"x" * 10)
    writer.seal(1)
    await asyncio.wait_for(writer.wait_room(1, 1000), 1)  # in flight, the open one small


async def test_wait_room__the_messages_of_the_replies_count_too() -> None:
    """A query's results write no state: their bytes hold the input all the same."""
    broker = SlowBroker()
    writer = writer_with(broker)
    writer.put(0, b"k0", b"x")
    writer.seal(0)
    await asyncio.sleep(0)
    writer.attach(0, "a reply", message_bytes=5000)
    assert (writer.open_bytes(0), writer.open_held(0)) == (0, 5000)
    waiting = asyncio.create_task(writer.wait_room(0, 1000))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    broker.gate.release()
    await asyncio.wait_for(waiting, 1)
