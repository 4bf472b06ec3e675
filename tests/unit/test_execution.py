"""The execution state machine (domain/execution.py) on a Graph with MemoryRecords: the spec's two
system patterns end to end, the transaction (staging, isolation, commit, conflicts), rollback
policies, optional steps, retries with a fake clock and a fixed rand, worker restarts
(to_dict -> JSON -> from_dict -> a fresh engine), timeouts, resource limits, composite patterns,
events and re-entrancy."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from nexus_streams.domain.errors import ErrorCode, InputInvalid, PatternDeprecated
from nexus_streams.domain.execution import (
    Execution,
    ExecutionEngine,
    ExecutionLimits,
    ExecutionOutcome,
    ExecutionStatus,
    Progress,
    Rollback,
)
from nexus_streams.domain.graph import Graph, MemoryRecords, Put, plan_create, plan_delete, plan_update
from nexus_streams.domain.patterns import Pattern
from nexus_streams.domain.relationships import RelationshipKey, RelationType, canonical_key
from nexus_streams.domain.schema import Schema
from nexus_streams.domain.validation import validate_pattern
from nexus_streams.patterns import system_patterns

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)
OWNER, MEMBER, LINKED, PARENT = (
    RelationType.OWNER,
    RelationType.MEMBER,
    RelationType.LINKED,
    RelationType.PARENT,
)
Edge = tuple[str, RelationType, str]

# -- a namespace, a pattern registry and an engine -----------------------------------------------


def to_json(execution: Execution) -> Execution:
    """What a worker restart does to a stored execution: JSON out, JSON in."""
    return Execution.from_dict(json.loads(json.dumps(execution.to_dict())))


def edges(graph: Graph) -> set[RelationshipKey]:
    index = graph.index
    return {key for entity in index.entities() for key in index.edges_of(entity)}


class World:
    """One namespace as the worker holds it (live graph + durable records), the pattern store's
    versions, and the engine; `advance` makes a finished execution's changes durable."""

    def __init__(
        self, *documents: dict[str, Any], limits: ExecutionLimits | None = None, rand: float = 0.5
    ) -> None:
        self.records = MemoryRecords()
        self.graph = Graph("ns", self.records)
        self.versions: dict[tuple[str, int], Pattern] = {}
        self.limits = limits or ExecutionLimits()
        self.rand = rand
        self.engine = self.new_engine()
        #: every stored version, in order; `start()` runs the last one
        self.patterns: list[Pattern] = []
        for document in documents:
            self.store(document)

    def new_engine(self) -> ExecutionEngine:
        return ExecutionEngine(self.resolve, self.limits, lambda: self.rand)

    def resolve(self, pattern_id: str, version: int | None) -> Pattern | None:
        found = [p for (i, v), p in self.versions.items() if i == pattern_id and version in (None, v)]
        return max(found, key=lambda p: p.version) if found else None

    def store(self, document: dict[str, Any]) -> Pattern:
        pattern = validate_pattern(document, resolve_pattern=self.resolve)
        version = 1 + max((v for (i, v) in self.versions if i == pattern.id), default=0)
        stored = pattern.model_copy(update={"version": version})
        self.versions[(stored.id, version)] = stored
        self.patterns.append(stored)
        return stored

    def latest(self, pattern_id: str) -> Pattern:
        found = self.resolve(pattern_id, None)
        assert found is not None
        return found

    def relate(self, *edges: Edge, metadata: dict[str, Any] | None = None) -> None:
        for source, type_, target in edges:
            plan_create(self.graph, source, type_, target, metadata or {}, NOW)
        self.records.apply(self.graph.commit())

    def command(self, plan: Callable[[Graph], object]) -> None:
        """Another command on the namespace (e.g. while an execution waits)."""
        plan(self.graph)
        self.records.apply(self.graph.commit())

    def start(
        self, pattern: Pattern | None = None, input: dict[str, Any] | None = None, **options: Any
    ) -> Execution:
        return self.engine.start(
            pattern or self.patterns[-1],
            input if input is not None else {},
            namespace="ns",
            request_id="req-1",
            principal="alice",
            execution_id="exe-1",
            now=NOW,
            **options,
        )

    def advance(self, execution: Execution, now: datetime = NOW) -> Progress:
        progress = self.engine.advance(execution, self.graph, now)
        if progress.done:
            assert progress.outcome is not None
            self.records.apply(progress.outcome.changes)
        return progress

    def run(self, execution: Execution, restart: bool = False) -> tuple[ExecutionOutcome, list[Progress]]:
        """Advance at each wait_until until done (with `restart`: a new worker at every wait)."""
        now, calls = NOW, []
        for _ in range(100):
            progress = self.advance(execution, now)
            calls.append(progress)
            if progress.done:
                assert progress.outcome is not None
                return progress.outcome, calls
            assert progress.wait_until is not None and progress.wait_until > now
            now = progress.wait_until
            if restart:
                execution = to_json(execution)
                self.engine = self.new_engine()
        raise AssertionError("the execution did not finish")

    def state(self) -> tuple[set[RelationshipKey], dict[RelationshipKey, Any]]:
        return edges(self.graph), {k: r.to_dict() for k, r in self.records.data.items()}


# -- documents ----------------------------------------------------------------------------------


def pattern(*steps: dict[str, Any], id: str = "p", **fields: Any) -> dict[str, Any]:
    return {"id": id, "name": id, "steps": list(steps), **fields}


