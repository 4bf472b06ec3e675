"""create_app(settings) -> faust.App: topics, tables and the namespace agent. Nothing at import.

The agent acknowledges each message itself (`stream.noack()`), after its outcome is published:
parked and deferred queries stay unacknowledged until answered, so a crash redelivers them
instead of losing them (Faust commits up to the first unacknowledged offset of a partition).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing as mp
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from functools import partial
from typing import Any, TypeVar, cast

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust import stores as faust_stores
from faust.types import TP, EventT

from nexus_streams.auth import Gate
from nexus_streams.codec import Undecodable, dumps
from nexus_streams.connection import broker_credentials, kafka_options
from nexus_streams.diagnostics import install_task_dump
from nexus_streams.domain.access import AccessPolicy
from nexus_streams.domain.errors import NexusError, NotFound
from nexus_streams.domain.execution import ExecutionLimits
from nexus_streams.domain.graph import Put
from nexus_streams.domain.relationships import SEP
from nexus_streams.domain.validation import PatternLimits
from nexus_streams.executions import Executions, ExecutionStats, PatternLookup
from nexus_streams.logs import log_reply
from nexus_streams.messages import Result
from nexus_streams.metrics import INPUT_TOPICS, Metrics
from nexus_streams.pattern_registry import REQUEST_SCOPE, PatternRegistry
from nexus_streams.patterns import SystemPatterns
from nexus_streams.replies import Outbound, Received, result_message, unforeseen
from nexus_streams.runtime import GcEpochs, GcSettings, HeapTrim, LoopWatch
from nexus_streams.service import ExportPlan, Limits, NamespaceService, Reply, RequestWindow
from nexus_streams.settings import Settings
from nexus_streams.store.base import ExecutionRecord, PatternStore
from nexus_streams.store.cache import PatternCache
from nexus_streams.store.redis import RedisPatternStore
from nexus_streams.streams import consumer as batch_consumer
from nexus_streams.streams.admin import member_file
from nexus_streams.streams.batches import Batches
from nexus_streams.streams.deadletters import watch_waiting
from nexus_streams.streams.dump import consumer_state
from nexus_streams.streams.export import ExportLimits, Exports, take_snapshot
from nexus_streams.streams.journal import JOURNAL_KIND, Journal, answered
from nexus_streams.streams.outbox import Outbox
from nexus_streams.streams.stores import STORE_CLASS, stores_of
from nexus_streams.streams.tables import (
    Kind,
    StateRecords,
    StateRequestLog,
    TableRequestLog,
    Tables,
    current_key,
    remembered_bytes,
    remembered_of,
    state_key,
)
from nexus_streams.streams.watch import InputWatch
from nexus_streams.streams.writer import MAX_CYCLE_BYTES, Cycle, StateWriter
from nexus_streams.topics import (
    ALL_TOPICS,
    EVENTS,
    EXECUTIONS,
    PATTERNS,
    QUERIES,
    RELATIONSHIPS,
    RESULTS,
    STATE_MAX_MESSAGE_BYTES,
    Header,
    TopicSpec,
)

log = logging.getLogger(__name__)

#: how long execution statistics wait for more to join their Redis pipeline
STATISTICS_LINGER_S = 0.05
#: the state table's store for memory:// (streams/stores.py)
MEMORY_STORE = "nexus-memory://state"  # a URL with a path: an empty one is falsy
#: replies a worker holds unpublished before it stops reading its input for a while
MAX_PENDING_REPLIES = 20_000
#: a partition's open cycle is sealed once its state writes and messages are this large; its
#: input waits while it holds that much and the cycle before is in flight (streams/writer.py
#: `wait_room`): what a worker holds unpublished is ~2 x this per partition (a batch command of
#: 1,000 creates is ~0.5 MB: a cycle of its own), not a fetch's worth of batch commands
SEAL_CYCLE_BYTES = 512 * 1024
#: how long a rebuild waits for the state flushes in flight
REBUILD_DRAIN_S = 30.0
#: how long an execution waits at worker start for the system patterns to be registered
SYSTEM_PATTERNS_WAIT_S = 30.0
#: how often the maintenance loop checks that the system patterns are still in the store
SYSTEM_PATTERNS_CHECK_S = 30.0
T = TypeVar("T")


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_batch=settings.max_batch,
        max_delete_entity=settings.max_delete_entity,
        visit_limit=settings.visit_limit,
        snapshot_max_age_s=settings.snapshot_max_age_s,
        min_offset_wait_s=settings.min_offset_wait_s,
        max_nesting_depth=settings.max_nesting_depth,
        subscriptions_per_namespace=settings.subscriptions_per_namespace,
        subscription_visit_budget=settings.subscription_visit_budget,
        subscription_max_watched=settings.subscription_max_watched,
    )


def rocksdb_options(settings: Settings) -> dict[str, Any]:
    """Faust's RocksDB defaults are sized for a machine of its own (64 MiB memtables, three of
    them, and a 2 GiB block cache, per partition): the worker's are small and settable."""
    mib = 1024 * 1024
    return {
        "write_buffer_size": settings.rocksdb_write_buffer_mb * mib,
        "max_write_buffer_number": 2,
        "target_file_size_base": 16 * mib,
        "block_cache_size": settings.rocksdb_block_cache_mb * mib,
        "block_cache_compressed_size": mib,
    }


