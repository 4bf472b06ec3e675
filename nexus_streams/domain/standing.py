"""Standing queries: a question kept answered as the graph changes (docs/standing-queries.md).

Pure: a `StandingQuery` is evaluated on the live index (`evaluate`) into an `Answer` (matched or
not, with its witness) and the entities whose changes can alter that answer (`watched`);
`Watches` maps entities to subscriptions, so that after a change only the subscriptions it can
affect are evaluated again (`Watches.affected`).

Which changes can alter an answer:
- `find_path` (a path of at most d relationships from s to t), not matched: only an added
  relationship. On a new shortest path, the part before its first new relationship is old and
  at most d-1 long, so that relationship touches an entity within d-1 steps of s (the *ball* of
  s); the same holds from t backwards. The ball itself grows only by a relationship that touches
  it. So watching the smaller of the two balls is enough, and each evaluation recomputes it.
  Matched: only a removed relationship of the witness path (any other path is still there).
- `detect_cycles` (a cycle reachable from an entity), not matched: only an added relationship
  whose end is reachable (the reachable set grows only that way); matched: only a removed
  relationship of the witness: the cycle, or the chain that leads from the entity to it.
- `neighbors` (a count over or under a threshold): a change at the entity.
A relationship of a type the query does not follow changes nothing. A query whose watched set
would exceed `max_watched` entities is *wide*: any change of a followed type is evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from nexus_streams.domain import algorithms
from nexus_streams.domain.errors import CycleDetected, ResourceLimit, ValidationFailed
from nexus_streams.domain.graph import Change, Put
from nexus_streams.domain.index import Direction, GraphIndex
from nexus_streams.domain.relationships import (
    RelationshipKey,
    RelationType,
    check_endpoints,
    check_id,
    parse_type,
)

Kind = Literal["find_path", "detect_cycles", "neighbors"]
KINDS: tuple[Kind, ...] = ("find_path", "detect_cycles", "neighbors")
_REVERSE = {Direction.OUT: Direction.IN, Direction.IN: Direction.OUT, Direction.BOTH: Direction.BOTH}


@dataclass(frozen=True, slots=True)
class StandingQuery:
    """One of the three questions a subscription keeps answered."""

    kind: Kind
    #: find_path
    source: str = ""
    target: str = ""
    max_depth: int = 3
    direction: Direction = Direction.BOTH
    #: the types followed (None: every type; detect_cycles: its default dependency types)
    types: tuple[RelationType, ...] | None = None
    #: detect_cycles and neighbors
    entity: str = ""
    #: neighbors: matched when the count is over `over` or under `under` (exactly one is set)
    over: int | None = None
    under: int | None = None

    def check(self) -> None:
        """Raises what the query itself would raise for bad arguments (ValidationFailed, ...)."""
        if self.kind == "find_path":
            check_endpoints(self.source, self.target)
            if not 1 <= self.max_depth <= 10:
                raise ValidationFailed("max_depth must be 1 to 10", field="max_depth")
        else:
            check_id(self.entity, "entity")
        if self.kind == "detect_cycles":
            algorithms.dependency_types(self.types)
        if self.kind == "neighbors" and (self.over is None) == (self.under is None):
            raise ValidationFailed(
                "a standing neighbors query takes exactly one of count_over and count_under",
                field="count_over",
            )

    def follows(self, type_: RelationType) -> bool:
        """Whether a stored relationship of `type_` (canonical: never child) is followed."""
        types = self.types
        if types is None:
            return self.kind != "detect_cycles" or type_ in algorithms.DEFAULT_DEPENDENCY_TYPES
        if type_ is RelationType.PARENT:
            return RelationType.PARENT in types or RelationType.CHILD in types
        return type_ in types


@dataclass(frozen=True, slots=True)
class Answer:
    matched: bool
    #: find_path: {"path", "relationships", "length"}; detect_cycles: {"cycle"};
    #: neighbors: {"count"} (also when not matched); None otherwise
    witness: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"matched": self.matched, "witness": self.witness}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Answer:
        return cls(bool(data["matched"]), data.get("witness"))


@dataclass(frozen=True, slots=True)
class Evaluation:
    """An evaluation's outcome. `answer` None: it did not fit its visit limit (no answer)."""

    answer: Answer | None
    #: the entities whose changes may alter the answer; None: every change may (wide)
    watched: frozenset[str] | None
    #: about the entities the evaluation visited (what it costs the change's budget)
    visits: int


