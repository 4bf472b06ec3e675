"""The namespace actor's write path: state written a batch at a time, one atomic changelog record
batch per partition, and the replies published once their state is in Kafka.

Per partition, the replies completed since the last flush form one *cycle*: their state writes
(coalesced by key: the last write of a key wins) and their outbound messages. A flush sends the
writes as ONE Kafka record batch to the partition of the `state` changelog, which the broker
appends whole or not at all, so a crash leaves every cycle either entirely in the changelog or
not at all. Once the broker has it, the writes go to the local store (with the changelog offset,
in one RocksDB write batch) and the cycle's replies are published; each input message is
acknowledged once everything its reply publishes is delivered (Faust commits acknowledged
offsets). One flush per partition is in flight at a time: the next cycle gathers meanwhile, so the
busier a partition, the bigger its batches (group commit).

Reads see the newest value: the open cycle, then the one in flight, then the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder

from nexus_streams.streams.stores import PartitionStores

log = logging.getLogger(__name__)

#: the largest changelog record batch one flush sends (a cycle is closed before it would grow past
#: this; the changelog topics are created to take it, streams/admin.py)
MAX_CYCLE_BYTES = 4 * 1024 * 1024
#: per record, what a record batch adds to its key and value (an upper bound)
RECORD_OVERHEAD_BYTES = 24
#: wait after a failed flush before trying again
RETRY_DELAY_S = 0.5


@dataclass(slots=True)
class Cycle:
    """The writes and replies of one partition since its last flush."""

    writes: dict[bytes, bytes | None] = field(default_factory=dict)
    replies: list[Any] = field(default_factory=list)
    #: of the writes, as a record batch (bounded by MAX_CYCLE_BYTES)
    bytes: int = 0
    #: of the messages its replies publish
    message_bytes: int = 0

    @property
    def held(self) -> int:
        """What the cycle holds unpublished: its writes and its replies' messages."""
        return self.bytes + self.message_bytes

    def __bool__(self) -> bool:
        return bool(self.writes or self.replies)


class _Partition:
    __slots__ = ("open", "inflight", "task", "idle", "taken")

    def __init__(self) -> None:
        self.open = Cycle()
        self.inflight: Cycle | None = None
        self.task: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        #: set when the open cycle is taken to be flushed (a new event for the next one)
        self.taken = asyncio.Event()


