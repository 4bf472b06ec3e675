"""Issue 12, part 1, through the real broker: one message never stops a worker.

- Deep nesting, the reproduction that crash-looped the agents (RecursionError in decoding), is
  dead-lettered or refused with a `validation_error` naming the limit, on every input topic.
- A failure injected into each handler (tests/integration/faulty_worker.py), as a bug would
  raise it, ends as that message's outcome: an `internal_error` result naming the exception class,
  an `error` event and a dead letter with the reason in headers; the offset advances, so the
  message is handled once, also across a restart.
"""

from __future__ import annotations

import uuid
from typing import Any

from tests.integration.conftest import own_worker, wait_until_answering
from tests.integration.wire import Record, Wire

DEEP = b"[" * 5000 + b"]" * 5000


async def dead_letter(wire: Wire, topic: str, at: tuple[int, int], timeout_s: float = 30.0) -> Record:
    """The one dead letter of the message at `at` (partition, offset) of `topic`."""
    await wire.wait_until(lambda: bool(wire.dead_letters(topic, *at)), timeout_s)
    found = wire.dead_letters(topic, *at)
    assert len(found) == 1, f"{len(found)} dead letters for {topic}{list(at)}"
    return found[0]


def create(request_id: str, source: str = "user:1", **extra: Any) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "principal": "tests",
        "action": "create",
        "type": "member",
        "source": source,
        "target": "group:1",
        **extra,
    }


async def test_deep_nesting__every_input_topic__refused_and_the_partition_goes_on(
    wire: Wire, namespace: str
) -> None:
    rid = uuid.uuid4().hex[:8]
    for topic, key in (
        ("relationships", namespace),
        ("queries", namespace),
        ("executions", namespace),
        ("patterns", f"deep-{rid}"),
    ):
        # not readable at all: a dead letter, the value unchanged
        for raw in (DEEP, b"[" * 10_000):
            letter = await dead_letter(wire, topic, await wire.send_located(topic, key, raw))
            assert letter.value == raw
            assert letter.headers["nexus-error-code"] == "undecodable"
            assert "deeper than 1024 levels" in letter.headers["nexus-error-reason"]
        # readable, with a request id, nested past NEXUS_MAX_NESTING_DEPTH: its error result
        request_id = f"deep-{topic}-{rid}"
        raw = b'{"request_id": "%s", "principal": "tests", "action": "create", "metadata": {"k": %s}}' % (
            request_id.encode(),
            b"[" * 500 + b"]" * 500,
        )
        await wire.send(topic, key, raw)
        result = await wire.result(request_id)
        assert result["status"] == "error"
        assert result["error"]["code"] == "validation_error"
        assert result["error"]["details"]["limit"] == 64
        assert "NEXUS_MAX_NESTING_DEPTH" in result["error"]["message"]
    # and the namespace's partition is answered as before
    after = await wire.request(
        "relationships", namespace, create(f"after-{rid}") | {"principal": "tests"}, timeout_s=30
    )
    assert after["status"] == "ok"


async def test_message_of_the_brokers_limit__dead_lettered_whole(wire: Wire, namespace: str) -> None:
    raw = b"x" * 1_040_000  # not JSON, just under the broker's default limit of 1 MiB
    at = await wire.send_located("relationships", namespace, raw)
    letter = await dead_letter(wire, "relationships", at, timeout_s=60)
    assert letter.value == raw
    assert letter.headers["nexus-error-code"] == "undecodable"


