"""NamespaceService.handle: one message in, the outbound messages and changes out, without Faust."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from nexus_streams.codec import MAX_MESSAGE_BYTES
from nexus_streams.domain.graph import Put, Remove
from nexus_streams.domain.relationships import Relationship, RelationshipKey, RelationType
from nexus_streams.messages import RESULT_ADAPTER, Result
from nexus_streams.service import NamespaceService, Outbound, Received, Reply
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
PARTITION = 3
NS = "ns1"


class InMemoryRequestLog:
    """The agent's request table: results by (namespace, request_id)."""

    def __init__(self) -> None:
        self.results: dict[tuple[str, str], Result] = {}

    def get(self, namespace: str, request_id: str) -> Result | None:
        return self.results.get((namespace, request_id))

    def put(self, result: Result) -> None:
        assert result.request_id is not None
        self.results[(result.namespace, result.request_id)] = result


class Harness:
    """Feeds messages like the agent does: in offset order, remembering what the reply says."""

    def __init__(self) -> None:
        self.log = InMemoryRequestLog()
        self.service = NamespaceService(self.log, clock=lambda: NOW)
        self.offset = 100

    def send(
        self,
        value: dict[str, Any] | bytes | None,
        *,
        spec: TopicSpec = RELATIONSHIPS,
        key: bytes | None = NS.encode(),
    ) -> Reply:
        raw = json.dumps(value).encode() if isinstance(value, dict) else value
        self.offset += 1
        msg = Received(
            spec=spec,
            topic=f"nexus.{spec.name}",
            partition=PARTITION,
            offset=self.offset,
            key=key,
            value=raw,
        )
        reply = self.service.handle(msg)
        if reply.remember is not None:
            self.log.put(reply.remember)
        return reply


@pytest.fixture
def harness() -> Harness:
    return Harness()


def create(
    source: str = "user:1", type_: str = "owner", target: str = "wallet:1", **kw: Any
) -> dict[str, Any]:
    return {
        "request_id": kw.pop("request_id", "r-create"),
        "principal": "user:admin",
        "action": "create",
        "type": type_,
        "source": source,
        "target": target,
    } | kw


def delete(
    source: str = "user:1", type_: str = "owner", target: str = "wallet:1", **kw: Any
) -> dict[str, Any]:
    data = create(source, type_, target, **kw) | {"action": "delete"}
    if "request_id" not in kw:
        data["request_id"] = "r-delete"
    return data


def without(data: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in fields}


def only(reply: Reply, spec: TopicSpec) -> Outbound:
    matching = [o for o in reply.outbound if o.spec is spec]
    assert len(matching) == 1, [o.spec.name for o in reply.outbound]
    return matching[0]


def body(out: Outbound) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(out.value)
    return value


def specs(reply: Reply) -> list[str]:
    return [o.spec.name for o in reply.outbound]


def assert_error(reply: Reply, code: str, request_id: str | None = "r-create") -> dict[str, Any]:
    """An error result plus an `error` event carrying the same error body; returns the error."""
    result = body(only(reply, RESULTS))
    assert result["status"] == "error"
    assert result.get("request_id") == request_id
    assert result["error"]["code"] == code
    assert "output" not in result
    event = body(only(reply, EVENTS))
    assert event["type"] == "error"
    assert event["error"] == result["error"]
    assert event.get("request_id") == request_id
    assert only(reply, EVENTS).headers["nexus-event-type"] == b"error"
    assert only(reply, RESULTS).headers["nexus-status"] == b"error"
    assert reply.changes == []
    error: dict[str, Any] = result["error"]
    return error


def error_fields(error: dict[str, Any]) -> set[str]:
    return {e["field"] for e in error["details"]["errors"]}


# --------------------------------------------------------------------------- create / delete


