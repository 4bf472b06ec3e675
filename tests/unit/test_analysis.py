"""Snapshots of the index and the whole-graph questions answered on them with igraph."""

from __future__ import annotations

import pickle
import random
import sys
import threading
import time
from array import array
from collections import Counter

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_streams.domain import analysis
from nexus_streams.domain.analysis import (
    EdgeSnapshot,
    analyze,
    build_graph,
    capture,
    detect_cycles_all,
    live_names,
)
from nexus_streams.domain.errors import ValidationFailed
from nexus_streams.domain.index import TYPES_BY_CODE, Direction, GraphIndex
from nexus_streams.domain.relationships import RelationshipKey, RelationType, canonical_key
from tests.unit.test_algorithms import assert_cycle, oracle
from tests.unit.test_index import index_of, keys_in, random_keys

OWNER, MEMBER, LINKED, PARENT, CHILD = (
    RelationType.OWNER,
    RelationType.MEMBER,
    RelationType.LINKED,
    RelationType.PARENT,
    RelationType.CHILD,
)
DEFAULT_DEPENDENCIES = [OWNER, MEMBER, PARENT]


def edges(snapshot: EdgeSnapshot) -> list[RelationshipKey]:
    """The relationships a snapshot holds, as canonical keys (those of free vertices left out)."""
    names = snapshot.names
    found = []
    for s, t, c in zip(snapshot.sources, snapshot.targets, snapshot.type_codes, strict=True):
        source, target = names[s], names[t]
        if source and target:
            found.append(RelationshipKey(source, TYPES_BY_CODE[c], target))
    return found


def graph(*written: tuple[str, RelationType, str]) -> GraphIndex:
    return index_of(canonical_key(*w) for w in written)


# --------------------------------------------------------------------------- capture


def test_capture__empty_index() -> None:
    snapshot = capture(GraphIndex())
    assert snapshot.relationship_count == 0
    assert snapshot.entity_count == 0
    assert edges(snapshot) == []
    assert analyze(snapshot)["entities"] == 0
    assert detect_cycles_all(snapshot, types=None) == []


def test_capture__holds_every_relationship_in_canonical_form() -> None:
    index = graph(("a", OWNER, "b"), ("b", CHILD, "c"), ("d", LINKED, "a"), ("a", MEMBER, "c"))
    before = time.monotonic()
    snapshot = capture(index)
    assert before <= snapshot.taken_at_monotonic <= time.monotonic()
    assert sorted(edges(snapshot), key=repr) == sorted(keys_in(index), key=repr)
    assert snapshot.relationship_count == 4
    assert sorted(live_names(snapshot)) == ["a", "b", "c", "d"]
    assert sum(snapshot.out_degrees) == len(snapshot.targets) == len(snapshot.type_codes)


def test_capture__free_node_numbers__left_out() -> None:
    index = graph(("a", OWNER, "b"), ("c", OWNER, "d"), ("e", OWNER, "f"))
    index.remove(canonical_key("c", OWNER, "d"))
    snapshot = capture(index)
    assert snapshot.names.count("") == 2
    assert snapshot.entity_count == 4
    assert sorted(edges(snapshot), key=repr) == sorted(keys_in(index), key=repr)
    g = build_graph(snapshot)
    names = live_names(snapshot)
    assert g.vcount() == 4
    assert sorted((names[s], names[t]) for s, t in g.get_edgelist()) == [("a", "b"), ("e", "f")]


@pytest.mark.parametrize("remove", [False, True], ids=["dense", "with free numbers"])
def test_capture__pickles_to_the_same_snapshot(remove: bool) -> None:
    index = graph(("a", OWNER, "b"), ("b", LINKED, "c"), ("x", OWNER, "y"))
    if remove:
        index.remove(canonical_key("x", OWNER, "y"))
    snapshot = capture(index)
    again = pickle.loads(pickle.dumps(snapshot))
    assert again == snapshot
    assert edges(again) == edges(snapshot)
    empty = capture(GraphIndex())
    assert pickle.loads(pickle.dumps(empty)) == empty


@pytest.mark.parametrize(
    "words",
    [[0], [7], [8], [2**60 + 5], [(2**40 + 3) * 8 + 2, 0, 15, 2**63 - 1, 12345 * 8 + 4]],
    ids=repr,
)
def test_capture__shift_right_3__each_word_on_its_own(words: list[int]) -> None:
    shifted = array("q")
    shifted.frombytes(analysis._shift_right_3(array("q", words).tobytes()))
    assert shifted.tolist() == [w >> 3 for w in words]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**63 - 1), max_size=50))
