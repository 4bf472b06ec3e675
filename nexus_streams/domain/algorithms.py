"""Bounded traversals on the live adjacency index (domain/index.py), cheap enough for the agent.

Every function works on node numbers and packed `neighbour * 8 + type` entries and builds
strings and RelationshipKeys only for its answer. Each is bounded (depth, a result limit or a
visit limit) and raises `ResourceLimit` rather than answering partially, so the work one call can
do on the event loop is capped. Whole-graph questions belong to domain/analysis.py.

Measured at 1M relationships on a 2-core machine (bench/graph.py): find_path max_depth=3 ~11 us
at p50; a search that exhausts its visit limit costs ~0.7-1.4 us per visited entity (BFS) or
~0.8 us (DFS), so the visit limit, not the depth, bounds the longest step: ~50k fits 50 ms."""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeAlias

from nexus_streams.domain.errors import CycleDetected, ResourceLimit, ValidationFailed
from nexus_streams.domain.index import TYPES_BY_CODE, Direction, GraphIndex, _steps
from nexus_streams.domain.relationships import RelationshipKey, RelationType, parse_type

#: every code stored in the arrays (child is never stored), in the order paths prefer them
_CODE_ORDER = (0, 1, 2, 3)
_ALL_CODES = frozenset(_CODE_ORDER)
#: what cycle detection and dependency resolution follow unless asked otherwise
DEFAULT_DEPENDENCY_TYPES = (RelationType.OWNER, RelationType.MEMBER, RelationType.PARENT)

_Arrays: TypeAlias = "list[array[int] | None]"


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


_Codes: TypeAlias = tuple[frozenset[int], frozenset[int], frozenset[int] | None, frozenset[int] | None]
_STEP_CACHE: dict[tuple[Direction, frozenset[RelationType] | None], _Codes] = {}


def _step_codes(index: GraphIndex, direction: Direction, wanted: frozenset[RelationType] | None) -> _Codes:
    """index.step_codes plus, per array, the codes to test (None: all, no test needed);
    memoised: computing it costs ~10 us, more than a whole depth-3 search."""
    key = (direction, wanted)
    codes = _STEP_CACHE.get(key)
    if codes is None:
        out_codes, in_codes = index.step_codes(direction, wanted)
        codes = out_codes, in_codes, _filter(out_codes), _filter(in_codes)
        _STEP_CACHE[key] = codes
    return codes


def _filter(codes: frozenset[int]) -> frozenset[int] | None:
    return None if codes >= _ALL_CODES else codes


def _key_between(
    outs: _Arrays,
    ins: _Arrays,
    a: int,
    b: int,
    steps: tuple[str, str, frozenset[int], frozenset[int]],
) -> RelationshipKey:
    """The canonical relationship of a step from node a to node b (named `steps[:2]`), along
    the codes `steps[2:]` allow on each array; the lowest type code first if several do."""
    name_a, name_b, out_codes, in_codes = steps
    entries = outs[a]
    if entries is not None:
        for code in _CODE_ORDER:
            if code in out_codes and b * 8 + code in entries:
                return RelationshipKey(name_a, TYPES_BY_CODE[code], name_b)
    entries = ins[a]
    if entries is not None:
        for code in _CODE_ORDER:
            if code in in_codes and b * 8 + code in entries:
                return RelationshipKey(name_b, TYPES_BY_CODE[code], name_a)
    raise AssertionError(f"no step from node {a} to node {b}")  # pragma: no cover


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

    Bidirectional BFS that always expands the smaller frontier; the backward search follows the
    steps in reverse. An entity with no relationships is not in the index: no path (but an
    entity always reaches itself with no relationship). Raises `ResourceLimit` when more than
    `visit_limit` entities were visited (checked after each expanded entity, so it can overshoot
    by one entity's degree before raising).
    """
    if max_depth < 0:
        _check_depth(max_depth)
    wanted = None if types is None else _type_set(types)
    if source == target:
        return Path([source], [])
    s = index.node_of(source)
    t = index.node_of(target)
    if s is None or t is None:
        return None
    out_codes, in_codes, out_test, in_test = _step_codes(index, direction, wanted)
    names, outs, ins = index.adjacency_lists()
    # forward: out-arrays with out_codes, in-arrays with in_codes; backward: the other way round
    forward_sides: _Sides = []
    backward_sides: _Sides = []
    if out_codes:
        forward_sides.append((outs, out_test))
        backward_sides.append((ins, out_test))
    if in_codes:
        forward_sides.append((ins, in_test))
        backward_sides.append((outs, in_test))
    forward: dict[int, int] = {s: -1}
    backward: dict[int, int] = {t: -1}
    f_front = [s]
    b_front = [t]
    meet = -1
    for _ in range(max_depth):
        if len(f_front) <= len(b_front):
            meet, f_front = _expand(f_front, forward, backward, forward_sides, visit_limit)
        else:
            meet, b_front = _expand(b_front, backward, forward, backward_sides, visit_limit)
        if meet >= 0 or not f_front or not b_front:
            break
    if meet < 0:
        return None
    return _path(names, outs, ins, forward, backward, meet, out_codes, in_codes)


def _path(
    names: list[str | None],
    outs: _Arrays,
    ins: _Arrays,
    forward: dict[int, int],
    backward: dict[int, int],
    meet: int,
    out_codes: frozenset[int],
    in_codes: frozenset[int],
) -> Path:
    """The path through `meet`, from the predecessor maps of both searches."""
    nodes: list[int] = []
    node = meet
    while node >= 0:
        nodes.append(node)
        node = forward[node]
    nodes.reverse()
    node = backward[meet]
    while node >= 0:
        nodes.append(node)
        node = backward[node]
    entities = [_name(names, n) for n in nodes]
    keys = [
        _key_between(outs, ins, nodes[i], nodes[i + 1], (entities[i], entities[i + 1], out_codes, in_codes))
        for i in range(len(nodes) - 1)
    ]
    return Path(entities, keys)


_Sides: TypeAlias = "list[tuple[list[array[int] | None], frozenset[int] | None]]"


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
        for arrays, codes in sides:
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
            visited = len(seen) + len(other)
            raise ResourceLimit(
                f"find_path visited more than {visit_limit} entities; "
                "ask with a smaller max_depth or fewer types",
                visited=visited,
                limit=visit_limit,
            )
    return -1, nxt


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
    out_codes, in_codes = _step_codes(index, direction, wanted)[:2]
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

    out_codes, in_codes = _step_codes(index, Direction.OUT, wanted)[:2]
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

    out_codes, in_codes = _step_codes(index, Direction.OUT, wanted)[:2]
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
