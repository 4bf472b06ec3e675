"""Input partitions that stopped moving although they have messages: which to read again, from where.

Why: Faust's fetcher checks each fetched record against its set of active partitions, a set that
recovery pauses and resumes while a fetch is in flight on the consumer thread. A record that comes
back while its partition is momentarily out of the set is dropped, yet the Kafka consumer's position
has moved past it, so it is never fetched again (seen after a SIGKILL and restart: the first
redelivered batch vanished; tests/integration/test_crash.py). Processing is idempotent (requests
are remembered by request_id), so reading a stretch again is always safe; missing it is not.

The rule: a partition whose next expected offset is below its high watermark, while its agent is
idle with nothing queued, and that has not moved for `patience` consecutive checks, is sought back
to that offset. Pure: the caller observes Faust and Kafka, and seeks.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PartitionView:
    """One input partition as the worker sees it at a check."""

    #: the next offset the agent should process: one past the last it received, or the committed
    #: offset when it has received nothing since the assignment (None: not known yet)
    expected: int | None
    #: the partition's high watermark (offset of the next message to be written), None if unknown
    highwater: int | None


@dataclass(frozen=True, slots=True)
class Reseek:
    partition: Hashable
    offset: int
    highwater: int


class StallDetector:
    def __init__(self, patience: int = 3) -> None:
        if patience < 1:
            raise ValueError("patience must be at least 1")
        self.patience = patience
        self._still: dict[Hashable, tuple[PartitionView, int]] = {}

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
            previous, count = self._still.get(tp, (None, 0))
            count = count + 1 if previous == view else 1
            if count >= self.patience:
                assert view.expected is not None and view.highwater is not None
                reseeks.append(Reseek(tp, view.expected, view.highwater))
                count = 0  # and wait as long again before the next attempt
            self._still[tp] = (view, count)
        return reseeks
