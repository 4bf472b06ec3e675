"""Bounded traversals on the live adjacency index (domain/index.py), cheap enough for the agent.

Every function works on node numbers and packed `neighbour * 8 + type` entries and builds
strings and RelationshipKeys only for its answer. Each is bounded (depth, a result limit or a
visit limit) and raises `ResourceLimit` rather than answering partially, so the work one call can
do on the event loop is capped. Whole-graph questions belong to domain/analysis.py.

find_path's search runs in C when the extension is built (domain/_pathcore.c, `NATIVE`): the
same bidirectional BFS on the index's C mirror (`GraphIndex.native`, the same nodes and entries
in the same order), giving the same answers and errors (tests/unit/test_pathcore.py).
`_find_path` below is the Python reference and the fallback (no C compiler at install, or
NEXUS_STREAMS_PURE_PYTHON=1). Why C: on a near pair the Python search does what networkx's does,
so it cannot be much faster than it; in C a near pair costs about the cache misses of reaching
both ends and their neighbours.

Measured at 1M relationships on a 2-core machine (bench/graph.py), find_path max_depth=3 at p50:
~2 us for pairs within 3 hops and for random pairs in C, ~10 / ~11 us in Python (networkx:
~9 us bidirectional on the first, ~80 us for its best bounded query on the second).
A search that exhausts its visit limit costs ~0.1 us per visited entity in C (~0.8 in Python)
and resolve_dependencies' DFS ~1.2 us, so the visit limit, not the depth, bounds the longest step:
~50k fits 50 ms. In the Python find_path, building the answer (Path, RelationshipKeys) costs about
as much as the search on a near pair: hence relationships.make_key and _new_path."""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, NoReturn, TypeAlias, cast

from nexus_streams.domain.errors import CycleDetected, ResourceLimit, ValidationFailed
from nexus_streams.domain.index import (
    PURE_PYTHON_ENV,
    TOPOLOGY,
    TYPES_BY_CODE,
    Direction,
    GraphIndex,
    Ids,
    _steps,
)
from nexus_streams.domain.relationships import RelationshipKey, RelationType, make_key, parse_type

if TYPE_CHECKING:
    from nexus_streams.domain._pathcore import Topology

#: every code stored in the arrays (child is never stored), in the order paths prefer them
_CODE_ORDER = (0, 1, 2, 3)
_ALL_CODES = frozenset(_CODE_ORDER)
#: what cycle detection and dependency resolution follow unless asked otherwise
DEFAULT_DEPENDENCY_TYPES = (RelationType.OWNER, RelationType.MEMBER, RelationType.PARENT)

_Arrays: TypeAlias = "list[array[int] | None]"
#: GraphIndex.tables: ids, names, out-arrays, in-arrays
_Tables: TypeAlias = "tuple[Ids, list[str | None], _Arrays, _Arrays]"
#: _pathcore.find_path(topology, source, target, max_depth, out_mask, in_mask, visit_limit)
_NativeFindPath: TypeAlias = "Callable[[Topology, str, str, int, int, int, int], Path | None]"


@dataclass(frozen=True, slots=True)
class Path:
    #: source ... target
    entities: list[str]
    #: canonical keys, one per hop, in path order
    relationships: list[RelationshipKey]


@dataclass(frozen=True, slots=True)
class Traversal:
    #: (entity, depth) in BFS order, the start excluded
    entities: list[tuple[str, int]]
    #: the BFS tree relationship that reached each entity, in the same order
    relationships: list[RelationshipKey]


# --------------------------------------------------------------------------------- helpers


def _type_set(types: Iterable[RelationType] | None) -> frozenset[RelationType] | None:
    """The types asked for, as members (a plain string would read `linked` as directed, and
    share the memoised step codes of the member it equals)."""
    if types is None:
        return None
    wanted = frozenset(map(parse_type, types))
    if not wanted:
        raise ValidationFailed("types must name at least one relationship type", field="types")
    return wanted


def _check_depth(max_depth: int) -> None:
    if max_depth < 0:
        raise ValidationFailed(
            f"max_depth must be 0 or more, not {max_depth}", field="max_depth", max_depth=max_depth
        )


