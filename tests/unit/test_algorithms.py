"""Bounded traversals on the index: tables for the semantics, networkx as the oracle."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_streams.domain import algorithms
from nexus_streams.domain.algorithms import (
    Path,
    Traversal,
    dependency_types,
    detect_cycles_from,
    find_path,
    resolve_dependencies,
    traverse,
    use_native,
)
from nexus_streams.domain.analysis import capture, detect_cycles_all
from nexus_streams.domain.errors import (
    CycleDetected,
    ErrorCode,
    ResourceLimit,
    UnknownRelationshipType,
    ValidationFailed,
)
from nexus_streams.domain.index import Direction, GraphIndex
from nexus_streams.domain.relationships import RelationshipKey, RelationType, canonical_key, make_key
from tests.unit.test_index import ENTITIES, index_of, keys_in, random_keys, steps

OWNER, MEMBER, LINKED, PARENT, CHILD = (
    RelationType.OWNER,
    RelationType.MEMBER,
    RelationType.LINKED,
    RelationType.PARENT,
    RelationType.CHILD,
)
OUT, IN, BOTH = Direction.OUT, Direction.IN, Direction.BOTH
DEFAULT_DEPENDENCIES = [OWNER, MEMBER, PARENT]


def K(source: str, type_: RelationType, target: str) -> RelationshipKey:
    return canonical_key(source, type_, target)


def graph(*edges: tuple[str, RelationType, str]) -> GraphIndex:
    return index_of(K(*e) for e in edges)


def oracle(
    keys: Iterable[RelationshipKey],
    direction: Direction = BOTH,
    types: Iterable[RelationType] | None = None,
) -> nx.DiGraph:
    """The same steps as a networkx digraph (every entity with a relationship is a node)."""
    keys = list(keys)
    g = nx.DiGraph()
    g.add_nodes_from(e for k in keys for e in (k.source, k.target))
    g.add_edges_from((a, b) for a, b, _ in steps(keys, direction, types))
    return g


def assert_walk(
    index: GraphIndex,
    entities: list[str],
    keys: list[RelationshipKey],
    direction: Direction,
    types: Iterable[RelationType] | None,
) -> None:
    """Each key is a stored relationship that allows the step it is used for."""
    allowed = set(steps(keys, direction, types))
    assert len(keys) == len(entities) - 1
    for a, b, key in zip(entities, entities[1:], keys, strict=False):
        assert index.has(key)
        assert (a, b, key) in allowed


#: the order find_path prefers the types in, when several relationships allow one step
CODE_ORDER = [OWNER, MEMBER, LINKED, PARENT]


def assert_preferred_keys(
    keys: Iterable[RelationshipKey],
    path: Path,
    direction: Direction,
    types: Iterable[RelationType] | None,
) -> None:
    """Each step a -> b uses, of the relationships that allow it, one stored as a -> b if any,
    and of those the first type of CODE_ORDER."""
    allowed = steps(set(keys), direction, types)
    assert len(path.relationships) == len(path.entities) - 1
    for a, b, key in zip(path.entities, path.entities[1:], path.relationships, strict=False):
        candidates = [k for x, y, k in allowed if (x, y) == (a, b)]
        assert key == min(candidates, key=lambda k: (k.source != a, CODE_ORDER.index(k.type)))


# --------------------------------------------------------------------------- find_path


def require_native() -> None:
    """The C search must be there: the dev install builds it (never a skip in CI)."""
    if not algorithms.NATIVE_AVAILABLE:
        pytest.fail("the C search is not built (make install builds it) or NEXUS_STREAMS_PURE_PYTHON is set")


@contextmanager
def search_in(native: bool) -> Iterator[None]:
    """Runs the block with the C search (native) or the Python one, then restores the previous."""
    before = algorithms.NATIVE
    use_native(native)
    try:
        yield
    finally:
        use_native(before)


@pytest.fixture(params=["c", "python"])
def search(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a find_path test with the C search and with the Python one (the reference)."""
    native = request.param == "c"
    if native:
        require_native()
    with search_in(native):
        yield request.param


