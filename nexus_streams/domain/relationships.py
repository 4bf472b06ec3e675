"""Relationships: the five types, their canonical form, and the rules every relationship obeys."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from nexus_streams.domain.errors import (
    InvalidEntityId,
    MetadataTooLarge,
    SelfRelationship,
    UnknownRelationshipType,
)
from nexus_streams.domain.times import iso, parse_time

#: ids of entities: printable, no whitespace or control characters (C0, DEL, C1)
ID_PATTERN = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]+")
MAX_ID_CHARS = 256
MAX_METADATA_BYTES = 16 * 1024
#: separates the parts of a stored key; ids cannot contain it (no control characters)
SEP = "\x1f"


class RelationType(StrEnum):
    """The spec's relationship types."""

    #: source owns target (user:1 owner wallet:1)
    OWNER = "owner"
    #: source is a member of target
    MEMBER = "member"
    #: symmetric link; `A linked B` and `B linked A` are the same relationship
    LINKED = "linked"
    #: source is the parent of target; the inverse of `child`
    PARENT = "parent"
    #: source is a child of target; stored as `target parent source`
    CHILD = "child"


@dataclass(frozen=True, slots=True, order=True)
class RelationshipKey:
    """Identity of a relationship in its canonical form (see `canonical_key`). Ordered, so that
    the expiry heap can hold two relationships that expire at the same instant."""

    source: str
    type: RelationType
    target: str

    def as_stored(self, namespace: str) -> str:
        return SEP.join((namespace, self.type.value, self.source, self.target))

    @classmethod
    def from_stored(cls, stored: str) -> tuple[str, RelationshipKey]:
        namespace, type_, source, target = stored.split(SEP)
        return namespace, cls(source, RelationType(type_), target)


_new_object = object.__new__
_set_source = RelationshipKey.__dict__["source"].__set__
_set_type = RelationshipKey.__dict__["type"].__set__
_set_target = RelationshipKey.__dict__["target"].__set__


def make_key(source: str, type_: RelationType, target: str) -> RelationshipKey:
    """`RelationshipKey(source, type_, target)` in about 60% of the time, for the traversals
    that answer with keys (domain/algorithms.py): the frozen dataclass's generated `__init__`
    sets each field through `object.__setattr__`; this writes the three slots directly. The
    same object in every way (tests/unit/test_algorithms.py checks it); like the constructor,
    it takes the fields as given (see canonical_key)."""
    key: RelationshipKey = _new_object(RelationshipKey)
    _set_source(key, source)
    _set_type(key, type_)
    _set_target(key, target)
    return key


def parse_type(value: str) -> RelationType:
    try:
        return RelationType(value)
    except ValueError:
        allowed = ", ".join(t.value for t in RelationType)
        raise UnknownRelationshipType(
            f"unknown relationship type {value!r}; use one of: {allowed}", field="type"
        ) from None


def canonical_key(source: str, type_: RelationType, target: str) -> RelationshipKey:
    """One key per relationship however it is written: child is stored as the inverse parent,
    linked with its ends in sorted order."""
    if type_ is RelationType.CHILD:
        return RelationshipKey(target, RelationType.PARENT, source)
    if type_ is RelationType.LINKED and target < source:
        return RelationshipKey(target, RelationType.LINKED, source)
    return RelationshipKey(source, type_, target)


def check_id(value: str, field_name: str) -> None:
    if not value or len(value) > MAX_ID_CHARS or not ID_PATTERN.fullmatch(value):
        raise InvalidEntityId(
            f"{field_name} must be 1 to {MAX_ID_CHARS} printable characters without whitespace",
            field=field_name,
        )


def metadata_bytes(metadata: dict[str, Any]) -> int:
    """Metadata's size as compact UTF-8 JSON (what the limit counts)."""
    if not metadata:
        return 2
    try:
        return len(orjson.dumps(metadata))
    except orjson.JSONEncodeError:  # what orjson does not write (an int past 64 bits): as json writes it
        return len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())


def check_metadata(metadata: dict[str, Any]) -> None:
    size = metadata_bytes(metadata)
    if size > MAX_METADATA_BYTES:
        raise MetadataTooLarge(
            f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}",
            field="metadata",
            size_bytes=size,
            limit_bytes=MAX_METADATA_BYTES,
        )


def check_endpoints(source: str, target: str) -> None:
    check_id(source, "source")
    check_id(target, "target")
    if source == target:
        raise SelfRelationship(
            f"a relationship needs two different entities; source and target are both {source!r}",
            field="target",
        )


@dataclass(slots=True)
class Relationship:
    """A stored relationship, always in canonical form."""

    namespace: str
    source: str
    type: RelationType
    target: str
    metadata: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    created_at: datetime | None = None
    updated_at: datetime | None = None
    expires_at: datetime | None = None

    @property
    def key(self) -> RelationshipKey:
        return RelationshipKey(self.source, self.type, self.target)

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "source": self.source,
            "type": self.type.value,
            "target": self.target,
            "metadata": self.metadata,
            "version": self.version,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "expires_at": iso(self.expires_at),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Relationship:
        return cls(
            namespace=data["namespace"],
            source=data["source"],
            type=RelationType(data["type"]),
            target=data["target"],
            metadata=dict(data.get("metadata") or {}),
            version=int(data.get("version", 1)),
            created_at=parse_time(data.get("created_at")),
            updated_at=parse_time(data.get("updated_at")),
            expires_at=parse_time(data.get("expires_at")),
        )

    def to_record(self) -> dict[str, Any]:
        """The stored value; the identity (namespace, type, source, target) is the key."""
        record: dict[str, Any] = {"v": self.version, "m": self.metadata}
        for name, value in (("c", self.created_at), ("u", self.updated_at), ("e", self.expires_at)):
            if value is not None:
                record[name] = iso(value)
        return record

    @classmethod
    def from_record(cls, namespace: str, key: RelationshipKey, record: dict[str, Any]) -> Relationship:
        return cls(
            namespace=namespace,
            source=key.source,
            type=key.type,
            target=key.target,
            metadata=record.get("m") or {},
            version=int(record.get("v", 1)),
            created_at=parse_time(record.get("c")),
            updated_at=parse_time(record.get("u")),
            expires_at=parse_time(record.get("e")),
        )

    def evolve(self, **changes: Any) -> Relationship:
        return replace(self, **changes)


def expiry_of(record: dict[str, Any]) -> float | None:
    """A stored record's expiry as a POSIX timestamp (None: it does not expire)."""
    parsed = parse_time(record.get("e"))
    return None if parsed is None else parsed.timestamp()
