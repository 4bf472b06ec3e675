"""Every Redis key of the service, in one place. All start with a configurable prefix
(`NEXUS_REDIS_KEY_PREFIX`, default `nexus:`), so tests and deployments can share a Redis.

Pattern ids cannot contain `:` (see domain.patterns.PATTERN_ID_REGEX), so no two keys collide.

| key | type | holds |
|---|---|---|
| `{prefix}patterns` | set | ids of every stored pattern |
| `{prefix}pattern:{id}` | hash | metadata (fields below) |
| `{prefix}pattern:{id}:versions` | sorted set | kept version numbers (score = version) |
| `{prefix}pattern:{id}:v:{n}` | string | version n as JSON |
| `{prefix}pattern:{id}:stats` | hash | execution statistics of the pattern (all versions) |
| `{prefix}pattern:{id}:v:{n}:stats` | hash | execution statistics of version n |
| `{prefix}execution:{execution_id}` | string, expires | an execution already counted in the statistics |

Metadata hash fields: `latest`, `digest` (of the latest version), `owner`, `name`, `kind`,
`created_at`, `updated_at`, `deprecated` (`1`/`0`), `deprecated_at`.

Statistics hash fields: `executions`, `successes`, `failures`, `duration_count`, `duration_sum_us`,
`duration_max_us`, `last_status`, `last_executed_at`, `last_error_code`, `last_error_message`,
`last_error_at`.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_KEY_PREFIX = "nexus:"
#: how long an execution id is remembered, so a redelivered execution is counted once
EXECUTION_DEDUPE_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class PatternKeys:
    prefix: str = DEFAULT_KEY_PREFIX

    @property
    def index(self) -> str:
        return f"{self.prefix}patterns"

    def meta(self, pattern_id: str) -> str:
        return f"{self.prefix}pattern:{pattern_id}"

    def versions(self, pattern_id: str) -> str:
        return f"{self.prefix}pattern:{pattern_id}:versions"

    def document(self, pattern_id: str, version: int) -> str:
        return f"{self.prefix}pattern:{pattern_id}:v:{version}"

    def stats(self, pattern_id: str) -> str:
        return f"{self.prefix}pattern:{pattern_id}:stats"

    def version_stats(self, pattern_id: str, version: int) -> str:
        return f"{self.prefix}pattern:{pattern_id}:v:{version}:stats"

    def execution(self, execution_id: str) -> str:
        return f"{self.prefix}execution:{execution_id}"

    def all_of(self, pattern_id: str, versions: list[int]) -> list[str]:
        """Every key of one pattern (for delete)."""
        keys = [self.meta(pattern_id), self.versions(pattern_id), self.stats(pattern_id)]
        for version in versions:
            keys += [self.document(pattern_id, version), self.version_stats(pattern_id, version)]
        return keys