def _where(reply: Reply) -> str:
    msg = reply.message
    return f"{msg.topic}[{msg.partition}]@{msg.offset}" if msg is not None else "a reply"


class NamespaceActor:
    """Glue between Faust and `NamespaceService`: feed it messages, make its replies durable."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        metrics: Metrics,
        store: PatternStore,
        cache: PatternCache,
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.cache = cache
        self.system_patterns = SystemPatterns(store, cache)
        #: when the maintenance loop last looked for the system patterns in the store
        self._system_checked = time.monotonic()
        self.policy = AccessPolicy.of(settings.admin_principals())
        #: who may send what: every input message passes it first (nexus_streams/auth.py)
        self.gate = Gate.from_settings(settings)
        #: waiting executions whose resume was sent, and when (so it is not sent every tick)
        self._resume_sent: dict[tuple[str, str], float] = {}
        self.topics: dict[TopicSpec, faust.TopicT] = {
            spec: app.topic(
                settings.topic(spec.name),
                key_serializer="raw",
                value_serializer="raw",
                partitions=settings.partitions,
                internal=False,
            )
            for spec in ALL_TOPICS
        }
        self.by_name = {settings.topic(spec.name): spec for spec in ALL_TOPICS}
        self.topic_names = {spec: name for name, spec in self.by_name.items()}
        self.inbound = app.topic(
            *(settings.topic(spec.name) for spec in (RELATIONSHIPS, QUERIES, EXECUTIONS)),
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
            internal=False,
        )
        self.tables = Tables(
            app,
            settings.partitions,
            MEMORY_STORE if settings.table_store.startswith("memory") else None,
            rocksdb_options(settings),
        )
        #: the state's write path: one atomic changelog batch per partition and cycle
        self.writer = StateWriter(
            lambda: stores_of(self.tables.state), self._send_state, self._publish_cycle, self._before_write
        )
        #: what each flushed cycle published, until its input offsets are committed
        self.journal = Journal(SEP)
        #: which remembered requests to forget, by count and age
        self.window = RequestWindow(settings.request_retention_s, settings.request_retention_count)
        self.request_log = StateRequestLog(self.writer, self._partitions_of)
        self.outbox = Outbox(lambda: cast(Any, self.app.producer)._producer, self.topic_names)  # noqa: SLF001
        self._analysis_pool: ProcessPoolExecutor | None = None
        self.service = NamespaceService(
            self.request_log,
            lambda namespace: StateRecords(self.writer, namespace, self._partitions_of),
            limits_from(settings),
            offload=self.in_analysis_process,
            executions=Executions(
                self.policy,
                ExecutionLimits(
                    visit_limit=settings.visit_limit,
                    max_delete_entity=settings.max_delete_entity,
                    max_nesting_depth=settings.pattern_max_inclusion_depth,
                ),
            ),
        )
        self._pending: set[asyncio.Task[None]] = set()
        #: exports streaming their chunks (streams/export.py)
        self.exports = Exports(
            ExportLimits(
                chunk_bytes=settings.export_chunk_bytes,
                max_running=settings.export_max_running,
                slice_s=settings.export_slice_ms / 1000,
                publish_timeout_s=settings.export_publish_timeout_s,
            ),
            self._publish_export,
            self.service.clock,
        )
        #: Redis statistics: a pipeline per 50 ms at most (one per execution at a steady rate
        #: cost 9% of the worker's main thread)
        self._statistics: Batches[ExecutionRecord] = Batches(
            "nexus-statistics", self._record, linger_s=STATISTICS_LINGER_S
        )
        self.watch = InputWatch(app, metrics)
        self.gc = GcEpochs(GcSettings.of(settings))
        self.heap = HeapTrim(settings.malloc_trim_interval_s, slow_s=settings.loop_stall_warn_ms / 1000)
        #: the input topics whose partitions `watch` looks after (the pattern agent's too)
        self.input_topics = {settings.topic(spec.name) for spec in INPUT_TOPICS}

    def in_analysis_process(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run igraph work in a separate process: in a thread it would hold the GIL (and stall the
        event loop) for whole C calls. Called from a worker thread, so it may block."""
        if self._analysis_pool is None:
            self._analysis_pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
        return self._analysis_pool.submit(fn, *args, **kwargs).result()

    async def rebuild(self) -> None:
        """After recovery: the live graphs from the tables (the tables are the authority)."""
        started = time.perf_counter()
        await self.writer.drain(REBUILD_DRAIN_S)  # flushes in flight land before the state is read
        self.exports.cancel_all()
        self.writer.reset()
        self.journal.forget()
        self.window.forget()
        service = self.service
        service.reset()
        stores = stores_of(self.tables.state)
        for partition in self._active_partitions(stores.partitions()):
            migrated = False
            for stored_key, raw in stores.items(partition):
                current = current_key(stored_key)
                if current != stored_key:  # kept by 0.1.0: rewritten under its current key
                    self.writer.put(partition, current, raw)
                    self.writer.put(partition, stored_key, None)
                    migrated = True
                self._load(current, raw, partition)
            if migrated:
                self.writer.seal(partition)
        service.loaded()
        for partition, keys in self.window.loaded().items():  # a smaller NEXUS_REQUEST_RETENTION_COUNT
            for key in keys:
                self.writer.put(partition, key, None)
            self.writer.seal(partition)
        self._resume_sent.clear()
        self.gc.settle()  # the rebuilt graphs are long-lived: no later collection walks them
        log.info(
            "graphs rebuilt in %.2fs: %d namespaces, %d relationships, %d remembered requests, "
            "%d messages in the journal",
            time.perf_counter() - started,
            len(service.graphs),
            sum(len(g) for g in service.graphs.values()),
            len(self.window),
            len(self.journal),
        )

    def _active_partitions(self, stored: list[int]) -> list[int]:
        """The stored partitions this worker owns (the others are standby copies, kept up to date
        by Faust for a fail-over, not served)."""
        topics = {self.topic_names[spec] for spec in (RELATIONSHIPS, QUERIES, EXECUTIONS)}
        actives = {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic in topics}
        return [partition for partition in stored if partition in actives]

    def _partitions_of(self, namespace: str) -> Iterable[int]:
        return self.service.partitions_of(namespace)

    def _load(self, stored_key: bytes, raw: bytes, partition: int) -> None:
        kind, _, key = stored_key.decode().partition(SEP)
        if kind == JOURNAL_KIND:
            self.journal.load(partition, stored_key, raw)
            return
        if kind == Kind.REQUEST:
            self.window.load(partition, stored_key, remembered_of(raw).result.processed_at.timestamp())
            self.service.note_partition(key.partition(SEP)[0], partition)
            return
        service = self.service
        value = orjson.loads(raw)
        if kind != Kind.PROGRESS:  # every other kind's key starts with its namespace
            service.note_partition(key.partition(SEP)[0], partition)
        if kind == Kind.RECORD:
            service.load_record(key, value)
        elif kind == Kind.SCHEMA:
            if value is not None:
                service.load_schema(key, value)
        elif kind == Kind.PROGRESS:
            service.load_progress(int(key), int(value))
        elif kind == Kind.EXECUTION:
            service.executions.load(key, value)
        elif kind == Kind.SUBSCRIPTION:
            namespace, _, subscription_id = key.partition(SEP)
            service.load_subscription(namespace, subscription_id, value)

    async def publish(self, out: Outbound) -> asyncio.Future[Any]:
        """Hand a message to the producer; returns its delivery (resolved once the broker has it)."""
        # straight to the producer: Faust's Topic.send adds a message future, sensors and
        # serializer lookups per message, a good part of a reply's cost (the state table's writes
        # still go through Faust, and feed the send metrics)
        return cast(
            "asyncio.Future[Any]",
            await self.app.producer.send(
                self.topic_names[out.spec], out.key, out.value, out.partition, None, list(out.headers.items())
            ),
        )

    async def publish_all(self, outbound: list[Outbound], event: Any) -> None:
        """Publish a reply's messages; acknowledge `event` once the broker has every one of them
        (without waiting here): Faust commits acknowledged offsets without waiting for the
        producer, so an earlier acknowledgement could let a crash lose a committed request's
        result. A message that cannot be delivered leaves the event unacknowledged: it is
        processed again after a restart (its result is remembered, so the same one)."""
        deliveries = [await self.publish(out) for out in outbound]
        if event is None:
            return
        if not deliveries:
            event.ack()
            return
        waiting = len(deliveries)

        def delivered(delivery: asyncio.Future[Any]) -> None:
            nonlocal waiting
            if delivery.cancelled() or delivery.exception() is not None:
                if waiting > 0:
                    waiting = 0
                    reason = "cancelled" if delivery.cancelled() else delivery.exception()
                    log.error(
                        "a message of offset %s not delivered (%s); left unacknowledged",
                        event.message.offset,
                        reason,
                    )
                return
            waiting -= 1
            if waiting == 0:
                event.ack()

        for delivery in deliveries:
            delivery.add_done_callback(delivered)

    def _stage(self, reply: Reply, partition: int) -> None:
        """A reply's state writes into its partition's open cycle: the remembered reply, the
        records it changed, and what else it keeps (see Kind)."""
        put = self.writer.put
        if reply.remembered is not None:
            result = reply.remembered.result
            assert result.request_id is not None and result.namespace is not None
            request_key = state_key(Kind.REQUEST, result.namespace, result.request_id).encode()
            first = reply.outbound[0] if reply.outbound else None
            encoded = first.value if first is not None and first.spec is RESULTS else None
            put(partition, request_key, remembered_bytes(reply.remembered, encoded))
            for forgotten in self.window.admit(partition, request_key, result.processed_at.timestamp()):
                put(partition, forgotten, None)
        for change in reply.changes:
            rel = change.relationship
            key = state_key(Kind.RECORD, rel.key.as_stored(rel.namespace))
            put(partition, key.encode(), dumps(rel.to_record()) if isinstance(change, Put) else None)
        self.metrics.observe_changes(reply.changes)
        reply.changes = []  # written and counted: the reply waits for its flush without them
        if reply.schema is not None:
            namespace, document = reply.schema
            put(partition, state_key(Kind.SCHEMA, namespace).encode(), dumps(document))
        if reply.progress is not None:
            applied_partition, offset = reply.progress
            put(partition, state_key(Kind.PROGRESS, str(applied_partition)).encode(), str(offset).encode())
        if reply.execution_state is not None:
            execution_key, execution = reply.execution_state
            value = None if execution is None else dumps(execution)
            put(partition, state_key(Kind.EXECUTION, execution_key).encode(), value)
        for namespace, subscription_id, subscription in reply.subscriptions:
            value = None if subscription is None else dumps(subscription)
            put(partition, state_key(Kind.SUBSCRIPTION, namespace, subscription_id).encode(), value)

    async def complete(self, reply: Reply, started: float, seal: bool = True) -> None:
        """Stage a reply's state; its messages go out once that state is in the changelog: a
        client never sees a result whose effects a crash could still lose (the redelivered
        request then runs again). `seal`: flush now (else the caller seals the partition)."""
        assert reply.message is not None, "a reply to publish answers a message"
        partition = reply.message.partition
        self._stage(reply, partition)
        self.writer.attach(partition, (reply, started), sum(len(out.value) for out in reply.outbound))
        if (
            seal
            or self.writer.open_held(partition) >= SEAL_CYCLE_BYTES
            or (self.writer.open_bytes(partition) >= MAX_CYCLE_BYTES // 2)
        ):
            self.writer.seal(partition)

    def _before_write(self, partition: int, cycle: Cycle) -> None:
        """A cycle about to be sent gets its journal record, and deletes the records committed."""
        record = self.journal.record(partition, answered(reply for reply, _ in cycle.replies))
        if record is not None:
            cycle.writes[record[0]] = record[1]
        for key in self.journal.committed(partition, self._committed):
            cycle.writes[key] = None

    def _committed(self, topic: str, partition: int) -> int | None:
        """The group's committed offset (the next to read) of an input partition, as Faust has it."""
        committed = cast(Any, self.app.consumer)._committed_offset  # noqa: SLF001
        offset: int | None = committed.get(TP(topic, partition))
        return offset

    async def _send_state(self, builder: Any, partition: int) -> int:
        """One record batch to the state changelog's `partition`; its base offset."""
        producer = cast(Any, self.app.producer)._producer  # noqa: SLF001 - aiokafka's, for send_batch
        topic = self.tables.state.changelog_topic.get_topic_name()
        delivery = await producer.send_batch(builder, topic, partition=partition)
        return int((await delivery).offset)

    async def _publish_cycle(self, items: list[tuple[Reply, float]]) -> None:
        """A flushed cycle's messages, a record batch per topic partition (streams/outbox.py)."""
        try:
            await self.outbox.publish(
                (reply.outbound, reply.message.token if reply.message is not None else None)
                for reply, _ in items
            )
        except Exception:  # its messages stay unacknowledged: processed again after a restart
            log.exception("the messages of %d replies were not published", len(items))
            return
        for reply, started in items:
            try:
                self._after_publish(reply, started)
            except Exception:
                log.exception("after publishing %s", _where(reply))

    async def _finish(self, reply: Reply, started: float) -> None:
        await self.publish_all(reply.outbound, reply.message.token if reply.message is not None else None)
        self._after_publish(reply, started)

    def _after_publish(self, reply: Reply, started: float) -> None:
        if reply.on_published is not None:
            reply.on_published()
        if reply.wake_at is not None:
            self.schedule_resume(*reply.wake_at)
        if reply.execution_stats is not None:
            self.count_execution(reply.execution_stats)
        if reply.message is not None:
            self.metrics.observe(reply.message.spec, reply, time.perf_counter() - started)
            log_reply(reply.message.spec, reply.result, reply.outbound)  # observability: failure lines

    async def run_deferred(self, reply: Reply, started: float) -> None:
        assert reply.deferred is not None
        try:
            value = await asyncio.to_thread(reply.deferred.work)
            error: BaseException | None = None
        except Exception as exc:  # reported as the query's error result
            value, error = None, exc
        for done in reply.deferred.finish(value, error):
            await self.complete(done, started)

    async def process(self, stream: faust.StreamT[bytes]) -> None:
        """The agent's stream: empty while the batch consumer hands these topics to
        `handle_batch`; kept so that Faust subscribes to them (and as the fallback path)."""
        manual_acks = cast(Any, stream).noack()
        event: EventT[bytes]
        async for event in manual_acks.events():
            msg = event.message
            self.watch.received(msg)
            self.watch.busy += 1
            try:
                await self.handle_message(self.by_name[msg.topic], msg, event, time.perf_counter())
                self.writer.seal(msg.partition)
            except Exception as exc:  # whatever a message provokes ends as its outcome
                await self.fail(event, msg, exc)
            finally:
                self.watch.busy -= 1

    async def handle_batch(self, tp: Any, messages: list[Any]) -> None:
        """The records one fetch returned for one input partition, in offset order: each handled,
        then their state flushed as one cycle (streams/writer.py)."""
        spec = self.by_name[tp.topic]
        consumer = cast(Any, self.app.consumer)
        watch = self.watch
        watch.busy += 1
        try:
            for msg in messages:
                if not consumer.flow_active:
                    # a rebalance or a stop is handing the partitions over: the rest of the batch
                    # is left to the next owner (handled here after the hand-over's commit, its
                    # state would land behind the next owner's rebuild)
                    break
                watch.received(msg)
                if consumer.handled(tp, msg.offset):
                    # fetched once before a seek to the committed offset and once after it: its
                    # reply is out or on its way (and acknowledges the offset); handled again, the
                    # request was answered twice
                    continue
                token = batch_consumer.MessageToken(consumer, msg)
                try:
                    await self.handle_message(spec, msg, token, time.perf_counter())
                except Exception as exc:  # whatever a message provokes ends as its outcome
                    await self.fail(token, msg, exc)
                # a full open cycle (complete() sealed it) waits for the flush in flight: a fetch
                # of batch commands otherwise piled up its replies' state and messages unflushed
                await self.writer.wait_room(tp.partition, SEAL_CYCLE_BYTES)
            self.writer.seal(tp.partition)
            if self.writer.pending() > MAX_PENDING_REPLIES:
                await self.writer.wait_flushed(tp.partition)  # the broker is slower: hold the input
        finally:
            watch.busy -= 1

    async def fail(self, token: Any, msg: Any, exc: Exception) -> None:
        """A message whose handling raised what no handler caught: its `internal_error` result
        (when it has a request id), an `error` event and a dead letter, then the next message.
        If even that cannot be published, the message stays unacknowledged (read again after a
        restart) and the agent goes on."""
        log.error("internal error on %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, exc, exc_info=exc)
        started = time.perf_counter()
        received = Received(
            self.by_name[msg.topic],
            msg.topic,
            msg.partition,
            msg.offset,
            msg.key,
            msg.value,
            token=token,
            headers=msg.headers,
        )
        try:
            result, outbound = unforeseen(received, exc, self.service.clock())
            await self.complete(Reply(received, outbound, result=result), started)
        except Exception:
            log.exception("internal error of %s[%d]@%d not published", msg.topic, msg.partition, msg.offset)

    async def handle_message(self, spec: TopicSpec, msg: Any, token: Any, started: float) -> None:
        received = Received(
            spec=spec,
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key=msg.key,
            value=msg.value,
            token=token,
            headers=msg.headers or (),
        )
        journaled = self.journal.replay(msg.topic, msg.partition, msg.offset)
        if journaled is not None:  # applied before a crash: publish what it published then
            await self.complete(Reply(received, journaled, replayed=True), started, seal=False)
            return
        admission = self.gate.admit(received)
        if admission.denied is not None:  # refused (docs/security.md): answered, no effect
            replies = [admission.denied]
            if spec is RELATIONSHIPS:
                self.service.load_progress(received.partition, received.offset)
        else:
            patterns = await self.prefetch(received) if spec is EXECUTIONS else None
            if patterns is not None:
                patterns.grant = admission.grant
            elif spec is QUERIES and admission.grant is not None:  # a subscription keeps its scopes
                patterns = PatternLookup(grant=admission.grant)
            replies = self.service.handle(received, patterns)
        for reply in replies:
            await self.dispatch(reply, started, seal=False)
        if spec is RELATIONSHIPS:
            for reply in self.service.release_parked(received.partition):
                await self.dispatch(reply, started, seal=False)

    async def dispatch(self, reply: Reply, started: float, seal: bool = True) -> None:
        if reply.export is not None:
            await self.start_export(reply.export, started)
            return
        if reply.deferred is None:
            await self.complete(reply, started, seal)
            return
        task = asyncio.create_task(self.run_deferred(reply, started))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def start_export(self, plan: ExportPlan, started: float) -> None:
        """Snapshot the namespace's records now, between two messages of its partition, and
        stream them back in chunks while the partition goes on (streams/export.py)."""
        refused = self.exports.refuse(plan)
        if refused is not None:
            reply = Reply(plan.msg, [result_message(refused)], namespace=plan.namespace, result=refused)
            await self.complete(reply, started, seal=False)
            return
        items = take_snapshot(self.writer, stores_of(self.tables.state), plan.partitions, plan.namespace)
        self.exports.start(plan, items)

    async def _publish_export(self, result: Result, message: Outbound, plan: ExportPlan, last: bool) -> None:
        """One chunk of an export, published after the state of its partition's open cycle (so
        after the state it shows); the last one acknowledges the export's message."""
        published = asyncio.get_running_loop().create_future()

        def done() -> None:
            if not published.done():
                published.set_result(None)

        reply = Reply(
            plan.msg if last else None,
            [message],
            namespace=plan.namespace,
            result=result if last else None,
            on_published=done,
        )
        partition = plan.msg.partition
        self.writer.attach(partition, (reply, time.perf_counter()))
        self.writer.seal(partition)
        await published

    async def prefetch(self, received: Received) -> PatternLookup:
        """The patterns an execution message needs (its pattern and those it includes), fetched
        from the cache or Redis before the message is handled (handling is synchronous)."""
        wanted = self._pattern_wanted(received)
        lookup = PatternLookup()
        if not wanted:
            return lookup
        system = self.system_patterns
        # no execution is answered before the shipped patterns are in the store (or the store
        # has been down this long: the execution then answers store_unavailable)
        await system.wait_ready(SYSTEM_PATTERNS_WAIT_S)
        try:
            for _ in range(self.settings.pattern_max_inclusion_depth + 2):
                following: list[tuple[str, int | None]] = []
                for pattern_id, version in wanted:
                    try:
                        pattern = await self.cache.fetch(self.store, pattern_id, version)
                    except NotFound:
                        if pattern_id not in system.ids or not await system.restore_if_missing():
                            continue  # the service answers not_found
                        try:
                            pattern = await self.cache.fetch(self.store, pattern_id, version)
                        except NotFound:
                            continue
                    lookup.add(pattern, latest=version is None)
                    following += [(i.pattern_id, i.version) for i in pattern.includes()]
                wanted = [ref for ref in following if ref[1] is None or ref not in lookup.by_version]
                if not wanted:
                    break
        except NexusError as exc:  # Redis down after retries: the execution answers store_unavailable
            return PatternLookup(error=exc)
        return lookup

    def _pattern_wanted(self, received: Received) -> list[tuple[str, int | None]]:
        try:
            data = received.data()
            namespace = (received.key or b"default").decode()
        except (Undecodable, UnicodeDecodeError):
            return []  # the service reports what is wrong with the message
        if data.get("action") == "resume":
            ref = self.service.executions.pattern_of(namespace, str(data.get("execution")))
            return [] if ref is None else [ref]
        version = data.get("version")
        if isinstance(data.get("pattern_id"), str):
            return [(data["pattern_id"], version if isinstance(version, int) else None)]
        return []

    def schedule_resume(self, namespace: str, request_id: str, at: datetime) -> None:
        delay_s = max(0.0, (at - self.service.clock()).total_seconds())
        self._resume_sent[(namespace, request_id)] = time.monotonic() + delay_s
        asyncio.get_running_loop().call_later(
            delay_s, lambda: self._spawn(self.send_resume(namespace, request_id))
        )

    def _forget_requests(self) -> None:
        """Remembered requests past the retention, and journal records whose offsets are
        committed, deleted (busy partitions do the latter in every flush: `_before_write`)."""
        touched = set()
        for partition, keys in self.window.expired(time.time()).items():
            for key in keys:
                self.writer.put(partition, key, None)
            touched.add(partition)
        for partition in self.journal.partitions():
            for key in self.journal.committed(partition, self._committed):
                self.writer.put(partition, key, None)
                touched.add(partition)
        for partition in touched:
            self.writer.seal(partition)

    async def register_system_patterns(self) -> None:
        """At start (a Faust task: it takes no arguments)."""
        await self.system_patterns.register_until_done()

    async def _restore_system_patterns(self) -> None:
        try:
            await self.system_patterns.restore_if_missing()
        except NexusError as exc:  # the store is down: the next check tries again
            log.warning("system patterns not checked: %s", exc.message)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def send_resume(self, namespace: str, request_id: str) -> None:
        """Wake a waiting execution through its partition, in order with the other commands."""
        self._resume_sent[(namespace, request_id)] = time.monotonic()
        await self.topics[EXECUTIONS].send(
            key=namespace.encode(),
            value=json.dumps(
                {
                    "request_id": f"resume:{request_id}:{int(time.time() * 1000)}",
                    "principal": "system",
                    "action": "resume",
                    "execution": request_id,
                }
            ).encode(),
        )

    def count_execution(self, stats: ExecutionStats) -> None:
        """Prometheus now; Redis in batches (`_record`): one round trip for every execution that
        finished while the previous batch was being written."""
        self.metrics.observe_execution(stats)
        self._statistics.put(
            ExecutionRecord(
                stats.pattern_id,
                stats.version,
                stats.status,
                stats.duration_ms,
                stats.error_code,
                stats.error_message,
                stats.execution_id,
            )
        )

    async def _record(self, batch: list[ExecutionRecord]) -> None:
        try:
            await self.store.record_executions(batch)
        except NexusError as exc:  # statistics must not fail the executions, which are committed
            log.warning("statistics of %d executions not recorded: %s", len(batch), exc.message)

    async def maintain(self) -> None:
        """Time out overdue parked queries; ask the owners of expired relationships to drop them;
        wake waiting executions whose time has come (after a restart, or if a wake-up was lost)."""
        try:
            await self._maintain()
        except Exception:  # the next tick tries again; a failed tick must not end the timer
            log.exception("maintenance failed")

    async def _maintain(self) -> None:
        self._forget_requests()
        if time.monotonic() - self._system_checked >= SYSTEM_PATTERNS_CHECK_S:
            self._system_checked = time.monotonic()
            self._spawn(self._restore_system_patterns())
        for reply in self.service.release_overdue():
            await self.complete(reply, time.perf_counter())
        collected = self.gc.maybe_end_epoch()
        if collected is not None:
            log.info("complete garbage collection (end of an epoch) in %.0f ms", collected * 1000)
        self.heap.maybe_trim()
        now = self.service.clock()
        self.metrics.executions_in_flight.set(len(self.service.executions.waiting))
        self.metrics.standing_subscriptions.set(len(self.service.subscriptions))
        # observability: graph size gauges (throttled inside) and consumer lag
        self.metrics.observe_graphs(self.service.graphs)
        await self.metrics.observe_consumer(self.app.consumer, self.app.monitor, self.by_name)
        await self.watch.check(self.input_topics, self.writer.pending())
        for namespace, request_id in self.service.waiting_due(now):
            sent = self._resume_sent.get((namespace, request_id))
            if sent is None or time.monotonic() - sent > 5.0:
                await self.send_resume(namespace, request_id)
        for namespace in self.service.namespaces_due(now):
            request_id = f"expire:{int(now.timestamp() * 1000)}"
            await self.topics[RELATIONSHIPS].send(
                key=namespace.encode(),
                value=json.dumps(
                    {"request_id": request_id, "principal": "system", "action": "expire"}
                ).encode(),
            )


class PatternActor:
    """Glue between Faust and `PatternRegistry`: pattern commands in order per pattern id."""

    def __init__(self, app: faust.App, settings: Settings, namespaces: NamespaceActor) -> None:
        self.settings = settings
        self.namespaces = namespaces
        self.store = namespaces.store
        self.cache = namespaces.cache
        self.request_log = TableRequestLog(namespaces.tables.pattern_requests, scope=REQUEST_SCOPE)
        self.registry = PatternRegistry(
            self.store,
            namespaces.policy,
            self.cache,
            self.request_log,
            PatternLimits(
                max_steps=settings.pattern_max_steps,
                max_document_bytes=settings.pattern_max_document_bytes,
                max_inclusion_depth=settings.pattern_max_inclusion_depth,
            ),
            max_nesting_depth=settings.max_nesting_depth,
        )
        self.topic = namespaces.topics[PATTERNS]

    async def process(self, stream: faust.StreamT[bytes]) -> None:
        manual_acks = cast(Any, stream).noack()
        event: EventT[bytes]
        watch = self.namespaces.watch
        async for event in manual_acks.events():
            msg = event.message
            watch.received(msg)
            watch.busy += 1
            try:
                await self.handle_event(event, msg)
            except Exception as exc:  # whatever a message provokes ends as its outcome
                await self.namespaces.fail(event, msg, exc)
            finally:
                watch.busy -= 1

    async def handle_event(self, event: EventT[bytes], msg: Any) -> None:
        started = time.perf_counter()
        received = Received(
            PATTERNS, msg.topic, msg.partition, msg.offset, msg.key, msg.value, event, msg.headers or ()
        )
        admission = self.namespaces.gate.admit(received)
        reply = admission.denied or await self.registry.handle(received, admission.grant)
        if reply.remembered is not None:
            self.request_log.put(reply.remembered)
        await self.namespaces._finish(reply, started)


async def follow_pattern_events(settings: Settings, cache: PatternCache) -> None:
    """Every worker reads the pattern events (from their end, all partitions, no group) and drops
    changed patterns from its cache, whichever worker applied the change."""
    # every event passes by, a few per execution: fetch in batches (up to 250 ms late) rather
    # than once per event, which cost the worker more than the invalidations are worth
    consumer = AIOKafkaConsumer(
        **kafka_options(settings),
        group_id=None,
        fetch_min_bytes=1 << 20,
        fetch_max_wait_ms=250,
    )
    await consumer.start()
    try:
        topic = settings.topic(EVENTS.name)
        await consumer._client.force_metadata_update()  # noqa: SLF001 - partitions before assigning
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            log.error("cannot follow %s (no partitions): pattern caches are invalidated locally only", topic)
            return
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        type_header, id_header = Header.EVENT_TYPE.value, Header.PATTERN_ID.value
        changes = (b"pattern_stored", b"pattern_deprecated", b"pattern_deleted")
        while True:
            # a batch load's events pass by in thousands: per fetch and by plain loops (getone
            # and a dict of each event's headers cost ~8% of the worker during a batch load)
            fetched = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in fetched.values():
                for record in records:
                    event_type = pattern_id = None
                    for name, value in record.headers or ():
                        if name == type_header:
                            event_type = value
                        elif name == id_header:
                            pattern_id = value
                    if pattern_id and event_type in changes:
                        cache.invalidate(pattern_id.decode())
    finally:
        await consumer.stop()


async def _install_runtime(app: faust.App, settings: Settings, metrics: Metrics) -> None:
    """Process-wide hygiene (nexus_streams/runtime.py, docs/observability.md)."""
    actor = cast(Any, app).nexus_actor
    # `kill -USR1`: where every task waits, and the consumer's partitions
    install_task_dump(partial(consumer_state, app), actor.watch.describe)
    actor.gc.install()
    LoopWatch(metrics.loop_lag.observe, warn_s=settings.loop_stall_warn_ms / 1000).start(
        asyncio.get_running_loop()
    )


def create_app(settings: Settings, metrics: Metrics | None = None) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=broker_urls(settings.kafka_bootstrap),
        broker_credentials=broker_credentials(settings),  # NEXUS_KAFKA_SECURITY_PROTOCOL, _SASL_*, _SSL_*
        store=settings.table_store,
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        processing_guarantee=settings.processing_guarantee,
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # a state cycle is one record batch (streams/writer.py); a dead letter carries a whole
        # message of the broker's default limit
        producer_max_request_size=STATE_MAX_MESSAGE_BYTES,
        table_standby_replicas=settings.standby_replicas,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        consumer_group_instance_id=settings.group_instance_id,
    )
    metrics = metrics or Metrics()
    app.sensors.add(metrics.faust_sensor())  # observability: nexus_kafka_* metrics
    store = RedisPatternStore.from_settings(settings)
    store.observer = metrics.observe_redis  # observability: nexus_redis_* metrics
    app.task(partial(store.watch_durability, metrics.observe_redis_durability))  # docs/operations.md
    cache = PatternCache(settings.pattern_cache_size)
    faust_stores.STORES.aliases.setdefault(MEMORY_STORE.split(":")[0], STORE_CLASS)
    actor = NamespaceActor(app, settings, metrics, store, cache)
    actor.tables.state.on_recover(actor.rebuild)
    # the namespace actor's input topics, a fetch at a time (streams/consumer.py)
    batch_consumer.install(app, frozenset(actor.inbound.topics), actor.handle_batch, member_file(settings))
    app.agent(actor.inbound, name="apply_namespace_commands")(actor.process)
    app.timer(interval=settings.maintenance_interval_s)(actor.maintain)
    patterns = PatternActor(app, settings, actor)
    app.agent(actor.topics[PATTERNS], name="apply_pattern_commands")(patterns.process)
    app.task(actor.register_system_patterns)
    app.task(partial(follow_pattern_events, settings, cache))
    app.task(partial(watch_waiting, settings, metrics.observe_deadletters_waiting))  # docs/deadletters.md
    app.task(partial(_install_runtime, app, settings, metrics))
    app.nexus_actor = actor  # type: ignore[attr-defined]
    app.nexus_patterns = patterns  # type: ignore[attr-defined]
    return app
