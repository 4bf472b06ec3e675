"""The graph of one namespace and the relationship commands that change it.

`Graph` = the live `GraphIndex` (topology) + the durable records (a `RecordStore`, in the worker
a changelog-backed table) + the namespace's schema and expiry schedule.

Commands change the graph inside a unit of work: `savepoint()`, then any number of `plan_*`
calls, then either `commit()` (returns the `Change`s the caller must make durable) or
`rollback(savepoint)` (restores the index exactly). A batch is all-or-nothing this way, and a
failed command changes nothing.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from nexus_streams.domain.errors import (
    ConcurrentModification,
    CycleDetected,
    DuplicateRelationship,
    NotFound,
    ResourceLimit,
    SchemaViolation,
)
from nexus_streams.domain.index import Direction, GraphIndex
from nexus_streams.domain.relationships import (
    Relationship,
    RelationshipKey,
    RelationType,
    canonical_key,
    check_endpoints,
    check_id,
    check_metadata,
)
from nexus_streams.domain.schema import Schema

#: a parent/child cycle check visits at most this many entities
HIERARCHY_VISIT_LIMIT = 200_000


@dataclass(frozen=True, slots=True)
class Put:
    relationship: Relationship


@dataclass(frozen=True, slots=True)
class Remove:
    relationship: Relationship


Change = Put | Remove


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """Something that happened, published on the events topic once its change is durable."""

    type: str
    data: dict[str, Any]


@dataclass(slots=True)
class Outcome:
    output: dict[str, Any]
    events: list[DomainEvent] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)


class RecordStore(Protocol):
    """Durable relationship records of one namespace (the worker's changelog-backed table)."""

    def get(self, key: RelationshipKey) -> Relationship | None: ...


class MemoryRecords:
    """A RecordStore in a dict, for tests and tools."""

    def __init__(self) -> None:
        self.data: dict[RelationshipKey, Relationship] = {}

    def get(self, key: RelationshipKey) -> Relationship | None:
        return self.data.get(key)

    def apply(self, changes: Iterable[Change]) -> None:
        for change in changes:
            rel = change.relationship
            if isinstance(change, Put):
                self.data[rel.key] = rel
            else:
                self.data.pop(rel.key, None)


_MISSING = object()


class Graph:
    """One namespace: index, records, schema, expiry schedule, and the open unit of work."""

    def __init__(self, namespace: str, records: RecordStore) -> None:
        self.namespace = namespace
        self.index = GraphIndex()
        self.records = records
        self.schema: Schema | None = None
        #: (expires_at timestamp, key); stale entries are skipped when popped
        self._expiry: list[tuple[float, RelationshipKey]] = []
        #: records written in the open unit of work (None: removed)
        self._pending: dict[RelationshipKey, Relationship | None] = {}
        #: how to undo the open unit of work: (key, previous pending value or _MISSING, was in index)
        self._undo: list[tuple[RelationshipKey, object, bool]] = []

    def __len__(self) -> int:
        return len(self.index)

    # -- reading -----------------------------------------------------------------------------

    def get(self, key: RelationshipKey) -> Relationship | None:
        if key in self._pending:
            return self._pending[key]
        if not self.index.has(key):
            return None
        return self.records.get(key)

    def require(self, source: str, type_: RelationType, target: str) -> Relationship:
        check_endpoints(source, target)
        rel = self.get(canonical_key(source, type_, target))
        if rel is None:
            raise NotFound(
                f"no relationship {source} {type_.value} {target} in namespace {self.namespace!r}",
                source=source,
                type=type_.value,
                target=target,
            )
        return rel

    # -- the unit of work ----------------------------------------------------------------------

    def savepoint(self) -> int:
        return len(self._undo)

    def rollback(self, savepoint: int = 0) -> None:
        while len(self._undo) > savepoint:
            key, previous, was_indexed = self._undo.pop()
            if was_indexed:
                self.index.add(key)
            else:
                self.index.remove(key)
            if previous is _MISSING:
                self._pending.pop(key, None)
            else:
                self._pending[key] = previous  # type: ignore[assignment]

    def commit(self) -> list[Change]:
        """Close the unit of work; return what the caller must write to the durable store."""
        changes: list[Change] = []
        for key, rel in self._pending.items():
            if rel is not None:
                changes.append(Put(rel))
                if rel.expires_at is not None:
                    heapq.heappush(self._expiry, (rel.expires_at.timestamp(), key))
            else:
                previous = self.records.get(key)
                if previous is not None:
                    changes.append(Remove(previous))
        self._pending.clear()
        self._undo.clear()
        return changes

    def _write(self, key: RelationshipKey, rel: Relationship | None) -> None:
        self._undo.append((key, self._pending.get(key, _MISSING), self.index.has(key)))
        self._pending[key] = rel
        if rel is None:
            self.index.remove(key)
        else:
            self.index.add(key)

    # -- recovery ----------------------------------------------------------------------------

    def load(self, key: RelationshipKey, expires_at: float | None = None) -> None:
        """Index a relationship read back from the durable store (no unit of work);
        `expires_at`: its expiry as a POSIX timestamp, if it has one."""
        self.index.add(key)
        if expires_at is not None:
            heapq.heappush(self._expiry, (expires_at, key))

    def unload(self, key: RelationshipKey) -> None:
        self.index.remove(key)

    # -- expiry --------------------------------------------------------------------------------

    def next_expiry(self) -> float | None:
        return self._expiry[0][0] if self._expiry else None

    def due(self, now: datetime) -> list[Relationship]:
        """Relationships whose expires_at has passed (each at most once)."""
        limit = now.timestamp()
        found: dict[RelationshipKey, Relationship] = {}
        while self._expiry and self._expiry[0][0] <= limit:
            at, key = heapq.heappop(self._expiry)
            rel = self.get(key)
            # entries of rewritten or removed relationships are stale: skip them
            if rel is not None and rel.expires_at is not None and rel.expires_at.timestamp() == at:
                found[key] = rel
        return list(found.values())


# -- planning: validate, then write into the open unit of work --------------------------------


def _check_schema(graph: Graph, source: str, type_: RelationType, target: str) -> None:
    if graph.schema is None:
        return
    problem = graph.schema.violation(source, type_, target)
    if problem is not None:
        raise SchemaViolation(problem, source=source, type=type_.value, target=target)


def _refuse_cycle(graph: Graph, key: RelationshipKey) -> None:
    """A `parent` relationship that would close a cycle in the hierarchy is refused."""
    cycle = _hierarchy_cycle(graph, key.source, key.target)
    if cycle is not None:
        raise CycleDetected(
            f"{key.source} parent {key.target} would close a cycle in the hierarchy: " + " -> ".join(cycle),
            cycle=cycle,
        )


def _hierarchy_cycle(graph: Graph, parent: str, child: str) -> list[str] | None:
    """The cycle that `parent parent child` would close, if any: a parent path child -> parent."""
    index = graph.index
    if parent not in index or child not in index:
        return None
    came_from: dict[str, str | None] = {child: None}
    frontier: deque[str] = deque([child])
    while frontier:
        node = frontier.popleft()
        for nxt, _ in index.neighbors(node, Direction.OUT, (RelationType.PARENT,)):
            if nxt in came_from:
                continue
            came_from[nxt] = node
            if nxt == parent:
                path = [nxt]
                back: str | None = node
                while back is not None:
                    path.append(back)
                    back = came_from[back]
                path.reverse()  # child ... parent
                return [parent, *path]
            if len(came_from) > HIERARCHY_VISIT_LIMIT:
                raise ResourceLimit(
                    f"checking the hierarchy for a cycle visited more than {HIERARCHY_VISIT_LIMIT} entities",
                    limit=HIERARCHY_VISIT_LIMIT,
                )
            frontier.append(nxt)
    return None


def plan_create(
    graph: Graph,
    source: str,
    type_: RelationType,
    target: str,
    metadata: dict[str, Any],
    now: datetime,
    expires_at: datetime | None = None,
) -> Outcome:
    check_endpoints(source, target)
    check_metadata(metadata)
    _check_schema(graph, source, type_, target)
    key = canonical_key(source, type_, target)
    if graph.get(key) is not None:
        raise DuplicateRelationship(
            f"{source} {type_.value} {target} exists already; use `update` to change its metadata",
            source=source,
            type=type_.value,
            target=target,
        )
    if key.type is RelationType.PARENT:
        _refuse_cycle(graph, key)
    rel = Relationship(
        namespace=graph.namespace,
        source=key.source,
        type=key.type,
        target=key.target,
        metadata=metadata,
        version=1,
        created_at=now,
        updated_at=now,
        expires_at=expires_at,
    )
    graph._write(key, rel)
    data = rel.to_dict()
    return Outcome({"relationship": data}, [DomainEvent("relationship_created", {"relationship": data})])


def plan_update(
    graph: Graph,
    source: str,
    type_: RelationType,
    target: str,
    metadata: dict[str, Any],
    now: datetime,
    expected_version: int | None = None,
    expires_at: datetime | None = None,
) -> Outcome:
    check_metadata(metadata)
    rel = graph.require(source, type_, target)
    if expected_version is not None and expected_version != rel.version:
        raise ConcurrentModification(
            f"{source} {type_.value} {target} is at version {rel.version}, not "
            f"{expected_version}; read it again and retry",
            expected_version=expected_version,
            actual_version=rel.version,
        )
    updated = rel.evolve(
        metadata=metadata,
        version=rel.version + 1,
        updated_at=now,
        expires_at=expires_at if expires_at is not None else rel.expires_at,
    )
    graph._write(rel.key, updated)
    data = updated.to_dict()
    return Outcome(
        {"relationship": data},
        [DomainEvent("relationship_updated", {"relationship": data, "previous_version": rel.version})],
    )


def plan_delete(graph: Graph, source: str, type_: RelationType, target: str) -> Outcome:
    rel = graph.require(source, type_, target)
    graph._write(rel.key, None)
    data = rel.to_dict()
    return Outcome({"relationship": data}, [DomainEvent("relationship_deleted", {"relationship": data})])


def plan_delete_entity(graph: Graph, entity: str, limit: int) -> Outcome:
    check_id(entity, "entity")
    keys = graph.index.edges_of(entity)
    if len(keys) > limit:
        raise ResourceLimit(
            f"{entity} has {len(keys)} relationships; delete_entity removes at most {limit} "
            "in one command (delete some first, or raise NEXUS_MAX_DELETE_ENTITY)",
            relationships=len(keys),
            limit=limit,
        )
    events = []
    for key in keys:
        rel = graph.get(key)
        if rel is None:  # pragma: no cover - the index and the records agree
            continue
        graph._write(key, None)
        events.append(DomainEvent("relationship_deleted", {"relationship": rel.to_dict()}))
    return Outcome({"entity": entity, "deleted": len(events)}, events)


def plan_expire(graph: Graph, now: datetime) -> Outcome:
    events = []
    for rel in graph.due(now):
        graph._write(rel.key, None)
        events.append(DomainEvent("relationship_expired", {"relationship": rel.to_dict()}))
    return Outcome({"expired": len(events)}, events)


def plan_restore(graph: Graph, restored: Relationship) -> Outcome:
    """Put `restored` back as a backup has it (its version and timestamps included): created if
    missing, overwritten if present, so that restoring the same backup twice changes nothing."""
    source, type_, target = restored.source, restored.type, restored.target
    check_endpoints(source, target)
    check_metadata(restored.metadata)
    _check_schema(graph, source, type_, target)
    key = canonical_key(source, type_, target)
    previous = graph.get(key)
    if previous is None and key.type is RelationType.PARENT:
        _refuse_cycle(graph, key)
    rel = Relationship(
        namespace=graph.namespace,
        source=key.source,
        type=key.type,
        target=key.target,
        metadata=restored.metadata,
        version=restored.version,
        created_at=restored.created_at,
        updated_at=restored.updated_at,
        expires_at=restored.expires_at,
    )
    if previous == rel:
        return Outcome({"relationship": _identity(rel), "restored": False})
    graph._write(key, rel)
    data = rel.to_dict()
    return Outcome(
        {"relationship": _identity(rel), "restored": True},
        [DomainEvent("relationship_restored", {"relationship": data})],
    )


def _identity(rel: Relationship) -> dict[str, Any]:
    return {"source": rel.source, "type": rel.type.value, "target": rel.target, "version": rel.version}
