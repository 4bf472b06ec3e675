"""An export's answer: a snapshot of a namespace's records taken at one point of its partition's
order, streamed back as a series of results (docs/backups.md).

The snapshot is taken synchronously, between two messages of the partition: the stores' view
(a copy of the partition's dict with `memory://`, a RocksDB snapshot with `rocksdb://`) plus the
writes not flushed yet. That costs ~35 ms per million keys with `memory://` and nothing with
`rocksdb://`; the partition then goes on with its next message while the chunks are read from the
snapshot, `slice_s` of work at a time, and published one after the other. Every chunk goes
through the partition's write path, so none is published before the state it shows is in the
changelog. The next chunk is read while the previous one is being published (at most two in
memory), and each line is JSON-encoded once (orjson) and spliced into its chunk's result: as
dicts, pydantic took longer to serialize them than they took to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from nexus_streams.domain.backup import FORMAT_VERSION, NAMESPACE_FORMAT, encoded_line
from nexus_streams.domain.errors import NexusError, ResourceLimit, Timeout
from nexus_streams.domain.times import iso
from nexus_streams.messages import Result, SourceRef
from nexus_streams.replies import MAX_OUTBOUND_BYTES, Outbound, failure, result_message
from nexus_streams.service import ExportPlan
from nexus_streams.streams.stores import PartitionStores
from nexus_streams.streams.tables import Kind, state_key
from nexus_streams.streams.writer import StateWriter

log = logging.getLogger(__name__)

#: lines read between two looks at the clock
CLOCK_EVERY = 256
#: where a chunk's encoded result takes its lines: `output` is a chunk result's first object
#: (the fields before it are scalars), `relationships` its first key, so the first match is it
LINES_AT = b'"output":{"relationships":[]'


def chunk_message(result: Result, lines: list[bytes]) -> Outbound:
    """The result message of a chunk whose `output.relationships` is `[]`, with `lines` (each a
    line's JSON) in it."""
    message = result_message(result)
    at = message.value.find(LINES_AT)
    if at < 0:
        raise ValueError("not an export chunk's result")
    cut = at + len(LINES_AT) - 1
    value = b"".join((message.value[:cut], b",".join(lines), message.value[cut:]))
    if len(value) > MAX_OUTBOUND_BYTES:  # its error result, as for any result too large
        output = (result.output or {}) | {"relationships": [orjson.loads(line) for line in lines]}
        return result_message(result.model_copy(update={"output": output}))
    return dataclasses.replace(message, value=value)


@dataclass(frozen=True, slots=True)
class ExportLimits:
    chunk_bytes: int
    max_running: int
    slice_s: float
    publish_timeout_s: float


def take_snapshot(
    writer: StateWriter, stores: PartitionStores, partitions: Iterable[int], namespace: str
) -> Iterator[tuple[bytes, bytes]]:
    """The namespace's stored relationship records as they are now (the open and in-flight
    cycles over the store), read as the iterator is advanced. Synchronous: call it between two
    messages."""
    prefix = state_key(Kind.RECORD, namespace, "").encode()
    bases = []
    overlay: dict[bytes, bytes | None] = {}
    for partition in partitions:
        bases.append(stores.snapshot(partition, prefix))
        for writes in writer.unflushed(partition):
            overlay.update((k, v) for k, v in writes.items() if k.startswith(prefix))

    def items() -> Iterator[tuple[bytes, bytes]]:
        for base in bases:
            for key, value in base:
                if key not in overlay:
                    yield key, value
        for key, maybe in overlay.items():
            if maybe is not None:
                yield key, maybe

    return items()


def _read_slice(
    items: Iterator[tuple[bytes, bytes]], lines: list[bytes], size: int, limit: int, slice_end: float
) -> tuple[int, bool]:
    """Lines onto `lines` until the chunk is full or the slice is over: the chunk's size, and
    whether `items` is exhausted."""
    for n, (key, value) in enumerate(items):
        line = encoded_line(key, value)
        lines.append(line)
        size += len(line) + 1
        if size >= limit:
            return size, False
        if n % CLOCK_EVERY == CLOCK_EVERY - 1 and time.perf_counter() >= slice_end:
            return size, False
    return size, True


class Exports:
    """The exports a worker streams: at most `limits.max_running` at once."""

    def __init__(
        self,
        limits: ExportLimits,
        publish: Callable[[Result, Outbound, ExportPlan, bool], Awaitable[None]],
        clock: Callable[[], datetime],
    ) -> None:
        self.limits = limits
        #: publish one chunk (its result without its lines, and its message) through the plan's
        #: partition's write path; returns once published
        self._publish = publish
        self.clock = clock
        self.running: set[asyncio.Task[None]] = set()

    def refuse(self, plan: ExportPlan) -> Result | None:
        """The error result of an export that may not start now (None: it may)."""
        if len(self.running) < self.limits.max_running:
            return None
        exc = ResourceLimit(
            f"{len(self.running)} exports are running on this worker; the limit is "
            f"{self.limits.max_running} (NEXUS_EXPORT_MAX_RUNNING): try again when one is done",
            running=len(self.running),
            limit=self.limits.max_running,
        )
        return self._failure(plan, exc)

    def start(self, plan: ExportPlan, items: Iterator[tuple[bytes, bytes]]) -> asyncio.Task[None]:
        task = asyncio.create_task(self._stream(plan, items), name=f"nexus-export-{plan.namespace}")
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        return task

    def cancel_all(self) -> None:
        """A rebalance: the exports' messages were not acknowledged; the partition's next owner
        answers them again."""
        for task in list(self.running):
            task.cancel()

    def _failure(self, plan: ExportPlan, exc: NexusError) -> Result:
        result, _ = failure(
            plan.msg,
            exc,
            namespace=plan.namespace,
            request_id=plan.query.request_id,
            principal=plan.query.principal,
            action="export",
            pattern_id=None,
            offset=plan.offset,
            now=self.clock(),
        )
        return result

    def _result(self, plan: ExportPlan, output: dict[str, Any]) -> Result:
        msg = plan.msg
        return Result(
            request_id=plan.query.request_id,
            namespace=plan.namespace,
            action="export",
            status="ok",
            output=output,
            offset=plan.offset,
            source=SourceRef(topic=msg.topic, partition=msg.partition, offset=msg.offset),
            processed_at=self.clock(),
        )

    async def _stream(self, plan: ExportPlan, items: Iterator[tuple[bytes, bytes]]) -> None:
        limit = min(plan.query.chunk_bytes or self.limits.chunk_bytes, self.limits.chunk_bytes)
        slice_s = self.limits.slice_s
        chunk, sent = 0, 0
        lines: list[bytes] = []
        size = 0
        head: dict[str, Any] = {
            "format": NAMESPACE_FORMAT,
            "format_version": FORMAT_VERSION,
            "namespace": plan.namespace,
            "offset": plan.offset,
            "partition": plan.msg.partition,
            "relationships_total": plan.relationships,
            "schema": plan.schema,
            "exported_at": iso(self.clock()),
        }
        started = time.perf_counter()
        exhausted = False
        publishing: asyncio.Task[None] | None = None  # the previous chunk's
        try:
            while not exhausted:
                size, exhausted = _read_slice(items, lines, size, limit, time.perf_counter() + slice_s)
                if size < limit and not exhausted:
                    await asyncio.sleep(0)  # the slice is over: let the partition go on
                    continue
                sent += len(lines)
                output: dict[str, Any] = {
                    "relationships": [],
                    "chunk": chunk,
                    "last": exhausted,
                    "count": len(lines),
                }
                if chunk == 0:
                    output |= head
                if publishing is not None:
                    await publishing  # chunks go out in order, one at a time
                if exhausted:
                    output |= {"relationships_sent": sent, "seconds": round(time.perf_counter() - started, 3)}
                result = self._result(plan, output)
                message = chunk_message(result, lines)
                publishing = asyncio.create_task(self._send(plan, result, message, exhausted))
                chunk, lines, size = chunk + 1, [], 0
            if publishing is not None:
                await publishing
        finally:
            if publishing is not None and not publishing.done():
                publishing.cancel()

    async def _send(self, plan: ExportPlan, result: Result, message: Outbound, last: bool) -> None:
        try:
            async with asyncio.timeout(self.limits.publish_timeout_s):
                await self._publish(result, message, plan, last)
        except TimeoutError:
            exc = Timeout(
                f"an export chunk was not published within {self.limits.publish_timeout_s}s",
                chunk=(result.output or {}).get("chunk"),
            )
            log.error("export of %s stopped: %s", plan.namespace, exc.message)
            failed = self._failure(plan, exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.limits.publish_timeout_s):
                    await self._publish(failed, result_message(failed), plan, True)
            raise


__all__ = ["ExportLimits", "Exports", "chunk_message", "take_snapshot"]
