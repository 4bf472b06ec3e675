"""The live graph of one namespace: relationships by key plus an adjacency index for traversals.

Commands are planned against the graph without touching it (`plan_create`, `plan_delete`) and
return an `Outcome`: the changes to apply, the events they cause and the output to answer with.
The caller applies the changes to the graph and to its durable store, so that a failed plan
changes nothing and a transaction can stage several plans before applying any.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nexus_streams.domain.errors import DuplicateRelationship, NotFound
from nexus_streams.domain.relationships import (
    Relationship,
    RelationshipKey,
    RelationType,
    canonical_key,
    check_endpoints,
    check_metadata,
)


@dataclass(frozen=True, slots=True)
class Put:
    relationship: Relationship


@dataclass(frozen=True, slots=True)
class Remove:
    relationship: Relationship


Change = Put | Remove


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """Something that happened, published on the events topic once its change is applied."""

    type: str
    data: dict[str, Any]


@dataclass(slots=True)
class Outcome:
    output: dict[str, Any]
    changes: list[Change] = field(default_factory=list)
    events: list[DomainEvent] = field(default_factory=list)


class Graph:
    """Relationships of one namespace and their adjacency, in both directions."""

    __slots__ = ("namespace", "_relationships", "_out", "_in")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._relationships: dict[RelationshipKey, Relationship] = {}
        self._out: defaultdict[str, defaultdict[RelationType, set[str]]] = defaultdict(
            lambda: defaultdict(set)
        )
        self._in: defaultdict[str, defaultdict[RelationType, set[str]]] = defaultdict(
            lambda: defaultdict(set)
        )

    def __len__(self) -> int:
        return len(self._relationships)

    def __contains__(self, key: RelationshipKey) -> bool:
        return key in self._relationships

    def get(self, key: RelationshipKey) -> Relationship | None:
        return self._relationships.get(key)

    def relationships(self) -> list[Relationship]:
        return list(self._relationships.values())

    def targets(self, source: str, type_: RelationType) -> set[str]:
        """Entities that `source` points at with `type_` (canonical direction)."""
        by_type = self._out.get(source)
        return set(by_type.get(type_, ())) if by_type else set()

    def sources(self, target: str, type_: RelationType) -> set[str]:
        """Entities that point at `target` with `type_` (canonical direction)."""
        by_type = self._in.get(target)
        return set(by_type.get(type_, ())) if by_type else set()

    def apply(self, changes: list[Change]) -> None:
        for change in changes:
            rel = change.relationship
            if isinstance(change, Put):
                self._relationships[rel.key] = rel
                self._out[rel.source][rel.type].add(rel.target)
                self._in[rel.target][rel.type].add(rel.source)
            else:
                self._relationships.pop(rel.key, None)
                _discard(self._out, rel.source, rel.type, rel.target)
                _discard(self._in, rel.target, rel.type, rel.source)


def _discard(
    index: defaultdict[str, defaultdict[RelationType, set[str]]],
    node: str,
    type_: RelationType,
    other: str,
) -> None:
    by_type = index.get(node)
    if by_type is None:
        return
    peers = by_type.get(type_)
    if peers is not None:
        peers.discard(other)
        if not peers:
            del by_type[type_]
    if not by_type:
        del index[node]


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
    key = canonical_key(source, type_, target)
    if key in graph:
        raise DuplicateRelationship(
            f"{source} {type_.value} {target} exists already; use `update` to change its metadata",
            source=source,
            type=type_.value,
            target=target,
        )
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
    data = rel.to_dict()
    return Outcome(
        output={"relationship": data},
        changes=[Put(rel)],
        events=[DomainEvent("relationship_created", {"relationship": data})],
    )


def plan_delete(graph: Graph, source: str, type_: RelationType, target: str) -> Outcome:
    check_endpoints(source, target)
    rel = graph.get(canonical_key(source, type_, target))
    if rel is None:
        raise NotFound(
            f"no relationship {source} {type_.value} {target} in namespace {graph.namespace!r}",
            source=source,
            type=type_.value,
            target=target,
        )
    data = rel.to_dict()
    return Outcome(
        output={"relationship": data},
        changes=[Remove(rel)],
        events=[DomainEvent("relationship_deleted", {"relationship": data})],
    )
