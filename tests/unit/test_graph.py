"""Graph and its unit of work: plan_* write into the open unit, `commit()` hands back the changes
the caller makes durable (here: MemoryRecords, as the worker does with its table), `rollback()`
restores the index exactly, and a failed plan changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_streams.domain.errors import (
    ConcurrentModification,
    CycleDetected,
    DuplicateRelationship,
    ErrorCode,
    InvalidEntityId,
    MetadataTooLarge,
    NexusError,
    NotFound,
    ResourceLimit,
    SchemaViolation,
    SelfRelationship,
)
from nexus_streams.domain.graph import (
    Change,
    DomainEvent,
    Graph,
    MemoryRecords,
    Outcome,
    Put,
    Remove,
    plan_create,
    plan_delete,
    plan_delete_entity,
    plan_expire,
    plan_update,
)
from nexus_streams.domain.index import Direction
from nexus_streams.domain.relationships import (
    MAX_METADATA_BYTES,
    Relationship,
    RelationshipKey,
    RelationType,
    canonical_key,
)
from nexus_streams.domain.schema import Schema

OWNER, MEMBER, LINKED, PARENT, CHILD = (
    RelationType.OWNER,
    RelationType.MEMBER,
    RelationType.LINKED,
    RelationType.PARENT,
    RelationType.CHILD,
)
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LATER = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)

Command = tuple[str, RelationType, str]
Plan = Callable[[Graph], Outcome]


class Store:
    """One namespace as the worker holds it: the live Graph plus its durable records."""

    def __init__(self, namespace: str = "ns") -> None:
        self.records = MemoryRecords()
        self.graph = Graph(namespace, self.records)

    def run(self, *plans: Plan) -> tuple[list[Outcome], list[Change]]:
        """Plan in one unit of work, commit, and make the changes durable."""
        outcomes = [plan(self.graph) for plan in plans]
        changes = self.graph.commit()
        self.records.apply(changes)
        return outcomes, changes

    def create(
        self,
        source: str,
        type_: RelationType,
        target: str,
        metadata: dict[str, Any] | None = None,
        now: datetime = NOW,
        expires_at: datetime | None = None,
    ) -> Outcome:
        outcomes, _ = self.run(create_(source, type_, target, metadata, now, expires_at))
        return outcomes[0]


def create_(
    source: str,
    type_: RelationType,
    target: str,
    metadata: dict[str, Any] | None = None,
    now: datetime = NOW,
    expires_at: datetime | None = None,
) -> Plan:
    return lambda g: plan_create(g, source, type_, target, dict(metadata or {}), now, expires_at)


def update_(
    source: str,
    type_: RelationType,
    target: str,
    metadata: dict[str, Any] | None = None,
    now: datetime = LATER,
    expected_version: int | None = None,
    expires_at: datetime | None = None,
) -> Plan:
    return lambda g: plan_update(
        g, source, type_, target, dict(metadata or {}), now, expected_version, expires_at
    )


def delete_(source: str, type_: RelationType, target: str) -> Plan:
    return lambda g: plan_delete(g, source, type_, target)


def delete_entity_(entity: str, limit: int = 100) -> Plan:
    return lambda g: plan_delete_entity(g, entity, limit)


def index_keys(graph: Graph) -> set[RelationshipKey]:
    return {key for entity in graph.index.entities() for key in graph.index.edges_of(entity)}


def state(graph: Graph) -> dict[str, Any]:
    """What the graph answers, including its index (edge order within an entity is not state)."""
    index = graph.index
    keys = index_keys(graph)
    return {
        "len": len(graph),
        "entities": sorted(index.entities()),
        "entity_count": index.entity_count,
        "counts_by_type": index.counts_by_type(),
        "degrees": index.degree_histogram(),
        "edges_of": {e: sorted(index.edges_of(e), key=repr) for e in index.entities()},
        "relationships": {k: graph.get(k) for k in keys},
        "schema": graph.schema,
        "next_expiry": graph.next_expiry(),
    }


def durable(store: Store) -> dict[RelationshipKey, dict[str, Any]]:
    return {k: r.to_dict() for k, r in store.records.data.items()}


def assert_consistent(store: Store) -> None:
    """After a commit: the index and the durable records hold the same relationships."""
    graph = store.graph
    keys = index_keys(graph)
    assert keys == set(store.records.data)
    assert len(graph) == len(keys) == sum(graph.index.counts_by_type().values())
    for key in keys:
        rel = graph.get(key)
        assert rel is not None
        assert rel == store.records.data[key]
        assert rel.key == key
        assert rel.type is not CHILD
        assert rel.namespace == graph.namespace
    degrees: dict[str, int] = {}
    for key in keys:
        degrees[key.source] = degrees.get(key.source, 0) + 1
        degrees[key.target] = degrees.get(key.target, 0) + 1
    assert set(graph.index.entities()) == set(degrees)
    histogram: dict[int, int] = {}
    for d in degrees.values():
        histogram[d] = histogram.get(d, 0) + 1
    assert graph.index.degree_histogram() == dict(sorted(histogram.items()))


@pytest.fixture
def store() -> Store:
    return Store()


# --------------------------------------------------------------------------- create


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        (("user:1", OWNER, "wallet:1"), ("user:1", OWNER, "wallet:1")),
        (("user:1", MEMBER, "group:1"), ("user:1", MEMBER, "group:1")),
        (("a", LINKED, "b"), ("a", LINKED, "b")),
        (("b", LINKED, "a"), ("a", LINKED, "b")),
        (("org:1", PARENT, "team:1"), ("org:1", PARENT, "team:1")),
        (("team:1", CHILD, "org:1"), ("org:1", PARENT, "team:1")),
    ],
    ids=repr,
)
def test_graph__create__stored_in_canonical_form(store: Store, written: Command, stored: Command) -> None:
    outcome = store.create(*written, metadata={"k": "v"}, expires_at=LATER)
    key = RelationshipKey(*stored)
    rel = Relationship("ns", *stored, metadata={"k": "v"}, created_at=NOW, updated_at=NOW, expires_at=LATER)
    assert store.graph.get(key) == rel
    assert store.records.data == {key: rel}
    assert outcome.output == {"relationship": rel.to_dict()}
    assert outcome.events == [DomainEvent("relationship_created", {"relationship": rel.to_dict()})]
    assert store.graph.index.counts_by_type() == {
        t.value: int(t is stored[1]) for t in (OWNER, MEMBER, LINKED, PARENT)
    }
    assert store.graph.index.edges_of(stored[0]) == [key]
    assert store.graph.index.edges_of(stored[2]) == [key]
    assert_consistent(store)


def test_graph__empty__answers_nothing(store: Store) -> None:
    graph = store.graph
    assert len(graph) == 0
    assert graph.get(RelationshipKey("a", OWNER, "b")) is None
    assert graph.index.edges_of("a") == []
    assert graph.index.counts_by_type() == {"owner": 0, "member": 0, "linked": 0, "parent": 0}
    assert graph.next_expiry() is None
    assert graph.commit() == []


def test_graph__fan_out_and_fan_in(store: Store) -> None:
    for wallet in ("w1", "w2", "w3"):
        store.create("user:1", OWNER, wallet)
    for user in ("u2", "u3"):
        store.create(user, OWNER, "w1")
    store.create("team:1", CHILD, "org:1")
    store.create("team:2", CHILD, "org:1")
    index = store.graph.index
    assert {n for n, _ in index.neighbors("user:1", Direction.OUT, [OWNER])} == {"w1", "w2", "w3"}
    assert {n for n, _ in index.neighbors("w1", Direction.IN, [OWNER])} == {"user:1", "u2", "u3"}
    assert {n for n, _ in index.neighbors("org:1", Direction.OUT, [PARENT])} == {"team:1", "team:2"}
    assert {n for n, _ in index.neighbors("org:1", Direction.IN, [CHILD])} == {"team:1", "team:2"}
    assert index.counts_by_type() == {"owner": 5, "member": 0, "linked": 0, "parent": 2}
    assert index.degree_histogram() == {1: 6, 2: 1, 3: 2}
    assert len(store.graph) == 7
    assert_consistent(store)


DUPLICATES = [
    # first written as, then written as
    (("a", OWNER, "b"), ("a", OWNER, "b")),
    (("a", MEMBER, "b"), ("a", MEMBER, "b")),
    (("a", PARENT, "b"), ("a", PARENT, "b")),
    (("a", PARENT, "b"), ("b", CHILD, "a")),
    (("b", CHILD, "a"), ("a", PARENT, "b")),
    (("b", CHILD, "a"), ("b", CHILD, "a")),
    (("a", LINKED, "b"), ("a", LINKED, "b")),
    (("a", LINKED, "b"), ("b", LINKED, "a")),
    (("b", LINKED, "a"), ("a", LINKED, "b")),
    (("b", LINKED, "a"), ("b", LINKED, "a")),
]


@pytest.mark.parametrize(("first", "second"), DUPLICATES, ids=repr)
def test_plan_create__duplicate__in_either_form(store: Store, first: Command, second: Command) -> None:
    store.create(*first, metadata={"v": 1})
    before, records = state(store.graph), durable(store)
    with pytest.raises(DuplicateRelationship) as info:
        plan_create(store.graph, *second, {"v": 2}, LATER)
    err = info.value
    assert err.code is ErrorCode.DUPLICATE_RELATIONSHIP
    assert err.to_dict()["code"] == "duplicate_relationship"
    # the error names the relationship as the request wrote it
    assert err.details == {"source": second[0], "type": second[1].value, "target": second[2]}
    assert "update" in err.message
    assert state(store.graph) == before
    assert store.graph.commit() == []
    assert durable(store) == records


@pytest.mark.parametrize(("first", "second"), DUPLICATES, ids=repr)
def test_plan_create__duplicate__within_one_unit(store: Store, first: Command, second: Command) -> None:
    """The open unit sees its own writes: a duplicate of an uncommitted create is refused."""
    plan_create(store.graph, *first, {}, NOW)
    with pytest.raises(DuplicateRelationship):
        plan_create(store.graph, *second, {}, NOW)
    assert [type(c) for c in store.graph.commit()] == [Put]


NOT_DUPLICATES = [
    (("a", OWNER, "b"), ("b", OWNER, "a")),
    (("a", MEMBER, "b"), ("b", MEMBER, "a")),
    (("a", OWNER, "b"), ("a", MEMBER, "b")),
    (("a", PARENT, "b"), ("a", PARENT, "c")),
    (("a", PARENT, "b"), ("c", CHILD, "a")),
    (("a", LINKED, "b"), ("a", PARENT, "b")),
    (("a", LINKED, "b"), ("a", LINKED, "c")),
    (("a", OWNER, "b"), ("a", OWNER, "c")),
    (("A", OWNER, "b"), ("a", OWNER, "b")),  # ids are case sensitive
]


@pytest.mark.parametrize(("first", "second"), NOT_DUPLICATES, ids=repr)
def test_plan_create__distinct_relationships__both_kept(
    store: Store, first: Command, second: Command
) -> None:
    store.create(*first)
    store.create(*second)
    assert len(store.graph) == 2
    assert set(store.records.data) == {canonical_key(*first), canonical_key(*second)}
    assert_consistent(store)


# --------------------------------------------------------------------------- the unit of work


def test_unit_of_work__plan_writes_into_the_open_unit__commit_returns_the_changes(store: Store) -> None:
    graph = store.graph
    outcome = plan_create(graph, "a", OWNER, "b", {"k": 1}, NOW)
    key = RelationshipKey("a", OWNER, "b")
    rel = Relationship("ns", "a", OWNER, "b", {"k": 1}, 1, NOW, NOW)
    # visible in the graph before the commit, not yet durable
    assert graph.get(key) == rel
    assert graph.index.has(key)
    assert store.records.data == {}
    assert outcome.changes == []  # the changes come from commit(), not from the outcome
    changes = graph.commit()
    assert changes == [Put(rel)]
    assert graph.commit() == []  # the unit is closed: nothing left to hand back
    store.records.apply(changes)
    assert store.records.data == {key: rel}
    assert graph.get(key) == rel


def test_unit_of_work__several_plans__one_change_per_relationship(store: Store) -> None:
    store.create("x", OWNER, "y", {"v": 0})
    outcomes, changes = store.run(
        create_("a", OWNER, "b", {"v": 1}),
        update_("a", OWNER, "b", {"v": 2}),
        update_("a", OWNER, "b", {"v": 3}),
        delete_("x", OWNER, "y"),
        create_("c", CHILD, "d"),
    )
    ab = Relationship("ns", "a", OWNER, "b", {"v": 3}, 3, NOW, LATER)
    assert [o.events[0].type for o in outcomes] == [
        "relationship_created",
        "relationship_updated",
        "relationship_updated",
        "relationship_deleted",
        "relationship_created",
    ]
    assert sorted(changes, key=repr) == sorted(
        [
            Put(ab),
            Remove(Relationship("ns", "x", OWNER, "y", {"v": 0}, 1, NOW, NOW)),
            Put(Relationship("ns", "d", PARENT, "c", {}, 1, NOW, NOW)),
        ],
        key=repr,
    )
    assert set(store.records.data) == {ab.key, RelationshipKey("d", PARENT, "c")}
    assert_consistent(store)


def test_unit_of_work__create_then_delete__no_durable_change(store: Store) -> None:
    _, changes = store.run(create_("a", OWNER, "b"), delete_("a", OWNER, "b"))
    assert changes == []
    assert store.records.data == {}
    assert len(store.graph) == 0
    assert store.graph.index.entity_count == 0


def test_unit_of_work__delete_then_create__put_of_the_new_record(store: Store) -> None:
    store.create("a", LINKED, "b", {"old": True})
    _, changes = store.run(delete_("b", LINKED, "a"), create_("b", LINKED, "a", {"new": True}, LATER))
    rel = Relationship("ns", "a", LINKED, "b", {"new": True}, 1, LATER, LATER)
    assert changes == [Put(rel)]
    assert store.records.data == {rel.key: rel}


ROLLBACK_SCENARIOS: list[tuple[str, list[Plan]]] = [
    ("create", [create_("a", OWNER, "new")]),
    ("create new entities", [create_("p", MEMBER, "q"), create_("q", LINKED, "r")]),
    ("update", [update_("a", OWNER, "b", {"v": 9})]),
    ("update twice", [update_("a", OWNER, "b", {"v": 9}), update_("a", OWNER, "b", {"v": 10})]),
    ("delete", [delete_("a", OWNER, "b")]),
    ("delete via child form", [delete_("c", CHILD, "a")]),
    ("delete then create again", [delete_("a", OWNER, "b"), create_("a", OWNER, "b", {"v": 2})]),
    ("create then delete", [create_("z", OWNER, "y"), delete_("z", OWNER, "y")]),
    ("delete_entity", [delete_entity_("a")]),
    ("delete_entity then recreate", [delete_entity_("a"), create_("a", PARENT, "c")]),
    (
        "mixed",
        [
            create_("a", MEMBER, "g"),
            delete_("b", LINKED, "a"),
            update_("a", PARENT, "c"),
            delete_entity_("c"),
            create_("c", OWNER, "b"),
        ],
    ),
]


def seeded() -> Store:
    store = Store()
    store.create("a", OWNER, "b", {"v": 1})
    store.create("a", PARENT, "c")
    store.create("a", LINKED, "b")
    store.create("d", OWNER, "a", expires_at=LATER)
    return store


@pytest.mark.parametrize("plans", [s[1] for s in ROLLBACK_SCENARIOS], ids=[s[0] for s in ROLLBACK_SCENARIOS])
def test_unit_of_work__rollback__restores_the_index_exactly(plans: list[Plan]) -> None:
    store = seeded()
    graph = store.graph
    before, records = state(graph), durable(store)
    savepoint = graph.savepoint()
    for plan in plans:
        plan(graph)
    assert graph.savepoint() > savepoint  # the unit recorded how to undo the writes
    graph.rollback(savepoint)
    assert state(graph) == before
    assert graph.commit() == []
    assert durable(store) == records
    assert_consistent(store)


@pytest.mark.parametrize("plans", [s[1] for s in ROLLBACK_SCENARIOS], ids=[s[0] for s in ROLLBACK_SCENARIOS])
def test_unit_of_work__rollback_to_a_savepoint__keeps_what_came_before(plans: list[Plan]) -> None:
    store = seeded()
    graph = store.graph
    plan_create(graph, "kept", OWNER, "w", {}, NOW)
    middle = state(graph)
    savepoint = graph.savepoint()
    for plan in plans:
        plan(graph)
    graph.rollback(savepoint)
    assert state(graph) == middle
    kept = Relationship("ns", "kept", OWNER, "w", {}, 1, NOW, NOW)
    assert graph.commit() == [Put(kept)]


def test_unit_of_work__rollback_then_commit__the_unit_can_be_reused(store: Store) -> None:
    savepoint = store.graph.savepoint()
    assert savepoint == 0
    plan_create(store.graph, "a", OWNER, "b", {}, NOW)
    store.graph.rollback(savepoint)
    assert store.graph.savepoint() == 0
    _, changes = store.run(create_("a", OWNER, "b", {"second": True}))
    assert changes == [Put(Relationship("ns", "a", OWNER, "b", {"second": True}, 1, NOW, NOW))]


# --------------------------------------------------------------------------- failed plans

FAILED_PLANS: list[tuple[str, Plan, type[NexusError], ErrorCode]] = [
    (
        "create self",
        create_("a", OWNER, "a"),
        SelfRelationship,
        ErrorCode.SELF_RELATIONSHIP,
    ),
    ("create empty id", create_("", OWNER, "b"), InvalidEntityId, ErrorCode.INVALID_ENTITY_ID),
    ("create id with space", create_("a", OWNER, "b c"), InvalidEntityId, ErrorCode.INVALID_ENTITY_ID),
    (
        "create big metadata",
        create_("a", OWNER, "z", {"k": "x" * MAX_METADATA_BYTES}),
        MetadataTooLarge,
        ErrorCode.METADATA_TOO_LARGE,
    ),
    ("create duplicate", create_("a", OWNER, "b"), DuplicateRelationship, ErrorCode.DUPLICATE_RELATIONSHIP),
    (
        "create duplicate child",
        create_("c", CHILD, "a"),
        DuplicateRelationship,
        ErrorCode.DUPLICATE_RELATIONSHIP,
    ),
    (
        "create duplicate linked",
        create_("b", LINKED, "a"),
        DuplicateRelationship,
        ErrorCode.DUPLICATE_RELATIONSHIP,
    ),
    ("create closing a cycle", create_("c", PARENT, "a"), CycleDetected, ErrorCode.CYCLE_DETECTED),
    ("update missing", update_("b", OWNER, "a"), NotFound, ErrorCode.NOT_FOUND),
    (
        "update wrong version",
        update_("a", OWNER, "b", expected_version=7),
        ConcurrentModification,
        ErrorCode.CONCURRENT_MODIFICATION,
    ),
    (
        "update big metadata",
        update_("a", OWNER, "b", {"k": "x" * MAX_METADATA_BYTES}),
        MetadataTooLarge,
        ErrorCode.METADATA_TOO_LARGE,
    ),
    ("update self", update_("a", OWNER, "a"), SelfRelationship, ErrorCode.SELF_RELATIONSHIP),
    ("delete missing", delete_("b", OWNER, "a"), NotFound, ErrorCode.NOT_FOUND),
    ("delete self", delete_("a", OWNER, "a"), SelfRelationship, ErrorCode.SELF_RELATIONSHIP),
    ("delete control char", delete_("a\x00", OWNER, "b"), InvalidEntityId, ErrorCode.INVALID_ENTITY_ID),
    ("delete_entity over limit", delete_entity_("a", 2), ResourceLimit, ErrorCode.RESOURCE_LIMIT),
    ("delete_entity bad id", delete_entity_("a b"), InvalidEntityId, ErrorCode.INVALID_ENTITY_ID),
]


@pytest.mark.parametrize(
    ("plan", "error", "code"), [p[1:] for p in FAILED_PLANS], ids=[p[0] for p in FAILED_PLANS]
)
def test_plan__failed__changes_nothing(plan: Plan, error: type[NexusError], code: ErrorCode) -> None:
    store = Store()
    store.create("a", OWNER, "b")
    store.create("a", PARENT, "c")
    store.create("a", LINKED, "b")
    before, records = state(store.graph), durable(store)
    with pytest.raises(error) as info:
        plan(store.graph)
    assert type(info.value) is error
    assert info.value.code is code
    assert info.value.to_dict()["code"] == code.value
    assert state(store.graph) == before
    assert store.graph.commit() == []
    assert durable(store) == records


def test_plan__failed_after_earlier_plans__earlier_plans_stay_in_the_unit(store: Store) -> None:
    """A failed plan leaves the unit as it was; undoing the whole unit is the caller's rollback."""
    plan_create(store.graph, "a", OWNER, "b", {}, NOW)
    with pytest.raises(DuplicateRelationship):
        plan_create(store.graph, "a", OWNER, "b", {}, NOW)
    assert store.graph.commit() == [Put(Relationship("ns", "a", OWNER, "b", {}, 1, NOW, NOW))]


