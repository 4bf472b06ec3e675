"""Faust's consumer, handing each fetch of the hot topics to one handler a partition at a time.

Faust delivers every record on its own: an Event, a stream step and `wait_first(callback(message),
suspend_flow.wait())` (four tasks, three cancellations) per message, ~96 us before any work. The
namespace actor's input topics are instead handed over as the records one fetch returned for one
partition, in offset order; every other topic (the pattern commands, Faust's own reply topics)
goes the usual way. Faust keeps everything else: the group, assignments, recovery, acknowledgements
(`track_message` / `ack`, the same bookkeeping its streams use) and commits.

A record of a partition that is not active (recovery pauses partitions while a fetch is in flight)
is not dropped, as Faust's own loop does (nexus_streams/stalls.py), but sought back to, so it is
fetched again once the partition is active.

This overrides `Consumer._drain_messages`, a private method of faust-streaming: the versions it
was written against are pinned in pyproject.toml, and tests/unit/test_faust_private_api.py fails
when the internals it relies on change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, Message

log = logging.getLogger(__name__)

BatchHandler = Callable[[TP, list[Message]], Awaitable[None]]


class BatchConsumer(AIOKafkaConsumer):
    """Set `batch_handler` and `batch_topics` before the worker starts."""

    batch_handler: BatchHandler | None = None
    batch_topics: frozenset[str] = frozenset()

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - the worker's loop
        if self.batch_handler is None:
            await super()._drain_messages(fetcher)
            return
        try:
            await self._drain_batches(fetcher, self.batch_handler)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    async def _drain_batches(self, fetcher: Any, handler: BatchHandler) -> None:
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set  # noqa: SLF001
        app = self.app
        batch_topics = self.batch_topics
        while not (consumer_stopped() or fetcher_stopped()):
            records, active = await self._wait_next_records(1.0)
            await asyncio.sleep(0)
            if not records or self.should_stop:
                continue
            if not self.flow_active:
                await self.perform_seek()  # as Faust does: read again from the committed offsets
                continue
            generation = app.consumer_generation_id
            for tp, batch in records.items():
                if app.consumer_generation_id != generation or not self.flow_active:
                    break  # a rebalance: the new assignment starts from the committed offsets
                if batch:
                    await self._deliver(tp, batch, active, handler if tp.topic in batch_topics else None)

    async def _deliver(
        self, tp: TP, batch: list[Any], active: set[TP] | None, handler: BatchHandler | None
    ) -> None:
        if active is not None and tp not in active and tp not in self._buffered_partitions:
            await self.seek(tp, batch[0].offset)  # paused meanwhile: fetched again later
            return
        messages = await self._accept(tp, batch)
        if not messages:
            return
        if handler is not None:
            await handler(tp, messages)
        else:
            for message in messages:
                await self.callback(message)
        self._read_offset[tp] = messages[-1].offset

    async def _accept(self, tp: TP, batch: list[Any]) -> list[Message]:
        """The records past the partition's read offset, as tracked messages (gaps noted, as
        Faust's loop does, so that commits can pass offsets without records)."""
        read_offset = self._read_offset[tp]
        app = self.app
        app.monitor.track_tp_end_offset(tp, self.highwater(tp))
        to_message = self._to_message
        track = self.track_message
        messages: list[Message] = []
        for record in batch:
            offset = record.offset
            if read_offset is not None and offset < read_offset:
                continue  # read before
            if read_offset and offset - read_offset > 1 and app.topics.acks_enabled_for(tp.topic):
                await self._add_gap(tp, read_offset + 1, offset)
            message = to_message(tp, record)
            track(message)
            messages.append(message)
            read_offset = offset
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()
        return messages


def install(app: Any, topics: frozenset[str], handler: BatchHandler) -> None:
    """Make `app` use BatchConsumer for `topics` (before its consumer is created)."""
    transport = app.transport
    transport.Consumer = type("NexusBatchConsumer", (BatchConsumer,), {})
    transport.Consumer.batch_topics = topics
    transport.Consumer.batch_handler = staticmethod(handler)
