"""The pattern store in Redis (redis.asyncio): versions, metadata and statistics, kept atomic with
WATCH/MULTI (put, delete) and Lua (statistics, deprecate). Keys: store/keys.py.

`watch_durability` tells whether Redis keeps every write it acknowledged across a crash
(`assess_durability`, docs/operations.md); the worker runs it from its start.

Connection failures, timeouts, a loading or read-only Redis are retried with exponential backoff;
when the tries are spent the operation raises `StoreUnavailable` (`store_unavailable`), which the
caller answers as an error result: the agent never crashes on Redis. Every operation is safe to
retry: a `put` whose reply was lost finds its own version and answers `created=False`, and
`record_execution` with an `execution_id` counts once.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    WatchError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from nexus_streams.domain.errors import ConcurrentModification, NexusError, StoreUnavailable
from nexus_streams.domain.patterns import Pattern, PatternKind
from nexus_streams.domain.times import iso, parse_time
from nexus_streams.settings import Settings
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
from nexus_streams.store.keys import DEFAULT_KEY_PREFIX, EXECUTION_DEDUPE_TTL_S, PatternKeys

log = logging.getLogger(__name__)
T = TypeVar("T")
#: told after every attempt of an operation: (operation, seconds, the Redis/OS error or None);
#: the worker sets `RedisPatternStore.observer` to feed its metrics (nexus_streams/metrics.py)
StoreObserver = Callable[[str, float, BaseException | None], None]
RETRYABLE = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ReadOnlyError, OSError)
#: optimistic transactions retried this often when another client changes the pattern meanwhile
MAX_WATCH_TRIES = 10
#: what `RedisPatternStore.persistence` reads with CONFIG GET, one name per call (Redis before 7.0
#: takes one)
PERSISTENCE_SETTINGS = (
    "appendonly",
    "appendfsync",
    "no-appendfsync-on-rewrite",
    "maxmemory",
    "maxmemory-policy",
)
#: how often a running worker reads them again: a CONFIG SET or a fail-over changes them
DURABILITY_CHECK_INTERVAL_S = 60.0

# KEYS: meta, pattern stats, version stats, version document, execution marker
# ARGV: status, duration_us, error_code, error_message, now, dedupe (1/0), dedupe_ttl_s
RECORD_EXECUTION_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[6] == '1' then
  if not redis.call('SET', KEYS[5], '1', 'NX', 'EX', tonumber(ARGV[7])) then return 0 end
end
local function record(key)
  redis.call('HINCRBY', key, 'executions', 1)
  if ARGV[1] == 'ok' then
    redis.call('HINCRBY', key, 'successes', 1)
  else
    redis.call('HINCRBY', key, 'failures', 1)
    redis.call('HSET', key, 'last_error_code', ARGV[3], 'last_error_message', ARGV[4],
               'last_error_at', ARGV[5])
  end
  redis.call('HINCRBY', key, 'duration_count', 1)
  redis.call('HINCRBY', key, 'duration_sum_us', ARGV[2])
  local max = tonumber(redis.call('HGET', key, 'duration_max_us') or '0')
  if tonumber(ARGV[2]) > max then redis.call('HSET', key, 'duration_max_us', ARGV[2]) end
  redis.call('HSET', key, 'last_status', ARGV[1], 'last_executed_at', ARGV[5])
end
record(KEYS[2])
if redis.call('EXISTS', KEYS[4]) == 1 then record(KEYS[3]) end
return 1
"""