class StateWriter:
    """Cycles of writes per partition, flushed in order (see the module docstring).

    `send_batch(builder, partition)` sends a record batch to the changelog and returns the base
    offset the broker gave it; `publish(replies)` publishes a flushed cycle's replies (and
    acknowledges their messages when delivered); `before_write(partition, cycle)` may add writes
    to a cycle about to be sent."""

    def __init__(
        self,
        stores: Callable[[], PartitionStores],
        send_batch: Callable[[BatchBuilder, int], Awaitable[int]],
        publish: Callable[[list[Any]], Awaitable[None]],
        before_write: Callable[[int, Cycle], None] = lambda partition, cycle: None,
    ) -> None:
        self._stores = stores
        self._send_batch = send_batch
        self._publish = publish
        #: adds what a cycle writes besides its replies' state (the journal, deletions)
        self._before_write = before_write
        self._partitions: dict[int, _Partition] = {}
        #: cycles flushed, records written (for the metrics and the tests)
        self.flushes = 0
        self.records = 0

    def _partition(self, partition: int) -> _Partition:
        state = self._partitions.get(partition)
        if state is None:
            state = self._partitions[partition] = _Partition()
        return state

    # -- reads and writes ----------------------------------------------------------------------

    def get(self, partition: int, key: bytes) -> bytes | None:
        state = self._partitions.get(partition)
        if state is not None:
            writes = state.open.writes
            if key in writes:
                return writes[key]
            if state.inflight is not None and key in state.inflight.writes:
                return state.inflight.writes[key]
        return self._stores().get(partition, key)

    def unflushed(self, partition: int) -> list[dict[bytes, bytes | None]]:
        """Copies of the writes not yet in the store: the cycle in flight, then the open one."""
        state = self._partitions.get(partition)
        if state is None:
            return []
        cycles = [state.inflight, state.open] if state.inflight is not None else [state.open]
        return [dict(cycle.writes) for cycle in cycles]

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        cycle = self._partition(partition).open
        writes = cycle.writes
        if key in writes:
            cycle.bytes -= len(key) + len(writes[key] or b"") + RECORD_OVERHEAD_BYTES
        writes[key] = value
        cycle.bytes += len(key) + len(value or b"") + RECORD_OVERHEAD_BYTES

    def attach(self, partition: int, reply: Any, message_bytes: int = 0) -> None:
        """Publish `reply` (its messages `message_bytes` long) after the writes of this
        partition's open cycle are in the changelog."""
        cycle = self._partition(partition).open
        cycle.replies.append(reply)
        cycle.message_bytes += message_bytes

    def open_bytes(self, partition: int) -> int:
        """The open cycle's writes, as a record batch."""
        state = self._partitions.get(partition)
        return 0 if state is None else state.open.bytes

    def open_held(self, partition: int) -> int:
        """The open cycle's writes and messages (`Cycle.held`)."""
        state = self._partitions.get(partition)
        return 0 if state is None else state.open.held

    def pending(self) -> int:
        """Replies not yet published, over every partition."""
        return sum(
            len(p.open.replies) + (len(p.inflight.replies) if p.inflight else 0)
            for p in self._partitions.values()
        )

    # -- flushing ------------------------------------------------------------------------------

    def seal(self, partition: int) -> None:
        """Flush the open cycle now, or right after the flush in flight."""
        state = self._partition(partition)
        if state.task is None or state.task.done():
            state.idle.clear()
            state.task = asyncio.create_task(self._flush(partition, state), name=f"nexus-flush-{partition}")

    async def wait_room(self, partition: int, max_bytes: int) -> None:
        """While `partition`'s open cycle holds (`Cycle.held`) `max_bytes` or more and a flush is
        in flight, wait until that flush takes it: what a partition holds unpublished stays within
        two cycles, however far ahead of the broker its input is."""
        state = self._partitions.get(partition)
        while (
            state is not None
            and state.open.held >= max_bytes
            and state.task is not None
            and not state.task.done()
        ):
            await state.taken.wait()

    async def wait_flushed(self, partition: int) -> None:
        """Until nothing of `partition` waits to be flushed."""
        state = self._partitions.get(partition)
        if state is not None:
            await state.idle.wait()

    async def drain(self, timeout_s: float) -> bool:
        """Until every flush started has landed (False: not within `timeout_s`)."""
        waiting = [p.idle.wait() for p in self._partitions.values() if not p.idle.is_set()]
        if not waiting:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*waiting)
        except TimeoutError:
            log.warning("state flushes still in flight after %.0fs; their messages are read again", timeout_s)
            return False
        return True

    def reset(self) -> None:
        """Drop what is not flushed (a rebalance, a rebuild): its messages were not acknowledged,
        so they are processed again, by this worker or the partition's next owner."""
        for state in self._partitions.values():
            if state.task is not None and not state.task.done():
                state.task.cancel()
        self._partitions.clear()

    async def _flush(self, partition: int, state: _Partition) -> None:
        try:
            while state.open:
                cycle, state.open = state.open, Cycle()
                state.inflight = cycle
                state.taken.set()
                state.taken = asyncio.Event()
                self._before_write(partition, cycle)
                await self._write(partition, cycle)
                state.inflight = None
                self.flushes += 1
                await self._publish(cycle.replies)
        finally:
            state.idle.set()
            state.taken.set()  # (a waiter sees the flush ended)
            state.taken = asyncio.Event()

    async def _write(self, partition: int, cycle: Cycle) -> None:
        """Send the cycle's writes until the broker has them; then the local store."""
        if not cycle.writes:
            return
        while True:
            try:
                last_offset = await self._send(partition, cycle.writes)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is away: the same writes again, in order
                log.warning(
                    "state of partition %d not written (%r); trying again in %.1fs",
                    partition,
                    exc,
                    RETRY_DELAY_S,
                )
                await asyncio.sleep(RETRY_DELAY_S)
        self._stores().write(partition, cycle.writes, last_offset)
        self.records += len(cycle.writes)

    async def _send(self, partition: int, writes: dict[bytes, bytes | None]) -> int:
        """The writes as record batches (one unless they exceed MAX_CYCLE_BYTES); the changelog
        offset of the last record."""
        now_ms = int(time.time() * 1000)
        builder = BatchBuilder(MAX_CYCLE_BYTES + 1024 * 1024, 0)
        count = 0
        last_offset = -1
        for key, value in writes.items():
            if builder.append(timestamp=now_ms, key=key, value=value, headers=[]) is None:
                # over one batch: a cycle is sealed before this can happen, except for one message
                # whose writes alone are larger; such a message is written in several batches
                log.warning("state of partition %d over one record batch: written in several", partition)
                base = await self._send_batch(builder, partition)
                last_offset = base + count - 1
                builder, count = BatchBuilder(MAX_CYCLE_BYTES + 1024 * 1024, 0), 0
                builder.append(timestamp=now_ms, key=key, value=value, headers=[])
            count += 1
        base = await self._send_batch(builder, partition)
        return max(last_offset, base + count - 1)
