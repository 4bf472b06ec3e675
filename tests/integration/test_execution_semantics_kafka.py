"""Execution semantics through the real broker: rollback (full, partial, compensation), optional
steps, timeouts, resource limits and composite nesting."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.wire import Wire

CREATE_A = {
    "id": "a",
    "type": "relationship",
    "action": "create",
    "parameters": {"type": "member", "source": "{{input.user}}", "target": "group:a"},
}
CREATE_B = {
    "id": "b",
    "type": "relationship",
    "action": "create",
    "parameters": {"type": "member", "source": "{{input.user}}", "target": "group:b"},
    "depends_on": ["a"],
}
FAIL = {
    "id": "boom",
    "type": "control",
    "action": "fail",
    "parameters": {"code": "execution_error"},
    "depends_on": ["b"],
}


async def store(wire: Wire, document: dict) -> str:
    pattern_id = f"{document['id']}_{uuid.uuid4().hex[:8]}"
    result = await wire.request(
        "patterns",
        pattern_id,
        {"principal": "alice", "action": "store", "pattern": {**document, "id": pattern_id}},
    )
    assert result["status"] == "ok", result["error"]
    return pattern_id


def doc(pattern_id: str, steps: list, **extra: object) -> dict:
    return {
        "id": pattern_id,
        "name": pattern_id,
        "description": "test pattern",
        "steps": steps,
        "input_schema": {"type": "object", "properties": {"user": {"type": "string"}}},
        **extra,
    }


async def run(wire: Wire, namespace: str, pattern_id: str, **fields: object) -> dict:
    return await wire.request(
        "executions",
        namespace,
        {"pattern_id": pattern_id, "input": {"user": "user:1"}, **fields},
        timeout_s=60,
    )


async def members(wire: Wire, namespace: str) -> set[str]:
    result = await wire.request("queries", namespace, {"action": "neighbors", "entity": "user:1"})
    return {n["entity"] for n in result["output"]["neighbors"]}


@pytest.mark.parametrize(
    ("on_failure", "kept", "statuses"),
    [
        ("rollback_all", set(), {"a": "rolled_back", "b": "rolled_back", "boom": "failed"}),
        ("keep_completed", {"group:a", "group:b"}, {"a": "completed", "b": "completed", "boom": "failed"}),
    ],
)
async def test_rollback__full_and_partial(
    wire: Wire, namespace: str, on_failure: str, kept: set, statuses: dict
) -> None:
    pattern_id = await store(wire, doc("rb", [CREATE_A, CREATE_B, FAIL], on_failure=on_failure))
    result = await run(wire, namespace, pattern_id)
    assert result["status"] == "error"
    assert result["error"]["details"]["step"] == "boom"
    assert {k: v["status"] for k, v in result["output"]["steps"].items()} == statuses
    assert await members(wire, namespace) == kept


async def test_rollback__compensation_undoes_completed_steps(wire: Wire, namespace: str) -> None:
    reserve = {
        **CREATE_A,
        "compensation": {
            "type": "relationship",
            "action": "delete",
            "parameters": {"type": "member", "source": "{{input.user}}", "target": "group:a"},
        },
    }
    pattern_id = await store(
        wire, doc("comp", [reserve, {**FAIL, "depends_on": ["a"]}], on_failure="compensate")
    )
    result = await run(wire, namespace, pattern_id)
    assert result["status"] == "error"
    assert result["output"]["steps"]["a"]["status"] == "compensated"
    assert await members(wire, namespace) == set()


async def test_optional_step__fails_without_failing_the_execution(wire: Wire, namespace: str) -> None:
    optional = {**FAIL, "depends_on": [], "optional": True}
    after = {**CREATE_B, "depends_on": ["boom"]}
    pattern_id = await store(wire, doc("opt", [CREATE_A, optional, after]))
    result = await run(wire, namespace, pattern_id)
    assert result["status"] == "ok", result
    steps = {k: v["status"] for k, v in result["output"]["steps"].items()}
    assert steps == {"a": "completed", "boom": "failed", "b": "skipped"}
    assert await members(wire, namespace) == {"group:a"}


async def test_timeout__execution_deadline(wire: Wire, namespace: str) -> None:
    slow = {
        "id": "slow",
        "type": "control",
        "action": "fail",
        "parameters": {"code": "timeout", "times": 5},
        "retry": {"max_attempts": 6, "initial_backoff_ms": 400, "multiplier": 1.0, "jitter": 0},
    }
    pattern_id = await store(wire, doc("late", [slow, {**CREATE_A, "depends_on": ["slow"]}]))
    result = await run(wire, namespace, pattern_id, timeout_ms=1000)
    assert result["status"] == "error"
    assert result["error"]["code"] == "timeout"
    assert await members(wire, namespace) == set()


async def test_resource_limit__vertices_visited(wire: Wire, namespace: str) -> None:
    await wire.request(
        "relationships",
        namespace,
        {
            "action": "batch",
            "commands": [
                {"action": "create", "type": "member", "source": f"user:{i}", "target": "group:big"}
                for i in range(50)
            ],
        },
    )
    walk = {
        "id": "walk",
        "type": "graph",
        "action": "traverse",
        "parameters": {"start": "group:big", "max_depth": 2, "limit": 10},
    }
    pattern_id = await store(wire, doc("wide", [walk]))
    result = await run(wire, namespace, pattern_id)
    assert result["status"] == "error"
    assert result["error"]["code"] == "resource_limit"


async def test_composite__nested_steps_in_one_transaction(wire: Wire, namespace: str) -> None:
    inner = await store(wire, doc("inner", [CREATE_A]))
    outer = await store(
        wire,
        {
            **doc(
                "outer",
                [
                    {
                        "id": "sub",
                        "type": "pattern",
                        "action": "execute",
                        "parameters": {"pattern_id": inner},
                    },
                    {**CREATE_B, "depends_on": ["sub"]},
                ],
            ),
            "kind": "composite",
        },
    )
    result = await run(wire, namespace, outer)
    assert result["status"] == "ok", result
    nested = result["output"]["steps"]["sub"]
    assert nested["steps"]["a"]["status"] == "completed"
    assert await members(wire, namespace) == {"group:a", "group:b"}

    failing = await store(
        wire,
        {
            **doc(
                "outer_fail",
                [
                    {
                        "id": "sub",
                        "type": "pattern",
                        "action": "execute",
                        "parameters": {"pattern_id": inner},
                    },
                    {**FAIL, "depends_on": ["sub"]},
                ],
            ),
            "kind": "composite",
        },
    )
    other = f"{namespace}-2"
    result = await run(wire, other, failing)
    assert result["status"] == "error"
    assert await members(wire, other) == set()
