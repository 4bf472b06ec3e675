"""The C search of find_path (domain/_pathcore.c) answers exactly what the Python one answers:
the same path among equal ones, the same relationships, the same ResourceLimit figures. Its
Topology mirrors the index's Python structures exactly, through any adds and removes."""

from __future__ import annotations

import os
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_streams.domain import algorithms
from nexus_streams.domain.algorithms import Path, find_path, use_native
from nexus_streams.domain.errors import NexusError
from nexus_streams.domain.index import PURE_PYTHON_ENV, Direction, GraphIndex
from nexus_streams.domain.relationships import RelationshipKey, RelationType, canonical_key
from tests.unit.test_algorithms import directions, entities, require_native, search_in, type_sets
from tests.unit.test_index import index_of, operations, random_keys


@pytest.fixture
def native_only() -> None:
    """The C search must be there: the dev install builds it (never a skip in CI)."""
    require_native()


def outcome(index: GraphIndex, source: str, target: str, native: bool, **kwargs: object) -> object:
    """The answer, or the error as (class, message, details)."""
    with search_in(native):
        try:
            path = find_path(index, source, target, **kwargs)  # type: ignore[arg-type]
        except NexusError as error:
            return type(error), error.message, error.details
    if path is not None:
        assert type(path) is Path
        assert all(type(key) is RelationshipKey for key in path.relationships)
        assert all(type(name) is str for name in path.entities)
    return path


def assert_same(index: GraphIndex, source: str, target: str, **kwargs: object) -> object:
    native = outcome(index, source, target, True, **kwargs)
    python = outcome(index, source, target, False, **kwargs)
    assert native == python
    return native


def test_pathcore__built_in_the_dev_install() -> None:
    """`pip install -e .` builds the extension where a compiler is (CI notices a fallback)."""
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        assert not algorithms.NATIVE and not algorithms.NATIVE_AVAILABLE
        return
    assert algorithms.NATIVE_AVAILABLE and algorithms.NATIVE


def test_use_native__unavailable__raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(algorithms, "_NATIVE_SEARCH", None)
    with pytest.raises(RuntimeError, match=PURE_PYTHON_ENV):
        use_native(True)


limits = st.integers(0, 12) | st.just(100_000)


@pytest.mark.usefixtures("native_only")
@settings(max_examples=1500, deadline=None)
@given(random_keys(), entities, entities, st.integers(0, 4), directions, type_sets, limits)
def test_pathcore__same_answers_and_errors_as_python(
    keys: list[RelationshipKey],
    source: str,
    target: str,
    max_depth: int,
    direction: Direction,
    types: set[RelationType] | None,
    visit_limit: int,
) -> None:
    index = index_of(keys)
    assert_same(
        index,
        source,
        target,
        max_depth=max_depth,
        direction=direction,
        types=types,
        visit_limit=visit_limit,
    )


def hub(leaves: int) -> GraphIndex:
    """A hub with more entries than the C search reads without looking at the other end."""
    keys = [canonical_key("hub", RelationType.OWNER, f"leaf:{i}") for i in range(leaves)]
    keys += [canonical_key(f"leaf:{i}", RelationType.MEMBER, "hub") for i in range(0, leaves, 7)]
    keys += [canonical_key(f"leaf:{i}", RelationType.LINKED, f"leaf:{i + 1}") for i in range(leaves - 1)]
    keys += [canonical_key("far", RelationType.PARENT, "leaf:3")]
    return index_of(keys)


@pytest.mark.usefixtures("native_only")
@pytest.mark.parametrize("direction", list(Direction))
@pytest.mark.parametrize(
    ("source", "target"),
    [("hub", "leaf:5"), ("leaf:5", "hub"), ("leaf:7", "leaf:299"), ("far", "hub"), ("hub", "far")],
)
@pytest.mark.parametrize("visit_limit", [5, 300, 100_000])
def test_pathcore__hub__same_answers_as_python(
    direction: Direction, source: str, target: str, visit_limit: int
) -> None:
    index = hub(300)
    for max_depth in range(5):
        assert_same(index, source, target, max_depth=max_depth, direction=direction, visit_limit=visit_limit)


