"""BatchConsumer's delivery of one fetch (streams/consumer.py): a seek while the records are handled
(a rebalance's recovery, a seek to the committed offsets) is not undone afterwards; and the
changelog queue keeps the records read when the flow resumes.

Undone, the records fetched again from the seek's offset were taken for read before and passed
over: a standby's changelog records in the middle of a recovery (the new owner rebuilt without
them, measured in test_rebalance), an input partition's messages never acknowledged."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

import faust
from faust.types import TP, Message
from mode.utils.queues import FlowControlEvent

from nexus_streams.streams.consumer import BatchConsumer, ChangelogQueue, install

CHANGELOG = TP("app-state-changelog", 3)
INPUT = TP("t.relationships", 3)


@dataclass
class Record:
    offset: int


class Fetching(BatchConsumer):
    """Only what `_deliver` touches: no Faust service, no broker."""

    def __init__(self, read_offset: dict[TP, int | None]) -> None:  # no super(): see the docstring
        self._read_offset = read_offset
        self._unsought = set()
        self._sought = {}
        self._buffered_partitions = set()
        self.delivered: list[int] = []
        self.seek_at: tuple[int, int] | None = None  # (while delivering this offset, seek here)

    async def _accept(self, tp: Any, batch: list[Any]) -> list[Any]:
        read = self._read_offset.get(tp)
        return [record for record in batch if read is None or record.offset > read]

    async def callback(self, message: Any) -> None:
        self._handled(CHANGELOG, message.offset)

    async def handle(self, tp: Any, messages: list[Any]) -> None:
        for message in messages:
            self._handled(tp, message.offset)

    def _handled(self, tp: TP, offset: int) -> None:
        self.delivered.append(offset)
        if self.seek_at is not None and self.seek_at[0] == offset:
            self._read_offset[tp] = self.seek_at[1]  # as Faust's seek / seek_wait do


async def test_deliver__seek_during_the_callbacks__kept_and_the_rest_left_for_the_next_fetch() -> None:
    consumer = Fetching({CHANGELOG: 80})
    consumer.seek_at = (82, 80)
    await consumer._deliver(CHANGELOG, [Record(o) for o in range(81, 161)], None, None)
    assert consumer.delivered == [81, 82]
    assert consumer._read_offset[CHANGELOG] == 80
    # the next fetch, from the seek's offset: every record is delivered again
    consumer.delivered.clear()
    consumer.seek_at = None
    await consumer._deliver(CHANGELOG, [Record(o) for o in range(81, 161)], None, None)
    assert consumer.delivered == list(range(81, 161))
    assert consumer._read_offset[CHANGELOG] == 160


async def test_deliver__seek_while_the_handler_runs__kept() -> None:
    consumer = Fetching({INPUT: 294})
    consumer.seek_at = (300, 294)
    await consumer._deliver(INPUT, [Record(o) for o in range(295, 304)], None, consumer.handle)
    assert consumer._read_offset[INPUT] == 294
    consumer.delivered.clear()
    consumer.seek_at = None
    await consumer._deliver(INPUT, [Record(o) for o in range(295, 304)], None, consumer.handle)
    assert consumer.delivered == list(range(295, 304))


async def test_deliver__no_seek__read_up_to_the_last_record() -> None:
    consumer = Fetching({INPUT: None})
    await consumer._deliver(INPUT, [Record(o) for o in range(5)], None, consumer.handle)
    assert consumer.delivered == [0, 1, 2, 3, 4]
    assert consumer._read_offset[INPUT] == 4


async def test_changelog_queue__kept_across_a_resume__emptied_by_a_rebalance() -> None:
    flow = FlowControlEvent()
    queue = ChangelogQueue(maxsize=10, flow_control=flow, clear_on_resume=True)
    flow.resume()
    queue.put_nowait(1)
    queue.put_nowait(2)
    flow.resume()  # Faust's second resume of an assignment: standby records read since the first
    assert queue.qsize() == 2
    flow.suspend()  # a rebalance: suspend, then clear every managed queue
    flow.clear()
    assert queue.qsize() == 0


async def test_changelog_queue__faust_uses_it() -> None:
    app = faust.App("test-changelog-queue", autodiscover=False)
    install(app, frozenset({"t.relationships"}), lambda tp, messages: asyncio.sleep(0))
    assert isinstance(cast(Any, app.tables).changelog_queue, ChangelogQueue)


def _message(topic: str, partition: int, offset: int) -> Message:
    return Message(topic, partition, offset, 0.0, 0, None, None, b"v", None)


async def test_handled__from_the_start_of_its_handling__until_committed() -> None:
    app = faust.App("test-handled", autodiscover=False)
    install(app, frozenset({INPUT.topic}), lambda tp, messages: asyncio.sleep(0))
    consumer = cast(Any, app.consumer)
    message = _message(INPUT.topic, INPUT.partition, 295)
    assert not consumer.handled(INPUT, 295)
    consumer.track_message(message)
    assert consumer.handled(INPUT, 295)  # its reply is on its way: a second copy is not handled
    assert not consumer.handled(INPUT, 296)  # never handled (a hole read again): handled then
    consumer.ack(message)
    assert not consumer._pending[INPUT]
    consumer._committed_offset[INPUT] = 300
    assert consumer.handled(INPUT, 299) and not consumer.handled(INPUT, 300)


async def test_handled__other_topics__not_kept() -> None:
    app = faust.App("test-handled-other", autodiscover=False)
    install(app, frozenset({INPUT.topic}), lambda tp, messages: asyncio.sleep(0))
    consumer = cast(Any, app.consumer)
    consumer.track_message(_message("t.patterns", 0, 7))
    assert consumer._pending == {}
