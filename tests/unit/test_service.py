"""NamespaceService.handle: one message in, `Reply`s out, without Faust.

`Worker` plays the Faust agent (streams/app.py NamespaceActor): it feeds messages in offset
order, makes each reply durable exactly as `_write_tables` does (changes into the namespace's
records table, schema, progress, the request log), publishes the outbound messages and
acknowledges the reply's message; deferred replies run `work()` then `finish()`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nexus_streams.codec import MAX_MESSAGE_BYTES
from nexus_streams.domain.errors import CycleDetected, NotFound, ResourceLimit
from nexus_streams.domain.graph import MemoryRecords, Put, Remove
from nexus_streams.domain.relationships import Relationship, RelationshipKey, RelationType, canonical_key
from nexus_streams.executions import PatternLookup
from nexus_streams.messages import RESULT_ADAPTER, Result
from nexus_streams.service import Limits, NamespaceService, Outbound, Received, Remembered, Reply
from nexus_streams.topics import (
    DEADLETTER,
    EVENTS,
    EXECUTIONS,
    QUERIES,
    RELATIONSHIPS,
    RESULTS,
    TopicSpec,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NOW_JSON = "2024-05-01T12:00:00Z"
LATER = NOW + timedelta(hours=1)
LATER_JSON = "2024-05-01T13:00:00Z"
PARTITION = 3
NS = "ns1"
OWNER, MEMBER, LINKED, PARENT = (
    RelationType.OWNER,
    RelationType.MEMBER,
    RelationType.LINKED,
    RelationType.PARENT,
)


class RequestLog:
    """The agent's request table: results by (namespace, request_id)."""

    def __init__(self) -> None:
        self.results: dict[tuple[str, str], Remembered] = {}

    def get(self, namespace: str, request_id: str) -> Remembered | None:
        return self.results.get((namespace, request_id))

    def result(self, namespace: str, request_id: str) -> Result | None:
        remembered = self.results.get((namespace, request_id))
        return None if remembered is None else remembered.result

    def put(self, remembered: Remembered) -> None:
        result = remembered.result
        assert result.request_id is not None and result.namespace is not None
        self.results[(result.namespace, result.request_id)] = Remembered.from_dict(remembered.to_dict())

    def forget(self, namespace: str, request_id: str) -> None:
        self.results.pop((namespace, request_id), None)