# --------------------------------------------------------------------------- hierarchy cycles

CYCLES = [
    # (existing parent relationships, the new one, the cycle reported)
    # the cycle reads [new parent, new child, ..., new parent]
    ([("A", PARENT, "B")], ("B", PARENT, "A"), ["B", "A", "B"]),
    ([("A", PARENT, "B"), ("B", PARENT, "C")], ("C", PARENT, "A"), ["C", "A", "B", "C"]),
    ([("A", PARENT, "B"), ("B", PARENT, "C")], ("A", CHILD, "C"), ["C", "A", "B", "C"]),
    ([("B", CHILD, "A"), ("C", CHILD, "B")], ("C", PARENT, "A"), ["C", "A", "B", "C"]),
    ([("A", PARENT, "B")], ("A", CHILD, "B"), ["B", "A", "B"]),
    (
        [("A", PARENT, "B"), ("B", PARENT, "C"), ("C", PARENT, "D"), ("X", PARENT, "A")],
        ("D", PARENT, "X"),
        ["D", "X", "A", "B", "C", "D"],
    ),
    # a shorter way round is reported
    (
        [("A", PARENT, "B"), ("B", PARENT, "C"), ("C", PARENT, "D"), ("A", PARENT, "D")],
        ("D", PARENT, "A"),
        ["D", "A", "D"],
    ),
]


