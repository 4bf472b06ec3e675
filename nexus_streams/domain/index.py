"""The live adjacency index of one namespace: the topology only, compact and fast.

Entity ids are interned to ints; each entity has an out- and an in-array of packed
`neighbour * 8 + type` entries (canonical direction, see relationships.canonical_key). Membership,
insert and delete are C-level scans of one entity's array, so they cost O(degree) without Python
loops.

Where the C extension is built, the index also keeps the same graph in a `_pathcore.Topology`
(`native`): the same node numbers and entries in the same order, in 64-byte node records with
small adjacency inline and a C id table, which find_path's C search reads (domain/_pathcore.c
says why). add and remove keep it in step. Its id table is the index's ids too (`_ids`: no
Python dict, whose resize would stall the loop for ~40 ms at 700k entities); the Python lists
and arrays stay the ones every other algorithm and the Python search read. Without the
extension the ids are a dict.

Measured at 1M relationships (bench/graph.py, a 2-core machine): ~6 us per insert, the slowest
~4 ms, ~190 bytes per relationship of resident memory with the interned ids and the Topology
included, a depth-3 find_path in ~1.5-2 us at p50.

Metadata, versions and timestamps are not here: they live in the changelog-backed table, which
is the authority; this index is rebuilt from it on recovery.
"""

from __future__ import annotations

import os
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from nexus_streams.domain.relationships import RelationshipKey, RelationType

if TYPE_CHECKING:
    from nexus_streams.domain._pathcore import Topology

#: set to 1 to run find_path's pure-Python search even where the C extension is built: the
#: index then keeps no Topology either
PURE_PYTHON_ENV = "NEXUS_STREAMS_PURE_PYTHON"


def _load_topology() -> type[Topology] | None:
    """_pathcore.Topology, unless the environment asks for pure Python or the extension was not
    built (no C compiler at install time)."""
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return None
    try:
        from nexus_streams.domain import _pathcore
    except ImportError:
        return None
    return _pathcore.Topology


#: the C mirror of the topology that find_path's C search reads, or None (see algorithms.NATIVE)
TOPOLOGY: type[Topology] | None = _load_topology()

TYPE_CODES: dict[RelationType, int] = {
    RelationType.OWNER: 0,
    RelationType.MEMBER: 1,
    RelationType.LINKED: 2,
    RelationType.PARENT: 3,
    RelationType.CHILD: 4,  # never stored: child is kept as the inverse parent
}
TYPES_BY_CODE: dict[int, RelationType] = {code: t for t, code in TYPE_CODES.items()}
CANONICAL_TYPES = (
    RelationType.OWNER,
    RelationType.MEMBER,
    RelationType.LINKED,
    RelationType.PARENT,
)


class Direction(StrEnum):
    """Which way a traversal follows a relationship, as the relationship reads."""

    #: from source to target: `user:1 owner wallet:1` leads from user:1 to wallet:1
    OUT = "out"
    #: from target to source
    IN = "in"
    #: either way
    BOTH = "both"


def _steps(
    direction: Direction, types: Iterable[RelationType] | None
) -> tuple[frozenset[int], frozenset[int]]:
    """Which canonical type codes to follow on the out-array and on the in-array.

    `child` reads as the inverse of `parent`, `linked` reads the same both ways.
    """
    wanted = set(types) if types is not None else set(RelationType)
    out_codes: set[int] = set()
    in_codes: set[int] = set()
    for t in wanted:
        if t is RelationType.LINKED:
            out_codes.add(TYPE_CODES[t])
            in_codes.add(TYPE_CODES[t])
            continue
        canonical = RelationType.PARENT if t is RelationType.CHILD else t
        forward = t is not RelationType.CHILD
        code = TYPE_CODES[canonical]
        if direction in (Direction.OUT, Direction.BOTH):
            (out_codes if forward else in_codes).add(code)
        if direction in (Direction.IN, Direction.BOTH):
            (in_codes if forward else out_codes).add(code)
    return frozenset(out_codes), frozenset(in_codes)