def test_service__create__ok_result_and_created_event(harness: Harness) -> None:
    reply = harness.send(create(metadata={"since": 2020}))
    assert specs(reply) == ["results", "events"]
    rel = Relationship(NS, "user:1", RelationType.OWNER, "wallet:1", {"since": 2020}, 1, NOW, NOW)

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
        "output": {"relationship": rel.to_dict()},
        "offset": harness.offset,
        "source": {
            "topic": "nexus.relationships",
            "partition": PARTITION,
            "offset": harness.offset,
        },
        "processed_at": NOW_JSON,
    }

    event_out = only(reply, EVENTS)
    assert event_out.key == b"ns1"
    assert event_out.headers["nexus-event-type"] == b"relationship_created"
    assert event_out.headers["nexus-namespace"] == b"ns1"
    assert body(event_out) == {
        "type": "relationship_created",
        "namespace": NS,
        "occurred_at": NOW_JSON,
        "request_id": "r-create",
        "principal": "user:admin",
        "relationship": rel.to_dict(),
    }

    assert reply.changes == [Put(rel)]
    assert reply.remember is not None
    assert reply.remember == reply.result
    assert RESULT_ADAPTER.validate_json(result_out.value) == reply.result
    assert reply.namespace == NS
    assert harness.service.graph(NS).get(rel.key) == rel
    assert harness.log.get(NS, "r-create") == reply.result


def test_service__create_child__stored_and_reported_as_parent(harness: Harness) -> None:
    reply = harness.send(create("team:1", "child", "org:1"))
    relationship = body(only(reply, RESULTS))["output"]["relationship"]
    assert (relationship["source"], relationship["type"], relationship["target"]) == (
        "org:1",
        "parent",
        "team:1",
    )
    assert harness.service.graph(NS).targets("org:1", RelationType.PARENT) == {"team:1"}


@pytest.mark.parametrize(
    ("created", "deleted"),
    [
        (("user:1", "owner", "wallet:1"), ("user:1", "owner", "wallet:1")),
        (("org:1", "parent", "team:1"), ("team:1", "child", "org:1")),
        (("a", "linked", "b"), ("b", "linked", "a")),
    ],
    ids=repr,
)
def test_service__delete__ok_result_and_deleted_event(
    harness: Harness, created: tuple[str, str, str], deleted: tuple[str, str, str]
) -> None:
    created_reply = harness.send(create(*created))
    rel = created_reply.changes[0].relationship
    reply = harness.send(delete(*deleted))
    assert specs(reply) == ["results", "events"]
    result = body(only(reply, RESULTS))
    assert (result["status"], result["action"], result["request_id"]) == (
        "ok",
        "delete",
        "r-delete",
    )
    assert result["output"] == {"relationship": rel.to_dict()}
    event_out = only(reply, EVENTS)
    assert event_out.headers["nexus-event-type"] == b"relationship_deleted"
    assert only(reply, RESULTS).headers["nexus-request-id"] == b"r-delete"
    event = body(event_out)
    assert event["type"] == "relationship_deleted"
    assert event["relationship"] == rel.to_dict()
    assert event["request_id"] == "r-delete"
    assert reply.changes == [Remove(rel)]
    assert len(harness.service.graph(NS)) == 0