def create(
    id: str,
    source: str,
    target: str,
    type_: str = "member",
    metadata: dict[str, Any] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    parameters: dict[str, Any] = {"type": type_, "source": source, "target": target}
    if metadata is not None:
        parameters["metadata"] = metadata
    return {"id": id, "type": "relationship", "action": "create", "parameters": parameters, **kw}


def delete(id: str, source: str, target: str, type_: str = "member", **kw: Any) -> dict[str, Any]:
    parameters = {"type": type_, "source": source, "target": target}
    return {"id": id, "type": "relationship", "action": "delete", "parameters": parameters, **kw}


def fail(id: str, times: int | None = None, code: str = "execution_error", **kw: Any) -> dict[str, Any]:
    parameters: dict[str, Any] = {"code": code, "message": f"{id} failed"}
    if times is not None:
        parameters["times"] = times
    return {"id": id, "type": "control", "action": "fail", "parameters": parameters, **kw}


def publish(id: str, event_type: str, data: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    parameters: dict[str, Any] = {"event_type": event_type}
    if data is not None:
        parameters["data"] = data
    return {"id": id, "type": "event", "action": "publish", "parameters": parameters, **kw}


def graph_step(id: str, action: str, **parameters: Any) -> dict[str, Any]:
    depends_on = parameters.pop("depends_on", [])
    return {"id": id, "type": "graph", "action": action, "parameters": parameters, "depends_on": depends_on}


def include(id: str, pattern_id: str, **kw: Any) -> dict[str, Any]:
    parameters = {"pattern_id": pattern_id, **kw.pop("parameters", {})}
    return {"id": id, "type": "pattern", "action": "execute", "parameters": parameters, **kw}


def retry(max_attempts: int = 3, initial_backoff_ms: int = 100, **kw: Any) -> dict[str, Any]:
    return {"max_attempts": max_attempts, "initial_backoff_ms": initial_backoff_ms, **kw}


def statuses(outcome: ExecutionOutcome | Execution) -> dict[str, str]:
    report = outcome.steps if isinstance(outcome, ExecutionOutcome) else outcome.report()
    return {step_id: step["status"] for step_id, step in report.items()}


def types(progress: Progress | ExecutionOutcome) -> list[str]:
    return [e.type for e in progress.events]


def key(source: str, type_: RelationType, target: str) -> RelationshipKey:
    return canonical_key(source, type_, target)


# -- the spec's system patterns ----------------------------------------------------------------


def system_world() -> World:
    world = World()
    for p in system_patterns():
        world.store(p.to_document())
    return world


def test_user_onboarding__creates_owner_with_primary_wallet_then_publishes_user_created() -> None:
    world = system_world()
    execution = world.start(world.latest("user_onboarding"), {"source": "user:1", "target": "wallet:1"})

    progress = world.advance(execution)

    assert progress.done and progress.outcome is not None
    outcome = progress.outcome
    assert outcome.status == "ok" and outcome.error is None
    assert statuses(outcome) == {"create": "completed", "publish": "completed"}
    [change] = outcome.changes
    assert isinstance(change, Put)
    rel = change.relationship
    assert (rel.source, rel.type, rel.target, rel.metadata) == (
        "user:1",
        OWNER,
        "wallet:1",
        {"wallet_type": "primary"},
    )
    assert world.records.data[rel.key] == rel and rel.key in edges(world.graph)
    assert types(progress) == [
        "execution_started",
        "relationship_created",
        "user_created",
        "pattern_executed",
    ]
    user_created = progress.events[2]
    assert user_created.data == {"source": "user:1", "target": "wallet:1"}
    assert outcome.output()["steps"]["publish"]["output"] == {
        "event_type": "user_created",
        "data": {"source": "user:1", "target": "wallet:1"},
    }


def chain(hops: int) -> list[Edge]:
    """user:1 and user:2 joined by `hops` member relationships through hub entities."""
    names = ["user:1", *(f"hub:{i}" for i in range(1, hops)), "user:2"]
    pairs = zip(names, names[1:], strict=False)
    return [(a, MEMBER, b) if i % 2 == 0 else (b, MEMBER, a) for i, (a, b) in enumerate(pairs)]


@pytest.mark.parametrize(
    "connections",
    [
        pytest.param([], id="no-relationships"),
        pytest.param([("user:1", MEMBER, "group:1"), ("user:2", MEMBER, "group:2")], id="separate-groups"),
        pytest.param(chain(4), id="four-hops"),
    ],
)
def test_financial_transaction__unconnected_users_fail_with_path_not_found_and_change_nothing(
    connections: list[Edge],
) -> None:
    world = system_world()
    if connections:
        world.relate(*connections)
    before = world.state()
    execution = world.start(world.latest("financial_transaction"), {"source": "user:1", "target": "user:2"})

    progress = world.advance(execution)

    outcome = progress.outcome
    assert outcome is not None and outcome.status == "error"
    assert outcome.error is not None and outcome.error["code"] == "path_not_found"
    assert outcome.error["details"]["step"] == "find_path"
    assert statuses(outcome) == {"find_path": "failed", "create": "skipped"}
    assert outcome.changes == [] and world.state() == before
    assert types(progress) == ["execution_started", "execution_failed"]


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_financial_transaction__connected_within_three_hops_creates_a_linked_transfer(hops: int) -> None:
    world = system_world()
    world.relate(*chain(hops))
    execution = world.start(world.latest("financial_transaction"), {"source": "user:2", "target": "user:1"})

    outcome, _ = world.run(execution)

    assert outcome.status == "ok", outcome.error
    assert outcome.steps["find_path"]["output"]["length"] == hops
    [change] = outcome.changes
    rel = change.relationship
    assert isinstance(change, Put)
    assert (rel.source, rel.type, rel.target) == ("user:1", LINKED, "user:2")  # linked: sorted ends
    assert rel.metadata == {"transaction_type": "transfer"}
    assert world.records.data[rel.key] == rel
    assert [e.type for e in outcome.events][-2:] == ["relationship_created", "pattern_executed"]


# -- start ---------------------------------------------------------------------------------------


def test_start__invalid_input_is_rejected_before_anything_runs() -> None:
    world = system_world()
    with pytest.raises(InputInvalid) as caught:
        world.start(world.latest("financial_transaction"), {"source": "user:1"})
    assert caught.value.code is ErrorCode.VALIDATION_ERROR
    assert "target" in caught.value.message


def test_start__deprecated_pattern_takes_no_new_execution() -> None:
    world = World(pattern(fail("x")))
    with pytest.raises(PatternDeprecated):
        world.start(world.patterns[0].model_copy(update={"deprecated": True}))


@pytest.mark.parametrize(
    ("timeout_ms", "deadline_ms"),
    [(None, 60_000), (500, 500), (10**9, 3_600_000)],
    ids=["default", "asked", "capped"],
)
def test_start__deadline_from_timeout(timeout_ms: int | None, deadline_ms: int) -> None:
    world = World(pattern(fail("x")))
    execution = world.start(timeout_ms=timeout_ms)
    assert execution.deadline == NOW + deadline_ms * MS
    assert execution.status is ExecutionStatus.PENDING
    assert execution.pattern_version == 1


# -- rollback --------------------------------------------------------------------------------------


def test_rollback_all__discards_every_staged_write_and_event() -> None:
    world = World(
        pattern(
            create("a", "user:1", "group:a"),
            publish("told", "told.a", depends_on=["a"]),
            create("b", "user:1", "group:b", depends_on=["a"]),
            graph_step("path", "find_path", source="user:1", target="group:b", depends_on=["b"]),
            fail("check", depends_on=["path"]),
        )
    )
    before = world.state()

    progress = world.advance(world.start(step_events=True))

    outcome = progress.outcome
    assert outcome is not None and outcome.status == "error" and outcome.rollback is Rollback.ALL
    assert statuses(outcome) == {
        "a": "rolled_back",
        "told": "rolled_back",
        "b": "rolled_back",
        "path": "completed",  # a read has no effect to roll back
        "check": "failed",
    }
    assert outcome.changes == [] and world.state() == before
    assert outcome.error is not None
    assert outcome.error["details"] == {"attempt": 1, "step": "check", "rollback": "all"}
    published = types(progress)
    assert "relationship_created" not in published and "told.a" not in published
    assert published[-2:] == ["step_failed", "execution_failed"]


@pytest.mark.parametrize("where", ["pattern", "step"])
def test_keep_completed__commits_what_completed_and_skips_the_rest(where: str) -> None:
    on_failure = {"on_failure": "keep_completed"}
    world = World(
        pattern(
            create("a", "user:1", "group:a"),
            create("b", "user:1", "group:b"),
            fail("check", depends_on=["a"], **(on_failure if where == "step" else {})),
            create("after_b", "user:1", "group:c", depends_on=["b"]),
            create("after_check", "user:1", "group:d", depends_on=["check"]),
            **(on_failure if where == "pattern" else {}),
        )
    )

    progress = world.advance(world.start())

    outcome = progress.outcome
    assert outcome is not None and outcome.status == "error"
    assert outcome.rollback is Rollback.KEEP_COMPLETED
    assert statuses(outcome) == {
        "a": "completed",
        "b": "completed",
        "check": "failed",
        "after_b": "skipped",  # the execution failed before it ran
        "after_check": "skipped",
    }
    assert {c.relationship.target for c in outcome.changes} == {"group:a", "group:b"}
    assert {k.target for k in world.records.data} == {"group:a", "group:b"}
    assert types(progress) == [
        "execution_started",
        "relationship_created",
        "relationship_created",
        "execution_failed",
    ]
    assert outcome.error is not None and outcome.error["details"]["rollback"] == "keep_completed"


def compensating_pattern(third_compensation: dict[str, Any] | None = None) -> dict[str, Any]:
    compensate = {"on_failure": "compensate"}
    undo_hold = {"type": "relationship", "action": "delete", "parameters": {"type": "member"}}
    return pattern(
        create("reserve", "user:1", "hold:1", compensation=undo_hold, **compensate),
        create("audit", "user:1", "audit:1"),
        publish(
            "notify",
            "reserved",
            {"hold": "hold:1"},
            depends_on=["reserve"],
            compensation={"type": "event", "action": "publish", "parameters": {"event_type": "released"}},
            **compensate,
        ),
        fail(
            "charge",
            depends_on=["notify", "audit"],
            compensation=third_compensation
            or {"type": "event", "action": "publish", "parameters": {"event_type": "never.published"}},
            **compensate,
        ),
    )


def test_compensate__runs_compensations_latest_first_then_commits_the_result() -> None:
    world = World(compensating_pattern())

    progress = world.advance(world.start(input={"source": "user:1", "target": "hold:1"}, step_events=True))

    outcome = progress.outcome
    assert outcome is not None and outcome.status == "error" and outcome.rollback is Rollback.COMPENSATE
    assert statuses(outcome) == {
        "reserve": "compensated",
        "audit": "completed",  # no compensation: its write is kept
        "notify": "compensated",
        "charge": "failed",  # its own writes were never staged: its compensation does not run
    }
    assert outcome.steps["reserve"]["compensation"]["status"] == "completed"
    assert set(world.records.data) == {key("user:1", MEMBER, "audit:1")}  # the hold was created and released
    committed = [(e.type, (e.relationship or {}).get("target")) for e in outcome.events]
    assert committed[-6:] == [
        ("relationship_created", "hold:1"),
        ("relationship_created", "audit:1"),
        ("reserved", None),
        ("released", None),  # notify compensated first: it completed last
        ("relationship_deleted", "hold:1"),
        ("execution_failed", None),
    ]
    compensation_events = [e.data["step"] for e in outcome.events if e.type == "step_completed" and e.data]
    assert compensation_events[-2:] == ["notify#compensation", "reserve#compensation"]


def test_compensate__failing_compensation_rolls_back_everything() -> None:
    document = compensating_pattern()
    document["steps"][0]["compensation"]["parameters"] = {"type": "owner"}  # deletes what does not exist
    world = World(document)
    world.relate(("user:1", MEMBER, "other:1"))
    before = world.state()

    outcome = world.advance(world.start(input={"source": "user:1", "target": "hold:1"})).outcome

    assert outcome is not None and outcome.rollback is Rollback.ALL
    assert outcome.error is not None and outcome.error["code"] == "execution_error"
    assert outcome.error["details"]["compensation_failed"]["code"] == "not_found"
    assert outcome.error["details"]["compensation_failed"]["step"] == "reserve"
    assert outcome.changes == [] and world.state() == before
    assert statuses(outcome) == {
        "reserve": "rolled_back",
        "audit": "rolled_back",
        "notify": "rolled_back",
        "charge": "failed",
    }
    assert outcome.steps["reserve"]["compensation"]["status"] == "failed"
    assert [e.type for e in outcome.events] == ["execution_started", "execution_failed"]


# -- optional steps ----------------------------------------------------------------------------


def test_optional__failure_skips_its_dependants_and_the_execution_succeeds() -> None:
    world = World(
        pattern(
            fail("lookup", optional=True, retry=retry(2, 0)),
            create("use", "user:1", "group:1", depends_on=["lookup"]),
            publish("then", "then.done", depends_on=["use"]),
            create("other", "user:1", "group:2"),
        )
    )

    progress = world.advance(world.start(step_events=True))

    outcome = progress.outcome
    assert outcome is not None and outcome.status == "ok"
    assert statuses(outcome) == {
        "lookup": "failed",
        "use": "skipped",
        "then": "skipped",
        "other": "completed",
    }
    assert outcome.steps["lookup"]["attempts"] == 2
    assert [c.relationship.target for c in outcome.changes] == ["group:2"]
    failed = [e for e in progress.events if e.type == "step_failed"]
    assert [(e.data or {}).get("optional") for e in failed] == [True]


# -- retries -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rand", "policy", "waits_ms"),
    [
        (0.5, retry(4, 100), [100, 200, 400]),
        (0.0, retry(4, 100), [80, 160, 320]),  # jitter 0.2 below
        (0.75, retry(4, 100, jitter=0.5), [125, 250, 500]),
        (0.5, retry(4, 100, multiplier=3.0, max_backoff_ms=500), [100, 300, 500]),  # capped
        (0.5, retry(4, 0), [0, 0, 0]),  # no wait: retried within the same call
    ],
)
def test_retry__backoff_follows_the_policy(rand: float, policy: dict[str, Any], waits_ms: list[int]) -> None:
    world = World(
        pattern(fail("flaky", times=3, retry=policy), create("after", "user:1", "g:1", depends_on=["flaky"]))
    )
    world.rand = rand

    outcome, calls = world.run(world.start())

    assert outcome.status == "ok"
    assert outcome.steps["flaky"] == {
        "status": "completed",
        "attempts": 4,
        "output": {"attempt": 4},
        "error": None,
    }
    waits = [p.wait_until for p in calls if not p.done]
    expected, at = [], NOW
    for wait in waits_ms:
        at += wait * MS
        expected.append(at)
    assert waits == [w for w in expected if w > NOW]
    assert outcome.duration_ms == sum(waits_ms)


@pytest.mark.parametrize(
    ("code", "policy", "attempts"),
    [
        ("validation_error", retry(5, 10), 1),  # not retryable by default
        ("not_found", retry(5, 10), 5),
        ("not_found", retry(5, 10, non_retryable=["not_found"]), 1),
        ("not_found", {}, 1),  # the default policy: one attempt
    ],
)
def test_retry__only_retryable_codes_are_retried(code: str, policy: dict[str, Any], attempts: int) -> None:
    world = World(pattern(fail("x", code=code, retry=policy)))

    outcome, _ = world.run(world.start())

    assert outcome.status == "error" and outcome.error is not None and outcome.error["code"] == code
    assert outcome.steps["x"]["attempts"] == attempts


def test_retry__independent_steps_proceed_while_one_waits() -> None:
    world = World(
        pattern(
            fail("flaky", times=1, retry=retry(2, 100)),
            create("independent", "user:1", "group:1"),
            create("dependant", "user:1", "group:2", depends_on=["flaky"]),
        )
    )
    execution = world.start(step_events=True)

    waiting = world.advance(execution)

    assert not waiting.done and waiting.wait_until == NOW + 100 * MS
    assert statuses(execution) == {
        "flaky": "waiting_retry",
        "independent": "completed",
        "dependant": "pending",
    }
    assert execution.steps["flaky"].error is not None
    assert types(waiting) == ["execution_started", "step_retried", "step_completed"]
    retried = waiting.events[1]
    assert retried.data is not None and retried.data["next_attempt_at"] == "2024-05-01T12:00:00.100000Z"
    assert retried.error is not None and retried.error["code"] == "execution_error"

    early = world.advance(execution, NOW + 50 * MS)  # not due yet: nothing runs
    assert not early.done and early.wait_until == NOW + 100 * MS and early.events == ()

    done = world.advance(execution, NOW + 100 * MS)
    assert done.outcome is not None and done.outcome.status == "ok"
    assert {c.relationship.target for c in done.outcome.changes} == {"group:1", "group:2"}
    assert types(done)[0] == "step_completed"  # execution_started only once


def test_retry__resumes_after_a_worker_restart() -> None:
    document = pattern(
        create("a", "user:1", "group:1"),
        fail("flaky", times=2, retry=retry(3, 100), depends_on=["a"]),
        graph_step("path", "find_path", source="user:1", target="group:1", depends_on=["flaky"]),
        publish("done", "flow.done", depends_on=["path"]),
    )
    plain, restarted = World(document), World(document)

    expected, _ = plain.run(plain.start())
    outcome, calls = restarted.run(restarted.start(), restart=True)

    assert len(calls) == 3
    assert outcome.to_dict() == expected.to_dict()
    assert outcome.status == "ok" and outcome.steps["path"]["output"]["length"] == 1
    assert restarted.state() == plain.state()


def test_resume__pinned_version_gone_from_the_store_fails_with_not_found() -> None:
    world = World(pattern(fail("flaky", times=1, retry=retry(2, 100))))
    execution = world.start()
    world.advance(execution)
    world.versions.clear()  # the pinned version is gone from the store
    world.engine = world.new_engine()

    outcome = world.advance(to_json(execution), NOW + 100 * MS).outcome

    assert outcome is not None and outcome.error is not None and outcome.error["code"] == "not_found"
    assert statuses(outcome) == {"flaky": "skipped"}


# -- the transaction: isolation, own writes, conflicts -------------------------------------------


def test_isolation__while_waiting_the_graph_shows_none_of_the_staged_writes() -> None:
    world = World(
        pattern(
            create("a", "user:1", "group:1"),
            {
                "id": "b",
                "type": "relationship",
                "action": "delete_entity",
                "parameters": {"entity": "user:9"},
            },
            fail("flaky", times=1, retry=retry(2, 100), depends_on=["a", "b"]),
        )
    )
    world.relate(("user:9", MEMBER, "group:9"), ("user:9", OWNER, "wallet:9"))
    before = world.state()
    execution = world.start()

    waiting = world.advance(execution)

    assert not waiting.done and world.state() == before
    assert len(execution.staged_writes) == 3  # staged: one create and two deletes
    assert world.graph.get(key("user:1", MEMBER, "group:1")) is None
    assert world.graph.get(key("user:9", OWNER, "wallet:9")) is not None
    assert world.graph.savepoint() == 0

    outcome = world.advance(to_json(execution), NOW + 100 * MS).outcome
    assert outcome is not None and outcome.status == "ok"
    assert set(world.records.data) == {key("user:1", MEMBER, "group:1")}
    assert edges(world.graph) == set(world.records.data)


def test_isolation__steps_see_the_writes_their_execution_staged() -> None:
    world = World(
        pattern(
            create("join_1", "user:1", "group:1"),
            create("join_2", "user:2", "group:1"),
            graph_step(
                "path", "find_path", source="user:1", target="user:2", depends_on=["join_1", "join_2"]
            ),
            graph_step(
                "read", "get", type="member", source="user:2", target="group:1", depends_on=["join_2"]
            ),
            {
                "id": "update",
                "type": "relationship",
                "action": "update",
                "parameters": {
                    "type": "member",
                    "source": "user:2",
                    "target": "group:1",
                    "metadata": {"n": 2},
                },
                "depends_on": ["read"],
            },
            graph_step(
                "reread", "get", type="member", source="user:2", target="group:1", depends_on=["update"]
            ),
        )
    )

    outcome, _ = world.run(world.start())

    assert outcome.status == "ok", outcome.error
    assert outcome.steps["path"]["output"]["path"] == ["user:1", "group:1", "user:2"]
    assert outcome.steps["read"]["output"]["relationship"]["version"] == 1
    assert outcome.steps["reread"]["output"]["relationship"]["metadata"] == {"n": 2}
    stored = world.records.data[key("user:2", MEMBER, "group:1")]
    assert (stored.version, stored.metadata) == (2, {"n": 2})
    assert [e.type for e in outcome.events if e.type.startswith("relationship_")] == [
        "relationship_created",
        "relationship_created",
        "relationship_updated",
    ]


def update_step(id: str, source: str, target: str, metadata: dict[str, Any], **kw: Any) -> dict[str, Any]:
    parameters = {"type": "member", "source": source, "target": target, "metadata": metadata}
    return {"id": id, "type": "relationship", "action": "update", "parameters": parameters, **kw}


def then_wait(first: dict[str, Any]) -> dict[str, Any]:
    return pattern(first, fail("flaky", times=1, retry=retry(2, 100), depends_on=[first["id"]]))


@pytest.mark.parametrize(
    ("first", "meanwhile", "conflict"),
    [
        pytest.param(
            create("x", "user:1", "group:1"),
            lambda g: plan_create(g, "user:1", MEMBER, "group:1", {}, NOW),
            ("user:1", "group:1", None, 1),
            id="created-meanwhile",
        ),
        pytest.param(
            update_step("x", "user:1", "group:0", {"by": "execution"}),
            lambda g: plan_update(g, "user:1", MEMBER, "group:0", {"by": "other"}, NOW),
            ("user:1", "group:0", 1, 2),
            id="updated-meanwhile",
        ),
        pytest.param(
            graph_step("x", "find_path", source="user:1", target="user:0"),
            lambda g: plan_delete(g, "user:0", MEMBER, "group:0"),
            ("user:0", "group:0", 1, None),
            id="read-then-deleted",
        ),
        pytest.param(
            graph_step("x", "neighbors", entity="group:0"),
            lambda g: plan_update(g, "user:1", MEMBER, "group:0", {"new": True}, NOW),
            ("user:1", "group:0", 1, 2),
            id="neighbour-updated",
        ),
        pytest.param(
            create("x", "user:1", "group:1"),
            lambda g: plan_create(g, "user:5", MEMBER, "group:5", {}, NOW),
            None,
            id="unrelated-change",
        ),
    ],
)
def test_conflict__a_change_made_while_waiting(
    first: dict[str, Any], meanwhile: Callable[[Graph], object], conflict: tuple[Any, ...] | None
) -> None:
    world = World(then_wait(first))
    world.relate(("user:1", MEMBER, "group:0"), ("user:0", MEMBER, "group:0"))
    execution = world.start()
    assert not world.advance(execution).done
    world.command(meanwhile)
    before = world.state()

    outcome = world.advance(execution, NOW + 100 * MS).outcome

    assert outcome is not None
    if conflict is None:
        assert outcome.status == "ok"
        return
    source, target, expected, actual = conflict
    assert outcome.status == "error" and outcome.error is not None
    assert outcome.error["code"] == "concurrent_modification"
    details = outcome.error["details"]
    assert details["relationship"] == {"source": source, "type": "member", "target": target}
    assert (details["expected_version"], details["actual_version"]) == (expected, actual)
    assert details["step"] == "x" and details["rollback"] == "all"
    assert outcome.changes == [] and world.state() == before
    assert outcome.steps["flaky"]["status"] == "completed"


@pytest.mark.parametrize("reason", ["cycle", "schema"])
def test_conflict__a_write_made_invalid_meanwhile(reason: str) -> None:
    world = World(then_wait(create("x", "org:a", "org:b", type_="parent")))
    execution = world.start()
    assert not world.advance(execution).done
    if reason == "cycle":
        world.relate(("org:b", PARENT, "org:c"), ("org:c", PARENT, "org:a"))
    else:
        world.graph.schema = Schema.parse({"parent": ["team -> org"]})
    before = world.state()

    outcome = world.advance(execution, NOW + 100 * MS).outcome

    assert outcome is not None and outcome.error is not None
    assert outcome.error["code"] == "concurrent_modification"
    assert outcome.error["details"]["reason"] == reason
    assert outcome.error["details"]["step"] == "x"
    assert outcome.changes == [] and world.state() == before


def test_conflict__abandons_a_partial_commit() -> None:
    world = World(
        pattern(
            create("x", "user:1", "group:1"),
            fail("flaky", times=1, retry=retry(2, 100), depends_on=["x"]),
            fail("broken", depends_on=["flaky"]),
            on_failure="keep_completed",
        )
    )
    execution = world.start()
    world.advance(execution)
    world.command(lambda g: plan_create(g, "user:1", MEMBER, "group:1", {"other": 1}, NOW))
    before = world.state()

    outcome = world.advance(execution, NOW + 100 * MS).outcome

    assert outcome is not None and outcome.error is not None
    assert outcome.error["code"] == "execution_error"  # still the failing step's error
    assert outcome.error["details"]["step"] == "broken"
    assert outcome.error["details"]["conflict"]["code"] == "concurrent_modification"
    assert outcome.rollback is Rollback.ALL and outcome.error["details"]["rollback"] == "all"
    assert outcome.changes == [] and world.state() == before
    assert statuses(outcome) == {"x": "rolled_back", "flaky": "completed", "broken": "failed"}


# -- timeouts ----------------------------------------------------------------------------------


def test_step_timeout__a_retry_past_the_step_timeout_fails_it_with_timeout() -> None:
    world = World(pattern(fail("slow", code="not_found", retry=retry(5, 100), timeout_ms=250)))

    outcome, calls = world.run(world.start())

    # attempts at +0 and +100; the next would start at +300, after the step's 250 ms
    assert [p.wait_until for p in calls] == [NOW + 100 * MS, None]
    assert outcome.error is not None and outcome.error["code"] == "timeout"
    assert outcome.error["details"]["last_error"]["code"] == "not_found"
    assert outcome.steps["slow"]["attempts"] == 2


def test_step_timeout__an_optional_step_out_of_time_does_not_fail_the_execution() -> None:
    world = World(
        pattern(
            fail("slow", retry=retry(5, 100), timeout_ms=150, optional=True),
            create("other", "user:1", "group:1"),
        )
    )

    outcome, _ = world.run(world.start())

    assert outcome.status == "ok" and statuses(outcome) == {"slow": "failed", "other": "completed"}
    assert outcome.steps["slow"]["error"]["code"] == "timeout"


@pytest.mark.parametrize("optional", [False, True])
def test_execution_timeout__a_retry_past_the_deadline_fails_the_execution_at_once(optional: bool) -> None:
    world = World(
        pattern(create("a", "user:1", "group:1"), fail("slow", retry=retry(5, 100), optional=optional))
    )

    outcome, calls = world.run(world.start(timeout_ms=250))

    assert len(calls) == 2  # +0, +100; the next retry (+300) is past the deadline (+250)
    assert outcome.error is not None and outcome.error["code"] == "timeout"
    assert outcome.error["details"]["step"] == "slow"
    assert outcome.error["details"]["last_error"]["code"] == "execution_error"
    assert statuses(outcome) == {"a": "rolled_back", "slow": "failed"}


def test_execution_timeout__a_late_call_fails_the_waiting_step_and_keeps_per_policy() -> None:
    world = World(
        pattern(
            create("a", "user:1", "group:1"),
            fail("slow", times=1, retry=retry(3, 100)),
            create("b", "user:1", "group:2", depends_on=["slow"]),
            on_failure="keep_completed",
        )
    )
    execution = world.start(timeout_ms=1000)
    world.advance(execution)

    progress = world.advance(execution, NOW + 5 * timedelta(seconds=1))  # the worker was away

    outcome = progress.outcome
    assert outcome is not None and outcome.error is not None and outcome.error["code"] == "timeout"
    assert outcome.error["details"]["step"] == "slow"
    assert statuses(outcome) == {"a": "completed", "slow": "failed", "b": "skipped"}
    assert set(world.records.data) == {key("user:1", MEMBER, "group:1")}
    assert outcome.duration_ms == 5000


def test_execution_timeout__before_any_step_ran() -> None:
    world = World(pattern(create("a", "user:1", "group:1")))

    outcome = world.advance(world.start(timeout_ms=10), NOW + 10 * MS).outcome

    assert outcome is not None and outcome.error is not None and outcome.error["code"] == "timeout"
    assert "step" not in outcome.error["details"]
    assert statuses(outcome) == {"a": "skipped"}


# -- resource limits ---------------------------------------------------------------------------


def test_limits__steps_run_counts_every_attempt() -> None:
    world = World(
        pattern(fail("flaky", times=2, retry=retry(3, 0), optional=True), create("a", "user:1", "group:1")),
        limits=ExecutionLimits(max_steps_run=3),
    )

    outcome, _ = world.run(world.start())

    assert outcome.error is not None and outcome.error["code"] == "resource_limit"
    assert outcome.error["details"]["counter"] == "steps_run"
    assert outcome.error["details"]["step"] == "flaky"  # its 3rd attempt; optional does not help
    assert statuses(outcome) == {"flaky": "failed", "a": "rolled_back"}
    assert outcome.steps_run == 3 and outcome.changes == []


@pytest.mark.parametrize(
    ("step", "budget", "ok"),
    [
        (graph_step("walk", "traverse", start="hub:0", max_depth=1), 5, True),
        (graph_step("walk", "traverse", start="hub:0", max_depth=1), 4, False),  # refused by the search
        (graph_step("walk", "neighbors", entity="hub:0"), 4, False),  # counted after
        (graph_step("walk", "find_path", source="user:0", target="user:4"), 3, True),
        (graph_step("walk", "find_path", source="user:0", target="user:4"), 2, False),
    ],
)
def test_limits__vertices_visited(step: dict[str, Any], budget: int, ok: bool) -> None:
    world = World(pattern(step), limits=ExecutionLimits(max_vertices_visited=budget))
    world.relate(*((f"user:{i}", MEMBER, "hub:0") for i in range(5)))

    outcome, _ = world.run(world.start())

    assert (outcome.status == "ok") is ok, outcome.error
    if not ok:
        assert outcome.error is not None and outcome.error["code"] == "resource_limit"
        assert outcome.error["details"]["counter"] == "vertices_visited"


def test_limits__nesting_depth() -> None:
    world = World(
        pattern(create("a", "user:1", "group:1"), id="leaf"), limits=ExecutionLimits(max_nesting_depth=1)
    )
    world.store(pattern(include("inner", "leaf"), id="middle"))
    world.store(pattern(include("outer", "middle", optional=True), id="top"))

    outcome, _ = world.run(world.start())

    assert outcome.error is not None and outcome.error["code"] == "resource_limit"
    assert outcome.error["details"]["counter"] == "nesting_depth"
    assert outcome.error["details"]["step_path"] == "outer/inner"
    assert outcome.steps["outer"]["steps"]["inner"]["status"] == "failed"


# -- composite patterns ------------------------------------------------------------------------


def composite_world(*inner_steps: dict[str, Any], **outer: Any) -> World:
    world = World(pattern(*inner_steps, id="inner"))
    world.store(
        pattern(
            create("first", "user:1", "group:1"),
            include(
                "sub",
                "inner",
                depends_on=["first"],
                parameters={"input": {"user": "user:2"}},
                **outer.pop("sub", {}),
            ),
            create("last", "user:1", "group:3", depends_on=["sub"]),
            id="outer",
            **outer,
        )
    )
    return world


def test_composite__runs_the_pinned_pattern_in_the_same_transaction() -> None:
    world = composite_world(
        graph_step("seen", "get", type="member", source="user:1", target="group:1"),  # staged by `first`
        create("join", "{{input.user}}", "group:2", depends_on=["seen"]),
    )
    world.store(pattern(fail("never"), id="inner"))  # a newer version: the pinned one runs
    execution = world.start(world.latest("outer"), step_events=True)

    outcome, _ = world.run(execution)

    assert outcome.status == "ok", outcome.error
    sub = outcome.steps["sub"]
    assert sub["status"] == "completed" and (sub["pattern_id"], sub["version"]) == ("inner", 1)
    assert {k: v["status"] for k, v in sub["steps"].items()} == {
        "seen": "completed",
        "join": "completed",
    }
    assert sub["output"]["pattern_id"] == "inner" and sub["output"]["version"] == 1
    assert set(sub["output"]["steps"]) == {"seen", "join"}
    assert sub["output"]["steps"]["join"]["relationship"]["source"] == "user:2"
    assert {c.relationship.target for c in outcome.changes} == {"group:1", "group:2", "group:3"}
    completed = [e.data["step"] for e in outcome.events if e.type == "step_completed" and e.data]
    assert completed == ["first", "sub/seen", "sub/join", "sub", "last"]


@pytest.mark.parametrize("optional", [True, False])
def test_composite__a_failure_inside_rolls_back_the_included_part(optional: bool) -> None:
    world = composite_world(
        create("join", "{{input.user}}", "group:2"),
        fail("check", depends_on=["join"]),
        sub={"optional": optional},
        on_failure="keep_completed",
    )

    outcome, _ = world.run(world.start())

    sub = outcome.steps["sub"]
    assert sub["status"] == "failed"
    assert {k: v["status"] for k, v in sub["steps"].items()} == {"join": "rolled_back", "check": "failed"}
    assert sub["error"]["details"]["step_path"] == "check"
    assert key("user:2", MEMBER, "group:2") not in world.records.data
    assert key("user:1", MEMBER, "group:1") in world.records.data  # ok, or kept by keep_completed
    if optional:
        assert outcome.status == "ok" and outcome.steps["last"]["status"] == "skipped"
    else:
        assert outcome.error is not None and outcome.error["code"] == "execution_error"
        assert (outcome.error["details"]["step"], outcome.error["details"]["step_path"]) == (
            "sub",
            "sub/check",
        )


def test_composite__a_retry_inside_waits_blocks_the_including_execution_and_survives_a_restart() -> None:
    world = World(
        pattern(create("join", "user:2", "group:2"), fail("flaky", times=1, retry=retry(2, 100)), id="inner")
    )
    world.store(
        pattern(
            include("sub", "inner"),
            create("independent", "user:1", "group:1"),
            fail("later", times=1, retry=retry(2, 10)),
            id="outer",
        )
    )
    execution = world.start()
    before = world.state()

    waiting = world.advance(execution)

    assert not waiting.done and waiting.wait_until == NOW + 100 * MS
    assert statuses(execution) == {"sub": "running", "independent": "pending", "later": "pending"}
    nested = execution.steps["sub"].nested
    assert nested is not None and statuses(nested) == {"join": "completed", "flaky": "waiting_retry"}
    assert world.state() == before

    execution = to_json(execution)
    world.engine = world.new_engine()
    progress = world.advance(execution, NOW + 100 * MS)
    assert not progress.done and progress.wait_until == NOW + 110 * MS  # `later` retries
    assert statuses(execution) == {"sub": "completed", "independent": "completed", "later": "waiting_retry"}
    final = world.advance(execution, NOW + 110 * MS).outcome
    assert final is not None and final.status == "ok"
    assert set(world.records.data) == {key("user:2", MEMBER, "group:2"), key("user:1", MEMBER, "group:1")}


def test_composite__the_including_steps_timeout_bounds_the_included_pattern() -> None:
    world = World(pattern(fail("flaky", retry=retry(5, 100)), id="inner"))
    world.store(
        pattern(
            include("sub", "inner", timeout_ms=250, optional=True),
            create("a", "user:1", "group:1"),
            id="outer",
        )
    )

    outcome, _ = world.run(world.start())

    assert outcome.status == "ok"
    assert outcome.steps["sub"]["status"] == "failed"
    assert outcome.steps["sub"]["error"]["code"] == "timeout"
    assert outcome.steps["sub"]["steps"]["flaky"]["status"] == "failed"


def test_composite__invalid_input_for_the_included_pattern_fails_the_step() -> None:
    inner = pattern(
        create("join", "{{input.user}}", "group:2"),
        id="inner",
        input_schema={"type": "object", "properties": {"user": {"type": "string"}}, "required": ["user"]},
    )
    world = World(inner)
    world.store(pattern(include("sub", "inner", parameters={"input": {"who": "x"}}), id="outer"))

    outcome, _ = world.run(world.start())

    assert outcome.error is not None and outcome.error["code"] == "validation_error"
    assert outcome.error["details"]["step"] == "sub"


# -- re-entrancy, events, serialization --------------------------------------------------------


@pytest.mark.parametrize("restart", [False, True])
def test_reentrancy__advance_on_a_finished_execution_returns_the_same_progress(restart: bool) -> None:
    world = system_world()
    execution = world.start(world.latest("user_onboarding"), {"source": "user:1", "target": "wallet:1"})
    first = world.advance(execution)
    after = world.state()
    if restart:
        execution = to_json(execution)
        world.engine = world.new_engine()

    again = world.engine.advance(execution, world.graph, NOW + timedelta(hours=1))

    assert again.done and again.outcome is not None and first.outcome is not None
    assert again.outcome.to_dict() == first.outcome.to_dict()
    assert again.events == first.events
    assert world.state() == after and len(world.graph) == 1


@pytest.mark.parametrize("step_events", [False, True])
def test_events__step_events_only_when_asked(step_events: bool) -> None:
    world = World(pattern(fail("flaky", times=1, retry=retry(2, 10)), fail("broken", depends_on=["flaky"])))

    outcome, calls = world.run(world.start(step_events=step_events))

    published = [t for p in calls for t in types(p)]
    step_types = {"step_completed", "step_failed", "step_retried"}
    if step_events:
        assert published == [
            "execution_started",
            "step_retried",
            "step_completed",
            "step_failed",
            "execution_failed",
        ]
    else:
        assert published == ["execution_started", "execution_failed"]
        assert not step_types & set(published)
    failed = outcome.events[-1]
    assert failed.error == outcome.error and failed.data is not None
    assert (failed.data["step"], failed.data["rollback"], failed.data["status"]) == ("broken", "all", "error")


def test_execution__state_is_json_and_round_trips_at_every_stage() -> None:
    world = composite_world(
        create("join", "{{input.user}}", "group:2"), fail("flaky", times=1, retry=retry(2, 100))
    )
    execution = world.start(input={"note": "ünïcode"}, step_events=True)
    snapshots = [execution.to_dict()]
    world.advance(execution)
    snapshots.append(execution.to_dict())
    world.advance(execution, NOW + 100 * MS)
    snapshots.append(execution.to_dict())

    assert execution.status is ExecutionStatus.SUCCEEDED
    for snapshot in snapshots:
        text = json.dumps(snapshot)  # no default: plain JSON
        assert Execution.from_dict(json.loads(text)).to_dict() == snapshot
    waiting = snapshots[1]
    assert waiting["status"] == "waiting" and waiting["staged_writes"] and waiting["read_write_set"]


# -- every step kind ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (
            graph_step("q", "traverse", start="user:1", max_depth=3),
            {
                "start": "user:1",
                "count": 3,
                "entities": [
                    {"id": "group:1", "depth": 1},
                    {"id": "user:2", "depth": 2},
                    {"id": "wallet:2", "depth": 3},
                ],
            },
        ),
        (
            graph_step("q", "neighbors", entity="group:1", types=["member"], direction="in"),
            {"entity": "group:1", "count": 2},
        ),
        (
            graph_step("q", "detect_cycles", entity="org:a"),
            {"scope": "entity", "count": 1, "cycles": [["org:a", "org:b", "org:a"]]},
        ),
        (
            graph_step("q", "resolve_dependencies", entity="user:2"),
            {"entity": "user:2", "order": ["group:1", "wallet:2", "user:2"]},
        ),
        (
            {
                "id": "q",
                "type": "control",
                "action": "assert",
                "parameters": {"value": 3, "condition": "in", "expected": [1, 3]},
            },
            {"value": 3},
        ),
        (
            {
                "id": "q",
                "type": "relationship",
                "action": "delete_entity",
                "parameters": {"entity": "user:2"},
            },
            {"deleted": 2},
        ),
    ],
    ids=["traverse", "neighbors", "detect_cycles", "resolve_dependencies", "assert", "delete_entity"],
)
def test_step_kinds__outputs(step: dict[str, Any], expected: dict[str, Any]) -> None:
    world = World(pattern(step))
    world.relate(("user:1", MEMBER, "group:1"), ("user:2", MEMBER, "group:1"), ("user:2", OWNER, "wallet:2"))
    world.command(lambda g: plan_create(g, "org:b", MEMBER, "org:a", {}, NOW))
    world.command(lambda g: plan_create(g, "org:a", MEMBER, "org:b", {}, NOW))

    outcome, _ = world.run(world.start())

    assert outcome.status == "ok", outcome.error
    output = outcome.steps["q"]["output"]
    assert {k: output[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("step", "code"),
    [
        (graph_step("q", "detect_cycles"), "validation_error"),  # whole namespace: not in an execution
        (graph_step("q", "resolve_dependencies", entity="org:a"), "cycle_detected"),
        (graph_step("q", "get", type="owner", source="user:1", target="wallet:1"), "not_found"),
        (graph_step("q", "find_path", source="user:1", target="user:1"), "self_relationship"),
        (create("q", "user:1", "group:1"), "duplicate_relationship"),
        (delete("q", "user:1", "group:404"), "not_found"),
        (
            {
                "id": "q",
                "type": "control",
                "action": "assert",
                "parameters": {"value": [], "condition": "not_empty", "code": "forbidden"},
            },
            "forbidden",
        ),
        (create("q", "{{input.missing}}", "group:1"), "validation_error"),
    ],
)
def test_step_kinds__failures(step: dict[str, Any], code: str) -> None:
    world = World(pattern(step))
    world.relate(("user:1", MEMBER, "group:1"), ("org:a", MEMBER, "org:b"), ("org:b", MEMBER, "org:a"))

    outcome, _ = world.run(world.start())

    assert outcome.error is not None and outcome.error["code"] == code
    assert outcome.error["details"]["step"] == "q"


def test_step_kinds__templates_and_context() -> None:
    world = World(
        pattern(
            graph_step("path", "find_path", source="{{input.from}}", target="{{input.to}}"),
            publish(
                "told",
                "path.found",
                {
                    "hops": "{{steps.path.output.length}}",
                    "by": "{{context.principal}}",
                    "run": "{{context.execution_id}}",
                },
                depends_on=["path"],
            ),
        )
    )
    world.relate(("user:1", MEMBER, "group:1"))

    outcome, _ = world.run(world.start(input={"from": "user:1", "to": "group:1"}))

    assert outcome.status == "ok"
    told = [e for e in outcome.events if e.type == "path.found"]
    assert [e.data for e in told] == [{"hops": 1, "by": "alice", "run": "exe-1"}]


# -- properties ----------------------------------------------------------------------------------

STEP = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["create", "fail", "publish"]),
        "times": st.integers(0, 3),
        "attempts": st.integers(1, 3),
        "optional": st.booleans(),
        "deps": st.lists(st.integers(0, 5), max_size=2),
        "backoff": st.sampled_from([0, 50, 100]),
    }
)


