"""The namespace actor's changelog-backed tables: what is kept under which key, and the adapters
the service reads them through (its request log, its relationship records)."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from typing import Any

import faust
import orjson

from nexus_streams.codec import dumps
from nexus_streams.domain.relationships import SEP, Relationship, RelationshipKey
from nexus_streams.service import Remembered
from nexus_streams.streams.writer import StateWriter

#: where a namespace's state lives: the partitions its messages came from (one, unless messages
#: without a key spread the `default` namespace over several)
PartitionsOf = Callable[[str], Iterable[int]]


class Kind:
    """Key prefixes of the namespace actor's one `state` table. One table, so every write of a
    reply goes to the same changelog partition, in order: the remembered reply is written first,
    so whatever else of a reply survives a crash, its remembered reply does too."""

    RECORD = "r"
    REQUEST = "q"
    SCHEMA = "s"
    PROGRESS = "p"
    EXECUTION = "x"
    #: standing queries: `w \x1f namespace \x1f subscription_id` (nexus_streams/subscriptions.py)
    SUBSCRIPTION = "w"


def state_key(kind: str, *parts: str) -> str:
    return SEP.join((kind, *parts))


def current_key(stored: bytes) -> bytes:
    """A state key as this version writes it: raw UTF-8. Version 0.1.0 let Faust write its keys
    as JSON strings (`"r\u001f..."`); its values were JSON already, as they are now."""
    if stored[:1] == b'"':
        return str(orjson.loads(stored)).encode()
    return stored


class TableRequestLog:
    """What pattern commands did (`Remembered`), by (scope, request_id), in a Faust table (the
    pattern agent is a plain Faust agent: it writes inside its event)."""

    def __init__(self, table: Any, scope: str | None = None) -> None:
        self.table = table
        self.scope = scope

    def get(self, namespace: str, request_id: str) -> Remembered | None:
        stored = self.table.get(state_key(Kind.REQUEST, namespace, request_id))
        return None if stored is None else Remembered.from_dict(stored)

    def put(self, remembered: Remembered) -> None:
        result = remembered.result
        scope = self.scope or result.namespace
        assert result.request_id is not None and scope is not None
        self.table[state_key(Kind.REQUEST, scope, result.request_id)] = remembered.to_dict()


#: remembered results larger than this are stored compressed (marked by a leading `Z`): a
#: batch's result lists every relationship; a single command's is stored as is (deflate's setup
#: alone costs more than a small result's bytes are worth)
COMPRESS_OVER_BYTES = 2048


def remembered_bytes(remembered: Remembered, encoded: bytes | None = None) -> bytes:
    """A remembered result as stored: its JSON (`encoded`, when the result message has it
    already), zlib-compressed when large."""
    plain = encoded if encoded is not None else dumps(remembered.to_dict())
    return b"Z" + zlib.compress(plain, 1) if len(plain) > COMPRESS_OVER_BYTES else plain


def remembered_of(raw: bytes) -> Remembered:
    return Remembered.from_dict(orjson.loads(zlib.decompress(raw[1:]) if raw[:1] == b"Z" else raw))


class StateRequestLog:
    """The namespace actor's remembered requests, read from its `state` partitions."""

    def __init__(self, writer: StateWriter, partitions_of: PartitionsOf) -> None:
        self.writer = writer
        self.partitions_of = partitions_of

    def get(self, namespace: str, request_id: str) -> Remembered | None:
        key = state_key(Kind.REQUEST, namespace, request_id).encode()
        for partition in self.partitions_of(namespace):
            stored = self.writer.get(partition, key)
            if stored is not None:
                return remembered_of(stored)
        return None


class StateRecords:
    """The relationship records of one namespace, read from its `state` partitions."""

    __slots__ = ("writer", "namespace", "partitions_of")

    def __init__(self, writer: StateWriter, namespace: str, partitions_of: PartitionsOf) -> None:
        self.writer = writer
        self.namespace = namespace
        self.partitions_of = partitions_of

    def get(self, key: RelationshipKey) -> Relationship | None:
        stored_key = state_key(Kind.RECORD, key.as_stored(self.namespace)).encode()
        for partition in self.partitions_of(self.namespace):
            record = self.writer.get(partition, stored_key)
            if record is not None:
                return Relationship.from_record(self.namespace, key, orjson.loads(record))
        return None


class Tables:
    """The changelog-backed tables of the namespace actor. `state` is read and written as raw
    bytes by partition (streams/stores.py, streams/writer.py); `store` is its Faust store URL."""

    def __init__(
        self, app: faust.App, partitions: int, store: str | None = None, options: dict[str, Any] | None = None
    ) -> None:
        self.state = app.Table(
            "state",
            default=None,
            partitions=partitions,
            key_type=bytes,  # raw bytes both ways
            value_type=bytes,
            store=store,
            options=options,
            help="the namespace actor's state by kind (see Kind): relationship records, remembered "
            "requests, schemas, applied offsets, waiting executions, subscriptions",
        )
        self.pattern_requests = app.Table(
            "pattern_requests",
            default=None,
            partitions=partitions,
            help="results of pattern commands by request_id",
        )
