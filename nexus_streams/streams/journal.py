"""What a crash may leave unpublished: the outbound messages of each flushed cycle, kept in the
`state` table until the input offsets of the cycle are committed, then deleted.

A cycle's state and its journal record are one atomic changelog batch. If the worker dies after
the batch landed but before the cycle's results and events were delivered (or before the input
offsets were committed), the cycle's messages are read again; each is then answered from the
journal, byte for byte what it published the first time, instead of being handled again (its
effects are in the state already). A message not in the journal is handled as usual.

Nothing here grows with traffic: a record lives from its cycle's flush until its offsets are
committed (Faust commits every few seconds), and a later cycle carries its deletion.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from nexus_streams.replies import Outbound
from nexus_streams.topics import ALL_TOPICS, TopicSpec

#: (topic, offset, outbound) of one input message
Entry = tuple[str, int, list[Outbound]]
#: records larger than this are compressed (a leading `Z`; `R`: raw): below it, deflate's setup
#: costs more than the bytes saved are worth
COMPRESS_OVER_BYTES = 16 * 1024
#: journal keys start with this kind (beside streams/tables.py `Kind`)
JOURNAL_KIND = "j"
_SPECS = {spec.name: spec for spec in ALL_TOPICS}


@dataclass(slots=True)
class _Record:
    key: bytes
    #: the input messages it answers: topic name -> the highest offset among them
    offsets: dict[str, int]
    messages: list[tuple[str, int]]
    #: the record as written: decoded only when a redelivery asks for one of its messages
    value: bytes


class Journal:
    """Per state partition: the journal records not yet deleted, as written (the bytes, not the
    messages: a batch command's thousand events are a few KB compressed, and read back only
    after a crash), and which records answer each input message, for a redelivery to find."""

    def __init__(self, separator: str) -> None:
        self._sep = separator
        self._records: dict[int, dict[int, _Record]] = {}
        self._next: dict[int, int] = {}
        #: (topic, partition, offset) -> the sequence numbers of the records that answer it
        self._answered: dict[tuple[str, int, int], list[int]] = {}
        #: the last record decoded: (partition, seq), and its messages by (topic, offset)
        self._decoded: tuple[tuple[int, int], dict[tuple[str, int], list[Outbound]]] | None = None

    def __len__(self) -> int:
        return len(self._answered)

    def record(
        self, partition: int, answered: Iterable[tuple[str, int, list[Outbound]]]
    ) -> tuple[bytes, bytes] | None:
        """The journal record of a cycle: (topic, offset, outbound) of each input message it
        answers. None when it answers none."""
        entries: list[Entry] = list(answered)
        if not entries:
            return None
        seq = self._next.get(partition, 0)
        self._next[partition] = seq + 1
        key = self._sep.join((JOURNAL_KIND, str(partition), f"{seq:012d}")).encode()
        value = _encode(entries)
        self._keep(partition, seq, key, [(topic, offset) for topic, offset, _ in entries], value)
        return key, value

    def replay(self, topic: str, partition: int, offset: int) -> list[Outbound] | None:
        """What the message at `topic`[`partition`]@`offset` published, if a journal record has it."""
        seqs = self._answered.get((topic, partition, offset))
        if seqs is None:
            return None
        outbound: list[Outbound] = []
        for seq in seqs:
            outbound.extend(self._messages(partition, seq).get((topic, offset), ()))
        return outbound

    def committed(self, partition: int, committed: Callable[[str, int], int | None]) -> list[bytes]:
        """The records of `partition` whose every message is committed (`committed(topic,
        partition)`: the group's next offset to read); forgotten here, to be deleted."""
        records = self._records.get(partition)
        if not records:
            return []
        done = []
        for seq, record in list(records.items()):  # oldest first: stop at the first still needed
            if not all(_past(committed(topic, partition), top) for topic, top in record.offsets.items()):
                break
            del records[seq]
            for topic, offset in record.messages:
                seqs = self._answered.get((topic, partition, offset))
                if seqs is not None:
                    seqs.remove(seq)
                    if not seqs:
                        del self._answered[(topic, partition, offset)]
            done.append(record.key)
        if (
            self._decoded is not None
            and self._decoded[0][0] == partition
            and self._decoded[0][1] not in records
        ):
            self._decoded = None
        return done

    def load(self, partition: int, key: bytes, value: bytes) -> None:
        """A record read back from the state (a restart, a rebalance)."""
        seq = int(key.decode().rpartition(self._sep)[2])
        self._keep(partition, seq, key, [(topic, offset) for topic, offset, _ in _decode(value)], value)
        self._next[partition] = max(self._next.get(partition, 0), seq + 1)

    def partitions(self) -> list[int]:
        return [p for p, records in self._records.items() if records]

    def forget(self) -> None:
        self._records.clear()
        self._next.clear()
        self._answered.clear()
        self._decoded = None

    def _keep(
        self, partition: int, seq: int, key: bytes, messages: list[tuple[str, int]], value: bytes
    ) -> None:
        offsets: dict[str, int] = {}
        for topic, offset in messages:
            offsets[topic] = max(offset, offsets.get(topic, -1))
            self._answered.setdefault((topic, partition, offset), []).append(seq)
        self._records.setdefault(partition, {})[seq] = _Record(key, offsets, messages, value)

    def _messages(self, partition: int, seq: int) -> dict[tuple[str, int], list[Outbound]]:
        """The messages of one record by input message, decoded once for a run of replays (a
        redelivery reads the messages of a record one after the other)."""
        if self._decoded is None or self._decoded[0] != (partition, seq):
            by_message: dict[tuple[str, int], list[Outbound]] = {}
            for topic, offset, outbound in _decode(self._records[partition][seq].value):
                by_message.setdefault((topic, offset), []).extend(outbound)
            self._decoded = ((partition, seq), by_message)
        return self._decoded[1]


def _past(committed: int | None, offset: int) -> bool:
    return committed is not None and committed > offset


def _encode(entries: list[Entry]) -> bytes:
    """A JSON index of lengths, then the raw bytes it describes (no text round trip of values)."""
    index: list[Any] = []
    blob: list[bytes] = []
    for topic, offset, outbound in entries:
        described = []
        for out in outbound:
            headers = [[name, len(value)] for name, value in out.headers.items()]
            described.append(
                [
                    out.spec.name,
                    -1 if out.key is None else len(out.key),
                    len(out.value),
                    headers,
                    out.partition,
                ]
            )
            if out.key is not None:
                blob.append(out.key)
            blob.append(out.value)
            blob.extend(out.headers.values())
        index.append([topic, offset, described])
    head = orjson.dumps(index)
    encoded = len(head).to_bytes(4, "big") + head + b"".join(blob)
    return b"Z" + zlib.compress(encoded, 1) if len(encoded) > COMPRESS_OVER_BYTES else b"R" + encoded


def _decode(value: bytes) -> list[Entry]:
    plain = zlib.decompress(value[1:]) if value[:1] == b"Z" else value[1:]
    size = int.from_bytes(plain[:4], "big")
    at = 4 + size
    view = memoryview(plain)

    def take(length: int) -> bytes:
        nonlocal at
        chunk = bytes(view[at : at + length])
        at += length
        return chunk

    entries = []
    for topic, offset, described in orjson.loads(plain[4 : 4 + size]):
        messages = []
        for spec, key_length, value_length, headers, out_partition in described:
            key = None if key_length < 0 else take(key_length)
            data = take(value_length)
            messages.append(
                Outbound(_spec(spec), key, data, {name: take(n) for name, n in headers}, out_partition)
            )
        entries.append((topic, offset, messages))
    return entries


def _spec(name: str) -> TopicSpec:
    return _SPECS[name]


def answered(replies: Iterable[Any]) -> list[tuple[str, int, list[Outbound]]]:
    """(topic, offset, outbound) of the replies that answer an input message."""
    return [
        (reply.message.topic, reply.message.offset, reply.outbound)
        for reply in replies
        if reply.message is not None and not getattr(reply, "replayed", False)
    ]