@pytest.mark.parametrize(("existing", "new", "cycle"), CYCLES, ids=repr)
def test_plan_create__closing_a_hierarchy_cycle__cycle_detected(
    store: Store, existing: list[Command], new: Command, cycle: list[str]
) -> None:
    for command in existing:
        store.create(*command)
    before = state(store.graph)
    with pytest.raises(CycleDetected) as info:
        plan_create(store.graph, *new, {}, NOW)
    assert info.value.code is ErrorCode.CYCLE_DETECTED
    assert info.value.details == {"cycle": cycle}
    assert cycle[0] == cycle[-1]
    assert " -> ".join(cycle) in info.value.message
    assert state(store.graph) == before


@pytest.mark.parametrize(("existing", "new", "cycle"), CYCLES, ids=repr)
def test_plan_create__cycle_through_uncommitted_writes__detected(
    store: Store, existing: list[Command], new: Command, cycle: list[str]
) -> None:
    for command in existing:
        plan_create(store.graph, *command, {}, NOW)
    with pytest.raises(CycleDetected) as info:
        plan_create(store.graph, *new, {}, NOW)
    assert info.value.details["cycle"] == cycle


@pytest.mark.parametrize(
    ("existing", "new"),
    [
        ([("A", PARENT, "B"), ("A", PARENT, "C"), ("B", PARENT, "D")], ("C", PARENT, "D")),  # diamond
        ([("A", PARENT, "B"), ("B", PARENT, "C")], ("A", PARENT, "C")),  # shortcut
        ([("A", OWNER, "B"), ("B", OWNER, "C")], ("C", OWNER, "A")),  # only the hierarchy
        ([("A", MEMBER, "B")], ("B", MEMBER, "A")),
        ([("A", LINKED, "B"), ("B", PARENT, "C")], ("C", PARENT, "A")),
        ([("A", OWNER, "B")], ("B", PARENT, "A")),
        ([("A", PARENT, "B"), ("X", PARENT, "Y")], ("B", PARENT, "X")),  # two trees joined
    ],
    ids=repr,
)
def test_plan_create__no_hierarchy_cycle__allowed(
    store: Store, existing: list[Command], new: Command
) -> None:
    for command in existing:
        store.create(*command)
    store.create(*new)
    assert canonical_key(*new) in store.records.data


