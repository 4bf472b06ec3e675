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

Offsets without records: a transactional producer's commit or abort marker takes an offset that is
never delivered as a record (nor, read_committed, are an aborted transaction's records). A marker in
the middle looks like a hole; one at the end leaves the partition below its high watermark for good.
So a first reading again is a *check*, quiet: a hole is checked at once, and a partition that is
behind although the consumer's position (which moves past markers) has reached the high watermark
is checked after `patience` still checks. If the records at the expected offset then arrive, they
had been passed over (the caller reports it); if the check delivers nothing new, the stretch holds
no records and is gone past (`Skip`): nothing is read again, nor reported, every few checks.

The rule: a partition whose next expected offset is below its high watermark, while its agent is
idle with nothing queued, is sought back to that offset: quietly as above, else (the consumer has
not reached the end either) when it has not moved for `patience` consecutive checks, and then
after twice as many each time. Pure: the caller observes Faust and Kafka, and seeks.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass


class Progress:
    """The next offset the agent expects in one input partition, not moving over holes."""

    __slots__ = ("expected", "hole", "recovered", "without_records", "_sought", "_start")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self._start = expected
        #: a record past `expected` arrived: records were skipped (or the stretch is a real gap)
        self.hole = False
        self._sought = False
        #: reading again delivered the record at `expected`: records had been passed over
        self.recovered = 0
        #: offsets found to hold no record for the agent (markers, aborted records, gaps)
        self.without_records = 0

    def received(self, offset: int) -> None:
        if offset < self.expected:
            return  # read again
        if self._sought:
            if offset == self.expected:
                self.recovered += 1
            else:  # the first record after reading again from `expected`: a real gap before it
                self.without_records += offset - self.expected
        elif offset > self.expected:
            self.hole = True  # stays at the first missing offset until it is read again
            return
        self.expected = offset + 1
        self.hole = False
        self._sought = False

    def skip(self, to: int) -> None:
        """Reading again from `expected` delivered nothing up to `to`: no records there."""
        if to > self.expected:
            self.without_records += to - self.expected
            self.expected = to
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
    #: the consumer's position: the offset of the next record it will hand out, past any marker
    #: (None: not asked, or not known)
    position: int | None = None


@dataclass(frozen=True, slots=True)
class Reseek:
    partition: Hashable
    offset: int
    highwater: int
    #: a check (see the module's docstring): report it only if it delivers records passed over
    quiet: bool = False


@dataclass(frozen=True, slots=True)
class Skip:
    """Reading again from `offset` delivered nothing: the stretch to `to` holds no records."""

    partition: Hashable
    offset: int
    to: int


class StallDetector:
    #: at most this many checks between two attempts on a partition that does not move
    MAX_WAIT = 64

    def __init__(self, patience: int = 3) -> None:
        if patience < 1:
            raise ValueError("patience must be at least 1")
        self.patience = patience
        #: per partition: what was last seen (expected, high watermark, hole), checks since it was
        #: first seen or last sought with the consumer short of the end, consecutive checks with
        #: it past the end, how many times it was sought loudly without moving (each doubles the
        #: wait), and whether it was checked quietly since it was first seen
        self._still: dict[Hashable, tuple[tuple[int, int, bool], int, int, int, bool]] = {}

    def check(self, partitions: Mapping[Hashable, PartitionView], idle: bool) -> list[Reseek | Skip]:
        """Call once per interval with every assigned input partition; `idle`: the agents are
        between messages and their queues are empty (else nothing is judged stalled)."""
        for gone in set(self._still) - set(partitions):
            del self._still[gone]
        actions: list[Reseek | Skip] = []
        for tp, view in partitions.items():
            if not (idle and view.expected is not None and view.highwater is not None):
                self._still.pop(tp, None)
                continue
            expected, highwater = view.expected, view.highwater
            if highwater <= expected:
                self._still.pop(tp, None)
                continue
            seen = (expected, highwater, view.hole)
            previous, count, passes, attempts, checked = self._still.get(tp, (None, 0, 0, 0, False))
            if previous != seen:
                count, passes, attempts, checked = 0, 0, 0, False
            passed = view.position is not None and view.position >= highwater and not view.hole
            # consecutive checks with the consumer past the end (a record it handed out just before
            # may still be on its way to the agent), and with it short of the end
            passes, count = (passes + 1, 0) if passed else (0, count + 1)
            if view.hole and not checked:
                actions.append(Reseek(tp, expected, highwater, quiet=True))
                count, checked = 0, True
            elif passes >= self.patience and checked:
                assert view.position is not None
                actions.append(Skip(tp, expected, view.position))
                del self._still[tp]
                continue
            elif passes >= self.patience:
                actions.append(Reseek(tp, expected, highwater, quiet=True))
                count, passes, checked = 0, 0, True
            elif not passed and count >= min(self.patience << attempts, self.MAX_WAIT):
                actions.append(Reseek(tp, expected, highwater))
                count, attempts = 0, attempts + 1
            self._still[tp] = (seen, count, passes, attempts, checked)
        return actions