@pytest.mark.parametrize(
    ("setup", "message", "code", "field"),
    [
        ([], create(type_="friend"), "unknown_relationship_type", "type"),
        ([], create(type_="Owner"), "unknown_relationship_type", "type"),
        ([], create("user:1", "owner", "user:1"), "invalid_relationship", "target"),
        ([], create(metadata={"k": "x" * 20_000}), "invalid_relationship", "metadata"),
        ([create()], create(), "duplicate_relationship", None),
        ([create("a", "parent", "b")], create("b", "child", "a"), "duplicate_relationship", None),
        ([create("a", "linked", "b")], create("b", "linked", "a"), "duplicate_relationship", None),
        ([], delete(request_id="r-create"), "not_found", None),
        (
            [create("a", "owner", "b")],
            delete("b", "owner", "a", request_id="r-create"),
            "not_found",
            None,
        ),
    ],
    ids=[
        "unknown type",
        "type is case sensitive",
        "self relationship",
        "metadata too large",
        "duplicate",
        "duplicate inverse parent",
        "duplicate linked",
        "delete missing",
        "delete reversed owner",
    ],
)
def test_service__domain_errors__error_result_and_event(
    harness: Harness,
    setup: list[dict[str, Any]],
    message: dict[str, Any],
    code: str,
    field: str | None,
) -> None:
    for i, earlier in enumerate(setup):
        assert (
            body(only(harness.send(earlier | {"request_id": f"setup-{i}"}), RESULTS))["status"]
            == "ok"
        )
    graph = harness.service.graph(NS)
    before = {r.key: r for r in graph.relationships()}
    reply = harness.send(message)
    error = assert_error(reply, code)
    if field is not None:
        assert error["details"]["field"] == field
    assert specs(reply) == ["results", "events"]
    assert reply.remember == reply.result
    assert {r.key: r for r in graph.relationships()} == before


# --------------------------------------------------------------------------- undecodable values


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\xfe\x00garbage",
        b"\x80",
        b"not json",
        b"{",
        b"",
        b"[1, 2]",
        b'"create"',
        b"42",
        b"null",
        None,
        b"{" + b" " * MAX_MESSAGE_BYTES + b"}",
    ],
    ids=lambda v: repr(v)[:30],
)
def test_service__undecodable__deadletter_only(harness: Harness, value: bytes | None) -> None:
    reply = harness.send(value, key=b"tenant-1")
    assert specs(reply) == ["deadletter"]
    out = reply.outbound[0]
    assert out.spec is DEADLETTER
    assert out.value == (value or b"")
    assert out.key == b"tenant-1"
    assert out.headers["nexus-error-code"] == b"undecodable"
    assert out.headers["nexus-error-reason"]
    assert len(out.headers["nexus-error-reason"]) <= 1024
    assert out.headers["nexus-source-topic"] == b"nexus.relationships"
    assert out.headers["nexus-source-partition"] == str(PARTITION).encode()
    assert out.headers["nexus-source-offset"] == str(harness.offset).encode()
    assert reply.changes == []
    assert reply.remember is None
    assert reply.result is None
    assert harness.service.graphs == {}


# --------------------------------------------------------------------------- invalid fields


@pytest.mark.parametrize(
    ("message", "fields"),
    [
        (without(create(), "source"), {"source"}),
        (without(create(), "target"), {"target"}),
        (without(create(), "type"), {"type"}),
        (without(create(), "principal"), {"principal"}),
        (create(source=""), {"source"}),
        (create(source="user 1"), {"source"}),
        (create(target="x" * 257), {"target"}),
        (create(target=7), {"target"}),
        (create(metadata=[1]), {"metadata"}),
        (create(expires_at="soon"), {"expires_at"}),
        (create(colour="red"), {"colour"}),
        (without(create(), "action"), {"action"}),
        (delete(request_id="r-create", metadata={}), {"metadata"}),
    ],
    ids=lambda v: ",".join(sorted(v)) if isinstance(v, set) else None,
)
def test_service__invalid_field__validation_error_naming_it(
    harness: Harness, message: dict[str, Any], fields: set[str]
) -> None:
    reply = harness.send(message)
    assert specs(reply) == ["results", "events"]  # no dead letter: the request id is usable
    error = assert_error(reply, "validation_error")
    assert error_fields(error) == fields
    for name in fields:
        assert name in error["message"]
    result = body(only(reply, RESULTS))
    assert result.get("action") == message.get("action")
    assert result["namespace"] == NS
    event = body(only(reply, EVENTS))
    assert event.get("principal") == message.get("principal")
    assert event["data"] == {
        "action": message.get("action"),
        "source": {
            "topic": "nexus.relationships",
            "partition": PARTITION,
            "offset": harness.offset,
        },
    }
    assert reply.remember == reply.result
    assert harness.log.get(NS, "r-create") == reply.result
    assert len(harness.service.graph(NS)) == 0