class Worker:
    """The namespace actor around the service, with its tables in dicts."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.log = RequestLog()
        self.records: dict[str, MemoryRecords] = {}
        #: the changelog-backed tables, as NamespaceActor keeps them
        self.relationships_table: dict[str, dict[str, Any]] = {}
        self.schemas_table: dict[str, dict[str, list[str]] | None] = {}
        self.progress_table: dict[str, int] = {}
        self.now = NOW
        self.monotonic = 1000.0
        self.service = NamespaceService(
            self.log,
            self.records_for,
            limits,
            clock=lambda: self.now,
            monotonic=lambda: self.monotonic,
        )
        self.offsets: dict[tuple[str, int], int] = {}
        self.published: list[Outbound] = []
        self.acked: list[Received] = []

    def records_for(self, namespace: str) -> MemoryRecords:
        return self.records.setdefault(namespace, MemoryRecords())

    def message(
        self,
        value: dict[str, Any] | bytes | None,
        *,
        spec: TopicSpec = RELATIONSHIPS,
        key: bytes | None = NS.encode(),
        partition: int = PARTITION,
        offset: int | None = None,
    ) -> Received:
        raw = json.dumps(value).encode() if isinstance(value, dict) else value
        if offset is None:
            offset = self.offsets.get((spec.name, partition), 99) + 1
        self.offsets[(spec.name, partition)] = offset
        return Received(spec, f"nexus.{spec.name}", partition, offset, key, raw, token=object())

    def process(self, msg: Received) -> list[Reply]:
        """What NamespaceActor.process does with one message: handle() it and complete its
        replies; after a relationships message, release the parked queries it satisfies and
        complete those too. Deferred replies are returned unfinished (see run_deferred)."""
        replies = self.service.handle(msg)
        for reply in replies:
            self.dispatch(reply)
        if msg.spec is RELATIONSHIPS:
            released = self.service.release_parked(msg.partition)
            for reply in released:
                self.dispatch(reply)
            replies += released
        return replies

    def dispatch(self, reply: Reply) -> None:
        if reply.deferred is None:
            self.complete(reply)

    def send(self, value: dict[str, Any] | bytes | None, **kw: Any) -> list[Reply]:
        return self.process(self.message(value, **kw))

    def one(self, value: dict[str, Any] | bytes | None, **kw: Any) -> Reply:
        replies = self.send(value, **kw)
        assert len(replies) == 1, replies
        return replies[0]

    def ask(self, value: dict[str, Any], **kw: Any) -> Reply:
        """A query, answered at once (running a deferred one to its end)."""
        reply = self.one(value, spec=QUERIES, **kw)
        if reply.deferred is not None:
            (reply,) = self.run_deferred(reply)
        return reply

    def ok(self, value: dict[str, Any], **kw: Any) -> dict[str, Any]:
        reply = self.one(value, **kw)
        result = body(only(reply, RESULTS))
        assert result["status"] == "ok", result
        output: dict[str, Any] = result["output"]
        return output

    def complete(self, reply: Reply) -> None:
        """What NamespaceActor.complete does: the tables, then publish, then acknowledge."""
        for change in reply.changes:
            rel = change.relationship
            stored_key = rel.key.as_stored(rel.namespace)
            if isinstance(change, Put):
                self.relationships_table[stored_key] = rel.to_record()
            else:
                self.relationships_table.pop(stored_key, None)
        self.records_for(reply.namespace).apply(reply.changes)
        if reply.schema is not None:
            namespace, document = reply.schema
            self.schemas_table[namespace] = document
        if reply.progress is not None:
            partition, offset = reply.progress
            self.progress_table[str(partition)] = offset
        if reply.remembered is not None:
            self.log.put(reply.remembered)
        self.published += reply.outbound
        if reply.message is not None:
            self.acked.append(reply.message)

    def run_deferred(self, reply: Reply) -> list[Reply]:
        assert reply.deferred is not None
        try:
            value, error = reply.deferred.work(), None
        except Exception as exc:  # what NamespaceActor.run_deferred does
            value, error = None, exc
        done = reply.deferred.finish(value, error)
        for each in done:
            self.complete(each)
        return done

    def rebuild(self) -> None:
        """What NamespaceActor.rebuild does after recovery: the graphs from the tables."""
        self.service.reset()
        for stored_key, record in self.relationships_table.items():
            self.service.load_record(stored_key, record)
        for namespace, document in self.schemas_table.items():
            if document is not None:
                self.service.load_schema(namespace, document)
        for partition, offset in self.progress_table.items():
            self.service.load_progress(int(partition), offset)

    def graph_state(self, namespace: str = NS) -> dict[str, Any]:
        graph = self.service.graph(namespace)
        index = graph.index
        keys = {k for e in index.entities() for k in index.edges_of(e)}
        return {
            "counts": index.counts_by_type(),
            "edges": {e: sorted(index.edges_of(e), key=repr) for e in index.entities()},
            "relationships": {k: graph.get(k) for k in keys},
            "records": dict(self.records_for(namespace).data),
            "table": dict(self.relationships_table),
            "schema": graph.schema,
        }


@pytest.fixture
def worker() -> Worker:
    return Worker()


# --------------------------------------------------------------------------- messages


def command(action: str, request_id: str, **fields: Any) -> dict[str, Any]:
    return {"request_id": request_id, "principal": "user:admin", "action": action} | fields


def create(
    source: str = "user:1",
    type_: str = "owner",
    target: str = "wallet:1",
    request_id: str = "r-create",
    **kw: Any,
) -> dict[str, Any]:
    return command("create", request_id, type=type_, source=source, target=target) | kw


def update(
    source: str = "user:1",
    type_: str = "owner",
    target: str = "wallet:1",
    request_id: str = "r-update",
    **kw: Any,
) -> dict[str, Any]:
    return command("update", request_id, type=type_, source=source, target=target, metadata={}) | kw


def delete(
    source: str = "user:1",
    type_: str = "owner",
    target: str = "wallet:1",
    request_id: str = "r-delete",
    **kw: Any,
) -> dict[str, Any]:
    return command("delete", request_id, type=type_, source=source, target=target) | kw


def delete_entity(entity: str, request_id: str = "r-delete-entity") -> dict[str, Any]:
    return command("delete_entity", request_id, entity=entity)


def step(action: str, source: str, type_: str, target: str, **kw: Any) -> dict[str, Any]:
    return {"action": action, "type": type_, "source": source, "target": target} | kw


def batch(*steps: dict[str, Any], request_id: str = "r-batch") -> dict[str, Any]:
    return command("batch", request_id, commands=list(steps))


def set_schema(document: dict[str, Any] | None, request_id: str = "r-schema") -> dict[str, Any]:
    return command("set_schema", request_id, schema=document)


def expire(request_id: str = "expire:1") -> dict[str, Any]:
    return {"request_id": request_id, "principal": "system", "action": "expire"}


def query(action: str, request_id: str = "q-1", **fields: Any) -> dict[str, Any]:
    return {"request_id": request_id, "principal": "user:reader", "action": action} | fields


def without(data: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in fields}


# --------------------------------------------------------------------------- reading replies


def only(reply: Reply, spec: TopicSpec) -> Outbound:
    matching = [o for o in reply.outbound if o.spec is spec]
    assert len(matching) == 1, [o.spec.name for o in reply.outbound]
    return matching[0]


def body(out: Outbound) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(out.value)
    return value


def specs(reply: Reply) -> list[str]:
    return [o.spec.name for o in reply.outbound]


def result_of(reply: Reply) -> dict[str, Any]:
    return body(only(reply, RESULTS))


def events_of(reply: Reply) -> list[dict[str, Any]]:
    return [body(o) for o in reply.outbound if o.spec is EVENTS]


def assert_error(reply: Reply, code: str, request_id: str | None) -> dict[str, Any]:
    """An error result plus an `error` event carrying the same error body; returns the error."""
    result = result_of(reply)
    assert result["status"] == "error"
    assert result.get("request_id") == request_id
    assert result["error"]["code"] == code, result["error"]
    assert "output" not in result
    (event,) = events_of(reply)
    assert event["type"] == "error"
    assert event["error"] == result["error"]
    assert event.get("request_id") == request_id
    assert only(reply, EVENTS).headers["nexus-event-type"] == b"error"
    assert only(reply, RESULTS).headers["nexus-status"] == b"error"
    assert reply.changes == []
    assert reply.schema is None
    error: dict[str, Any] = result["error"]
    return error


def offset_of(reply: Reply) -> int:
    assert reply.message is not None
    return reply.message.offset


def request_ids(replies: list[Reply]) -> list[str | None]:
    return [r.result.request_id if r.result is not None else None for r in replies]


def error_fields(error: dict[str, Any]) -> set[str]:
    return {e["field"] for e in error["details"]["errors"]}


def rel(
    source: str, type_: RelationType, target: str, metadata: dict[str, Any] | None = None
) -> Relationship:
    return Relationship(NS, source, type_, target, metadata or {}, 1, NOW, NOW)


# --------------------------------------------------------------------------- create / update / delete


def test_service__create__ok_result_event_and_durable_change(worker: Worker) -> None:
    msg = worker.message(create(metadata={"since": 2020}))
    (reply,) = worker.service.handle(msg)
    worker.complete(reply)
    expected = rel("user:1", OWNER, "wallet:1", {"since": 2020})
    assert specs(reply) == ["results", "events"]

    result_out = only(reply, RESULTS)
    assert result_out.key == b"ns1"
    assert result_out.headers == {
        "nexus-status": b"ok",
        "nexus-namespace": b"ns1",
        "nexus-request-id": b"r-create",
    }
    assert body(result_out) == {
        "request_id": "r-create",
        "namespace": NS,
        "action": "create",
        "status": "ok",
        "output": {"relationship": expected.to_dict()},
        "offset": msg.offset,
        "source": {"topic": "nexus.relationships", "partition": PARTITION, "offset": msg.offset},
        "processed_at": NOW_JSON,
    }
    event_out = only(reply, EVENTS)
    assert event_out.key == b"ns1"
    assert event_out.headers == {"nexus-event-type": b"relationship_created", "nexus-namespace": b"ns1"}
    assert body(event_out) == {
        "type": "relationship_created",
        "namespace": NS,
        "occurred_at": NOW_JSON,
        "request_id": "r-create",
        "principal": "user:admin",
        "relationship": expected.to_dict(),
    }
    assert reply.message is msg
    assert reply.changes == [Put(expected)]
    assert reply.progress == (PARTITION, msg.offset)
    assert reply.namespace == NS
    assert reply.remember == reply.result
    assert RESULT_ADAPTER.validate_json(result_out.value) == reply.result
    assert worker.records[NS].data == {expected.key: expected}
    assert worker.relationships_table == {expected.key.as_stored(NS): expected.to_record()}
    assert worker.service.applied == {PARTITION: msg.offset}
    assert worker.log.result(NS, "r-create") == reply.result
    assert worker.acked == [msg]


def test_service__create_child__stored_and_reported_as_parent(worker: Worker) -> None:
    output = worker.ok(create("team:1", "child", "org:1"))
    relationship = output["relationship"]
    assert (relationship["source"], relationship["type"], relationship["target"]) == (
        "org:1",
        "parent",
        "team:1",
    )
    assert set(worker.records[NS].data) == {RelationshipKey("org:1", PARENT, "team:1")}


@pytest.mark.parametrize(
    ("created", "updated"),
    [
        (("user:1", "owner", "wallet:1"), ("user:1", "owner", "wallet:1")),
        (("org:1", "parent", "team:1"), ("team:1", "child", "org:1")),
        (("a", "linked", "b"), ("b", "linked", "a")),
    ],
    ids=repr,
)
def test_service__update__bumps_version_and_updated_at(
    worker: Worker, created: tuple[str, str, str], updated: tuple[str, str, str]
) -> None:
    before = worker.ok(
        create(*created, metadata={"v": 1}, expires_at=(LATER + timedelta(days=1)).isoformat())
    )
    worker.now = LATER
    reply = worker.one(update(*updated, metadata={"v": 2}, expected_version=1))
    after = result_of(reply)["output"]["relationship"]
    assert after == before["relationship"] | {"metadata": {"v": 2}, "version": 2, "updated_at": LATER_JSON}
    assert after["created_at"] == NOW_JSON
    (event,) = events_of(reply)
    assert event["type"] == "relationship_updated"
    assert event["relationship"] == after
    assert event["data"] == {"previous_version": 1}
    assert event["occurred_at"] == LATER_JSON
    assert reply.changes == [Put(Relationship.from_dict(after))]
    (stored,) = worker.records[NS].data.values()
    assert stored.to_dict() == after
    # and once more, without an expected version
    again = worker.ok(update(*updated, metadata={"v": 3}, request_id="r-update-2"))
    assert again["relationship"]["version"] == 3


@pytest.mark.parametrize(
    ("created", "deleted"),
    [
        (("user:1", "owner", "wallet:1"), ("user:1", "owner", "wallet:1")),
        (("org:1", "parent", "team:1"), ("team:1", "child", "org:1")),
        (("team:1", "child", "org:1"), ("org:1", "parent", "team:1")),
        (("a", "linked", "b"), ("b", "linked", "a")),
    ],
    ids=repr,
)
def test_service__delete__any_form__ok_result_and_deleted_event(
    worker: Worker, created: tuple[str, str, str], deleted: tuple[str, str, str]
) -> None:
    (created_reply,) = worker.send(create(*created))
    stored = created_reply.changes[0].relationship
    reply = worker.one(delete(*deleted))
    assert specs(reply) == ["results", "events"]
    result = result_of(reply)
    assert (result["status"], result["action"], result["request_id"]) == ("ok", "delete", "r-delete")
    assert result["output"] == {"relationship": stored.to_dict()}
    (event,) = events_of(reply)
    assert (event["type"], event["relationship"], event["request_id"]) == (
        "relationship_deleted",
        stored.to_dict(),
        "r-delete",
    )
    assert only(reply, EVENTS).headers["nexus-event-type"] == b"relationship_deleted"
    assert reply.changes == [Remove(stored)]
    assert worker.records[NS].data == {}
    assert worker.relationships_table == {}
    assert len(worker.service.graph(NS)) == 0


def test_service__delete_entity__one_deleted_event_per_relationship(worker: Worker) -> None:
    for i, (s, t, d) in enumerate(
        [
            ("e", "owner", "w1"),
            ("u", "member", "e"),
            ("e", "linked", "a"),
            ("org", "parent", "e"),
            ("u", "owner", "w1"),
        ]
    ):
        worker.ok(create(s, t, d, request_id=f"setup-{i}"))
    doomed = {k: r for k, r in worker.records[NS].data.items() if "e" in (k.source, k.target)}
    reply = worker.one(delete_entity("e"))
    assert result_of(reply)["output"] == {"entity": "e", "deleted": 4}
    events = events_of(reply)
    assert [e["type"] for e in events] == ["relationship_deleted"] * 4
    assert sorted((e["relationship"] for e in events), key=repr) == sorted(
        (r.to_dict() for r in doomed.values()), key=repr
    )
    assert sorted(reply.changes, key=repr) == sorted((Remove(r) for r in doomed.values()), key=repr)
    assert set(worker.records[NS].data) == {RelationshipKey("u", OWNER, "w1")}
    assert "e" not in worker.service.graph(NS).index


def test_service__delete_entity__without_relationships__deleted_0(worker: Worker) -> None:
    reply = worker.one(delete_entity("nobody"))
    assert result_of(reply)["output"] == {"entity": "nobody", "deleted": 0}
    assert (events_of(reply), reply.changes) == ([], [])


# --------------------------------------------------------------------------- command errors

ERROR_CASES: list[
    tuple[str, list[dict[str, Any]], dict[str, Any], Limits | None, str, dict[str, Any] | None]
] = [
    # (name, setup, message, limits, code, expected details (None: not checked))
    (
        "self relationship",
        [],
        create("user:1", "owner", "user:1"),
        None,
        "self_relationship",
        {"field": "target"},
    ),
    ("empty source", [], create(source=""), None, "invalid_entity_id", {"field": "source"}),
    ("source with space", [], create(source="user 1"), None, "invalid_entity_id", {"field": "source"}),
    ("target too long", [], create(target="x" * 257), None, "invalid_entity_id", {"field": "target"}),
    ("target control char", [], create(target="w\x00"), None, "invalid_entity_id", {"field": "target"}),
    (
        "delete_entity bad id",
        [],
        delete_entity("a b", "r-create"),
        None,
        "invalid_entity_id",
        {"field": "entity"},
    ),
    (
        "metadata too large",
        [],
        create(metadata={"k": "x" * 20_000}),
        None,
        "metadata_too_large",
        {"field": "metadata", "size_bytes": 20_008, "limit_bytes": 16 * 1024},
    ),
    ("unknown type", [], create(type_="friend"), None, "unknown_relationship_type", {"field": "type"}),
    (
        "type is case sensitive",
        [],
        create(type_="Owner"),
        None,
        "unknown_relationship_type",
        {"field": "type"},
    ),
    (
        "duplicate",
        [create()],
        create(),
        None,
        "duplicate_relationship",
        {"source": "user:1", "type": "owner", "target": "wallet:1"},
    ),
    (
        "duplicate inverse: a parent b, then b child a",
        [create("a", "parent", "b")],
        create("b", "child", "a"),
        None,
        "duplicate_relationship",
        {"source": "b", "type": "child", "target": "a"},
    ),
    (
        "duplicate inverse: b child a, then a parent b",
        [create("b", "child", "a")],
        create("a", "parent", "b"),
        None,
        "duplicate_relationship",
        None,
    ),
    (
        "duplicate linked: a linked b, then b linked a",
        [create("a", "linked", "b")],
        create("b", "linked", "a"),
        None,
        "duplicate_relationship",
        None,
    ),
    ("delete missing", [], delete(request_id="r-create"), None, "not_found", None),
    (
        "delete reversed owner",
        [create("a", "owner", "b")],
        delete("b", "owner", "a", "r-create"),
        None,
        "not_found",
        None,
    ),
    ("update missing", [], update(request_id="r-create"), None, "not_found", None),
    (
        "cycle: A parent B, B parent C, C parent A",
        [create("A", "parent", "B"), create("B", "parent", "C")],
        create("C", "parent", "A"),
        None,
        "cycle_detected",
        {"cycle": ["C", "A", "B", "C"]},
    ),
    (
        "cycle via child form: A child C",
        [create("A", "parent", "B"), create("B", "parent", "C")],
        create("A", "child", "C"),
        None,
        "cycle_detected",
        {"cycle": ["C", "A", "B", "C"]},
    ),
    (
        "cycle via child setup",
        [create("B", "child", "A"), create("C", "child", "B")],
        create("C", "parent", "A"),
        None,
        "cycle_detected",
        {"cycle": ["C", "A", "B", "C"]},
    ),
    (
        "update at a wrong version",
        [create(), update(request_id="setup-update")],
        update(expected_version=1, request_id="r-create"),
        None,
        "concurrent_modification",
        {"expected_version": 1, "actual_version": 2},
    ),
    (
        "schema violation",
        [set_schema({"owner": ["user -> wallet"]})],
        create("wallet:1", "owner", "user:1"),
        None,
        "schema_violation",
        {"source": "wallet:1", "type": "owner", "target": "user:1"},
    ),
    (
        "batch too large",
        [],
        batch(*(step("create", "a", "owner", f"w{i}") for i in range(3)), request_id="r-create"),
        Limits(max_batch=2),
        "batch_too_large",
        {"commands": 3, "limit": 2},
    ),
    (
        "delete_entity over the limit",
        [create("e", "owner", "w1"), create("e", "owner", "w2"), create("e", "owner", "w3")],
        delete_entity("e", "r-create"),
        Limits(max_delete_entity=2),
        "resource_limit",
        {"relationships": 3, "limit": 2},
    ),
    (
        "unknown action",
        [],
        create(action="upsert"),
        None,
        "unknown_action",
        {
            "field": "action",
            "allowed": ["create", "update", "delete", "delete_entity", "batch", "set_schema", "expire"],
        },
    ),
    ("a query action on relationships", [], query("stats", "r-create"), None, "unknown_action", None),
    ("missing target", [], without(create(), "target"), None, "validation_error", None),
    (
        "invalid schema document",
        [],
        set_schema({"friend": ["a -> b"]}, "r-create"),
        None,
        "validation_error",
        None,
    ),
]


@pytest.mark.parametrize(
    ("setup", "message", "limits", "code", "details"),
    [c[1:] for c in ERROR_CASES],
    ids=[c[0] for c in ERROR_CASES],
)
def test_service__command_errors__error_result_and_event_and_nothing_changes(
    setup: list[dict[str, Any]],
    message: dict[str, Any],
    limits: Limits | None,
    code: str,
    details: dict[str, Any] | None,
) -> None:
    worker = Worker(limits)
    for i, earlier in enumerate(setup):
        worker.ok(earlier | {"request_id": f"setup-{i}"})
    before = worker.graph_state()
    msg = worker.message(message)
    (reply,) = worker.service.handle(msg)
    worker.complete(reply)
    error = assert_error(reply, code, message["request_id"])
    assert error["message"]
    if details is not None:
        assert error["details"] == details
    assert specs(reply) == ["results", "events"]
    assert reply.remember == reply.result  # a redelivery gets the same error
    assert reply.progress == (PARTITION, msg.offset)
    assert worker.acked[-1] is msg
    assert worker.graph_state() == before
    assert worker.service.graph(NS).savepoint() == 0  # no unit of work left open


def test_service__cycle_detected__message_shows_the_cycle(worker: Worker) -> None:
    worker.ok(create("A", "parent", "B", "s-1"))
    worker.ok(create("B", "parent", "C", "s-2"))
    error = assert_error(worker.one(create("C", "parent", "A")), "cycle_detected", "r-create")
    assert "C -> A -> B -> C" in error["message"]


@pytest.mark.parametrize(
    ("message", "fields"),
    [
        (without(create(), "source"), {"source"}),
        (without(create(), "target", "type"), {"target", "type"}),
        (without(create(), "principal"), {"principal"}),
        (create(target=7), {"target"}),
        (create(metadata=[1]), {"metadata"}),
        (create(expires_at="soon"), {"expires_at"}),
        (create(colour="red"), {"colour"}),
        (without(create(), "action"), {"action"}),
        (delete(request_id="r-create", metadata={}), {"metadata"}),
        (update(request_id="r-create", expected_version=0), {"expected_version"}),
        (without(update(request_id="r-create"), "metadata"), {"metadata"}),
        (batch(request_id="r-create"), {"commands"}),
        (
            batch(step("create", "a", "owner", "b"), {"action": "create"}, request_id="r-create"),
            {"commands.1.create.type", "commands.1.create.source", "commands.1.create.target"},
        ),
        (batch({"action": "batch", "commands": []}, request_id="r-create"), {"commands.0"}),
        (set_schema({"owner": "user -> wallet"}, "r-create"), {"schema.owner"}),
        (without(set_schema(None, "r-create"), "schema"), {"schema"}),
        (expire("r-create") | {"before": NOW_JSON}, {"before"}),
    ],
    ids=lambda v: ",".join(sorted(v)) if isinstance(v, set) else None,
)
def test_service__invalid_field__validation_error_naming_it(
    worker: Worker, message: dict[str, Any], fields: set[str]
) -> None:
    reply = worker.one(message)
    assert specs(reply) == ["results", "events"]  # no dead letter: the request id is usable
    error = assert_error(reply, "validation_error", "r-create")
    assert error_fields(error) == fields
    for name in fields:
        assert name in error["message"]
    assert result_of(reply).get("action") == message.get("action")
    (event,) = events_of(reply)
    assert event.get("principal") == message.get("principal")
    assert event["data"] == {
        "action": message.get("action"),
        "source": {"topic": "nexus.relationships", "partition": PARTITION, "offset": offset_of(reply)},
    }
    assert worker.log.result(NS, "r-create") == reply.result
    assert len(worker.service.graph(NS)) == 0


@pytest.mark.parametrize(
    "message",
    [
        without(create(source=""), "request_id"),
        create(source="", request_id=""),
        create(source="", request_id="r" * 129),
        create(source="", request_id=12),
        create(source="", request_id=None),
        without(create(), "request_id"),  # otherwise fine, but the request id is required
    ],
    ids=["missing", "empty", "too long", "number", "null", "only request_id missing"],
)
def test_service__invalid_without_request_id__error_result_and_deadletter(
    worker: Worker, message: dict[str, Any]
) -> None:
    reply = worker.one(message)
    assert specs(reply) == ["results", "events", "deadletter"]
    error = assert_error(reply, "validation_error", None)
    assert reply.result is not None
    assert reply.result.request_id is None
    assert body(only(reply, RESULTS))["request_id"] is None  # written even when null
    assert RESULT_ADAPTER.validate_json(only(reply, RESULTS).value) == reply.result
    assert "nexus-request-id" not in only(reply, RESULTS).headers
    assert reply.remember is None
    dead = only(reply, DEADLETTER)
    assert json.loads(dead.value) == message  # the original bytes
    assert dead.key == NS.encode()
    assert dead.headers["nexus-error-code"] == b"validation_error"
    assert dead.headers["nexus-error-reason"] == error["message"].encode()[:1024]
    assert worker.log.results == {}


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("spec", [RELATIONSHIPS, QUERIES, EXECUTIONS], ids=lambda s: s.name)
@pytest.mark.parametrize("field", ["metadata", "input", "extra"])
def test_service__nested_past_the_limit__validation_error_naming_it(
    worker: Worker, spec: TopicSpec, field: str
) -> None:
    raw = b'{"request_id": "r-deep", "principal": "alice", "action": "create", "%s": {"k": %s}}' % (
        field.encode(),
        deep(200),
    )
    reply = worker.one(raw, spec=spec)
    assert specs(reply) == ["results", "events"]
    error = assert_error(reply, "validation_error", "r-deep")
    assert error["details"]["limit"] == 64
    assert "NEXUS_MAX_NESTING_DEPTH" in error["message"]
    assert len(worker.service.graph(NS)) == 0


@pytest.mark.parametrize("raw", [deep(5000), b"[" * 5000, b'{"request_id": "r-1", "m": %s}' % deep(3000)])
def test_service__nested_past_what_json_reads__dead_lettered(worker: Worker, raw: bytes) -> None:
    reply = worker.one(raw)
    assert specs(reply) == ["deadletter"]
    dead = only(reply, DEADLETTER)
    assert dead.value == raw
    assert dead.headers["nexus-error-code"] == b"undecodable"
    assert b"deeper than 1024" in dead.headers["nexus-error-reason"]


# --------------------------------------------------------------------------- batch


def test_service__batch__all_events_in_order(worker: Worker) -> None:
    worker.ok(create("x", "owner", "y", "setup"))
    reply = worker.one(
        batch(
            step("create", "a", "owner", "b", metadata={"n": 1}),
            step("create", "c", "child", "a"),
            step("update", "a", "owner", "b", metadata={"n": 2}),
            step("delete", "x", "owner", "y"),
        )
    )
    output = result_of(reply)["output"]
    assert output["count"] == 4
    assert [r["relationship"]["version"] for r in output["results"]] == [1, 1, 2, 1]
    events = events_of(reply)
    assert [(e["type"], e["relationship"]["source"], e["relationship"]["target"]) for e in events] == [
        ("relationship_created", "a", "b"),
        ("relationship_created", "a", "c"),
        ("relationship_updated", "a", "b"),
        ("relationship_deleted", "x", "y"),
    ]
    assert {e["request_id"] for e in events} == {"r-batch"}
    assert events[2]["data"] == {"previous_version": 1}
    assert set(worker.records[NS].data) == {
        RelationshipKey("a", OWNER, "b"),
        RelationshipKey("a", PARENT, "c"),
    }
    assert worker.records[NS].data[RelationshipKey("a", OWNER, "b")].metadata == {"n": 2}
    assert len(reply.changes) == 3  # one per relationship: a-b (twice written), a-c, x-y


@pytest.mark.parametrize(
    ("third", "code"),
    [
        (step("create", "a", "owner", "b"), "duplicate_relationship"),  # the batch's own first command
        (step("create", "z", "child", "p"), "cycle_detected"),  # through the batch's second command
        (step("delete", "nobody", "owner", "w"), "not_found"),
        (step("create", "a", "friend", "b"), "unknown_relationship_type"),
        (step("create", "q", "owner", "q"), "self_relationship"),
        (step("update", "x", "owner", "y", metadata={}, expected_version=5), "concurrent_modification"),
        ({"action": "delete_entity", "entity": "a b"}, "invalid_entity_id"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_service__batch__third_command_fails__nothing_applied(
    worker: Worker, third: dict[str, Any], code: str
) -> None:
    worker.ok(create("x", "owner", "y", "setup-1"))
    worker.ok(create("p", "parent", "q", "setup-2"))
    before = worker.graph_state()
    reply = worker.one(
        batch(
            step("create", "a", "owner", "b"),
            step("create", "p", "child", "z"),  # p is z's child: z parent p
            third,
            step("delete", "x", "owner", "y"),
        )
    )
    error = assert_error(reply, code, "r-batch")
    assert error["details"]["index"] == 2
    assert error["message"].startswith(f"batch command 2 ({third['action']}) failed, nothing applied: ")
    assert worker.graph_state() == before
    assert worker.service.graph(NS).savepoint() == 0
    # the failed batch is remembered; a fixed batch is a new request
    assert worker.log.result(NS, "r-batch") == reply.result
    fixed = batch(step("create", "a", "owner", "b"), request_id="r-batch-2")
    assert worker.ok(fixed)["count"] == 1


def test_service__batch__create_then_delete__no_durable_change(worker: Worker) -> None:
    reply = worker.one(batch(step("create", "a", "owner", "b"), step("delete", "a", "owner", "b")))
    assert result_of(reply)["status"] == "ok"
    assert [e["type"] for e in events_of(reply)] == ["relationship_created", "relationship_deleted"]
    assert reply.changes == []
    assert worker.records[NS].data == {}
    assert worker.relationships_table == {}
    assert len(worker.service.graph(NS)) == 0


def test_service__batch__exactly_max_batch__accepted() -> None:
    worker = Worker(Limits(max_batch=3))
    output = worker.ok(batch(*(step("create", "a", "owner", f"w{i}") for i in range(3))))
    assert output["count"] == 3


# --------------------------------------------------------------------------- expiry


def test_service__expire__removes_expired_with_events_and_no_result(worker: Worker) -> None:
    worker.ok(create("a", "owner", "b", "r-1", expires_at=LATER.isoformat()))
    worker.ok(create("a", "owner", "c", "r-2", expires_at=(LATER + timedelta(hours=1)).isoformat()))
    worker.ok(create("a", "owner", "d", "r-3"))
    expiring = worker.records[NS].data[RelationshipKey("a", OWNER, "b")]
    assert worker.service.namespaces_due(NOW) == []
    assert worker.service.namespaces_due(LATER) == [NS]

    worker.now = LATER + timedelta(minutes=1)
    msg = worker.message(expire())
    (reply,) = worker.service.handle(msg)
    worker.complete(reply)
    assert specs(reply) == ["events"]  # a worker's own sweep: events, no result
    (event,) = events_of(reply)
    assert event["type"] == "relationship_expired"
    assert event["relationship"] == expiring.to_dict()
    assert event["principal"] == "system"
    assert reply.changes == [Remove(expiring)]
    assert reply.remember is None
    assert reply.result is not None and reply.result.output == {"expired": 1}
    assert reply.progress == (PARTITION, msg.offset)
    assert worker.acked[-1] is msg
    assert set(worker.records[NS].data) == {
        RelationshipKey("a", OWNER, "c"),
        RelationshipKey("a", OWNER, "d"),
    }
    assert worker.service.namespaces_due(worker.now) == []
    assert worker.service.namespaces_due(LATER + timedelta(hours=1)) == [NS]
    # a redelivered expire is harmless and was not remembered
    again = worker.one(expire())
    assert (specs(again), again.changes) == ([], [])


def test_service__expire__only_namespaces_with_due_relationships(worker: Worker) -> None:
    worker.ok(create("a", "owner", "b", expires_at=LATER.isoformat()), key=b"t1")
    worker.ok(create("a", "owner", "b", expires_at=(LATER + timedelta(days=1)).isoformat()), key=b"t2")
    worker.ok(create("a", "owner", "b"), key=b"t3")
    assert worker.service.namespaces_due(LATER) == ["t1"]
    assert sorted(worker.service.namespaces_due(LATER + timedelta(days=1))) == ["t1", "t2"]


# --------------------------------------------------------------------------- schema


SCHEMA_CASES = [
    # (schema, relationship, allowed)
    ({"owner": ["user -> wallet"]}, ("user:1", "owner", "wallet:1"), True),
    ({"owner": ["user -> wallet"]}, ("wallet:1", "owner", "user:1"), False),
    ({"owner": ["user -> wallet"]}, ("org:1", "owner", "wallet:1"), False),
    ({"owner": ["user -> wallet"]}, ("org:1", "member", "wallet:1"), True),  # other types: free
    ({"member": ["* -> group"]}, ("anything:1", "member", "group:1"), True),
    ({"member": ["* -> group"]}, ("nokind", "member", "group:1"), True),
    ({"member": ["* -> group"]}, ("user:1", "member", "team:1"), False),
    ({"child": ["team -> org"]}, ("team:1", "child", "org:1"), True),
    ({"child": ["team -> org"]}, ("org:1", "parent", "team:1"), True),  # = the inverse parent
    ({"child": ["team -> org"]}, ("team:1", "parent", "org:1"), False),
    ({"parent": ["org -> team"]}, ("team:1", "child", "org:1"), True),
    ({"linked": ["user -> device"]}, ("user:1", "linked", "device:1"), True),
    ({"linked": ["user -> device"]}, ("device:1", "linked", "user:1"), True),  # either way
    ({"linked": ["user -> device"]}, ("user:1", "linked", "user:2"), False),
]


@pytest.mark.parametrize(("schema", "relationship", "allowed"), SCHEMA_CASES, ids=repr)
def test_service__schema__create_checked_against_it(
    worker: Worker, schema: dict[str, list[str]], relationship: tuple[str, str, str], allowed: bool
) -> None:
    reply = worker.one(set_schema(schema))
    assert result_of(reply)["output"] == {"schema": schema}
    assert reply.schema == (NS, schema)
    (event,) = events_of(reply)
    assert (event["type"], event["data"]) == ("schema_changed", {"schema": schema})
    assert worker.schemas_table == {NS: schema}
    created = worker.one(create(*relationship))
    if allowed:
        assert result_of(created)["status"] == "ok"
    else:
        error = assert_error(created, "schema_violation", "r-create")
        assert "does not allow" in error["message"]
        assert worker.records_for(NS).data == {}


def test_service__set_schema_null__removes_it(worker: Worker) -> None:
    worker.ok(set_schema({"owner": ["user -> wallet"]}))
    assert_error(worker.one(create("wallet:1", "owner", "user:1", "r-1")), "schema_violation", "r-1")
    reply = worker.one(set_schema(None, "r-schema-2"))
    assert result_of(reply)["output"] == {"schema": None}
    assert reply.schema == (NS, None)
    assert worker.schemas_table == {NS: None}
    assert worker.service.graph(NS).schema is None
    assert worker.ok(create("wallet:1", "owner", "user:1", "r-2"))["relationship"]["type"] == "owner"


def test_service__set_schema__applies_to_later_writes_only(worker: Worker) -> None:
    worker.ok(create("wallet:1", "owner", "user:1", "r-1"))
    worker.ok(set_schema({"owner": ["user -> wallet"]}))
    assert worker.ok(update("wallet:1", "owner", "user:1"))["relationship"]["version"] == 2
    assert worker.ok(delete("wallet:1", "owner", "user:1"))["relationship"]["version"] == 2


@pytest.mark.parametrize(
    ("document", "fields"),
    [
        ({"friend": ["a -> b"]}, ["schema.friend"]),
        ({"owner": ["user wallet"]}, ["schema.owner.0"]),
        (
            {"owner": ["user -> wallet", "a -> b -> c"], "child": [" -> org"]},
            ["schema.owner.1", "schema.child.0"],
        ),
        (
            {"owner": ["bad"], "friend": [], "member": ["x -> y", "->"]},
            ["schema.owner.0", "schema.friend", "schema.member.1"],
        ),
    ],
    ids=repr,
)
def test_service__set_schema_invalid__validation_error_listing_each_problem(
    worker: Worker, document: dict[str, Any], fields: list[str]
) -> None:
    worker.ok(set_schema({"owner": ["user -> wallet"]}, "r-first"))
    reply = worker.one(set_schema(document))
    error = assert_error(reply, "validation_error", "r-schema")
    assert [e["field"] for e in error["details"]["errors"]] == fields
    # the schema in force is unchanged
    assert worker.service.graph(NS).schema is not None
    assert worker.service.graph(NS).schema.document == {"owner": ["user -> wallet"]}
    assert worker.schemas_table == {NS: {"owner": ["user -> wallet"]}}


# --------------------------------------------------------------------------- queries


def seed(worker: Worker) -> None:
    """a owner b, a owner c, a owner d, b member g (metadata on each), org parent a."""
    for i, (s, t, d) in enumerate(
        [
            ("a", "owner", "b"),
            ("a", "owner", "c"),
            ("a", "owner", "d"),
            ("b", "member", "g"),
            ("a", "child", "org"),
        ]
    ):
        worker.ok(create(s, t, d, f"seed-{i}", metadata={"n": i}))


def test_service__query_get__found_in_either_form(worker: Worker) -> None:
    seed(worker)
    for source, type_, target in [("org", "parent", "a"), ("a", "child", "org")]:
        reply = worker.ask(query("get", type=type_, source=source, target=target))
        result = result_of(reply)
        assert (
            result["output"]["relationship"]
            == worker.records[NS].data[RelationshipKey("org", PARENT, "a")].to_dict()
        )
        assert result["action"] == "get"
        assert result["offset"] == worker.service.applied[PARTITION]
        assert result["source"]["topic"] == "nexus.queries"
        assert events_of(reply) == []
        assert (reply.changes, reply.remember, reply.progress) == ([], None, None)


@pytest.mark.parametrize(
    ("message", "code", "details"),
    [
        (
            query("get", type="owner", source="b", target="a"),
            "not_found",
            {"source": "b", "type": "owner", "target": "a"},
        ),
        (query("get", type="friend", source="a", target="b"), "unknown_relationship_type", {"field": "type"}),
        (query("get", type="owner", source="a", target="a"), "self_relationship", {"field": "target"}),
        (
            query("find_path", source="a", target="zzz"),
            "path_not_found",
            {"source": "a", "target": "zzz", "max_depth": 3},
        ),
        (
            query("find_path", source="d", target="g", max_depth=1),
            "path_not_found",
            {"source": "d", "target": "g", "max_depth": 1},
        ),
        (query("find_path", source="a b", target="g"), "invalid_entity_id", {"field": "source"}),
        (query("traverse", start="a", max_depth=2, limit=4), "resource_limit", {"limit": 4, "max_depth": 2}),
        (query("traverse", start="a", types=["friend"]), "unknown_relationship_type", {"field": "type"}),
        (query("neighbors", entity="a", limit=3), "resource_limit", {"count": 4, "limit": 3}),
        (query("neighbors", entity=""), "invalid_entity_id", {"field": "entity"}),
        (query("detect_cycles", entity="a", types=["linked"]), "validation_error", {"field": "types"}),
        (query("stats", bogus=1), "validation_error", None),
        (query("explode"), "unknown_action", None),
        (query("create", type="owner", source="a", target="b"), "unknown_action", None),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_service__query_errors(
    worker: Worker, message: dict[str, Any], code: str, details: dict[str, Any] | None
) -> None:
    seed(worker)
    before = worker.graph_state()
    reply = worker.ask(message)
    error = assert_error(reply, code, "q-1")
    if details is not None:
        assert error["details"] == details
    assert reply.remember is None  # queries are not remembered
    assert worker.log.get(NS, "q-1") is None
    assert worker.graph_state() == before


def test_service__query_find_path__path_with_relationships_and_metadata(worker: Worker) -> None:
    seed(worker)
    output = result_of(worker.ask(query("find_path", source="c", target="g")))["output"]
    data = worker.records[NS].data
    assert output == {
        "found": True,
        "length": 3,
        "path": ["c", "a", "b", "g"],
        "relationships": [
            data[RelationshipKey("a", OWNER, "c")].to_dict(),
            data[RelationshipKey("a", OWNER, "b")].to_dict(),
            data[RelationshipKey("b", MEMBER, "g")].to_dict(),
        ],
    }
    assert output["relationships"][2]["metadata"] == {"n": 3}


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"source": "a", "target": "g", "direction": "out"}, ["a", "b", "g"]),
        ({"source": "g", "target": "a", "direction": "out"}, None),
        ({"source": "g", "target": "a", "direction": "in"}, ["g", "b", "a"]),
        ({"source": "a", "target": "g", "types": ["owner"]}, None),
        ({"source": "a", "target": "g", "types": ["owner", "member"]}, ["a", "b", "g"]),
        ({"source": "org", "target": "b", "direction": "out"}, ["org", "a", "b"]),
        ({"source": "a", "target": "org", "types": ["child"], "direction": "out"}, ["a", "org"]),
        ({"source": "a", "target": "org", "types": ["parent"], "direction": "out"}, None),
    ],
    ids=repr,
)
def test_service__query_find_path__direction_and_types(
    worker: Worker, fields: dict[str, Any], path: list[str] | None
) -> None:
    seed(worker)
    result = result_of(worker.ask(query("find_path", **fields)))
    if path is None:
        assert result["error"]["code"] == "path_not_found"
    else:
        assert result["output"]["path"] == path


def test_service__query_traverse__entities_with_depth(worker: Worker) -> None:
    seed(worker)
    output = result_of(worker.ask(query("traverse", start="b", max_depth=2)))["output"]
    assert output["start"] == "b"
    assert output["count"] == 5
    depths = {e["id"]: e["depth"] for e in output["entities"]}
    assert depths == {"a": 1, "g": 1, "c": 2, "d": 2, "org": 2}
    assert [e["depth"] for e in output["entities"]] == sorted(e["depth"] for e in output["entities"])
    assert len(output["relationships"]) == 5
    assert {"source": "a", "type": "owner", "target": "b"} in output["relationships"]
    # exactly at the limit is fine
    at_limit = result_of(worker.ask(query("traverse", start="b", max_depth=2, limit=5)))
    assert at_limit["output"]["count"] == 5
    depth_1 = result_of(worker.ask(query("traverse", start="b", max_depth=1)))["output"]
    assert {e["id"] for e in depth_1["entities"]} == {"a", "g"}
    nobody = result_of(worker.ask(query("traverse", start="nobody")))["output"]
    assert (nobody["count"], nobody["entities"]) == (0, [])


def test_service__query_neighbors__with_metadata(worker: Worker) -> None:
    seed(worker)
    output = result_of(worker.ask(query("neighbors", entity="b")))["output"]
    assert output["entity"] == "b"
    assert output["count"] == 2
    data = worker.records[NS].data
    assert sorted((n["entity"], n["relationship"]["metadata"]["n"]) for n in output["neighbors"]) == [
        ("a", 0),
        ("g", 3),
    ]
    assert {json.dumps(n["relationship"], sort_keys=True) for n in output["neighbors"]} == {
        json.dumps(data[RelationshipKey("a", OWNER, "b")].to_dict(), sort_keys=True),
        json.dumps(data[RelationshipKey("b", MEMBER, "g")].to_dict(), sort_keys=True),
    }
    out_only = result_of(worker.ask(query("neighbors", entity="a", direction="out", types=["owner"])))[
        "output"
    ]
    assert sorted(n["entity"] for n in out_only["neighbors"]) == ["b", "c", "d"]
    parents = result_of(worker.ask(query("neighbors", entity="a", types=["child"], direction="out")))[
        "output"
    ]
    assert [n["entity"] for n in parents["neighbors"]] == ["org"]


def test_service__query_detect_cycles__from_an_entity(worker: Worker) -> None:
    worker.ok(create("x", "owner", "y", "s-1"))
    worker.ok(create("y", "owner", "z", "s-2"))
    assert result_of(worker.ask(query("detect_cycles", entity="x")))["output"] == {
        "scope": "entity",
        "entity": "x",
        "count": 0,
        "cycles": [],
    }
    worker.ok(create("z", "owner", "x", "s-3"))  # owner cycles are allowed (only parent is checked)
    reply = worker.ask(query("detect_cycles", entity="x", request_id="q-2"))
    assert reply.deferred is None
    output = result_of(reply)["output"]
    assert (output["scope"], output["count"]) == ("entity", 1)
    assert output["cycles"] == [["x", "y", "z", "x"]]


def test_service__query_resolve_dependencies__order_and_cycle(worker: Worker) -> None:
    for i, (s, t, d) in enumerate(
        [("app", "owner", "lib"), ("lib", "owner", "core"), ("app", "owner", "core")]
    ):
        worker.ok(create(s, t, d, f"s-{i}"))
    output = result_of(worker.ask(query("resolve_dependencies", entity="app")))["output"]
    assert output == {"entity": "app", "count": 3, "order": ["core", "lib", "app"]}
    alone = result_of(worker.ask(query("resolve_dependencies", entity="nobody")))["output"]
    assert alone == {"entity": "nobody", "count": 1, "order": ["nobody"]}
    worker.ok(create("core", "owner", "app", "s-9"))
    error = assert_error(worker.ask(query("resolve_dependencies", entity="app")), "cycle_detected", "q-1")
    cycle = error["details"]["cycle"]
    assert cycle[0] == cycle[-1]
    assert set(cycle) <= {"app", "lib", "core"}
    assert error["details"]["entity"] == "app"


@pytest.mark.parametrize(
    ("relationships", "expected"),
    [
        ([], {"relationships": 0, "entities": 0, "degree": {"min": 0, "max": 0, "mean": 0.0, "median": 0}}),
        (
            [("a", "owner", "b"), ("a", "owner", "c"), ("a", "owner", "d"), ("b", "member", "g")],
            {"relationships": 4, "entities": 5, "degree": {"min": 1, "max": 3, "mean": 1.6, "median": 1}},
        ),
        (
            [("a", "linked", "b"), ("b", "linked", "c"), ("c", "child", "d")],
            {"relationships": 3, "entities": 4, "degree": {"min": 1, "max": 2, "mean": 1.5, "median": 1}},
        ),
        (
            [("a", "owner", "b"), ("a", "owner", "c"), ("b", "owner", "c")],
            {"relationships": 3, "entities": 3, "degree": {"min": 2, "max": 2, "mean": 2.0, "median": 2}},
        ),
    ],
    ids=["empty", "star", "chain", "triangle"],
)
def test_service__query_stats(
    worker: Worker, relationships: list[tuple[str, str, str]], expected: dict[str, Any]
) -> None:
    for i, r in enumerate(relationships):
        worker.ok(create(*r, request_id=f"s-{i}"))
    output = result_of(worker.ask(query("stats")))["output"]
    by_type = {"owner": 0, "member": 0, "linked": 0, "parent": 0}
    for _, t, _ in relationships:
        by_type["parent" if t == "child" else t] += 1
    assert output == {"namespace": NS, "by_type": by_type, "schema": None} | expected


def test_service__query_stats__reports_the_schema(worker: Worker) -> None:
    worker.ok(set_schema({"member": ["* -> group"]}))
    assert result_of(worker.ask(query("stats")))["output"]["schema"] == {"member": ["* -> group"]}


# --------------------------------------------------------------------------- deferred analysis


def test_service__analyze__deferred_then_finished(worker: Worker) -> None:
    seed(worker)
    worker.ok(create("x", "linked", "y", "s-x"))
    msg = worker.message(query("analyze", top=2), spec=QUERIES)
    (reply,) = worker.service.handle(msg)
    assert reply.deferred is not None
    assert (reply.message, reply.outbound, reply.changes, reply.result) == (None, [], [], None)
    value = reply.deferred.work()
    worker.monotonic += 0.25
    (done,) = reply.deferred.finish(value, None)
    worker.complete(done)
    assert done.message is msg  # acknowledged only now
    assert worker.acked[-1] is msg
    assert done.deferred is None
    result = result_of(done)
    assert (result["status"], result["action"], result["request_id"]) == ("ok", "analyze", "q-1")
    output = result["output"]
    assert output["entities"] == 8
    assert output["relationships"] == 6
    assert output["components"] == {"count": 2, "largest": 6, "sizes_top": [6, 2]}
    assert output["top_by_degree"][0] == {"entity": "a", "degree": 4}
    assert len(output["top_by_degree"]) == len(output["top_by_pagerank"]) == 2
    assert set(output["snapshot"]) == {"age_ms", "relationships", "applied_offset"}
    assert isinstance(output["snapshot"]["age_ms"], float)
    assert output["snapshot"]["relationships"] == 6
    assert output["snapshot"]["applied_offset"] == worker.service.applied[PARTITION]
    assert done.remember is None
    assert events_of(done) == []


def test_service__analyze__snapshot_age_by_the_service_clock(worker: Worker) -> None:
    """NamespaceService(monotonic=...) is the clock of snapshot ages and of the cache."""
    seed(worker)
    (reply,) = worker.send(query("analyze"), spec=QUERIES)
    assert reply.deferred is not None
    value = reply.deferred.work()
    worker.monotonic += 0.25
    (done,) = reply.deferred.finish(value, None)
    assert result_of(done)["output"]["snapshot"]["age_ms"] == 250.0


def test_service__analyze__cached_snapshot_reused_within_max_age(worker: Worker) -> None:
    seed(worker)
    first = worker.ask(query("analyze"))
    worker.ok(create("new", "owner", "thing", "s-new"))
    worker.monotonic += 1.0
    cached = result_of(worker.ask(query("analyze", request_id="q-2")))["output"]
    assert cached["entities"] == result_of(first)["output"]["entities"]  # the old snapshot
    assert cached["snapshot"]["age_ms"] == 1000.0
    fresh = result_of(worker.ask(query("analyze", request_id="q-3", max_age_ms=0)))["output"]
    assert fresh["entities"] == cached["entities"] + 2
    assert fresh["snapshot"]["age_ms"] == 0.0


def test_service__detect_cycles_namespace_wide__deferred(worker: Worker) -> None:
    for i, (s, t, d) in enumerate(
        [("x", "owner", "y"), ("y", "member", "z"), ("z", "owner", "x"), ("p", "parent", "q")]
    ):
        worker.ok(create(s, t, d, f"s-{i}"))
    (reply,) = worker.send(query("detect_cycles"), spec=QUERIES)
    assert reply.deferred is not None and reply.outbound == []
    (done,) = worker.run_deferred(reply)
    output = result_of(done)["output"]
    assert (output["scope"], output["count"]) == ("namespace", 1)
    (cycle,) = output["cycles"]
    assert cycle[0] == cycle[-1] and sorted(cycle[:-1]) == ["x", "y", "z"]
    assert "snapshot" in output


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NotFound("gone", what="x"), "not_found"),
        (ResourceLimit("too big", limit=1), "resource_limit"),
        (CycleDetected("loop", cycle=["a", "b", "a"]), "cycle_detected"),
        (RuntimeError("igraph exploded"), "internal_error"),
        (MemoryError(), "internal_error"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_service__deferred__finish_with_an_error__error_result(
    worker: Worker, error: BaseException, code: str
) -> None:
    msg = worker.message(query("analyze"), spec=QUERIES)
    (reply,) = worker.service.handle(msg)
    assert reply.deferred is not None
    (done,) = reply.deferred.finish(None, error)
    worker.complete(done)
    assert done.message is msg
    result_error = assert_error(done, code, "q-1")
    if code == "internal_error":
        assert type(error).__name__ in result_error["message"]
        assert "igraph exploded" not in result_error["message"]  # internals are logged, not published
    else:
        assert result_error["details"] == error.details  # type: ignore[attr-defined]
    assert done.remember is None


def test_service__detect_cycles_namespace_wide__linked__validation_error_from_the_work(
    worker: Worker,
) -> None:
    worker.ok(create("a", "linked", "b"))
    reply = worker.ask(query("detect_cycles", types=["linked"]))
    error = assert_error(reply, "validation_error", "q-1")
    assert error["details"] == {"field": "types"}


def test_service__detect_cycles_namespace_wide__unknown_type__answered_at_once(worker: Worker) -> None:
    (reply,) = worker.send(query("detect_cycles", types=["friend"]), spec=QUERIES)
    assert reply.deferred is None
    assert_error(reply, "unknown_relationship_type", "q-1")


# --------------------------------------------------------------------------- read-your-writes


def test_service__query_with_min_offset__parked_until_applied(worker: Worker) -> None:
    worker.ok(create("a", "owner", "b", "s-1"), offset=10)
    q = worker.message(query("neighbors", entity="a", min_offset=12), spec=QUERIES, offset=500)
    assert worker.service.handle(q) == []  # parked: no reply, not acknowledged
    assert q not in worker.acked

    # a write below min_offset: its own reply only
    (r11,) = worker.send(create("a", "owner", "c", "s-2"), offset=11)
    assert r11.message is not None and r11.message.offset == 11

    # the write at min_offset: its reply, then the released query's
    w = worker.message(create("a", "owner", "d", "s-3"), offset=12)
    replies = worker.process(w)
    assert [r.message for r in replies] == [w, q]
    assert result_of(replies[0])["action"] == "create"
    answer = result_of(replies[1])
    assert (answer["action"], answer["request_id"], answer["offset"]) == ("neighbors", "q-1", 12)
    assert answer["source"] == {"topic": "nexus.queries", "partition": PARTITION, "offset": 500}
    assert sorted(n["entity"] for n in answer["output"]["neighbors"]) == ["b", "c", "d"]  # sees the write
    assert worker.acked[-2:] == [w, q]
    # answered once: a later write releases nothing more
    assert len(worker.send(create("a", "owner", "e", "s-4"), offset=13)) == 1


def test_service__release_parked__once_the_write_is_durable(worker: Worker) -> None:
    """handle() answers the write alone; release_parked(partition), asked after the write's
    replies are durable, answers the queries that waited for it (reading the records)."""
    q = worker.message(query("get", type="owner", source="a", target="b", min_offset=5), spec=QUERIES)
    assert worker.service.handle(q) == []
    assert worker.service.release_parked(PARTITION) == []  # nothing applied yet
    w = worker.message(create("a", "owner", "b", metadata={"k": 1}), offset=5)
    (command_reply,) = worker.service.handle(w)
    worker.complete(command_reply)
    (released,) = worker.service.release_parked(PARTITION)
    assert released.message is q
    assert result_of(released)["output"]["relationship"]["metadata"] == {"k": 1}
    assert worker.service.release_parked(PARTITION) == []
    assert worker.service.release_parked(PARTITION + 1) == []


@pytest.mark.parametrize(("applied", "min_offset"), [(10, 10), (10, 3), (10, 0)])
def test_service__query_with_min_offset_already_applied__answered_at_once(
    worker: Worker, applied: int, min_offset: int
) -> None:
    worker.ok(create(), offset=applied)
    reply = worker.ask(query("stats", min_offset=min_offset))
    assert result_of(reply)["output"]["relationships"] == 1
    assert result_of(reply)["offset"] == applied


def test_service__parked_query__released_only_by_its_own_partition(worker: Worker) -> None:
    worker.ok(create(), offset=5, partition=PARTITION)
    assert worker.send(query("stats", min_offset=6), spec=QUERIES) == []
    # another partition's progress (another namespace there) does not count
    other = worker.send(create(request_id="r-other"), key=b"other", partition=PARTITION + 1, offset=50)
    assert len(other) == 1
    # an undecodable message on the right partition still counts as applied
    replies = worker.send(b"not json", offset=6)
    assert [specs(r) for r in replies] == [["deadletter"], ["results"]]
    assert replies[0].progress == (PARTITION, 6)
    assert result_of(replies[1])["output"]["relationships"] == 1


def test_service__parked_queries__released_in_order_when_reached(worker: Worker) -> None:
    worker.ok(create(), offset=1)
    for i, min_offset in enumerate([3, 2, 4]):
        assert worker.send(query("stats", f"q-{i}", min_offset=min_offset), spec=QUERIES) == []
    assert request_ids(worker.send(create(request_id="s-2", target="w2"), offset=2)) == ["s-2", "q-1"]
    replies = worker.send(create(request_id="s-4", target="w4"), offset=4)  # offset 3 was skipped
    assert request_ids(replies) == ["s-4", "q-0", "q-2"]


def test_service__parked_query__timeout_after_the_wait() -> None:
    worker = Worker(Limits(min_offset_wait_s=30.0))
    worker.ok(create(), offset=7)
    q = worker.message(query("stats", min_offset=100), spec=QUERIES)
    assert worker.service.handle(q) == []
    worker.monotonic += 29.0
    assert worker.service.release_overdue() == []
    worker.monotonic += 1.0
    (reply,) = worker.service.release_overdue()
    worker.complete(reply)
    assert reply.message is q
    error = assert_error(reply, "timeout", "q-1")
    assert error["details"] == {"min_offset": 100, "applied_offset": 7}
    assert "30.0s" in error["message"]
    assert reply.remember is None
    assert worker.acked[-1] is q
    # answered once
    assert worker.service.release_overdue() == []
    assert len(worker.send(create(request_id="r-late", target="w9"), offset=100)) == 1


def test_service__parked_query__timeout_when_nothing_was_ever_applied(worker: Worker) -> None:
    assert worker.send(query("stats", min_offset=0), spec=QUERIES) == []
    worker.monotonic += Limits().min_offset_wait_s
    (reply,) = worker.service.release_overdue()
    assert assert_error(reply, "timeout", "q-1")["details"] == {"min_offset": 0, "applied_offset": None}


def test_service__parked_analyze__released_as_deferred(worker: Worker) -> None:
    assert worker.send(query("analyze", min_offset=1), spec=QUERIES) == []
    command_reply, released = worker.send(create(), offset=1)
    assert command_reply.deferred is None
    assert released.deferred is not None and released.message is None
    (done,) = worker.run_deferred(released)
    assert result_of(done)["output"]["relationships"] == 1


# --------------------------------------------------------------------------- idempotency


@pytest.mark.parametrize(
    "second",
    [
        create(),  # a redelivery
        create(target="wallet:2"),  # another payload under the same request id
        delete(request_id="r-create"),
        create(source=""),  # even an invalid one
        batch(step("create", "x", "owner", "y"), request_id="r-create"),
    ],
    ids=["same", "other target", "delete", "invalid", "batch"],
)
def test_service__same_request_id__replays_the_first_result(worker: Worker, second: dict[str, Any]) -> None:
    (first,) = worker.send(create())
    before = worker.graph_state()
    msg = worker.message(second)
    (reply,) = worker.service.handle(msg)
    worker.complete(reply)
    assert specs(reply) == ["results"]  # no events the second time
    assert reply.outbound[0] == only(first, RESULTS)  # same key, value and headers
    assert reply.result == first.result
    assert reply.changes == []
    assert reply.remember is None
    assert reply.progress == (PARTITION, msg.offset)
    assert worker.acked[-1] is msg
    assert worker.graph_state() == before


def test_service__same_request_id__replays_an_error_result(worker: Worker) -> None:
    (first,) = worker.send(create(type_="friend"))
    reply = worker.one(create())
    assert specs(reply) == ["results"]
    assert reply.outbound[0].value == only(first, RESULTS).value
    assert result_of(reply)["error"]["code"] == "unknown_relationship_type"
    assert len(worker.service.graph(NS)) == 0


def test_service__same_request_id__other_namespace_is_another_request(worker: Worker) -> None:
    assert worker.ok(create(), key=b"a")
    assert worker.ok(create(), key=b"b")["relationship"]["namespace"] == "b"
    assert len(worker.service.graph("a")) == len(worker.service.graph("b")) == 1


def test_service__queries__not_remembered__answered_afresh(worker: Worker) -> None:
    worker.ok(create())
    first = worker.ask(query("stats", "q-same"))
    worker.ok(create(target="wallet:2", request_id="r-2"))
    second = worker.ask(query("stats", "q-same"))
    assert result_of(first)["output"]["relationships"] == 1
    assert result_of(second)["output"]["relationships"] == 2
    assert first.remember is None and second.remember is None
    assert worker.log.get(NS, "q-same") is None


def test_service__query_with_a_command_request_id__not_answered_from_the_log(worker: Worker) -> None:
    worker.ok(create())
    result = result_of(worker.ask(query("stats", "r-create")))
    assert result["action"] == "stats"
    assert result["output"]["relationships"] == 1


# --------------------------------------------------------------------------- recovery


def test_service__rebuild_from_the_tables__state_restored(worker: Worker) -> None:
    worker.ok(create("a", "parent", "b", "s-1", metadata={"k": 1}))
    worker.ok(create("b", "parent", "c", "s-2"))
    worker.ok(create("x", "linked", "y", "s-3", expires_at=LATER.isoformat()))
    worker.ok(set_schema({"owner": ["user -> wallet"]}))
    worker.ok(create("user:1", "owner", "wallet:1", "s-4"), key=b"other")
    records = {ns: dict(r.data) for ns, r in worker.records.items()}
    assert worker.service.applied == {PARTITION: 104}

    worker.rebuild()
    assert worker.service.applied == {PARTITION: 104}
    for namespace, data in records.items():
        graph = worker.service.graph(namespace)
        assert len(graph) == len(data)
        for key, stored in data.items():
            assert graph.get(key) == stored
    # duplicates, cycles, the schema and expiry are all known again
    assert_error(worker.one(create("b", "child", "a", "r-dup")), "duplicate_relationship", "r-dup")
    assert_error(worker.one(create("c", "parent", "a", "r-cyc")), "cycle_detected", "r-cyc")
    assert_error(worker.one(create("wallet:1", "owner", "user:1", "r-sch")), "schema_violation", "r-sch")
    assert_error(
        worker.one(create("user:1", "owner", "wallet:1", "r-dup2"), key=b"other"),
        "duplicate_relationship",
        "r-dup2",
    )
    assert worker.service.namespaces_due(LATER) == [NS]
    # the request log survives too: a redelivery is answered from it
    assert specs(worker.one(create("a", "parent", "b", "s-1"))) == ["results"]


def test_service__load_helpers__from_stored_keys_and_records(worker: Worker) -> None:
    stored = Relationship(NS, "org:1", PARENT, "team:1", {"k": "v"}, 3, NOW, LATER)
    linked = Relationship("t2", "a", LINKED, "b")
    service = worker.service
    service.reset()
    service.load_record(stored.key.as_stored(NS), stored.to_record())
    service.load_record(linked.key.as_stored("t2"), linked.to_record())
    # the records table is the authority for what load_record indexed
    worker.records_for(NS).data[stored.key] = stored
    worker.records_for("t2").data[linked.key] = linked
    service.load_schema(NS, {"parent": ["org -> team"]})
    service.load_progress(PARTITION, 41)
    service.load_progress(PARTITION, 40)  # never backwards
    assert service.applied == {PARTITION: 41}
    assert service.graph(NS).get(stored.key) == stored
    assert len(service.graph("t2")) == 1
    assert service.graph(NS).schema is not None
    assert_error(worker.one(create("team:1", "child", "org:1")), "duplicate_relationship", "r-create")
    assert_error(worker.one(create("team:2", "parent", "org:2", "r-2")), "schema_violation", "r-2")
    assert_error(worker.one(create("b", "linked", "a", "r-3"), key=b"t2"), "duplicate_relationship", "r-3")
    assert worker.ok(update("team:1", "child", "org:1", expected_version=3))["relationship"]["version"] == 4
    # a query waiting for an offset the restored progress already covers is answered at once
    assert result_of(worker.ask(query("stats", min_offset=41)))["status"] == "ok"


def test_service__reset__forgets_graphs_progress_and_snapshots(worker: Worker) -> None:
    worker.ok(create())
    worker.ask(query("analyze"))
    worker.service.reset()
    assert worker.service.graphs == {}
    assert worker.service.applied == {}
    assert worker.send(query("stats", min_offset=0), spec=QUERIES) == []


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\xfe\x00garbage",
        b"not json",
        b"",
        b"[1, 2]",
        b"null",
        None,
        b"{" + b" " * MAX_MESSAGE_BYTES + b"}",
    ],
    ids=lambda v: repr(v)[:30],
)
@pytest.mark.parametrize("spec", [RELATIONSHIPS, QUERIES, EXECUTIONS], ids=lambda s: s.name)
def test_service__undecodable__deadletter_only(worker: Worker, value: bytes | None, spec: TopicSpec) -> None:
    msg = worker.message(value, key=b"tenant-1", spec=spec)
    (reply,) = worker.service.handle(msg)
    assert specs(reply) == ["deadletter"]
    out = reply.outbound[0]
    assert (out.key, out.value) == (b"tenant-1", value or b"")
    assert out.headers["nexus-error-code"] == b"undecodable"
    assert 0 < len(out.headers["nexus-error-reason"]) <= 1024
    assert out.headers["nexus-source-topic"] == f"nexus.{spec.name}".encode()
    assert out.headers["nexus-source-partition"] == str(PARTITION).encode()
    assert out.headers["nexus-source-offset"] == str(msg.offset).encode()
    assert (reply.changes, reply.remember, reply.result) == ([], None, None)
    assert reply.message is msg
    assert reply.progress == ((PARTITION, msg.offset) if spec is RELATIONSHIPS else None)
    assert worker.service.graphs == {}


@pytest.mark.parametrize(
    "key", [b"a b", b"ns/1", b"ns\n", b"n" * 129, b"\xff\xfe", "café".encode()], ids=repr
)
def test_service__invalid_key__deadletter(worker: Worker, key: bytes) -> None:
    value = json.dumps(create()).encode()
    reply = worker.one(value, key=key)
    assert specs(reply) == ["deadletter"]
    out = reply.outbound[0]
    assert (out.key, out.value) == (key, value)
    assert out.headers["nexus-error-code"] == b"invalid_key"
    assert (reply.changes, reply.remember) == ([], None)
    assert worker.service.graphs == {}


@pytest.mark.parametrize(
    ("key", "namespace"),
    [
        (None, "default"),
        (b"", "default"),
        (b"tenant-1", "tenant-1"),
        (b"a.b_c:d-1", "a.b_c:d-1"),
        (b"N" * 128, "N" * 128),
    ],
    ids=repr,
)
def test_service__valid_key__is_the_namespace(worker: Worker, key: bytes | None, namespace: str) -> None:
    reply = worker.one(create(), key=key)
    assert result_of(reply)["namespace"] == namespace
    assert only(reply, RESULTS).key == namespace.encode()
    assert events_of(reply)[0]["relationship"]["namespace"] == namespace
    assert reply.namespace == namespace
    assert len(worker.records_for(namespace).data) == 1


@pytest.mark.parametrize(
    ("key", "namespace"),
    [(b"tenant-1", "tenant-2"), (b"tenant-1", "Tenant-1"), (None, "tenant-1"), (b"tenant-1", "default")],
    ids=repr,
)
def test_service__namespace_field_differs_from_key__validation_error(
    worker: Worker, key: bytes | None, namespace: str
) -> None:
    error = assert_error(worker.one(create(namespace=namespace), key=key), "validation_error", "r-create")
    assert error_fields(error) == {"namespace"}
    assert namespace in error["message"]
    assert all(len(g) == 0 for g in worker.service.graphs.values())


def test_service__namespace_field_equal_to_key__accepted(worker: Worker) -> None:
    assert worker.ok(create(namespace="tenant-1"), key=b"tenant-1")["relationship"]["namespace"] == "tenant-1"


LONE_SURROGATE = "\ud800"  # valid as a JSON escape, not encodable as UTF-8


@pytest.mark.parametrize(
    "message",
    [
        create(request_id="r" + LONE_SURROGATE),
        create(principal="p" + LONE_SURROGATE),
        create(source="a" + LONE_SURROGATE),
        create(metadata={"k": LONE_SURROGATE}),
    ],
    ids=["request_id", "principal", "source", "metadata"],
)
def test_service__lone_surrogate_escape__deadlettered_not_raised(
    worker: Worker, message: dict[str, Any]
) -> None:
    reply = worker.one(json.dumps(message).encode())  # ASCII: the surrogate travels as an escape
    assert specs(reply) == ["deadletter"]
    assert reply.outbound[0].headers["nexus-error-code"] == b"undecodable"
    assert len(worker.service.graph(NS)) == 0


# --------------------------------------------------------------------------- other topics and failures


def test_service__executions__pattern_not_found(worker: Worker) -> None:
    request = {"request_id": "x-1", "principal": "user:admin", "pattern_id": "onboard", "input": {}}
    reply = worker.one(request, spec=EXECUTIONS)
    error = assert_error(reply, "not_found", "x-1")
    assert error["details"] == {"pattern_id": "onboard", "version": None}
    assert result_of(reply)["action"] == "execute"
    assert result_of(reply)["pattern_id"] == "onboard"
    assert reply.remember == reply.result
    assert reply.progress is None


def test_service__executions__invalid__validation_error(worker: Worker) -> None:
    reply = worker.one({"request_id": "x-1", "principal": "p", "timeout_ms": 0}, spec=EXECUTIONS)
    assert error_fields(assert_error(reply, "validation_error", "x-1")) == {"pattern_id", "timeout_ms"}


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("disk on fire")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nexus_streams.service.plan_create", create()),
        ("nexus_streams.service.plan_delete_entity", delete_entity("e", "r-create")),
        (
            "nexus_streams.service.plan_create",
            batch(step("create", "a", "owner", "b"), request_id="r-create"),
        ),
    ],
    ids=["create", "delete_entity", "batch"],
)
def test_service__exception_in_domain__internal_error_and_not_remembered(
    worker: Worker, monkeypatch: pytest.MonkeyPatch, target: str, message: dict[str, Any]
) -> None:
    before = worker.graph_state()
    with monkeypatch.context() as patch:
        patch.setattr(target, _boom)
        reply = worker.one(message)
    error = assert_error(reply, "internal_error", "r-create")
    assert "RuntimeError" in error["message"]
    assert "disk on fire" not in error["message"]
    assert reply.remember is None  # "the request may be retried"
    assert worker.graph_state() == before
    retry = worker.one(message)
    assert result_of(retry)["status"] == "ok"


def test_service__exception_in_a_query__internal_error(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("nexus_streams.service.algorithms.find_path", _boom)
    error = assert_error(worker.ask(query("find_path", source="a", target="b")), "internal_error", "q-1")
    assert "RuntimeError" in error["message"]


def test_service__exception_after_partial_batch__rolled_back(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the third command must undo the first two as well."""
    from nexus_streams.domain.graph import plan_delete as real

    calls: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("bug")
        return real(*args, **kwargs)

    worker.ok(create("x", "owner", "y", "s-1"))
    worker.ok(create("x", "owner", "z", "s-2"))
    before = worker.graph_state()
    monkeypatch.setattr("nexus_streams.service.plan_delete", flaky)
    reply = worker.one(
        batch(
            step("create", "a", "owner", "b"),
            step("delete", "x", "owner", "y"),
            step("delete", "x", "owner", "z"),
        )
    )
    assert_error(reply, "internal_error", "r-batch")
    assert worker.graph_state() == before