def test_capture__shift_right_3__any_words(words: list[int]) -> None:
    shifted = array("q")
    shifted.frombytes(analysis._shift_right_3(array("q", words).tobytes()))
    assert shifted.tolist() == [w >> 3 for w in words]


def test_capture__larger_than_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(analysis, "_NODES", 3)
    monkeypatch.setattr(analysis, "_WORDS", 2)
    index = index_of(canonical_key(f"n{i}", OWNER, f"n{(i * 7 + 1) % 20}") for i in range(20))
    index.remove(canonical_key("n3", OWNER, "n2"))
    snapshot = capture(index)
    assert sorted(edges(snapshot), key=repr) == sorted(keys_in(index), key=repr)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), random_keys()), max_size=8))
def test_capture__after_random_changes__holds_exactly_the_index(
    batches: list[tuple[bool, list[RelationshipKey]]],
) -> None:
    index = GraphIndex()
    for adding, keys in batches:
        for key in keys:
            (index.add if adding else index.remove)(key)
    snapshot = capture(index)
    assert Counter(edges(snapshot)) == Counter(keys_in(index))
    assert snapshot.entity_count == index.entity_count


class Churn:
    """Random adds and removes on one index, remembering every relationship it ever held."""

    def __init__(self, index: GraphIndex, seed: int = 7) -> None:
        self.index = index
        self.rnd = random.Random(seed)
        self.entities = [f"e{i}" for i in range(300)]
        self.ever: set[RelationshipKey] = set()

    def key(self) -> RelationshipKey:
        a, b = self.rnd.sample(self.entities, 2)
        return canonical_key(a, self.rnd.choice([OWNER, MEMBER, LINKED, PARENT]), b)

    def add(self, count: int) -> None:
        for _ in range(count):
            key = self.key()
            self.index.add(key)
            self.ever.add(key)

    def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.add(25)
            for _ in range(25):
                self.index.remove(self.key())
            for entity in self.rnd.sample(self.entities, 3):  # free node numbers, for reuse
                for key in self.index.edges_of(entity):
                    self.index.remove(key)


def test_capture__concurrent_mutation__never_raises() -> None:
    """A thread captures over and over while this one adds and removes relationships."""
    churn = Churn(GraphIndex())
    churn.add(2000)
    errors: list[BaseException] = []
    snapshots: list[EdgeSnapshot] = []
    stop = threading.Event()

    def capture_repeatedly() -> None:
        try:
            while not stop.is_set():
                snapshots.append(capture(churn.index))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads as often as possible
    thread = threading.Thread(target=capture_repeatedly)
    thread.start()
    try:
        churn.run(0.5)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert errors == []
    assert len(snapshots) > 1
    for snapshot in snapshots[:: max(1, len(snapshots) // 100)]:
        assert set(edges(snapshot)) <= churn.ever  # approximate, but nothing invented
    for snapshot in snapshots[-3:]:
        analyze(snapshot)
    assert Counter(edges(capture(churn.index))) == Counter(keys_in(churn.index))


# --------------------------------------------------------------------------- analyze


def test_analyze__small_graph() -> None:
    index = graph(
        ("hub", OWNER, "a"),
        ("hub", OWNER, "b"),
        ("hub", MEMBER, "c"),
        ("a", LINKED, "b"),
        ("x", PARENT, "y"),
    )
    result = analyze(capture(index), top=2)
    assert result["entities"] == 6
    assert result["relationships"] == 5
    assert result["components"] == {"count": 2, "largest": 4, "sizes_top": [4, 2]}
    assert result["degree_distribution"] == {"1": 3, "2": 2, "3": 1}
    assert result["top_by_degree"] == [
        {"entity": "hub", "degree": 3},
        {"entity": "a", "degree": 2},  # ties: the entity seen first
    ]
    scores = [r["score"] for r in result["top_by_pagerank"]]
    assert scores == sorted(scores, reverse=True)


def test_analyze__pagerank__linked_reads_both_ways() -> None:
    result = analyze(capture(graph(("a", LINKED, "b"))))
    first, second = result["top_by_pagerank"]
    assert first["score"] == pytest.approx(second["score"]) == pytest.approx(0.5)
    owned = analyze(capture(graph(("a", OWNER, "b"))))
    assert owned["top_by_pagerank"][0]["entity"] == "b"  # what is owned accumulates rank


def test_analyze__negative_top__validation_failed() -> None:
    with pytest.raises(ValidationFailed):
        analyze(capture(graph(("a", OWNER, "b"))), top=-1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), random_keys()), max_size=6))
