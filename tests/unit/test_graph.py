"""Graph, plan_create and plan_delete: planning never touches the graph, applying keeps the
relationships and the adjacency index in step."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_streams.domain.errors import (
    DuplicateRelationship,
    ErrorCode,
    InvalidRelationship,
    NexusError,
    NotFound,
)
from nexus_streams.domain.graph import (
    DomainEvent,
    Graph,
    Outcome,
    Put,
    Remove,
    plan_create,
    plan_delete,
)
from nexus_streams.domain.relationships import (
    MAX_METADATA_BYTES,
    Relationship,
    RelationshipKey,
    RelationType,
    canonical_key,
)

OWNER, MEMBER, LINKED, PARENT, CHILD = (
    RelationType.OWNER,
    RelationType.MEMBER,
    RelationType.LINKED,
    RelationType.PARENT,
    RelationType.CHILD,
)
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LATER = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)

Command = tuple[str, RelationType, str]


def create(graph: Graph, source: str, type_: RelationType, target: str, **kw: Any) -> Outcome:
    outcome = plan_create(graph, source, type_, target, kw.pop("metadata", {}), NOW, **kw)
    graph.apply(outcome.changes)
    return outcome


def delete(graph: Graph, source: str, type_: RelationType, target: str) -> Outcome:
    outcome = plan_delete(graph, source, type_, target)
    graph.apply(outcome.changes)
    return outcome


def snapshot(graph: Graph) -> tuple[Any, ...]:
    """Everything the graph holds, including its adjacency index (white-box on purpose)."""

    def index(by_node: Any) -> dict[str, dict[RelationType, frozenset[str]]]:
        return {n: {t: frozenset(p) for t, p in by_t.items()} for n, by_t in by_node.items()}

    rels = {k: r.to_dict() for k, r in graph._relationships.items()}
    return rels, index(graph._out), index(graph._in)


def assert_index_consistent(graph: Graph, entities: set[str]) -> None:
    """targets/sources answer exactly what the stored relationships say, in both directions."""
    rels = graph.relationships()
    assert len(graph) == len(rels)
    for rel in rels:
        assert rel.key in graph
        assert graph.get(rel.key) is rel
        assert rel.type is not CHILD
        assert rel.namespace == graph.namespace
    for node in entities | {r.source for r in rels} | {r.target for r in rels}:
        for type_ in RelationType:
            expected_targets = {r.target for r in rels if r.source == node and r.type is type_}
            expected_sources = {r.source for r in rels if r.target == node and r.type is type_}
            assert graph.targets(node, type_) == expected_targets
            assert graph.sources(node, type_) == expected_sources
    # no stale entries: every node and type in the index has at least one relationship
    assert set(graph._out) == {r.source for r in rels}
    assert set(graph._in) == {r.target for r in rels}
    for by_node in (graph._out, graph._in):
        for by_type in by_node.values():
            assert by_type
            assert all(peers for peers in by_type.values())


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
def test_graph__create__visible_via_get_targets_sources(written: Command, stored: Command) -> None:
    graph = Graph("ns")
    create(graph, *written, metadata={"k": "v"})
    source, type_, target = stored
    key = RelationshipKey(source, type_, target)
    rel = graph.get(key)
    assert rel == Relationship("ns", source, type_, target, {"k": "v"}, 1, NOW, NOW, None)
    assert key in graph
    assert len(graph) == 1
    assert graph.relationships() == [rel]
    assert graph.targets(source, type_) == {target}
    assert graph.sources(target, type_) == {source}
    # canonical direction only: nothing the other way round, nothing of other types
    assert graph.targets(target, type_) == set()
    assert graph.sources(source, type_) == set()
    for other in RelationType:
        if other is not type_:
            assert graph.targets(source, other) == set()
            assert graph.sources(target, other) == set()
    assert_index_consistent(graph, {source, target})


def test_graph__targets_sources__of_unknown_entity__empty_and_not_indexed() -> None:
    graph = Graph("ns")
    assert graph.targets("nobody", OWNER) == set()
    assert graph.sources("nobody", OWNER) == set()
    assert graph.get(RelationshipKey("a", OWNER, "b")) is None
    assert len(graph) == 0
    assert snapshot(graph) == ({}, {}, {})


def test_graph__targets__returns_a_copy() -> None:
    graph = Graph("ns")
    create(graph, "a", OWNER, "b")
    graph.targets("a", OWNER).add("zzz")
    graph.sources("b", OWNER).add("zzz")
    assert graph.targets("a", OWNER) == {"b"}
    assert graph.sources("b", OWNER) == {"a"}


def test_graph__fan_out_and_fan_in() -> None:
    graph = Graph("ns")
    for wallet in ("w1", "w2", "w3"):
        create(graph, "user:1", OWNER, wallet)
    for user in ("u2", "u3"):
        create(graph, user, OWNER, "w1")
    create(graph, "team:1", CHILD, "org:1")
    create(graph, "team:2", CHILD, "org:1")
    assert graph.targets("user:1", OWNER) == {"w1", "w2", "w3"}
    assert graph.sources("w1", OWNER) == {"user:1", "u2", "u3"}
    assert graph.targets("org:1", PARENT) == {"team:1", "team:2"}
    assert graph.sources("team:1", PARENT) == {"org:1"}
    assert len(graph) == 7
    assert_index_consistent(graph, set())


def test_plan_create__outcome() -> None:
    graph = Graph("ns")
    outcome = plan_create(graph, "team:1", CHILD, "org:1", {"k": 1}, NOW, LATER)
    rel = Relationship("ns", "org:1", PARENT, "team:1", {"k": 1}, 1, NOW, NOW, LATER)
    assert outcome.changes == [Put(rel)]
    assert outcome.output == {"relationship": rel.to_dict()}
    assert outcome.events == [DomainEvent("relationship_created", {"relationship": rel.to_dict()})]
    assert outcome.output["relationship"]["expires_at"] == "2024-06-01T12:00:00Z"


def test_plan_create__does_not_touch_the_graph() -> None:
    graph = Graph("ns")
    plan_create(graph, "a", OWNER, "b", {}, NOW)
    assert len(graph) == 0
    assert snapshot(graph) == ({}, {}, {})


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
def test_plan_create__duplicate(first: Command, second: Command) -> None:
    graph = Graph("ns")
    create(graph, *first, metadata={"v": 1})
    before = snapshot(graph)
    with pytest.raises(DuplicateRelationship) as info:
        plan_create(graph, *second, {"v": 2}, LATER)
    err = info.value
    assert err.code is ErrorCode.DUPLICATE_RELATIONSHIP
    assert err.to_dict()["code"] == "duplicate_relationship"
    # the error names the relationship as the request wrote it
    assert err.details == {"source": second[0], "type": second[1].value, "target": second[2]}
    assert snapshot(graph) == before


NOT_DUPLICATES = [
    (("a", OWNER, "b"), ("b", OWNER, "a")),
    (("a", MEMBER, "b"), ("b", MEMBER, "a")),
    (("a", OWNER, "b"), ("a", MEMBER, "b")),
    (("a", PARENT, "b"), ("b", PARENT, "a")),
    (("a", PARENT, "b"), ("a", CHILD, "b")),
    (("a", LINKED, "b"), ("a", PARENT, "b")),
    (("a", LINKED, "b"), ("a", LINKED, "c")),
    (("a", OWNER, "b"), ("a", OWNER, "c")),
]


@pytest.mark.parametrize(("first", "second"), NOT_DUPLICATES, ids=repr)
def test_plan_create__distinct_relationships__both_kept(first: Command, second: Command) -> None:
    graph = Graph("ns")
    create(graph, *first)
    create(graph, *second)
    assert len(graph) == 2
    assert canonical_key(*first) in graph
    assert canonical_key(*second) in graph
    assert_index_consistent(graph, set())


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
def test_plan_delete__any_form__removes_it(created: Command, deleted: Command) -> None:
    graph = Graph("ns")
    create(graph, "x", OWNER, "y")  # an unrelated relationship stays
    create(graph, *created, metadata={"k": "v"})
    rel = graph.get(canonical_key(*created))
    assert rel is not None
    outcome = delete(graph, *deleted)
    assert outcome.changes == [Remove(rel)]
    assert outcome.output == {"relationship": rel.to_dict()}
    assert outcome.events == [DomainEvent("relationship_deleted", {"relationship": rel.to_dict()})]
    assert canonical_key(*created) not in graph
    assert len(graph) == 1
    for node in ("a", "b"):
        for type_ in RelationType:
            assert graph.targets(node, type_) == set()
            assert graph.sources(node, type_) == set()
    assert_index_consistent(graph, {"a", "b"})


def test_plan_delete__does_not_touch_the_graph() -> None:
    graph = Graph("ns")
    create(graph, "a", OWNER, "b")
    before = snapshot(graph)
    plan_delete(graph, "a", OWNER, "b")
    assert snapshot(graph) == before


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
def test_plan_delete__missing__not_found(existing: list[Command], deleted: Command) -> None:
    graph = Graph("ns")
    for command in existing:
        create(graph, *command)
    before = snapshot(graph)
    with pytest.raises(NotFound) as info:
        plan_delete(graph, *deleted)
    assert info.value.to_dict()["code"] == "not_found"
    assert info.value.details == {
        "source": deleted[0],
        "type": deleted[1].value,
        "target": deleted[2],
    }
    assert "'ns'" in info.value.message
    assert snapshot(graph) == before


def test_plan_delete__twice__second_not_found() -> None:
    graph = Graph("ns")
    create(graph, "a", OWNER, "b")
    delete(graph, "a", OWNER, "b")
    with pytest.raises(NotFound):
        plan_delete(graph, "a", OWNER, "b")


def test_plan_create__after_delete__creates_again() -> None:
    graph = Graph("ns")
    create(graph, "a", LINKED, "b")
    delete(graph, "b", LINKED, "a")
    outcome = plan_create(graph, "b", LINKED, "a", {"again": True}, LATER)
    graph.apply(outcome.changes)
    rel = graph.get(RelationshipKey("a", LINKED, "b"))
    assert rel is not None
    assert (rel.metadata, rel.created_at) == ({"again": True}, LATER)


def test_graph__apply__remove_of_absent__is_harmless() -> None:
    graph = Graph("ns")
    create(graph, "a", OWNER, "b")
    before = snapshot(graph)
    graph.apply([Remove(Relationship("ns", "x", OWNER, "y"))])
    graph.apply([Remove(Relationship("ns", "a", MEMBER, "b"))])
    assert snapshot(graph) == before


# --------------------------------------------------------------------------- failed plans

FAILED_PLANS = [
    ("create self", lambda g: plan_create(g, "a", OWNER, "a", {}, NOW), InvalidRelationship),
    ("create empty", lambda g: plan_create(g, "", OWNER, "b", {}, NOW), InvalidRelationship),
    ("create space", lambda g: plan_create(g, "a", OWNER, "b c", {}, NOW), InvalidRelationship),
    (
        "create big metadata",
        lambda g: plan_create(g, "a", OWNER, "z", {"k": "x" * MAX_METADATA_BYTES}, NOW),
        InvalidRelationship,
    ),
    ("create duplicate", lambda g: plan_create(g, "a", OWNER, "b", {}, NOW), DuplicateRelationship),
    (
        "create duplicate child",
        lambda g: plan_create(g, "c", CHILD, "a", {}, NOW),
        DuplicateRelationship,
    ),
    (
        "create duplicate linked",
        lambda g: plan_create(g, "b", LINKED, "a", {}, NOW),
        DuplicateRelationship,
    ),
    ("delete missing", lambda g: plan_delete(g, "b", OWNER, "a"), NotFound),
    ("delete self", lambda g: plan_delete(g, "a", OWNER, "a"), InvalidRelationship),
    ("delete control char", lambda g: plan_delete(g, "a\x00", OWNER, "b"), InvalidRelationship),
]


@pytest.mark.parametrize(
    ("plan", "error"), [p[1:] for p in FAILED_PLANS], ids=[p[0] for p in FAILED_PLANS]
)
def test_plan__failed__changes_nothing(plan: Any, error: type[NexusError]) -> None:
    graph = Graph("ns")
    create(graph, "a", OWNER, "b")
    create(graph, "a", PARENT, "c")
    create(graph, "a", LINKED, "b")
    before = snapshot(graph)
    with pytest.raises(error):
        plan(graph)
    assert snapshot(graph) == before


# --------------------------------------------------------------------------- properties

ENTITIES = ["a", "b", "c", "d"]
commands = st.lists(
    st.tuples(
        st.sampled_from(["create", "delete"]),
        st.sampled_from(ENTITIES),
        st.sampled_from(list(RelationType)),
        st.sampled_from(ENTITIES),
    ),
    max_size=40,
)


def run(graph: Graph, op: str, source: str, type_: RelationType, target: str) -> bool:
    """Plan and apply one command; False when the plan was refused (and changed nothing)."""
    before = snapshot(graph)
    try:
        if op == "create":
            outcome = plan_create(graph, source, type_, target, {"by": f"{source}>{target}"}, NOW)
        else:
            outcome = plan_delete(graph, source, type_, target)
    except NexusError:
        assert snapshot(graph) == before
        return False
    graph.apply(outcome.changes)
    return True


@settings(max_examples=300, deadline=None)
@given(commands)
def test_graph__property__index_consistent_with_relationships(
    steps: list[tuple[str, str, RelationType, str]],
) -> None:
    graph = Graph("ns")
    model: set[RelationshipKey] = set()  # the canonical keys that must be stored
    for op, source, type_, target in steps:
        key = canonical_key(source, type_, target)
        ok = run(graph, op, source, type_, target)
        if source == target:
            assert not ok
        elif op == "create":
            assert ok == (key not in model)
            model.add(key)
        else:
            assert ok == (key in model)
            model.discard(key)
        assert {r.key for r in graph.relationships()} == model
        assert_index_consistent(graph, set(ENTITIES))


@settings(max_examples=300, deadline=None)
@given(commands)
def test_graph__property__replaying_a_create__duplicate_and_no_op(
    steps: list[tuple[str, str, RelationType, str]],
) -> None:
    graph = Graph("ns")
    succeeded: list[Command] = []
    for op, source, type_, target in steps:
        if not run(graph, op, source, type_, target) or op != "create":
            continue
        succeeded.append((source, type_, target))
        # replayed right away, as written and in its inverse form
        inverse = {PARENT: CHILD, CHILD: PARENT, LINKED: LINKED}.get(type_)
        replays = [(source, type_, target)]
        if inverse is not None:
            replays.append((target, inverse, source))
        for replay in replays:
            before = snapshot(graph)
            with pytest.raises(DuplicateRelationship):
                plan_create(graph, *replay, {"other": "metadata"}, LATER)
            assert snapshot(graph) == before
    # at the end, every create that succeeded and was not deleted since is still a duplicate
    for command in succeeded:
        before = snapshot(graph)
        if canonical_key(*command) in graph:
            with pytest.raises(DuplicateRelationship):
                plan_create(graph, *command, {}, LATER)
        else:
            plan_create(graph, *command, {}, LATER)  # planning alone changes nothing
        assert snapshot(graph) == before
    assert_index_consistent(graph, set(ENTITIES))