def test_plan_create__cycle_after_a_delete__allowed(store: Store) -> None:
    store.create("A", PARENT, "B")
    store.create("B", PARENT, "C")
    store.run(delete_("C", CHILD, "B"))
    store.create("C", PARENT, "A")
    assert_consistent(store)


# --------------------------------------------------------------------------- update


@pytest.mark.parametrize(
    ("created", "updated"),
    [
        (("a", OWNER, "b"), ("a", OWNER, "b")),
        (("a", PARENT, "b"), ("b", CHILD, "a")),
        (("b", CHILD, "a"), ("a", PARENT, "b")),
        (("a", LINKED, "b"), ("b", LINKED, "a")),
    ],
    ids=repr,
)
def test_plan_update__bumps_version_and_updated_at(store: Store, created: Command, updated: Command) -> None:
    store.create(*created, metadata={"v": 1}, expires_at=LATER + HOUR)
    (outcome,), changes = store.run(update_(*updated, {"v": 2}, now=LATER))
    key = canonical_key(*created)
    rel = Relationship("ns", key.source, key.type, key.target, {"v": 2}, 2, NOW, LATER, LATER + HOUR)
    assert changes == [Put(rel)]
    assert store.records.data[key] == rel
    assert outcome.output == {"relationship": rel.to_dict()}
    assert outcome.events == [
        DomainEvent("relationship_updated", {"relationship": rel.to_dict(), "previous_version": 1})
    ]
    (again,), _ = store.run(update_(*updated, {"v": 3}, now=LATER + HOUR, expected_version=2))
    assert again.output["relationship"]["version"] == 3
    assert again.output["relationship"]["metadata"] == {"v": 3}
    assert again.events[0].data["previous_version"] == 2
    assert_consistent(store)