def dependency_types(types: Iterable[RelationType] | None) -> frozenset[RelationType]:
    """The types a cycle or dependency question follows (default: owner, member, parent).

    Raises `ValidationFailed` (details: field="types") for `linked`, or `parent` with `child`:
    each reads the same relationship both ways, so every one of them would be a cycle of two.
    """
    wanted = _type_set(types)
    if wanted is None:
        return frozenset(DEFAULT_DEPENDENCY_TYPES)
    if RelationType.LINKED in wanted:
        raise ValidationFailed(
            "linked is symmetric: following it, every linked pair would be a cycle of two; "
            "choose among owner, member, parent, child",
            field="types",
        )
    if RelationType.PARENT in wanted and RelationType.CHILD in wanted:
        raise ValidationFailed(
            "child is parent read backwards: following both, every parent relationship would "
            "be a cycle of two; choose parent or child",
            field="types",
        )
    return wanted


def dependency_codes(types: Iterable[RelationType] | None) -> tuple[frozenset[int], frozenset[int]]:
    """Codes to follow on the out-arrays and on the in-arrays for a cycle or dependency question."""
    return _steps(Direction.OUT, dependency_types(types))


class _Codes(NamedTuple):
    """What a search follows for one (direction, types), per array (see index._steps)."""

    #: codes to follow on the out-arrays and on the in-arrays
    out_codes: frozenset[int]
    in_codes: frozenset[int]
    #: the same, or None when every stored code is followed (no test needed)
    out_test: frozenset[int] | None
    in_test: frozenset[int] | None
    #: the same in the order paths prefer them (the lowest code first)
    out_order: tuple[int, ...]
    in_order: tuple[int, ...]
    #: the same as bit masks (bit c: code c), for the C search
    out_mask: int
    in_mask: int


_STEP_CACHE: dict[tuple[Direction, frozenset[RelationType] | None], _Codes] = {}


def _step_codes(direction: Direction, wanted: frozenset[RelationType] | None) -> _Codes:
    """The codes a search follows; memoised: computing them costs more than a whole depth-3
    search."""
    key = (direction, wanted)
    codes = _STEP_CACHE.get(key)
    if codes is None:
        out_codes, in_codes = _steps(direction, wanted)
        codes = _Codes(
            out_codes,
            in_codes,
            _filter(out_codes),
            _filter(in_codes),
            tuple(c for c in _CODE_ORDER if c in out_codes),
            tuple(c for c in _CODE_ORDER if c in in_codes),
            sum(1 << c for c in out_codes),
            sum(1 << c for c in in_codes),
        )
        _STEP_CACHE[key] = codes
    return codes


def _filter(codes: frozenset[int]) -> frozenset[int] | None:
    return None if codes >= _ALL_CODES else codes


#: the default question (both directions, every type), without hashing the arguments
_BOTH = Direction.BOTH
_BOTH_ALL = _step_codes(_BOTH, None)
#: relationship type by code, as a tuple
_TYPES = tuple(TYPES_BY_CODE[code] for code in range(len(TYPES_BY_CODE)))

_set_entities = Path.__dict__["entities"].__set__
_set_relationships = Path.__dict__["relationships"].__set__


def _new_path(entities: list[str], relationships: list[RelationshipKey]) -> Path:
    """`Path(entities, relationships)` without the frozen dataclass's `__init__`, which costs
    more than a one-hop search (see relationships.make_key)."""
    path: Path = object.__new__(Path)
    _set_entities(path, entities)
    _set_relationships(path, relationships)
    return path


def _name(names: list[str | None], node: int) -> str:
    name = names[node]
    assert name is not None
    return name


# ------------------------------------------------------------------------------- find_path


def find_path(
    index: GraphIndex,
    source: str,
    target: str,
    *,
    max_depth: int,
    direction: Direction = Direction.BOTH,
    types: Iterable[RelationType] | None = None,
    visit_limit: int = 100_000,
) -> Path | None:
    """A shortest path (by hops) of at most `max_depth` relationships, or None.

    Bidirectional BFS that always expands the smaller frontier (the forward one on a tie, so the
    first level expands the source); the backward search follows the steps in reverse. An entity
    with no relationships is not in the index: no path (but an entity always reaches itself with
    no relationship). Raises `ResourceLimit` when more than `visit_limit` entities were visited
    (checked after each expanded entity, so it can overshoot by one entity's degree before
    raising).

    Of several shortest paths, the first the search meets; between two entities of the path,
    the relationship along the out-array first, then the lowest type code (see `_path`).

    The search runs in C when the extension is built (`NATIVE`), else in Python (`_find_path`,
    the reference): the same answers and errors.
    """
    if max_depth < 0:
        _check_depth(max_depth)
    if types is None and direction is _BOTH:
        codes = _BOTH_ALL
    else:
        codes = _step_codes(direction, None if types is None else _type_set(types))
    native = index.native
    if _native_find_path is not None and native is not None:
        return _native_find_path(
            native, source, target, max_depth, codes.out_mask, codes.in_mask, visit_limit
        )
    return _find_path(index.tables, source, target, max_depth, codes, visit_limit)


