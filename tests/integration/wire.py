"""Plain aiokafka producer/consumer for the tests: the service is driven as any Kafka client would,
without the project's own client code."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return json.loads(self.value or b"null")


class Wire:
    """Sends raw bytes to the inbound topics; records everything on the outbound topics."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.prefix = prefix
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        self.records: defaultdict[str, list[Record]] = defaultdict(list)
        self._arrived = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def start(self, outbound: tuple[str, ...] = ("results", "events", "deadletter")) -> None:
        await self.producer.start()
        await self.consumer.start()
        tps = []
        for name in outbound:
            parts = self.consumer.partitions_for_topic(self.topic(name))
            if not parts:
                await self.consumer._client.force_metadata_update()
                parts = self.consumer.partitions_for_topic(self.topic(name))
            assert parts, f"topic {self.topic(name)} does not exist"
            tps += [TopicPartition(self.topic(name), p) for p in parts]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()
        await self.producer.stop()

    async def _read(self) -> None:
        async for msg in self.consumer:
            name = msg.topic[len(self.prefix) :]
            headers = {k: v.decode(errors="replace") for k, v in msg.headers or ()}
            record = Record(msg.topic, msg.partition, msg.offset, msg.key, msg.value, headers)
            async with self._arrived:
                self.records[name].append(record)
                self._arrived.notify_all()

    async def send(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes | dict[str, Any],
        headers: list[tuple[str, bytes]] | None = None,
    ) -> int:
        """Produce one message; return its offset."""
        return (await self.send_located(topic, key, value, headers))[1]

    async def send_located(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes | dict[str, Any],
        headers: list[tuple[str, bytes]] | None = None,
    ) -> tuple[int, int]:
        """Produce one message (with Kafka `headers`); return its partition and offset."""
        if isinstance(value, dict):
            value = json.dumps(value).encode()
        if isinstance(key, str):
            key = key.encode()
        metadata = await self.producer.send_and_wait(self.topic(topic), value, key=key, headers=headers)
        return metadata.partition, metadata.offset

    def dead_letters(self, topic: str, partition: int, offset: int) -> list[Record]:
        """The dead letters of the message at `topic`[`partition`]@`offset`."""
        source = (self.topic(topic), str(partition), str(offset))
        return self.matching(
            "deadletter",
            lambda r: (
                (
                    r.headers.get("nexus-source-topic"),
                    r.headers.get("nexus-source-partition"),
                    r.headers.get("nexus-source-offset"),
                )
                == source
            ),
        )

    async def wait_for(self, topic: str, predicate, count: int = 1, timeout_s: float = 30.0) -> list[Record]:
        """Wait until `count` records on `topic` match `predicate`; fail at the deadline."""

        def matched() -> list[Record]:
            return [r for r in self.records[topic] if predicate(r)]

        if await self.wait_until(lambda: len(matched()) >= count, timeout_s):
            return matched()
        if self._task is not None and self._task.done():
            raise AssertionError(f"the test's consumer stopped: {self._task!r}")
        raise AssertionError(f"{len(matched())} of {count} matching records on {topic} within {timeout_s}s")

    async def wait_until(self, check: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until `check()` (re-evaluated as records arrive) holds; False at the deadline."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self._arrived:
                    while not check():
                        await self._arrived.wait()
                    return True
        except TimeoutError:
            return check()

    async def result(self, request_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """The result of `request_id`. Delivery is at-least-once, so after a crash a result may be
        published again: every copy must then be identical."""
        found = await self.wait_for(
            "results", lambda r: r.headers.get("nexus-request-id") == request_id, 1, timeout_s
        )
        copies = [r.json() for r in found]
        assert all(c == copies[0] for c in copies), f"different results for {request_id}: {copies}"
        return copies[0]

    async def request(
        self,
        topic: str,
        key: str,
        payload: dict[str, Any],
        timeout_s: float = 30.0,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> dict[str, Any]:
        """Send a command (a request_id and principal are added when missing); await its result."""
        payload = {"request_id": f"w-{uuid.uuid4().hex}", "principal": "tests", **payload}
        await self.send(topic, key, payload, headers)
        return await self.result(payload["request_id"], timeout_s)

    async def events(self, request_id: str, count: int = 1, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        found = await self.wait_for(
            "events", lambda r: r.json().get("request_id") == request_id, count, timeout_s
        )
        return [r.json() for r in found]

    async def positions(self) -> str:
        """Where the test's consumer is in each outbound partition, against what it recorded."""
        lines = []
        for tp in sorted(self.consumer.assignment()):
            name = tp.topic[len(self.prefix) :]
            seen = [r.offset for r in self.records[name] if r.partition == tp.partition]
            lines.append(
                f"read {tp.topic}[{tp.partition}] position={await self.consumer.position(tp)} "
                f"recorded={len(seen)} last={max(seen, default=None)}"
            )
        return "\n".join(lines)

    def matching(self, topic: str, predicate) -> list[Record]:
        return [r for r in self.records[topic] if predicate(r)]
