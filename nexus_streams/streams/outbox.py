"""A flushed cycle's results, events and dead letters, handed to the producer as one record batch
per topic partition, and its messages acknowledged once every batch is delivered.

One `send` per message (Faust's, or even aiokafka's) costs ~25 us and makes many small produce
requests; a batch per partition costs one append per message. Keyed messages go to the partition
Kafka's default partitioner picks (murmur2 of the key, as the Java client and aiokafka do), so a
namespace's results stay in one partition, in order.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from nexus_streams.replies import Outbound
from nexus_streams.topics import DEADLETTER_MAX_MESSAGE_BYTES, TopicSpec

log = logging.getLogger(__name__)

#: a record batch to a topic with the broker's default limit (1 MiB, `message.max.bytes`)
BATCH_BYTES = 1_000_000
#: keys whose partition is remembered (namespaces, pattern ids); past it the memo starts again
PARTITION_MEMO_SIZE = 100_000
#: how long a topic's partition count is trusted before it is read again from the metadata
PARTITION_COUNT_TTL_S = 60.0


class Outbox:
    def __init__(self, producer: Callable[[], Any], topic_names: dict[TopicSpec, str]) -> None:
        self._producer = producer
        self._topic_names = topic_names
        self._limits = {name: BATCH_BYTES for name in topic_names.values()}
        for spec, name in topic_names.items():
            if spec.max_message_bytes:
                self._limits[name] = min(spec.max_message_bytes, DEADLETTER_MAX_MESSAGE_BYTES)
        self._counts: dict[str, tuple[int, float]] = {}
        self._memo: dict[tuple[str, bytes], int] = {}
        self._round_robin = itertools.count()

    async def publish(self, messages: Iterable[tuple[list[Outbound], Any]]) -> None:
        """Hand every outbound message over; acknowledge each token (an input message) once all
        of them are delivered. Returns without waiting for the deliveries."""
        producer = self._producer()
        builders: dict[tuple[str, int], list[BatchBuilder]] = {}
        tokens = []
        now_ms = int(time.time() * 1000)
        #: this call's partitions by (topic, key): a batch command's thousand events share one key
        keyed: dict[tuple[str, bytes], int] = {}
        for outbound, token in messages:
            for out in outbound:
                topic = self._topic_names[out.spec]
                partition = out.partition
                if partition is None:
                    if out.key is None:
                        partition = await self._partition(topic, None)
                    elif (partition := keyed.get((topic, out.key))) is None:
                        partition = keyed[(topic, out.key)] = await self._partition(topic, out.key)
                self._append(builders.setdefault((topic, partition), []), topic, out, now_ms)
            if token is not None:
                tokens.append(token)
        deliveries = []
        for (topic, partition), batches in builders.items():
            for builder in batches:
                deliveries.append(await producer.send_batch(builder, topic, partition=partition))
        if not deliveries:
            _ack(tokens)
            return
        asyncio.gather(*deliveries).add_done_callback(lambda done: _delivered(done, tokens))

    def _append(self, batches: list[BatchBuilder], topic: str, out: Outbound, now_ms: int) -> None:
        headers = list(out.headers.items())
        if (
            not batches
            or batches[-1].append(timestamp=now_ms, key=out.key, value=out.value, headers=headers) is None
        ):
            builder = BatchBuilder(self._limits[topic], 0)
            builder.append(timestamp=now_ms, key=out.key, value=out.value, headers=headers)
            batches.append(builder)

    async def _partition(self, topic: str, key: bytes | None) -> int:
        count = await self._count(topic)
        if key is None:
            return next(self._round_robin) % count
        memo_key = (topic, key)
        partition = self._memo.get(memo_key)
        if partition is None:
            if len(self._memo) >= PARTITION_MEMO_SIZE:
                self._memo.clear()
            partition = self._memo[memo_key] = (murmur2(key) & 0x7FFFFFFF) % count
        return partition

    async def _count(self, topic: str) -> int:
        known = self._counts.get(topic)
        now = time.monotonic()
        if known is not None and now - known[1] < PARTITION_COUNT_TTL_S:
            return known[0]
        producer = self._producer()
        partitions = producer._metadata.partitions_for_topic(topic)  # noqa: SLF001
        if not partitions:
            await producer.client._wait_on_metadata(topic)  # noqa: SLF001
            partitions = producer._metadata.partitions_for_topic(topic)  # noqa: SLF001
        count = len(partitions)
        if known is not None and known[0] != count:
            self._memo.clear()  # the topic grew: keys map elsewhere now
        self._counts[topic] = (count, now)
        return count


def _ack(tokens: list[Any]) -> None:
    for token in tokens:
        token.ack()


def _delivered(done: asyncio.Future[Any], tokens: list[Any]) -> None:
    if done.cancelled() or done.exception() is not None:
        reason = "cancelled" if done.cancelled() else done.exception()
        log.error("%d messages' outcomes not delivered (%s); left unacknowledged", len(tokens), reason)
        return
    _ack(tokens)