def evaluate(index: GraphIndex, query: StandingQuery, *, visit_limit: int, max_watched: int) -> Evaluation:
    """Answer `query` on `index` within `visit_limit` visited entities; see the module docstring
    for what is watched."""
    try:
        if query.kind == "find_path":
            return _find_path(index, query, visit_limit, max_watched)
        if query.kind == "detect_cycles":
            return _detect_cycles(index, query, visit_limit, max_watched)
        return _neighbors(index, query, visit_limit)
    except ResourceLimit as exc:
        visited = exc.details.get("visited")
        return Evaluation(None, None, visited if isinstance(visited, int) else visit_limit)


def _find_path(index: GraphIndex, query: StandingQuery, visit_limit: int, max_watched: int) -> Evaluation:
    path = algorithms.find_path(
        index,
        query.source,
        query.target,
        max_depth=query.max_depth,
        direction=query.direction,
        types=query.types,
        visit_limit=visit_limit,
    )
    if path is not None:
        witness = {
            "length": len(path.relationships),
            "path": path.entities,
            "relationships": [_key_dict(k) for k in path.relationships],
        }
        return Evaluation(Answer(True, witness), frozenset(path.entities), len(path.entities))
    visits = 1
    watched: frozenset[str] | None = None
    limit = min(max_watched, visit_limit)
    for start, direction in ((query.source, query.direction), (query.target, _REVERSE[query.direction])):
        ball = _ball(index, start, query.max_depth - 1, direction, query.types, limit)
        if ball is None:
            visits += limit
            continue
        visits += len(ball)
        if watched is None or len(ball) < len(watched):
            watched = ball
            limit = len(ball)
    return Evaluation(Answer(False), watched, visits)


def _ball(
    index: GraphIndex,
    start: str,
    depth: int,
    direction: Direction,
    types: tuple[RelationType, ...] | None,
    limit: int,
) -> frozenset[str] | None:
    """`start` and every entity within `depth` steps of it; None when over `limit`."""
    try:
        walk = algorithms.traverse(
            index, start, max_depth=depth, direction=direction, types=types, limit=limit
        )
    except ResourceLimit:
        return None
    return frozenset([start, *(entity for entity, _ in walk.entities)])


def _detect_cycles(index: GraphIndex, query: StandingQuery, visit_limit: int, max_watched: int) -> Evaluation:
    try:
        reachable = algorithms.resolve_dependencies(
            index, query.entity, types=query.types, visit_limit=visit_limit
        )
    except CycleDetected as exc:
        cycle = list(exc.details["cycle"])
        lead = _lead_in(index, query, cycle[0], min(max_watched, visit_limit))
        if lead is None:  # too far to watch: any removal it follows may end the match
            return Evaluation(Answer(True, {"cycle": cycle}), None, len(cycle) + max_watched)
        witness = {"cycle": cycle, "path": lead}
        return Evaluation(Answer(True, witness), frozenset(cycle + lead), len(cycle) + len(lead))
    watched = frozenset(reachable) if len(reachable) <= max_watched else None
    return Evaluation(Answer(False), watched, len(reachable))


def _lead_in(index: GraphIndex, query: StandingQuery, to: str, limit: int) -> list[str] | None:
    """The entities from `query.entity` to `to` along a shortest chain of followed relationships
    (removing one of them may make the cycle unreachable); None when more than `limit` are reachable."""
    if to == query.entity:
        return [to]
    types = algorithms.dependency_types(query.types)
    try:
        walk = algorithms.traverse(
            index,
            query.entity,
            max_depth=index.entity_count,
            direction=Direction.OUT,
            types=types,
            limit=limit,
        )
    except ResourceLimit:
        return None
    before = {}
    for (entity, _), key in zip(walk.entities, walk.relationships, strict=True):
        before[entity] = key.source if key.target == entity else key.target
    lead = [to]
    while lead[-1] != query.entity:
        lead.append(before[lead[-1]])
    return lead[::-1]


def _neighbors(index: GraphIndex, query: StandingQuery, visit_limit: int) -> Evaluation:
    count = len(index.neighbors(query.entity, query.direction, query.types))
    if count > visit_limit:
        raise ResourceLimit("neighbors over the visit limit", visited=count, limit=visit_limit)
    matched = count > query.over if query.over is not None else count < (query.under or 0)
    return Evaluation(Answer(matched, {"count": count}), frozenset([query.entity]), count + 1)


