"""Every relationship command, graph query and error code, through the real broker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.wire import Wire


async def ok(wire: Wire, topic: str, namespace: str, payload: dict, *, timeout_s: float = 30.0) -> dict:
    result = await wire.request(topic, namespace, payload, timeout_s=timeout_s)
    assert result["status"] == "ok", result
    return result


async def error_code(wire: Wire, topic: str, namespace: str, payload: dict) -> str:
    result = await wire.request(topic, namespace, payload)
    assert result["status"] == "error", result
    return result["error"]["code"]


def create(source: str, type_: str, target: str, **extra: object) -> dict:
    return {"action": "create", "type": type_, "source": source, "target": target, **extra}


async def test_update__version_and_expected_version(wire: Wire, namespace: str) -> None:
    await ok(wire, "relationships", namespace, create("user:1", "owner", "wallet:1", metadata={"a": 1}))
    update = {"action": "update", "type": "owner", "source": "user:1", "target": "wallet:1"}
    result = await ok(
        wire, "relationships", namespace, {**update, "metadata": {"a": 2}, "expected_version": 1}
    )
    assert result["output"]["relationship"]["version"] == 2
    assert result["output"]["relationship"]["metadata"] == {"a": 2}
    [event] = await wire.events(result["request_id"])
    assert event["type"] == "relationship_updated"

    stale = await wire.request(
        "relationships", namespace, {**update, "metadata": {"a": 3}, "expected_version": 1}
    )
    assert stale["error"]["code"] == "concurrent_modification"
    assert stale["error"]["details"] == {"expected_version": 1, "actual_version": 2}


async def test_inverse_and_symmetric__visible_both_ways(wire: Wire, namespace: str) -> None:
    await ok(wire, "relationships", namespace, create("org:1", "parent", "team:1"))
    await ok(wire, "relationships", namespace, create("user:1", "linked", "user:2"))
    assert await error_code(wire, "relationships", namespace, create("team:1", "child", "org:1")) == (
        "duplicate_relationship"
    )
    assert await error_code(wire, "relationships", namespace, create("user:2", "linked", "user:1")) == (
        "duplicate_relationship"
    )
    got = await ok(
        wire, "queries", namespace, {"action": "get", "type": "child", "source": "team:1", "target": "org:1"}
    )
    assert got["output"]["relationship"]["type"] == "parent"
    children = await ok(
        wire,
        "queries",
        namespace,
        {"action": "neighbors", "entity": "team:1", "types": ["child"], "direction": "out"},
    )
    assert [n["entity"] for n in children["output"]["neighbors"]] == ["org:1"]
    # deleting either form removes both
    await ok(
        wire,
        "relationships",
        namespace,
        {"action": "delete", "type": "child", "source": "team:1", "target": "org:1"},
    )
    assert (
        await error_code(
            wire,
            "queries",
            namespace,
            {"action": "get", "type": "parent", "source": "org:1", "target": "team:1"},
        )
        == "not_found"
    )


async def test_hierarchy__cycle_detected_with_the_cycle(wire: Wire, namespace: str) -> None:
    await ok(wire, "relationships", namespace, create("a", "parent", "b"))
    await ok(wire, "relationships", namespace, create("b", "parent", "c"))
    result = await wire.request("relationships", namespace, create("a", "child", "c"))
    assert result["error"]["code"] == "cycle_detected"
    assert result["error"]["details"]["cycle"][0] == result["error"]["details"]["cycle"][-1]
    assert set(result["error"]["details"]["cycle"]) == {"a", "b", "c"}


async def test_delete_entity__one_event_per_relationship(wire: Wire, namespace: str) -> None:
    for target in ("wallet:1", "wallet:2", "group:1"):
        await ok(
            wire,
            "relationships",
            namespace,
            create("user:9", "owner" if "wallet" in target else "member", target),
        )
    result = await ok(wire, "relationships", namespace, {"action": "delete_entity", "entity": "user:9"})
    assert result["output"]["deleted"] == 3
    events = await wire.events(result["request_id"], count=3)
    assert {e["type"] for e in events} == {"relationship_deleted"}
    stats = await ok(wire, "queries", namespace, {"action": "stats"})
    assert stats["output"]["relationships"] == 0


async def test_delete_entity__over_its_limit__resource_limit_and_nothing_removed(
    wire: Wire, namespace: str
) -> None:
    """The test worker runs with NEXUS_MAX_DELETE_ENTITY=20 (conftest.worker_env)."""
    commands = [create("hub:1", "owner", f"wallet:{i}") for i in range(21)]
    await ok(wire, "relationships", namespace, {"action": "batch", "commands": commands})
    result = await wire.request("relationships", namespace, {"action": "delete_entity", "entity": "hub:1"})
    assert result["error"]["code"] == "resource_limit", result
    assert result["error"]["details"] == {"relationships": 21, "limit": 20}
    stats = await ok(wire, "queries", namespace, {"action": "stats"})
    assert stats["output"]["relationships"] == 21
    await ok(wire, "relationships", namespace, {**commands[0], "action": "delete"})
    emptied = await ok(wire, "relationships", namespace, {"action": "delete_entity", "entity": "hub:1"})
    assert emptied["output"]["deleted"] == 20


async def test_batch__all_or_nothing(wire: Wire, namespace: str) -> None:
    failing = {
        "action": "batch",
        "commands": [
            create("u:1", "member", "g:1"),
            create("u:2", "member", "g:1"),
            create("u:3", "member", "u:3"),
        ],
    }
    result = await wire.request("relationships", namespace, failing)
    assert result["error"]["code"] == "self_relationship"
    assert result["error"]["details"]["index"] == 2
    stats = await ok(wire, "queries", namespace, {"action": "stats"})
    assert stats["output"]["relationships"] == 0

    result = await ok(wire, "relationships", namespace, {**failing, "commands": failing["commands"][:2]})
    assert result["output"]["count"] == 2
    assert len(await wire.events(result["request_id"], count=2)) == 2


async def test_schema__checked_on_write(wire: Wire, namespace: str) -> None:
    schema = {"owner": ["user -> wallet"]}
    result = await ok(wire, "relationships", namespace, {"action": "set_schema", "schema": schema})
    [event] = await wire.events(result["request_id"])
    assert event["type"] == "schema_changed"
    assert event["data"]["schema"] == schema
    assert await error_code(wire, "relationships", namespace, create("group:1", "owner", "wallet:1")) == (
        "schema_violation"
    )
    await ok(wire, "relationships", namespace, create("user:1", "owner", "wallet:1"))
    await ok(wire, "relationships", namespace, create("group:1", "member", "org:1"))  # type not in schema
    await ok(wire, "relationships", namespace, {"action": "set_schema", "schema": None})
    await ok(wire, "relationships", namespace, create("group:1", "owner", "wallet:1"))


async def test_expiry__relationship_disappears_with_event(wire: Wire, namespace: str) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    result = await ok(
        wire, "relationships", namespace, create("user:e", "member", "group:e", expires_at=soon)
    )
    [expired] = await wire.wait_for(
        "events",
        lambda r: (
            r.headers.get("nexus-event-type") == "relationship_expired" and r.json()["namespace"] == namespace
        ),
        timeout_s=30,
    )
    assert expired.json()["relationship"]["source"] == "user:e"
    assert result["output"]["relationship"]["expires_at"]
    assert (
        await error_code(
            wire,
            "queries",
            namespace,
            {"action": "get", "type": "member", "source": "user:e", "target": "group:e"},
        )
        == "not_found"
    )


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (create("a", "owner", "a"), "self_relationship"),
        (create("a b", "owner", "c"), "invalid_entity_id"),
        (create("a", "owner", "x" * 300), "invalid_entity_id"),
        (create("a", "owner", "b", metadata={"blob": "x" * 20_000}), "metadata_too_large"),
        (create("a", "friend", "b"), "unknown_relationship_type"),
        ({"action": "explode"}, "unknown_action"),
        ({"action": "update", "type": "owner", "source": "a", "target": "b", "metadata": {}}, "not_found"),
        (
            {"action": "batch", "commands": [create(f"a{i}", "owner", "b") for i in range(1001)]},
            "batch_too_large",
        ),
        ({"action": "set_schema", "schema": {"owner": ["user wallet"]}}, "validation_error"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_command_errors__stable_codes(wire: Wire, namespace: str, command: dict, code: str) -> None:
    assert await error_code(wire, "relationships", namespace, command) == code


async def build_chain(wire: Wire, namespace: str) -> None:
    """user:1 - user:2 - user:3 - user:4 linked in a chain, user:5 apart; a dependency tree."""
    commands = [create(f"user:{i}", "linked", f"user:{i + 1}") for i in range(1, 4)]
    commands += [
        create("app", "owner", "lib:a"),
        create("lib:a", "owner", "lib:b"),
        create("app", "owner", "lib:b"),
        create("x:1", "member", "x:2"),
        create("x:2", "member", "x:3"),
        create("x:3", "member", "x:1"),
    ]
    await ok(wire, "relationships", namespace, {"action": "batch", "commands": commands})


async def test_queries__paths_traversals_cycles_dependencies(wire: Wire, namespace: str) -> None:
    await build_chain(wire, namespace)
    path = await ok(
        wire, "queries", namespace, {"action": "find_path", "source": "user:1", "target": "user:4"}
    )
    assert path["output"]["path"] == ["user:1", "user:2", "user:3", "user:4"]
    assert [r["type"] for r in path["output"]["relationships"]] == ["linked"] * 3
    short = await wire.request(
        "queries", namespace, {"action": "find_path", "source": "user:1", "target": "user:4", "max_depth": 2}
    )
    assert short["error"]["code"] == "path_not_found"

    walk = await ok(wire, "queries", namespace, {"action": "traverse", "start": "user:1", "max_depth": 2})
    assert {(e["id"], e["depth"]) for e in walk["output"]["entities"]} == {("user:2", 1), ("user:3", 2)}
    capped = await wire.request(
        "queries", namespace, {"action": "traverse", "start": "user:1", "max_depth": 3, "limit": 2}
    )
    assert capped["error"]["code"] == "resource_limit"

    cycles = await ok(
        wire, "queries", namespace, {"action": "detect_cycles", "entity": "x:1", "types": ["member"]}
    )
    assert cycles["output"]["count"] == 1
    (cycle,) = cycles["output"]["cycles"]
    assert cycle[0] == cycle[-1] and sorted(cycle[:-1]) == ["x:1", "x:2", "x:3"]
    everywhere = await ok(
        wire, "queries", namespace, {"action": "detect_cycles", "types": ["member", "owner"]}
    )
    assert everywhere["output"]["count"] == 1
    assert everywhere["output"]["scope"] == "namespace"

    deps = await ok(
        wire, "queries", namespace, {"action": "resolve_dependencies", "entity": "app", "types": ["owner"]}
    )
    order = deps["output"]["order"]
    assert order.index("lib:b") < order.index("lib:a") < order.index("app")
    cyclic = await wire.request(
        "queries", namespace, {"action": "resolve_dependencies", "entity": "x:1", "types": ["member"]}
    )
    assert cyclic["error"]["code"] == "cycle_detected"
    cycle = cyclic["error"]["details"]["cycle"]
    assert cycle[0] == cycle[-1] and sorted(cycle[:-1]) == ["x:1", "x:2", "x:3"]


async def test_queries__filters_directions_and_shortest_paths(wire: Wire, namespace: str) -> None:
    """Owners of X and members of Y, type and direction filters on every query, the shortest
    path by hops among several."""
    commands = [
        create("org:1", "owner", "wallet:1"),
        create("user:1", "owner", "wallet:1"),
        create("user:1", "owner", "wallet:2"),
        create("user:1", "member", "group:1"),
        create("user:2", "member", "group:1"),
        *(create(f"a:{i}", "linked", f"a:{i + 1}") for i in range(1, 4)),
        create("a:1", "owner", "a:4"),
    ]
    await ok(wire, "relationships", namespace, {"action": "batch", "commands": commands})

    async def neighbors(entity: str, direction: str, types: list[str]) -> set[str]:
        query = {"action": "neighbors", "entity": entity, "direction": direction, "types": types}
        answer = await ok(wire, "queries", namespace, query)
        return {n["entity"] for n in answer["output"]["neighbors"]}

    assert await neighbors("wallet:1", "in", ["owner"]) == {"org:1", "user:1"}  # owners of X
    assert await neighbors("group:1", "in", ["member"]) == {"user:1", "user:2"}  # members of Y
    assert await neighbors("user:1", "out", ["member"]) == {"group:1"}
    assert await neighbors("user:1", "in", ["owner", "member"]) == set()
    over = {"action": "neighbors", "entity": "group:1", "direction": "in", "types": ["member"], "limit": 1}
    assert await error_code(wire, "queries", namespace, over) == "resource_limit"

    async def path(source: str, target: str, **filters: object) -> list[str] | str:
        query = {"action": "find_path", "source": source, "target": target, **filters}
        answer = await wire.request("queries", namespace, query)
        if answer["status"] != "ok":
            return str(answer["error"]["code"])
        assert len(answer["output"]["relationships"]) == len(answer["output"]["path"]) - 1
        return list(answer["output"]["path"])

    assert await path("a:1", "a:4") == ["a:1", "a:4"]  # the owner shortcut: 1 hop, not 3
    assert await path("a:1", "a:4", types=["linked"]) == ["a:1", "a:2", "a:3", "a:4"]
    assert await path("a:4", "a:1", types=["owner"], direction="out") == "path_not_found"
    assert await path("a:4", "a:1", types=["owner"], direction="in") == ["a:4", "a:1"]
    assert await path("org:1", "user:1", types=["owner"], direction="out") == "path_not_found"
    assert await path("org:1", "user:1", types=["owner"]) == ["org:1", "wallet:1", "user:1"]

    async def reached(**filters: object) -> set[tuple[str, int]]:
        query = {"action": "traverse", "start": "user:1", "max_depth": 2, **filters}
        answer = await ok(wire, "queries", namespace, query)
        return {(e["id"], e["depth"]) for e in answer["output"]["entities"]}

    assert await reached(types=["owner"], direction="out") == {("wallet:1", 1), ("wallet:2", 1)}
    assert await reached(types=["owner"]) == {("wallet:1", 1), ("wallet:2", 1), ("org:1", 2)}
    assert await reached(types=["member"]) == {("group:1", 1), ("user:2", 2)}
    assert await reached(types=["member"], direction="in") == set()


async def test_analyze_and_stats(wire: Wire, namespace: str) -> None:
    await build_chain(wire, namespace)
    stats = await ok(wire, "queries", namespace, {"action": "stats"})
    assert stats["output"]["relationships"] == 9
    assert stats["output"]["by_type"] == {"owner": 3, "member": 3, "linked": 3, "parent": 0}
    assert stats["output"]["entities"] == 10
    # the chain's two ends have one relationship, the other eight entities two
    assert stats["output"]["degree"] == {"min": 1, "max": 2, "mean": 1.8, "median": 2}
    analysis = await ok(wire, "queries", namespace, {"action": "analyze", "top": 3, "max_age_ms": 0})
    output = analysis["output"]
    assert output["components"]["count"] == 3
    assert output["components"]["largest"] == 4
    assert len(output["top_by_pagerank"]) == 3
    assert output["degree_distribution"] == {"1": 2, "2": 8}
    assert [e["degree"] for e in output["top_by_degree"]] == [2, 2, 2]
    assert output["snapshot"]["relationships"] == 9
    assert output["snapshot"]["age_ms"] >= 0


async def test_read_your_writes__query_sent_right_after_a_write_sees_it(wire: Wire, namespace: str) -> None:
    write_id, query_id = f"w-{uuid.uuid4().hex}", f"q-{uuid.uuid4().hex}"
    offset = await wire.send(
        "relationships",
        namespace,
        {"request_id": write_id, "principal": "t", **create("p:1", "owner", "p:2")},
    )
    # no wait for the write's result: min_offset makes the query wait for it
    await wire.send(
        "queries",
        namespace,
        {
            "request_id": query_id,
            "principal": "t",
            "action": "get",
            "type": "owner",
            "source": "p:1",
            "target": "p:2",
            "min_offset": offset,
        },
    )
    answer = await wire.result(query_id)
    assert answer["status"] == "ok", answer["error"]
    assert answer["offset"] >= offset
    assert (await wire.result(write_id))["offset"] == offset


async def test_read_your_writes__query_before_write_is_answered_after_it(wire: Wire, namespace: str) -> None:
    probe = await ok(wire, "relationships", namespace, create("q:0", "owner", "q:00"))
    next_offset = probe["offset"] + 1
    query_id = f"q-{uuid.uuid4().hex}"
    await wire.send(
        "queries",
        namespace,
        {
            "request_id": query_id,
            "principal": "t",
            "action": "get",
            "type": "owner",
            "source": "q:1",
            "target": "q:2",
            "min_offset": next_offset,
        },
    )
    # the query parks until the next write on the namespace's partition is applied
    await ok(wire, "relationships", namespace, create("q:1", "owner", "q:2"))
    answer = await wire.result(query_id)
    assert answer["status"] == "ok", answer["error"]
    assert answer["output"]["relationship"]["source"] == "q:1"


async def test_read_your_writes__unreached_min_offset_times_out(wire: Wire, namespace: str) -> None:
    probe = await ok(wire, "relationships", namespace, create("t:1", "owner", "t:2"))
    far = probe["offset"] + 1_000_000
    result = await wire.request("queries", namespace, {"action": "stats", "min_offset": far}, timeout_s=30)
    assert result["error"]["code"] == "timeout"
    assert result["error"]["details"]["min_offset"] == far
    # the partition goes on: a plain query is answered
    await ok(wire, "queries", namespace, {"action": "stats"})


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"action": "find_path", "source": "a", "target": "b", "max_depth": 11}, "validation_error"),
        (
            {"action": "find_path", "source": "a", "target": "b", "types": ["enemy"]},
            "unknown_relationship_type",
        ),
        ({"action": "get", "type": "owner", "source": "a", "target": "b"}, "not_found"),
        ({"action": "detect_cycles", "types": ["linked"]}, "validation_error"),
        ({"action": "wander"}, "unknown_action"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_query_errors__stable_codes(wire: Wire, namespace: str, query: dict, code: str) -> None:
    assert await error_code(wire, "queries", namespace, query) == code
