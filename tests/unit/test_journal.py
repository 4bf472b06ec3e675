"""The journal (streams/journal.py) and the request window (service.RequestWindow): what a crash
may leave unpublished, kept until committed; which remembered results to forget."""

from __future__ import annotations

import pytest

from nexus_streams.replies import Outbound
from nexus_streams.service import RequestWindow
from nexus_streams.streams.journal import Journal, answered
from nexus_streams.topics import DEADLETTER, EVENTS, RESULTS

SEP = "\x1f"


def out(spec, value: bytes, key: bytes | None = b"ns", **headers: bytes) -> Outbound:
    return Outbound(spec, key, value, dict(headers))


def test_journal__record__replays_each_message_byte_for_byte() -> None:
    journal = Journal(SEP)
    first = [out(RESULTS, b'{"r":1}', nexus_request_id=b"r-1"), out(EVENTS, b'{"e":1}')]
    dead = [out(DEADLETTER, b"\xff\xfe not utf-8", key=b"\xff", **{"nexus-error-code": b"undecodable"})]
    key, value = journal.record(3, [("t.relationships", 10, first), ("t.relationships", 11, dead)])
    assert key.startswith(b"j\x1f3\x1f")
    assert journal.replay("t.relationships", 3, 10) == first
    assert journal.replay("t.relationships", 3, 11) == dead
    assert journal.replay("t.relationships", 3, 12) is None
    assert journal.replay("t.queries", 3, 10) is None
    # read back from the state (a restart): the same messages
    again = Journal(SEP)
    again.load(3, key, value)
    assert again.replay("t.relationships", 3, 10) == first
    assert again.replay("t.relationships", 3, 11) == dead


def test_journal__large_record__compressed_and_read_back() -> None:
    journal = Journal(SEP)
    events = [out(EVENTS, b'{"type":"relationship_created","n":%d}' % i) for i in range(1000)]
    key, value = journal.record(0, [("t", 7, events)])
    assert value[:1] == b"Z" and len(value) < 10_000
    again = Journal(SEP)
    again.load(0, key, value)
    assert again.replay("t", 0, 7) == events


def test_journal__a_message_answered_in_two_cycles__replayed_whole_in_order() -> None:
    """An export's chunks, a parked query answered later: one input message, two records."""
    journal = Journal(SEP)
    early, late = [out(RESULTS, b'{"chunk":1}')], [out(RESULTS, b'{"chunk":2}'), out(EVENTS, b"{}")]
    journal.record(0, [("t.queries", 4, early), ("t.queries", 5, [out(RESULTS, b"5")])])
    journal.record(0, [("t.queries", 4, late)])
    assert journal.replay("t.queries", 0, 4) == early + late
    assert journal.replay("t.queries", 0, 5) == [out(RESULTS, b"5")]
    # committed up to offset 5 only: the first record (it answers offset 5) stays, and with it
    # both; at 6 both go
    assert journal.committed(0, lambda topic, partition: 5) == []
    assert journal.replay("t.queries", 0, 4) == early + late
    assert len(journal.committed(0, lambda topic, partition: 6)) == 2
    assert journal.replay("t.queries", 0, 4) is None and len(journal) == 0


def test_journal__keeps_the_records_encoded__not_their_messages() -> None:
    journal = Journal(SEP)
    events = [out(EVENTS, b'{"type":"relationship_created","n":%d}' % i) for i in range(1000)]
    journal.record(0, [("t", 7, events)])
    assert not any(isinstance(o, Outbound) for o in _reachable(journal))
    assert journal.replay("t", 0, 7) == events


def _reachable(root: object) -> list[object]:
    import gc

    seen, todo, found = {id(root)}, [root], []
    while todo:
        for ref in gc.get_referents(todo.pop()):
            if id(ref) not in seen and not isinstance(ref, type):
                seen.add(id(ref))
                found.append(ref)
                todo.append(ref)
    return found


def test_journal__record__nothing_answered__no_record() -> None:
    assert Journal(SEP).record(0, []) is None


