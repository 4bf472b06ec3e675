"""Whole-graph questions, answered with igraph on a compact snapshot of the adjacency index.

`capture` copies the topology out of the live `GraphIndex`. It is safe to call from a worker
thread while the event loop keeps mutating the index: it reads each list and each array with a
single C-level copy (atomic under the GIL), and keeps every C-level step short (at most ~5 ms at
1M relationships: a chunk of `_NODES` entities or `_WORDS` entries) so the loop thread gets the
GIL back often (measured: ~0.3 s per 1M relationships, the loop stalled at most ~15 ms). The
snapshot is approximately as of `taken_at_monotonic`: a relationship added or removed
while it is being taken may be in it or not, and an entity freed (or whose node number was
reused) meanwhile is left out together with its relationships.

`analyze` and `detect_cycles_all` spend their time in igraph C calls, which hold the GIL for
their whole duration (~0.1-0.4 s each at 1M relationships): in a thread they stall the event
loop that long (measured: 0.44 s), in a worker process ~40 ms (sending the snapshot). The
snapshot is plain data and pickles compactly for that: the names as one string, the arrays as
bytes.
"""

from __future__ import annotations

import heapq
import operator
import sys
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate, chain, compress, repeat
from typing import Any

import igraph

from nexus_streams.domain.algorithms import dependency_codes
from nexus_streams.domain.errors import ValidationFailed
from nexus_streams.domain.index import TYPE_CODES, GraphIndex
from nexus_streams.domain.relationships import RelationType

#: entities whose arrays are copied per C-level step while capturing
_NODES = 1 << 13
#: packed entries decoded per C-level step while capturing
_WORDS = 1 << 16
_LINKED = TYPE_CODES[RelationType.LINKED]
_EMPTY: array[int] = array("q")
#: byte -> its low 3 bits: the type code, read from the least significant byte of an entry
_LOW3 = bytes(b & 7 for b in range(256))
#: clears the top 3 bits of a 64-bit word
_LOW61 = (1 << 61) - 1


@dataclass(frozen=True)
class EdgeSnapshot:
    """The topology of one namespace, vertex-numbered like the index's node numbers.

    `names[v]` is vertex v's entity, "" for a free node number (entity ids are never empty;
    analysis drops those vertices, with any relationship still touching one). Vertex v has
    `out_degrees[v]` relationships, the next `out_degrees[v]` entries of `targets` and
    `type_codes` (CSR order). Relationship i reads, in canonical direction:
    `names[sources[i]] --TYPES_BY_CODE[type_codes[i]]--> names[targets[i]]`.
    """

    names: list[str]
    out_degrees: array[int]
    targets: array[int]
    type_codes: array[int]
    relationship_count: int
    taken_at_monotonic: float

    @property
    def sources(self) -> array[int]:
        """The source vertex of each relationship (expanded from out_degrees on each call)."""
        return array("q", self._source_iter())

    def _source_iter(self) -> Iterator[int]:
        return chain.from_iterable(map(repeat, range(len(self.out_degrees)), self.out_degrees))

    @property
    def entity_count(self) -> int:
        return len(self.names) - self.names.count("")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles fast, for a worker process: the names travel as one string (ids have no
        whitespace), so the pickler makes no object per entity while holding the GIL."""
        blob = "\n".join(self.names)
        fields = (self.out_degrees, self.targets, self.type_codes, self.relationship_count)
        return _restore, (len(self.names), blob, *fields, self.taken_at_monotonic)


def _restore(count: int, blob: str, *fields: Any) -> EdgeSnapshot:
    return EdgeSnapshot(blob.split("\n") if count else [], *fields)


def capture(index: GraphIndex) -> EdgeSnapshot:
    """A compact copy of the index's topology; never raises because of concurrent mutation."""
    taken = time.monotonic()
    live_names, live_outs, _ = index.adjacency_lists()
    copied = list(live_names)  # a single C-level copy each: atomic under the GIL
    outs = list(live_outs)
    capacity = len(copied)
    out_degrees: array[int] = array("q")
    packed: array[int] = array("q")
    for lo in range(0, capacity, _NODES):
        hi = lo + _NODES
        part = [
            _EMPTY if a is None or n is None else a for a, n in zip(outs[lo:hi], copied[lo:hi], strict=False)
        ]
        blobs = list(map(array.tobytes, part))  # one C-level copy per live array
        packed.frombytes(b"".join(blobs))
        out_degrees.extend(map((3).__rrshift__, map(len, blobs)))
    # free node numbers, and those freed or reused while the arrays were copied, become ""
    later = live_names[:capacity]
    names: list[str] = copied  # type: ignore[assignment]  # its Nones are replaced next
    for lo in range(0, capacity, _NODES):
        before, after = copied[lo : lo + _NODES], later[lo : lo + _NODES]
        drop = map(operator.or_, map(operator.not_, before), map(operator.is_not, before, after))
        for node in list(compress(range(lo, lo + _NODES), drop)):
            names[node] = ""
    targets: array[int] = array("q")
    type_codes: array[int] = array("b")
    low_byte = 0 if sys.byteorder == "little" else 7
    top = -1
    for lo in range(0, len(packed), _WORDS):
        words = packed[lo : lo + _WORDS].tobytes()
        type_codes.frombytes(words[low_byte::8].translate(_LOW3))
        neighbours: array[int] = array("q")
        neighbours.frombytes(_shift_right_3(words))
        top = max(top, max(neighbours))
        targets += neighbours
    if top >= capacity:  # an entity interned after the names were copied
        names.append("")  # a free vertex to attach its relationships to: analysis drops it
        targets = array("q", (t if t < capacity else capacity for t in targets))
        out_degrees.append(0)
    return EdgeSnapshot(names, out_degrees, targets, type_codes, len(targets), taken)


