"""What the dead-letter commands decide, without a broker: which dead letters a filter takes, what
a redrive re-sends (and refuses), the handled records, editing, and the count of those waiting."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from nexus_streams.deadletters import (
    AmbiguousOffset,
    DeadLetter,
    Filters,
    NotJSON,
    Resend,
    Skip,
    State,
    WaitingTally,
    describe,
    editable_text,
    edited_value,
    filters_of,
    handled_record,
    parse_handled,
    parse_handled_key,
    parse_since,
    plan,
    preview,
    shown_value,
    state_of,
)
from nexus_streams.domain.errors import ValidationFailed
from nexus_streams.messages import SourceRef

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
INPUTS = frozenset({"nexus.relationships", "nexus.queries", "nexus.executions", "nexus.patterns"})


def letter(
    *,
    code: str = "undecodable",
    topic: str = "nexus.relationships",
    count: str | None = None,
    extra: tuple[tuple[str, bytes], ...] = (),
    partition: int = 3,
    offset: int = 17,
    at: datetime = NOW,
    value: bytes = b"\x00 not json",
) -> DeadLetter:
    headers = [
        *extra,
        ("nexus-error-code", code.encode()),
        ("nexus-error-reason", b"value is not JSON"),
        ("nexus-source-topic", topic.encode()),
        ("nexus-source-partition", b"2"),
        ("nexus-source-offset", b"41"),
    ]
    if count is not None:
        headers.insert(0, ("nexus-redrive-count", count.encode()))
    return DeadLetter(partition, offset, int(at.timestamp() * 1000), b"ns-1", value, tuple(headers))


def handled(dead: DeadLetter, resend: Resend | None = None) -> object:
    _, value, _ = handled_record(
        dead, deadletter_topic="nexus.deadletter", principal="ops", now=NOW, resend=resend
    )
    return parse_handled(value)


# -- reading a dead letter ---------------------------------------------------------------------


def test_dead_letter__reads_its_reason_headers() -> None:
    dead = letter(count="2")
    assert (dead.code, dead.reason, dead.source_topic, dead.redrive_count) == (
        "undecodable",
        "value is not JSON",
        "nexus.relationships",
        2,
    )
    assert dead.source == SourceRef(topic="nexus.relationships", partition=2, offset=41)
    assert dead.at == NOW and dead.ref == "3:17"


@pytest.mark.parametrize(("count", "read"), [(None, 0), ("0", 0), ("3", 3), ("x", 0), ("-1", 0), ("", 0)])
def test_dead_letter__redrive_count__absent_or_unreadable_is_zero(count: str | None, read: int) -> None:
    assert letter(count=count).redrive_count == read


def test_dead_letter__without_headers__unknown_code_and_no_source() -> None:
    bare = DeadLetter(0, 0, 0, None, b"x")
    assert (bare.code, bare.reason, bare.source, bare.source_topic) == ("unknown", "", None, None)


# -- filters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("2h", NOW - timedelta(hours=2)),
        ("7d", NOW - timedelta(days=7)),
        ("1w", NOW - timedelta(days=7)),
        ("2026-12-01T10:00:00Z", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("2026-12-01T10:00:00+02:00", datetime(2026, 12, 1, 8, tzinfo=UTC)),
        ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
    ],
)
def test_parse_since__durations_ago_and_iso_times(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "15", "m15", "1y", ""])
def test_parse_since__anything_else__refused(text: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_since(text, NOW)


@pytest.mark.parametrize(
    ("filters", "taken"),
    [
        (Filters(), True),
        (Filters(reasons=frozenset({"undecodable"})), True),
        (Filters(reasons=frozenset({"invalid_key", "validation_error"})), False),
        (Filters(topics=frozenset({"nexus.relationships"})), True),
        (Filters(topics=frozenset({"nexus.queries"})), False),
        (Filters(since_ms=int(NOW.timestamp() * 1000)), True),
        (Filters(since_ms=int(NOW.timestamp() * 1000) + 1), False),
        (Filters(only=(3, 17)), True),
        (Filters(only=(None, 17)), True),
        (Filters(only=(2, 17)), False),
        (Filters(only=(3, 18)), False),
    ],
)
def test_filters__matches(filters: Filters, taken: bool) -> None:
    assert filters.matches(letter()) is taken


def test_filters_of__short_topic_names_get_the_prefix() -> None:
    filters = filters_of("nexus.", topics=["relationships", "nexus.queries"], reasons=["undecodable"])
    assert filters.topics == {"nexus.relationships", "nexus.queries"}
    assert filters.reasons == {"undecodable"} and filters.narrowed
    assert not filters_of("nexus.").narrowed
    assert filters_of("nexus.", offset=5).only == (None, 5)
    assert filters_of("nexus.", since="1h", now=NOW).since_ms == int(
        (NOW - timedelta(hours=1)).timestamp() * 1000
    )


def test_filters_of__a_partition_without_an_offset__refused() -> None:
    with pytest.raises(ValidationFailed, match="OFFSET"):
        filters_of("nexus.", partition=2)


def test_ambiguous_offset__is_a_validation_error() -> None:
    assert AmbiguousOffset("x").code.value == "validation_error"


# -- redrive -----------------------------------------------------------------------------------


def test_plan__resends_value_key_and_original_headers_with_the_count_plus_one() -> None:
    dead = letter(count="1", extra=(("trace", b"t-1"),))
    resend = plan(dead, None, input_topics=INPUTS, redrive_max=3)
    assert isinstance(resend, Resend)
    assert (resend.topic, resend.value, resend.count, resend.edited) == (
        "nexus.relationships",
        dead.value,
        2,
        False,
    )
    assert resend.headers == (("trace", b"t-1"), ("nexus-redrive-count", b"2"))


@pytest.mark.parametrize(
    ("dead", "done", "redrive_max", "skip"),
    [
        (letter(), True, 3, Skip.HANDLED),
        (letter(count="3"), False, 3, Skip.LIMIT),
        (letter(count="5"), False, 3, Skip.LIMIT),
        (letter(), False, 0, Skip.LIMIT),
        (letter(topic="nexus.results"), False, 3, Skip.UNKNOWN_TOPIC),
        (letter(topic="elsewhere.relationships"), False, 3, Skip.UNKNOWN_TOPIC),
        (DeadLetter(0, 0, 0, None, b"x"), False, 3, Skip.UNKNOWN_TOPIC),
    ],
    ids=[
        "handled before",
        "at the limit",
        "past the limit",
        "limit 0",
        "an output topic",
        "another prefix",
        "bare",
    ],
)
def test_plan__refuses(dead: DeadLetter, done: bool, redrive_max: int, skip: Skip) -> None:
    previous = handled(dead) if done else None
    assert plan(dead, previous, input_topics=INPUTS, redrive_max=redrive_max) is skip  # type: ignore[arg-type]


def test_plan__the_count_grows_to_the_limit_then_stops__never_a_loop() -> None:
    dead, sent = letter(), 0
    for _ in range(10):
        resend = plan(dead, None, input_topics=INPUTS, redrive_max=3)
        if not isinstance(resend, Resend):
            assert resend is Skip.LIMIT
            break
        sent += 1
        # the worker dead-letters it again: its headers are the re-sent ones plus new reasons
        dead = letter(count=dict(resend.headers)["nexus-redrive-count"].decode(), offset=dead.offset + 1)
    assert sent == 3


def test_handled_record__redriven_in_the_dead_letters_partition_and_read_back() -> None:
    dead = letter()
    resend = plan(dead, None, input_topics=INPUTS, redrive_max=3)
    assert isinstance(resend, Resend)
    sent_to = SourceRef(topic="nexus.relationships", partition=2, offset=99)
    key, value, headers = handled_record(
        dead, deadletter_topic="nexus.deadletter", principal="ops", now=NOW, resend=resend, sent_to=sent_to
    )
    assert parse_handled_key(key) == (3, 17)
    assert headers == [("nexus-error-code", b"undecodable")]
    record = parse_handled(value)
    assert record is not None and state_of(record) is State.REDRIVEN
    assert (record.outcome, record.redrive_count, record.sent_to, record.principal) == (
        "redriven",
        1,
        sent_to,
        "ops",
    )
    assert record.deadletter == SourceRef(topic="nexus.deadletter", partition=3, offset=17)
    assert record.source == dead.source and record.error_code == "undecodable"


def test_handled_record__discarded() -> None:
    record = handled(letter())
    assert state_of(record) is State.DISCARDED  # type: ignore[arg-type]
    assert state_of(None) is State.WAITING


@pytest.mark.parametrize("key", [None, b"", b"3", b"a:1", b"3:", b":4", b"-1:2"])
def test_parse_handled_key__garbage__none(key: bytes | None) -> None:
    assert parse_handled_key(key) is None


@pytest.mark.parametrize("value", [None, b"", b"{", b"{}", b'{"outcome": "lost"}'])
def test_parse_handled__garbage__none(value: bytes | None) -> None:
    assert parse_handled(value) is None


# -- editing and showing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (b'{"a":1,"b":[1,2]}', '{\n  "a": 1,\n  "b": [\n    1,\n    2\n  ]\n}\n'),
        (b'{"name":"J\xc3\xbcrgen"}', '{\n  "name": "J\u00fcrgen"\n}\n'),
        (b"not json", "not json"),
        (b"\xff\xfe", "\ufffd\ufffd"),
    ],
)
def test_editable_text__indented_json_or_the_text(value: bytes, text: str) -> None:
    assert editable_text(value) == text


def test_edited_value__compact_json_or_refused() -> None:
    assert edited_value('{\n  "request_id": "r-1",\n  "n": [1, 2]\n}\n') == b'{"request_id":"r-1","n":[1,2]}'
    with pytest.raises(NotJSON, match="nothing was sent"):
        edited_value("{ still broken")


def test_shown_and_preview__escape_what_is_not_printable() -> None:
    assert shown_value(b"\x00 not\njson") == "\\x00 not\njson"
    assert shown_value(b'{"a": 1}') == '{\n  "a": 1\n}'
    assert preview(b"\x00 abc") == "\\x00 abc"
    assert preview(b"x" * 100, 10) == "xxxxxxx..."


def test_describe__json_of_a_dead_letter_with_its_value_on_request() -> None:
    dead = letter(extra=(("trace", b"t-1"),))
    found = describe(dead, None, value=True)
    assert found["state"] == "waiting" and found["code"] == "undecodable"
    assert found["headers"]["trace"] == "t-1"  # type: ignore[index]
    assert found["value"] == "\x00 not json" and "value_hex" not in found
    binary = describe(letter(value=b"\xff"), None, value=True)
    assert binary["value"] is None and binary["value_hex"] == "ff"
    listed = describe(dead, None, size=5000)
    assert listed["value_preview"] == "\\x00 not json" and listed["value_bytes"] == 5000
    json.dumps(found)


# -- what is waiting ---------------------------------------------------------------------------

TOPICS = {"nexus.relationships": "relationships", "nexus.queries": "queries"}
REASONS = frozenset({"undecodable", "invalid_key", "validation_error"})


def tally(max_per_partition: int = 1000) -> WaitingTally:
    return WaitingTally(TOPICS, REASONS, max_per_partition)


def test_waiting__counts_by_topic_and_reason_and_drops_what_is_handled() -> None:
    t = tally()
    t.dead_letter(0, 0, "nexus.relationships", "undecodable")
    t.dead_letter(0, 1, "nexus.relationships", "undecodable")
    t.dead_letter(1, 0, "nexus.queries", "invalid_key")
    t.dead_letter(1, 1, "nexus.elsewhere", "something_new")
    assert t.waiting() == {
        ("relationships", "undecodable"): 2,
        ("queries", "invalid_key"): 1,
        ("other", "other"): 1,
    }
    t.handled(0, 0)
    t.handled(0, 0)  # twice: still one
    t.handled(1, 0)
    t.handled(5, 3)  # a partition not read yet
    assert t.waiting() == {
        ("relationships", "undecodable"): 1,
        ("queries", "invalid_key"): 0,
        ("other", "other"): 1,
    }


def test_waiting__a_handled_record_read_before_its_dead_letter() -> None:
    t = tally()
    t.handled(0, 5)
    t.dead_letter(0, 3, "nexus.relationships", "undecodable")
    t.handled(0, 4)
    t.dead_letter(0, 4, "nexus.relationships", "undecodable")
    t.dead_letter(0, 5, "nexus.relationships", "undecodable")
    assert t.waiting() == {("relationships", "undecodable"): 1}


def test_waiting__gaps_duplicates_and_retention() -> None:
    t = tally()
    for offset in (10, 12, 15):  # 11, 13, 14: transaction markers
        t.dead_letter(0, offset, "nexus.relationships", "undecodable")
    t.dead_letter(0, 12, "nexus.relationships", "undecodable")  # read again
    assert t.waiting() == {("relationships", "undecodable"): 3}
    t.log_start(0, 13)  # retention deleted 10 and 12
    assert t.waiting() == {("relationships", "undecodable"): 1}
    t.handled(0, 12)  # deleted already: nothing to do
    t.handled(0, 15)
    assert t.waiting() == {("relationships", "undecodable"): 0}
    t.log_start(0, 100)
    t.dead_letter(0, 100, "nexus.relationships", "invalid_key")
    assert t.waiting()[("relationships", "invalid_key")] == 1


def test_waiting__bounded_per_partition__the_oldest_forgotten() -> None:
    t = tally(max_per_partition=100)
    for offset in range(250):
        t.dead_letter(0, offset, "nexus.relationships", "undecodable")
    waiting = t.waiting()[("relationships", "undecodable")]
    assert 90 <= waiting <= 100
    assert t.forgotten == 250 - waiting
    t.dead_letter(0, 10_000, "nexus.relationships", "undecodable")  # a jump past the bound
    assert t.waiting()[("relationships", "undecodable")] == 1


def test_waiting__labels_stay_in_a_byte() -> None:
    t = WaitingTally({}, frozenset(f"r{i}" for i in range(400)), 10_000)
    for offset in range(400):
        t.dead_letter(0, offset, None, f"r{offset}")
    waiting = t.waiting()
    assert len(waiting) <= 255 and sum(waiting.values()) == 400
    assert waiting[("other", "other")] >= 400 - 254