# KEYS: meta; ARGV: now. Returns the latest version, or 0 when the pattern does not exist.
DEPRECATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'deprecated', '1', 'deprecated_at', ARGV[1])
return tonumber(redis.call('HGET', KEYS[1], 'latest'))
"""


class Durability(StrEnum):
    """Whether Redis keeps every write it acknowledged across a crash of Redis, of its OS or of
    its power, and if not, why (the `reason` label of `nexus_redis_durable`)."""

    #: appendonly yes, appendfsync always: every write is fsynced before Redis replies
    AOF_ALWAYS = "aof_always"
    #: no append-only file: what was written since the last snapshot is lost
    AOF_OFF = "aof_off"
    #: fsync once a second, in the background
    APPENDFSYNC_EVERYSEC = "appendfsync_everysec"
    #: no fsync: the OS writes the file when it likes
    APPENDFSYNC_NO = "appendfsync_no"
    #: AOF on (INFO persistence), the fsync policy unreadable (CONFIG refused)
    APPENDFSYNC_UNKNOWN = "appendfsync_unknown"
    #: no-appendfsync-on-rewrite yes
    FSYNC_SKIPPED_ON_REWRITE = "fsync_skipped_on_rewrite"
    #: an allkeys-* maxmemory policy under a memory limit
    EVICTION = "eviction"
    #: neither CONFIG GET nor INFO persistence answered
    UNKNOWN = "unknown"

    @property
    def durable(self) -> bool:
        return self is Durability.AOF_ALWAYS

    @property
    def loses(self) -> str:
        """What a crash can take of the writes Redis acknowledged."""
        return LOSSES[self]


LOSSES = {
    Durability.AOF_ALWAYS: "nothing",
    Durability.AOF_OFF: "every write since the last snapshot (all of them when there is none)",
    Durability.APPENDFSYNC_EVERYSEC: (
        "the last second or two of writes on an OS crash or power loss, and on a Redis crash too "
        "while a slow fsync runs"
    ),
    Durability.APPENDFSYNC_NO: "the writes the OS had not flushed yet (up to 30 s on Linux) on an OS crash",
    Durability.APPENDFSYNC_UNKNOWN: "unknown: AOF is on, the fsync policy could not be read (CONFIG refused)",
    Durability.FSYNC_SKIPPED_ON_REWRITE: (
        "the writes of a background rewrite or snapshot on an OS crash (no-appendfsync-on-rewrite yes)"
    ),
    Durability.EVICTION: "pattern versions and statistics evicted when memory is full (allkeys-* policy)",
    Durability.UNKNOWN: "unknown: neither CONFIG GET nor INFO persistence answered",
}


def assess_durability(settings: Mapping[str, str]) -> Durability:
    """The verdict on what Redis told of its persistence: CONFIG GET names (`PERSISTENCE_SETTINGS`),
    or only `aof_enabled` of INFO persistence when CONFIG is refused, or nothing."""
    got = {name: str(value).strip().lower() for name, value in settings.items()}
    appendonly = got.get("appendonly") or {"1": "yes", "0": "no"}.get(got.get("aof_enabled", ""))
    if appendonly is None:
        return Durability.UNKNOWN
    if appendonly != "yes":
        return Durability.AOF_OFF
    fsync = {
        "always": None,
        "everysec": Durability.APPENDFSYNC_EVERYSEC,
        "no": Durability.APPENDFSYNC_NO,
    }.get(got.get("appendfsync", ""), Durability.APPENDFSYNC_UNKNOWN)
    if fsync is not None:
        return fsync
    if got.get("no-appendfsync-on-rewrite") == "yes":
        return Durability.FSYNC_SKIPPED_ON_REWRITE
    if got.get("maxmemory-policy", "").startswith("allkeys-") and got.get("maxmemory", "0") != "0":
        return Durability.EVICTION
    return Durability.AOF_ALWAYS


def log_durability(verdict: Durability, settings: Mapping[str, str]) -> None:
    read = " ".join(f"{name}={value}" for name, value in sorted(settings.items())) or "nothing"
    if verdict.durable:
        log.info("the pattern store (Redis) keeps every acknowledged write across a crash (%s)", read)
    else:
        log.warning(
            "the pattern store (Redis) can lose acknowledged writes: %s (reason=%s; Redis reported: %s). "
            "What it needs: docs/operations.md, Redis persistence",
            verdict.loses,
            verdict.value,
            read,
        )


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _hash(value: Any) -> dict[str, str]:
    return {_str(k): _str(v) for k, v in value.items()}


def _ints(values: Any) -> builtins.list[int]:
    return sorted(int(_str(v)) for v in values)


def _observed(
    operation: str, call: Callable[[], Awaitable[T]], observer: StoreObserver
) -> Callable[[], Awaitable[T]]:
    """`call`, telling `observer` how long each attempt took and which Redis error it raised (an
    error of the domain, such as `NotFound`, means Redis answered: reported without error)."""

    async def attempt() -> T:
        started = time.perf_counter()
        try:
            value = await call()
        except (RedisError, OSError) as exc:
            observer(operation, time.perf_counter() - started, exc)
            raise
        except Exception:
            observer(operation, time.perf_counter() - started, None)
            raise
        observer(operation, time.perf_counter() - started, None)
        return value

    return attempt


@dataclass(frozen=True, slots=True)
class RetryConfig:
    attempts: int = 5
    initial_backoff_ms: int = 50
    max_backoff_ms: int = 2000

    def delay_s(self, attempt: int) -> float:
        return float(min(self.max_backoff_ms, self.initial_backoff_ms * 2 ** (attempt - 1))) / 1000


class RedisPatternStore:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        keys: PatternKeys | None = None,
        versions_retained: int = 20,
        retry: RetryConfig | None = None,
        execution_dedupe_ttl_s: int = EXECUTION_DEDUPE_TTL_S,
        clock: Clock = utcnow,
    ) -> None:
        self.redis = client
        self.keys = keys or PatternKeys()
        self.versions_retained = versions_retained
        self.retry = retry or RetryConfig()
        self.execution_dedupe_ttl_s = execution_dedupe_ttl_s
        self.clock = clock
        self._record = client.register_script(RECORD_EXECUTION_LUA)
        self._deprecate = client.register_script(DEPRECATE_LUA)
        self.observer: StoreObserver | None = None
        self.durability_check_interval_s = DURABILITY_CHECK_INTERVAL_S

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        socket_timeout_s: float = 5.0,
        **options: Any,
    ) -> RedisPatternStore:
        """A store with its own client; its retries are this store's, not the client's."""
        client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, keys=PatternKeys(key_prefix), **options)

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock = utcnow) -> RedisPatternStore:
        return cls.from_url(
            settings.redis_url,
            key_prefix=settings.redis_key_prefix,
            socket_timeout_s=settings.redis_socket_timeout_s,
            versions_retained=settings.pattern_versions_retained,
            retry=RetryConfig(
                settings.redis_retry_attempts,
                settings.redis_retry_initial_backoff_ms,
                settings.redis_retry_max_backoff_ms,
            ),
            execution_dedupe_ttl_s=settings.execution_dedupe_ttl_s,
            clock=clock,
        )

    async def close(self) -> None:
        await self.redis.aclose()

    async def _run(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        if self.observer is not None:
            call = _observed(operation, call, self.observer)
        last: BaseException | None = None
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return await call()
            except RETRYABLE as exc:
                last = exc
                if attempt < self.retry.attempts:
                    await asyncio.sleep(self.retry.delay_s(attempt))
            except RedisError as exc:
                raise StoreUnavailable(
                    f"the pattern store failed on {operation}: {exc}", operation=operation, error=str(exc)
                ) from exc
        raise StoreUnavailable(
            f"the pattern store (Redis) did not answer {operation} after {self.retry.attempts} tries: "
            f"{last}; the request may be retried",
            operation=operation,
            attempts=self.retry.attempts,
            error=str(last),
        ) from last

    # -- persistence ---------------------------------------------------------------------------

    async def persistence(self) -> dict[str, str]:
        """Redis' persistence settings (CONFIG GET); when CONFIG is refused, as managed Redis often
        does, `aof_enabled` of INFO persistence; {} when neither answers."""
        return await self._run("persistence", self._persistence)

    async def _persistence(self) -> dict[str, str]:
        settings: dict[str, str] = {}
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in PERSISTENCE_SETTINGS:
                    pipe.config_get(name)
                for reply in await pipe.execute():
                    settings |= _hash(reply)
        except ResponseError:  # CONFIG renamed, disabled or not permitted
            settings = {}
        if "appendonly" in settings:
            return settings
        try:
            info = await self.redis.info("persistence")
        except ResponseError:
            return settings
        if "aof_enabled" in info:
            settings["aof_enabled"] = _str(info["aof_enabled"])
        return settings

    async def watch_durability(self, report: Callable[[Durability], None]) -> None:
        """From the worker's start, every `durability_check_interval_s`: the verdict on Redis'
        persistence (`assess_durability`) to `report` (the worker's gauge), and to the log when it
        changes, at WARNING when an acknowledged write could be lost. Until Redis answers, sooner."""
        last: Durability | None = None
        retry_s = 0.5
        while True:
            try:
                settings = await self.persistence()
            except NexusError as exc:
                log.info(
                    "persistence of the pattern store not read (%s); again in %.1fs", exc.message, retry_s
                )
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, self.durability_check_interval_s)
                continue
            verdict = assess_durability(settings)
            report(verdict)
            if verdict is not last:
                log_durability(verdict, settings)
                last = verdict
            retry_s = 0.5
            await asyncio.sleep(self.durability_check_interval_s)

    # -- versions ----------------------------------------------------------------------------

    async def put(self, pattern: Pattern, principal: str) -> StoredVersion:
        return await self._run("put", lambda: self._put(pattern, principal))

    async def _put(self, pattern: Pattern, principal: str) -> StoredVersion:
        keys, pattern_id = self.keys, pattern.id
        digest = pattern.digest()
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(MAX_WATCH_TRIES):
                try:
                    await pipe.watch(keys.meta(pattern_id), keys.versions(pattern_id))
                    meta = _hash(await pipe.hgetall(keys.meta(pattern_id)))
                    latest = int(meta.get("latest") or 0)
                    if latest and meta.get("digest") == digest:
                        text = await pipe.get(keys.document(pattern_id, latest))
                        if text is not None:
                            existing = Pattern.from_json(_str(text))
                            return StoredVersion(self._view(meta, existing), created=False)
                    kept = _ints(await pipe.zrange(keys.versions(pattern_id), 0, -1))
                    now = self.clock()
                    version = latest + 1
                    owner = meta.get("owner") or principal
                    stored = stamp(pattern, version=version, owner=owner, principal=principal, now=now)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(keys.document(pattern_id, version), stored.to_json())
                    pipe.zadd(keys.versions(pattern_id), {str(version): version})
                    pipe.hset(
                        keys.meta(pattern_id),
                        mapping={
                            "latest": version,
                            "digest": digest,
                            "owner": owner,
                            "name": stored.name,
                            "kind": stored.kind.value,
                            "created_at": meta.get("created_at") or iso(now) or "",
                            "updated_at": iso(now) or "",
                            "deprecated": "0",
                        },
                    )
                    pipe.sadd(keys.index, pattern_id)
                    for old in to_prune([*kept, version], self.versions_retained):
                        pipe.zrem(keys.versions(pattern_id), str(old))
                        pipe.delete(keys.document(pattern_id, old), keys.version_stats(pattern_id, old))
                    await pipe.execute()
                    return StoredVersion(stored, created=True)
                except WatchError:
                    continue
        raise ConcurrentModification(
            f"pattern {pattern_id!r} kept changing while it was stored; try again", pattern_id=pattern_id
        )

    @staticmethod
    def _view(meta: dict[str, str], pattern: Pattern) -> Pattern:
        return pattern.model_copy(update={"deprecated": True}) if meta.get("deprecated") == "1" else pattern

    async def get(self, pattern_id: str, version: int | None = None) -> Pattern:
        return await self._run("get", lambda: self._get(pattern_id, version))

    async def _get(self, pattern_id: str, version: int | None) -> Pattern:
        keys = self.keys
        meta = _hash(await self.redis.hgetall(keys.meta(pattern_id)))
        if not meta:
            raise not_found(pattern_id)
        wanted = int(meta["latest"]) if version is None else version
        text = await self.redis.get(keys.document(pattern_id, wanted))
        if text is None:
            kept = _ints(await self.redis.zrange(keys.versions(pattern_id), 0, -1))
            raise not_found(pattern_id, wanted, kept)
        return self._view(meta, Pattern.from_json(_str(text)))

    async def versions(self, pattern_id: str) -> builtins.list[VersionInfo]:
        return await self._run("versions", lambda: self._versions(pattern_id))

    async def _versions(self, pattern_id: str) -> builtins.list[VersionInfo]:
        kept = _ints(await self.redis.zrange(self.keys.versions(pattern_id), 0, -1))
        if not kept:
            raise not_found(pattern_id)
        texts = await self.redis.mget([self.keys.document(pattern_id, v) for v in kept])
        infos = []
        for version, text in zip(kept, texts, strict=True):
            if text is not None:
                pattern = Pattern.from_json(_str(text))
                infos.append(
                    VersionInfo(
                        version, pattern.metadata.created_at, pattern.metadata.created_by, pattern.digest()
                    )
                )
        return infos

    async def list(self) -> builtins.list[PatternSummary]:
        return await self._run("list", self._list)

    async def _list(self) -> builtins.list[PatternSummary]:
        ids = sorted(_str(i) for i in await self.redis.smembers(self.keys.index))
        async with self.redis.pipeline(transaction=False) as pipe:
            for pattern_id in ids:
                pipe.hgetall(self.keys.meta(pattern_id))
            metas = [_hash(m) for m in await pipe.execute()]
        return [
            PatternSummary(
                id=pattern_id,
                name=meta["name"],
                kind=PatternKind(meta["kind"]),
                latest_version=int(meta["latest"]),
                owner=meta.get("owner") or None,
                deprecated=meta.get("deprecated") == "1",
                created_at=parse_time(meta.get("created_at")),
                updated_at=parse_time(meta.get("updated_at")),
            )
            for pattern_id, meta in zip(ids, metas, strict=True)
            if meta
        ]

    async def deprecate(self, pattern_id: str) -> Pattern:
        async def run() -> int:
            now = iso(self.clock()) or ""
            return int(await self._deprecate(keys=[self.keys.meta(pattern_id)], args=[now]))

        latest = await self._run("deprecate", run)
        if not latest:
            raise not_found(pattern_id)
        return await self.get(pattern_id, latest)

    async def delete(self, pattern_id: str) -> int:
        return await self._run("delete", lambda: self._delete(pattern_id))

    async def _delete(self, pattern_id: str) -> int:
        keys = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(MAX_WATCH_TRIES):
                try:
                    await pipe.watch(keys.meta(pattern_id), keys.versions(pattern_id))
                    if not await pipe.exists(keys.meta(pattern_id)):
                        raise not_found(pattern_id)
                    kept = _ints(await pipe.zrange(keys.versions(pattern_id), 0, -1))
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.delete(*keys.all_of(pattern_id, kept))
                    pipe.srem(keys.index, pattern_id)
                    await pipe.execute()
                    return len(kept)
                except WatchError:
                    continue
        raise ConcurrentModification(
            f"pattern {pattern_id!r} kept changing while it was deleted; try again", pattern_id=pattern_id
        )

    # -- statistics ----------------------------------------------------------------------------

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
        record = ExecutionRecord(
            pattern_id, version, status, duration_ms, error_code, error_message, execution_id
        )
        script_keys, args = self._record_call(record)

        async def run() -> bool:
            return bool(await self._record(keys=script_keys, args=args))

        return await self._run("record_execution", run)

    async def record_executions(self, records: Sequence[ExecutionRecord]) -> builtins.list[bool]:
        if not records:
            return []
        calls = [self._record_call(r) for r in records]

        async def run() -> builtins.list[bool]:
            # one round trip; each script call stays atomic (a pipeline, not a transaction). By
            # its hash: a registered script in a pipeline costs a SCRIPT EXISTS round trip per
            # pipeline (redis-py's load_scripts), so the script is loaded only when Redis says
            # it does not know it (a restart, SCRIPT FLUSH); no call ran then, so none runs twice.
            try:
                return await pipeline()
            except NoScriptError:
                await self.redis.script_load(RECORD_EXECUTION_LUA)
                return await pipeline()

        async def pipeline() -> builtins.list[bool]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for script_keys, args in calls:
                    pipe.evalsha(self._record.sha, len(script_keys), *script_keys, *args)
                return [bool(done) for done in await pipe.execute()]

        return await self._run("record_execution", run)

    def _record_call(self, r: ExecutionRecord) -> tuple[builtins.list[str], builtins.list[Any]]:
        keys = self.keys
        script_keys = [
            keys.meta(r.pattern_id),
            keys.stats(r.pattern_id),
            keys.version_stats(r.pattern_id, r.version),
            keys.document(r.pattern_id, r.version),
            keys.execution(r.execution_id or ""),
        ]
        args = [
            normalize_status(r.status).value,
            duration_us(r.duration_ms),
            r.error_code or "",
            clip_message(r.error_message) or "",
            iso(self.clock()) or "",
            "1" if r.execution_id is not None else "0",
            self.execution_dedupe_ttl_s,
        ]
        return script_keys, args

    async def stats(self, pattern_id: str) -> PatternStats:
        return await self._run("stats", lambda: self._stats(pattern_id))

    async def _stats(self, pattern_id: str) -> PatternStats:
        keys = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.exists(keys.meta(pattern_id))
            pipe.hgetall(keys.stats(pattern_id))
            pipe.zrange(keys.versions(pattern_id), 0, -1)
            exists, total, kept = await pipe.execute()
        if not exists:
            raise not_found(pattern_id)
        versions = _ints(kept)
        async with self.redis.pipeline(transaction=False) as pipe:
            for version in versions:
                pipe.hgetall(keys.version_stats(pattern_id, version))
            by_version = await pipe.execute()
        return PatternStats(
            pattern_id,
            ExecutionStats.from_hash(_hash(total)),
            {v: ExecutionStats.from_hash(_hash(s)) for v, s in zip(versions, by_version, strict=True)},
        )
