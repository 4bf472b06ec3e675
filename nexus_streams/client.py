"""Async client on aiokafka, mirroring the spec's integration API: store a pattern, execute it
and await its result, follow the events of a pattern::

    async with NexusClient(Settings()) as nexus:  # with NEXUS_TOKEN's token, if set
        await nexus.store_pattern(document)
        result = await nexus.execute_pattern("user_onboarding", {"source": "user:1", "target": "wallet:1"})
        async for event in nexus.subscribe_events("user_onboarding"):
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from nexus_streams.connection import kafka_options
from nexus_streams.domain.auth import authorization_header, token_subject
from nexus_streams.settings import Settings
from nexus_streams.topics import EVENTS, RESULTS, Header

#: results of a stream (an export's chunks) read ahead of the one consuming them
STREAM_QUEUE_SIZE = 16


class NexusClient:
    """Produces to the inbound topics, reads results and events from their current end.

    `token` (else NEXUS_TOKEN) goes with every message, in the header `authorization: Bearer
    <token>`; requests name the token's subject as their `principal` unless told otherwise."""

    def __init__(self, settings: Settings, *, token: str | None = None, principal: str | None = None) -> None:
        self.settings = settings
        if token is None and settings.token is not None:
            token = settings.token.get_secret_value()
        self.token = token or None
        self._headers = [authorization_header(self.token)] if self.token else None
        #: the `principal` of requests that do not name one
        self.principal = principal or (token_subject(self.token) if self.token else None) or "client"
        self._producer = AIOKafkaProducer(**kafka_options(settings), acks="all")
        self._consumer = AIOKafkaConsumer(
            **kafka_options(settings),
            enable_auto_commit=False,
            group_id=None,
        )
        self._results: dict[str, asyncio.Future[dict[str, Any]]] = {}
        #: requests answered by a series of results (an export's chunks), by request_id
        self._streams: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._events_by_request: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self._event_queues: list[asyncio.Queue[tuple[dict[str, str], dict[str, Any]]]] = []
        self._event_arrived = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> NexusClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        await self._producer.start()
        await self._consumer.start()
        names = [self.settings.topic(RESULTS.name), self.settings.topic(EVENTS.name)]
        tps = [
            TopicPartition(name, p)
            for name in names
            for p in sorted(self._consumer.partitions_for_topic(name) or await self._partitions(name))
        ]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the lazy seek now, so nothing sent after start() is missed
            await self._consumer.position(tp)
        self._reader = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._consumer.stop()
        await self._producer.stop()

    async def _partitions(self, topic: str) -> set[int]:
        await self._consumer._client.force_metadata_update()  # noqa: SLF001
        parts = self._consumer.partitions_for_topic(topic)
        if not parts:
            raise RuntimeError(f"topic {topic} does not exist; start a worker or run `nexus-streams topics`")
        return set(parts)

    async def send(self, topic: str, key: str, payload: dict[str, Any]) -> None:
        await self._producer.send_and_wait(
            self.settings.topic(topic), json.dumps(payload).encode(), key=key.encode(), headers=self._headers
        )

    async def request(
        self, topic: str, key: str, payload: dict[str, Any], timeout_s: float = 30.0
    ) -> dict[str, Any]:
        """Send a command and wait for the result with its request_id (its `principal` is the
        client's when it names none)."""
        payload = {"principal": self.principal, **payload}
        request_id = payload["request_id"]
        future = self._results.setdefault(request_id, asyncio.get_running_loop().create_future())
        await self.send(topic, key, payload)
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._results.pop(request_id, None)

    async def request_stream(
        self, topic: str, key: str, payload: dict[str, Any], timeout_s: float = 30.0
    ) -> AsyncIterator[dict[str, Any]]:
        """Send a request answered by a series of results (`export`); yield each as it arrives,
        until one has `output.last` or is an error. `timeout_s`: the longest wait for the next."""
        payload = {"principal": self.principal, **payload}
        request_id = payload["request_id"]
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=STREAM_QUEUE_SIZE)
        self._streams[request_id] = queue
        try:
            await self.send(topic, key, payload)
            while True:
                result = await asyncio.wait_for(queue.get(), timeout_s)
                yield result
                if result.get("status") != "ok" or (result.get("output") or {}).get("last"):
                    return
        finally:
            self._streams.pop(request_id, None)

    async def store_pattern(
        self, pattern: dict[str, Any], *, principal: str | None = None, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        """Store a pattern document; returns the result (`output.version`, `output.created`).
        Raises `NexusRequestError` on an error result."""
        payload = {
            "request_id": _new_id(),
            "principal": principal or self.principal,
            "action": "store",
            "pattern": pattern,
        }
        return _checked(await self.request("patterns", str(pattern.get("id", "")), payload, timeout_s))

    async def execute_pattern(
        self,
        pattern_id: str,
        input: dict[str, Any],
        *,
        namespace: str = "default",
        version: int | None = None,
        principal: str | None = None,
        request_id: str | None = None,
        timeout_ms: int | None = None,
        step_events: bool = False,
        timeout_s: float = 60.0,
    ) -> dict[str, Any]:
        """Execute a pattern and await its result. A failed execution raises `NexusRequestError`
        carrying the result (its `output` reports every step). Resending with the same
        `request_id` is safe: no second effect, the same result."""
        payload: dict[str, Any] = {
            "request_id": request_id or _new_id(),
            "principal": principal or self.principal,
            "pattern_id": pattern_id,
            "input": input,
            "step_events": step_events,
        }
        if version is not None:
            payload["version"] = version
        if timeout_ms is not None:
            payload["timeout_ms"] = timeout_ms
        return _checked(await self.request("executions", namespace, payload, timeout_s))

    async def events_for(
        self, request_id: str, count: int = 1, timeout_s: float = 30.0
    ) -> list[dict[str, Any]]:
        """Wait until `count` events caused by `request_id` arrived; return them."""
        async with asyncio.timeout(timeout_s):
            while len(self._events_by_request[request_id]) < count:
                self._event_arrived.clear()
                await self._event_arrived.wait()
        return list(self._events_by_request[request_id])

    async def subscribe_events(
        self, pattern_id: str | None = None, event_type: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Events from now on, filtered by the pattern and type headers (no parsing to filter)."""
        queue: asyncio.Queue[tuple[dict[str, str], dict[str, Any]]] = asyncio.Queue()
        self._event_queues.append(queue)
        try:
            while True:
                headers, event = await queue.get()
                if pattern_id is not None and headers.get(Header.PATTERN_ID.value) != pattern_id:
                    continue
                if event_type is not None and headers.get(Header.EVENT_TYPE.value) != event_type:
                    continue
                yield event
        finally:
            self._event_queues.remove(queue)

    async def _read(self) -> None:
        results_topic = self.settings.topic(RESULTS.name)
        async for record in self._consumer:
            try:
                value = json.loads(record.value or b"{}")
            except json.JSONDecodeError:
                continue
            if record.topic == results_topic:
                stream = self._streams.get(value.get("request_id"))
                if stream is not None:
                    await stream.put(value)  # the reader waits for a slow consumer of a stream
                    continue
                future = self._results.get(value.get("request_id"))
                if future is not None and not future.done():
                    future.set_result(value)
                continue
            headers = {k: v.decode(errors="replace") for k, v in record.headers or ()}
            if value.get("request_id"):
                self._events_by_request[value["request_id"]].append(value)
                self._event_arrived.set()
            for queue in self._event_queues:
                queue.put_nowait((headers, value))


class NexusRequestError(Exception):
    """An error result: `code` and `message` from it, the whole result in `result`."""

    def __init__(self, result: dict[str, Any]) -> None:
        error = result.get("error") or {}
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")
        self.message = error.get("message")
        self.result = result


def _checked(result: dict[str, Any]) -> dict[str, Any]:
    if result.get("status") != "ok":
        raise NexusRequestError(result)
    return result


def _new_id() -> str:
    return f"client-{uuid.uuid4()}"
