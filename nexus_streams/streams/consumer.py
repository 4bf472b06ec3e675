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
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, Message
from mode.utils.queues import ThrowableQueue

from nexus_streams.streams.admin import remember_member

log = logging.getLogger(__name__)

BatchHandler = Callable[[TP, list[Message]], Awaitable[None]]

#: the longest a rebalance waits for the messages in hand (their cycles' flushes and deliveries)
HAND_OVER_S = 10.0
SETTLE_POLL_S = 0.01


class BatchConsumer(AIOKafkaConsumer):
    """Set `batch_handler` and `batch_topics` before the worker starts."""

    batch_handler: BatchHandler | None = None
    batch_topics: frozenset[str] = frozenset()
    #: how long a rebalance waits for the messages in hand to be acknowledged before it commits
    hand_over_s: float = HAND_OVER_S
    #: assigned partitions of `batch_topics` not yet sought to their committed offsets
    _unsought: set[TP] = frozenset()  # type: ignore[assignment]
    #: per partition, the offset of the last seek to the committed offsets, until its first fetch
    _sought: dict[TP, int] = {}  # noqa: RUF012 - replaced per instance by each seek
    #: where the group member id is kept, for the next run after a crash (admin.leave_for_previous_run)
    member_path: Path | None = None
    _member_id: str | None = None
    #: per batch partition, the offsets whose handling started and whose acknowledgement is to come
    _pending: dict[TP, set[int]]

    def __post_init__(self) -> None:
        super().__post_init__()
        self._pending = {}

    def handled(self, tp: TP, offset: int) -> bool:
        """Whether the message at `offset` was handled in this assignment already: its handling
        started and its acknowledgement is to come, or it is acknowledged (or committed)."""
        committed = self._committed_offset.get(tp)
        return (
            (committed is not None and offset < committed)
            or offset in self._acked_index.get(tp, ())
            or offset in self._pending.get(tp, ())
        )

    def track_message(self, message: Message) -> None:
        super().track_message(message)
        if message.topic in self.batch_topics:
            self._pending.setdefault(message.tp, set()).add(message.offset)

    def ack(self, message: Message) -> bool:
        pending = self._pending.get(message.tp)
        if pending is not None:
            pending.discard(message.offset)
        return bool(super().ack(message))

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Commit what was acknowledged before Faust forgets it. Faust drops the acknowledgements
        of revoked partitions not yet committed (up to its commit interval's worth) before it waits
        for the streams and commits, so each rebalance (and with the eager protocol every member
        revokes everything) had the next owner process those messages again: a second result for
        each. Here the flow stops, the messages in hand finish (bounded by `hand_over_s`), and
        their offsets are committed first."""
        if revoked and self.batch_handler is not None:
            self.stop_flow()
            await self.settle(revoked, self.hand_over_s)
            await self.commit_now()
        await super().on_partitions_revoked(revoked)
        for tp in revoked:  # as Faust forgets their acknowledgements
            self._pending.pop(tp, None)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        """Until Faust has sought the new assignment to the committed offsets, what a fetch returns
        comes from wherever the consumer stood: handled then, it was handled again after the seek
        (a second result each), and its acknowledgements, taken before Faust knew the committed
        offset, could hold the partition's commits back."""
        self._unsought = {tp for tp in assigned if tp.topic in self.batch_topics}
        self._remember_member()
        await super().on_partitions_assigned(assigned, generation_id)

    def _remember_member(self) -> None:
        if self.member_path is None:
            return
        try:
            kafka: Any = self._thread._consumer  # noqa: SLF001 - the member id has no public accessor
            member_id = kafka._coordinator.member_id  # noqa: SLF001
            if member_id and member_id != self._member_id:
                remember_member(self.member_path, member_id)
                self._member_id = member_id
        except Exception as exc:  # only a restart after a crash waits longer
            log.warning("could not keep the group member id in %s: %r", self.member_path, exc)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        self._unsought = set()
        # where each partition was sought to (Faust's read offset is now the committed one)
        self._sought = {
            tp: offset
            for tp, offset in self._read_offset.items()
            if offset is not None and tp.topic in self.batch_topics
        }

    async def wait_empty(self) -> None:
        """A graceful stop: the messages in hand finish (their cycles flushed, their results
        delivered) before the last commit. Faust's own wait ends at once when the consumer is
        already stopping, and what the worker then published after the commit was processed
        again, and answered a second time, by the partition's next owner."""
        if self.batch_handler is not None:
            await self.settle(None, self.hand_over_s)
            await self.commit_now()
        await super().wait_empty()

    async def commit_now(self) -> None:
        """Commit every acknowledged offset now. `commit` returns without committing when another
        commit is under way (the periodic one, started before the last acknowledgements): the
        second call commits what that one did not."""
        try:
            for _ in range(2):
                await self.commit()
        except Exception as exc:  # the next owner reads them again: a second, identical result
            log.warning("commit before a hand-over failed: %r", exc)

    async def settle(self, partitions: set[TP] | None, timeout_s: float) -> bool:
        """Wait until no message (of `partitions`, None: any) awaits its acknowledgement; False on
        timeout."""
        deadline = time.monotonic() + timeout_s
        while any(
            (partitions is None or message.tp in partitions) and not message.acked
            for message in self._unacked_messages
        ):
            if time.monotonic() >= deadline:
                waiting = sorted(
                    (m.topic, m.partition, m.offset)
                    for m in self._unacked_messages
                    if (partitions is None or m.tp in partitions) and not m.acked
                )
                log.warning(
                    "hand-over: %d messages still unacknowledged after %.1fs, e.g. %s",
                    len(waiting),
                    timeout_s,
                    waiting[:10],
                )
                return False
            await asyncio.sleep(SETTLE_POLL_S)
        return True

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
            if not self.flow_active:  # as Faust does: read again from the committed offsets
                try:
                    await self.perform_seek()
                except Exception as exc:  # a rebalance under way (the next assignment seeks anyway)
                    log.info("seek to the committed offsets with the flow stopped: %r", exc)
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
        if tp in self._unsought:
            # read again once Faust has sought to the committed offset (where the group never
            # committed, its seek leaves the position alone: this seek keeps these records)
            await self.seek(tp, batch[0].offset)
            return
        sought = self._sought.pop(tp, None) if handler is not None else None
        if sought is not None and batch[0].offset > sought:
            # taken from the consumer before the seek but handed over after it: the records from
            # `sought` on come again (or, if there is a real gap there, this batch once more)
            await self.seek(tp, sought)
            return
        if active is not None and tp not in active and tp not in self._buffered_partitions:
            await self.seek(tp, batch[0].offset)  # paused meanwhile: fetched again later
            return
        messages = await self._accept(tp, batch)
        if not messages:
            return
        # read, before they are handled: a seek meanwhile (a rebalance's recovery, a seek to the
        # committed offsets) moves the read offset back, and must stay. Set afterwards, it undid
        # that seek: the records fetched again from there were taken for read before and passed
        # over, a changelog's in the middle of a recovery (a standby rebuilt without them) and an
        # input partition's never acknowledged (its commits stopped behind them for good)
        last = messages[-1].offset
        self._read_offset[tp] = last
        if handler is not None:
            await handler(tp, messages)
        else:
            for message in messages:
                if self._read_offset.get(tp) != last:
                    break  # sought meanwhile: what is left comes again from where the seek went
                await self.callback(message)

    async def _accept(self, tp: TP, batch: list[Any]) -> list[Message]:
        """The records past the partition's read offset, as messages (gaps noted, as Faust's loop
        does, so that commits can pass offsets without records). Not tracked yet: a message is
        pending from the moment its handling starts (`MessageToken`), so that the records of a
        batch cut short by a stop or a rebalance are read again instead of waited for."""
        read_offset = self._read_offset[tp]
        app = self.app
        app.monitor.track_tp_end_offset(tp, self.highwater(tp))
        to_message = self._to_message
        messages: list[Message] = []
        for record in batch:
            offset = record.offset
            if read_offset is not None and offset < read_offset:
                continue  # read before
            if read_offset and offset - read_offset > 1 and app.topics.acks_enabled_for(tp.topic):
                await self._add_gap(tp, read_offset + 1, offset)
            messages.append(to_message(tp, record))
            read_offset = offset
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()
        return messages


class ChangelogQueue(ThrowableQueue):  # type: ignore[type-arg]
    """Faust's queue of changelog records (recovery, standby replicas), emptied when a rebalance
    suspends the flow but not when the flow resumes.

    Faust empties it on every resume too, and resumes twice per assignment: the second time
    (after "Seek stream partitions to committed offsets") the records of the standby partitions
    read since the first were in it. They were dropped while their partitions read on past them,
    so a standby copy kept a hole; with `rocksdb://` its persisted offset went past the hole, and
    the partition, once active on that worker, was rebuilt without those records (lost
    relationships in test_rebalance). Nothing enters the queue while the flow is suspended, so
    what is in it at a resume was read from the current assignment's positions."""

    def clear(self) -> None:
        if self._flow_control.is_active():
            return  # a resume: keep what was read since the last one
        super().clear()


class MessageToken:
    """A message of a batch from the moment its handling starts: pending (Faust's bookkeeping, as
    a stream's event would be: a graceful stop or a rebalance waits for it) until `ack`."""

    __slots__ = ("consumer", "message")

    def __init__(self, consumer: Any, message: Any) -> None:
        self.consumer = consumer
        self.message = message
        message.tracked = True
        consumer.track_message(message)

    def ack(self) -> None:
        self.consumer.ack(self.message)


def install(app: Any, topics: frozenset[str], handler: BatchHandler, member_path: Path | None = None) -> None:
    """Make `app` use BatchConsumer for `topics` (before its consumer is created)."""
    transport = app.transport
    transport.Consumer = type("NexusBatchConsumer", (BatchConsumer,), {})
    transport.Consumer.batch_topics = topics
    transport.Consumer.batch_handler = staticmethod(handler)
    transport.Consumer.member_path = member_path
    app.tables._changelog_queue = ChangelogQueue(  # noqa: SLF001 - no public way to give Faust its queue
        maxsize=app.conf.stream_buffer_maxsize, flow_control=app.flow_control, clear_on_resume=True
    )