@pytest.mark.parametrize(
    ("expires_at", "expected"),
    [(None, LATER), (LATER + HOUR, LATER + HOUR)],
    ids=["kept", "replaced"],
)
def test_plan_update__expires_at(store: Store, expires_at: datetime | None, expected: datetime) -> None:
    store.create("a", OWNER, "b", expires_at=LATER)
    (outcome,), _ = store.run(update_("a", OWNER, "b", expires_at=expires_at))
    assert store.records.data[RelationshipKey("a", OWNER, "b")].expires_at == expected
    assert outcome.output["relationship"]["expires_at"] == expected.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(("expected_version", "actual"), [(2, 1), (1, 2), (99, 2)])
def test_plan_update__wrong_expected_version__concurrent_modification(
    store: Store, expected_version: int, actual: int
) -> None:
    store.create("a", OWNER, "b")
    if actual == 2:
        store.run(update_("a", OWNER, "b", {"v": 2}))
    before, records = state(store.graph), durable(store)
    with pytest.raises(ConcurrentModification) as info:
        plan_update(store.graph, "a", OWNER, "b", {"v": 3}, LATER, expected_version)
    assert info.value.code is ErrorCode.CONCURRENT_MODIFICATION
    assert info.value.details == {"expected_version": expected_version, "actual_version": actual}
    assert state(store.graph) == before
    assert durable(store) == records