@pytest.mark.parametrize("action", ["update", "", 5, None], ids=repr)
def test_service__unknown_or_odd_action(harness: Harness, action: Any) -> None:
    reply = harness.send(create(action=action))
    code = "validation_error" if action is None else "unknown_action"
    error = assert_error(reply, code)
    if code == "unknown_action":
        assert error["details"]["allowed"] == ["create", "delete"]
    assert body(only(reply, RESULTS)).get("action") == (action if isinstance(action, str) else None)


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
    harness: Harness, message: dict[str, Any]
) -> None:
    reply = harness.send(message)
    assert specs(reply) == ["results", "events", "deadletter"]
    error = assert_error(reply, "validation_error", request_id=None)
    assert reply.result is not None
    assert reply.result.request_id is None
    assert "nexus-request-id" not in only(reply, RESULTS).headers
    assert reply.remember is None
    dead = only(reply, DEADLETTER)
    assert json.loads(dead.value) == message  # the original bytes
    assert dead.key == NS.encode()
    assert dead.headers["nexus-error-code"] == b"validation_error"
    assert dead.headers["nexus-error-reason"] == error["message"].encode()[:1024]
    assert harness.log.results == {}


def test_service__result_without_request_id__matches_the_result_schema(harness: Harness) -> None:
    """`Result.request_id` is a required field ("null only when the request had no usable
    one"), so the published JSON must carry `"request_id": null` to parse as a Result."""
    reply = harness.send(without(create(), "request_id"))
    out = only(reply, RESULTS)
    assert "request_id" in body(out)
    assert body(out)["request_id"] is None
    assert RESULT_ADAPTER.validate_json(out.value) == reply.result


# --------------------------------------------------------------------------- keys and namespaces


@pytest.mark.parametrize(
    "key",
    [
        b"a b",
        b"ns/1",
        b"ns\n",
        b"ns\x00",
        b"n" * 129,
        b"\xff\xfe",
    ],
    ids=repr,
)
def test_service__invalid_key__deadletter(harness: Harness, key: bytes) -> None:
    value = json.dumps(create()).encode()
    reply = harness.send(value, key=key)
    assert specs(reply) == ["deadletter"]
    out = reply.outbound[0]
    assert (out.key, out.value) == (key, value)
    assert out.headers["nexus-error-code"] == b"invalid_key"
    assert reply.changes == []
    assert reply.remember is None
    assert harness.service.graphs == {}


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
def test_service__valid_key__is_the_namespace(
    harness: Harness, key: bytes | None, namespace: str
) -> None:
    reply = harness.send(create(), key=key)
    out = only(reply, RESULTS)
    assert body(out)["status"] == "ok"
    assert body(out)["namespace"] == namespace
    assert out.key == namespace.encode()
    assert body(only(reply, EVENTS))["relationship"]["namespace"] == namespace
    assert len(harness.service.graph(namespace)) == 1


def test_service__namespace_field_equal_to_key__accepted(harness: Harness) -> None:
    reply = harness.send(create(namespace="tenant-1"), key=b"tenant-1")
    assert body(only(reply, RESULTS))["status"] == "ok"
    assert len(harness.service.graph("tenant-1")) == 1


