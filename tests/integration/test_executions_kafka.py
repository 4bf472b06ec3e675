"""Pattern executions through the real broker, patterns in the real Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from nexus_streams.store.redis import RedisPatternStore
from tests.integration.conftest import WorkerProcess
from tests.integration.wire import Wire


@pytest.fixture
async def store(worker: WorkerProcess, redis_url: str):
    s = RedisPatternStore.from_url(redis_url, key_prefix=worker.env["NEXUS_REDIS_KEY_PREFIX"])
    yield s
    await s.close()


async def execute(
    wire: Wire, namespace: str, pattern_id: str, timeout_s: float = 30.0, **fields: object
) -> dict:
    return await wire.request(
        "executions", namespace, {"pattern_id": pattern_id, **fields}, timeout_s=timeout_s
    )


async def ok(wire: Wire, topic: str, namespace: str, payload: dict) -> dict:
    result = await wire.request(topic, namespace, payload)
    assert result["status"] == "ok", result
    return result


async def test_user_onboarding__creates_owner_then_publishes_user_created(
    wire: Wire, namespace: str, store: RedisPatternStore
) -> None:
    result = await execute(
        wire, namespace, "user_onboarding", input={"source": "user:1", "target": "wallet:1"}
    )
    assert result["status"] == "ok", result
    assert result["pattern_id"] == "user_onboarding"
    assert result["output"]["version"] >= 1
    assert {s["status"] for s in result["output"]["steps"].values()} == {"completed"}

    await wire.wait_for(
        "events",
        lambda r: (
            r.json().get("request_id") == result["request_id"] and r.json()["type"] == "pattern_executed"
        ),
    )
    records = wire.matching("events", lambda r: r.json().get("request_id") == result["request_id"])
    types = [r.json()["type"] for r in records]
    assert types.index("relationship_created") < types.index("user_created") < types.index("pattern_executed")
    created = next(r.json() for r in records if r.json()["type"] == "relationship_created")
    assert created["relationship"]["metadata"] == {"wallet_type": "primary"}
    assert all(r.headers["nexus-pattern-id"] == "user_onboarding" for r in records)

    got = await ok(
        wire,
        "queries",
        namespace,
        {"action": "get", "type": "owner", "source": "user:1", "target": "wallet:1"},
    )
    assert got["output"]["relationship"]["metadata"] == {"wallet_type": "primary"}
    # statistics reach Redis in batches after the execution's outcome (streams/app.py count_execution)
    deadline = asyncio.get_running_loop().time() + 10.0
    while (stats := await store.stats("user_onboarding")).total.executions < 1:
        assert asyncio.get_running_loop().time() < deadline, stats.total
        await asyncio.sleep(0.05)


async def test_financial_transaction__not_connected_fails_and_changes_nothing(
    wire: Wire, namespace: str
) -> None:
    await ok(
        wire,
        "relationships",
        namespace,
        {
            "action": "batch",
            "commands": [
                {"action": "create", "type": "linked", "source": f"user:{i}", "target": f"user:{i + 1}"}
                for i in range(1, 5)
            ],
        },
    )
    before = await ok(wire, "queries", namespace, {"action": "stats"})
    result = await execute(
        wire, namespace, "financial_transaction", input={"source": "user:1", "target": "user:5"}
    )
    assert result["status"] == "error"
    assert result["error"]["code"] == "path_not_found"
    assert result["output"]["steps"]["create"]["status"] in ("skipped", "pending")
    after = await ok(wire, "queries", namespace, {"action": "stats"})
    assert after["output"] == before["output"]
    failed = await wire.wait_for(
        "events",
        lambda r: (
            r.json().get("request_id") == result["request_id"] and r.json()["type"] == "execution_failed"
        ),
    )
    assert failed


async def test_financial_transaction__connected_creates_linked_transfer(wire: Wire, namespace: str) -> None:
    await ok(
        wire,
        "relationships",
        namespace,
        {
            "action": "batch",
            "commands": [
                {"action": "create", "type": "member", "source": "user:a", "target": "group:x"},
                {"action": "create", "type": "member", "source": "user:b", "target": "group:x"},
            ],
        },
    )
    result = await execute(
        wire, namespace, "financial_transaction", input={"source": "user:a", "target": "user:b"}
    )
    assert result["status"] == "ok", result
    got = await ok(
        wire,
        "queries",
        namespace,
        {"action": "get", "type": "linked", "source": "user:a", "target": "user:b"},
    )
    assert got["output"]["relationship"]["metadata"] == {"transaction_type": "transfer"}


async def test_retry__waits_without_stalling_the_partition(wire: Wire, namespace: str) -> None:
    pattern_id = f"flaky_{uuid.uuid4().hex[:8]}"
    stored = await wire.request(
        "patterns",
        pattern_id,
        {
            "principal": "alice",
            "action": "store",
            "pattern": {
                "id": pattern_id,
                "name": "Flaky",
                "description": "fails once, then succeeds",
                "steps": [
                    {
                        "type": "control",
                        "action": "fail",
                        "parameters": {"code": "timeout", "message": "slow", "times": 1},
                        "retry": {"max_attempts": 3, "initial_backoff_ms": 1500, "jitter": 0},
                    },
                    {
                        "type": "relationship",
                        "action": "create",
                        "parameters": {"type": "member"},
                        "depends_on": ["fail"],
                    },
                ],
            },
        },
    )
    assert stored["status"] == "ok", stored
    request_id = f"x-{uuid.uuid4().hex}"
    await wire.send(
        "executions",
        namespace,
        {
            "request_id": request_id,
            "principal": "alice",
            "pattern_id": pattern_id,
            "step_events": True,
            "input": {"source": "user:r", "target": "group:r"},
        },
    )
    # while the execution waits for its retry, the namespace answers other commands
    other = await ok(
        wire,
        "relationships",
        namespace,
        {"action": "create", "type": "owner", "source": "user:o", "target": "wallet:o"},
    )
    assert not wire.matching("results", lambda r: r.headers.get("nexus-request-id") == request_id)
    # and its staged writes are invisible meanwhile
    hidden = await wire.request(
        "queries", namespace, {"action": "get", "type": "member", "source": "user:r", "target": "group:r"}
    )
    assert hidden["error"]["code"] == "not_found"
    result = await wire.result(request_id, timeout_s=30)
    assert result["status"] == "ok", result
    assert result["output"]["steps"]["fail"]["attempts"] == 2
    assert other["status"] == "ok"
    retried = await wire.wait_for(
        "events", lambda r: r.json().get("request_id") == request_id and r.json()["type"] == "step_retried"
    )
    assert retried


async def test_duplicate_request__one_effect_same_result(wire: Wire, namespace: str) -> None:
    request = {
        "request_id": f"x-{uuid.uuid4().hex}",
        "principal": "alice",
        "pattern_id": "user_onboarding",
        "input": {"source": "user:d", "target": "wallet:d"},
    }
    await wire.send("executions", namespace, request)
    await wire.send("executions", namespace, request)
    results = await wire.wait_for(
        "results", lambda r: r.headers.get("nexus-request-id") == request["request_id"], count=2
    )
    assert results[0].json() == results[1].json()
    stats = await ok(wire, "queries", namespace, {"action": "stats"})
    assert stats["output"]["relationships"] == 1


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"pattern_id": "no_such_pattern"}, "not_found"),
        ({"pattern_id": "user_onboarding", "input": {"source": "user:1"}}, "validation_error"),
        ({"pattern_id": "user_onboarding", "colour": "red"}, "validation_error"),
    ],
    ids=["unknown-pattern", "input-schema", "unknown-field"],
)
async def test_execution_errors__stable_codes(wire: Wire, namespace: str, fields: dict, code: str) -> None:
    result = await wire.request("executions", namespace, fields)
    assert result["status"] == "error"
    assert result["error"]["code"] == code