CHAIN = graph(
    ("user:1", OWNER, "wallet:1"),
    ("user:2", OWNER, "wallet:1"),
    ("user:2", MEMBER, "group:1"),
    ("group:1", CHILD, "org:1"),  # stored as org:1 parent group:1
    ("user:3", LINKED, "user:2"),  # stored as user:2 linked user:3
)

FIND_PATH_CASES = [
    # (source, target, max_depth, direction, types, expected entities or None)
    ("user:1", "wallet:1", 1, BOTH, None, ["user:1", "wallet:1"]),
    ("wallet:1", "user:1", 1, BOTH, None, ["wallet:1", "user:1"]),
    ("wallet:1", "user:1", 1, OUT, None, None),  # owner leads from the owner only
    ("wallet:1", "user:1", 1, IN, None, ["wallet:1", "user:1"]),
    ("user:1", "user:2", 2, BOTH, None, ["user:1", "wallet:1", "user:2"]),
    ("user:1", "user:2", 1, BOTH, None, None),  # too deep
    ("user:1", "user:2", 2, OUT, None, None),
    ("user:1", "group:1", 3, BOTH, None, ["user:1", "wallet:1", "user:2", "group:1"]),
    ("user:1", "group:1", 3, BOTH, [OWNER], None),
    ("user:1", "group:1", 3, BOTH, [OWNER, MEMBER], ["user:1", "wallet:1", "user:2", "group:1"]),
    ("group:1", "org:1", 1, OUT, [CHILD], ["group:1", "org:1"]),
    ("group:1", "org:1", 1, OUT, [PARENT], None),
    ("org:1", "group:1", 1, OUT, [PARENT], ["org:1", "group:1"]),
    ("org:1", "group:1", 1, IN, [CHILD], ["org:1", "group:1"]),
    ("user:2", "user:3", 1, OUT, [LINKED], ["user:2", "user:3"]),  # linked reads both ways
    ("user:3", "user:2", 1, OUT, [LINKED], ["user:3", "user:2"]),
    ("user:3", "user:2", 1, IN, [LINKED], ["user:3", "user:2"]),
    ("user:3", "org:1", 5, BOTH, None, ["user:3", "user:2", "group:1", "org:1"]),
    ("user:1", "user:1", 0, BOTH, None, ["user:1"]),
    ("nobody", "nobody", 3, BOTH, None, ["nobody"]),  # an entity always reaches itself
    ("user:1", "nobody", 3, BOTH, None, None),
    ("nobody", "user:1", 3, BOTH, None, None),
    ("user:1", "wallet:1", 0, BOTH, None, None),
]


@pytest.mark.usefixtures("search")
@pytest.mark.parametrize(
    ("source", "target", "max_depth", "direction", "types", "expected"), FIND_PATH_CASES, ids=repr
)
def test_find_path__table(
    source: str,
    target: str,
    max_depth: int,
    direction: Direction,
    types: list[RelationType] | None,
    expected: list[str] | None,
) -> None:
    path = find_path(CHAIN, source, target, max_depth=max_depth, direction=direction, types=types)
    if expected is None:
        assert path is None
        return
    assert path is not None
    assert path.entities == expected
    assert_walk(CHAIN, path.entities, path.relationships, direction, types)
    assert_preferred_keys(keys_in(CHAIN), path, direction, types)


@pytest.mark.usefixtures("search")
def test_find_path__relationships__are_canonical_keys_in_path_order() -> None:
    path = find_path(CHAIN, "user:3", "org:1", max_depth=5)
    assert path == Path(
        ["user:3", "user:2", "group:1", "org:1"],
        [
            RelationshipKey("user:2", LINKED, "user:3"),
            RelationshipKey("user:2", MEMBER, "group:1"),
            RelationshipKey("org:1", PARENT, "group:1"),
        ],
    )


