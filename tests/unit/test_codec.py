"""Bytes -> JSON object -> wire model, and back."""

from __future__ import annotations

import json
import tracemalloc
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from nexus_streams.codec import (
    MAX_FIELD_ERRORS,
    MAX_MESSAGE_BYTES,
    MAX_NESTING_DEPTH,
    ORJSON_MAX_DEPTH,
    Undecodable,
    check_nesting,
    decode_object,
    dumps,
    encode,
    parse_action,
    parse_model,
    request_id_of,
)
from nexus_streams.domain.errors import ErrorCode, UnknownAction, ValidationFailed
from nexus_streams.messages import (
    QUERY_ACTIONS,
    RELATIONSHIP_ACTIONS,
    Analyze,
    Batch,
    CreateFields,
    CreateRelationship,
    DeleteEntity,
    DeleteEntityFields,
    DeleteFields,
    DeleteRelationship,
    DetectCycles,
    ErrorBody,
    Event,
    ExecutionRequest,
    Expire,
    FindPath,
    GetRelationship,
    Neighbors,
    ResolveDependencies,
    Result,
    SetSchema,
    Stats,
    Traverse,
    UpdateFields,
    UpdateRelationship,
)

# --------------------------------------------------------------------------- decode_object


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "tombstone"),
        (b"\xff", "not UTF-8"),
        (b'{"a": "\xc3"}', "not UTF-8"),
        (b"\xc3\x28", "not UTF-8"),
        (b'{"a": 1}\xff', "not UTF-8"),
        (b"\xfe\xff\x00{", "not UTF-8"),
        ("{}".encode("utf-16"), "not UTF-8"),
        (b"", "not JSON"),
        (b"   ", "not JSON"),
        (b"{", "not JSON"),
        (b'{"a": }', "not JSON"),
        (b"{'a': 1}", "not JSON"),
        (b'{"a": 1,}', "not JSON"),
        (b'{"a": 1} {"b": 2}', "not JSON"),
        (b"hello", "not JSON"),
        (b"\xef\xbb\xbf{}", "not JSON"),  # UTF-8 BOM
        (b"[]", "JSON list"),
        (b'[{"action": "create"}]', "JSON list"),
        (b"1", "JSON int"),
        (b"1.5", "JSON float"),
        (b'"a string"', "JSON str"),
        (b"true", "JSON bool"),
        (b"null", "JSON NoneType"),
        (b" " * (MAX_MESSAGE_BYTES + 1), "limit"),
        (b'{"a": "' + b"x" * MAX_MESSAGE_BYTES + b'"}', "limit"),
        (b'{"a": NaN}', "not JSON"),
        (b'{"a": Infinity}', "not JSON"),
        (b'{"a": 1e400}', "not JSON"),
        (b'{"a": "\\ud800"}', "lone surrogate"),
        (b"[" * 5000 + b"]" * 5000, f"deeper than {ORJSON_MAX_DEPTH}"),
        (b"[" * 5000, f"deeper than {ORJSON_MAX_DEPTH}"),
        (b'{"a": ' + b"[" * 2000 + b"]" * 2000 + b"}", f"deeper than {ORJSON_MAX_DEPTH}"),
        (b'{"a": ' + b'{"b": ' * 2000 + b"1" + b"}" * 2001, f"deeper than {ORJSON_MAX_DEPTH}"),
    ],
    ids=lambda v: repr(v)[:40] if not isinstance(v, str) else v,
)
def test_decode_object__undecodable(raw: bytes | None, reason: str) -> None:
    with pytest.raises(Undecodable) as info:
        decode_object(raw)
    assert reason in info.value.reason
    assert str(info.value) == info.value.reason