def test_service__error_events_of_queries__name_the_principal() -> None:
    """An `error` event names who asked (Event.principal), for queries as for commands: a failed
    query, a parked query timing out, and a deferred query failing in its work."""
    worker = Worker(Limits(min_offset_wait_s=1.0))
    principals = [events_of(worker.one(create(source="")))[0].get("principal")]
    principals.append(
        events_of(worker.ask(query("get", type="owner", source="a", target="b")))[0].get("principal")
    )
    assert worker.send(query("stats", "q-2", min_offset=10**6), spec=QUERIES) == []
    worker.monotonic += 1.0
    (timed_out,) = worker.service.release_overdue()
    principals.append(events_of(timed_out)[0].get("principal"))
    principals.append(
        events_of(worker.ask(query("detect_cycles", "q-3", types=["linked"])))[0].get("principal")
    )
    assert principals == ["user:admin", "user:reader", "user:reader", "user:reader"]


def test_service__reset__parked_queries_are_dropped_with_the_assignment(worker: Worker) -> None:
    """reset() runs when the worker's partitions are (re)assigned. A parked query was never
    acknowledged, so it is delivered again after the rebalance; answering the old copy as well
    would publish two results for one request_id ("exactly one result per request_id")."""
    worker.ok(create(), offset=1)
    parked = worker.message(query("stats", min_offset=2), spec=QUERIES, offset=7)
    assert worker.service.handle(parked) == []
    worker.rebuild()  # NamespaceActor.rebuild: reset() and reload from the tables
    redelivered = worker.message(query("stats", min_offset=2), spec=QUERIES, offset=7)
    assert worker.service.handle(redelivered) == []
    replies = worker.send(create(request_id="r-2", target="w2"), offset=2)
    assert [r.message for r in replies][1:] == [redelivered]