@pytest.mark.parametrize("namespace", ["café", "名前"], ids=ascii)
def test_service__key_and_namespace_field__agree_on_what_a_namespace_is(
    harness: Harness, namespace: str
) -> None:
    """A key is either refused as a namespace (dead letter `invalid_key`) or accepted; when it
    is accepted, naming the same namespace in the `namespace` field must be accepted too."""
    key = namespace.encode()
    plain = harness.send(create(request_id="r-plain"), key=key)
    named = harness.send(create("user:2", request_id="r-named", namespace=namespace), key=key)
    if specs(plain) == ["deadletter"]:
        assert plain.outbound[0].headers["nexus-error-code"] == b"invalid_key"
        assert specs(named) == ["deadletter"]
    else:
        assert body(only(plain, RESULTS))["status"] == "ok"
        assert body(only(named, RESULTS))["status"] == "ok", body(only(named, RESULTS))["error"]


@pytest.mark.parametrize(
    ("key", "namespace"),
    [
        (b"tenant-1", "tenant-2"),
        (b"tenant-1", "Tenant-1"),
        (None, "tenant-1"),
        (b"tenant-1", "default"),
    ],
    ids=repr,
)
def test_service__namespace_field_differs_from_key__validation_error(
    harness: Harness, key: bytes | None, namespace: str
) -> None:
    reply = harness.send(create(namespace=namespace), key=key)
    error = assert_error(reply, "validation_error")
    assert error_fields(error) == {"namespace"}
    assert namespace in error["message"]
    assert all(len(g) == 0 for g in harness.service.graphs.values())


def test_service__namespaces_are_separate(harness: Harness) -> None:
    assert body(only(harness.send(create(), key=b"a"), RESULTS))["status"] == "ok"
    reply = harness.send(create(), key=b"b")  # same request id and relationship, other namespace
    assert body(only(reply, RESULTS))["status"] == "ok"
    assert body(only(reply, RESULTS))["namespace"] == "b"
    assert len(harness.service.graph("a")) == len(harness.service.graph("b")) == 1


# --------------------------------------------------------------------------- redelivery


@pytest.mark.parametrize(
    "second",
    [
        create(),  # a redelivery
        create(target="wallet:2"),  # another payload under the same request id
        delete(request_id="r-create"),
        create(source=""),  # even an invalid one
    ],
    ids=["same", "other target", "delete", "invalid"],
)
def test_service__same_request_id__replays_the_first_result(
    harness: Harness, second: dict[str, Any]
) -> None:
    first = harness.send(create())
    graph_before = {r.key: r for r in harness.service.graph(NS).relationships()}
    reply = harness.send(second)
    assert specs(reply) == ["results"]
    assert reply.outbound[0].value == only(first, RESULTS).value
    assert reply.outbound[0].headers == only(first, RESULTS).headers
    assert reply.outbound[0].key == only(first, RESULTS).key
    assert reply.result == first.result
    assert reply.changes == []
    assert reply.remember is None
    assert {r.key: r for r in harness.service.graph(NS).relationships()} == graph_before


def test_service__same_request_id__replays_an_error_result(harness: Harness) -> None:
    first = harness.send(create(type_="friend"))
    reply = harness.send(create(type_="friend"))
    assert specs(reply) == ["results"]
    assert reply.outbound[0].value == only(first, RESULTS).value
    assert body(reply.outbound[0])["error"]["code"] == "unknown_relationship_type"


def test_service__load__rebuilds_graphs(harness: Harness) -> None:
    rel = Relationship(NS, "user:1", RelationType.OWNER, "wallet:1", {}, 1, NOW, NOW)
    other = Relationship("other", "a", RelationType.LINKED, "b")
    harness.service.load([rel, other])
    assert (
        harness.service.graph(NS).get(RelationshipKey("user:1", RelationType.OWNER, "wallet:1"))
        == rel
    )
    assert len(harness.service.graph("other")) == 1
    assert_error(harness.send(create()), "duplicate_relationship")
    assert body(only(harness.send(delete()), RESULTS))["status"] == "ok"


# --------------------------------------------------------------------------- other topics