def nested(depth: int, leaf: Any = 1) -> Any:
    """`depth` levels of alternating arrays and objects around `leaf`."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize(
    ("value", "limit", "refused"),
    [
        ({}, 2, False),
        ({"a": 1, "b": "x"}, 2, False),
        ({"a": {}}, 2, False),
        ({"a": {"b": {}}}, 2, True),
        ({"a": [[]]}, 2, True),
        ({"a": [1, 2, {"b": 3}]}, 3, False),
        ({"a": [1, 2, {"b": []}]}, 3, True),
        ({"wide": [[0]] * 10_000}, 3, False),
        ({"m": nested(MAX_NESTING_DEPTH - 1)}, MAX_NESTING_DEPTH, False),
        ({"m": nested(MAX_NESTING_DEPTH)}, MAX_NESTING_DEPTH, True),
        ({"m": nested(ORJSON_MAX_DEPTH - 2)}, MAX_NESTING_DEPTH, True),
        ({"ok": 1, "late": {"x": [[[[[]]]]]}}, 4, True),
    ],
    ids=lambda v: repr(v)[:30] if not isinstance(v, dict) or "m" not in v else "deep",
)
def test_check_nesting__table(value: dict[str, Any], limit: int, refused: bool) -> None:
    if not refused:
        check_nesting(value, limit)
        return
    with pytest.raises(ValidationFailed) as info:
        check_nesting(value, limit)
    assert info.value.details["limit"] == limit
    assert f"deeper than {limit}" in info.value.message


def test_check_nesting__the_deepest_value_orjson_reads__no_recursion_error() -> None:
    raw = b'{"a": ' + b"[" * (ORJSON_MAX_DEPTH - 1) + b"]" * (ORJSON_MAX_DEPTH - 1) + b"}"
    with pytest.raises(ValidationFailed):
        check_nesting(decode_object(raw))


def test_parse_model__thousands_of_unknown_fields__errors_listed_up_to_the_cap() -> None:
    data = {**CREATE, **{f"x{i}": i for i in range(5000)}}
    with pytest.raises(ValidationFailed) as info:
        parse(data)
    errors = info.value.details["errors"]
    assert len(errors) == MAX_FIELD_ERRORS + 1
    assert errors[-1]["message"] == f"and {5000 - MAX_FIELD_ERRORS} more problems"
    assert len(info.value.message) < 5000


def test_parse_action__huge_unknown_action__quoted_short() -> None:
    with pytest.raises(UnknownAction) as info:
        parse(CREATE | {"action": "x" * 100_000})
    assert len(info.value.message) < 400


def test_decode_object__too_large__names_sizes() -> None:
    raw = b"{}" + b" " * MAX_MESSAGE_BYTES
    with pytest.raises(Undecodable) as info:
        decode_object(raw)
    assert str(len(raw)) in info.value.reason
    assert str(MAX_MESSAGE_BYTES) in info.value.reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{}", {}),
        (b' \n{"a": 1}\n ', {"a": 1}),
        (
            b'{"action": "create", "metadata": {"k": [1, null]}}',
            {"action": "create", "metadata": {"k": [1, None]}},
        ),
        ('{"name": "é用"}'.encode(), {"name": "é用"}),
        (b'{"name": "\\u00e9"}', {"name": "é"}),
        (b'{"a": 1, "a": 2}', {"a": 2}),
        (b"{}" + b" " * (MAX_MESSAGE_BYTES - 2), {}),  # exactly at the limit
    ],
    ids=lambda v: repr(v)[:40],
)
def test_decode_object__valid(raw: bytes, expected: dict[str, Any]) -> None:
    assert decode_object(raw) == expected


# --------------------------------------------------------------------------- parse_action

BASE = {"request_id": "r-1", "principal": "user:admin"}
STEP = {"action": "create", "type": "owner", "source": "a", "target": "b"}
CREATE = {
    "request_id": "r-1",
    "principal": "user:admin",
    "action": "create",
    "type": "owner",
    "source": "user:1",
    "target": "wallet:1",
}
DELETE = {k: v for k, v in CREATE.items() if k != "action"} | {"action": "delete"}


def parse(data: dict[str, Any]) -> Any:
    return parse_action(RELATIONSHIP_ACTIONS, data, "relationships")


def test_parse_action__create() -> None:
    command = parse(CREATE | {"metadata": {"k": 1}, "expires_at": "2030-01-01T00:00:00Z"})
    assert isinstance(command, CreateRelationship)
    assert (command.source, command.type, command.target) == ("user:1", "owner", "wallet:1")
    assert command.metadata == {"k": 1}
    assert command.expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert command.namespace is None


def test_parse_action__delete() -> None:
    command = parse(DELETE | {"namespace": "ns"})
    assert isinstance(command, DeleteRelationship)
    assert command.namespace == "ns"


def _without(data: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in fields}


@pytest.mark.parametrize(
    "data",
    [{}, {"request_id": "r"}, _without(CREATE, "action"), CREATE | {"action": None}],
    ids=repr,
)
def test_parse_action__missing_action__validation_error(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse(data)
    err = info.value
    assert err.code is ErrorCode.VALIDATION_ERROR
    assert err.to_dict()["code"] == "validation_error"
    assert err.details["errors"] == [{"field": "action", "message": "Field required"}]
    assert ", ".join(RELATIONSHIP_ACTIONS) in err.message


@pytest.mark.parametrize(
    "action",
    [
        "Create",
        "CREATE",
        "",
        " create",
        "create ",
        "delete-entity",
        "drop",
        "get",  # a query action is not a relationship command
        "store",
        1,
        True,
        [],
        {},
    ],
    ids=repr,
)
def test_parse_action__unknown_action(action: Any) -> None:
    with pytest.raises(UnknownAction) as info:
        parse(CREATE | {"action": action})
    err = info.value
    assert err.code is ErrorCode.UNKNOWN_ACTION
    assert err.to_dict()["code"] == "unknown_action"
    assert err.details == {
        "field": "action",
        "allowed": ["create", "update", "delete", "delete_entity", "batch", "set_schema", "expire"],
    }
    assert "relationships" in err.message


@pytest.mark.parametrize("action", ["create", "delete", "batch", "Stats", "analyse", ""], ids=repr)
def test_parse_action__queries__unknown_action(action: str) -> None:
    with pytest.raises(UnknownAction) as info:
        parse_action(QUERY_ACTIONS, {"request_id": "q", "principal": "p", "action": action}, "queries")
    assert info.value.details == {
        "field": "action",
        "allowed": [
            "get",
            "find_path",
            "traverse",
            "neighbors",
            "detect_cycles",
            "resolve_dependencies",
            "analyze",
            "stats",
            "export",
        ],
    }
    assert "queries" in info.value.message


INVALID_FIELDS = [
    # (description, message, fields named in details["errors"])
    ("no source", _without(CREATE, "source"), {"source"}),
    ("no target", _without(CREATE, "target"), {"target"}),
    ("no type", _without(CREATE, "type"), {"type"}),
    ("no request_id", _without(CREATE, "request_id"), {"request_id"}),
    ("no principal", _without(CREATE, "principal"), {"principal"}),
    ("no source and target", _without(CREATE, "source", "target"), {"source", "target"}),
    ("source a number", CREATE | {"source": 1}, {"source"}),
    ("source null", CREATE | {"source": None}, {"source"}),
    ("target a list", CREATE | {"target": ["a"]}, {"target"}),
    ("type a number", CREATE | {"type": 3}, {"type"}),
    ("empty request_id", CREATE | {"request_id": ""}, {"request_id"}),
    ("request_id too long", CREATE | {"request_id": "r" * 129}, {"request_id"}),
    ("request_id a number", CREATE | {"request_id": 7}, {"request_id"}),
    ("empty principal", CREATE | {"principal": ""}, {"principal"}),
    ("metadata a list", CREATE | {"metadata": [1]}, {"metadata"}),
    ("metadata a string", CREATE | {"metadata": "{}"}, {"metadata"}),
    ("expires_at garbage", CREATE | {"expires_at": "tomorrow"}, {"expires_at"}),
    ("namespace with space", CREATE | {"namespace": "a b"}, {"namespace"}),
    ("namespace empty", CREATE | {"namespace": ""}, {"namespace"}),
    ("namespace too long", CREATE | {"namespace": "n" * 129}, {"namespace"}),
    ("extra field", CREATE | {"colour": "red"}, {"colour"}),
    ("typo of a field", _without(CREATE, "target") | {"traget": "w"}, {"target", "traget"}),
    ("delete with metadata", DELETE | {"metadata": {}}, {"metadata"}),
    ("delete with expires_at", DELETE | {"expires_at": None}, {"expires_at"}),
    ("delete without source", _without(DELETE, "source"), {"source"}),
    ("update without metadata", CREATE | {"action": "update"}, {"metadata"}),
    (
        "update expected_version 0",
        CREATE | {"action": "update", "metadata": {}, "expected_version": 0},
        {"expected_version"},
    ),
    (
        "update expires_at garbage",
        CREATE | {"action": "update", "metadata": {}, "expires_at": "x"},
        {"expires_at"},
    ),
    ("delete_entity without entity", BASE | {"action": "delete_entity"}, {"entity"}),
    ("delete_entity with type", BASE | {"action": "delete_entity", "entity": "a", "type": "owner"}, {"type"}),
    ("batch without commands", BASE | {"action": "batch"}, {"commands"}),
    ("batch empty", BASE | {"action": "batch", "commands": []}, {"commands"}),
    ("batch of a batch", BASE | {"action": "batch", "commands": [{"action": "batch"}]}, {"commands.0"}),
    ("batch unknown action", BASE | {"action": "batch", "commands": [{"action": "drop"}]}, {"commands.0"}),
    (
        "batch command without target",
        BASE | {"action": "batch", "commands": [STEP, _without(STEP, "target")]},
        {"commands.1.create.target"},
    ),
    (
        "batch command with request_id",
        BASE | {"action": "batch", "commands": [STEP | {"request_id": "r-2"}]},
        {"commands.0.create.request_id"},
    ),
    ("set_schema without schema", BASE | {"action": "set_schema"}, {"schema"}),
    (
        "set_schema not lists",
        BASE | {"action": "set_schema", "schema": {"owner": "a -> b"}},
        {"schema.owner"},
    ),
    ("set_schema a list", BASE | {"action": "set_schema", "schema": ["owner"]}, {"schema"}),
    ("expire with extra field", BASE | {"action": "expire", "now": "2030-01-01T00:00:00Z"}, {"now"}),
]


@pytest.mark.parametrize(
    ("data", "fields"), [c[1:] for c in INVALID_FIELDS], ids=[c[0] for c in INVALID_FIELDS]
)
def test_parse_action__invalid_fields__named(data: dict[str, Any], fields: set[str]) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse(data)
    err = info.value
    assert err.to_dict()["code"] == "validation_error"
    errors = err.details["errors"]
    assert {e["field"] for e in errors} == fields
    assert all(isinstance(e["message"], str) and e["message"] for e in errors)
    for name in fields:
        assert name in err.message
    model = RELATIONSHIP_ACTIONS[data["action"]].__name__
    assert model in err.message


def test_parse_action__extra_field__says_not_permitted() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse(CREATE | {"colour": "red"})
    assert info.value.details["errors"] == [{"field": "colour", "message": "Extra inputs are not permitted"}]


def test_parse_action__commands_are_frozen() -> None:
    command = parse(CREATE)
    with pytest.raises(ValueError, match="frozen"):
        command.source = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "source",
    ["", "user 1", "user:1\n", "user:\x001", "x" * 257, "a\u2003b"],
    ids=repr,
)
def test_parse_action__entity_id_shape__left_to_the_service(source: str) -> None:
    """Entity ids are any strings on the wire; the service answers `invalid_entity_id`."""
    command = parse(CREATE | {"source": source})
    assert isinstance(command, CreateRelationship)
    assert command.source == source


PARSED_RELATIONSHIP_COMMANDS: list[tuple[str, dict[str, Any], Any]] = [
    (
        "update",
        CREATE | {"action": "update", "metadata": {"k": 2}, "expected_version": 3},
        UpdateRelationship(
            request_id="r-1",
            principal="user:admin",
            action="update",
            type="owner",
            source="user:1",
            target="wallet:1",
            metadata={"k": 2},
            expected_version=3,
        ),
    ),
    (
        "delete_entity",
        BASE | {"action": "delete_entity", "entity": "user:1"},
        DeleteEntity(request_id="r-1", principal="user:admin", action="delete_entity", entity="user:1"),
    ),
    (
        "batch",
        BASE
        | {
            "action": "batch",
            "commands": [
                STEP | {"metadata": {"n": 1}},
                {"action": "update", "type": "owner", "source": "a", "target": "b", "metadata": {}},
                {"action": "delete", "type": "child", "source": "c", "target": "d"},
                {"action": "delete_entity", "entity": "e"},
            ],
        },
        Batch(
            request_id="r-1",
            principal="user:admin",
            action="batch",
            commands=[
                CreateFields(action="create", type="owner", source="a", target="b", metadata={"n": 1}),
                UpdateFields(action="update", type="owner", source="a", target="b", metadata={}),
                DeleteFields(action="delete", type="child", source="c", target="d"),
                DeleteEntityFields(action="delete_entity", entity="e"),
            ],
        ),
    ),
    (
        "set_schema",
        BASE | {"action": "set_schema", "schema": {"owner": ["user -> wallet"]}},
        SetSchema(
            request_id="r-1",
            principal="user:admin",
            action="set_schema",
            schema={"owner": ["user -> wallet"]},
        ),
    ),
    (
        "set_schema null",
        BASE | {"action": "set_schema", "schema": None},
        SetSchema(request_id="r-1", principal="user:admin", action="set_schema", schema=None),
    ),
    (
        "expire",
        BASE | {"action": "expire"},
        Expire(request_id="r-1", principal="user:admin", action="expire"),
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"),
    [c[1:] for c in PARSED_RELATIONSHIP_COMMANDS],
    ids=[c[0] for c in PARSED_RELATIONSHIP_COMMANDS],
)
def test_parse_action__relationship_commands(data: dict[str, Any], expected: Any) -> None:
    command = parse(data)
    assert type(command) is type(expected)
    assert command == expected
    if not isinstance(command, SetSchema):  # see test_encode__set_schema__...
        assert parse(decode_object(encode(command))) == command


@pytest.mark.parametrize("schema", [{"member": ["* -> group"]}, None], ids=["document", "null"])
def test_encode__set_schema__writes_the_wire_field_schema(schema: dict[str, list[str]] | None) -> None:
    """The wire field is `schema` (the Python attribute is `schema_`), and it is required even
    when null (null removes the schema): encode must write it so that the message parses again."""
    command = parse(BASE | {"action": "set_schema", "schema": schema})
    assert isinstance(command, SetSchema)
    assert command.schema_ == schema
    encoded = json.loads(encode(command))
    assert encoded.get("schema", "missing") == schema
    assert "schema_" not in encoded
    assert parse(encoded) == command


Q = {"request_id": "q-1", "principal": "user:admin"}

PARSED_QUERIES: list[tuple[dict[str, Any], type[Any], dict[str, Any]]] = [
    (
        {"action": "get", "type": "child", "source": "a", "target": "b"},
        GetRelationship,
        {"min_offset": None, "type": "child"},
    ),
    (
        {"action": "find_path", "source": "a", "target": "b"},
        FindPath,
        {"max_depth": 3, "types": None, "direction": "both"},
    ),
    (
        {"action": "find_path", "source": "a", "target": "b", "max_depth": 10, "types": ["owner"]},
        FindPath,
        {"max_depth": 10, "types": ["owner"]},
    ),
    ({"action": "traverse", "start": "a"}, Traverse, {"max_depth": 2, "limit": 1000, "direction": "both"}),
    (
        {"action": "traverse", "start": "a", "direction": "out", "limit": 10_000, "min_offset": 0},
        Traverse,
        {"direction": "out", "limit": 10_000, "min_offset": 0},
    ),
    ({"action": "neighbors", "entity": "a"}, Neighbors, {"limit": 1000, "direction": "both"}),
    ({"action": "detect_cycles"}, DetectCycles, {"entity": None, "max_cycles": 10}),
    ({"action": "detect_cycles", "entity": "a", "max_cycles": 100}, DetectCycles, {"entity": "a"}),
    ({"action": "resolve_dependencies", "entity": "a"}, ResolveDependencies, {"types": None}),
    ({"action": "analyze"}, Analyze, {"top": 10, "max_age_ms": None}),
    ({"action": "analyze", "top": 100, "max_age_ms": 0}, Analyze, {"top": 100, "max_age_ms": 0}),
    ({"action": "stats", "min_offset": 42}, Stats, {"min_offset": 42}),
]


@pytest.mark.parametrize(("data", "model", "fields"), PARSED_QUERIES, ids=lambda v: repr(v)[:60])
def test_parse_action__queries(data: dict[str, Any], model: type[Any], fields: dict[str, Any]) -> None:
    query = parse_action(QUERY_ACTIONS, Q | data, "queries")
    assert type(query) is model
    assert query.request_id == "q-1"
    for name, value in fields.items():
        assert getattr(query, name) == value


INVALID_QUERIES = [
    ("get without type", {"action": "get", "source": "a", "target": "b"}, {"type"}),
    ("min_offset negative", {"action": "stats", "min_offset": -1}, {"min_offset"}),
    ("min_offset text", {"action": "stats", "min_offset": "latest"}, {"min_offset"}),
    (
        "find_path depth and direction",
        {"action": "find_path", "source": "a", "target": "b", "max_depth": 11, "direction": "up"},
        {"max_depth", "direction"},
    ),
    (
        "find_path depth 0",
        {"action": "find_path", "source": "a", "target": "b", "max_depth": 0},
        {"max_depth"},
    ),
    ("traverse limit 0", {"action": "traverse", "start": "a", "limit": 0}, {"limit"}),
    ("traverse limit too big", {"action": "traverse", "start": "a", "limit": 10_001}, {"limit"}),
    ("traverse without start", {"action": "traverse"}, {"start"}),
    ("neighbors types not a list", {"action": "neighbors", "entity": "a", "types": "owner"}, {"types"}),
    ("detect_cycles max_cycles", {"action": "detect_cycles", "max_cycles": 101}, {"max_cycles"}),
    ("analyze top and age", {"action": "analyze", "top": 0, "max_age_ms": -1}, {"top", "max_age_ms"}),
    ("stats extra field", {"action": "stats", "entity": "a"}, {"entity"}),
]


@pytest.mark.parametrize(
    ("data", "fields"), [c[1:] for c in INVALID_QUERIES], ids=[c[0] for c in INVALID_QUERIES]
)
def test_parse_action__invalid_queries__fields_named(data: dict[str, Any], fields: set[str]) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_action(QUERY_ACTIONS, Q | data, "queries")
    assert {e["field"] for e in info.value.details["errors"]} == fields


def test_parse_model__execution_request() -> None:
    request = parse_model(ExecutionRequest, {"request_id": "x", "principal": "p", "pattern_id": "onboard"})
    assert (request.pattern_id, request.input, request.step_events) == ("onboard", {}, False)
    with pytest.raises(ValidationFailed) as info:
        parse_model(ExecutionRequest, {"request_id": "x", "principal": "p", "timeout_ms": 0})
    assert {e["field"] for e in info.value.details["errors"]} == {"pattern_id", "timeout_ms"}
    assert "ExecutionRequest" in info.value.message


# --------------------------------------------------------------------------- request_id_of


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"request_id": "r-1"}, "r-1"),
        ({"request_id": "r"}, "r"),
        ({"request_id": "r" * 128}, "r" * 128),
        ({"request_id": " "}, " "),
        ({"request_id": "é"}, "é"),
        ({"request_id": "r" * 129}, None),
        ({"request_id": ""}, None),
        ({"request_id": None}, None),
        ({"request_id": 1}, None),
        ({"request_id": ["r"]}, None),
        ({"request_id": {"id": "r"}}, None),
        ({}, None),
        ({"requestId": "r"}, None),
    ],
    ids=repr,
)
def test_request_id_of__table(data: dict[str, Any], expected: str | None) -> None:
    assert request_id_of(data) == expected


# --------------------------------------------------------------------------- encode

T = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_encode__result__compact_json_without_nulls() -> None:
    result = Result(
        request_id="r-1",
        namespace="ns",
        action="create",
        status="ok",
        output={"relationship": {"k": None}},
        processed_at=T,
    )
    raw = encode(result)
    assert isinstance(raw, bytes)
    assert json.loads(raw) == {
        "request_id": "r-1",
        "namespace": "ns",
        "action": "create",
        "status": "ok",
        "output": {"relationship": {"k": None}},  # nulls inside values are kept
        "processed_at": "2024-05-01T12:00:00Z",
    }
    assert b" " not in raw


def test_encode__error_result() -> None:
    body = ErrorBody(code="not_found", message="no such thing", details={"source": "a"})
    result = Result(request_id="r", namespace="ns", status="error", error=body, processed_at=T)
    assert json.loads(encode(result))["error"] == {
        "code": "not_found",
        "message": "no such thing",
        "details": {"source": "a"},
    }


def test_encode__event__utf8() -> None:
    event = Event(
        type="relationship_created",
        namespace="ns",
        occurred_at=T,
        relationship={"source": "用户:1"},
    )
    raw = encode(event)
    assert "用户:1".encode() in raw
    assert json.loads(raw) == {
        "type": "relationship_created",
        "namespace": "ns",
        "occurred_at": "2024-05-01T12:00:00Z",
        "relationship": {"source": "用户:1"},
    }


@pytest.mark.parametrize("command", [CREATE, DELETE, CREATE | {"metadata": {"a": [1]}}], ids=repr)
def test_encode__command__round_trips_through_decode_and_parse(command: dict[str, Any]) -> None:
    model = parse(command)
    assert parse(decode_object(encode(model))) == model


def test_encode__the_fast_path_writes_what_the_general_one_does() -> None:
    """Models without a required null go through pydantic's JSON serializer; the same document as
    dumping to Python and then to JSON (floats may differ only in exponent form)."""
    result = Result(
        request_id="r-1",
        namespace="ns",
        action="execute",
        status="ok",
        output={"steps": {"a": {"status": "completed", "output": {"n": [1, None, "é用"], "x": 0.25}}}},
        processed_at=T,
    )
    general = result.model_dump(mode="json", exclude_none=True, by_alias=True)
    assert encode(result) == json.dumps(general, separators=(",", ":"), ensure_ascii=False).encode()


def test_dumps__kept_values_hold_their_own_length() -> None:
    """A stored record must not keep orjson's output buffer (4 KiB from 3.12 on) behind it."""
    record = {"metadata": {"weight": 1}, "created_at": "2026-12-02T00:00:00Z", "version": 1}
    assert dumps(record) == orjson.dumps(record)
    tracemalloc.start()
    try:
        kept = [dumps(record) for _ in range(1000)]
        per_value = tracemalloc.get_traced_memory()[0] / len(kept)
    finally:
        tracemalloc.stop()
    assert per_value < 2 * (len(kept[0]) + 40), per_value
