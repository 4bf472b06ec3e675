"""Every worker drops a changed pattern from its cache when the pattern event arrives, whichever
worker applied the change."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime

from nexus_streams.domain.validation import validate_pattern
from nexus_streams.settings import Settings
from nexus_streams.store.cache import PatternCache
from nexus_streams.streams.app import follow_pattern_events
from tests.integration.conftest import WorkerProcess
from tests.integration.wire import Wire


async def test_pattern_cache__invalidated_by_pattern_events(wire: Wire, worker: WorkerProcess) -> None:
    settings = Settings(
        kafka_bootstrap=worker.env["NEXUS_KAFKA_BOOTSTRAP"], topic_prefix=worker.env["NEXUS_TOPIC_PREFIX"]
    )
    cache = PatternCache(16)
    pattern = validate_pattern(
        {
            "id": "cached",
            "name": "Cached",
            "description": "kept in a cache",
            "steps": [{"type": "relationship", "action": "create", "parameters": {"type": "member"}}],
        }
    )
    cache.put(pattern, latest=True)
    follower = asyncio.create_task(follow_pattern_events(settings, cache))
    try:
        # the follower starts at the end of the topic: publish until it has seen one event
        event = {
            "type": "pattern_stored",
            "namespace": None,
            "occurred_at": datetime.now(UTC).isoformat(),
            "pattern_id": "cached",
            "pattern_version": 2,
        }
        async with asyncio.timeout(30):
            while cache.get("cached") is not None:
                await wire.producer.send_and_wait(
                    wire.topic("events"),
                    json.dumps(event).encode(),
                    key=b"cached",
                    headers=[("nexus-event-type", b"pattern_stored"), ("nexus-pattern-id", b"cached")],
                )
                await asyncio.sleep(0.2)  # a publish rate, not a wait for a condition
        assert cache.get("cached", 1) is None
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