# --------------------------------------------------------------------------- request retention


# --------------------------------------------------------------------------- executions


def _lookup(*documents: dict[str, Any]) -> PatternLookup:
    from nexus_streams.domain.validation import validate_pattern
    from nexus_streams.patterns import system_patterns

    lookup = PatternLookup()
    for pattern in [*system_patterns(), *(validate_pattern(d) for d in documents)]:
        lookup.add(pattern, latest=True)
    return lookup


def _execute(worker: Worker, request_id: str, pattern_id: str, lookup: PatternLookup, **fields: Any) -> Reply:
    msg = worker.message(
        {"request_id": request_id, "principal": "user:admin", "pattern_id": pattern_id, **fields},
        spec=EXECUTIONS,
    )
    [reply] = worker.service.handle(msg, lookup)
    worker.complete(reply)
    return reply


def test_service__execute_user_onboarding__commits_and_reports(worker: Worker) -> None:
    reply = _execute(
        worker, "x-1", "user_onboarding", _lookup(), input={"source": "user:9", "target": "wallet:9"}
    )
    result = result_of(reply)
    assert result["status"] == "ok", result
    assert result["pattern_id"] == "user_onboarding"
    assert result["output"]["steps"]["create"]["status"] == "completed"
    types = [body(o)["type"] for o in reply.outbound if o.spec is EVENTS]
    assert "relationship_created" in types and "user_created" in types and "pattern_executed" in types
    assert types.index("relationship_created") < types.index("user_created")
    assert all(
        o.headers.get("nexus-pattern-id") == b"user_onboarding" for o in reply.outbound if o.spec is EVENTS
    )
    [change] = reply.changes
    assert change.relationship.metadata == {"wallet_type": "primary"}
    assert reply.execution_stats is not None and reply.execution_stats.status == "ok"
    assert reply.remember == reply.result
    # the same request again: the same result, no second effect
    again = worker.one(
        {
            "request_id": "x-1",
            "principal": "user:admin",
            "pattern_id": "user_onboarding",
            "input": {"source": "user:9", "target": "wallet:9"},
        },
        spec=EXECUTIONS,
    )
    assert result_of(again) == result
    assert again.changes == []