@pytest.mark.usefixtures("native_only")
def test_pathcore__long_path__same_answer_as_python() -> None:
    index = index_of(canonical_key(f"n{i}", RelationType.OWNER, f"n{i + 1}") for i in range(40))
    path = assert_same(index, "n0", "n40", max_depth=100)
    assert isinstance(path, Path) and len(path.relationships) == 40


@pytest.mark.usefixtures("native_only")
def test_pathcore__not_a_topology__type_error() -> None:
    from nexus_streams.domain import _pathcore

    with pytest.raises(TypeError, match="Topology"):
        _pathcore.find_path(({}, [], [], None), "a", "b", 3, 15, 15, 10)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the Topology


def assert_mirrors(index: GraphIndex) -> None:
    """The Topology holds what the index's lists and arrays hold, node by node, in order."""
    native = index.native
    assert native is not None
    names, outs, ins = index.adjacency_lists()
    for node, name in enumerate(names):
        if name is None:
            assert native.entries(node) is None
            continue
        assert native.entries(node) == (name, list(outs[node] or ()), list(ins[node] or ()))
        assert native.node_of(name) == node
        assert native.node_of(name + "") == node
        assert native.node_of("".join(name)) == node  # an equal string, not the same object
    assert len(native) == index.entity_count
    assert native.node_of("nobody") is None


@pytest.mark.usefixtures("native_only")
@settings(max_examples=400, deadline=None)
@given(operations, entities, entities)
def test_topology__random_add_remove__mirrors_the_index_and_searches_alike(
    ops: list[tuple[bool, RelationshipKey]], source: str, target: str
) -> None:
    index = GraphIndex()
    for adding, key in ops:
        if adding:
            index.add(key)
        else:
            index.remove(key)
    assert_mirrors(index)
    for max_depth in (1, 2, 4):
        assert_same(index, source, target, max_depth=max_depth)