def _find_path(  # noqa: C901 - the first level is inlined: it answers most near pairs alone
    tables: _Tables,
    source: str,
    target: str,
    max_depth: int,
    codes: _Codes,
    visit_limit: int,
) -> Path | None:
    """The search of find_path in Python (arguments checked, types read as `codes`)."""
    if source == target:
        return _new_path([source], [])
    ids, names, outs, ins = tables
    s = ids.get(source)
    t = ids.get(target)
    if s is None or t is None or not max_depth:
        return None
    # forward: out-arrays with the out codes, in-arrays with the in codes; backward: the other
    # way round (a side with no code is left out)
    out_test, in_test = codes.out_test, codes.in_test
    if codes.out_codes and codes.in_codes:
        forward_sides: _Sides = ((outs, out_test, True), (ins, in_test, False))
        backward_sides: _Sides = ((ins, out_test, True), (outs, in_test, False))
    elif codes.out_codes:
        forward_sides, backward_sides = ((outs, out_test, True),), ((ins, out_test, True),)
    else:
        forward_sides, backward_sides = ((ins, in_test, False),), ((outs, in_test, False),)
    # the first level, inlined: it expands the source, and meets the backward search only at
    # the target itself
    forward = {s: -1}
    f_front: list[int] = []
    append = f_front.append
    for arrays, test, along_out in forward_sides:
        entries = arrays[s]
        if entries is None:
            continue
        for p in entries:
            if test is None or p & 7 in test:
                v = p >> 3
                if v == t:
                    return _one_step(outs, ins, s, t, source, target, codes, p & 7, along_out)
                if v not in forward:
                    forward[v] = s
                    append(v)
    if len(forward) > visit_limit - 1:
        _over_limit(visit_limit, len(forward) + 1)
    backward = {t: -1}
    b_front = [t]
    for depth in range(2, max_depth + 1):
        if not f_front:
            return None
        if len(f_front) <= len(b_front):
            if depth == max_depth:
                meet = _meet(f_front, forward, backward, forward_sides, visit_limit)
            else:
                meet, f_front = _expand(f_front, forward, backward, forward_sides, visit_limit)
        elif depth == max_depth:
            meet = _meet(b_front, backward, forward, backward_sides, visit_limit)
        else:
            meet, b_front = _expand(b_front, backward, forward, backward_sides, visit_limit)
        if meet >= 0:
            return _path(names, outs, ins, forward, backward, meet, codes)
        if not b_front:
            return None
    return None


def _over_limit(visit_limit: int, visited: int) -> NoReturn:
    raise ResourceLimit(
        f"find_path visited more than {visit_limit} entities; ask with a smaller max_depth or fewer types",
        visited=visited,
        limit=visit_limit,
    )


# ------------------------------------------------------------------- the C search (optional)

#: whether find_path runs its search in C (nexus_streams/domain/_pathcore.c); see use_native
NATIVE = False
_native_find_path: _NativeFindPath | None = None


def _load_native() -> _NativeFindPath | None:
    """The C search, unless the environment asks for pure Python or it was not built (no C
    compiler at install time)."""
    if TOPOLOGY is None:
        return None
    from nexus_streams.domain import _pathcore

    _pathcore.configure(Path, RelationshipKey, _TYPES, _over_limit)
    return _pathcore.find_path


_NATIVE_SEARCH = _load_native()
#: whether the C search is there to use (built, and not turned off by NEXUS_STREAMS_PURE_PYTHON)
NATIVE_AVAILABLE = _NATIVE_SEARCH is not None


def use_native(enabled: bool) -> None:
    """Run find_path's search in C or in Python: tests and bench/graph.py compare the two.

    Raises RuntimeError when asked for C where it is not available (NATIVE_AVAILABLE)."""
    global NATIVE, _native_find_path
    if enabled and _NATIVE_SEARCH is None:
        raise RuntimeError(
            f"the C search of find_path is not available (not built, or {PURE_PYTHON_ENV} is set)"
        )
    _native_find_path = _NATIVE_SEARCH if enabled else None
    NATIVE = enabled


use_native(NATIVE_AVAILABLE)