def test_service__queries__unknown_action(harness: Harness) -> None:
    query = {"request_id": "q-1", "principal": "user:admin", "action": "neighbors", "entity": "a"}
    reply = harness.send(query, spec=QUERIES)
    error = assert_error(reply, "unknown_action", request_id="q-1")
    assert error["details"] == {"field": "action", "allowed": []}
    assert body(only(reply, RESULTS))["action"] == "neighbors"
    assert body(only(reply, EVENTS))["data"]["source"]["topic"] == "nexus.queries"


def test_service__queries__invalid__validation_error(harness: Harness) -> None:
    reply = harness.send(
        {"request_id": "q-1", "action": "neighbors", "min_offset": -1}, spec=QUERIES
    )
    error = assert_error(reply, "validation_error", request_id="q-1")
    assert error_fields(error) == {"principal", "min_offset"}


def test_service__executions__pattern_not_found(harness: Harness) -> None:
    request = {"request_id": "x-1", "principal": "user:admin", "pattern_id": "onboard", "input": {}}
    reply = harness.send(request, spec=EXECUTIONS)
    error = assert_error(reply, "not_found", request_id="x-1")
    assert error["details"] == {"pattern_id": "onboard"}
    assert "onboard" in error["message"]
    assert body(only(reply, RESULTS)).get("action") is None
    assert reply.remember == reply.result


def test_service__executions__invalid__validation_error(harness: Harness) -> None:
    reply = harness.send({"request_id": "x-1", "principal": "p", "timeout_ms": 0}, spec=EXECUTIONS)
    error = assert_error(reply, "validation_error", request_id="x-1")
    assert error_fields(error) == {"pattern_id", "timeout_ms"}


# --------------------------------------------------------------------------- failures inside


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("disk on fire")


def test_service__exception_in_domain__internal_error_result(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("nexus_streams.service.plan_create", _boom)
    reply = harness.send(create())
    assert specs(reply) == ["results", "events"]
    error = assert_error(reply, "internal_error")
    assert "RuntimeError" in error["message"]
    assert "disk on fire" not in error["message"]  # internals are logged, not published
    assert len(harness.service.graph(NS)) == 0


def test_service__internal_error__a_retry_with_the_same_request_id_runs_again(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """internal_error says "the request may be retried"; a retry carries the same request id
    (the idempotency key), so the failure must not be remembered as the request's result."""
    with monkeypatch.context() as patch:
        patch.setattr("nexus_streams.service.plan_create", _boom)
        assert_error(harness.send(create()), "internal_error")
    retry = harness.send(create())
    assert body(only(retry, RESULTS))["status"] == "ok"
    assert len(harness.service.graph(NS)) == 1


LONE_SURROGATE = "\ud800"  # valid as a JSON escape ("\ud800"), not encodable as UTF-8


@pytest.mark.parametrize(
    "message",
    [
        create(request_id="r" + LONE_SURROGATE),
        create(principal="p" + LONE_SURROGATE),
        create(action="create" + LONE_SURROGATE),
        create(source="a" + LONE_SURROGATE),
        create(type_="owner" + LONE_SURROGATE),
        create(metadata={"k": LONE_SURROGATE}),
    ],
    ids=["request_id", "principal", "action", "source", "type", "metadata"],
)
def test_service__lone_surrogate_escape__answered_not_raised(
    harness: Harness, message: dict[str, Any]
) -> None:
    """A message that json.loads accepts must never make handle() raise (a poison pill for the
    agent), and a client's bad input is not the service's internal_error."""
    raw = json.dumps(message).encode()  # ASCII: the surrogate travels as a \\ud800 escape
    reply = harness.send(raw)
    assert reply.outbound
    for out in reply.outbound:
        json.loads(out.value.decode("utf-8"))
        for header in out.headers.values():
            header.decode("utf-8")
    for out in reply.outbound:
        if out.spec is RESULTS:
            result = body(out)
            assert result["status"] == "error"
            assert result["error"]["code"] != "internal_error"
    assert len(harness.service.graph(NS)) == 0
