"""The namespace actor's changelog-backed tables: what is kept under which key, and the adapters
the service reads them through (its request log, its relationship records)."""

from __future__ import annotations

import asyncio
from typing import Any

import faust

from nexus_streams.domain.relationships import SEP, Relationship, RelationshipKey
from nexus_streams.service import Remembered


class Kind:
    """Key prefixes of the namespace actor's one `state` table. One table, so every write of a
    reply goes to the same changelog partition, in order: the remembered reply is written first,
    so whatever else of a reply survives a crash, its remembered reply does too."""

    RECORD = "r"
    REQUEST = "q"
    SCHEMA = "s"
    PROGRESS = "p"
    EXECUTION = "x"


def state_key(kind: str, *parts: str) -> str:
    return SEP.join((kind, *parts))


class TableRequestLog:
    """What requests did (`Remembered`), by (scope, request_id), in a changelog-backed table; the
    scope is the namespace, or a fixed one (`scope`) for the pattern registry."""

    def __init__(self, table: Any, scope: str | None = None) -> None:
        self.table = table
        self.scope = scope

    def get(self, namespace: str, request_id: str) -> Remembered | None:
        stored = self.table.get(state_key(Kind.REQUEST, namespace, request_id))
        return None if stored is None else Remembered.from_dict(stored)

    def forget(self, namespace: str, request_id: str) -> None:
        put_or_delete(self.table, state_key(Kind.REQUEST, namespace, request_id), None)

    def put(self, remembered: Remembered) -> None:
        result = remembered.result
        scope = self.scope or result.namespace
        assert result.request_id is not None and scope is not None
        self.table[state_key(Kind.REQUEST, scope, result.request_id)] = remembered.to_dict()


class TableRecords:
    """The relationship records of one namespace, in the changelog-backed `relationships` table."""

    def __init__(self, table: Any, namespace: str) -> None:
        self.table = table
        self.namespace = namespace

    def get(self, key: RelationshipKey) -> Relationship | None:
        record = self.table.get(state_key(Kind.RECORD, key.as_stored(self.namespace)))
        return None if record is None else Relationship.from_record(self.namespace, key, record)


def put_or_delete(table: Any, key: str, value: Any) -> None:
    if value is not None:
        table[key] = value
    elif key in table:
        del table[key]


class ChangelogWrites:
    """The changelog records a table sent since the last `take()`, as futures resolved once the
    broker has them. Faust's `producer.flush()` does not wait for them: it returns as soon as its
    buffer's queue is empty, while the record it took last may not be in the Kafka producer yet."""

    def __init__(self, table: Any) -> None:
        self.pending: list[asyncio.Future[Any]] = []
        send = table.send_changelog

        def send_and_note(*args: Any, **kwargs: Any) -> Any:
            future = send(*args, **kwargs)
            self.pending.append(future)
            return future

        table.send_changelog = send_and_note

    def take(self) -> list[asyncio.Future[Any]]:
        taken, self.pending = self.pending, []
        return taken


class Tables:
    """The changelog-backed tables of the namespace actor."""

    def __init__(self, app: faust.App, partitions: int) -> None:
        def table(name: str, help_: str) -> Any:
            return app.Table(name, default=None, partitions=partitions, help=help_)

        self.state = table(
            "state",
            "the namespace actor's state by kind (see Kind): relationship records, remembered "
            "requests, schemas, applied offsets, waiting executions",
        )
        self.pattern_requests = table("pattern_requests", "results of pattern commands by request_id")