@pytest.mark.usefixtures("native_only")
def test_topology__many_entities_and_hubs__mirrors_through_growth_and_removal() -> None:
    """Thousands of entities grow the id table and the node records; a hub's entries move out
    of its record and back; removing in random order exercises the id table's deletion."""
    rnd = random.Random(3)
    types = [RelationType.OWNER, RelationType.MEMBER, RelationType.LINKED, RelationType.PARENT]
    keys = {
        canonical_key(f"u{rnd.randrange(3000)}", rnd.choice(types), f"w{rnd.randrange(2000)}")
        for _ in range(6000)
    }
    keys |= {canonical_key("hub", RelationType.MEMBER, f"u{i}") for i in range(150)}
    index = index_of(sorted(keys, key=str))
    assert_mirrors(index)
    size_full = sys.getsizeof(index.native)
    doomed = list(keys)
    rnd.shuffle(doomed)
    for i, key in enumerate(doomed[: len(doomed) * 3 // 4]):
        assert index.remove(key)
        if i % 1000 == 0:
            assert_mirrors(index)
    assert_mirrors(index)
    for source, target in [("hub", "u7"), ("u1", "w5"), ("u10", "u20"), ("w3", "hub")]:
        assert_same(index, source, target, max_depth=4)
    for key in doomed[: len(doomed) // 2]:  # numbers are reused
        index.add(key)
    assert_mirrors(index)
    assert sys.getsizeof(index.native) >= size_full // 4


@pytest.mark.usefixtures("native_only")
def test_topology__misuse__clear_errors() -> None:
    from nexus_streams.domain import _pathcore

    topology = _pathcore.Topology()
    with pytest.raises(TypeError, match="no arguments"):
        _pathcore.Topology(1)  # type: ignore[call-arg]
    topology.add(0, "a", 1, "b", 2)
    assert topology.remove(1, 0, 2) is False  # stored 0 -> 1 only
    with pytest.raises(ValueError, match="still has relationships"):
        topology.release(0)
    with pytest.raises(IndexError):
        topology.remove(0, 9, 2)
    with pytest.raises(ValueError, match="code"):
        topology.add(0, "a", 1, "b", 8)
    assert topology.remove(0, 1, 2) is True
    topology.release(0)
    topology.release(1)
    assert len(topology) == 0 and topology.entries(0) is None and topology.node_of("a") is None


@pytest.mark.usefixtures("native_only")
def test_topology__names__held_while_in_use_then_given_back() -> None:
    name = "".join(["entity-", "held"])  # a string of its own, counted alone
    before = sys.getrefcount(name)
    index = index_of([canonical_key(name, RelationType.OWNER, f"w{i}") for i in range(20)])
    path = find_path(index, name, "w3", max_depth=2)
    assert path is not None and path.entities[0] is name
    del path
    assert sys.getrefcount(name) > before
    for i in range(20):
        index.remove(canonical_key(name, RelationType.OWNER, f"w{i}"))
    assert sys.getrefcount(name) == before
    index.add(canonical_key(name, RelationType.OWNER, "w0"))
    del index
    assert sys.getrefcount(name) == before


@pytest.mark.usefixtures("native_only")
def test_topology__small_namespace__costs_a_few_kib() -> None:
    """Workers hold many namespaces: a small one must not pay for the big tables."""
    keys = [canonical_key("hub", RelationType.OWNER, f"w{i}") for i in range(10)]
    keys += [canonical_key(f"w{i}", RelationType.LINKED, f"w{i + 1}") for i in range(9)]
    index = index_of(keys)
    assert sys.getsizeof(index.native) < 4096


@pytest.mark.usefixtures("native_only")
def test_topology__growth_while_adding_and_removing__mirrors_the_index() -> None:
    """The id table grows a few slots at a time while names come and go: every name is found
    during and after each move, and removed ones never come back."""
    rnd = random.Random(11)
    types = [RelationType.OWNER, RelationType.MEMBER, RelationType.LINKED]
    index = GraphIndex()
    live: set[RelationshipKey] = set()
    for step in range(20_000):
        if live and rnd.random() < 0.35:
            key = rnd.choice(sorted(live, key=str)) if step % 500 == 0 else live.pop()
            live.discard(key)
            assert index.remove(key)
        else:
            key = canonical_key(f"e{rnd.randrange(4000)}", rnd.choice(types), f"f{rnd.randrange(3000)}")
            if index.add(key):
                live.add(key)
        if step % 2500 == 0:
            assert_mirrors(index)
    assert_mirrors(index)
    for key in list(live)[:2000]:
        assert index.remove(key)
    assert_mirrors(index)


@pytest.mark.usefixtures("native_only")
def test_topology__is_the_index_ids__read_as_a_mapping() -> None:
    index = index_of([canonical_key("u:1", RelationType.OWNER, "w:1")])
    ids = index.tables[0]
    assert ids is index.native
    assert ids["u:1"] == index.node_of("u:1") and ids.get("w:1") == index.node_of("w:1")
    assert ids.get("nobody") is None and "w:1" in ids and "nobody" not in ids and len(ids) == 2
    with pytest.raises(KeyError, match="nobody"):
        ids["nobody"]
    with pytest.raises(TypeError):
        ids.get(["unhashable"])  # type: ignore[arg-type]


@pytest.mark.usefixtures("native_only")
def test_topology__self_relationship__one_entity_both_ends() -> None:
    """Commands refuse them (self_relationship), but the index itself stays consistent."""
    key = canonical_key("a", RelationType.LINKED, "a")
    index = index_of([key, canonical_key("a", RelationType.OWNER, "b")])
    assert index.entity_count == 2
    assert_mirrors(index)
    assert index.remove(key)
    assert_mirrors(index)
    assert index.remove(canonical_key("a", RelationType.OWNER, "b"))
    assert index.entity_count == 0 and len(index.native or ()) == 0
