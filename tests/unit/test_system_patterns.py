"""SystemPatterns: the shipped patterns registered before the first execution, and again when the
store lost them."""

from __future__ import annotations

import asyncio

from nexus_streams.domain.errors import NotFound, StoreUnavailable
from nexus_streams.patterns import SystemPatterns, system_patterns
from nexus_streams.store.cache import PatternCache
from nexus_streams.store.memory import MemoryPatternStore

IDS = {"user_onboarding", "financial_transaction"}


async def test_system_patterns__register__ready_and_cache_dropped() -> None:
    store, cache = MemoryPatternStore(), PatternCache()
    keeper = SystemPatterns(store, cache)
    assert keeper.ids == IDS
    assert not keeper.ready.is_set()
    cache.put(system_patterns()[0], latest=True)
    await keeper.register()
    assert keeper.ready.is_set()
    assert cache.get("user_onboarding") is None
    assert {(await store.get(i)).id for i in IDS} == IDS


async def test_system_patterns__wait_ready__false_at_the_deadline_true_once_registered() -> None:
    keeper = SystemPatterns(MemoryPatternStore(), PatternCache())
    assert await keeper.wait_ready(0.01) is False
    waiter = asyncio.create_task(keeper.wait_ready(5.0))
    await asyncio.sleep(0)
    await keeper.register()
    assert await waiter is True


async def test_system_patterns__restore_if_missing__registers_again_after_the_store_lost_them() -> None:
    store = MemoryPatternStore()
    keeper = SystemPatterns(store, PatternCache())
    await keeper.register()
    assert await keeper.restore_if_missing() is False
    await store.delete("financial_transaction")
    try:
        await store.get("financial_transaction")
        raise AssertionError("deleted")
    except NotFound:
        pass
    assert await keeper.restore_if_missing() is True
    assert (await store.get("financial_transaction")).id == "financial_transaction"


class DownFor:
    """The memory store, unavailable for its first `n` writes."""

    def __init__(self, n: int) -> None:
        self.store = MemoryPatternStore()
        self.failures = n

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def put(self, *args: object, **kwargs: object) -> object:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("redis down")
        return await self.store.put(*args, **kwargs)  # type: ignore[arg-type]


async def test_system_patterns__register_until_done__retries_while_the_store_is_down() -> None:
    store = DownFor(2)
    keeper = SystemPatterns(store, PatternCache())  # type: ignore[arg-type]
    async with asyncio.timeout(10):
        await keeper.register_until_done(max_delay_s=0.01)
    assert keeper.ready.is_set() and store.failures == 0
