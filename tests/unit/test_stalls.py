"""The stall rule: which input partitions to read again, and from where."""

from __future__ import annotations

import pytest

from nexus_streams.stalls import PartitionView, Progress, Reseek, Skip, StallDetector

BEHIND = PartitionView(expected=10, highwater=60)


def test_a_partition_behind_and_still_for_patience_checks_is_read_again_from_expected() -> None:
    detector = StallDetector(patience=3)
    assert detector.check({"t[0]": BEHIND}, idle=True) == []
    assert detector.check({"t[0]": BEHIND}, idle=True) == []
    assert detector.check({"t[0]": BEHIND}, idle=True) == [Reseek("t[0]", 10, 60)]


def test_a_reseek_that_moves_nothing_doubles_the_wait_up_to_a_cap() -> None:
    detector = StallDetector(patience=2)
    results = [detector.check({"t[0]": BEHIND}, idle=True) for _ in range(2 + 4 + 8 + 16)]
    attempts = [i + 1 for i, r in enumerate(results) if r]
    assert attempts == [2, 2 + 4, 2 + 4 + 8, 2 + 4 + 8 + 16]
    assert StallDetector.MAX_WAIT == 64  # a partition ending in transaction markers is tried rarely


def test_movement_resets_the_wait() -> None:
    detector = StallDetector(patience=2)
    for _ in range(6):  # sought twice, now waiting 8 checks
        detector.check({"t[0]": BEHIND}, idle=True)
    moved = PartitionView(expected=11, highwater=60)
    assert [len(detector.check({"t[0]": moved}, idle=True)) for _ in range(2)] == [0, 1]


def test_a_hole_is_checked_quietly_at_the_first_idle_check_then_read_again_loudly() -> None:
    detector = StallDetector(patience=3)
    holed = PartitionView(expected=10, highwater=60, hole=True)
    assert detector.check({"t[0]": holed}, idle=False) == []
    # a transaction marker in the middle looks like this too: the check reports nothing by itself
    assert detector.check({"t[0]": holed}, idle=True) == [Reseek("t[0]", 10, 60, quiet=True)]
    # if that moved nothing, the partition is stalled: patience checks, then the wait doubles
    results = [detector.check({"t[0]": holed}, idle=True) for _ in range(3 + 6)]
    assert [i + 1 for i, r in enumerate(results) if r] == [3, 9]
    assert results[2] == [Reseek("t[0]", 10, 60)]


PASSED_END = PartitionView(expected=10, highwater=11, position=11)


def test_a_partition_ending_in_a_marker_is_checked_once_then_gone_past() -> None:
    """The consumer's position moved past the marker at 10, which no record will ever fill."""
    detector = StallDetector(patience=2)
    results = [detector.check({"t[0]": PASSED_END}, idle=True) for _ in range(4)]
    assert results == [[], [Reseek("t[0]", 10, 11, quiet=True)], [], [Skip("t[0]", 10, 11)]]
    # the check sought back to 10: until the consumer is past the end again, no skip
    sought = PartitionView(expected=10, highwater=11, position=10)
    detector = StallDetector(patience=2)
    detector.check({"t[0]": PASSED_END}, idle=True)
    assert detector.check({"t[0]": PASSED_END}, idle=True) == [Reseek("t[0]", 10, 11, quiet=True)]
    views = (sought, PASSED_END, sought, PASSED_END, PASSED_END)
    assert [detector.check({"t[0]": v}, idle=True) for v in views] == [[], [], [], [], [Skip("t[0]", 10, 11)]]


def test_a_consumer_that_did_not_reach_the_end_is_never_skipped_past() -> None:
    detector = StallDetector(patience=2)
    short = PartitionView(expected=10, highwater=60, position=30)
    results = [detector.check({"t[0]": short}, idle=True) for _ in range(6)]
    assert [r for r in results if r] == [[Reseek("t[0]", 10, 60)], [Reseek("t[0]", 10, 60)]]


def test_new_messages_after_a_marker_start_the_judgement_afresh() -> None:
    detector = StallDetector(patience=2)
    detector.check({"t[0]": PASSED_END}, idle=True)
    detector.check({"t[0]": PASSED_END}, idle=True)  # checked quietly
    later = PartitionView(expected=10, highwater=15, position=15)
    assert detector.check({"t[0]": later}, idle=True) == []
    assert detector.check({"t[0]": later}, idle=True) == [Reseek("t[0]", 10, 15, quiet=True)]


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


def test_progress_moves_one_by_one_and_ignores_records_read_again() -> None:
    progress = Progress(expected=5)
    for offset in (5, 6, 3, 7):
        progress.received(offset)
    assert (progress.expected, progress.hole) == (8, False)


def test_progress_stays_at_a_hole_until_read_again() -> None:
    progress = Progress(expected=5)
    progress.received(9)  # 5..8 skipped
    progress.received(10)
    assert (progress.expected, progress.hole) == (5, True)
    progress.sought()
    for offset in (5, 6, 7, 8, 9, 10, 11):  # read again from 5: the hole fills
        progress.received(offset)
    assert (progress.expected, progress.hole) == (12, False)


def test_progress_accepts_a_hole_still_there_after_reading_again() -> None:
    progress = Progress(expected=5)
    progress.received(9)
    progress.sought()
    progress.received(9)  # 5..8 do not exist (transaction markers, compaction): a real gap
    assert (progress.expected, progress.hole) == (10, False)


def test_progress_rewound_to_the_first_offset_reads_from_there() -> None:
    progress = Progress(expected=33)  # the first record received was 33; nothing committed
    progress.received(33)
    progress.rewind(0)  # the partition starts at 0: 0..32 were dropped on the way
    assert (progress.expected, progress.hole) == (0, True)
    progress.sought()
    for offset in range(35):
        progress.received(offset)
    assert (progress.expected, progress.hole) == (35, False)


def test_progress_rewound_to_where_it_started_has_no_hole() -> None:
    progress = Progress(expected=7)
    progress.received(7)
    progress.rewind(7)
    progress.rewind(9)
    assert (progress.expected, progress.hole) == (8, False)


def test_progress_counts_what_reading_again_found() -> None:
    progress = Progress(expected=5)
    progress.received(5)
    progress.received(7)  # 6 missing: a hole
    progress.sought()
    progress.received(7)  # still past it: 6 holds no record (a marker)
    assert (progress.expected, progress.without_records, progress.recovered) == (8, 1, 0)
    progress.received(10)  # 8, 9 missing
    progress.sought()
    progress.received(8)  # they were there: passed over, now delivered
    assert (progress.expected, progress.hole, progress.recovered) == (9, False, 1)


def test_progress_skips_a_stretch_without_records() -> None:
    progress = Progress(expected=5)
    progress.sought()
    progress.skip(7)
    assert (progress.expected, progress.hole, progress.without_records) == (7, False, 2)
    progress.received(7)
    assert (progress.expected, progress.recovered) == (8, 0)  # not taken for a recovered record
