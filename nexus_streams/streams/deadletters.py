"""The dead-letter topics through Kafka: the operator's commands (list, show, redrive, discard) and
the worker's count of the dead letters waiting. What to do with each dead letter is decided in
nexus_streams/deadletters.py; docs/deadletters.md tells the whole story.

A redrive re-sends messages, then records each in `nexus.deadletter-handled`, so a dead letter
is re-sent once (at least once: a run stopped between the two re-sends those again). The records
are written in Kafka transactions of an id of the tool's own: starting a run fences an earlier one
still going, and the records it then reads (read_committed) are final, so two operators at once
re-send at most one batch twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import ProducerFenced

from nexus_streams.connection import kafka_options
from nexus_streams.deadletters import (
    KEPT_VALUE_BYTES,
    AmbiguousOffset,
    DeadLetter,
    Filters,
    NoSuchDeadLetter,
    Outcome,
    Report,
    Resend,
    Skip,
    TakenOver,
    WaitingTally,
    editable_text,
    edited_value,
    handled_record,
    parse_handled,
    parse_handled_key,
    plan,
)
from nexus_streams.domain.errors import ValidationFailed
from nexus_streams.messages import DeadLetterHandled, SourceRef
from nexus_streams.metrics import DEADLETTER_REASONS, INPUT_TOPICS
from nexus_streams.settings import Settings
from nexus_streams.topics import DEADLETTER, DEADLETTER_HANDLED, DEADLETTER_MAX_MESSAGE_BYTES, Header

log = logging.getLogger(__name__)

#: a read of the topics fails when nothing arrived for this long before their end
READ_STALL_S = 30.0
#: messages re-sent before their handled records are written (one transaction)
BATCH_SIZE = 50
#: the worker's count: dead letters tracked per partition (a byte each), the oldest forgotten first
WAITING_MAX_PER_PARTITION = 1_000_000
#: the worker's count: how often it is exported at most, and the partitions' start checked
WAITING_EXPORT_S = 1.0
WAITING_LOG_START_S = 60.0
#: the worker's count: the pause before reading again after a failure
WAITING_RETRY_S = 10.0


def _consumer(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **kafka_options(settings),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        # a dead letter may be 2 MiB; Kafka returns a larger one whole anyway
        max_partition_fetch_bytes=1024 * 1024,
        fetch_max_bytes=4 * 1024 * 1024,
    )


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - partitions before assigning
        parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise RuntimeError(f"topic {topic} does not exist; start a worker or run `nexus-streams topics`")
    return [TopicPartition(topic, p) for p in sorted(parts)]


def _letter(record: Any) -> DeadLetter:
    return DeadLetter(
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        key=record.key,
        value=record.value or b"",
        headers=tuple((k, v or b"") for k, v in record.headers or ()),
    )


class DeadLetterTopics:
    """`nexus.deadletter` and `nexus.deadletter-handled`, read from a start to the end they had
    when the read began (a command never chases what arrives meanwhile)."""

    def __init__(self, settings: Settings) -> None:
        self.deadletter_topic = settings.topic(DEADLETTER.name)
        self.handled_topic = settings.topic(DEADLETTER_HANDLED.name)
        self.consumer = _consumer(settings)
        self._tps: dict[str, list[TopicPartition]] = {}

    async def __aenter__(self) -> DeadLetterTopics:
        await self.consumer.start()
        try:  # both now: once partitions are assigned, the consumer's metadata covers only theirs
            self._tps = {
                topic: await _partitions(self.consumer, topic)
                for topic in (self.deadletter_topic, self.handled_topic)
            }
        except BaseException:
            await self.consumer.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.consumer.stop()

    async def handled(self) -> dict[tuple[int, int], DeadLetterHandled]:
        """What was done with each dead letter, by its (partition, offset)."""
        tps = self._tps[self.handled_topic]
        starts = await self.consumer.beginning_offsets(tps)
        found: dict[tuple[int, int], DeadLetterHandled] = {}
        async for record in self._read(starts, await self.consumer.end_offsets(tps)):
            ref, handled = parse_handled_key(record.key), parse_handled(record.value)
            if ref is not None and handled is not None:
                found[ref] = handled
        return found

    async def letters(self, filters: Filters) -> AsyncIterator[DeadLetter]:
        """The dead letters that match, in offset order per partition."""
        tps = self._tps[self.deadletter_topic]
        if filters.only is not None and filters.only[0] is not None:
            tps = [tp for tp in tps if tp.partition == filters.only[0]]
        starts = await self.consumer.beginning_offsets(tps)
        ends = await self.consumer.end_offsets(tps)
        if filters.only is not None:
            offset = filters.only[1]
            starts = {tp: max(start, offset) for tp, start in starts.items()}
            ends = {tp: min(end, offset + 1) for tp, end in ends.items()}
        elif filters.since_ms is not None:
            times = await self.consumer.offsets_for_times(dict.fromkeys(tps, filters.since_ms))
            starts = {tp: found.offset if found is not None else ends[tp] for tp, found in times.items()}
        async for record in self._read(starts, ends):
            letter = _letter(record)
            if filters.matches(letter):
                yield letter

    async def one(self, offset: int, partition: int | None = None) -> DeadLetter:
        found = [letter async for letter in self.letters(Filters(only=(partition, offset)))]
        if not found:
            where = f"partition {partition}" if partition is not None else "any partition"
            raise NoSuchDeadLetter(
                f"no dead letter at offset {offset} of {where} of {self.deadletter_topic} (its retention "
                "deletes old ones; `deadletter list` shows those there are)"
            )
        if len(found) > 1:
            partitions = ", ".join(str(letter.partition) for letter in found)
            raise AmbiguousOffset(
                f"offset {offset} is in partitions {partitions}: say which with --partition"
            )
        return found[0]

    async def _read(
        self, starts: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int]
    ) -> AsyncIterator[Any]:
        todo = {tp: end for tp, end in ends.items() if starts.get(tp, end) < end}
        consumer = self.consumer
        consumer.assign(list(todo))
        for tp in todo:
            consumer.seek(tp, starts[tp])
        progressed = time.monotonic()
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=500, max_records=500)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < todo.get(tp, -1):
                        yield record
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
                    consumer.pause(tp)
            if batch:
                progressed = time.monotonic()
            elif time.monotonic() - progressed > READ_STALL_S:
                raise TimeoutError(f"nothing read from {sorted(map(str, todo))} in {READ_STALL_S:.0f}s")


# -- list and show -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    letter: DeadLetter
    handled: DeadLetterHandled | None
    #: the value's size (the letter keeps only its start)
    size: int


@dataclass
class Listing:
    rows: list[Row]
    #: how many matched (`rows` holds the oldest `limit` of them)
    matched: int


async def list_deadletters(
    settings: Settings, filters: Filters, *, limit: int, waiting_only: bool
) -> Listing:
    """The oldest `limit` dead letters that match, oldest first, and how many matched."""
    heap: list[tuple[int, int, int, Row]] = []
    matched = 0
    async with DeadLetterTopics(settings) as topics:
        handled = await topics.handled()
        async for letter in topics.letters(filters):
            done = handled.get((letter.partition, letter.offset))
            if waiting_only and done is not None:
                continue
            matched += 1
            kept = dataclasses.replace(letter, value=letter.value[:KEPT_VALUE_BYTES])
            entry = (
                -letter.timestamp_ms,
                -letter.partition,
                -letter.offset,
                Row(kept, done, len(letter.value)),
            )
            if len(heap) < limit:
                heapq.heappush(heap, entry)
            elif limit and entry[:3] > heap[0][:3]:
                heapq.heapreplace(heap, entry)
    return Listing([entry[3] for entry in sorted(heap, key=lambda e: e[:3], reverse=True)], matched)


async def show_deadletter(
    settings: Settings, offset: int, partition: int | None
) -> tuple[DeadLetter, DeadLetterHandled | None]:
    async with DeadLetterTopics(settings) as topics:
        letter = await topics.one(offset, partition)
        return letter, (await topics.handled()).get((letter.partition, letter.offset))


# -- redrive and discard -----------------------------------------------------------------------


class _Writer:
    """What the redrive and discard commands write. The re-sent messages go out as plain records
    (a transaction would make them no more atomic for a worker reading read_uncommitted, the
    default: docs/deadletters.md, "Delivery"); the handled records as transactions of an id of the
    tool's own, so that starting a run fences an earlier one still going."""

    def __init__(self, settings: Settings, principal: str) -> None:
        self.handled_topic = settings.topic(DEADLETTER_HANDLED.name)
        self.deadletter_topic = settings.topic(DEADLETTER.name)
        self.principal = principal
        common: dict[str, Any] = {
            "enable_idempotence": True,
            "acks": "all",
            "max_request_size": DEADLETTER_MAX_MESSAGE_BYTES + 64 * 1024,
        }
        self.sender = AIOKafkaProducer(**kafka_options(settings), **common)
        self.recorder = AIOKafkaProducer(
            **kafka_options(settings), transactional_id=f"{settings.app_id}-deadletter-tool", **common
        )

    async def start(self) -> None:
        await self.recorder.start()  # fences an earlier run: its records are final once read
        await self.sender.start()

    async def stop(self) -> None:
        await self.sender.stop()
        await self.recorder.stop()

    async def resend(self, resends: list[Resend]) -> list[SourceRef]:
        """Re-send messages, then record each as redriven. A run stopped in between re-sends
        those messages again next time (at least once)."""
        producer = self.sender
        deliveries = [
            await producer.send(r.topic, r.value, key=r.letter.key, headers=list(r.headers)) for r in resends
        ]
        sent = [
            SourceRef(topic=m.topic, partition=m.partition, offset=m.offset)
            for m in await asyncio.gather(*deliveries)
        ]
        now = datetime.now(UTC)
        async with self._transaction(len(resends)):
            for resend, sent_to in zip(resends, sent, strict=True):
                await self._record(resend.letter, now, resend, sent_to)
        return sent

    async def discard(self, letters: list[DeadLetter]) -> None:
        now = datetime.now(UTC)
        async with self._transaction(0):
            for letter in letters:
                await self._record(letter, now)

    @contextlib.asynccontextmanager
    async def _transaction(self, resent: int) -> AsyncIterator[None]:
        try:
            async with self.recorder.transaction():
                yield
        except ProducerFenced:
            raise TakenOver(
                "another redrive or discard started and took over: this one stopped"
                + (f"; the last {resent} messages it re-sent may be re-sent again" if resent else "")
            ) from None

    async def _record(
        self,
        letter: DeadLetter,
        now: datetime,
        resend: Resend | None = None,
        sent_to: SourceRef | None = None,
    ) -> None:
        key, value, headers = handled_record(
            letter,
            deadletter_topic=self.deadletter_topic,
            principal=self.principal,
            now=now,
            resend=resend,
            sent_to=sent_to,
        )
        await self.recorder.send(
            self.handled_topic, value, key=key, partition=letter.partition, headers=headers
        )


