"""Patterns a worker keeps in memory, by (id, version). A stored version never changes, so an
entry goes stale only when its pattern is deprecated, deleted, or gets a new latest version: the
worker calls `invalidate(id)` on the `pattern_stored`, `pattern_deprecated` and `pattern_deleted`
events (until an event arrives, another worker may run the previous latest version)."""

from __future__ import annotations

from collections import OrderedDict

from nexus_streams.domain.patterns import Pattern
from nexus_streams.store.base import PatternStore


class PatternCache:
    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._patterns: OrderedDict[tuple[str, int], Pattern] = OrderedDict()
        self._latest: dict[str, int] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._patterns)

    def get(self, pattern_id: str, version: int | None = None) -> Pattern | None:
        wanted = self._latest.get(pattern_id) if version is None else version
        pattern = None if wanted is None else self._patterns.get((pattern_id, wanted))
        if pattern is None:
            self.misses += 1
            return None
        self.hits += 1
        self._patterns.move_to_end((pattern.id, pattern.version))
        return pattern

    def put(self, pattern: Pattern, *, latest: bool = False) -> None:
        if self.max_entries <= 0:
            return
        key = (pattern.id, pattern.version)
        self._patterns[key] = pattern
        self._patterns.move_to_end(key)
        if latest:
            self._latest[pattern.id] = pattern.version
        while len(self._patterns) > self.max_entries:
            (evicted_id, evicted_version), _ = self._patterns.popitem(last=False)
            if self._latest.get(evicted_id) == evicted_version:
                del self._latest[evicted_id]

    def invalidate(self, pattern_id: str) -> None:
        self._latest.pop(pattern_id, None)
        for key in [k for k in self._patterns if k[0] == pattern_id]:
            del self._patterns[key]

    def clear(self) -> None:
        self._patterns.clear()
        self._latest.clear()

    async def fetch(self, store: PatternStore, pattern_id: str, version: int | None = None) -> Pattern:
        """From the cache, else from the store (and then cached); NotFound as the store raises it."""
        pattern = self.get(pattern_id, version)
        if pattern is None:
            pattern = await store.get(pattern_id, version)
            self.put(pattern, latest=version is None)
        return pattern
