"""The pattern store against the real Redis of the local stack, side by side with the in-memory
store: the same behaviour suite runs on both (the `make_store` fixture is parametrized), which
proves them equivalent. Each test has its own key prefix and removes its keys."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from nexus_streams.domain.errors import ErrorCode, StoreUnavailable
from nexus_streams.domain.patterns import Pattern
from nexus_streams.settings import Settings
from nexus_streams.store.base import ExecutionRecord, PatternStore
from nexus_streams.store.memory import MemoryPatternStore
from nexus_streams.store.redis import RedisPatternStore, RetryConfig
from tests.unit.pattern_store_behaviour import FakeClock, PatternStoreBehaviour, StoreFactory, make_pattern


async def _drop(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    await _drop(redis_url, prefix)


class TestPatternStore(PatternStoreBehaviour):
    @pytest.fixture(params=["memory", "redis"])
    async def make_store(
        self, request: pytest.FixtureRequest, redis_url: str, redis_prefix: str, clock: FakeClock
    ) -> AsyncIterator[StoreFactory]:
        created: list[PatternStore] = []

        def make(versions_retained: int = 20) -> PatternStore:
            store: PatternStore
            if request.param == "memory":
                store = MemoryPatternStore(versions_retained=versions_retained, clock=clock)
            else:
                store = RedisPatternStore.from_url(
                    redis_url,
                    key_prefix=f"{redis_prefix}{len(created)}:",
                    versions_retained=versions_retained,
                    clock=clock,
                )
            created.append(store)
            return store

        yield make
        for store in created:
            await store.close()


# --------------------------------------------------------------------------- Redis specifics


@pytest.fixture
async def redis_store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisPatternStore]:
    store = RedisPatternStore.from_url(redis_url, key_prefix=redis_prefix, clock=FakeClock())
    yield store
    await store.close()


async def test_redis__keys_all_under_the_prefix(redis_store: RedisPatternStore, redis_prefix: str) -> None:
    await redis_store.put(make_pattern(depth=3), "alice")
    await redis_store.put(make_pattern(depth=4), "alice")
    await redis_store.record_execution("p", 2, "ok", 1.0, execution_id="x-1")
    keys = sorted([key async for key in redis_store.redis.scan_iter(match=f"{redis_prefix}*")])
    assert keys == sorted(
        f"{redis_prefix}{k}"
        for k in (
            "patterns",
            "pattern:p",
            "pattern:p:versions",
            "pattern:p:v:1",
            "pattern:p:v:2",
            "pattern:p:stats",
            "pattern:p:v:2:stats",
            "execution:x-1",
        )
    )
    ttl = await redis_store.redis.ttl(f"{redis_prefix}execution:x-1")
    assert 0 < ttl <= 7 * 24 * 3600
    await redis_store.delete("p")
    remaining = [key async for key in redis_store.redis.scan_iter(match=f"{redis_prefix}*")]
    assert remaining == [f"{redis_prefix}execution:x-1"]  # expires by itself


async def test_redis__record_executions_after_redis_forgot_its_scripts(
    redis_store: RedisPatternStore,
) -> None:
    """The batch runs its script by hash; when Redis no longer knows it (a restart, SCRIPT
    FLUSH), it is loaded and the batch runs once, not twice."""
    await redis_store.put(make_pattern(), "alice")
    await redis_store.redis.script_flush()
    counted = await redis_store.record_executions(
        [ExecutionRecord("p", 1, "ok", 2.0, execution_id="f-1"), ExecutionRecord("p", 1, "ok", 3.0)]
    )
    assert counted == [True, True]
    assert (await redis_store.redis.script_exists(redis_store._record.sha)) == [True]
    total = (await redis_store.stats("p")).total
    assert (total.executions, total.duration_sum_ms) == (2, 5.0)


async def test_redis__stored_version_is_the_pattern_json(
    redis_store: RedisPatternStore, redis_prefix: str
) -> None:
    stored = await redis_store.put(make_pattern(), "alice")
    text = await redis_store.redis.get(f"{redis_prefix}pattern:p:v:1")
    assert Pattern.from_json(text) == stored.pattern
    meta = await redis_store.redis.hgetall(f"{redis_prefix}pattern:p")
    assert meta["latest"] == "1"
    assert meta["digest"] == stored.pattern.digest()
    assert meta["owner"] == "alice"


async def test_redis__two_stores_share_state_through_redis(redis_url: str, redis_prefix: str) -> None:
    one = RedisPatternStore.from_url(redis_url, key_prefix=redis_prefix)
    two = RedisPatternStore.from_url(redis_url, key_prefix=redis_prefix)
    try:
        await one.put(make_pattern(depth=3), "alice")
        stored = await two.put(make_pattern(depth=4), "bob")
        assert (stored.version, stored.pattern.metadata.owner) == (2, "alice")
        await two.record_execution("p", 2, "ok", 1.0, execution_id="x-9")
        assert not await one.record_execution("p", 2, "ok", 1.0, execution_id="x-9")
        assert (await one.stats("p")).total.executions == 1
    finally:
        await one.close()
        await two.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_redis__unreachable_is_store_unavailable_after_retries() -> None:
    store = RedisPatternStore.from_url(
        f"redis://127.0.0.1:{_closed_port()}/0",
        socket_timeout_s=1.0,
        retry=RetryConfig(attempts=3, initial_backoff_ms=1, max_backoff_ms=5),
    )
    try:
        for call in (
            store.get("p"),
            store.put(make_pattern(), "alice"),
            store.list(),
            store.record_execution("p", 1, "ok", 1.0),
            store.stats("p"),
            store.deprecate("p"),
            store.delete("p"),
            store.versions("p"),
        ):
            with pytest.raises(StoreUnavailable) as info:
                await call
            error = info.value
            assert error.code is ErrorCode.STORE_UNAVAILABLE
            assert error.details["attempts"] == 3
            assert "did not answer" in error.message
            assert error.to_dict()["code"] == "store_unavailable"
    finally:
        await store.close()


async def test_redis__recovers_when_redis_answers_again(redis_url: str, redis_prefix: str) -> None:
    """A store keeps no broken state: after failures it works as soon as Redis answers."""
    store = RedisPatternStore.from_url(
        f"redis://127.0.0.1:{_closed_port()}/0", retry=RetryConfig(attempts=2, initial_backoff_ms=1)
    )
    with pytest.raises(StoreUnavailable):
        await store.get("p")
    await store.close()
    store = RedisPatternStore.from_url(redis_url, key_prefix=redis_prefix)
    try:
        await store.put(make_pattern(), "alice")
        assert (await store.get("p")).version == 1
    finally:
        await store.close()


async def test_redis__from_settings(redis_url: str, redis_prefix: str) -> None:
    settings = Settings(
        redis_url=redis_url,
        redis_key_prefix=redis_prefix,
        pattern_versions_retained=1,
        redis_retry_attempts=2,
    )
    store = RedisPatternStore.from_settings(settings)
    try:
        assert (store.keys.prefix, store.versions_retained, store.retry.attempts) == (redis_prefix, 1, 2)
        await store.put(make_pattern(depth=3), "alice")
        await store.put(make_pattern(depth=4), "alice")
        assert [v.version for v in await store.versions("p")] == [2]
    finally:
        await store.close()