def _path(
    names: list[str | None],
    outs: _Arrays,
    ins: _Arrays,
    forward: dict[int, int],
    backward: dict[int, int],
    meet: int,
    codes: _Codes,
) -> Path:
    """The path through `meet`, from the predecessor maps of both searches.

    For each step a -> b, the canonical relationship: a -> b, stored in the out-array of a,
    with the first code of `codes.out_order` it is stored with; else b -> a, in its in-array,
    with the first of `codes.in_order`.
    """
    nodes = [meet]
    node = forward[meet]
    while node >= 0:
        nodes.append(node)
        node = forward[node]
    nodes.reverse()
    node = backward[meet]
    while node >= 0:
        nodes.append(node)
        node = backward[node]
    entities = cast("list[str]", list(map(names.__getitem__, nodes)))
    keys: list[RelationshipKey] = []
    out_order, in_order = codes.out_order, codes.in_order
    a, name_a = nodes[0], entities[0]
    for i in range(1, len(nodes)):
        b, name_b = nodes[i], entities[i]
        code = _first_stored(outs[a], ins[b], a, b, out_order)
        if code >= 0:
            keys.append(make_key(name_a, _TYPES[code], name_b))
        else:
            code = _first_stored(ins[a], outs[b], a, b, in_order)
            assert code >= 0, f"no step from node {a} to node {b}"
            keys.append(make_key(name_b, _TYPES[code], name_a))
        a, name_a = b, name_b
    return _new_path(entities, keys)


def _one_step(
    outs: _Arrays,
    ins: _Arrays,
    s: int,
    t: int,
    source: str,
    target: str,
    codes: _Codes,
    found: int,
    along_out: bool,
) -> Path:
    """`_path` for a path of one step, which the search took with the code `found`, along the
    canonical direction or not: no code after it needs a test."""
    if along_out:
        code = _first_stored(outs[s], ins[t], s, t, codes.out_order, found)
        return _new_path([source, target], [make_key(source, _TYPES[code], target)])
    code = _first_stored(outs[s], ins[t], s, t, codes.out_order)
    if code >= 0:
        return _new_path([source, target], [make_key(source, _TYPES[code], target)])
    code = _first_stored(ins[s], outs[t], s, t, codes.in_order, found)
    return _new_path([source, target], [make_key(target, _TYPES[code], source)])


def _first_stored(
    entries: array[int] | None,
    mirror: array[int] | None,
    a: int,
    b: int,
    order: tuple[int, ...],
    known: int = -1,
) -> int:
    """The first code c of `order` with `b * 8 + c` in `entries`, an array of node a; -1 if
    none. `known`: a code known to be stored (it ends the tests), or -1.

    `b * 8 + c in outs[a]` holds exactly when `a * 8 + c in ins[b]`, and the same for the
    in-arrays: `mirror` is that array of node b, and each test scans the shorter of the two (a
    hub's can hold thousands of entries).
    """
    if not order or order[0] == known or entries is None or mirror is None:
        return known
    at = b * 8
    if len(mirror) < len(entries):
        entries, at = mirror, a * 8
    for code in order:
        if code == known or at + code in entries:
            return code
    return -1


#: (arrays, the codes to test or None for all, True: a step along the arrays reads the
#: relationship along its canonical direction)
_Sides: TypeAlias = "tuple[tuple[list[array[int] | None], frozenset[int] | None, bool], ...]"


def _expand(  # noqa: C901 - one BFS level, inlined: it is the hot loop of find_path
    frontier: list[int],
    seen: dict[int, int],
    other: dict[int, int],
    sides: _Sides,
    visit_limit: int,
) -> tuple[int, list[int]]:
    """One BFS level: (meeting node or -1, next frontier); `seen` maps node -> predecessor."""
    budget = visit_limit - len(other)
    nxt: list[int] = []
    append = nxt.append
    for u in frontier:
        for arrays, codes, _ in sides:
            entries = arrays[u]
            if entries is None:
                continue
            if codes is None:
                for p in entries:
                    v = p >> 3
                    if v not in seen:
                        seen[v] = u
                        if v in other:
                            return v, nxt
                        append(v)
            else:
                for p in entries:
                    if p & 7 in codes:
                        v = p >> 3
                        if v not in seen:
                            seen[v] = u
                            if v in other:
                                return v, nxt
                            append(v)
        if len(seen) > budget:
            _over_limit(visit_limit, len(seen) + len(other))
    return -1, nxt