#: (topic, marker, request): one request per injected failure (faulty_worker.MARKERS)
def faulty_requests(namespace: str, rid: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    def pattern(marker: str) -> dict[str, Any]:
        return {
            "principal": "alice",
            "action": "store",
            "pattern": {
                "id": f"p-{marker.split(':')[1]}-{rid}",
                "name": "injected",
                "description": marker,
                "steps": [{"type": "event", "action": "publish", "parameters": {"event_type": "x"}}],
            },
        }

    def execution(marker: str) -> dict[str, Any]:
        return {
            "principal": "alice",
            "pattern_id": "user_onboarding",
            "input": {"source": f"{marker}:{rid}", "target": f"wallet:{rid}"},
        }

    return [
        ("relationships", namespace, "fault:actor", create("", metadata={"m": "fault:actor"})),
        ("relationships", namespace, "fault:create", create("", source=f"fault:create-{rid}")),
        (
            "queries",
            namespace,
            "fault:query",
            {"principal": "tests", "action": "find_path", "source": "fault:query", "target": "user:1"},
        ),
        ("executions", namespace, "fault:execution", execution("fault:execution")),
        ("executions", namespace, "fault:prefetch", execution("fault:prefetch")),
        ("patterns", f"p-pattern-{rid}", "fault:pattern", pattern("fault:pattern")),
        ("patterns", f"p-validate-{rid}", "fault:validate", pattern("fault:validate")),
    ]


def follow_up(topic: str, key: str, request_id: str) -> dict[str, Any]:
    """A valid request of `topic`."""
    base = {"request_id": request_id, "principal": "alice"}
    if topic == "relationships":
        return create(request_id, source=f"user:{request_id}")
    if topic == "queries":
        return base | {"action": "stats"}
    if topic == "executions":
        entities = {"source": f"user:{request_id}", "target": f"wallet:{request_id}"}
        return base | {"pattern_id": "user_onboarding", "input": entities}
    return base | {"action": "delete", "pattern_id": key}  # not_found: nothing was stored


async def test_failure_injected_into_each_handler__internal_error_outcome_once_and_the_next_answered(
    kafka_bootstrap: str, redis_url: str
) -> None:
    async with own_worker(kafka_bootstrap, redis_url, "faulty", module="tests.integration.faulty_worker") as (
        wire,
        worker,
        run_id,
    ):
        namespace = f"ns-{run_id}"
        sent: list[tuple[str, tuple[int, int], str, str]] = []
        for topic, key, marker, payload in faulty_requests(namespace, run_id):
            request_id = f"{marker}-{run_id}"
            at = await wire.send_located(topic, key, {**payload, "request_id": request_id})
            sent.append((topic, at, marker, request_id))
            # the same partition goes on: a valid request right behind it is answered
            follow = follow_up(topic, key, f"next-{marker.split(':')[1]}-{run_id}")
            await wire.send(topic, key, follow)
            answer = await wire.result(follow["request_id"])
            assert answer["status"] == "ok" or answer["error"]["code"] == "not_found", answer
        # a failure without a request id: the dead letter is its only trace a client can find
        anonymous = {k: v for k, v in create("x", metadata={"m": "fault:actor"}).items() if k != "request_id"}
        anonymous_at = await wire.send_located("relationships", namespace, anonymous)

        for topic, at, marker, request_id in sent:
            result = await wire.result(request_id)
            assert result["status"] == "error", (marker, result)
            assert result["error"]["code"] == "internal_error", (marker, result)
            assert result["error"]["details"] == {"exception": "InjectedFault"}, marker
            (event,) = await wire.events(request_id)
            assert event["type"] == "error" and event["error"]["code"] == "internal_error"
            letter = await dead_letter(wire, topic, at)
            assert letter.headers["nexus-error-code"] == "internal_error"
            assert f"InjectedFault: {marker} injected" in letter.headers["nexus-error-reason"]
        letter = await dead_letter(wire, "relationships", anonymous_at)
        assert letter.headers["nexus-error-code"] == "internal_error"

        # nothing of the failed create was applied
        missing = await wire.request(
            "queries",
            namespace,
            {"action": "get", "source": f"fault:create-{run_id}", "type": "member", "target": "group:1"},
        )
        assert missing["error"]["code"] == "not_found"

        # the offsets advanced: after a restart none of them is handled again
        worker.stop()
        worker.start()
        await wait_until_answering(wire, worker)
        for topic, at, marker, request_id in sent:
            assert len(wire.dead_letters(topic, *at)) == 1, marker
            copies = wire.matching("results", lambda r, i=request_id: r.headers.get("nexus-request-id") == i)
            assert len(copies) == 1, marker
        log = worker.log_text()
        assert "Crashed" not in log and "crashed" not in log
        assert worker.alive()