def test_service__execute_financial_transaction__path_not_found_changes_nothing(worker: Worker) -> None:
    reply = _execute(
        worker, "x-2", "financial_transaction", _lookup(), input={"source": "user:a", "target": "user:b"}
    )
    result = result_of(reply)
    assert result["status"] == "error"
    assert result["error"]["code"] == "path_not_found"
    assert reply.changes == []
    assert result_of(reply)["output"]["steps"]["find_path"]["status"] == "failed"
    assert "execution_failed" in [body(o)["type"] for o in reply.outbound if o.spec is EVENTS]


def test_service__execute_waiting__state_kept_duplicate_ignored_resume_finishes(worker: Worker) -> None:
    flaky = {
        "id": "flaky",
        "name": "Flaky",
        "description": "fails once, then succeeds",
        "steps": [
            {
                "type": "control",
                "action": "fail",
                "parameters": {"code": "timeout", "message": "slow", "times": 1},
                "retry": {"max_attempts": 3, "initial_backoff_ms": 500, "jitter": 0},
            },
            {
                "type": "relationship",
                "action": "create",
                "parameters": {"type": "member"},
                "depends_on": ["fail"],
            },
        ],
    }
    lookup = _lookup(flaky)
    first = _execute(worker, "x-3", "flaky", lookup, input={"source": "user:f", "target": "group:f"})
    assert first.result is None and first.remember is None
    assert first.execution_state is not None and first.execution_state[1] is not None
    assert first.wake_at is not None and first.wake_at[:2] == (NS, "x-3")
    assert (
        worker.service.graph(NS).index.has(canonical_key("user:f", RelationType.MEMBER, "group:f")) is False
    )

    duplicate = _execute(worker, "x-3", "flaky", lookup, input={"source": "user:f", "target": "group:f"})
    assert duplicate.outbound == [] and duplicate.changes == []

    worker.now = first.wake_at[2]
    assert worker.service.waiting_due(worker.now) == [(NS, "x-3")]
    msg = worker.message(
        {"request_id": "resume:1", "principal": "system", "action": "resume", "execution": "x-3"},
        spec=EXECUTIONS,
    )
    [done] = worker.service.handle(msg, lookup)
    result = result_of(done)
    assert result["status"] == "ok", result
    assert result["request_id"] == "x-3"
    assert result["output"]["steps"]["fail"]["attempts"] == 2
    assert done.execution_state == (f"{NS}\x1fx-3", None)
    assert worker.service.waiting_due(worker.now) == []