def _meet(
    frontier: list[int],
    seen: dict[int, int],
    other: dict[int, int],
    sides: _Sides,
    visit_limit: int,
) -> int:
    """The last BFS level: the meeting node or -1, as `_expand` finds it, but without recording
    the nodes reached (no level follows): `seen` gets the meeting node only.

    The searches never share a node before they meet, so a node of `other` is always new here.
    While the entries read could all be new nodes without passing the visit limit, the limit
    cannot be reached; past that, the level is redone by `_expand`, which counts exactly.
    """
    room = visit_limit - len(other) - len(seen)
    read = 0
    for u in frontier:
        for arrays, codes, _ in sides:
            entries = arrays[u]
            if entries is None:
                continue
            read += len(entries)
            if codes is None:
                for p in entries:
                    if p >> 3 in other:
                        seen[p >> 3] = u
                        return p >> 3
            else:
                for p in entries:
                    if p >> 3 in other and p & 7 in codes:
                        seen[p >> 3] = u
                        return p >> 3
        if read > room:
            return _expand(frontier, seen, other, sides, visit_limit)[0]
    return -1


# -------------------------------------------------------------------------------- traverse


def traverse(
    index: GraphIndex,
    start: str,
    *,
    max_depth: int,
    direction: Direction = Direction.BOTH,
    types: Iterable[RelationType] | None = None,
    limit: int = 1000,
) -> Traversal:
    """Every entity within `max_depth` steps of `start`, in BFS order, with the tree edges.

    Raises `ResourceLimit` as soon as more than `limit` entities would be reached: never a
    truncated answer. An unknown start (no relationships) reaches nothing.
    """
    _check_depth(max_depth)
    wanted = _type_set(types)
    s = index.node_of(start)
    if s is None or max_depth == 0:
        return Traversal([], [])
    out_codes, in_codes = _step_codes(direction, wanted)[:2]
    names, outs, ins = index.adjacency_lists()
    cap = limit + 1  # the start is in `via` too
    #: reached node -> predecessor * 16 + type code * 2 + (1: along the out-array of the predecessor)
    via: dict[int, int] = {s: -1}
    order: list[int] = []
    depths: list[int] = []
    frontier = [s]
    sides = [(a, c, along) for a, c, along in ((outs, out_codes, 1), (ins, in_codes, 0)) if c]
    for depth in range(1, max_depth + 1):
        frontier = _level(frontier, via, sides, cap)
        if len(via) > cap:
            raise ResourceLimit(
                f"traverse from {start} reaches more than {limit} entities within depth "
                f"{max_depth}; ask with a smaller max_depth or fewer types",
                limit=limit,
                max_depth=max_depth,
            )
        if not frontier:
            break
        order += frontier
        depths += [depth] * len(frontier)
    return _traversal(names, via, order, depths)


def _level(
    frontier: list[int],
    via: dict[int, int],
    sides: list[tuple[_Arrays, frozenset[int], int]],
    cap: int,
) -> list[int]:
    """One BFS level of traverse; stops early once `via` holds more than `cap` nodes."""
    nxt: list[int] = []
    for u in frontier:
        for arrays, codes, along in sides:
            entries = arrays[u]
            if entries is None:
                continue
            for p in entries:
                if p & 7 in codes:
                    v = p >> 3
                    if v not in via:
                        via[v] = (u << 4) | ((p & 7) << 1) | along
                        if len(via) > cap:
                            return nxt
                        nxt.append(v)
    return nxt


def _traversal(
    names: list[str | None], via: dict[int, int], order: list[int], depths: list[int]
) -> Traversal:
    entities: list[tuple[str, int]] = []
    keys: list[RelationshipKey] = []
    for v, depth in zip(order, depths, strict=True):
        e = via[v]
        u, type_, name = e >> 4, TYPES_BY_CODE[(e >> 1) & 7], _name(names, v)
        entities.append((name, depth))
        if e & 1:
            keys.append(RelationshipKey(_name(names, u), type_, name))
        else:
            keys.append(RelationshipKey(name, type_, _name(names, u)))
    return Traversal(entities, keys)


# ------------------------------------------------------------------ cycles and dependencies


