"""The pattern store boundary: what the registry and executor need, whatever holds the patterns.

Semantics every implementation keeps (tests/unit/pattern_store_behaviour.py runs against both):
- `put` stores version n+1 of an existing id, version 1 of a new one; a pattern whose definition
  equals the latest version's (`Pattern.digest`) makes no new version (`created=False`). The first
  principal to store an id is its owner for good; each version records who stored it and when.
  A new version clears `deprecated`. Versions beyond `versions_retained` (oldest first) are removed
  with their statistics.
- `get` returns the latest version or a given one, with the pattern's current `deprecated` flag;
  `NotFound` when the pattern or version does not exist (or is no longer retained).
- `record_execution` updates the pattern's and the version's statistics in one atomic step; an
  `execution_id` seen before (within the dedupe TTL) is not counted again; an execution of a pattern
  deleted meanwhile is not counted (returns False). `record_executions` does the same for many,
  in order (the worker sends its executions' statistics in batches).
- Every operation either completes or raises a `NexusError` (`not_found`, `store_unavailable`, ...).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from nexus_streams.domain.errors import NotFound
from nexus_streams.domain.patterns import Pattern, PatternKind
from nexus_streams.domain.times import iso, parse_time

Clock = Callable[[], datetime]
MAX_ERROR_MESSAGE_CHARS = 1000


def utcnow() -> datetime:
    return datetime.now(UTC)


class ExecutionStatus(StrEnum):
    #: the execution committed
    OK = "ok"
    #: it failed (nothing, or only what its rollback policy kept, was committed)
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """The outcome of `put`: the version now latest, and whether `put` made it."""

    pattern: Pattern
    #: False when the definition equals the latest version's: no new version was made
    created: bool

    @property
    def pattern_id(self) -> str:
        return self.pattern.id

    @property
    def version(self) -> int:
        return self.pattern.version


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: int
    created_at: datetime | None
    created_by: str | None
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "created_at": iso(self.created_at)}


@dataclass(frozen=True, slots=True)
class PatternSummary:
    id: str
    name: str
    kind: PatternKind
    latest_version: int
    owner: str | None
    deprecated: bool
    created_at: datetime | None
    updated_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "kind": self.kind.value,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class ExecutionStats:
    executions: int = 0
    successes: int = 0
    failures: int = 0
    duration_count: int = 0
    #: durations are kept in whole microseconds, so both stores sum them exactly alike
    duration_sum_us: int = 0
    duration_max_us: int = 0
    last_status: str | None = None
    last_executed_at: datetime | None = None
    last_error_code: str | None = None
    last_error_message: str | None = None
    last_error_at: datetime | None = None

    @property
    def duration_sum_ms(self) -> float:
        return self.duration_sum_us / 1000

    @property
    def duration_max_ms(self) -> float:
        return self.duration_max_us / 1000

    @property
    def duration_mean_ms(self) -> float | None:
        return self.duration_sum_us / self.duration_count / 1000 if self.duration_count else None

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.executions if self.executions else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "executions": self.executions,
            "successes": self.successes,
            "failures": self.failures,
            "success_rate": self.success_rate,
            "duration_count": self.duration_count,
            "duration_sum_ms": self.duration_sum_ms,
            "duration_max_ms": self.duration_max_ms,
            "duration_mean_ms": self.duration_mean_ms,
            "last_status": self.last_status,
            "last_executed_at": iso(self.last_executed_at),
            "last_error_code": self.last_error_code,
            "last_error_message": self.last_error_message,
            "last_error_at": iso(self.last_error_at),
        }

    def recorded(
        self,
        status: ExecutionStatus,
        duration_us: int,
        error_code: str | None,
        error_message: str | None,
        now: datetime,
    ) -> ExecutionStats:
        """These statistics with one more execution (what the Redis script does, in Python)."""
        ok = status is ExecutionStatus.OK
        changes: dict[str, Any] = {
            "executions": self.executions + 1,
            "successes": self.successes + ok,
            "failures": self.failures + (not ok),
            "duration_count": self.duration_count + 1,
            "duration_sum_us": self.duration_sum_us + duration_us,
            "duration_max_us": max(self.duration_max_us, duration_us),
            "last_status": status.value,
            "last_executed_at": now,
        }
        if not ok:
            changes |= {
                "last_error_code": error_code,
                "last_error_message": error_message,
                "last_error_at": now,
            }
        return ExecutionStats(**{**{f: getattr(self, f) for f in self.__dataclass_fields__}, **changes})

    @classmethod
    def from_hash(cls, data: Mapping[str, str]) -> ExecutionStats:
        def number(name: str) -> int:
            return int(data.get(name) or 0)

        return cls(
            executions=number("executions"),
            successes=number("successes"),
            failures=number("failures"),
            duration_count=number("duration_count"),
            duration_sum_us=number("duration_sum_us"),
            duration_max_us=number("duration_max_us"),
            last_status=data.get("last_status") or None,
            last_executed_at=parse_time(data.get("last_executed_at")),
            last_error_code=data.get("last_error_code") or None,
            last_error_message=data.get("last_error_message") or None,
            last_error_at=parse_time(data.get("last_error_at")),
        )


@dataclass(frozen=True, slots=True)
class PatternStats:
    pattern_id: str
    #: every execution of the pattern, whatever the version
    total: ExecutionStats
    #: by retained version
    versions: Mapping[int, ExecutionStats] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pattern_id": self.pattern_id,
            "total": self.total.to_dict(),
            "versions": {str(v): s.to_dict() for v, s in sorted(self.versions.items())},
        }


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """One finished execution, for `record_executions`."""

    pattern_id: str
    version: int
    status: ExecutionStatus | str
    duration_ms: float
    error_code: str | None = None
    error_message: str | None = None
    execution_id: str | None = None


class PatternStore(Protocol):
    async def put(self, pattern: Pattern, principal: str) -> StoredVersion: ...

    async def get(self, pattern_id: str, version: int | None = None) -> Pattern: ...

    async def versions(self, pattern_id: str) -> builtins.list[VersionInfo]: ...

    async def list(self) -> builtins.list[PatternSummary]: ...

    async def deprecate(self, pattern_id: str) -> Pattern: ...

    async def delete(self, pattern_id: str) -> int:
        """Removes the pattern, its versions and statistics; returns how many versions it had."""
        ...

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
        """True when counted; False for a pattern that no longer exists or an execution seen before."""
        ...

    async def record_executions(self, records: Sequence[ExecutionRecord]) -> builtins.list[bool]:
        """`record_execution` for each, in order, in as few round trips as the store allows."""
        ...

    async def stats(self, pattern_id: str) -> PatternStats: ...

    async def close(self) -> None: ...


# -- what both implementations share -------------------------------------------------------------


def stamp(pattern: Pattern, *, version: int, owner: str, principal: str, now: datetime) -> Pattern:
    """The pattern as stored: its version, owner and who stored it when; not deprecated."""
    metadata = pattern.metadata.model_copy(
        update={"owner": owner, "created_at": now, "created_by": principal}
    )
    return pattern.model_copy(update={"version": version, "deprecated": False, "metadata": metadata})


def to_prune(versions: builtins.list[int], retained: int) -> builtins.list[int]:
    """The oldest versions beyond the `retained` newest (0 keeps all)."""
    ordered = sorted(versions)
    return ordered[:-retained] if retained and len(ordered) > retained else []


def not_found(
    pattern_id: str, version: int | None = None, kept: builtins.list[int] | None = None
) -> NotFound:
    if version is None or kept is None:
        return NotFound(f"pattern {pattern_id!r} not found", pattern_id=pattern_id)
    if kept and version < kept[0]:
        message = f"version {version} of pattern {pattern_id!r} is no longer kept (oldest kept: {kept[0]})"
    else:
        message = f"pattern {pattern_id!r} has no version {version} (latest: {kept[-1] if kept else None})"
    return NotFound(message, pattern_id=pattern_id, version=version)


def normalize_status(status: ExecutionStatus | str) -> ExecutionStatus:
    return ExecutionStatus(status)


def duration_us(duration_ms: float) -> int:
    return max(0, round(duration_ms * 1000))


def clip_message(message: str | None) -> str | None:
    return message[:MAX_ERROR_MESSAGE_CHARS] if message else None
