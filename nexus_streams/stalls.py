"""Input partitions that stopped moving although they have messages: which to read again, from where.

Why: Faust's fetcher checks each fetched record against its set of active partitions, a set that
recovery pauses and resumes while a fetch is in flight on the consumer thread. A record that comes
back while its partition is momentarily out of the set is dropped, yet the Kafka consumer's position
has moved past it, so it is never fetched again (seen after a SIGKILL and restart: the first
redelivered batch vanished; tests/integration/test_crash.py). Processing is idempotent (requests
are remembered by request_id), so reading a stretch again is always safe; missing it is not.

A second trace of the same drop: when the next record Faust delivers is past the dropped ones,
Faust takes the stretch between for a gap (as transaction markers or compaction leave) and commits
past it. `Progress` therefore does not move over a hole: it stays at the first missing offset
until the partition has been read again from there; if the first record then is still past it, the
hole is real and accepted.

The rule: a partition whose next expected offset is below its high watermark, while its agent is
idle with nothing queued, is sought back to that offset: at once when a hole was seen, else when it
has not moved for `patience` consecutive checks. Pure: the caller observes Faust and Kafka, and
seeks.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass


class Progress:
    """The next offset the agent expects in one input partition, not moving over holes."""

    __slots__ = ("expected", "hole", "_sought", "_start")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self._start = expected
        #: a record past `expected` arrived: records were skipped (or the stretch is a real gap)
        self.hole = False
        self._sought = False

    def received(self, offset: int) -> None:
        if offset < self.expected:
            return  # read again
        if offset > self.expected and not self._sought:
            self.hole = True  # stays at the first missing offset until it is read again
            return
        # the next one, or the first record after reading again from `expected`: whatever lies
        # between is a real gap
        self.expected = offset + 1
        self.hole = False
        self._sought = False

    def rewind(self, first: int) -> None:
        """Reading started at `first` (the committed offset, learnt after the first record arrived,
        or the partition's first offset when the group never committed): a hole from there unless
        the first record received was that one."""
        if first < self._start:
            self.expected = self._start = first
            self.hole = True
            self._sought = False

    def sought(self) -> None:
        """The partition is being read again from `expected`."""
        self._sought = True


@dataclass(frozen=True, slots=True)
class PartitionView:
    """One input partition as the worker sees it at a check."""

    #: the next offset the agent should process: one past the last it received; when it has
    #: received nothing since the assignment, the committed offset, or the partition's first
    #: offset if the group never committed (None: not known yet)
    expected: int | None
    #: the partition's high watermark (offset of the next message to be written), None if unknown
    highwater: int | None
    #: records past `expected` arrived (see `Progress`): no need to wait `patience` checks
    hole: bool = False


@dataclass(frozen=True, slots=True)
class Reseek:
    partition: Hashable
    offset: int
    highwater: int


class StallDetector:
    #: at most this many checks between two attempts on a partition that does not move
    MAX_WAIT = 64

    def __init__(self, patience: int = 3) -> None:
        if patience < 1:
            raise ValueError("patience must be at least 1")
        self.patience = patience
        #: per partition: the view last seen, checks since it was first seen or last sought, and
        #: how many times it was sought without moving (each doubles the wait)
        self._still: dict[Hashable, tuple[PartitionView, int, int]] = {}

    def check(self, partitions: Mapping[Hashable, PartitionView], idle: bool) -> list[Reseek]:
        """Call once per interval with every assigned input partition; `idle`: the agents are
        between messages and their queues are empty (else nothing is judged stalled)."""
        for gone in set(self._still) - set(partitions):
            del self._still[gone]
        reseeks = []
        for tp, view in partitions.items():
            behind = (
                view.expected is not None and view.highwater is not None and view.highwater > view.expected
            )
            if not (idle and behind):
                self._still.pop(tp, None)
                continue
            previous, count, attempts = self._still.get(tp, (None, 0, 0))
            if previous != view:
                count, attempts = 0, 0
            count += 1
            wait = 1 if view.hole and attempts == 0 else min(self.patience << attempts, self.MAX_WAIT)
            if count >= wait:
                assert view.expected is not None and view.highwater is not None
                reseeks.append(Reseek(tp, view.expected, view.highwater))
                count, attempts = 0, attempts + 1
            self._still[tp] = (view, count, attempts)
        return reseeks