def detect_cycles_from(
    index: GraphIndex,
    entity: str,
    *,
    types: Iterable[RelationType] | None = None,
    max_cycles: int = 10,
    visit_limit: int = 100_000,
) -> list[list[str]]:
    """Directed cycles reachable from `entity` along the relationships of `types` (read
    source -> target; `child` reads parent backwards), each as [a, b, ..., a].

    Iterative DFS: each back edge closes one cycle, so the cycles are simple and distinct (as
    entity lists: two relationships between the same entities make one cycle), and none is
    found iff what is reachable is acyclic. At most `max_cycles`; `ResourceLimit`
    (details: visited, limit) when more than `visit_limit` entities are visited.
    """
    if max_cycles < 1:
        raise ValidationFailed(f"max_cycles must be 1 or more, not {max_cycles}", field="max_cycles")
    wanted = dependency_types(types)
    s = index.node_of(entity)
    if s is None:
        return []
    names, outs, ins = index.adjacency_lists()
    cycles: list[list[str]] = []
    seen: set[tuple[int, ...]] = set()

    def close(path: list[int], v: int) -> bool:
        if tuple(path) not in seen:  # parallel relationships (two types) close the same cycle
            seen.add(tuple(path))
            cycles.append([_name(names, n) for n in path] + [_name(names, v)])
        return len(cycles) >= max_cycles

    out_codes, in_codes = _step_codes(Direction.OUT, wanted)[:2]
    _dfs(s, (outs, ins, out_codes, in_codes), close, "detect_cycles", entity, visit_limit)
    return cycles


def resolve_dependencies(
    index: GraphIndex,
    entity: str,
    *,
    types: Iterable[RelationType] | None = None,
    visit_limit: int = 100_000,
) -> list[str]:
    """`entity` and everything it depends on (transitively, along `types` read source ->
    target), dependencies first and `entity` last: each entity comes after all it depends on.

    Raises `CycleDetected` (details: entity, cycle as [a, b, ..., a]) when the dependencies
    loop, and `ResourceLimit` (details: visited, limit) when more than `visit_limit` entities
    are visited. An entity with no relationships depends on nothing: [entity].
    """
    wanted = dependency_types(types)
    s = index.node_of(entity)
    if s is None:
        return [entity]
    names, outs, ins = index.adjacency_lists()

    def refuse(path: list[int], v: int) -> bool:
        cycle = [_name(names, n) for n in path] + [_name(names, v)]
        raise CycleDetected(
            f"the dependencies of {entity} form a cycle: {' -> '.join(cycle)}",
            entity=entity,
            cycle=cycle,
        )

    out_codes, in_codes = _step_codes(Direction.OUT, wanted)[:2]
    arrays = (outs, ins, out_codes, in_codes)
    order = _dfs(s, arrays, refuse, "resolve_dependencies", entity, visit_limit)
    return [_name(names, n) for n in order]


def _dfs(  # noqa: C901 - the hot loop, inlined: no object is created per visited node
    start: int,
    arrays: tuple[_Arrays, _Arrays, frozenset[int], frozenset[int]],
    back_edge: Callable[[list[int], int], bool],
    what: str,
    entity: str,
    visit_limit: int,
) -> list[int]:
    """Iterative depth-first search from `start` along the steps of `arrays` (out-arrays,
    in-arrays, codes to follow on each); the nodes in post-order (each after every node it
    leads to, unless on a cycle). `back_edge(path, v)` is called for each step to a node v on
    the stack, with the stack from v on; it returns True to stop the search.

    The stack holds ints only (node, and a cursor over its out- then in-entries): creating an
    iterator per node made the search 3x slower, mostly in garbage collection.
    """
    outs, ins, out_codes, in_codes = arrays
    #: node -> its position on the stack while there, -1 once finished
    position = {start: 0}
    stack = [start]
    cursor = [0]
    order: list[int] = []
    while stack:
        u = stack[-1]
        i = cursor[-1]
        out = outs[u] if out_codes else None
        n_out = 0 if out is None else len(out)
        inn = ins[u] if in_codes else None
        n = n_out if inn is None else n_out + len(inn)
        v = -1
        while i < n:
            if i < n_out:
                p = out[i]  # type: ignore[index]
                follow = p & 7 in out_codes
            else:
                p = inn[i - n_out]  # type: ignore[index]
                follow = p & 7 in in_codes
            i += 1
            if follow:
                at = position.get(p >> 3)
                if at is None:
                    v = p >> 3
                    break
                if at >= 0 and back_edge(stack[at:], p >> 3):
                    return order
        if v < 0:
            position[u] = -1
            order.append(u)
            stack.pop()
            cursor.pop()
            continue
        cursor[-1] = i
        position[v] = len(stack)
        stack.append(v)
        cursor.append(0)
        if len(position) > visit_limit:
            raise ResourceLimit(
                f"{what} from {entity} visited more than {visit_limit} entities; ask with fewer types",
                visited=len(position),
                limit=visit_limit,
            )
    return order
