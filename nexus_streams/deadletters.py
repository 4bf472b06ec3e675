"""Dead letters as an operator handles them: what one says, which to pick, what a redrive re-sends,
and how many are still waiting. No Kafka here: streams/deadletters.py reads and writes the topics.

A dead letter is *waiting* while it is on `nexus.deadletter` and `nexus.deadletter-handled` has
no record of it; `deadletter redrive` (once the message is re-sent) and `deadletter discard`
write that record, so a dead letter is handled once (docs/deadletters.md).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from nexus_streams.domain.errors import ConcurrentModification, NotFound, ValidationFailed
from nexus_streams.messages import DeadLetterHandled, SourceRef
from nexus_streams.topics import REASON_HEADERS, Header

#: a redrive removes these and sets the count anew
_NOT_RESENT = frozenset(h.value for h in REASON_HEADERS) | {Header.REDRIVE_COUNT.value}
_AGO = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: the label of a topic or reason outside the known sets
OTHER = "other"
#: characters of a value shown in a table
PREVIEW_CHARS = 60
#: bytes of a value kept for a table or a report
KEPT_VALUE_BYTES = 1024
#: outcomes a report lists one by one (its counts are complete)
REPORT_ROWS = 1000


class State(StrEnum):
    #: on nexus.deadletter, neither redriven nor discarded
    WAITING = "waiting"
    #: re-sent to its original topic
    REDRIVEN = "redriven"
    #: marked as dealt with, not re-sent
    DISCARDED = "discarded"


class Skip(StrEnum):
    """Why a selected dead letter is not re-sent."""

    #: redriven or discarded before (a redrive is idempotent)
    HANDLED = "handled"
    #: its `nexus-redrive-count` reached NEXUS_REDRIVE_MAX
    LIMIT = "limit"
    #: `nexus-source-topic` names no input topic of this deployment
    UNKNOWN_TOPIC = "unknown_topic"
    #: the editor was closed without a change
    NOT_EDITED = "not_edited"


class NoSuchDeadLetter(NotFound):
    """No dead letter at that offset (never, deleted by retention, or not yet written)."""


class AmbiguousOffset(ValidationFailed):
    """The offset exists in several partitions of the dead-letter topic."""


class TakenOver(ConcurrentModification):
    """Another run of the redrive or discard command started and fenced this one."""


class NotJSON(ValidationFailed):
    """An edited value that is not a JSON document."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: Header) -> str | None:
        for key, value in self.headers:
            if key == name.value:
                return value.decode("utf-8", errors="replace")
        return None

    @property
    def code(self) -> str:
        return self.header(Header.ERROR_CODE) or "unknown"

    @property
    def reason(self) -> str:
        return self.header(Header.ERROR_REASON) or ""

    @property
    def source_topic(self) -> str | None:
        return self.header(Header.SOURCE_TOPIC)

    @property
    def source(self) -> SourceRef | None:
        topic, partition, offset = (
            self.source_topic,
            self.header(Header.SOURCE_PARTITION),
            self.header(Header.SOURCE_OFFSET),
        )
        if topic is None or not (partition or "").isdigit() or not (offset or "").isdigit():
            return None
        return SourceRef(topic=topic, partition=int(partition or 0), offset=int(offset or 0))

    @property
    def redrive_count(self) -> int:
        """How often its message was redriven before it came back; an unreadable count is 0 (the
        next redrive writes a readable one, so it cannot loop either)."""
        count = self.header(Header.REDRIVE_COUNT) or ""
        return int(count) if count.isdigit() else 0

    @property
    def at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"


@dataclass(frozen=True)
class Filters:
    """Which dead letters a command takes; empty sets take every reason and topic."""

    since_ms: int | None = None
    reasons: frozenset[str] = frozenset()
    #: full topic names (with NEXUS_TOPIC_PREFIX)
    topics: frozenset[str] = frozenset()
    #: one dead letter: its (partition, offset); partition None: the offset in any partition
    only: tuple[int | None, int] | None = None

    def matches(self, letter: DeadLetter) -> bool:
        if self.only is not None:
            partition, offset = self.only
            if letter.offset != offset or partition not in (None, letter.partition):
                return False
        if self.since_ms is not None and letter.timestamp_ms < self.since_ms:
            return False
        if self.reasons and letter.code not in self.reasons:
            return False
        return not self.topics or letter.source_topic in self.topics

    @property
    def narrowed(self) -> bool:
        return bool(self.only or self.since_ms is not None or self.reasons or self.topics)


