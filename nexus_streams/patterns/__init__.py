"""The system patterns shipped with the service: the spec's examples, as JSON documents here.

They are registered at worker start by `register_system_patterns` (idempotent: an unchanged
document makes no new version), and again when found missing (`SystemPatterns`)."""

from __future__ import annotations

import asyncio
import logging
from importlib import resources

from nexus_streams.domain.errors import NexusError, NotFound
from nexus_streams.domain.patterns import Pattern, PatternKind, load_document
from nexus_streams.domain.validation import validate_pattern
from nexus_streams.store.base import PatternStore, StoredVersion
from nexus_streams.store.cache import PatternCache

log = logging.getLogger(__name__)

#: the principal recorded as owner and author of the shipped versions
SYSTEM_PRINCIPAL = "system"
SYSTEM_PATTERN_FILES = ("user_onboarding.json", "financial_transaction.json")


def system_patterns() -> list[Pattern]:
    """The shipped system patterns, validated."""
    folder = resources.files(__name__)
    patterns = []
    for name in SYSTEM_PATTERN_FILES:
        pattern = validate_pattern(load_document(folder.joinpath(name).read_bytes()))
        assert pattern.kind is PatternKind.SYSTEM, f"{name} must be a system pattern"
        patterns.append(pattern)
    return patterns


async def register_system_patterns(store: PatternStore) -> list[StoredVersion]:
    """Stores each shipped pattern unless an admin has stored a version of it since the shipped
    one: a shipped change becomes a new version; an admin's change is not overwritten."""
    registered = []
    for pattern in system_patterns():
        try:
            current = await store.get(pattern.id)
        except NotFound:
            current = None
        if current is not None and current.metadata.created_by != SYSTEM_PRINCIPAL:
            continue
        registered.append(await store.put(pattern, SYSTEM_PRINCIPAL))
    return registered


class SystemPatterns:
    """Keeps the shipped patterns in the store: registered before the worker answers its first
    execution, and again whenever they are found missing (a Redis that lost its data, a FLUSHDB).
    Each registration drops the changed patterns from the worker's cache."""

    def __init__(self, store: PatternStore, cache: PatternCache) -> None:
        self.store = store
        self.cache = cache
        self.ids = frozenset(pattern.id for pattern in system_patterns())
        self.ready = asyncio.Event()
        self._lock = asyncio.Lock()

    async def register(self) -> list[StoredVersion]:
        """One attempt (raises the store's `NexusError`); several callers at once register once."""
        async with self._lock:
            stored = await register_system_patterns(self.store)
            for version in stored:
                self.cache.invalidate(version.pattern_id)
            self.ready.set()
        log.info(
            "system patterns registered: %s",
            ", ".join(f"{v.pattern_id} v{v.version}{'' if v.created else ' (unchanged)'}" for v in stored)
            or "none (admins changed them)",
        )
        return stored

    async def register_until_done(self, max_delay_s: float = 30.0) -> None:
        """At worker start: Redis may come later than the worker, so retry until it answers."""
        delay_s = min(0.5, max_delay_s)
        while True:
            try:
                await self.register()
                return
            except NexusError as exc:
                log.warning("system patterns not registered (%s); retrying in %.1fs", exc.message, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, max_delay_s)

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait for the first registration; False when it has not happened within `timeout_s`
        (the store is down: the execution then answers `store_unavailable` itself)."""
        if self.ready.is_set():
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await self.ready.wait()
        except TimeoutError:
            return False
        return True

    async def restore_if_missing(self) -> bool:
        """Register again if any shipped pattern is missing from the store; True if it was."""
        for pattern_id in sorted(self.ids):
            try:
                await self.store.get(pattern_id)
            except NotFound:
                log.warning("system pattern %s is missing from the store; registering them again", pattern_id)
                await self.register()
                return True
        return False
