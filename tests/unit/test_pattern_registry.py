"""The pattern registry without Faust or Redis: a pattern command in, its outcome out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nexus_streams.domain.access import AccessPolicy
from nexus_streams.pattern_registry import REQUEST_SCOPE, PatternRegistry
from nexus_streams.replies import Outbound, Received
from nexus_streams.service import Remembered, Reply
from nexus_streams.store.cache import PatternCache
from nexus_streams.store.memory import MemoryPatternStore
from nexus_streams.topics import PATTERNS

PATTERN = {
    "id": "greet",
    "name": "greet",
    "description": "one event",
    "steps": [{"type": "event", "action": "publish", "parameters": {"event_type": "greeted"}}],
}


class Requests:
    def __init__(self) -> None:
        self.kept: dict[tuple[str, str], Remembered] = {}

    def get(self, namespace: str, request_id: str) -> Remembered | None:
        return self.kept.get((namespace, request_id))


def registry() -> PatternRegistry:
    return PatternRegistry(MemoryPatternStore(), AccessPolicy.of(()), PatternCache(), Requests())


def message(value: bytes, key: bytes | None = b"greet") -> Received:
    return Received(PATTERNS, "nexus.patterns", 0, 7, key, value)


def by_topic(reply: Reply) -> dict[str, list[Outbound]]:
    found: dict[str, list[Outbound]] = {}
    for out in reply.outbound:
        found.setdefault(out.spec.name, []).append(out)
    return found


def store(pattern: Any) -> bytes:
    return json.dumps(
        {"request_id": "p-1", "principal": "alice", "action": "store", "pattern": pattern}
    ).encode()


async def test_pattern_registry__store__ok_and_remembered() -> None:
    reply = await registry().handle(message(store(PATTERN)))
    assert reply.result is not None and reply.result.status == "ok"
    assert reply.remembered is not None and reply.remembered.result.request_id == "p-1"
    assert REQUEST_SCOPE == "patterns"


async def test_pattern_registry__document_nested_past_the_limit__validation_error() -> None:
    deep = "[" * 100 + "]" * 100
    raw = store(PATTERN).replace(
        b'"event_type": "greeted"', b'"event_type": "greeted", "x": ' + deep.encode()
    )
    reply = await registry().handle(message(raw))
    topics = by_topic(reply)
    result = json.loads(topics["results"][0].value)
    assert result["request_id"] == "p-1"
    assert result["error"]["code"] == "validation_error"
    assert result["error"]["details"]["limit"] == 64
    assert "deadletter" not in topics


@pytest.mark.parametrize(
    "raw", [b"[" * 5000 + b"]" * 5000, b'{"request_id": "p-1", "pattern": ' + b"[" * 5000]
)
async def test_pattern_registry__nested_past_what_json_reads__dead_lettered(raw: bytes) -> None:
    reply = await registry().handle(message(raw))
    (dead,) = by_topic(reply)["deadletter"]
    assert dead.value == raw
    assert dead.headers["nexus-error-code"] == b"undecodable"