@contextlib.asynccontextmanager
async def _writing(settings: Settings, principal: str, dry_run: bool) -> AsyncIterator[_Writer | None]:
    """The writer, started (which fences an earlier run before its records are read); None on a
    dry run."""
    if dry_run:
        yield None
        return
    writer = _Writer(settings, principal)
    await writer.start()
    try:
        yield writer
    finally:
        await writer.stop()


async def _selected(topics: DeadLetterTopics, filters: Filters) -> AsyncIterator[DeadLetter]:
    if filters.only is not None:
        yield await topics.one(filters.only[1], filters.only[0])
        return
    async for letter in topics.letters(filters):
        yield letter


async def _edit(resend: Resend, edit: Callable[[str], str | None]) -> Resend | Skip:
    """The editor runs in a thread: the clients' connections stay served meanwhile."""
    text = await asyncio.to_thread(edit, editable_text(resend.value))
    if text is None:
        return Skip.NOT_EDITED
    return dataclasses.replace(resend, value=edited_value(text), edited=True)


async def redrive(
    settings: Settings,
    filters: Filters,
    *,
    dry_run: bool = False,
    limit: int | None = None,
    edit: Callable[[str], str | None] | None = None,
    principal: str = "cli",
) -> Report:
    """Re-send the waiting dead letters that match to their original topics, `limit` at most.
    `edit` (one dead letter only) gets its value as text and returns the text to send, or None."""
    if edit is not None and filters.only is None:
        raise ValidationFailed("--edit takes one dead letter: name it by OFFSET (and --partition)")
    input_topics = frozenset(settings.topic(spec.name) for spec in INPUT_TOPICS)
    report = Report(dry_run)
    async with _writing(settings, principal, dry_run) as writer, DeadLetterTopics(settings) as topics:
        handled = await topics.handled()
        pending: list[Resend] = []
        async for letter in _selected(topics, filters):
            if limit is not None and report.chosen + len(pending) >= limit:
                break
            ref = (letter.partition, letter.offset)
            decision = plan(
                letter, handled.get(ref), input_topics=input_topics, redrive_max=settings.redrive_max
            )
            if isinstance(decision, Resend) and edit is not None:
                decision = await _edit(decision, edit)
            if isinstance(decision, Skip):
                named = filters.only is not None or decision is not Skip.HANDLED
                report.add(Outcome(letter, decision.value, letter.redrive_count), listed=named)
            elif writer is None:
                report.add(Outcome(letter, "would_resend", decision.count, edited=decision.edited))
            else:
                pending.append(decision)
                if len(pending) >= BATCH_SIZE:
                    await _flush(writer, pending, report)
        if writer is not None:
            await _flush(writer, pending, report)
    return report