def test_analyze__matches_networkx_and_the_index(
    batches: list[tuple[bool, list[RelationshipKey]]],
) -> None:
    index = GraphIndex()
    for adding, keys in batches:
        for key in keys:
            (index.add if adding else index.remove)(key)
    result = analyze(capture(index), top=100)
    keys = keys_in(index)
    g = nx.MultiGraph()
    g.add_nodes_from(index.entities())
    g.add_edges_from((k.source, k.target) for k in keys)
    sizes = sorted((len(c) for c in nx.connected_components(g)), reverse=True)
    assert result["entities"] == index.entity_count == g.number_of_nodes()
    assert result["relationships"] == len(index) == len(keys)
    assert result["components"] == {
        "count": len(sizes),
        "largest": max(sizes, default=0),
        "sizes_top": sizes,
    }
    assert result["degree_distribution"] == {str(d): n for d, n in index.degree_histogram().items()}
    assert sorted((r["entity"], r["degree"]) for r in result["top_by_degree"]) == sorted(g.degree())
    assert sum(r["score"] for r in result["top_by_pagerank"]) == pytest.approx(1.0 if keys else 0.0, abs=1e-6)


# --------------------------------------------------------------------------- detect_cycles_all

CYCLES = graph(
    ("a", OWNER, "b"),
    ("b", MEMBER, "c"),
    ("c", OWNER, "a"),  # a -> b -> c -> a
    ("p", PARENT, "q"),
    ("q", OWNER, "p"),  # p -> q -> p, by parent
    ("r", CHILD, "s"),  # s parent r
    ("s", OWNER, "r"),  # r -> s -> r, by child
    ("x", LINKED, "y"),
)


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        (None, [["a", "b", "c"], ["p", "q"]]),
        ([OWNER, MEMBER], [["a", "b", "c"]]),
        ([OWNER, PARENT], [["p", "q"]]),
        ([OWNER, CHILD], [["r", "s"]]),
        ([OWNER], []),
        ([MEMBER, PARENT], []),
    ],
    ids=repr,
)
def test_detect_cycles_all__table(types: list[RelationType] | None, expected: list[list[str]]) -> None:
    cycles = detect_cycles_all(capture(CYCLES), types=types)
    rotations = sorted(sorted(c[:-1]) for c in cycles)
    assert rotations == expected
    for cycle in cycles:
        assert cycle[0] == cycle[-1]


@pytest.mark.parametrize("types", [[LINKED], [PARENT, CHILD], []], ids=repr)
def test_detect_cycles_all__symmetric_types__validation_failed(types: list[RelationType]) -> None:
    with pytest.raises(ValidationFailed):
        detect_cycles_all(capture(CYCLES), types=types)


def test_detect_cycles_all__max_cycles__caps_and_spreads_over_components() -> None:
    written = [(f"k{i}", OWNER, f"k{j}") for i in range(5) for j in range(5) if i != j]
    written += [(f"{p}1", OWNER, f"{p}2") for p in "uvw"] + [(f"{p}2", OWNER, f"{p}1") for p in "uvw"]
    snapshot = capture(graph(*written))
    cycles = detect_cycles_all(snapshot, types=None, max_cycles=4)
    assert len(cycles) == 4
    assert len({frozenset(c) for c in cycles}) == 4
    covered = {c[0][0] for c in cycles}
    assert covered == {"k", "u", "v", "w"}  # one per component before a second from any
    assert len(detect_cycles_all(snapshot, types=None, max_cycles=12)) == 12
    with pytest.raises(ValidationFailed):
        detect_cycles_all(snapshot, types=None, max_cycles=0)


@settings(max_examples=300, deadline=None)
@given(
    random_keys(),
    st.none()
    | st.sets(st.sampled_from([OWNER, MEMBER, PARENT, CHILD]), min_size=1).filter(
        lambda ts: not {PARENT, CHILD} <= ts
    ),
    st.integers(1, 5),
)
def test_detect_cycles_all__real_cycles__none_iff_a_dag(
    keys: list[RelationshipKey], types: set[RelationType] | None, max_cycles: int
) -> None:
    cycles = detect_cycles_all(capture(index_of(keys)), types=types, max_cycles=max_cycles)
    g = oracle(set(keys), Direction.OUT, types or DEFAULT_DEPENDENCIES)
    assert (cycles == []) == nx.is_directed_acyclic_graph(g)
    assert len(cycles) <= max_cycles
    rotations = set()
    for cycle in cycles:
        assert_cycle(g, cycle)
        at = cycle.index(min(cycle[:-1]))
        rotations.add(tuple(cycle[at:-1] + cycle[:at]))
    assert len(rotations) == len(cycles)
