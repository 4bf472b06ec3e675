"""The glue of nexus_streams/stalls.py: where each agent is in its input partitions, observed on
Faust and Kafka, and the seek when a partition stalled or skipped records."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import faust

from nexus_streams.metrics import Metrics
from nexus_streams.stalls import PartitionView, Progress, Reseek, Skip, StallDetector

log = logging.getLogger(__name__)

#: the longest a check waits for the consumer's position of one partition
POSITION_TIMEOUT_S = 1.0


class InputWatch:
    """Notes where each agent is in its input partitions, and reads a partition again when it
    stalls with unread messages or skipped some (the why and the rule: nexus_streams/stalls.py)."""

    def __init__(self, app: faust.App, metrics: Metrics, patience: int = 3) -> None:
        self.app = app
        self.metrics = metrics
        self.detector = StallDetector(patience)
        #: per partition: the consumer generation it was assigned in, and the agent's progress
        self._progress: dict[Any, tuple[int, Progress]] = {}
        #: per partition the group never committed: the generation and its first offset then
        self._earliest: dict[Any, tuple[int, int]] = {}
        #: partitions whose progress started at the first record received, with nothing committed:
        #: checked against the partition's first offset (records before it may have been dropped)
        self._unanchored: set[Any] = set()
        #: partitions being read again quietly to check them (see stalls.py), from which offset
        self._checking: dict[Any, int] = {}
        self.busy = 0

    def _current(self, tp: Any) -> Progress | None:
        generation, progress = self._progress.get(tp, (None, None))
        # seen before a rebalance: another worker may have gone on since
        return progress if generation == self.app.consumer_generation_id else None

    def _committed(self, tp: Any) -> int | None:
        committed: int | None = cast(Any, self.app.consumer)._committed_offset.get(tp)  # noqa: SLF001
        return committed  # (no public accessor)

    async def _first_offsets(self, partitions: list[Any]) -> dict[Any, int]:
        """Where reading starts in partitions the group never committed (the consumer starts at
        the earliest offset): asked once per assignment, the answer kept."""
        generation = self.app.consumer_generation_id
        known = {
            tp: self._earliest[tp][1] for tp in partitions if self._earliest.get(tp, (None,))[0] == generation
        }
        missing = [tp for tp in partitions if tp not in known]
        if missing:
            try:
                answer = await cast(Any, self.app.consumer).earliest_offsets(*missing)
            except Exception as exc:  # asked again at the next check
                log.debug("earliest offsets of %s: %r", missing, exc)
                answer = {}
            for tp, offset in answer.items():
                if offset is not None and offset >= 0:
                    self._earliest[tp] = (generation, offset)
                    known[tp] = offset
        return known

    def received(self, message: Any) -> None:
        progress = self._current(message.tp)
        if progress is None:
            # the first since the assignment: from the committed offset (records before this one
            # and after it were skipped), or from this one when the group never committed
            committed = self._committed(message.tp)
            progress = Progress(committed if committed is not None else message.offset)
            self._progress[message.tp] = (self.app.consumer_generation_id, progress)
            if committed is None:
                self._unanchored.add(message.tp)
            else:
                self._unanchored.discard(message.tp)
        progress.received(message.offset)

    def describe(self) -> str:
        app = self.app
        lines = [
            f"input watch: rebalancing={app.rebalancing} in_recovery={app.in_recovery} busy={self.busy} "
            f"generation={app.consumer_generation_id}"
        ]
        for tp, (generation, progress) in sorted(self._progress.items()):
            lines.append(
                f"  {tp.topic}[{tp.partition}] generation={generation} expected={progress.expected} "
                f"hole={progress.hole} highwater={cast(Any, app.consumer).highwater(tp)}"
            )
        return "\n".join(lines)

    def _anchor(self, assigned: list[Any]) -> list[Any]:
        """Partitions whose progress started with nothing committed: those with a committed offset
        now are rewound to it (Faust records the committed offsets only after its seek to them, so
        the first records of an assignment can arrive before); the others are returned."""
        unanchored = []
        for tp in assigned:
            progress = self._current(tp)
            if tp not in self._unanchored or progress is None:
                continue
            committed = self._committed(tp)
            if committed is None:
                unanchored.append(tp)
                continue
            progress.rewind(committed)
            self._unanchored.discard(tp)
        return unanchored

    async def check(self, topics: set[str], publishing: int = 0) -> None:
        """`publishing`: replies processed but not yet published (the agents are not idle)."""
        app, consumer = self.app, cast(Any, self.app.consumer)
        if app.rebalancing or app.in_recovery or not consumer.flow_active:
            return
        queued = sum(cast(Any, agent.channel).queue.qsize() for agent in app.agents.values())
        assigned = [tp for tp in consumer.assignment() if tp.topic in topics]
        unanchored = self._anchor(assigned)
        first = await self._first_offsets(
            [tp for tp in assigned if self._current(tp) is None and self._committed(tp) is None] + unanchored
        )
        for tp in unanchored:
            progress = self._current(tp)
            if tp in first and progress is not None:
                progress.rewind(first[tp])
                self._unanchored.discard(tp)
        views = {}
        for tp in assigned:
            progress = self._current(tp)
            expected: int | None
            if progress is not None:
                expected = progress.expected
            else:
                committed = self._committed(tp)
                expected = committed if committed is not None else first.get(tp)
            highwater = consumer.highwater(tp)
            known = highwater if highwater is not None and highwater >= 0 else None
            hole = progress is not None and progress.hole
            behind = expected is not None and known is not None and known > expected
            position = await self._position(tp) if behind and not hole else None
            views[tp] = PartitionView(expected, known, hole=hole, position=position)
        for action in self.detector.check(views, idle=self.busy == 0 and queued == 0 and publishing == 0):
            if isinstance(action, Skip):
                self._skip(action)
            else:
                await self._reseek(action)
        self._report(assigned)

    def _report(self, assigned: list[Any]) -> None:
        """What the reading again found: records passed over (a stall), offsets without records."""
        for gone in set(self._checking) - set(assigned):
            del self._checking[gone]
        for tp in assigned:
            progress = self._current(tp)
            if progress is None:
                continue
            checking = self._checking.get(tp)
            if progress.recovered and checking is not None:  # (a loud reseek was counted)
                log.warning(
                    "%s[%s] had records from offset %d on that the agent never received: read again",
                    tp.topic,
                    tp.partition,
                    checking,
                )
                self.metrics.reseeks.inc()
            progress.recovered = 0
            if checking is not None and progress.expected > checking:
                del self._checking[tp]
            if progress.without_records:
                self.metrics.offsets_without_records.inc(progress.without_records)
                progress.without_records = 0

    async def _position(self, tp: Any) -> int | None:
        """The consumer's position (past transaction markers), None when it cannot say now."""
        try:
            position = await asyncio.wait_for(cast(Any, self.app.consumer).position(tp), POSITION_TIMEOUT_S)
        except Exception as exc:  # asked again at the next check
            log.debug("position of %s: %r", tp, exc)
            return None
        return position if isinstance(position, int) else None

    def _skip(self, skip: Skip) -> None:
        tp = skip.partition
        log.debug(
            "%s[%s]: offsets %d..%d hold no records (transaction markers): going on from %d",
            tp.topic,  # type: ignore[attr-defined]
            tp.partition,  # type: ignore[attr-defined]
            skip.offset,
            skip.to - 1,
            skip.to,
        )
        self._checking.pop(tp, None)
        progress = self._current(tp)
        if progress is None:  # nothing received since the assignment: start from there
            progress = Progress(skip.to)
            self._progress[tp] = (self.app.consumer_generation_id, progress)
            self._unanchored.discard(tp)
            progress.without_records += skip.to - skip.offset
        else:
            progress.skip(skip.to)

    async def _reseek(self, reseek: Reseek) -> None:
        tp = reseek.partition
        if reseek.quiet:
            log.debug("%s[%s]: reading it again from %d to check it", tp.topic, tp.partition, reseek.offset)  # type: ignore[attr-defined]
            self._checking[tp] = reseek.offset
        else:
            log.warning(
                "%s[%s] stalled at offset %d below its high watermark %d: reading it again from there",
                tp.topic,  # type: ignore[attr-defined]
                tp.partition,  # type: ignore[attr-defined]
                reseek.offset,
                reseek.highwater,
            )
            self.metrics.reseeks.inc()
        progress = self._current(tp)
        if progress is not None:
            progress.sought()
        await cast(Any, self.app.consumer).seek(tp, reseek.offset)
