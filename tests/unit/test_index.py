"""GraphIndex: the compact adjacency index answers exactly what a naive set of keys answers.

`steps` (below) is the naive reading of direction and types that the algorithm and analysis tests
use as their oracle too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_streams.domain.index import TYPE_CODES, Direction, GraphIndex
from nexus_streams.domain.relationships import RelationshipKey, RelationType, canonical_key

OWNER, MEMBER, LINKED, PARENT, CHILD = (
    RelationType.OWNER,
    RelationType.MEMBER,
    RelationType.LINKED,
    RelationType.PARENT,
    RelationType.CHILD,
)
OUT, IN, BOTH = Direction.OUT, Direction.IN, Direction.BOTH
ENTITIES = [f"e{i}" for i in range(8)]


# --------------------------------------------------------------------------- naive model


def steps(
    keys: Iterable[RelationshipKey],
    direction: Direction = BOTH,
    types: Iterable[RelationType] | None = None,
) -> list[tuple[str, str, RelationshipKey]]:
    """Every (from, to, key) step the relationships allow, read as the spec reads them:
    `child` is parent backwards, `linked` goes both ways whatever the direction."""
    wanted = set(RelationType) if types is None else set(types)
    forward = direction in (OUT, BOTH)
    backward = direction in (IN, BOTH)
    found = []
    for key in keys:
        s, t = key.source, key.target
        if key.type is LINKED:
            if LINKED in wanted:
                found += [(s, t, key), (t, s, key)]
            continue
        inverse = CHILD if key.type is PARENT else None
        if (key.type in wanted and forward) or (inverse in wanted and backward):
            found.append((s, t, key))
        if (key.type in wanted and backward) or (inverse in wanted and forward):
            found.append((t, s, key))
    return found


def random_keys() -> st.SearchStrategy[list[RelationshipKey]]:
    """Small random graphs in canonical form (duplicates possible: the index ignores them)."""
    edge = st.tuples(
        st.sampled_from(ENTITIES), st.sampled_from(list(RelationType)), st.sampled_from(ENTITIES)
    ).filter(lambda e: e[0] != e[2])
    return st.lists(edge, max_size=30).map(lambda es: [canonical_key(*e) for e in es])


def index_of(keys: Iterable[RelationshipKey]) -> GraphIndex:
    index = GraphIndex()
    for key in keys:
        index.add(key)
    return index


def keys_in(index: GraphIndex) -> set[RelationshipKey]:
    return {key for entity in index.entities() for key in index.edges_of(entity)}


def assert_matches_model(index: GraphIndex, model: set[RelationshipKey]) -> None:
    assert keys_in(index) == model
    assert len(index) == len(model)
    touched = Counter(e for key in model for e in (key.source, key.target))
    assert set(index.entities()) == set(touched)
    assert index.entity_count == len(touched)
    for entity in ENTITIES:
        assert (entity in index) == (entity in touched)
        assert sorted(index.edges_of(entity), key=repr) == sorted(
            (k for k in model if entity in (k.source, k.target)), key=repr
        )
    assert index.counts_by_type() == {
        t.value: sum(k.type is t for k in model) for t in (OWNER, MEMBER, LINKED, PARENT)
    }
    assert index.degree_histogram() == dict(sorted(Counter(touched.values()).items()))
    for key in model:
        assert index.has(key)


# --------------------------------------------------------------------------- tables

K_OWN = RelationshipKey("user:1", OWNER, "wallet:1")
K_MEM = RelationshipKey("user:1", MEMBER, "group:1")
K_LINK = RelationshipKey("user:1", LINKED, "user:2")
K_PAR = RelationshipKey("org:1", PARENT, "user:1")
SAMPLE = [K_OWN, K_MEM, K_LINK, K_PAR]

NEIGHBOR_CASES = [
    # (direction, types, expected neighbours of user:1)
    (BOTH, None, {"wallet:1", "group:1", "user:2", "org:1"}),
    # every type includes child: parent read backwards leads from user:1 to org:1
    (OUT, None, {"wallet:1", "group:1", "user:2", "org:1"}),
    (IN, None, {"user:2", "org:1"}),
    (OUT, [OWNER], {"wallet:1"}),
    (IN, [OWNER], set()),
    (OUT, [LINKED], {"user:2"}),
    (IN, [LINKED], {"user:2"}),
    (OUT, [PARENT], set()),
    (IN, [PARENT], {"org:1"}),
    (OUT, [CHILD], {"org:1"}),  # user:1 is a child of org:1
    (IN, [CHILD], set()),
    (BOTH, [CHILD], {"org:1"}),
    (BOTH, [OWNER, MEMBER], {"wallet:1", "group:1"}),
]


@pytest.mark.parametrize(("direction", "types", "expected"), NEIGHBOR_CASES, ids=repr)
def test_index__neighbors__follow_direction_and_types(
    direction: Direction, types: list[RelationType] | None, expected: set[str]
) -> None:
    index = index_of(SAMPLE)
    found = index.neighbors("user:1", direction, types)
    naive = {(b, k) for a, b, k in steps(SAMPLE, direction, types) if a == "user:1"}
    assert set(found) == naive
    assert {other for other, _ in found} == expected


STEP_CODE_CASES = [
    # (direction, types, codes on the out-array, codes on the in-array)
    (OUT, [OWNER], {0}, set()),
    (IN, [OWNER], set(), {0}),
    (BOTH, [MEMBER], {1}, {1}),
    (OUT, [LINKED], {2}, {2}),
    (IN, [LINKED], {2}, {2}),
    (OUT, [PARENT], {3}, set()),
    (OUT, [CHILD], set(), {3}),
    (IN, [CHILD], {3}, set()),
    (OUT, [PARENT, CHILD], {3}, {3}),
    (OUT, None, {0, 1, 2, 3}, {2, 3}),
    (BOTH, None, {0, 1, 2, 3}, {0, 1, 2, 3}),
]


@pytest.mark.parametrize(("direction", "types", "out_codes", "in_codes"), STEP_CODE_CASES, ids=repr)
def test_index__step_codes__per_array(
    direction: Direction, types: list[RelationType] | None, out_codes: set[int], in_codes: set[int]
) -> None:
    assert GraphIndex().step_codes(direction, types) == (frozenset(out_codes), frozenset(in_codes))


def test_index__add__twice_is_a_no_op() -> None:
    index = GraphIndex()
    assert index.add(K_OWN) is True
    assert index.add(K_OWN) is False
    assert_matches_model(index, {K_OWN})


def test_index__add__same_ends_different_types_are_different_relationships() -> None:
    keys = {K_OWN, RelationshipKey("user:1", MEMBER, "wallet:1")}
    index = index_of(keys)
    assert_matches_model(index, keys)
    assert index.degree_histogram() == {2: 2}


def test_index__remove__missing_is_a_no_op() -> None:
    index = index_of([K_OWN])
    assert index.remove(K_MEM) is False
    assert index.remove(RelationshipKey("nobody", OWNER, "nothing")) is False
    assert_matches_model(index, {K_OWN})


def test_index__remove__last_relationship_releases_both_entities() -> None:
    index = index_of([K_OWN])
    assert index.remove(K_OWN) is True
    assert_matches_model(index, set())
    assert "user:1" not in index
    assert index.node_of("user:1") is None
    assert index.degree_histogram() == {}


def test_index__released_node_numbers__are_reused() -> None:
    index = index_of([K_OWN])
    capacity = index.node_capacity
    index.remove(K_OWN)
    index.add(RelationshipKey("a", OWNER, "b"))
    assert index.node_capacity == capacity
    names, outs, ins = index.adjacency_lists()
    assert sorted(n for n in names if n is not None) == ["a", "b"]
    a, b = index.node_of("a"), index.node_of("b")
    assert a is not None and b is not None
    assert index.name_of(a) == "a"
    assert list(outs[a] or ()) == [b * 8 + TYPE_CODES[OWNER]]
    assert list(ins[b] or ()) == [a * 8 + TYPE_CODES[OWNER]]
    assert index.out_array(b) is None and index.in_array(a) is None


def test_index__tables__are_the_live_structures() -> None:
    index = GraphIndex()
    ids, names, outs, ins = index.tables
    key = canonical_key("user:1", OWNER, "wallet:1")
    index.add(key)
    u, w = ids["user:1"], ids["wallet:1"]
    assert (names[u], names[w]) == ("user:1", "wallet:1")
    assert list(outs[u] or ()) == [w * 8 + TYPE_CODES[OWNER]]
    assert list(ins[w] or ()) == [u * 8 + TYPE_CODES[OWNER]]
    index.remove(key)
    assert len(ids) == 0 and "user:1" not in ids and ids.get("wallet:1") is None
    assert names == [None, None] and outs == ins == [None, None]
    assert index.tables == (ids, names, outs, ins)


def test_index__counts_and_histogram__sample() -> None:
    index = index_of(SAMPLE)
    assert len(index) == 4
    assert index.entity_count == 5
    assert index.counts_by_type() == {"owner": 1, "member": 1, "linked": 1, "parent": 1}
    assert index.degree_histogram() == {1: 4, 4: 1}


# --------------------------------------------------------------------------- properties

operations = st.lists(st.tuples(st.booleans(), random_keys().filter(bool).map(lambda ks: ks[0])), max_size=60)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_index__random_add_remove__matches_a_set_of_keys(
    ops: list[tuple[bool, RelationshipKey]],
) -> None:
    index = GraphIndex()
    model: set[RelationshipKey] = set()
    for adding, key in ops:
        if adding:
            assert index.add(key) is (key not in model)
            model.add(key)
        else:
            assert index.remove(key) is (key in model)
            model.discard(key)
    assert_matches_model(index, model)


@settings(max_examples=200, deadline=None)
@given(
    random_keys(),
    st.sampled_from(list(Direction)),
    st.none() | st.sets(st.sampled_from(list(RelationType)), min_size=1),
)
def test_index__neighbors__match_the_naive_steps(
    keys: list[RelationshipKey], direction: Direction, types: set[RelationType] | None
) -> None:
    index = index_of(keys)
    model = set(keys)
    for entity in ENTITIES:
        found = index.neighbors(entity, direction, types)
        assert len(found) == len(set(found))
        assert set(found) == {(b, k) for a, b, k in steps(model, direction, types) if a == entity}
