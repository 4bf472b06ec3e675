"""A worker killed with SIGKILL and started again recovers its graph and its answered requests
from the changelog topics: nothing lost, nothing doubled."""

from __future__ import annotations

import pytest

from tests.integration.conftest import TABLE_STORES, own_worker, wait_until_answering
from tests.integration.test_graph_kafka import create, ok
from tests.integration.wire import Wire


async def mixed_history(wire: Wire, ns: str) -> None:
    """A schema, an update, a delete: more than creates to recover."""
    await ok(
        wire,
        "relationships",
        ns,
        {"action": "set_schema", "schema": {"owner": ["user -> wallet"]}},
        timeout_s=60,
    )
    await ok(
        wire, "relationships", ns, create("user:1", "owner", "wallet:1", metadata={"a": 1}), timeout_s=60
    )
    update = {"action": "update", "type": "owner", "source": "user:1", "target": "wallet:1"}
    await ok(wire, "relationships", ns, {**update, "metadata": {"a": 2}, "expected_version": 1}, timeout_s=60)
    await ok(wire, "relationships", ns, create("user:1", "linked", "user:2"), timeout_s=60)
    await ok(wire, "relationships", ns, create("user:2", "owner", "wallet:2"), timeout_s=60)
    await ok(wire, "relationships", ns, create("user:3", "owner", "wallet:3"), timeout_s=60)
    await ok(
        wire,
        "relationships",
        ns,
        {"action": "delete", "type": "owner", "source": "user:3", "target": "wallet:3"},
        timeout_s=60,
    )


async def assert_mixed_history(wire: Wire, ns: str) -> None:
    got = {"action": "get", "type": "owner", "source": "user:1", "target": "wallet:1"}
    relationship = (await ok(wire, "queries", ns, got, timeout_s=60))["output"]["relationship"]
    assert (relationship["version"], relationship["metadata"]) == (2, {"a": 2})
    deleted = {**got, "source": "user:3", "target": "wallet:3"}
    assert (await wire.request("queries", ns, deleted, timeout_s=60))["error"]["code"] == "not_found"
    refused = await wire.request("relationships", ns, create("group:1", "owner", "wallet:9"), timeout_s=60)
    assert refused["error"]["code"] == "schema_violation", refused
    path = await ok(
        wire, "queries", ns, {"action": "find_path", "source": "wallet:1", "target": "wallet:2"}, timeout_s=60
    )
    assert path["output"]["path"] == ["wallet:1", "user:1", "user:2", "wallet:2"]
    stats = (await ok(wire, "queries", ns, {"action": "stats"}, timeout_s=60))["output"]
    assert (stats["relationships"], stats["entities"]) == (3, 4)
    assert stats["schema"] == {"owner": ["user -> wallet"]}


@pytest.mark.parametrize("store", TABLE_STORES)
async def test_restart__sigkill_then_graph_and_requests_recovered(
    kafka_bootstrap: str, redis_url: str, store: str
) -> None:
    async with own_worker(kafka_bootstrap, redis_url, "restart", settings={"NEXUS_TABLE_STORE": store}) as (
        wire,
        worker,
        run_id,
    ):
        namespaces = [f"ns-{i}-{run_id}" for i in range(4)]
        created = []
        for i, ns in enumerate(namespaces * 5):
            request_id = f"c-{i}-{run_id}"
            command = {
                "request_id": request_id,
                "principal": "alice",
                "action": "create",
                "type": "parent",
                "source": f"team:{i}",
                "target": f"user:{i}",
            }
            await wire.send("relationships", ns, command)
            created.append((ns, command))
        for _, command in created:
            assert (await wire.result(command["request_id"]))["status"] == "ok"
        mixed = f"mixed-{run_id}"
        await mixed_history(wire, mixed)
        await assert_mixed_history(wire, mixed)

        worker.kill()
        worker.start()
        await wait_until_answering(wire, worker)

        # the graph survived: creating the inverse form again is a duplicate
        for ns, command in created:
            probe = f"dup-{command['request_id']}"
            await wire.send(
                "relationships",
                ns,
                {
                    **command,
                    "request_id": probe,
                    "type": "child",
                    "source": command["target"],
                    "target": command["source"],
                },
            )
            result = await wire.result(probe, timeout_s=60)
            assert result["error"]["code"] == "duplicate_relationship", result
        # metadata, versions, deletes and the schema came back too, and the search index with them
        await assert_mixed_history(wire, mixed)
        # nothing lost, nothing doubled: each namespace holds exactly what was created in it
        for ns in namespaces:
            stats = await wire.request("queries", ns, {"action": "stats"}, timeout_s=60)
            assert stats["output"]["relationships"] == 5, stats
            assert stats["output"]["by_type"]["parent"] == 5
        # the answered requests survived: a redelivered request is answered the same, not re-applied
        ns, command = created[0]
        first = await wire.result(command["request_id"])
        copies_before = len(
            wire.matching("results", lambda r: r.headers.get("nexus-request-id") == command["request_id"])
        )
        await wire.send("relationships", ns, command)
        replays = await wire.wait_for(
            "results",
            lambda r: r.headers.get("nexus-request-id") == command["request_id"],
            count=copies_before + 1,
        )
        assert all(r.json() == first for r in replays)
        created_events = wire.matching(
            "events",
            lambda r: (
                r.headers.get("nexus-event-type") == "relationship_created"
                and r.json()["request_id"].startswith("c-")
            ),
        )
        # delivery is at-least-once: an event may come again after the crash, always identical
        by_request: dict[str, set[bytes]] = {}
        for record in created_events:
            by_request.setdefault(record.json()["request_id"], set()).add(record.value or b"")
        assert set(by_request) == {command["request_id"] for _, command in created}
        assert all(len(copies) == 1 for copies in by_request.values())
        log = worker.log_text()
        assert "Traceback" not in log
        assert "Error in recovery" not in log