def _shift_right_3(words: bytes) -> bytes:
    """Each native 64-bit word of `words` shifted right by 3 (packed entry -> neighbour).

    Done on one big int: shifting it moves 3 bits of each word into its neighbour's top bits,
    which the mask clears. ~30x faster than a Python-level map over the words.
    """
    count = len(words) // 8
    mask = int.from_bytes((array("q", [_LOW61]) * count).tobytes(), sys.byteorder)
    shifted = (int.from_bytes(words, sys.byteorder) >> 3) & mask
    return shifted.to_bytes(len(words), sys.byteorder)


def build_graph(snapshot: EdgeSnapshot, *, linked_both_ways: bool = False) -> igraph.Graph:
    """A directed igraph Graph of the snapshot: vertex v is `live_names(snapshot)[v]`; with
    `linked_both_ways`, each linked relationship is an edge each way (after all the others).

    A generator of pairs is the fastest input python-igraph takes without numpy: ~0.25 s per
    1M edges, against ~0.5 s for a list of tuples and ~1 s for a memoryview (measured).
    """
    graph = igraph.Graph(n=snapshot.entity_count, edges=_pairs(snapshot), directed=True)
    if linked_both_ways:
        linked = [c == _LINKED for c in snapshot.type_codes]
        graph.add_edges(_pairs(snapshot, linked, reverse=True))
    return graph


def live_names(snapshot: EdgeSnapshot) -> list[str]:
    """The entities of the snapshot, in the vertex order of the graphs built from it."""
    return list(filter(None, snapshot.names))


def _pairs(
    snapshot: EdgeSnapshot, select: Iterable[bool] | None = None, *, reverse: bool = False
) -> Iterator[tuple[int, int]]:
    """(source, target) vertex pairs of the relationships `select`ed (default: all), numbered
    like `live_names`; a relationship with a free end is left out."""
    sources: Iterator[int] = snapshot._source_iter()
    targets: Iterator[int] = iter(snapshot.targets)
    if select is not None:
        sources, targets = compress(sources, select), compress(targets, select)
    if reverse:
        sources, targets = targets, sources
    names = snapshot.names
    if "" not in names:  # node numbers are vertex numbers
        return zip(sources, targets, strict=True)
    live = bytes(map(bool, names))
    dense = array("q", accumulate(live, initial=-1))
    del dense[0]
    return ((dense[s], dense[t]) for s, t in zip(sources, targets, strict=True) if live[s] and live[t])