def star(hub: str, leaves: int) -> GraphIndex:
    return graph(*((hub, OWNER, f"leaf:{i}") for i in range(leaves)))


@pytest.mark.usefixtures("search")
def test_find_path__visit_limit__raises_resource_limit() -> None:
    index = star("hub", 50)
    index.add(K("far:1", OWNER, "far:2"))
    with pytest.raises(ResourceLimit) as caught:
        find_path(index, "leaf:0", "far:1", max_depth=10, visit_limit=20)
    error = caught.value
    assert error.code is ErrorCode.RESOURCE_LIMIT
    assert error.details["limit"] == 20
    assert error.details["visited"] > 20
    assert find_path(index, "leaf:0", "far:1", max_depth=10, visit_limit=100) is None


@pytest.mark.usefixtures("search")
def test_find_path__visit_limit__not_reached_when_the_path_is_found_first() -> None:
    index = star("hub", 50)
    path = find_path(index, "leaf:0", "leaf:1", max_depth=2, visit_limit=3)
    assert path is not None and path.entities == ["leaf:0", "hub", "leaf:1"]


@pytest.mark.usefixtures("search")
@pytest.mark.parametrize(
    ("max_depth", "limit", "visited"),
    [(2, 20, 52), (2, 51, 52), (2, 52, None), (3, 51, 52), (3, 52, 53), (3, 53, None), (10, 52, 53)],
)
def test_find_path__visit_limit__counts_the_last_level_too(
    max_depth: int, limit: int, visited: int | None
) -> None:
    # leaf:0 - hub - 50 leaves: for max_depth 2, the level that reads the hub's entries is the
    # last one, which looks for the target without recording what it reaches
    index = star("hub", 50)
    index.add(K("far:1", OWNER, "far:2"))
    if visited is None:
        assert find_path(index, "leaf:0", "far:1", max_depth=max_depth, visit_limit=limit) is None
        return
    with pytest.raises(ResourceLimit) as caught:
        find_path(index, "leaf:0", "far:1", max_depth=max_depth, visit_limit=limit)
    assert caught.value.details == {"visited": visited, "limit": limit}


PARALLEL = graph(
    ("a", LINKED, "b"),  # stored as a linked b
    ("a", MEMBER, "b"),
    ("b", OWNER, "a"),
    ("b", PARENT, "c"),
    ("c", OWNER, "b"),
    ("d", MEMBER, "c"),
    ("d", OWNER, "c"),
)


@pytest.mark.usefixtures("search")
@pytest.mark.parametrize(
    ("source", "target", "direction", "types", "expected"),
    [
        # one step, then the same step last in a longer path
        ("a", "b", BOTH, None, [K("a", MEMBER, "b")]),
        ("b", "a", BOTH, None, [K("b", OWNER, "a")]),
        ("b", "a", IN, None, [K("a", MEMBER, "b")]),
        ("b", "a", BOTH, [LINKED, PARENT], [K("a", LINKED, "b")]),
        ("c", "d", BOTH, None, [K("d", OWNER, "c")]),
        ("c", "d", IN, None, [K("d", OWNER, "c")]),
        ("c", "b", BOTH, None, [K("c", OWNER, "b")]),
        ("c", "b", BOTH, [PARENT, MEMBER], [K("b", PARENT, "c")]),
        ("d", "a", BOTH, None, [K("d", OWNER, "c"), K("c", OWNER, "b"), K("b", OWNER, "a")]),
        ("a", "d", BOTH, None, [K("a", MEMBER, "b"), K("b", PARENT, "c"), K("d", OWNER, "c")]),
        ("a", "d", BOTH, [MEMBER, OWNER], [K("a", MEMBER, "b"), K("c", OWNER, "b"), K("d", OWNER, "c")]),
    ],
    ids=repr,
)
def test_find_path__parallel_relationships__out_array_first_then_lowest_type(
    source: str,
    target: str,
    direction: Direction,
    types: list[RelationType] | None,
    expected: list[RelationshipKey],
) -> None:
    path = find_path(PARALLEL, source, target, max_depth=3, direction=direction, types=types)
    assert path is not None
    assert path.relationships == expected
    assert_preferred_keys(keys_in(PARALLEL), path, direction, types)