# --------------------------------------------------------------------------- redelivery after a crash


def test_service__redelivered_message__the_same_result_no_second_effect(worker: Worker) -> None:
    """The very message again (its events come from the actor's journal: streams/journal.py)."""
    msg = worker.message(create(request_id="r-crash"))
    [first] = worker.process(msg)
    [again] = worker.service.handle(msg)
    assert result_of(again) == result_of(first)
    assert [o.spec for o in again.outbound] == [RESULTS]
    assert again.changes == []
    assert len(worker.service.graph(NS)) == 1


def test_service__client_duplicate__result_only(worker: Worker) -> None:
    worker.process(worker.message(create(request_id="r-dup")))
    [again] = worker.send(create(request_id="r-dup"))  # a new message with the same request id
    assert [o.spec for o in again.outbound] == [RESULTS]
    assert again.changes == []


def test_service__execute_store_unavailable__not_remembered_a_retry_runs_again(worker: Worker) -> None:
    from nexus_streams.domain.errors import StoreUnavailable

    down = PatternLookup(error=StoreUnavailable("redis did not answer"))
    failed = _execute(
        worker, "x-down", "user_onboarding", down, input={"source": "user:d", "target": "wallet:d"}
    )
    assert result_of(failed)["error"]["code"] == "store_unavailable"
    assert failed.remember is None and worker.log.get(NS, "x-down") is None
    again = _execute(
        worker, "x-down", "user_onboarding", _lookup(), input={"source": "user:d", "target": "wallet:d"}
    )
    assert result_of(again)["status"] == "ok"