def analyze(snapshot: EdgeSnapshot, *, top: int = 10) -> dict[str, Any]:
    """Size, weakly connected components, degree distribution, top entities by degree and
    by PageRank, as a JSON-ready dict.

    Degree counts relationships in both directions (as index.degree_histogram does). PageRank
    reads owner, member and parent in their canonical direction (source -> target: what is
    owned, joined or parented accumulates rank) and linked, being symmetric, both ways.
    """
    if top < 0:
        raise ValidationFailed(f"top must be 0 or more, not {top}", field="top")
    graph = build_graph(snapshot)
    n, m = graph.vcount(), graph.ecount()
    degrees: list[int] = graph.degree()
    sizes: list[int] = graph.connected_components(mode="weak").sizes()
    histogram = Counter(degrees)
    histogram.pop(0, None)
    by_degree = heapq.nlargest(top, range(n), key=degrees.__getitem__)
    linked = [c == _LINKED for c in snapshot.type_codes]
    graph.add_edges(_pairs(snapshot, linked, reverse=True))
    ranks: list[float] = graph.pagerank(directed=True) if n else []
    by_rank = heapq.nlargest(top, range(n), key=ranks.__getitem__)
    names = live_names(snapshot)
    return {
        "entities": n,
        "relationships": m,
        "components": {
            "count": len(sizes),
            "largest": max(sizes, default=0),
            "sizes_top": heapq.nlargest(top, sizes),
        },
        "degree_distribution": {str(d): c for d, c in sorted(histogram.items())},
        "top_by_degree": [{"entity": names[v], "degree": degrees[v]} for v in by_degree],
        "top_by_pagerank": [{"entity": names[v], "score": round(ranks[v], 9)} for v in by_rank],
    }


def detect_cycles_all(
    snapshot: EdgeSnapshot,
    *,
    types: Iterable[RelationType] | None,
    max_cycles: int = 10,
) -> list[list[str]]:
    """Directed cycles along `types` (default owner, member, parent; child reads parent
    backwards) anywhere in the snapshot, each as [a, b, ..., a]; at most `max_cycles`.

    A DAG check answers most graphs at once. Otherwise each strongly connected component with
    more than one entity holds cycles: for an edge v -> w inside one, the shortest path w ... v
    closes a cycle. Components take turns (one cycle each first), so the cycles come from as
    many components as possible; each is simple and they are distinct. Raises
    `ValidationFailed` for `linked`, or `parent` with `child` (see
    algorithms.dependency_types).
    """
    if max_cycles < 1:
        raise ValidationFailed(f"max_cycles must be 1 or more, not {max_cycles}", field="max_cycles")
    out_codes, in_codes = dependency_codes(types)
    codes = snapshot.type_codes
    forward = list(map(out_codes.__contains__, codes))
    backward = list(map(in_codes.__contains__, codes))
    graph = igraph.Graph(
        n=snapshot.entity_count,
        edges=chain(_pairs(snapshot, forward), _pairs(snapshot, backward, reverse=True)),
        directed=True,
    )
    if graph.is_dag():
        return []
    components = graph.connected_components(mode="strong")
    membership: list[int] = components.membership
    cyclic = [members for members in components if len(members) > 1]
    found: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()
    # round robin over the cyclic components: the k-th pass takes each one's k-th inner edge
    edges_of = [_inner_edges(graph, members, membership) for members in cyclic]
    attempts = 0
    while edges_of and len(found) < max_cycles and attempts < 4 * max_cycles + len(cyclic):
        still: list[Iterator[tuple[int, int]]] = []
        for edges in edges_of:
            edge = next(edges, None)
            if edge is None:
                continue
            still.append(edges)
            attempts += 1
            v, w = edge
            cycle = [v, *graph.get_shortest_path(w, v, mode="out")]
            key = _rotation(cycle[:-1])
            if key not in seen:
                seen.add(key)
                found.append(cycle)
                if len(found) >= max_cycles:
                    break
        edges_of = still
    names = live_names(snapshot)
    return [[names[v] for v in cycle] for cycle in found]


def _inner_edges(graph: igraph.Graph, members: list[int], membership: list[int]) -> Iterator[tuple[int, int]]:
    """Edges v -> w with both ends in the component of `members`, lazily."""
    component = membership[members[0]]
    return ((v, w) for v in members for w in graph.successors(v) if membership[w] == component)


def _rotation(cycle: list[int]) -> tuple[int, ...]:
    """The same cycle starting at its smallest vertex: equal for every rotation."""
    at = cycle.index(min(cycle))
    return tuple(cycle[at:] + cycle[:at])
