"""What a message's outcome publishes: results, events and dead letters, their bounds, and the
outcome of a failure that no handler foresaw."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from nexus_streams.domain.errors import Forbidden, InternalError, NotFound, RateLimited, Unauthenticated
from nexus_streams.messages import Event, Result
from nexus_streams.replies import (
    MAX_ECHO,
    MAX_ERROR_MESSAGE,
    MAX_OUTBOUND_BYTES,
    Received,
    command_event_message,
    deadletter_message,
    event_message,
    failure,
    result_message,
    unforeseen,
)
from nexus_streams.topics import DEADLETTER, EVENTS, PATTERNS, RELATIONSHIPS, RESULTS, Header

NOW = datetime(2026, 12, 2, tzinfo=UTC)


def received(value: bytes | None, key: bytes | None = b"ns-1", spec: Any = RELATIONSHIPS) -> Received:
    return Received(spec, f"nexus.{spec.name}", 2, 41, key, value)


def by_topic(outbound: list[Any]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for out in outbound:
        found.setdefault(out.spec.name, []).append(out)
    return found


def headers(out: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in out.headers.items()}


def test_internal_error__of__names_the_exception_class_and_keeps_its_text_for_operators() -> None:
    error = InternalError.of(RecursionError("maximum recursion depth exceeded"))
    assert error.to_dict() == {
        "code": "internal_error",
        "message": "internal error: RecursionError; the request may be retried",
        "details": {"exception": "RecursionError"},
    }
    assert "maximum recursion depth exceeded" in error.reason
    assert "maximum recursion" not in error.message  # clients see the class, not the text


@pytest.mark.parametrize(
    ("request_id", "exc", "dead_lettered"),
    [
        ("r-1", NotFound("no such relationship"), False),
        (None, NotFound("no such relationship"), True),
        ("r-1", InternalError.of(KeyError("x")), True),
        (None, InternalError.of(KeyError("x")), True),
    ],
    ids=["refused, request id", "refused, no request id", "internal, request id", "internal, none"],
)
def test_failure__dead_letters_when_nobody_awaits_or_the_service_failed(
    request_id: str | None, exc: Any, dead_lettered: bool
) -> None:
    msg = received(b'{"action": "create"}')
    result, outbound = failure(
        msg,
        exc,
        namespace="ns-1",
        request_id=request_id,
        principal="alice",
        action="create",
        pattern_id=None,
        offset=41,
        now=NOW,
    )
    topics = by_topic(outbound)
    assert result.status == "error" and result.error is not None and result.error.code == exc.code.value
    assert len(topics["results"]) == 1 and len(topics["events"]) == 1
    assert ("deadletter" in topics) is dead_lettered
    if dead_lettered:
        (letter,) = topics["deadletter"]
        assert letter.value == msg.value
        assert headers(letter)[Header.ERROR_CODE.value] == exc.code.value
        assert headers(letter)[Header.ERROR_REASON.value] == exc.reason
        assert headers(letter)[Header.SOURCE_OFFSET.value] == "41"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ((), {}),
        (None, {}),
        ([("trace", b"t-1"), ("nexus-redrive-count", b"2")], {"trace": "t-1", "nexus-redrive-count": "2"}),
        ({"trace": b"t-1"}, {"trace": "t-1"}),
        ([("nexus-error-code", b"stale"), ("nexus-source-offset", b"7"), ("x", b"1")], {"x": "1"}),
        ([("null-valued", None), ("x", b"1")], {"x": "1"}),
    ],
    ids=["none", "faust's None", "a redriven message", "a mapping", "stale reasons replaced", "null value"],
)
def test_deadletter_message__keeps_the_messages_own_headers_and_sets_the_reasons(
    given: Any, kept: dict[str, str]
) -> None:
    msg = Received(RELATIONSHIPS, "nexus.relationships", 2, 41, b"ns-1", b"garbage", headers=given)
    letter = deadletter_message(msg, "undecodable", "not JSON")
    assert headers(letter) == kept | {
        "nexus-error-code": "undecodable",
        "nexus-error-reason": "not JSON",
        "nexus-source-topic": "nexus.relationships",
        "nexus-source-partition": "2",
        "nexus-source-offset": "41",
    }


def test_failure__long_error_message__cut() -> None:
    result, _ = failure(
        received(b"{}"),
        NotFound("x" * 100_000),
        namespace="ns-1",
        request_id="r-1",
        principal=None,
        action=None,
        pattern_id=None,
        offset=None,
        now=NOW,
    )
    assert result.error is not None and len(result.error.message) == MAX_ERROR_MESSAGE


@pytest.mark.parametrize(
    ("value", "key", "spec", "expected"),
    [
        (
            b'{"request_id": "r-7", "principal": "alice", "action": "create"}',
            b"ns-1",
            RELATIONSHIPS,
            {"request_id": "r-7", "namespace": "ns-1", "action": "create", "pattern_id": None},
        ),
        (b"not json", b"ns-1", RELATIONSHIPS, {"request_id": None, "namespace": "ns-1", "action": None}),
        (b'{"request_id": 7}', None, RELATIONSHIPS, {"request_id": None, "namespace": "default"}),
        (
            b'{"request_id": "p-1", "action": "store"}',
            b"my_pattern",
            PATTERNS,
            {"request_id": "p-1", "namespace": None, "pattern_id": "my_pattern", "action": "store"},
        ),
        (None, b"\xff\xfe", RELATIONSHIPS, {"request_id": None}),
    ],
    ids=["readable", "undecodable", "unusable request id, no key", "pattern command", "tombstone"],
)
def test_unforeseen__internal_error_result_event_and_dead_letter(
    value: bytes | None, key: bytes | None, spec: Any, expected: dict[str, Any]
) -> None:
    msg = received(value, key, spec)
    result, outbound = unforeseen(msg, RuntimeError("boom"), NOW)
    assert result.status == "error" and result.error is not None
    assert result.error.code == "internal_error"
    assert result.error.details == {"exception": "RuntimeError"}
    assert {k: getattr(result, k) for k in expected} == expected
    topics = by_topic(outbound)
    assert [o.spec for o in outbound] == [RESULTS, EVENTS, DEADLETTER]
    (event,) = topics["events"]
    assert json.loads(event.value)["type"] == "error"
    (letter,) = topics["deadletter"]
    assert letter.value == (value or b"") and letter.key == key
    assert headers(letter)[Header.ERROR_CODE.value] == "internal_error"
    assert "RuntimeError: boom" in headers(letter)[Header.ERROR_REASON.value]


def test_result_message__over_the_limit__a_resource_limit_error_the_broker_takes() -> None:
    big = Result(
        request_id="q-1",
        namespace="ns-1",
        action="neighbors",
        status="ok",
        output={"neighbors": ["x" * 1000] * 1000},
        processed_at=NOW,
    )
    out = result_message(big)
    assert len(out.value) < 2000
    data = json.loads(out.value)
    assert data["status"] == "error" and "output" not in data
    assert data["error"]["code"] == "resource_limit"
    assert data["error"]["details"]["limit"] == MAX_OUTBOUND_BYTES
    assert data["error"]["details"]["bytes"] > MAX_OUTBOUND_BYTES
    assert headers(out)[Header.STATUS.value] == "error"
    assert data["request_id"] == "q-1"


def test_result_message__under_the_limit__unchanged() -> None:
    result = Result(
        request_id="q-1", namespace="ns-1", status="ok", output={"a": "x" * 1000}, processed_at=NOW
    )
    assert json.loads(result_message(result).value)["output"] == {"a": "x" * 1000}


def test_event_message__over_the_limit__envelope_kept_data_omitted() -> None:
    event = Event(
        type="pattern_executed",
        namespace="ns-1",
        occurred_at=NOW,
        pattern_id="p",
        data={"outputs": ["y" * 1000] * 1000},
    )
    out = event_message(event)
    data = json.loads(out.value)
    assert len(out.value) < 2000
    assert data["type"] == "pattern_executed" and data["pattern_id"] == "p"
    assert "limit" in data["data"]["omitted"]
    assert headers(out)[Header.EVENT_TYPE.value] == "pattern_executed"


# -- refusals: the access_denied event ----------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (Unauthenticated("no token", reason="missing_token"), "missing_token"),
        (
            Forbidden("lacks a scope", reason="missing_scope", missing_scope="queries:read:ns-1"),
            "missing_scope",
        ),
        (Forbidden("not the owner"), "not_permitted"),
        (RateLimited("slow down", reason="rate_limited", retry_after_s=0.5), "rate_limited"),
    ],
)
def test_failure__a_refusal__also_publishes_access_denied(exc: Any, reason: str) -> None:
    msg = received(b'{"request_id": "r-1", "action": "create"}')
    result, outbound = failure(
        msg,
        exc,
        namespace="ns-1",
        request_id="r-1",
        principal="alice",
        action="create",
        pattern_id=None,
        offset=41,
        now=NOW,
    )
    events = [json.loads(o.value) for o in by_topic(outbound)["events"]]
    assert [e["type"] for e in events] == ["error", "access_denied"]
    denied = events[1]
    assert denied["principal"] == "alice"
    assert denied["namespace"] == "ns-1"
    assert denied["request_id"] == "r-1"
    assert denied["error"]["code"] == exc.code.value
    assert denied["data"] == {
        "action": "create",
        "reason": reason,
        "code": exc.code.value,
        "source": {"topic": "nexus.relationships", "partition": 2, "offset": 41},
    }
    assert headers(by_topic(outbound)["events"][1])[Header.EVENT_TYPE.value] == "access_denied"
    assert result.error is not None and result.error.code == exc.code.value
    assert "deadletter" not in by_topic(outbound)


def test_failure__other_errors__no_access_denied() -> None:
    _, outbound = failure(
        received(b"{}"),
        NotFound("no such relationship"),
        namespace="ns-1",
        request_id="r-1",
        principal="alice",
        action="get",
        pattern_id=None,
        offset=None,
        now=NOW,
    )
    assert [json.loads(o.value)["type"] for o in by_topic(outbound)["events"]] == ["error"]


def test_failure__huge_action_principal_and_pattern_id__echoed_cut() -> None:
    huge = "x" * 1_048_000  # a message of the broker's limit, nearly all one field
    result, outbound = failure(
        received(b"{}"),
        NotFound("nothing here"),
        namespace="ns-1",
        request_id="r-1",
        principal=huge,
        action=huge,
        pattern_id=huge,
        offset=None,
        now=NOW,
    )
    assert result.action is not None and len(result.action) == MAX_ECHO
    assert all(len(out.value) < 8 * MAX_ECHO + 4096 for out in outbound), [len(o.value) for o in outbound]


def test_result_message__echoing_more_than_the_limit__cut_to_fit() -> None:
    result = Result(request_id="r-1", namespace="ns-1", action="x" * 1_048_000, status="ok", processed_at=NOW)
    out = result_message(result)
    assert len(out.value) <= MAX_OUTBOUND_BYTES
    assert json.loads(out.value)["error"]["code"] == "resource_limit"


REL = {
    "namespace": "ns",
    "source": "user:1",
    "type": "owner",
    "target": "wallet:1",
    "metadata": {"w": 0.1, "tiny": 1e-7, "big": 1e300, "n": -3, "s": "é ✓ \u2028", "l": [1, None, True]},
    "version": 2,
    "created_at": "2026-12-02T18:37:54.636649Z",
    "updated_at": "2026-12-02T18:37:54Z",
    "expires_at": None,
}


@pytest.mark.parametrize(
    ("type_", "request_id", "principal", "data", "when"),
    [
        (
            "relationship_created",
            "r1",
            "alice",
            {"relationship": REL},
            datetime(2026, 12, 2, 1, 2, 3, 456, UTC),
        ),
        (
            "relationship_updated",
            "r2",
            None,
            {"relationship": REL, "previous_version": 1},
            datetime(2026, 1, 1, tzinfo=UTC),
        ),
        (
            "schema_changed",
            None,
            "bob",
            {"schema": {"types": {"owner": {"inverse": None}}}},
            datetime.now(UTC),
        ),
        ("schema_changed", "r3", "bob", {"schema": None}, datetime.now(UTC)),
        ("relationship_deleted", "r4", "carol", {"relationship": {**REL, "metadata": {}}}, datetime.now(UTC)),
    ],
)
def test_command_event_message__the_same_as_the_models(
    type_: str, request_id: str | None, principal: str | None, data: dict[str, Any], when: datetime
) -> None:
    """The fast way writes exactly what `event_message(Event(...))` writes: consumers see one format."""
    fast = command_event_message(type_, "ns", when, request_id, principal, data)
    rest = {k: v for k, v in data.items() if k != "relationship"}
    event = Event(
        type=type_,
        namespace="ns",
        occurred_at=when,
        request_id=request_id,
        principal=principal,
        relationship=data.get("relationship"),
        data=rest or None,
    )
    model = event_message(event)
    assert fast.value == model.value
    assert (fast.spec, fast.key, fast.headers, fast.partition) == (
        model.spec,
        model.key,
        model.headers,
        model.partition,
    )


def test_command_event_message__what_orjson_does_not_write__the_models_way() -> None:
    data = {"relationship": {**REL, "metadata": {"huge": 2**70}}}
    out = command_event_message("relationship_created", "ns", datetime.now(UTC), "r", "p", data)
    assert json.loads(out.value)["relationship"]["metadata"]["huge"] == 2**70


def test_command_event_message__over_the_limit__the_relationship_omitted() -> None:
    data = {"relationship": {**REL, "metadata": {"s": "x" * (MAX_OUTBOUND_BYTES + 10)}}}
    out = command_event_message("relationship_created", "ns", datetime.now(UTC), "r", "p", data)
    assert len(out.value) <= MAX_OUTBOUND_BYTES
    assert "omitted" in json.loads(out.value)["data"]