def random_pattern(specs: list[dict[str, Any]], on_failure: str) -> dict[str, Any]:
    steps = []
    for i, spec in enumerate(specs):
        deps = sorted({f"s{d}" for d in spec["deps"] if d < i})
        common: dict[str, Any] = {"depends_on": deps, "optional": spec["optional"]}
        common["retry"] = retry(spec["attempts"], spec["backoff"])
        if spec["kind"] == "create":
            steps.append(create(f"s{i}", f"user:{i}", "group:x", **common))
        elif spec["kind"] == "publish":
            steps.append(publish(f"s{i}", f"e.s{i}", **common))
        else:
            steps.append(fail(f"s{i}", times=spec["times"] or None, **common))
    return pattern(*steps, on_failure=on_failure)


@settings(max_examples=60, deadline=None)
@given(
    specs=st.lists(STEP, min_size=1, max_size=6),
    on_failure=st.sampled_from(["rollback_all", "keep_completed"]),
    existing=st.sets(st.integers(0, 5), max_size=2),
)
def test_property__isolation_determinism_and_what_commits(
    specs: list[dict[str, Any]], on_failure: str, existing: set[int]
) -> None:
    document = random_pattern(specs, on_failure)
    plain, restarted = World(document), World(document)
    for world in (plain, restarted):
        world.relate(*((f"user:{i}", MEMBER, "group:x") for i in existing))
    initial = plain.state()

    execution, now = plain.start(), NOW
    while True:
        progress = plain.advance(execution, now)
        if progress.done:
            break
        assert plain.state() == initial  # isolation: nothing staged is visible while waiting
        assert progress.wait_until is not None and progress.wait_until > now
        now = progress.wait_until
    outcome = progress.outcome
    assert outcome is not None
    other, _ = restarted.run(restarted.start(), restart=True)
    assert other.to_dict() == outcome.to_dict()  # deterministic, and a restart changes nothing
    assert restarted.state() == plain.state()

    committed = {c.relationship.key for c in outcome.changes}
    report = outcome.steps
    kept = {key(f"user:{s[1:]}", MEMBER, "group:x") for s, r in report.items() if r["status"] == "completed"}
    created = {k for k in kept if specs[int(k.source.split(":")[1])]["kind"] == "create"}
    assert committed == created
    assert set(plain.records.data) == set(initial[1]) | committed
    assert edges(plain.graph) == set(plain.records.data)
    if outcome.status == "ok":
        assert all(
            r["status"] in ("completed", "skipped") or specs[int(s[1:])]["optional"]
            for s, r in report.items()
        )
    published = sorted(e.type for e in outcome.events if e.type.startswith("e."))
    completed_publish = [
        f"e.{s}"
        for s, r in report.items()
        if r["status"] == "completed" and specs[int(s[1:])]["kind"] == "publish"
    ]
    assert published == sorted(completed_publish)


