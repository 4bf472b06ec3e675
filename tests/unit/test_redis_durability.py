"""The verdict on Redis' persistence settings (`assess_durability`, pure) and its gauge: what the
worker checks at start so that it says so loudly when Redis could lose an acknowledged write."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from nexus_streams.metrics import Metrics
from nexus_streams.store.redis import PERSISTENCE_SETTINGS, Durability, assess_durability

#: what CONFIG GET answers for the local stack's Redis (scripts/redis/redis.conf)
STACK = {
    "appendonly": "yes",
    "appendfsync": "always",
    "no-appendfsync-on-rewrite": "no",
    "maxmemory": "0",
    "maxmemory-policy": "noeviction",
}


@pytest.mark.parametrize(
    ("settings", "verdict"),
    [
        # CONFIG GET answered
        (STACK, Durability.AOF_ALWAYS),
        ({"appendonly": "yes", "appendfsync": "always"}, Durability.AOF_ALWAYS),
        ({**STACK, "appendonly": "YES", "appendfsync": " Always "}, Durability.AOF_ALWAYS),
        ({**STACK, "appendonly": "no"}, Durability.AOF_OFF),
        ({**STACK, "appendonly": "no", "appendfsync": "no"}, Durability.AOF_OFF),
        ({**STACK, "appendfsync": "everysec"}, Durability.APPENDFSYNC_EVERYSEC),
        ({**STACK, "appendfsync": "no"}, Durability.APPENDFSYNC_NO),
        ({**STACK, "appendfsync": "sometimes"}, Durability.APPENDFSYNC_UNKNOWN),
        ({"appendonly": "yes"}, Durability.APPENDFSYNC_UNKNOWN),
        ({**STACK, "no-appendfsync-on-rewrite": "yes"}, Durability.FSYNC_SKIPPED_ON_REWRITE),
        ({**STACK, "maxmemory": "1073741824", "maxmemory-policy": "allkeys-lru"}, Durability.EVICTION),
        ({**STACK, "maxmemory": "1073741824", "maxmemory-policy": "allkeys-random"}, Durability.EVICTION),
        # no limit: nothing is evicted whatever the policy
        ({**STACK, "maxmemory": "0", "maxmemory-policy": "allkeys-lfu"}, Durability.AOF_ALWAYS),
        # volatile-*: only keys with a TTL (execution markers), never pattern versions or statistics
        ({**STACK, "maxmemory": "1073741824", "maxmemory-policy": "volatile-lru"}, Durability.AOF_ALWAYS),
        ({**STACK, "maxmemory": "1073741824"}, Durability.AOF_ALWAYS),
        # the first of several problems is the reason
        (
            {**STACK, "appendfsync": "everysec", "maxmemory": "1", "maxmemory-policy": "allkeys-lru"},
            Durability.APPENDFSYNC_EVERYSEC,
        ),
        # CONFIG refused: INFO persistence tells whether AOF is on, not how often it is fsynced
        ({"aof_enabled": "0"}, Durability.AOF_OFF),
        ({"aof_enabled": "1"}, Durability.APPENDFSYNC_UNKNOWN),
        # CONFIG's answer wins over INFO's
        ({"appendonly": "no", "aof_enabled": "1"}, Durability.AOF_OFF),
        # neither answered
        ({}, Durability.UNKNOWN),
        ({"aof_enabled": "maybe"}, Durability.UNKNOWN),
        ({"appendfsync": "always"}, Durability.UNKNOWN),
    ],
)
def test_assess_durability__verdict_of_the_settings(settings: dict[str, str], verdict: Durability) -> None:
    assert assess_durability(settings) is verdict


def test_assess_durability__reads_only_what_the_store_asks_for() -> None:
    assert set(STACK) == set(PERSISTENCE_SETTINGS)


@pytest.mark.parametrize("verdict", list(Durability))
def test_durability__only_aof_always_is_durable_and_every_verdict_says_what_it_loses(
    verdict: Durability,
) -> None:
    assert verdict.durable is (verdict is Durability.AOF_ALWAYS)
    assert verdict.loses
    assert (verdict.loses == "nothing") is verdict.durable


def durable_series(metrics: Metrics) -> dict[str, float]:
    return {
        s.labels["reason"]: s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "nexus_redis_durable"
    }


def test_observe_redis_durability__one_series_with_the_latest_verdict() -> None:
    metrics = Metrics(CollectorRegistry())
    assert durable_series(metrics) == {}  # nothing known before Redis first answered
    metrics.observe_redis_durability(Durability.AOF_ALWAYS)
    assert durable_series(metrics) == {"aof_always": 1.0}
    metrics.observe_redis_durability(Durability.AOF_OFF)
    assert durable_series(metrics) == {"aof_off": 0.0}
    metrics.observe_redis_durability(Durability.AOF_OFF)
    metrics.observe_redis_durability(Durability.UNKNOWN)
    assert durable_series(metrics) == {"unknown": 0.0}
