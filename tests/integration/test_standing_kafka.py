"""Standing queries through the real broker (docs/standing-queries.md): subscribe, the change
that matches (one event, with witness and offset), the one that unmatches, list, unsubscribe,
limits, a trigger that runs once, and a worker killed and restarted in between."""

from __future__ import annotations

import uuid
from typing import Any

from tests.integration.conftest import own_worker, wait_until_answering
from tests.integration.wire import Record, Wire

MATCHED, UNMATCHED = "standing_query_matched", "standing_query_unmatched"
PATH = {"action": "find_path", "source": "user:1", "target": "user:3", "max_depth": 2}


def rid() -> str:
    return f"s-{uuid.uuid4().hex}"


async def ok(wire: Wire, topic: str, namespace: str, payload: dict[str, Any]) -> dict[str, Any]:
    result = await wire.request(topic, namespace, payload)
    assert result["status"] == "ok", result
    output: dict[str, Any] = result["output"]
    return output


async def subscribe(wire: Wire, namespace: str, sid: str, query: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return await wire.request(
        "queries", namespace, {"action": "subscribe", "subscription_id": sid, "query": query, **kw}
    )


async def change(
    wire: Wire, namespace: str, action: str, source: str, target: str, type_: str = "member"
) -> int:
    """Send a relationship command, wait for its ok result; the command's input offset."""
    request_id = rid()
    offset = await wire.send(
        "relationships",
        namespace,
        {
            "request_id": request_id,
            "principal": "tests",
            "action": action,
            "type": type_,
            "source": source,
            "target": target,
        },
    )
    result = await wire.result(request_id)
    assert result["status"] == "ok", result
    return offset


def standing(wire: Wire, namespace: str, sid: str) -> list[Record]:
    return wire.matching(
        "events",
        lambda r: (
            r.headers.get("nexus-subscription-id") == sid and r.headers.get("nexus-namespace") == namespace
        ),
    )


def distinct(records: list[Record]) -> list[dict[str, Any]]:
    """The events, a redelivered copy (identical, from the journal) counted once."""
    seen: dict[bytes, dict[str, Any]] = {}
    for r in records:
        seen.setdefault(r.value or b"", r.json())
    return list(seen.values())


async def wait_events(wire: Wire, namespace: str, sid: str, count: int) -> list[dict[str, Any]]:
    """The subscription's distinct events, once there are `count` of them (fails at the deadline)."""
    arrived = await wire.wait_until(lambda: len(distinct(standing(wire, namespace, sid))) >= count, 30.0)
    events = distinct(standing(wire, namespace, sid))
    assert arrived, f"{len(events)} of {count} events of {sid} within 30s: {events}"
    return events


async def test_standing__match_unmatch_list_unsubscribe(wire: Wire, namespace: str) -> None:
    subscribed = await subscribe(wire, namespace, "reach", PATH)
    assert subscribed["status"] == "ok", subscribed
    assert subscribed["output"]["matched"] is False and subscribed["output"]["created"] is True
    assert (
        await subscribe(wire, namespace, "hub", {"action": "neighbors", "entity": "group:1", "count_over": 1})
    )["status"] == "ok"
    await change(wire, namespace, "create", "user:1", "group:1")
    matching = await change(wire, namespace, "create", "group:1", "user:3")
    (matched,) = await wait_events(wire, namespace, "reach", 1)
    assert matched["type"] == MATCHED
    assert matched["data"]["offset"] == matching
    assert matched["data"]["witness"]["path"] == ["user:1", "group:1", "user:3"]
    assert matched["data"]["match_id"].startswith("standing:reach:")
    (hub,) = await wait_events(wire, namespace, "hub", 1)  # group:1 has 2 relationships now
    assert hub["type"] == MATCHED and hub["data"]["witness"] == {"count": 2}

    listed = await ok(wire, "queries", namespace, {"action": "list_subscriptions"})
    assert {s["subscription_id"]: s["matched"] for s in listed["subscriptions"]} == {
        "hub": True,
        "reach": True,
    }

    unmatching = await change(wire, namespace, "delete", "group:1", "user:3")
    events = await wait_events(wire, namespace, "reach", 2)
    assert [e["type"] for e in events] == [MATCHED, UNMATCHED]
    assert events[1]["data"]["offset"] == unmatching
    await wait_events(wire, namespace, "hub", 2)  # hub unmatched by the same change

    removed = await ok(wire, "queries", namespace, {"action": "unsubscribe", "subscription_id": "reach"})
    assert removed == {"subscription_id": "reach", "removed": True}
    await change(wire, namespace, "create", "group:1", "user:3")
    await wait_events(wire, namespace, "hub", 3)  # the same change, seen by the one left
    assert len(distinct(standing(wire, namespace, "reach"))) == 2
    listed = await ok(wire, "queries", namespace, {"action": "list_subscriptions"})
    assert [s["subscription_id"] for s in listed["subscriptions"]] == ["hub"]


async def test_standing__bad_subscription__stable_codes(wire: Wire, namespace: str) -> None:
    assert (await subscribe(wire, namespace, "x", PATH))["status"] == "ok"
    other = await subscribe(wire, namespace, "x", {**PATH, "max_depth": 3})
    assert other["error"]["code"] == "subscription_exists"
    bad = await subscribe(wire, namespace, "y", {"action": "neighbors", "entity": "user:1"})
    assert bad["error"]["code"] == "validation_error"
    unknown = await subscribe(wire, namespace, "z", {"action": "stats"})
    assert unknown["error"]["code"] == "validation_error"


async def test_standing__on_match__trigger_runs_once(wire: Wire, namespace: str) -> None:
    subscribed = await subscribe(
        wire,
        namespace,
        "onboard",
        PATH,
        on_match={
            "pattern_id": "user_onboarding",
            "input": {"source": "{{input.witness.path.0}}", "target": "wallet:{{input.offset}}"},
        },
    )
    assert subscribed["status"] == "ok", subscribed
    offset = await change(wire, namespace, "create", "user:1", "user:3")
    (matched,) = await wait_events(wire, namespace, "onboard", 1)
    trigger = matched["data"]["trigger"]
    assert trigger == {"request_id": matched["data"]["match_id"], "pattern_id": "user_onboarding"}
    executed = await wire.result(trigger["request_id"])
    assert executed["status"] == "ok", executed
    assert executed["pattern_id"] == "user_onboarding"
    got = await ok(
        wire,
        "queries",
        namespace,
        {"action": "get", "type": "owner", "source": "user:1", "target": f"wallet:{offset}"},
    )
    assert got["relationship"]["source"] == "user:1"
    ran = wire.matching(
        "events",
        lambda r: (
            r.json().get("request_id") == trigger["request_id"] and r.json()["type"] == "pattern_executed"
        ),
    )
    assert len(distinct(ran)) == 1


async def test_standing__worker_killed__answer_kept__no_duplicate_no_lost_event(
    kafka_bootstrap: str, redis_url: str
) -> None:
    limits = {"NEXUS_SUBSCRIPTIONS_PER_NAMESPACE": "2"}
    async with own_worker(kafka_bootstrap, redis_url, "standing", settings=limits) as (wire, worker, _):
        namespace = "standing"
        assert (await subscribe(wire, namespace, "reach", PATH))["status"] == "ok"
        assert (await subscribe(wire, namespace, "other", {**PATH, "target": "user:9"}))["status"] == "ok"
        over = await subscribe(wire, namespace, "third", PATH)
        assert over["error"]["code"] == "resource_limit" and over["error"]["details"]["limit"] == 2

        await change(wire, namespace, "create", "user:1", "group:1")
        matching = await change(wire, namespace, "create", "group:1", "user:3")
        await wait_events(wire, namespace, "reach", 1)
        worker.kill()  # no final commit: the last messages are read again, answered from the journal
        worker.start()
        await wait_until_answering(wire, worker)

        listed = await ok(wire, "queries", namespace, {"action": "list_subscriptions"})
        assert {s["subscription_id"]: s["matched"] for s in listed["subscriptions"]} == {
            "other": False,
            "reach": True,
        }
        await change(wire, namespace, "create", "user:1", "user:3")  # a second path: still matched
        await change(wire, namespace, "delete", "group:1", "user:3")  # the witness goes, a path stays
        unmatching = await change(wire, namespace, "delete", "user:1", "user:3")
        events = await wait_events(wire, namespace, "reach", 2)
        assert [(e["type"], e["data"]["offset"]) for e in events] == [
            (MATCHED, matching),
            (UNMATCHED, unmatching),
        ]