@pytest.mark.usefixtures("search")
def test_find_path__answer__plain_path_and_keys() -> None:
    path = find_path(CHAIN, "user:1", "wallet:1", max_depth=1)
    assert type(path) is Path and type(path.relationships[0]) is RelationshipKey
    assert path == Path(["user:1", "wallet:1"], [RelationshipKey("user:1", OWNER, "wallet:1")])
    assert hash(path.relationships[0]) == hash(RelationshipKey("user:1", OWNER, "wallet:1"))


def test_make_key__same_as_the_constructor() -> None:
    key = make_key("user:1", OWNER, "wallet:1")
    assert key == RelationshipKey("user:1", OWNER, "wallet:1")
    assert hash(key) == hash(RelationshipKey("user:1", OWNER, "wallet:1"))
    assert repr(key) == repr(RelationshipKey("user:1", OWNER, "wallet:1"))
    with pytest.raises(AttributeError):
        key.source = "user:2"  # type: ignore[misc]


@pytest.mark.usefixtures("search")
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"max_depth": -1}, "max_depth"), ({"max_depth": 2, "types": []}, "types")],
    ids=repr,
)
def test_find_path__invalid_arguments__raise_validation_failed(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        find_path(CHAIN, "user:1", "user:2", **kwargs)  # type: ignore[arg-type]
    assert caught.value.details["field"] == field


# --------------------------------------------------------------------------- traverse

TRAVERSE_CASES = [
    # (start, max_depth, direction, types, expected (entity, depth) in BFS order)
    ("user:1", 1, BOTH, None, [("wallet:1", 1)]),
    ("user:1", 2, BOTH, None, [("wallet:1", 1), ("user:2", 2)]),
    (
        "user:1",
        9,
        BOTH,
        None,
        [("wallet:1", 1), ("user:2", 2), ("group:1", 3), ("user:3", 3), ("org:1", 4)],
    ),
    ("user:2", 1, OUT, None, [("wallet:1", 1), ("group:1", 1), ("user:3", 1)]),
    ("user:2", 5, OUT, [OWNER], [("wallet:1", 1)]),
    ("user:2", 5, OUT, [MEMBER, CHILD], [("group:1", 1), ("org:1", 2)]),
    ("wallet:1", 1, IN, None, [("user:1", 1), ("user:2", 1)]),
    ("wallet:1", 1, OUT, None, []),
    ("user:1", 0, BOTH, None, []),
    ("nobody", 3, BOTH, None, []),
]


@pytest.mark.parametrize(("start", "max_depth", "direction", "types", "expected"), TRAVERSE_CASES, ids=repr)
def test_traverse__table(
    start: str,
    max_depth: int,
    direction: Direction,
    types: list[RelationType] | None,
    expected: list[tuple[str, int]],
) -> None:
    walk = traverse(CHAIN, start, max_depth=max_depth, direction=direction, types=types)
    assert sorted(walk.entities) == sorted(expected)
    assert [d for _, d in walk.entities] == sorted(d for _, d in walk.entities)
    assert_tree(CHAIN, start, walk, direction, types)


def assert_tree(
    index: GraphIndex,
    start: str,
    walk: Traversal,
    direction: Direction,
    types: Iterable[RelationType] | None,
) -> None:
    """Each entity was reached by one allowed step from the start or an entity one level up."""
    depth_of = {start: 0} | dict(walk.entities)
    allowed = set(steps(walk.relationships, direction, types))
    assert len(walk.relationships) == len(walk.entities)
    for (entity, depth), key in zip(walk.entities, walk.relationships, strict=True):
        assert index.has(key)
        other = key.target if key.source == entity else key.source
        assert depth_of[other] == depth - 1
        assert (other, entity, key) in allowed


def test_traverse__relationships__are_the_tree_edges() -> None:
    walk = traverse(CHAIN, "org:1", max_depth=2)
    assert walk == Traversal(
        [("group:1", 1), ("user:2", 2)],
        [RelationshipKey("org:1", PARENT, "group:1"), RelationshipKey("user:2", MEMBER, "group:1")],
    )


@pytest.mark.parametrize(("limit", "raises"), [(49, True), (50, False), (51, False)])
def test_traverse__limit__raises_rather_than_truncates(limit: int, raises: bool) -> None:
    index = star("hub", 50)
    if not raises:
        assert len(traverse(index, "hub", max_depth=1, limit=limit).entities) == 50
        return
    with pytest.raises(ResourceLimit) as caught:
        traverse(index, "hub", max_depth=3, limit=limit)
    assert caught.value.details == {"limit": limit, "max_depth": 3}


# --------------------------------------------------------------------------- cycles

CYCLIC = graph(
    ("a", OWNER, "b"),
    ("b", MEMBER, "c"),
    ("c", OWNER, "a"),  # a -> b -> c -> a
    ("c", PARENT, "d"),
    ("d", CHILD, "e"),  # stored as e parent d: d -> e only by `child`
    ("e", OWNER, "d"),
    ("x", LINKED, "a"),
)

CYCLE_CASES = [
    # (entity, types, expected cycles as sets of rotations)
    ("a", None, [["a", "b", "c", "a"]]),
    ("b", None, [["b", "c", "a", "b"]]),
    ("d", None, []),
    ("e", None, []),
    ("e", [OWNER, CHILD], [["e", "d", "e"]]),
    ("d", [OWNER, CHILD], [["d", "e", "d"]]),
    ("c", [OWNER, CHILD], []),  # c parent d leads from d to c by `child`, not from c
    ("a", [OWNER], []),
    ("a", [OWNER, MEMBER], [["a", "b", "c", "a"]]),
    ("x", None, []),  # linked is not followed
    ("nobody", None, []),
]


@pytest.mark.parametrize(("entity", "types", "expected"), CYCLE_CASES, ids=repr)
def test_detect_cycles_from__table(
    entity: str, types: list[RelationType] | None, expected: list[list[str]]
) -> None:
    assert detect_cycles_from(CYCLIC, entity, types=types) == expected


@pytest.mark.parametrize(
    "types",
    [[LINKED], [OWNER, LINKED], [PARENT, CHILD], []],
    ids=repr,
)
def test_cycle_questions__symmetric_types__raise_validation_failed(
    types: list[RelationType],
) -> None:
    for ask in (
        lambda: detect_cycles_from(CYCLIC, "a", types=types),
        lambda: resolve_dependencies(CYCLIC, "a", types=types),
        lambda: dependency_types(types),
    ):
        with pytest.raises(ValidationFailed) as caught:
            ask()
        assert caught.value.details == {"field": "types"}


def test_detect_cycles_from__max_cycles__caps_the_answer() -> None:
    # a complete digraph on 4 entities has many cycles
    index = graph(*((f"n{i}", OWNER, f"n{j}") for i in range(4) for j in range(4) if i != j))
    assert len(detect_cycles_from(index, "n0", max_cycles=3)) == 3
    every = detect_cycles_from(index, "n0", max_cycles=100)
    assert len({tuple(c) for c in every}) == len(every)
    with pytest.raises(ValidationFailed):
        detect_cycles_from(index, "n0", max_cycles=0)


def test_detect_cycles_from__visit_limit__raises_resource_limit() -> None:
    index = graph(*((f"n{i}", OWNER, f"n{i + 1}") for i in range(100)))
    with pytest.raises(ResourceLimit) as caught:
        detect_cycles_from(index, "n0", visit_limit=50)
    assert caught.value.details == {"visited": 51, "limit": 50}


def test_detect_cycles_from__deep_chain__no_recursion_limit() -> None:
    index = graph(*((f"n{i}", OWNER, f"n{i + 1}") for i in range(5000)))
    index.add(K("n5000", OWNER, "n0"))
    (cycle,) = detect_cycles_from(index, "n0")
    assert len(cycle) == 5002 and cycle[0] == cycle[-1] == "n0"


# --------------------------------------------------------------------------- dependencies

DEPENDENCIES = graph(
    ("app", OWNER, "db"),
    ("app", OWNER, "cache"),
    ("cache", MEMBER, "net"),
    ("db", MEMBER, "net"),
    ("net", PARENT, "cable"),
    ("app", LINKED, "other"),
)


@pytest.mark.parametrize(
    ("entity", "types", "expected"),
    [
        ("app", None, ["cable", "net", "db", "cache", "app"]),
        ("app", [OWNER], ["db", "cache", "app"]),
        ("net", None, ["cable", "net"]),
        ("cable", None, ["cable"]),
        ("cable", [CHILD], ["net", "cable"]),  # read backwards: cable is a child of net
        ("other", None, ["other"]),  # linked is not a dependency
        ("nobody", None, ["nobody"]),
    ],
    ids=repr,
)
def test_resolve_dependencies__table(
    entity: str, types: list[RelationType] | None, expected: list[str]
) -> None:
    assert resolve_dependencies(DEPENDENCIES, entity, types=types) == expected


def test_resolve_dependencies__cycle__raises_cycle_detected_with_the_cycle() -> None:
    with pytest.raises(CycleDetected) as caught:
        resolve_dependencies(CYCLIC, "a")
    error = caught.value
    assert error.code is ErrorCode.CYCLE_DETECTED
    assert error.details == {"entity": "a", "cycle": ["a", "b", "c", "a"]}
    assert "a -> b -> c -> a" in error.message


def test_resolve_dependencies__visit_limit__raises_resource_limit() -> None:
    index = graph(*((f"n{i}", OWNER, f"n{i + 1}") for i in range(100)))
    with pytest.raises(ResourceLimit) as caught:
        resolve_dependencies(index, "n0", visit_limit=10)
    assert caught.value.details == {"visited": 11, "limit": 10}
    assert len(resolve_dependencies(index, "n0", visit_limit=101)) == 101


# --------------------------------------------------------------------------- properties

directions = st.sampled_from(list(Direction))
type_sets = st.none() | st.sets(st.sampled_from(list(RelationType)), min_size=1)
acyclic_type_sets = st.none() | st.sets(st.sampled_from([OWNER, MEMBER, PARENT, CHILD]), min_size=1).filter(
    lambda ts: not {PARENT, CHILD} <= ts
)
entities = st.sampled_from([*ENTITIES, "nobody"])


@pytest.mark.usefixtures("search")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(random_keys(), entities, entities, st.integers(0, 5), directions, type_sets)
def test_find_path__shortest_within_max_depth__like_networkx(
    keys: list[RelationshipKey],
    source: str,
    target: str,
    max_depth: int,
    direction: Direction,
    types: set[RelationType] | None,
) -> None:
    index = index_of(keys)
    path = find_path(index, source, target, max_depth=max_depth, direction=direction, types=types)
    g = oracle(set(keys), direction, types)
    if source == target:
        assert path == Path([source], [])
        return
    if source in g and target in g and nx.has_path(g, source, target):
        distance = nx.shortest_path_length(g, source, target)
        if distance <= max_depth:
            assert path is not None
            assert len(path.relationships) == distance
            assert path.entities[0] == source and path.entities[-1] == target
            assert_walk(index, path.entities, path.relationships, direction, types)
            assert_preferred_keys(keys, path, direction, types)
            return
    assert path is None


@settings(max_examples=300, deadline=None)
@given(random_keys(), entities, st.integers(0, 5), directions, type_sets)
def test_traverse__reaches_exactly_what_is_within_max_depth(
    keys: list[RelationshipKey],
    start: str,
    max_depth: int,
    direction: Direction,
    types: set[RelationType] | None,
) -> None:
    index = index_of(keys)
    walk = traverse(index, start, max_depth=max_depth, direction=direction, types=types)
    g = oracle(set(keys), direction, types)
    expected = {}
    if start in g:
        distances = nx.single_source_shortest_path_length(g, start, cutoff=max_depth)
        expected = {e: d for e, d in distances.items() if e != start}
    assert dict(walk.entities) == expected
    assert len(walk.entities) == len(expected)
    assert [d for _, d in walk.entities] == sorted(d for _, d in walk.entities)
    assert_tree(index, start, walk, direction, types)
    if len(expected) > 1:
        with pytest.raises(ResourceLimit):
            traverse(
                index,
                start,
                max_depth=max_depth,
                direction=direction,
                types=types,
                limit=len(expected) - 1,
            )


@settings(max_examples=300, deadline=None)
@given(random_keys(), entities, acyclic_type_sets)
def test_resolve_dependencies__order_respects_every_dependency(
    keys: list[RelationshipKey], entity: str, types: set[RelationType] | None
) -> None:
    index = index_of(keys)
    g = oracle(set(keys), OUT, types or DEFAULT_DEPENDENCIES)
    reachable = {entity} | (nx.descendants(g, entity) if entity in g else set())
    sub = g.subgraph(reachable)
    if not nx.is_directed_acyclic_graph(sub):
        with pytest.raises(CycleDetected) as caught:
            resolve_dependencies(index, entity, types=types)
        assert_cycle(g, caught.value.details["cycle"])
        return
    order = resolve_dependencies(index, entity, types=types)
    assert sorted(order) == sorted(reachable)
    assert order[-1] == entity
    position = {e: i for i, e in enumerate(order)}
    for a, b in sub.edges:
        assert position[b] < position[a]  # what a depends on comes first


@settings(max_examples=300, deadline=None)
@given(random_keys(), entities, acyclic_type_sets, st.integers(1, 4))
def test_detect_cycles_from__real_cycles__none_iff_acyclic(
    keys: list[RelationshipKey], entity: str, types: set[RelationType] | None, max_cycles: int
) -> None:
    index = index_of(keys)
    cycles = detect_cycles_from(index, entity, types=types, max_cycles=max_cycles)
    g = oracle(set(keys), OUT, types or DEFAULT_DEPENDENCIES)
    reachable = {entity} | (nx.descendants(g, entity) if entity in g else set())
    assert (cycles == []) == nx.is_directed_acyclic_graph(g.subgraph(reachable))
    assert len(cycles) <= max_cycles
    assert len({tuple(c) for c in cycles}) == len(cycles)
    for cycle in cycles:
        assert_cycle(g, cycle)
        assert set(cycle) <= reachable


def assert_cycle(g: nx.DiGraph, cycle: list[str]) -> None:
    """A simple directed cycle [a, ..., a] of g."""
    assert len(cycle) >= 3 and cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1
    for a, b in zip(cycle, cycle[1:], strict=False):
        assert g.has_edge(a, b)


@pytest.mark.usefixtures("search")
def test_find_path__types_given_as_strings__read_like_the_members() -> None:
    path = find_path(CHAIN, "user:3", "user:2", max_depth=1, direction=OUT, types=["linked"])  # type: ignore[list-item]
    assert path is not None and path.entities == ["user:3", "user:2"]
    with pytest.raises(UnknownRelationshipType) as caught:
        traverse(CHAIN, "user:1", max_depth=1, types=["friend"])  # type: ignore[list-item]
    assert caught.value.details == {"field": "type"}


def test_detect_cycles_from__parallel_relationships__one_cycle() -> None:
    index = graph(("e1", OWNER, "e0"), ("e1", MEMBER, "e0"), ("e0", PARENT, "e1"))
    assert detect_cycles_from(index, "e0") == [["e0", "e1", "e0"]]
    assert detect_cycles_all(capture(index), types=None) in ([["e0", "e1", "e0"]], [["e1", "e0", "e1"]])