def test_plan_update__missing__not_found(store: Store) -> None:
    store.create("a", OWNER, "b")
    with pytest.raises(NotFound) as info:
        plan_update(store.graph, "b", OWNER, "a", {}, LATER)
    assert info.value.details == {"source": "b", "type": "owner", "target": "a"}


# --------------------------------------------------------------------------- delete

DELETES = [
    # created as, deleted as
    (("a", OWNER, "b"), ("a", OWNER, "b")),
    (("a", MEMBER, "b"), ("a", MEMBER, "b")),
    (("a", PARENT, "b"), ("a", PARENT, "b")),
    (("a", PARENT, "b"), ("b", CHILD, "a")),
    (("b", CHILD, "a"), ("a", PARENT, "b")),
    (("b", CHILD, "a"), ("b", CHILD, "a")),
    (("a", LINKED, "b"), ("a", LINKED, "b")),
    (("a", LINKED, "b"), ("b", LINKED, "a")),
    (("b", LINKED, "a"), ("a", LINKED, "b")),
]


@pytest.mark.parametrize(("created", "deleted"), DELETES, ids=repr)
def test_plan_delete__any_form__removes_it(store: Store, created: Command, deleted: Command) -> None:
    store.create("x", OWNER, "y")  # an unrelated relationship stays
    store.create(*created, metadata={"k": "v"})
    rel = store.graph.get(canonical_key(*created))
    assert rel is not None
    (outcome,), changes = store.run(delete_(*deleted))
    assert changes == [Remove(rel)]
    assert outcome.output == {"relationship": rel.to_dict()}
    assert outcome.events == [DomainEvent("relationship_deleted", {"relationship": rel.to_dict()})]
    assert store.graph.get(rel.key) is None
    assert set(store.records.data) == {RelationshipKey("x", OWNER, "y")}
    assert store.graph.index.edges_of("a") == store.graph.index.edges_of("b") == []
    assert "a" not in store.graph.index
    assert_consistent(store)


@pytest.mark.parametrize(
    ("existing", "deleted"),
    [
        ([], ("a", OWNER, "b")),
        ([("a", OWNER, "b")], ("b", OWNER, "a")),
        ([("a", OWNER, "b")], ("a", MEMBER, "b")),
        ([("a", PARENT, "b")], ("b", PARENT, "a")),
        ([("a", PARENT, "b")], ("a", CHILD, "b")),
        ([("a", LINKED, "b")], ("a", LINKED, "c")),
        ([("a", OWNER, "b")], ("a", OWNER, "c")),
    ],
    ids=repr,
)
def test_plan_delete__missing__not_found(store: Store, existing: list[Command], deleted: Command) -> None:
    for command in existing:
        store.create(*command)
    before = state(store.graph)
    with pytest.raises(NotFound) as info:
        plan_delete(store.graph, *deleted)
    assert info.value.to_dict()["code"] == "not_found"
    assert info.value.details == {"source": deleted[0], "type": deleted[1].value, "target": deleted[2]}
    assert "'ns'" in info.value.message
    assert state(store.graph) == before


def test_plan_delete__twice__second_not_found(store: Store) -> None:
    store.create("a", OWNER, "b")
    store.run(delete_("a", OWNER, "b"))
    with pytest.raises(NotFound):
        plan_delete(store.graph, "a", OWNER, "b")


def test_plan_create__after_delete__creates_again_at_version_1(store: Store) -> None:
    store.create("a", LINKED, "b")
    store.run(update_("a", LINKED, "b"))
    store.run(delete_("b", LINKED, "a"))
    store.create("b", LINKED, "a", {"again": True}, now=LATER)
    rel = store.records.data[RelationshipKey("a", LINKED, "b")]
    assert (rel.metadata, rel.version, rel.created_at) == ({"again": True}, 1, LATER)


# --------------------------------------------------------------------------- delete_entity


def test_plan_delete_entity__removes_every_relationship_of_it(store: Store) -> None:
    store.create("e", OWNER, "w1", {"n": 1})
    store.create("e", MEMBER, "g")
    store.create("u", OWNER, "e")
    store.create("e", LINKED, "a")  # stored as a linked e
    store.create("e", CHILD, "org")  # stored as org parent e
    store.create("u", OWNER, "w1")  # not e's: stays
    doomed = {k: store.records.data[k] for k in store.graph.index.edges_of("e")}
    assert len(doomed) == 5
    (outcome,), changes = store.run(delete_entity_("e"))
    assert outcome.output == {"entity": "e", "deleted": 5}
    assert sorted(changes, key=repr) == sorted((Remove(r) for r in doomed.values()), key=repr)
    assert {e.type for e in outcome.events} == {"relationship_deleted"}
    assert sorted((e.data["relationship"] for e in outcome.events), key=repr) == sorted(
        (r.to_dict() for r in doomed.values()), key=repr
    )
    assert "e" not in store.graph.index
    assert set(store.records.data) == {RelationshipKey("u", OWNER, "w1")}
    assert_consistent(store)


