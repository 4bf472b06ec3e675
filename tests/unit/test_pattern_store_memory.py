"""The in-memory pattern store (the shared behaviour suite), the worker's pattern cache, and the
lookup of included patterns ahead of validation."""

from __future__ import annotations

from typing import Any

import pytest

from nexus_streams.domain.errors import NotFound, PatternCycleDetected, PatternTooLarge
from nexus_streams.domain.validation import PatternLimits, validate_pattern
from nexus_streams.store.base import PatternStore, to_prune
from nexus_streams.store.cache import PatternCache
from nexus_streams.store.inclusions import inclusion_resolver
from nexus_streams.store.keys import PatternKeys
from nexus_streams.store.memory import MemoryPatternStore
from tests.unit.pattern_store_behaviour import FakeClock, PatternStoreBehaviour, StoreFactory, make_pattern


class TestMemoryPatternStore(PatternStoreBehaviour):
    @pytest.fixture
    def make_store(self, clock: FakeClock) -> StoreFactory:
        def make(versions_retained: int = 20) -> PatternStore:
            return MemoryPatternStore(versions_retained=versions_retained, clock=clock)

        return make


@pytest.mark.parametrize(
    ("versions", "retained", "pruned"),
    [([1, 2, 3], 0, []), ([1, 2, 3], 3, []), ([1, 2, 3], 2, [1]), ([3, 1, 2, 4], 1, [1, 2, 3]), ([], 2, [])],
)
def test_to_prune(versions: list[int], retained: int, pruned: list[int]) -> None:
    assert to_prune(versions, retained) == pruned


def test_keys__one_place_with_a_prefix() -> None:
    keys = PatternKeys("t-1:")
    assert keys.index == "t-1:patterns"
    assert keys.meta("p") == "t-1:pattern:p"
    assert keys.versions("p") == "t-1:pattern:p:versions"
    assert keys.document("p", 3) == "t-1:pattern:p:v:3"
    assert keys.stats("p") == "t-1:pattern:p:stats"
    assert keys.version_stats("p", 3) == "t-1:pattern:p:v:3:stats"
    assert keys.execution("x-1") == "t-1:execution:x-1"
    assert keys.all_of("p", [1]) == [
        "t-1:pattern:p",
        "t-1:pattern:p:versions",
        "t-1:pattern:p:stats",
        "t-1:pattern:p:v:1",
        "t-1:pattern:p:v:1:stats",
    ]
    assert PatternKeys().index == "nexus:patterns"


# --------------------------------------------------------------------------- cache


async def test_cache__fetches_once_per_version() -> None:
    store = MemoryPatternStore()
    await store.put(make_pattern(depth=3), "alice")
    cache = PatternCache()
    first = await cache.fetch(store, "p")
    assert await cache.fetch(store, "p") is first
    assert await cache.fetch(store, "p", 1) is first  # the latest is also cached by its version
    assert (cache.hits, cache.misses) == (2, 1)


async def test_cache__invalidate_drops_every_version_and_the_latest() -> None:
    store = MemoryPatternStore()
    await store.put(make_pattern(depth=3), "alice")
    cache = PatternCache()
    await cache.fetch(store, "p")
    await store.put(make_pattern(depth=4), "alice")
    assert (await cache.fetch(store, "p")).version == 1  # stale until the pattern_stored event
    cache.invalidate("p")
    assert len(cache) == 0
    assert (await cache.fetch(store, "p")).version == 2
    assert (await cache.fetch(store, "p", 1)).version == 1
    await store.deprecate("p")
    cache.invalidate("p")
    assert (await cache.fetch(store, "p")).deprecated


async def test_cache__not_found_is_not_cached() -> None:
    store = MemoryPatternStore()
    cache = PatternCache()
    with pytest.raises(NotFound):
        await cache.fetch(store, "p")
    await store.put(make_pattern(), "alice")
    assert (await cache.fetch(store, "p")).version == 1


def test_cache__evicts_least_recently_used() -> None:
    cache = PatternCache(max_entries=2)
    a, b, c = (make_pattern(i).model_copy(update={"version": 1}) for i in ("a", "b", "c"))
    cache.put(a, latest=True)
    cache.put(b, latest=True)
    assert cache.get("a") is a  # a is now the most recent
    cache.put(c, latest=True)
    assert cache.get("b") is None
    assert cache.get("a") is a
    assert cache.get("c", 1) is c
    assert len(cache) == 2


def test_cache__size_zero_keeps_nothing_and_clear() -> None:
    cache = PatternCache(max_entries=0)
    cache.put(make_pattern().model_copy(update={"version": 1}), latest=True)
    assert cache.get("p") is None
    cache = PatternCache()
    cache.put(make_pattern().model_copy(update={"version": 1}), latest=True)
    cache.clear()
    assert cache.get("p") is None


# --------------------------------------------------------------------------- inclusions


def include(pattern_id: str, version: int | None = None) -> dict[str, Any]:
    parameters: dict[str, Any] = {"pattern_id": pattern_id}
    if version is not None:
        parameters["version"] = version
    return {"type": "pattern", "action": "execute", "parameters": parameters, "id": f"run_{pattern_id}"}


def composite(pattern_id: str, *steps: dict[str, Any]) -> dict[str, Any]:
    return {"id": pattern_id, "name": pattern_id, "steps": list(steps)}


async def store_validated(store: MemoryPatternStore, document: dict[str, Any], depth: int = 4) -> None:
    resolve = await inclusion_resolver(store, document, depth)
    pattern = validate_pattern(
        document, resolve_pattern=resolve, limits=PatternLimits(max_inclusion_depth=depth)
    )
    await store.put(pattern, "alice")


async def test_inclusions__composites_store_and_pin_versions() -> None:
    store = MemoryPatternStore()
    await store.put(make_pattern("leaf"), "alice")
    await store_validated(store, composite("mid", include("leaf")))
    await store_validated(store, composite("top", include("mid"), include("leaf", 1)))
    top = await store.get("top")
    assert [(i.pattern_id, i.version) for i in top.includes()] == [("mid", 1), ("leaf", 1)]


async def test_inclusions__a_cycle_is_caught_when_any_pattern_in_it_is_stored() -> None:
    store = MemoryPatternStore()
    await store.put(make_pattern("leaf"), "alice")
    await store_validated(store, composite("a", include("leaf")))
    await store_validated(store, composite("b", include("a")))
    # a new version of `a` that includes `b`, which includes `a`
    with pytest.raises(PatternCycleDetected) as info:
        await store_validated(store, composite("a", include("b")))
    assert info.value.problems[0].details["cycle"] == ["a", "b", "a"]


async def test_inclusions__depth_is_checked_across_stored_patterns() -> None:
    store = MemoryPatternStore()
    await store.put(make_pattern("l0"), "alice")
    for level in range(1, 4):
        await store_validated(store, composite(f"l{level}", include(f"l{level - 1}")), depth=3)
    with pytest.raises(PatternTooLarge, match="patterns nest 4 deep"):
        await store_validated(store, composite("l4", include("l3")), depth=3)


async def test_inclusions__unknown_pattern_is_a_dependency_error() -> None:
    store = MemoryPatternStore()
    resolve = await inclusion_resolver(store, composite("top", include("ghost")), 4)
    assert resolve("ghost", None) is None