def parse_since(text: str, now: datetime) -> datetime:
    """`90s`, `15m`, `2h`, `7d`, `1w` ago, or an ISO 8601 time (UTC when it names no zone)."""
    ago = _AGO.match(text.strip())
    if ago:
        return now - timedelta(seconds=int(ago[1]) * _UNITS_S[ago[2]])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValidationFailed(
            f"--since {text!r} is neither a duration (90s, 15m, 2h, 7d, 1w) nor an ISO 8601 time"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def topic_names(prefix: str, names: Iterable[str]) -> frozenset[str]:
    """`relationships` or `nexus.relationships`: the full names."""
    return frozenset(name if name.startswith(prefix) else f"{prefix}{name}" for name in names)


def filters_of(
    prefix: str,
    *,
    since: str | None = None,
    reasons: Iterable[str] = (),
    topics: Iterable[str] = (),
    offset: int | None = None,
    partition: int | None = None,
    now: datetime | None = None,
) -> Filters:
    """The filters of a command line: `prefix` is NEXUS_TOPIC_PREFIX."""
    if partition is not None and offset is None:
        raise ValidationFailed("--partition names the partition of an OFFSET: give the offset too")
    since_ms = None
    if since is not None:
        since_ms = int(parse_since(since, now or datetime.now(UTC)).timestamp() * 1000)
    return Filters(
        since_ms=since_ms,
        reasons=frozenset(reasons),
        topics=topic_names(prefix, topics),
        only=None if offset is None else (partition, offset),
    )


def state_of(handled: DeadLetterHandled | None) -> State:
    if handled is None:
        return State.WAITING
    return State.REDRIVEN if handled.outcome == "redriven" else State.DISCARDED


# -- redrive -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resend:
    """A dead letter's message as a redrive sends it back."""

    letter: DeadLetter
    topic: str
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    #: its `nexus-redrive-count`
    count: int
    edited: bool = False


def plan(
    letter: DeadLetter,
    handled: DeadLetterHandled | None,
    *,
    input_topics: frozenset[str],
    redrive_max: int,
) -> Resend | Skip:
    """What a redrive does with one selected dead letter."""
    if handled is not None:
        return Skip.HANDLED
    topic = letter.source_topic
    if topic is None or topic not in input_topics:
        return Skip.UNKNOWN_TOPIC
    if letter.redrive_count >= redrive_max:
        return Skip.LIMIT
    count = letter.redrive_count + 1
    kept = tuple((k, v) for k, v in letter.headers if k not in _NOT_RESENT)
    headers = (*kept, (Header.REDRIVE_COUNT.value, str(count).encode()))
    return Resend(letter, topic, letter.value, headers, count)


def handled_record(
    letter: DeadLetter,
    *,
    deadletter_topic: str,
    principal: str,
    now: datetime,
    resend: Resend | None = None,
    sent_to: SourceRef | None = None,
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """The key, value and headers of its `nexus.deadletter-handled` record: redriven when
    `resend` is given, else discarded. It goes to the dead letter's own partition."""
    record = DeadLetterHandled(
        deadletter=SourceRef(topic=deadletter_topic, partition=letter.partition, offset=letter.offset),
        outcome="redriven" if resend is not None else "discarded",
        error_code=letter.code,
        source=letter.source,
        redrive_count=resend.count if resend is not None else None,
        sent_to=sent_to,
        edited=resend.edited if resend is not None else False,
        principal=principal,
        handled_at=now,
    )
    value = record.model_dump_json(exclude_none=True).encode()
    return (
        handled_key(letter.partition, letter.offset),
        value,
        [(Header.ERROR_CODE.value, letter.code.encode())],
    )


def handled_key(partition: int, offset: int) -> bytes:
    return f"{partition}:{offset}".encode()


def parse_handled_key(key: bytes | None) -> tuple[int, int] | None:
    partition, _, offset = (key or b"").partition(b":")
    if not (partition.isdigit() and offset.isdigit()):
        return None
    return int(partition), int(offset)


def parse_handled(value: bytes | None) -> DeadLetterHandled | None:
    try:
        return DeadLetterHandled.model_validate_json(value or b"")
    except ValueError:
        return None


@dataclass(frozen=True)
class Outcome:
    letter: DeadLetter
    #: resent, would_resend, discarded, would_discard, or a Skip's value
    action: str
    count: int | None = None
    sent_to: SourceRef | None = None
    edited: bool = False


@dataclass
class Report:
    dry_run: bool
    counts: Counter[str] = field(default_factory=Counter)
    #: the first REPORT_ROWS outcomes
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def chosen(self) -> int:
        """Dead letters re-sent, or that a dry run would re-send."""
        return self.counts["resent"] + self.counts["would_resend"]

    def add(self, outcome: Outcome, listed: bool = True) -> None:
        """`listed`: among `outcomes` too (else only counted)."""
        self.counts[outcome.action] += 1
        if listed and len(self.outcomes) < REPORT_ROWS:
            trimmed = dataclasses.replace(outcome.letter, value=outcome.letter.value[:KEPT_VALUE_BYTES])
            self.outcomes.append(dataclasses.replace(outcome, letter=trimmed))

    def to_json(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "counts": dict(self.counts),
            "outcomes": [
                {
                    "partition": o.letter.partition,
                    "offset": o.letter.offset,
                    "code": o.letter.code,
                    "source": o.letter.source.model_dump() if o.letter.source else None,
                    "action": o.action,
                    "redrive_count": o.count,
                    "sent_to": o.sent_to.model_dump() if o.sent_to else None,
                    "edited": o.edited,
                }
                for o in self.outcomes
            ],
        }


# -- editing and showing -----------------------------------------------------------------------


def _indented(value: bytes) -> str | None:
    try:
        return json.dumps(json.loads(value.decode("utf-8")), indent=2, ensure_ascii=False)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None


def editable_text(value: bytes) -> str:
    """A value to edit: indented JSON when it is JSON, else its text (undecodable bytes replaced)."""
    indented = _indented(value)
    return indented + "\n" if indented is not None else value.decode("utf-8", errors="replace")


def edited_value(text: str) -> bytes:
    """The value to re-send from an edited text: compact JSON."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise NotJSON(f"the edited value is not JSON ({exc}); nothing was sent") from None
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def shown_value(value: bytes) -> str:
    """A value for a person to read: indented JSON, else its text with what is not printable
    escaped (line breaks kept)."""
    indented = _indented(value)
    if indented is not None:
        return indented
    return "\n".join(_escaped(line) for line in value.decode("utf-8", errors="replace").split("\n"))


def _escaped(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def preview(value: bytes, chars: int = PREVIEW_CHARS) -> str:
    """The start of a value, printable on one line."""
    shown = _escaped(value[: chars * 4].decode("utf-8", errors="replace"))
    return shown if len(shown) <= chars else shown[: chars - 3] + "..."


def describe(
    letter: DeadLetter, handled: DeadLetterHandled | None, *, value: bool = False, size: int | None = None
) -> dict[str, object]:
    """A dead letter as JSON, for `--json`."""
    text: str | None
    try:
        text = letter.value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    found: dict[str, object] = {
        "partition": letter.partition,
        "offset": letter.offset,
        "timestamp": letter.at.isoformat(),
        "state": state_of(handled).value,
        "code": letter.code,
        "reason": letter.reason,
        "source": letter.source.model_dump() if letter.source else None,
        "redrive_count": letter.redrive_count,
        "key": letter.key.decode("utf-8", errors="replace") if letter.key is not None else None,
        "headers": {k: v.decode("utf-8", errors="replace") for k, v in letter.headers},
        "value_bytes": len(letter.value) if size is None else size,
        "handled": handled.model_dump(mode="json", exclude_none=True) if handled else None,
    }
    if value:
        found["value"] = text
        if text is None:
            found["value_hex"] = letter.value.hex()
    else:
        found["value_preview"] = preview(letter.value)
    return found


# -- what is waiting ---------------------------------------------------------------------------


@dataclass
class _Partition:
    base: int
    #: per offset from `base`: the label index of a waiting dead letter, 0 for none
    labels: bytearray = field(default_factory=bytearray)
    #: handled records read before their dead letter
    early: set[int] = field(default_factory=set)

    @property
    def end(self) -> int:
        return self.base + len(self.labels)


class WaitingTally:
    """The dead letters waiting, by (topic, reason), from the dead-letter topic and the handled
    topic read side by side. One byte per dead letter retained (at most `max_per_partition` per
    partition, the oldest forgotten first): labels come from closed sets, so an index fits."""

    def __init__(self, topics: Mapping[str, str], reasons: frozenset[str], max_per_partition: int) -> None:
        #: full input topic name -> its label
        self.topics = topics
        self.reasons = reasons
        self.max_per_partition = max_per_partition
        self._labels: list[tuple[str, str]] = [("", "")]
        self._index: dict[tuple[str, str], int] = {}
        self._partitions: dict[int, _Partition] = {}
        self._counts: Counter[int] = Counter()
        #: dead letters no longer tracked because a partition had more than the maximum
        self.forgotten = 0

    def label(self, topic: str | None, code: str | None) -> int:
        labels = (self.topics.get(topic or "", OTHER), code if code in self.reasons else OTHER)
        index = self._index.get(labels)
        if index is None:
            if len(self._labels) >= 255 and labels != (OTHER, OTHER):
                return self.label(None, None)  # not with closed sets; the last index is for "other"
            index = self._index[labels] = len(self._labels)
            self._labels.append(labels)
        return index

    def dead_letter(self, partition: int, offset: int, topic: str | None, code: str | None) -> None:
        part = self._partitions.setdefault(partition, _Partition(offset))
        if not part.labels or offset - part.end > self.max_per_partition:
            self._drop(part, part.end)
            part.base = offset
            part.early = {o for o in part.early if o >= offset}
        if offset < part.end:
            return  # read before
        part.labels.extend(bytes(offset - part.end))  # offsets without a dead letter
        if offset in part.early:
            part.early.discard(offset)
            part.labels.append(0)
        else:
            index = self.label(topic, code)
            part.labels.append(index)
            self._counts[index] += 1
        if len(part.labels) > self.max_per_partition:
            excess = len(part.labels) - self.max_per_partition + self.max_per_partition // 10
            self.forgotten += self._drop(part, part.base + excess)

    def handled(self, partition: int, offset: int) -> None:
        part = self._partitions.setdefault(partition, _Partition(offset))
        if not part.labels or offset >= part.end:
            if len(part.early) < self.max_per_partition:
                part.early.add(offset)
            return
        if offset >= part.base:
            index = part.labels[offset - part.base]
            if index:
                self._counts[index] -= 1
                part.labels[offset - part.base] = 0

    def log_start(self, partition: int, offset: int) -> None:
        """Retention deleted what is before `offset`."""
        part = self._partitions.get(partition)
        if part is not None and offset > part.base:
            self._drop(part, offset)

    def waiting(self) -> dict[tuple[str, str], int]:
        """Every (topic, reason) seen, with how many are waiting (0 once all were handled)."""
        return {self._labels[i]: self._counts.get(i, 0) for i in range(1, len(self._labels))}

    def _drop(self, part: _Partition, before: int) -> int:
        """Forget the dead letters before offset `before`; returns how many were waiting."""
        n = max(0, min(len(part.labels), before - part.base))
        dropped = Counter(part.labels[:n])
        dropped.pop(0, None)
        self._counts.subtract(dropped)
        del part.labels[:n]
        part.base = max(part.base, before)
        part.early = {o for o in part.early if o >= part.base}
        return sum(dropped.values())