async def _flush(writer: _Writer, pending: list[Resend], report: Report) -> None:
    if not pending:
        return
    for resend, sent_to in zip(pending, await writer.resend(pending), strict=True):
        report.add(Outcome(resend.letter, "resent", resend.count, sent_to, resend.edited))
    pending.clear()


async def discard(
    settings: Settings,
    filters: Filters,
    *,
    every: bool = False,
    dry_run: bool = False,
    principal: str = "cli",
) -> Report:
    """Mark the waiting dead letters that match as dealt with, without re-sending them; without a
    filter only when told `every`."""
    if not (filters.narrowed or every):
        raise ValidationFailed("discard takes an OFFSET or a filter (--since, --reason, --topic), or --all")
    report = Report(dry_run)
    async with _writing(settings, principal, dry_run) as writer, DeadLetterTopics(settings) as topics:
        handled = await topics.handled()
        chosen: list[DeadLetter] = []
        async for letter in _selected(topics, filters):
            if (letter.partition, letter.offset) in handled:
                report.add(Outcome(letter, Skip.HANDLED.value), listed=filters.only is not None)
            elif writer is None:
                report.add(Outcome(letter, "would_discard"))
            else:
                chosen.append(dataclasses.replace(letter, value=letter.value[:KEPT_VALUE_BYTES]))
                if len(chosen) >= BATCH_SIZE:
                    await _discard(writer, chosen, report)
        if writer is not None:
            await _discard(writer, chosen, report)
    return report


