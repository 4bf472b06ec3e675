"""Bytes -> JSON object -> wire model, and back."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from nexus_streams.codec import (
    MAX_MESSAGE_BYTES,
    Undecodable,
    decode_object,
    encode,
    parse_action,
    request_id_of,
)
from nexus_streams.domain.errors import ErrorCode, UnknownAction, ValidationFailed
from nexus_streams.messages import (
    RELATIONSHIP_ACTIONS,
    CreateRelationship,
    DeleteRelationship,
    ErrorBody,
    Event,
    Result,
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
    ],
    ids=lambda v: repr(v)[:40] if not isinstance(v, str) else v,
)
def test_decode_object__undecodable(raw: bytes | None, reason: str) -> None:
    with pytest.raises(Undecodable) as info:
        decode_object(raw)
    assert reason in info.value.reason
    assert str(info.value) == info.value.reason


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
    assert "create, delete" in err.message


@pytest.mark.parametrize(
    "action",
    [
        "update",
        "Create",
        "CREATE",
        "",
        " create",
        "create ",
        "delete_entity",
        "drop",
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
    assert err.details == {"field": "action", "allowed": ["create", "delete"]}
    assert "relationships" in err.message


INVALID_FIELDS = [
    # (description, message, fields named in details["errors"])
    ("no source", _without(CREATE, "source"), {"source"}),
    ("no target", _without(CREATE, "target"), {"target"}),
    ("no type", _without(CREATE, "type"), {"type"}),
    ("no request_id", _without(CREATE, "request_id"), {"request_id"}),
    ("no principal", _without(CREATE, "principal"), {"principal"}),
    ("no source and target", _without(CREATE, "source", "target"), {"source", "target"}),
    ("empty source", CREATE | {"source": ""}, {"source"}),
    ("source with space", CREATE | {"source": "user 1"}, {"source"}),
    ("source with newline", CREATE | {"source": "user:1\n"}, {"source"}),
    ("source with control", CREATE | {"source": "user:\x001"}, {"source"}),
    ("source too long", CREATE | {"source": "x" * 257}, {"source"}),
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
    assert info.value.details["errors"] == [
        {"field": "colour", "message": "Extra inputs are not permitted"}
    ]


def test_parse_action__commands_are_frozen() -> None:
    command = parse(CREATE)
    with pytest.raises(ValueError, match="frozen"):
        command.source = "other"  # type: ignore[misc]


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