@pytest.mark.parametrize(("count", "limit", "fails"), [(3, 3, False), (3, 2, True), (0, 0, False)])
def test_plan_delete_entity__limit(store: Store, count: int, limit: int, fails: bool) -> None:
    for i in range(count):
        store.create("e", OWNER, f"w{i}")
    before = state(store.graph)
    if not fails:
        (outcome,), changes = store.run(delete_entity_("e", limit))
        assert outcome.output == {"entity": "e", "deleted": count}
        assert len(changes) == len(outcome.events) == count
        return
    with pytest.raises(ResourceLimit) as info:
        plan_delete_entity(store.graph, "e", limit)
    assert info.value.details == {"relationships": count, "limit": limit}
    assert state(store.graph) == before


def test_plan_delete_entity__unknown_entity__deletes_nothing(store: Store) -> None:
    store.create("a", OWNER, "b")
    (outcome,), changes = store.run(delete_entity_("nobody"))
    assert outcome.output == {"entity": "nobody", "deleted": 0}
    assert outcome.events == []
    assert changes == []


# --------------------------------------------------------------------------- expiry


def test_plan_expire__removes_what_has_expired(store: Store) -> None:
    store.create("a", OWNER, "b", expires_at=NOW + HOUR)
    store.create("a", OWNER, "c", expires_at=NOW + 2 * HOUR)
    store.create("a", OWNER, "d", expires_at=NOW + 3 * HOUR)
    store.create("a", OWNER, "e")  # never expires
    assert store.graph.next_expiry() == (NOW + HOUR).timestamp()
    expired_b = store.records.data[RelationshipKey("a", OWNER, "b")]
    expired_c = store.records.data[RelationshipKey("a", OWNER, "c")]

    (outcome,), changes = store.run(lambda g: plan_expire(g, NOW + 2 * HOUR))
    assert outcome.output == {"expired": 2}
    assert outcome.events == [
        DomainEvent("relationship_expired", {"relationship": expired_b.to_dict()}),
        DomainEvent("relationship_expired", {"relationship": expired_c.to_dict()}),
    ]
    assert sorted(changes, key=repr) == sorted([Remove(expired_b), Remove(expired_c)], key=repr)
    assert set(store.records.data) == {RelationshipKey("a", OWNER, "d"), RelationshipKey("a", OWNER, "e")}
    assert store.graph.next_expiry() == (NOW + 3 * HOUR).timestamp()
    # each at most once
    (again,), changes = store.run(lambda g: plan_expire(g, NOW + 2 * HOUR))
    assert (again.output, again.events, changes) == ({"expired": 0}, [], [])
    assert_consistent(store)


def test_plan_expire__nothing_due__nothing_changes(store: Store) -> None:
    store.create("a", OWNER, "b", expires_at=LATER)
    before = state(store.graph)
    (outcome,), changes = store.run(lambda g: plan_expire(g, LATER - timedelta(microseconds=1)))
    assert (outcome.output, changes) == ({"expired": 0}, [])
    assert state(store.graph) == before


def test_plan_expire__deleted_before__not_expired_again(store: Store) -> None:
    store.create("a", OWNER, "b", expires_at=NOW + HOUR)
    store.run(delete_("a", OWNER, "b"))
    (outcome,), changes = store.run(lambda g: plan_expire(g, LATER))
    assert (outcome.output, changes) == ({"expired": 0}, [])


def test_plan_expire__expiry_moved_later_by_update__not_expired_at_the_old_time(store: Store) -> None:
    store.create("a", OWNER, "b", expires_at=NOW + HOUR)
    store.run(update_("a", OWNER, "b", expires_at=NOW + 3 * HOUR))
    (outcome,), _ = store.run(lambda g: plan_expire(g, NOW + 2 * HOUR))
    assert outcome.output == {"expired": 0}
    (outcome,), _ = store.run(lambda g: plan_expire(g, NOW + 3 * HOUR))
    assert outcome.output == {"expired": 1}
    assert store.records.data == {}


@pytest.mark.parametrize(
    "rewrite",
    [
        [update_("a", OWNER, "b", {"v": 2})],  # expires_at kept
        [update_("a", OWNER, "b", {"v": 2}), update_("a", OWNER, "b", {"v": 3})],
        [delete_("a", OWNER, "b"), create_("a", OWNER, "b", expires_at=NOW + HOUR)],
    ],
    ids=["update", "update twice", "delete and create again"],
)
def test_plan_expire__rewritten_with_the_same_expiry__expired_once(store: Store, rewrite: list[Plan]) -> None:
    """`due()` promises each relationship at most once: one relationship_expired event per relationship,
    however often it was written with the same expires_at."""
    store.create("a", OWNER, "b", expires_at=NOW + HOUR)
    for plan in rewrite:
        store.run(plan)
    (outcome,), changes = store.run(lambda g: plan_expire(g, NOW + 2 * HOUR))
    assert len(changes) == 1
    assert outcome.output == {"expired": 1}
    assert [e.type for e in outcome.events] == ["relationship_expired"]


# --------------------------------------------------------------------------- schema