@pytest.mark.parametrize(
    ("committed", "deleted"),
    [
        ({}, 0),
        ({"t.relationships": 11}, 0),  # offset 11 not committed yet (the next to read is 11)
        ({"t.relationships": 12}, 0),  # the queries' offset is not
        ({"t.relationships": 12, "t.queries": 5}, 0),
        ({"t.relationships": 12, "t.queries": 6}, 1),
    ],
)
def test_journal__committed__deleted_once_every_message_is(committed: dict[str, int], deleted: int) -> None:
    journal = Journal(SEP)
    key, _ = journal.record(
        1, [("t.relationships", 10, []), ("t.relationships", 11, []), ("t.queries", 5, [])]
    )
    done = journal.committed(1, lambda topic, partition: committed.get(topic))
    assert done == [key] * deleted
    assert (journal.replay("t.queries", 1, 5) is None) == bool(deleted)
    assert journal.partitions() == ([] if deleted else [1])


def test_journal__sequence_goes_on_after_loading() -> None:
    journal = Journal(SEP)
    key, value = journal.record(2, [("t", 1, [])])
    again = Journal(SEP)
    again.load(2, key, value)
    next_key, _ = again.record(2, [("t", 2, [])])
    assert next_key > key


def test_journal__answered__replayed_replies_are_not_journaled_again() -> None:
    class Msg:
        topic, offset = "t", 4

    class R:
        def __init__(self, replayed: bool) -> None:
            self.message, self.outbound, self.replayed = Msg(), [], replayed

    assert answered([R(False), R(True)]) == [("t", 4, [])]


def test_request_window__by_count__the_oldest_first() -> None:
    window = RequestWindow(max_age_s=3600, max_count=2)
    assert window.admit(0, b"a", 1.0) == []
    assert window.admit(0, b"b", 2.0) == []
    assert window.admit(0, b"c", 3.0) == [b"a"]
    assert window.admit(1, b"x", 3.0) == []  # per partition
    assert len(window) == 3


def test_request_window__by_age() -> None:
    window = RequestWindow(max_age_s=10, max_count=100)
    window.admit(0, b"a", 100.0)
    window.admit(0, b"b", 105.0)
    window.admit(4, b"c", 100.0)
    assert window.expired(109.0) == {}
    assert window.expired(110.0) == {0: [b"a"], 4: [b"c"]}
    assert window.expired(116.0) == {0: [b"b"]}
    assert len(window) == 0


def test_request_window__loaded__ordered_by_time_and_trimmed_to_the_count() -> None:
    window = RequestWindow(max_age_s=3600, max_count=2)
    for key, at in ((b"c", 3.0), (b"a", 1.0), (b"b", 2.0)):
        window.load(5, key, at)
    assert window.loaded() == {5: [b"a"]}
    assert window.admit(5, b"d", 4.0) == [b"b"]


@pytest.mark.parametrize(
    ("stored", "current"),
    [
        (
            b'"r\\u001fns1\\u001fmember\\u001fuser:1\\u001fgroup:1"',
            b"r\x1fns1\x1fmember\x1fuser:1\x1fgroup:1",
        ),
        (b'"p\\u001f3"', b"p\x1f3"),
        (b"r\x1fns1\x1fmember\x1fa\x1fb", b"r\x1fns1\x1fmember\x1fa\x1fb"),
        (b"j\x1f0\x1f000000000001", b"j\x1f0\x1f000000000001"),
    ],
    ids=["0.1.0 record", "0.1.0 progress", "current record", "current journal"],
)
def test_current_key__keys_of_0_1_0_read_as_raw(stored: bytes, current: bytes) -> None:
    from nexus_streams.streams.tables import current_key

    assert current_key(stored) == current


def test_remembered_of__a_0_1_0_value_with_events_and_changes() -> None:
    import orjson

    from nexus_streams.streams.tables import remembered_of

    result = {
        "request_id": "r-1",
        "namespace": "ns1",
        "status": "ok",
        "output": {"a": 1},
        "processed_at": "2026-12-01T00:00:00Z",
    }
    old = orjson.dumps({"result": result, "events": [{"type": "x"}], "changes": []})
    assert remembered_of(old).result.request_id == "r-1"
    assert remembered_of(orjson.dumps(result)).result.output == {"a": 1}