def _key_dict(key: RelationshipKey) -> dict[str, str]:
    return {"source": key.source, "type": key.type.value, "target": key.target}


# -- what a change can affect ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Touch:
    """One relationship a change added (or changed: `added`) or removed."""

    key: RelationshipKey
    added: bool


@dataclass(slots=True)
class _Watch:
    query: StandingQuery
    answer: Answer | None
    entities: frozenset[str] | None
    #: matched: the witness's relationships (find_path) or consecutive pairs (detect_cycles)
    witness_keys: frozenset[tuple[str, str]] | None = frozenset()


@dataclass
class Watches:
    """Per namespace: which subscription watches which entities."""

    by_entity: dict[str, set[str]] = field(default_factory=dict)
    #: subscriptions that any change of a followed type may affect
    wide: set[str] = field(default_factory=set)
    #: subscriptions without a trustworthy answer: every change is evaluated
    stale: set[str] = field(default_factory=set)
    _watches: dict[str, _Watch] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._watches)

    def __contains__(self, subscription_id: object) -> bool:
        return subscription_id in self._watches

    def watch(self, subscription_id: str, query: StandingQuery, evaluation: Evaluation) -> None:
        """What `evaluation` says `subscription_id` depends on (an answerless one: every change)."""
        self.unwatch(subscription_id)
        answer = evaluation.answer
        entities = evaluation.watched if answer is not None else None
        pairs: frozenset[tuple[str, str]] | None = frozenset()
        if answer is not None and answer.matched and answer.witness is not None:
            if query.kind == "find_path":
                pairs = frozenset(_pair(r["source"], r["target"]) for r in answer.witness["relationships"])
            elif query.kind == "detect_cycles":
                cycle = answer.witness["cycle"]
                lead = answer.witness.get("path")
                chain = list(zip(cycle, cycle[1:], strict=False))
                if lead is None:
                    pairs = None
                else:
                    chain += list(zip(lead, lead[1:], strict=False))
                    pairs = frozenset(_pair(a, b) for a, b in chain)
        self._watches[subscription_id] = _Watch(query, answer, entities, pairs)
        if answer is None:
            self.stale.add(subscription_id)
        elif entities is None:
            self.wide.add(subscription_id)
        else:
            for entity in entities:
                self.by_entity.setdefault(entity, set()).add(subscription_id)

    def unwatch(self, subscription_id: str) -> None:
        watch = self._watches.pop(subscription_id, None)
        if watch is None:
            return
        self.wide.discard(subscription_id)
        self.stale.discard(subscription_id)
        for entity in watch.entities or ():
            subs = self.by_entity.get(entity)
            if subs is not None:
                subs.discard(subscription_id)
                if not subs:
                    del self.by_entity[entity]

    def affected(self, touches: Iterable[Touch]) -> list[str]:
        """The subscriptions `touches` may affect, in id order (stale ones always)."""
        found = set(self.stale)
        candidates: set[str] = set()
        for touch in touches:
            candidates.clear()
            candidates |= self.wide
            for end in (touch.key.source, touch.key.target):
                subs = self.by_entity.get(end)
                if subs:
                    candidates |= subs
            for subscription_id in candidates - found:
                if _may_change(self._watches[subscription_id], touch):
                    found.add(subscription_id)
        return sorted(found)

    def watched_entities(self) -> int:
        return sum(len(subs) for subs in self.by_entity.values())


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def _may_change(watch: _Watch, touch: Touch) -> bool:
    query, answer = watch.query, watch.answer
    key = touch.key
    if not query.follows(key.type):
        return False
    if answer is None or query.kind == "neighbors":
        return True
    if not answer.matched:
        return touch.added
    if touch.added:
        return False
    return watch.witness_keys is None or _pair(key.source, key.target) in watch.witness_keys


def touches_of(changes: Iterable[Change]) -> Iterator[Touch]:
    """`Touch`es of committed changes (Put: added or changed; Remove: removed)."""
    for change in changes:
        yield Touch(change.relationship.key, isinstance(change, Put))


def parse_types(names: Iterable[str] | None) -> tuple[RelationType, ...] | None:
    return None if names is None else tuple(parse_type(n) for n in names)