def test_plan_create__schema__checked_before_the_write(store: Store) -> None:
    store.graph.schema = Schema.parse({"owner": ["user -> wallet"], "parent": ["org -> team"]})
    store.create("user:1", OWNER, "wallet:1")
    store.create("team:1", CHILD, "org:1")
    store.create("x:1", MEMBER, "y:1")  # member is not in the schema: unrestricted
    before = state(store.graph)
    with pytest.raises(SchemaViolation) as info:
        plan_create(store.graph, "wallet:1", OWNER, "user:2", {}, NOW)
    assert info.value.code is ErrorCode.SCHEMA_VIOLATION
    assert info.value.details == {"source": "wallet:1", "type": "owner", "target": "user:2"}
    assert "'wallet'" in info.value.message
    assert "user -> wallet" in info.value.message
    with pytest.raises(SchemaViolation):
        plan_create(store.graph, "team:2", PARENT, "org:2", {}, NOW)
    assert state(store.graph) == before


def test_plan__schema_applies_to_new_relationships_only(store: Store) -> None:
    store.create("wallet:1", OWNER, "user:1")
    store.graph.schema = Schema.parse({"owner": ["user -> wallet"]})
    (outcome,), _ = store.run(update_("wallet:1", OWNER, "user:1", {"kept": True}))
    assert outcome.output["relationship"]["version"] == 2
    store.run(delete_("wallet:1", OWNER, "user:1"))
    assert store.records.data == {}


# --------------------------------------------------------------------------- recovery


def test_graph__load__rebuilds_the_index_from_the_records(store: Store) -> None:
    store.create("a", OWNER, "b", {"k": 1})
    store.create("c", CHILD, "a", expires_at=LATER)
    store.create("b", LINKED, "a")
    fresh = Graph("ns", store.records)
    for rel in store.records.data.values():
        fresh.load(rel.key, rel.expires_at.timestamp() if rel.expires_at else None)
    assert state(fresh) == state(store.graph)
    assert fresh.next_expiry() == LATER.timestamp()
    with pytest.raises(DuplicateRelationship):
        plan_create(fresh, "a", PARENT, "c", {}, NOW)
    with pytest.raises(CycleDetected):
        plan_create(fresh, "c", PARENT, "a", {}, NOW)
    assert fresh.get(RelationshipKey("a", OWNER, "b")) == store.records.data[RelationshipKey("a", OWNER, "b")]


def test_graph__unload__forgets_a_relationship(store: Store) -> None:
    store.create("a", OWNER, "b")
    store.graph.unload(RelationshipKey("a", OWNER, "b"))
    assert len(store.graph) == 0
    assert store.graph.get(RelationshipKey("a", OWNER, "b")) is None


# --------------------------------------------------------------------------- properties

ENTITIES = ["a", "b", "c", "d"]
operations = st.lists(
    st.tuples(
        st.sampled_from(["create", "update", "delete", "delete_entity", "commit", "rollback"]),
        st.sampled_from(ENTITIES),
        st.sampled_from(list(RelationType)),
        st.sampled_from(ENTITIES),
    ),
    max_size=40,
)


def _model_cycle(model: set[RelationshipKey], key: RelationshipKey) -> bool:
    """Would adding `key` (a parent relationship) close a parent cycle in `model`?"""
    if key.type is not PARENT:
        return False
    reach, frontier = {key.target}, [key.target]
    while frontier:
        node = frontier.pop()
        for k in model:
            if k.type is PARENT and k.source == node and k.target not in reach:
                reach.add(k.target)
                frontier.append(k.target)
    return key.source in reach


PLANS: dict[str, Callable[[Graph, str, RelationType, str], Outcome]] = {
    "create": lambda g, s, t, d: plan_create(g, s, t, d, {"by": f"{s}>{d}"}, NOW),
    "update": lambda g, s, t, d: plan_update(g, s, t, d, {"u": 1}, LATER),
    "delete": lambda g, s, t, d: plan_delete(g, s, t, d),
    "delete_entity": lambda g, s, t, d: plan_delete_entity(g, s, 100),
}


def _try_plan(graph: Graph, op: str, source: str, type_: RelationType, target: str) -> bool:
    """Plan one command; False when it was refused (and then it changed nothing)."""
    before = state(graph)
    try:
        PLANS[op](graph, source, type_, target)
    except NexusError:
        assert state(graph) == before
        return False
    return True


def _model_after(
    model: set[RelationshipKey], op: str, source: str, type_: RelationType, target: str
) -> tuple[bool, set[RelationshipKey]]:
    """(whether the plan must succeed, the model after it)."""
    key = canonical_key(source, type_, target)
    if op == "delete_entity":
        return True, {k for k in model if source not in (k.source, k.target)}
    if source == target:
        return False, model
    if op == "create":
        ok = key not in model and not _model_cycle(model, key)
        return ok, model | {key} if ok else model
    if op == "delete":
        return key in model, model - {key}
    return key in model, model


@settings(max_examples=300, deadline=None)
@given(operations)
def test_graph__property__unit_of_work_matches_a_model(
    steps: list[tuple[str, str, RelationType, str]],
) -> None:
    """Random plans, commits and rollbacks: the graph always holds what a naive model holds,
    and after each commit the durable records agree with the index."""
    store = Store()
    graph = store.graph
    committed: set[RelationshipKey] = set()
    model: set[RelationshipKey] = set()  # committed + the open unit
    for op, source, type_, target in steps:
        if op == "commit":
            store.records.apply(graph.commit())
            committed = set(model)
            assert_consistent(store)
        elif op == "rollback":
            graph.rollback(0)
            model = set(committed)
        else:
            expected, model = _model_after(model, op, source, type_, target)
            assert _try_plan(graph, op, source, type_, target) == expected
        assert index_keys(graph) == model
        assert all(graph.get(k) is not None for k in model)
    graph.rollback(0)
    assert index_keys(graph) == committed == set(store.records.data)