@pytest.mark.parametrize("misuse", ["open_unit_of_work", "other_namespace", "included_execution"])
def test_advance__refuses_misuse(misuse: str) -> None:
    world = World(pattern(create("a", "user:1", "group:1")))
    execution = world.start()
    graph = world.graph
    if misuse == "open_unit_of_work":
        plan_create(graph, "user:2", MEMBER, "group:2", {}, NOW)
    elif misuse == "other_namespace":
        graph = Graph("elsewhere", MemoryRecords())
    else:
        execution.depth = 1

    with pytest.raises((RuntimeError, ValueError)):
        world.engine.advance(execution, graph, NOW)
    assert execution.status is ExecutionStatus.PENDING


def random_steps(specs: list[dict[str, Any]], entity: Callable[[int], str]) -> list[dict[str, Any]]:
    steps = []
    for i, spec in enumerate(specs):
        deps = sorted({f"s{d}" for d in spec["deps"] if d < i})
        common: dict[str, Any] = {"depends_on": deps, "optional": spec["optional"]}
        common["retry"] = retry(spec["attempts"], spec["backoff"])
        if spec["kind"] == "create":
            steps.append(create(f"s{i}", entity(i), "group:x", **common))
        elif spec["kind"] == "include":
            steps.append(include(f"s{i}", "inner", parameters={"input": {"tag": f"s{i}"}}, **common))
        else:
            steps.append(fail(f"s{i}", times=spec["times"] or None, **common))
    return steps


