"""The pattern store's behaviour, as one suite that runs against every implementation: the
in-memory store (tests/unit/test_pattern_store_memory.py) and the real Redis
(tests/integration/test_pattern_store_redis.py, parametrized over both, side by side).

A test module subclasses `PatternStoreBehaviour` and provides a `make_store` fixture:
`make_store(versions_retained=20) -> PatternStore`, using the `clock` fixture below.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nexus_streams.domain.errors import ErrorCode, NotFound
from nexus_streams.domain.patterns import Pattern, PatternKind
from nexus_streams.domain.validation import validate_pattern
from nexus_streams.patterns import SYSTEM_PRINCIPAL, register_system_patterns, system_patterns
from nexus_streams.store.base import ExecutionRecord, ExecutionStats, ExecutionStatus, PatternStore

StoreFactory = Callable[..., PatternStore]
START = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 1.0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def make_pattern(pattern_id: str = "p", depth: int = 3, **fields: Any) -> Pattern:
    return validate_pattern(
        {
            "id": pattern_id,
            "name": fields.pop("name", "P"),
            "steps": [{"type": "graph", "action": "find_path", "parameters": {"max_depth": depth}}],
            **fields,
        }
    )


class PatternStoreBehaviour:
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def store(self, make_store: StoreFactory) -> PatternStore:
        return make_store()

    # -- put: versions, identity, ownership ------------------------------------------------------

    async def test_put__new_id_is_version_1_owned_by_who_stored_it(
        self, store: PatternStore, clock: FakeClock
    ) -> None:
        stored = await store.put(make_pattern(), "alice")
        assert stored.created
        assert (stored.pattern_id, stored.version) == ("p", 1)
        metadata = stored.pattern.metadata
        assert (metadata.owner, metadata.created_by, metadata.created_at) == ("alice", "alice", START)
        assert not stored.pattern.deprecated
        assert await store.get("p") == stored.pattern

    async def test_put__identical_document_makes_no_new_version(
        self, store: PatternStore, clock: FakeClock
    ) -> None:
        first = await store.put(make_pattern(), "alice")
        clock.advance()
        again = await store.put(make_pattern(), "bob")
        assert not again.created
        assert again.pattern == first.pattern
        assert [v.version for v in await store.versions("p")] == [1]

    async def test_put__changed_document_is_version_n_plus_1(
        self, store: PatternStore, clock: FakeClock
    ) -> None:
        await store.put(make_pattern(depth=3), "alice")
        later = clock.advance(60)
        second = await store.put(make_pattern(depth=4), "bob")
        assert second.created
        assert second.version == 2
        metadata = second.pattern.metadata
        assert (metadata.owner, metadata.created_by, metadata.created_at) == ("alice", "bob", later)
        assert (await store.get("p", 1)).steps[0].parameters == {"max_depth": 3}
        assert (await store.get("p")).steps[0].parameters == {"max_depth": 4}

    async def test_put__back_to_an_older_definition_is_a_new_version(self, store: PatternStore) -> None:
        for depth in (3, 4, 3):
            await store.put(make_pattern(depth=depth), "alice")
        assert (await store.get("p")).version == 3
        assert (await store.get("p", 3)).digest() == (await store.get("p", 1)).digest()

    async def test_put__concurrent_stores_get_distinct_versions(self, store: PatternStore) -> None:
        results = await asyncio.gather(*(store.put(make_pattern(depth=d), "alice") for d in range(1, 9)))
        assert sorted(r.version for r in results) == list(range(1, 9))
        assert [v.version for v in await store.versions("p")] == list(range(1, 9))

    # -- get, versions, list -------------------------------------------------------------------

    async def test_get__unknown_pattern_or_version(self, store: PatternStore) -> None:
        with pytest.raises(NotFound, match="pattern 'ghost' not found") as info:
            await store.get("ghost")
        assert info.value.code is ErrorCode.NOT_FOUND
        await store.put(make_pattern(), "alice")
        with pytest.raises(NotFound, match=r"pattern 'p' has no version 2 \(latest: 1\)"):
            await store.get("p", 2)

    async def test_versions__with_who_and_when(self, store: PatternStore, clock: FakeClock) -> None:
        first = await store.put(make_pattern(depth=3), "alice")
        clock.advance(5)
        second = await store.put(make_pattern(depth=4), "bob")
        infos = await store.versions("p")
        assert [(i.version, i.created_by, i.created_at, i.digest) for i in infos] == [
            (1, "alice", START, first.pattern.digest()),
            (2, "bob", START + timedelta(seconds=5), second.pattern.digest()),
        ]
        assert infos[0].to_dict()["created_at"] == "2026-03-01T12:00:00.123456Z"
        with pytest.raises(NotFound):
            await store.versions("ghost")

    async def test_list__summaries_by_id(self, store: PatternStore, clock: FakeClock) -> None:
        assert await store.list() == []
        await store.put(make_pattern("b", name="B"), "bob")
        await store.put(make_pattern("a", name="A"), "alice")
        clock.advance(10)
        await store.put(make_pattern("a", depth=5, name="A2"), "root")
        await store.deprecate("b")
        summaries = await store.list()
        assert [(s.id, s.name, s.kind, s.latest_version, s.owner, s.deprecated) for s in summaries] == [
            ("a", "A2", PatternKind.USER, 2, "alice", False),
            ("b", "B", PatternKind.USER, 1, "bob", True),
        ]
        assert (summaries[0].created_at, summaries[0].updated_at) == (START, START + timedelta(seconds=10))
        assert summaries[0].to_dict()["kind"] == "user"

    # -- deprecate and delete ------------------------------------------------------------------

    async def test_deprecate__every_version_reads_deprecated(self, store: PatternStore) -> None:
        await store.put(make_pattern(depth=3), "alice")
        await store.put(make_pattern(depth=4), "alice")
        deprecated = await store.deprecate("p")
        assert (deprecated.version, deprecated.deprecated) == (2, True)
        assert (await store.get("p")).deprecated
        assert (await store.get("p", 1)).deprecated
        again = await store.put(make_pattern(depth=4), "alice")  # identical: stays deprecated
        assert (again.created, again.pattern.deprecated) == (False, True)

    async def test_deprecate__a_new_version_clears_it(self, store: PatternStore) -> None:
        await store.put(make_pattern(depth=3), "alice")
        await store.deprecate("p")
        stored = await store.put(make_pattern(depth=4), "alice")
        assert not stored.pattern.deprecated
        assert not (await store.get("p", 1)).deprecated

    async def test_deprecate__unknown(self, store: PatternStore) -> None:
        with pytest.raises(NotFound):
            await store.deprecate("ghost")

    async def test_delete__removes_versions_and_statistics(
        self, store: PatternStore, clock: FakeClock
    ) -> None:
        await store.put(make_pattern(depth=3), "alice")
        await store.put(make_pattern(depth=4), "alice")
        await store.record_execution("p", 2, "ok", 5.0)
        assert await store.delete("p") == 2
        for read in (store.get("p"), store.get("p", 1), store.versions("p"), store.stats("p")):
            with pytest.raises(NotFound):
                await read
        assert await store.list() == []
        with pytest.raises(NotFound):
            await store.delete("p")
        assert not await store.record_execution("p", 2, "ok", 5.0)
        clock.advance()
        fresh = await store.put(make_pattern(depth=9), "bob")  # a new life: version 1, a new owner
        assert (fresh.version, fresh.pattern.metadata.owner) == (1, "bob")
        assert (await store.stats("p")).total == ExecutionStats()

    # -- retention -------------------------------------------------------------------------------

    async def test_retention__keeps_the_newest_versions(self, make_store: StoreFactory) -> None:
        store = make_store(versions_retained=2)
        for depth in range(1, 5):
            stored = await store.put(make_pattern(depth=depth), "alice")
            await store.record_execution("p", stored.version, "ok", 1.0)
        assert [v.version for v in await store.versions("p")] == [3, 4]
        with pytest.raises(NotFound, match=r"version 1 of pattern 'p' is no longer kept \(oldest kept: 3\)"):
            await store.get("p", 1)
        stats = await store.stats("p")
        assert stats.total.executions == 4
        assert sorted(stats.versions) == [3, 4]
        assert (await store.get("p")).version == 4

    async def test_retention__zero_keeps_all(self, make_store: StoreFactory) -> None:
        store = make_store(versions_retained=0)
        for depth in range(1, 6):
            await store.put(make_pattern(depth=depth), "alice")
        assert [v.version for v in await store.versions("p")] == [1, 2, 3, 4, 5]

    # -- statistics ------------------------------------------------------------------------------

    async def test_stats__per_pattern_and_per_version(self, store: PatternStore, clock: FakeClock) -> None:
        await store.put(make_pattern(depth=3), "alice")
        await store.put(make_pattern(depth=4), "alice")
        assert await store.record_execution("p", 1, ExecutionStatus.OK, 10.0)
        clock.advance(1)
        assert await store.record_execution("p", 2, "ok", 2.5)
        failed_at = clock.advance(1)
        assert await store.record_execution(
            "p", 2, "error", 40.25, "path_not_found", error_message="no path from a to b within 3"
        )
        clock.advance(1)
        assert await store.record_execution("p", 2, "ok", 1.0)
        stats = await store.stats("p")
        total = stats.total
        assert (total.executions, total.successes, total.failures) == (4, 3, 1)
        assert (total.duration_count, total.duration_sum_ms, total.duration_max_ms) == (4, 53.75, 40.25)
        assert total.duration_mean_ms == pytest.approx(13.4375)
        assert total.success_rate == 0.75
        assert (total.last_status, total.last_executed_at) == ("ok", START + timedelta(seconds=3))
        assert (total.last_error_code, total.last_error_message, total.last_error_at) == (
            "path_not_found",
            "no path from a to b within 3",
            failed_at,
        )
        v1, v2 = stats.versions[1], stats.versions[2]
        assert (v1.executions, v1.successes, v1.failures, v1.duration_max_ms, v1.last_error_code) == (
            1,
            1,
            0,
            10.0,
            None,
        )
        assert (v2.executions, v2.successes, v2.failures, v2.duration_sum_ms) == (3, 2, 1, 43.75)
        document = stats.to_dict()
        assert document["total"]["success_rate"] == 0.75
        assert document["versions"]["2"]["last_error_code"] == "path_not_found"

    async def test_stats__none_yet(self, store: PatternStore) -> None:
        await store.put(make_pattern(), "alice")
        stats = await store.stats("p")
        assert stats.total == ExecutionStats()
        assert stats.versions == {1: ExecutionStats()}
        assert (stats.total.success_rate, stats.total.duration_mean_ms) == (None, None)

    async def test_record_execution__counts_an_execution_id_once(self, store: PatternStore) -> None:
        await store.put(make_pattern(), "alice")
        assert await store.record_execution("p", 1, "ok", 3.0, execution_id="x-1")
        assert not await store.record_execution("p", 1, "ok", 3.0, execution_id="x-1")
        assert await store.record_execution("p", 1, "ok", 3.0, execution_id="x-2")
        assert (await store.stats("p")).total.executions == 2

    async def test_record_execution__unknown_pattern_or_pruned_version(
        self, make_store: StoreFactory
    ) -> None:
        store = make_store(versions_retained=1)
        assert not await store.record_execution("ghost", 1, "ok", 1.0)
        await store.put(make_pattern(depth=3), "alice")
        await store.put(make_pattern(depth=4), "alice")
        assert await store.record_execution("p", 1, "error", 1.0, "timeout")  # version 1 is gone
        stats = await store.stats("p")
        assert (stats.total.executions, stats.total.last_error_code) == (1, "timeout")
        assert stats.versions == {2: ExecutionStats()}

    async def test_record_execution__concurrent_updates_all_count(self, store: PatternStore) -> None:
        await store.put(make_pattern(), "alice")
        await asyncio.gather(
            *(
                store.record_execution("p", 1, "ok" if i % 3 else "error", float(i), "timeout")
                for i in range(30)
            )
        )
        total = (await store.stats("p")).total
        assert (total.executions, total.successes, total.failures) == (30, 20, 10)
        assert (total.duration_sum_ms, total.duration_max_ms) == (435.0, 29.0)

    async def test_record_execution__sub_millisecond_durations_and_long_messages(
        self, store: PatternStore
    ) -> None:
        await store.put(make_pattern(), "alice")
        await store.record_execution("p", 1, "error", 0.0004, "execution_error", error_message="x" * 5000)
        await store.record_execution("p", 1, "ok", 0.25)
        total = (await store.stats("p")).total
        assert (total.duration_sum_ms, total.duration_max_ms) == (0.25, 0.25)
        assert total.last_error_message == "x" * 1000

    async def test_record_executions__a_batch_counts_as_each_one_would(self, store: PatternStore) -> None:
        await store.put(make_pattern(), "alice")
        assert await store.record_executions([]) == []
        counted = await store.record_executions(
            [
                ExecutionRecord("p", 1, "ok", 2.0, execution_id="x-1"),
                ExecutionRecord("p", 1, "error", 4.0, "timeout", "slow", execution_id="x-2"),
                ExecutionRecord("p", 1, "ok", 9.0, execution_id="x-1"),  # seen: not again
                ExecutionRecord("ghost", 1, "ok", 1.0),  # no such pattern
                ExecutionRecord("p", 1, "ok", 6.0),
            ]
        )
        assert counted == [True, True, False, False, True]
        total = (await store.stats("p")).total
        assert (total.executions, total.successes, total.failures) == (3, 2, 1)
        assert (total.duration_sum_ms, total.duration_max_ms) == (12.0, 6.0)
        assert (total.last_error_code, total.last_error_message) == ("timeout", "slow")

    async def test_record_execution__unknown_status(self, store: PatternStore) -> None:
        await store.put(make_pattern(), "alice")
        with pytest.raises(ValueError):
            await store.record_execution("p", 1, "maybe", 1.0)

    # -- system patterns -----------------------------------------------------------------------

    async def test_system_patterns__registered_once(self, store: PatternStore) -> None:
        first = await register_system_patterns(store)
        assert [(s.pattern_id, s.version, s.created) for s in first] == [
            ("user_onboarding", 1, True),
            ("financial_transaction", 1, True),
        ]
        again = await register_system_patterns(store)
        assert [(s.pattern_id, s.version, s.created) for s in again] == [
            ("user_onboarding", 1, False),
            ("financial_transaction", 1, False),
        ]
        stored = await store.get("user_onboarding")
        assert stored.kind is PatternKind.SYSTEM
        assert (stored.metadata.owner, stored.metadata.created_by) == (SYSTEM_PRINCIPAL, SYSTEM_PRINCIPAL)
        assert stored.digest() == system_patterns()[0].digest()

    async def test_system_patterns__an_admins_change_is_kept(self, store: PatternStore) -> None:
        await register_system_patterns(store)
        changed = system_patterns()[1].model_copy(update={"description": "tuned by ops"})
        await store.put(changed, "root")
        registered = await register_system_patterns(store)
        assert [s.pattern_id for s in registered] == ["user_onboarding"]
        assert (await store.get("financial_transaction")).description == "tuned by ops"

    async def test_system_patterns__a_shipped_change_is_a_new_version(self, store: PatternStore) -> None:
        shipped = system_patterns()[0]
        await store.put(shipped.model_copy(update={"description": "an older release"}), SYSTEM_PRINCIPAL)
        registered = await register_system_patterns(store)
        assert [(s.pattern_id, s.version, s.created) for s in registered][0] == ("user_onboarding", 2, True)
        assert (await store.get("user_onboarding")).description == shipped.description
