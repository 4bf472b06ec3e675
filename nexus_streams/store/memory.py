"""An in-memory pattern store for unit tests and `--no-redis` development: the Redis store's
semantics (the same behaviour suite runs against both), without persistence or expiry of
remembered execution ids."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from nexus_streams.domain.patterns import Pattern
from nexus_streams.store.base import (
    Clock,
    ExecutionRecord,
    ExecutionStats,
    ExecutionStatus,
    PatternStats,
    PatternSummary,
    StoredVersion,
    VersionInfo,
    clip_message,
    duration_us,
    normalize_status,
    not_found,
    stamp,
    to_prune,
    utcnow,
)


@dataclass(slots=True)
class _Entry:
    owner: str
    created_at: datetime
    updated_at: datetime
    versions: dict[int, Pattern] = field(default_factory=dict)
    latest: int = 0
    deprecated: bool = False
    stats: ExecutionStats = field(default_factory=ExecutionStats)
    version_stats: dict[int, ExecutionStats] = field(default_factory=dict)


class MemoryPatternStore:
    def __init__(self, *, versions_retained: int = 20, clock: Clock = utcnow) -> None:
        self.versions_retained = versions_retained
        self.clock = clock
        self._patterns: dict[str, _Entry] = {}
        self._executions: set[str] = set()

    def _entry(self, pattern_id: str) -> _Entry:
        entry = self._patterns.get(pattern_id)
        if entry is None:
            raise not_found(pattern_id)
        return entry

    def _view(self, entry: _Entry, pattern: Pattern) -> Pattern:
        return pattern.model_copy(update={"deprecated": True}) if entry.deprecated else pattern

    async def put(self, pattern: Pattern, principal: str) -> StoredVersion:
        now = self.clock()
        entry = self._patterns.get(pattern.id)
        if entry is not None and entry.versions[entry.latest].digest() == pattern.digest():
            return StoredVersion(self._view(entry, entry.versions[entry.latest]), created=False)
        if entry is None:
            entry = self._patterns[pattern.id] = _Entry(owner=principal, created_at=now, updated_at=now)
        version = entry.latest + 1
        stored = stamp(pattern, version=version, owner=entry.owner, principal=principal, now=now)
        entry.versions[version] = stored
        entry.latest, entry.updated_at, entry.deprecated = version, now, False
        for old in to_prune(list(entry.versions), self.versions_retained):
            del entry.versions[old]
            entry.version_stats.pop(old, None)
        return StoredVersion(stored, created=True)

    async def get(self, pattern_id: str, version: int | None = None) -> Pattern:
        entry = self._entry(pattern_id)
        wanted = entry.latest if version is None else version
        if wanted not in entry.versions:
            raise not_found(pattern_id, version, sorted(entry.versions))
        return self._view(entry, entry.versions[wanted])

    async def versions(self, pattern_id: str) -> builtins.list[VersionInfo]:
        entry = self._entry(pattern_id)
        return [
            VersionInfo(v, p.metadata.created_at, p.metadata.created_by, p.digest())
            for v, p in sorted(entry.versions.items())
        ]

    async def list(self) -> builtins.list[PatternSummary]:
        return [
            PatternSummary(
                id=pattern_id,
                name=entry.versions[entry.latest].name,
                kind=entry.versions[entry.latest].kind,
                latest_version=entry.latest,
                owner=entry.owner,
                deprecated=entry.deprecated,
                created_at=entry.created_at,
                updated_at=entry.updated_at,
            )
            for pattern_id, entry in sorted(self._patterns.items())
        ]

    async def deprecate(self, pattern_id: str) -> Pattern:
        entry = self._entry(pattern_id)
        entry.deprecated = True
        return self._view(entry, entry.versions[entry.latest])

    async def delete(self, pattern_id: str) -> int:
        entry = self._entry(pattern_id)
        del self._patterns[pattern_id]
        return len(entry.versions)

    async def record_execution(
        self,
        pattern_id: str,
        version: int,
        status: ExecutionStatus | str,
        duration_ms: float,
        error_code: str | None = None,
        *,
        error_message: str | None = None,
        execution_id: str | None = None,
    ) -> bool:
        outcome = normalize_status(status)
        entry = self._patterns.get(pattern_id)
        if entry is None or (execution_id is not None and execution_id in self._executions):
            return False
        if execution_id is not None:
            self._executions.add(execution_id)
        args = (
            outcome,
            duration_us(duration_ms),
            error_code or None,
            clip_message(error_message),
            self.clock(),
        )
        entry.stats = entry.stats.recorded(*args)
        if version in entry.versions:
            entry.version_stats[version] = entry.version_stats.get(version, ExecutionStats()).recorded(*args)
        return True

    async def record_executions(self, records: Sequence[ExecutionRecord]) -> builtins.list[bool]:
        return [
            await self.record_execution(
                r.pattern_id,
                r.version,
                r.status,
                r.duration_ms,
                r.error_code,
                error_message=r.error_message,
                execution_id=r.execution_id,
            )
            for r in records
        ]

    async def stats(self, pattern_id: str) -> PatternStats:
        entry = self._entry(pattern_id)
        return PatternStats(
            pattern_id,
            entry.stats,
            {v: entry.version_stats.get(v, ExecutionStats()) for v in sorted(entry.versions)},
        )

    async def close(self) -> None:
        return None