class Ids(Protocol):
    """Entity id -> node number: a dict, or the Topology's id table where there is one."""

    def get(self, name: str, /) -> int | None: ...
    def __getitem__(self, name: str, /) -> int: ...
    def __contains__(self, name: object, /) -> bool: ...
    def __len__(self) -> int: ...


class GraphIndex:
    """Topology of one namespace's relationships, in canonical form."""

    __slots__ = (
        "_ids",
        "_id_dict",
        "_names",
        "_out",
        "_in",
        "_count",
        "_by_type",
        "_degrees",
        "_free",
        "tables",
        "native",
    )

    def __init__(self) -> None:
        #: the same graph in C (_pathcore.Topology) for find_path's C search, kept in step by
        #: add and remove; None where the extension is not built or is turned off
        self.native: Topology | None = TOPOLOGY() if TOPOLOGY is not None else None
        #: the ids as a dict, where there is no Topology to keep them (its id table grows a
        #: few slots per insert: a dict's resize at 700k entities takes ~40 ms at once)
        id_dict: dict[str, int] = {}
        self._id_dict: dict[str, int] | None = id_dict if self.native is None else None
        self._ids: Ids = self.native if self.native is not None else id_dict
        self._names: list[str | None] = []
        self._out: list[array[int] | None] = []
        self._in: list[array[int] | None] = []
        self._count = 0
        self._by_type: Counter[RelationType] = Counter()
        #: number of entities per degree (in + out), for degree statistics without a scan
        self._degrees: Counter[int] = Counter()
        self._free: list[int] = []
        #: (ids, names, out-arrays, in-arrays): the live structures, for the algorithms of this
        #: package (domain/algorithms.py), in one attribute read instead of a method call per
        #: lookup. Read them, never mutate them. The same objects for the life of the index.
        self.tables: tuple[Ids, list[str | None], list[array[int] | None], list[array[int] | None]] = (
            self._ids,
            self._names,
            self._out,
            self._in,
        )

    def __len__(self) -> int:
        return self._count

    @property
    def entity_count(self) -> int:
        return len(self._ids)

    def __contains__(self, entity: object) -> bool:
        return entity in self._ids

    def entities(self) -> Iterator[str]:
        """Every entity with a relationship, by node number."""
        return (name for name in self._names if name is not None)

    def _intern(self, entity: str) -> int:
        node = self._ids.get(entity)
        if node is not None:
            return node
        if self._free:
            node = self._free.pop()
            self._names[node] = entity
        else:
            node = len(self._names)
            self._names.append(entity)
            self._out.append(None)
            self._in.append(None)
        if self._id_dict is not None:
            self._id_dict[entity] = node  # the Topology learns the name in add
        self._degrees[0] += 1
        return node

    def _release_if_isolated(self, node: int) -> None:
        if self._out[node] or self._in[node]:
            return
        name = self._names[node]
        assert name is not None
        if self._id_dict is not None:
            del self._id_dict[name]
        self._names[node] = None
        self._out[node] = None
        self._in[node] = None
        if self.native is not None:
            self.native.release(node)
        self._move_degree(0, None)
        self._free.append(node)

    def _degree(self, node: int) -> int:
        out, in_ = self._out[node], self._in[node]
        return (len(out) if out else 0) + (len(in_) if in_ else 0)

    def _move_degree(self, before: int, after: int | None) -> None:
        """One entity's degree changes from `before` to `after` (None: it is gone)."""
        self._degrees[before] -= 1
        if not self._degrees[before]:
            del self._degrees[before]
        if after is not None:
            self._degrees[after] += 1

    def has(self, key: RelationshipKey) -> bool:
        s = self._ids.get(key.source)
        t = self._ids.get(key.target)
        if s is None or t is None:
            return False
        out = self._out[s]
        return out is not None and (t * 8 + TYPE_CODES[key.type]) in out

    def add(self, key: RelationshipKey) -> bool:
        """Add a canonical relationship; False if it was there already."""
        if self.has(key):
            return False
        s = self._intern(key.source)
        t = s if key.target == key.source else self._intern(key.target)
        code = TYPE_CODES[key.type]
        for node, arrays, packed in ((s, self._out, t * 8 + code), (t, self._in, s * 8 + code)):
            degree = self._degree(node)
            entries = arrays[node]
            if entries is None:
                arrays[node] = array("q", (packed,))
            else:
                entries.append(packed)
            self._move_degree(degree, degree + 1)
        if self.native is not None:
            self.native.add(s, key.source, t, key.target, code)
        self._count += 1
        self._by_type[key.type] += 1
        return True

    def remove(self, key: RelationshipKey) -> bool:
        """Remove a canonical relationship; False if it was not there."""
        if not self.has(key):
            return False
        s = self._ids[key.source]
        t = self._ids[key.target]
        code = TYPE_CODES[key.type]
        for node, arrays, packed in ((s, self._out, t * 8 + code), (t, self._in, s * 8 + code)):
            degree = self._degree(node)
            entries = arrays[node]
            assert entries is not None
            entries.remove(packed)
            if not entries:
                arrays[node] = None
            self._move_degree(degree, degree - 1)
        if self.native is not None:
            self.native.remove(s, t, code)
        self._count -= 1
        self._by_type[key.type] -= 1
        self._release_if_isolated(s)
        if t != s:
            self._release_if_isolated(t)
        return True

    def edges_of(self, entity: str) -> list[RelationshipKey]:
        """Every relationship that touches `entity`, in canonical form."""
        node = self._ids.get(entity)
        if node is None:
            return []
        names = self._names
        keys = [
            RelationshipKey(entity, TYPES_BY_CODE[p & 7], names[p >> 3])  # type: ignore[arg-type]
            for p in self._out[node] or ()
        ]
        keys += [
            RelationshipKey(names[p >> 3], TYPES_BY_CODE[p & 7], entity)  # type: ignore[arg-type]
            for p in self._in[node] or ()
        ]
        return keys

    def neighbors(
        self,
        entity: str,
        direction: Direction = Direction.BOTH,
        types: Iterable[RelationType] | None = None,
    ) -> list[tuple[str, RelationshipKey]]:
        """(neighbour, canonical relationship) pairs reachable in one step."""
        node = self._ids.get(entity)
        if node is None:
            return []
        out_codes, in_codes = _steps(direction, types)
        names = self._names
        found: list[tuple[str, RelationshipKey]] = []
        for p in self._out[node] or ():
            if p & 7 in out_codes:
                other = names[p >> 3]
                assert other is not None
                found.append((other, RelationshipKey(entity, TYPES_BY_CODE[p & 7], other)))
        for p in self._in[node] or ():
            if p & 7 in in_codes:
                other = names[p >> 3]
                assert other is not None
                found.append((other, RelationshipKey(other, TYPES_BY_CODE[p & 7], entity)))
        return found

    # -- int-level access for the algorithms (domain/algorithms.py) -------------------------

    def node_of(self, entity: str) -> int | None:
        return self._ids.get(entity)

    def name_of(self, node: int) -> str:
        name = self._names[node]
        assert name is not None
        return name

    def step_codes(
        self, direction: Direction, types: Iterable[RelationType] | None
    ) -> tuple[frozenset[int], frozenset[int]]:
        return _steps(direction, types)

    def out_array(self, node: int) -> array[int] | None:
        return self._out[node]

    def in_array(self, node: int) -> array[int] | None:
        return self._in[node]

    def adjacency_lists(
        self,
    ) -> tuple[list[str | None], list[array[int] | None], list[array[int] | None]]:
        """The live name, out-array and in-array lists, indexed by node number (None: free).

        For the algorithms and snapshots of this package, which index them directly instead of
        paying a method call per node: read them, never mutate them.
        """
        return self._names, self._out, self._in

    @property
    def node_capacity(self) -> int:
        """Upper bound (exclusive) of node numbers; freed numbers are reused."""
        return len(self._names)

    # -- statistics ------------------------------------------------------------------------------

    def counts_by_type(self) -> dict[str, int]:
        return {t.value: self._by_type.get(t, 0) for t in CANONICAL_TYPES}

    def degree_histogram(self) -> dict[int, int]:
        """{degree: number of entities with it}; degree counts relationships in both directions."""
        return {d: n for d, n in sorted(self._degrees.items()) if n and d > 0}
