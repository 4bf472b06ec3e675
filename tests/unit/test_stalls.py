"""The stall rule: which input partitions to read again, and from where."""

from __future__ import annotations

import pytest

from nexus_streams.stalls import PartitionView, Reseek, StallDetector

BEHIND = PartitionView(expected=10, highwater=60)


def test_a_partition_behind_and_still_for_patience_checks_is_read_again_from_expected() -> None:
    detector = StallDetector(patience=3)
    assert detector.check({"t[0]": BEHIND}, idle=True) == []
    assert detector.check({"t[0]": BEHIND}, idle=True) == []
    assert detector.check({"t[0]": BEHIND}, idle=True) == [Reseek("t[0]", 10, 60)]


def test_after_a_reseek_it_waits_as_long_again() -> None:
    detector = StallDetector(patience=2)
    results = [detector.check({"t[0]": BEHIND}, idle=True) for _ in range(6)]
    assert [len(r) for r in results] == [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize(
    "views",
    [
        # moving: a different expected offset at each check
        [PartitionView(10, 60), PartitionView(11, 60), PartitionView(12, 60)],
        # new messages arriving while the agent keeps up is movement too
        [PartitionView(10, 60), PartitionView(10, 61), PartitionView(10, 62)],
    ],
)
def test_a_moving_partition_is_not_stalled(views: list[PartitionView]) -> None:
    detector = StallDetector(patience=3)
    assert [detector.check({"t[0]": v}, idle=True) for v in views] == [[], [], []]


@pytest.mark.parametrize(
    "view",
    [
        PartitionView(expected=60, highwater=60),  # caught up
        PartitionView(expected=None, highwater=60),  # where to start is not known
        PartitionView(expected=10, highwater=None),  # the end is not known
        PartitionView(expected=70, highwater=60),  # ahead of a stale high watermark
    ],
)
def test_nothing_to_read_or_not_known_is_never_stalled(view: PartitionView) -> None:
    detector = StallDetector(patience=1)
    assert [detector.check({"t[0]": view}, idle=True) for _ in range(3)] == [[], [], []]


def test_a_busy_agent_resets_the_count() -> None:
    detector = StallDetector(patience=2)
    assert detector.check({"t[0]": BEHIND}, idle=True) == []
    assert detector.check({"t[0]": BEHIND}, idle=False) == []  # working: not stalled
    assert detector.check({"t[0]": BEHIND}, idle=True) == []
    assert detector.check({"t[0]": BEHIND}, idle=True) == [Reseek("t[0]", 10, 60)]


def test_partitions_are_judged_apart_and_forgotten_when_unassigned() -> None:
    detector = StallDetector(patience=2)
    other = PartitionView(expected=5, highwater=5)
    assert detector.check({"t[0]": BEHIND, "t[1]": other}, idle=True) == []
    assert detector.check({"t[1]": other}, idle=True) == []  # t[0] revoked: its count is dropped
    assert detector.check({"t[0]": BEHIND, "t[1]": other}, idle=True) == []
    assert detector.check({"t[0]": BEHIND, "t[1]": other}, idle=True) == [Reseek("t[0]", 10, 60)]


def test_patience_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="patience"):
        StallDetector(patience=0)