def committed_creates(
    report: Mapping[str, Any], specs: list[dict[str, Any]], entity: Callable[[int], str]
) -> set[str]:
    found = set()
    for step_id, step in report.items():
        if step["status"] == "completed" and specs[int(step_id[1:])]["kind"] == "create":
            found.add(entity(int(step_id[1:])))
    return found


OUTER_STEP = STEP.map(lambda s: s | {"kind": "include"} if s["kind"] == "publish" else s)
INNER_STEP = STEP.map(lambda s: s | {"kind": "create"} if s["kind"] == "publish" else s)


@settings(max_examples=60, deadline=None)
@given(
    outer=st.lists(OUTER_STEP, min_size=1, max_size=5),
    inner=st.lists(INNER_STEP, min_size=1, max_size=4),
    on_failure=st.sampled_from(["rollback_all", "keep_completed"]),
)
def test_property__composite_patterns_commit_exactly_what_completed(
    outer: list[dict[str, Any]], inner: list[dict[str, Any]], on_failure: str
) -> None:
    inner_document = pattern(*random_steps(inner, lambda i: f"{{{{input.tag}}}}:u{i}"), id="inner")
    outer_document = pattern(*random_steps(outer, lambda i: f"user:{i}"), id="outer", on_failure=on_failure)
    plain, restarted = World(inner_document, outer_document), World(inner_document, outer_document)

    execution, now = plain.start(), NOW
    while True:
        progress = plain.advance(execution, now)
        if progress.done:
            break
        assert plain.state() == (set(), {})  # isolation
        assert progress.wait_until is not None and progress.wait_until > now
        now = progress.wait_until
    outcome = progress.outcome
    assert outcome is not None
    other, _ = restarted.run(restarted.start(), restart=True)
    assert other.to_dict() == outcome.to_dict()

    expected = committed_creates(outcome.steps, outer, lambda i: f"user:{i}")
    for step_id, step in outcome.steps.items():
        if step["status"] == "completed" and outer[int(step_id[1:])]["kind"] == "include":
            expected |= committed_creates(step["steps"], inner, lambda i, s=step_id: f"{s}:u{i}")
            assert set(step["output"]["steps"]) == {
                k for k, v in step["steps"].items() if v["status"] == "completed"
            }
    assert {k.source for k in plain.records.data} == expected
    assert edges(plain.graph) == set(plain.records.data)
    assert len(outcome.changes) == len(expected)
    event(f"status {outcome.status}, waited {now > NOW}, nested commits {any(':u' in e for e in expected)}")