async def _discard(writer: _Writer, chosen: list[DeadLetter], report: Report) -> None:
    if chosen:
        await writer.discard(chosen)
    for letter in chosen:
        report.add(Outcome(letter, "discarded"))
    chosen.clear()


# -- the worker's count of what waits ------------------------------------------------------------


async def watch_waiting(settings: Settings, observe: Callable[[Mapping[tuple[str, str], int]], None]) -> None:
    """A worker task: read both topics from their start and follow them, counting the dead
    letters waiting by (topic, reason); `observe` gets the counts once the read reached the ends
    the topics had at start, then at most every WAITING_EXPORT_S. Every worker counts the whole
    topic (a dashboard takes the `max` over workers). A failure is logged and the read starts over."""
    if not settings.deadletter_watch:
        return
    while True:
        try:
            await _watch(settings, observe)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the count must not stop the worker; start over
            log.warning("counting the dead letters waiting failed (%r); again in %.0fs", exc, WAITING_RETRY_S)
        await asyncio.sleep(WAITING_RETRY_S)


async def _watch(settings: Settings, observe: Callable[[Mapping[tuple[str, str], int]], None]) -> None:
    deadletter_topic = settings.topic(DEADLETTER.name)
    tally = WaitingTally(
        {settings.topic(spec.name): spec.name for spec in INPUT_TOPICS},
        frozenset(DEADLETTER_REASONS),
        WAITING_MAX_PER_PARTITION,
    )
    consumer = _consumer(settings)
    await consumer.start()
    try:
        letters = await _partitions(consumer, deadletter_topic)
        tps = letters + await _partitions(consumer, settings.topic(DEADLETTER_HANDLED.name))
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        caught_up, exported, started_checked = False, 0.0, time.monotonic()
        while True:
            batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
            for tp, records in batch.items():
                _feed(tally, tp.topic == deadletter_topic, records)
            if not caught_up:
                caught_up = all([await consumer.position(tp) >= end for tp, end in ends.items()])
            if caught_up and time.monotonic() - started_checked >= WAITING_LOG_START_S:
                started_checked = time.monotonic()
                for tp, start in (await consumer.beginning_offsets(letters)).items():
                    tally.log_start(tp.partition, start)
            if caught_up and time.monotonic() - exported >= WAITING_EXPORT_S:
                exported = time.monotonic()
                observe(tally.waiting())
    finally:
        await consumer.stop()


def _feed(tally: WaitingTally, letters: bool, records: list[Any]) -> None:
    if not letters:
        for record in records:
            ref = parse_handled_key(record.key)
            if ref is not None:
                tally.handled(*ref)
        return
    for record in records:
        topic = code = None
        for key, value in record.headers or ():
            if key == Header.ERROR_CODE.value:
                code = (value or b"").decode(errors="replace")
            elif key == Header.SOURCE_TOPIC.value:
                topic = (value or b"").decode(errors="replace")
        tally.dead_letter(record.partition, record.offset, topic, code)
