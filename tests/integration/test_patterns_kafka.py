"""Pattern commands through the real broker, stored in the real Redis."""

from __future__ import annotations

import uuid

import pytest

from nexus_streams.domain.errors import NotFound
from nexus_streams.store.redis import RedisPatternStore
from tests.integration.conftest import WorkerProcess
from tests.integration.wire import Wire


@pytest.fixture
async def store(worker: WorkerProcess, redis_url: str):
    """The worker's pattern store, read directly (as `nexus-streams patterns` does)."""
    s = RedisPatternStore.from_url(redis_url, key_prefix=worker.env["NEXUS_REDIS_KEY_PREFIX"])
    yield s
    await s.close()


def pattern(pattern_id: str, **extra: object) -> dict:
    return {
        "id": pattern_id,
        "name": "Grant access",
        "description": "Adds a member and announces it",
        "steps": [
            {"type": "relationship", "action": "create", "parameters": {"type": "member"}},
            {
                "type": "event",
                "action": "publish",
                "parameters": {"event_type": "member_added"},
                "depends_on": ["create"],
            },
        ],
        **extra,
    }


async def store_pattern(wire: Wire, document: dict, principal: str = "alice") -> dict:
    return await wire.request(
        "patterns", document["id"], {"principal": principal, "action": "store", "pattern": document}
    )


async def test_system_patterns__registered_at_worker_start(wire: Wire, store: RedisPatternStore) -> None:
    onboarding = await store.get("user_onboarding")
    transaction = await store.get("financial_transaction")
    assert onboarding.kind.value == "system"
    assert [s.id for s in onboarding.steps] == ["create", "publish"]
    assert [s.id for s in transaction.steps] == ["find_path", "create"]
    assert transaction.steps[1].depends_on == ("find_path",) or list(transaction.steps[1].depends_on) == [
        "find_path"
    ]


async def test_store__versions_events_and_idempotent_identical_document(
    wire: Wire, store: RedisPatternStore
) -> None:
    pattern_id = f"grant_{uuid.uuid4().hex[:8]}"
    first = await store_pattern(wire, pattern(pattern_id))
    assert first["status"] == "ok", first
    assert first["output"] == {"pattern_id": pattern_id, "version": 1, "created": True, "kind": "user"}
    [event] = await wire.events(first["request_id"])
    assert event["type"] == "pattern_stored"
    [record] = wire.matching("events", lambda r: r.json().get("request_id") == first["request_id"])
    assert record.headers["nexus-pattern-id"] == pattern_id
    assert record.headers["nexus-pattern-version"] == "1"

    same = await store_pattern(wire, pattern(pattern_id))
    assert same["output"]["created"] is False
    assert same["output"]["version"] == 1
    changed = await store_pattern(wire, pattern(pattern_id, description="Adds a member, loudly"))
    assert changed["output"]["version"] == 2
    assert [v.version for v in await store.versions(pattern_id)] == [1, 2]
    assert (await store.get(pattern_id, 1)).description == "Adds a member and announces it"


async def test_store__every_problem_in_one_error_with_its_path(wire: Wire) -> None:
    pattern_id = f"broken_{uuid.uuid4().hex[:8]}"
    document = {
        "id": pattern_id,
        "name": "Broken",
        "description": "three problems",
        "steps": [
            {
                "type": "graph",
                "action": "find_path",
                "parameters": {"max_depth": "deep"},
                "depends_on": ["b"],
            },
            {
                "id": "b",
                "type": "relationship",
                "action": "create",
                "parameters": {"type": "owner"},
                "depends_on": ["find_path", "nowhere"],
            },
        ],
    }
    result = await store_pattern(wire, document)
    assert result["status"] == "error"
    problems = result["error"]["details"]["problems"]
    by_code = {p["code"]: p["path"] for p in problems}
    assert "cycle_detected" in by_code
    assert by_code["dependency_error"] == "steps[1].depends_on[1]"
    assert any(p["path"].startswith("steps[0].parameters.max_depth") for p in problems)
    assert result["error"]["code"] == "validation_error"
    for needle in ("cycle", "nowhere", "max_depth"):
        assert needle in result["error"]["message"]


async def test_access__owner_admin_and_system_patterns(wire: Wire, store: RedisPatternStore) -> None:
    pattern_id = f"owned_{uuid.uuid4().hex[:8]}"
    assert (await store_pattern(wire, pattern(pattern_id), principal="alice"))["status"] == "ok"
    denied = await store_pattern(wire, pattern(pattern_id, description="bob's"), principal="bob")
    assert denied["error"]["code"] == "forbidden"
    event, access_denied = await wire.events(denied["request_id"], count=2)
    assert event["type"] == "error"
    assert event["error"]["code"] == "forbidden"
    assert access_denied["type"] == "access_denied"
    assert access_denied["principal"] == "bob"
    assert access_denied["data"]["reason"] == "not_permitted"
    assert (await store_pattern(wire, pattern(pattern_id, description="admin's"), principal="admin"))[
        "status"
    ] == "ok"

    onboarding = (await store.get("user_onboarding")).to_document()
    as_user = await store_pattern(wire, {**onboarding, "description": "mine now"}, principal="mallory")
    assert as_user["error"]["code"] == "forbidden"


async def test_deprecate_and_delete__events_and_store(wire: Wire, store: RedisPatternStore) -> None:
    pattern_id = f"retired_{uuid.uuid4().hex[:8]}"
    await store_pattern(wire, pattern(pattern_id))
    deprecated = await wire.request("patterns", pattern_id, {"principal": "alice", "action": "deprecate"})
    assert deprecated["status"] == "ok", deprecated
    assert (await wire.events(deprecated["request_id"]))[0]["type"] == "pattern_deprecated"
    assert (await store.get(pattern_id)).deprecated is True

    forbidden = await wire.request("patterns", pattern_id, {"principal": "bob", "action": "delete"})
    assert forbidden["error"]["code"] == "forbidden"
    deleted = await wire.request("patterns", pattern_id, {"principal": "alice", "action": "delete"})
    assert deleted["status"] == "ok"
    assert (await wire.events(deleted["request_id"]))[0]["type"] == "pattern_deleted"
    with pytest.raises(NotFound):
        await store.get(pattern_id)
    missing = await wire.request("patterns", pattern_id, {"principal": "alice", "action": "delete"})
    assert missing["error"]["code"] == "not_found"


async def test_patterns_topic__bad_input_answered_not_fatal(wire: Wire) -> None:
    marker = uuid.uuid4().hex.encode()
    await wire.send("patterns", "x", b"{not json " + marker)
    await wire.wait_for("deadletter", lambda r: marker in (r.value or b""))
    unknown = await wire.request("patterns", "x", {"principal": "alice", "action": "explode"})
    assert unknown["error"]["code"] == "unknown_action"
    mismatch = await store_pattern(wire, {**pattern("one"), "id": "one"}, principal="alice")
    assert mismatch["status"] == "ok"
    wrong_key = await wire.request(
        "patterns", "other", {"principal": "alice", "action": "store", "pattern": pattern("one")}
    )
    assert wrong_key["error"]["code"] == "validation_error"
