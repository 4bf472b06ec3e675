"""Relationship types, canonical keys, id/metadata rules, and the dict and record round trips."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_streams.domain.errors import (
    ErrorCode,
    InvalidEntityId,
    MetadataTooLarge,
    NexusError,
    SelfRelationship,
    UnknownRelationshipType,
)
from nexus_streams.domain.relationships import (
    MAX_ID_CHARS,
    MAX_METADATA_BYTES,
    Relationship,
    RelationshipKey,
    RelationType,
    canonical_key,
    check_endpoints,
    check_id,
    check_metadata,
    parse_type,
)

OWNER, MEMBER, LINKED, PARENT, CHILD = (
    RelationType.OWNER,
    RelationType.MEMBER,
    RelationType.LINKED,
    RelationType.PARENT,
    RelationType.CHILD,
)

# --------------------------------------------------------------------------- canonical_key

CANONICAL_CASES = [
    # (source, type, target) as written -> (source, type, target) as stored
    # child is stored as the inverse parent
    (("a", CHILD, "b"), ("b", PARENT, "a")),
    (("b", CHILD, "a"), ("a", PARENT, "b")),
    (("user:1", CHILD, "org:1"), ("org:1", PARENT, "user:1")),
    (("z", CHILD, "a"), ("a", PARENT, "z")),
    # parent is already canonical, in either order
    (("a", PARENT, "b"), ("a", PARENT, "b")),
    (("b", PARENT, "a"), ("b", PARENT, "a")),
    # linked is symmetric: ends in sorted order
    (("a", LINKED, "b"), ("a", LINKED, "b")),
    (("b", LINKED, "a"), ("a", LINKED, "b")),
    (("user:2", LINKED, "user:10"), ("user:10", LINKED, "user:2")),
    (("user:10", LINKED, "user:2"), ("user:10", LINKED, "user:2")),
    (("a", LINKED, "B"), ("B", LINKED, "a")),  # code point order: uppercase first
    (("é", LINKED, "e"), ("e", LINKED, "é")),
    (("ab", LINKED, "a"), ("a", LINKED, "ab")),
    # owner and member are directed and left unchanged
    (("user:1", OWNER, "wallet:1"), ("user:1", OWNER, "wallet:1")),
    (("wallet:1", OWNER, "user:1"), ("wallet:1", OWNER, "user:1")),
    (("b", OWNER, "a"), ("b", OWNER, "a")),
    (("user:1", MEMBER, "group:1"), ("user:1", MEMBER, "group:1")),
    (("group:1", MEMBER, "user:1"), ("group:1", MEMBER, "user:1")),
    (("z", MEMBER, "a"), ("z", MEMBER, "a")),
]


@pytest.mark.parametrize(("written", "stored"), CANONICAL_CASES, ids=repr)
def test_canonical_key__table(
    written: tuple[str, RelationType, str], stored: tuple[str, RelationType, str]
) -> None:
    assert canonical_key(*written) == RelationshipKey(*stored)


@pytest.mark.parametrize(("written", "stored"), CANONICAL_CASES, ids=repr)
def test_canonical_key__is_idempotent(
    written: tuple[str, RelationType, str], stored: tuple[str, RelationType, str]
) -> None:
    key = canonical_key(*written)
    assert canonical_key(key.source, key.type, key.target) == key


ids = st.sampled_from(["a", "b", "c", "user:1", "user:10", "user:2", "B", "é"])


@given(source=ids, target=ids, type_=st.sampled_from(list(RelationType)))
def test_canonical_key__never_child_and_idempotent(source: str, target: str, type_: RelationType) -> None:
    key = canonical_key(source, type_, target)
    assert key.type is not CHILD
    assert canonical_key(key.source, key.type, key.target) == key
    assert {key.source, key.target} == {source, target}


@given(source=ids, target=ids)
def test_canonical_key__inverse_forms_share_one_key(source: str, target: str) -> None:
    assert canonical_key(source, PARENT, target) == canonical_key(target, CHILD, source)
    assert canonical_key(source, LINKED, target) == canonical_key(target, LINKED, source)


def test_relationship_key__as_stored__joins_with_unit_separator() -> None:
    key = RelationshipKey("a", PARENT, "b")
    assert key.as_stored("ns") == "ns\x1fparent\x1fa\x1fb"


# --------------------------------------------------------------------------- parse_type


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("owner", OWNER),
        ("member", MEMBER),
        ("linked", LINKED),
        ("parent", PARENT),
        ("child", CHILD),
    ],
)
def test_parse_type__known(value: str, expected: RelationType) -> None:
    assert parse_type(value) is expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "Owner",
        "OWNER",
        "owners",
        "own",
        "parent ",
        " child",
        "linked\n",
        "children",
        "friend",
        "follows",
        "owner,member",
        "null",
        "ownér",
    ],
)
def test_parse_type__unknown(value: str) -> None:
    with pytest.raises(UnknownRelationshipType) as info:
        parse_type(value)
    err = info.value
    assert err.code is ErrorCode.UNKNOWN_RELATIONSHIP_TYPE
    assert err.to_dict()["code"] == "unknown_relationship_type"
    assert err.details == {"field": "type"}
    for allowed in RelationType:
        assert allowed.value in err.message
    assert repr(value) in err.message


# --------------------------------------------------------------------------- check_id

VALID_IDS = [
    "a",
    "A",
    "0",
    "user:1",
    "wallet:0xdeadbeef",
    "org/team#1",
    "a.b-c_d@e",
    "é",
    "用户:1",
    "😀",
    "x" * MAX_ID_CHARS,
    "é" * MAX_ID_CHARS,  # the limit is in characters, not bytes
    "~!$%^&*()[]{}<>?|",
    "a\u00a1b",  # the first printable character after the C1 controls
    "a\u200bb",  # a zero-width space is no whitespace to Python's \s
]

INVALID_IDS = [
    ("empty", ""),
    ("space", " "),
    ("inner space", "a b"),
    ("leading space", " a"),
    ("trailing space", "a "),
    ("tab", "a\tb"),
    ("newline only", "\n"),
    ("inner newline", "a\nb"),
    ("trailing newline", "a\n"),
    ("trailing crlf", "a\r\n"),
    ("carriage return", "a\rb"),
    ("vertical tab", "a\x0bb"),
    ("form feed", "a\x0cb"),
    ("nul", "a\x00"),
    ("escape", "a\x1b[31m"),
    ("unit separator", "a\x1fb"),
    ("del", "a\x7f"),
    ("c1 control 0x80", "a\x80b"),
    ("c1 next line", "a\x85"),
    ("c1 control 0x9f", "\x9fa"),
    ("line separator", "a\u2028b"),
    ("no-break space", "a\u00a0b"),
    ("em space", "a\u2003b"),
    ("ideographic space", "a\u3000b"),
    ("too long", "x" * (MAX_ID_CHARS + 1)),
    ("too long multibyte", "é" * (MAX_ID_CHARS + 1)),
    ("far too long", "x" * 10_000),
]


@pytest.mark.parametrize("value", VALID_IDS)
def test_check_id__valid(value: str) -> None:
    check_id(value, "source")


@pytest.mark.parametrize("value", [v for _, v in INVALID_IDS], ids=[n for n, _ in INVALID_IDS])
@pytest.mark.parametrize("field_name", ["source", "target"])
def test_check_id__invalid(value: str, field_name: str) -> None:
    with pytest.raises(InvalidEntityId) as info:
        check_id(value, field_name)
    assert info.value.code is ErrorCode.INVALID_ENTITY_ID
    assert info.value.to_dict()["code"] == "invalid_entity_id"
    assert info.value.details == {"field": field_name}
    assert field_name in info.value.message
    assert str(MAX_ID_CHARS) in info.value.message


# --------------------------------------------------------------------------- check_endpoints


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("a", "b"),
        ("user:1", "wallet:1"),
        ("A", "a"),  # case matters: these are two entities
        ("a", "ab"),
        ("x" * MAX_ID_CHARS, "y" * MAX_ID_CHARS),
    ],
)
def test_check_endpoints__valid(source: str, target: str) -> None:
    check_endpoints(source, target)


@pytest.mark.parametrize(
    ("source", "target", "error", "field"),
    [
        ("", "b", InvalidEntityId, "source"),
        (" ", "b", InvalidEntityId, "source"),
        ("a b", "b", InvalidEntityId, "source"),
        ("a\x00", "b", InvalidEntityId, "source"),
        ("x" * (MAX_ID_CHARS + 1), "b", InvalidEntityId, "source"),
        ("a", "", InvalidEntityId, "target"),
        ("a", "\t", InvalidEntityId, "target"),
        ("a", "b\x7f", InvalidEntityId, "target"),
        ("a", "x" * (MAX_ID_CHARS + 1), InvalidEntityId, "target"),
        ("", "", InvalidEntityId, "source"),  # the source is checked first
        ("a b", "a b", InvalidEntityId, "source"),  # ids are checked before sameness
        ("a", "a", SelfRelationship, "target"),
        ("user:1", "user:1", SelfRelationship, "target"),
        ("x" * MAX_ID_CHARS, "x" * MAX_ID_CHARS, SelfRelationship, "target"),
    ],
)
def test_check_endpoints__invalid(source: str, target: str, error: type[NexusError], field: str) -> None:
    with pytest.raises(error) as info:
        check_endpoints(source, target)
    assert type(info.value) is error
    assert info.value.details == {"field": field}
    assert info.value.to_dict()["code"] == error.code.value


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidEntityId, "invalid_entity_id"),
        (SelfRelationship, "self_relationship"),
        (MetadataTooLarge, "metadata_too_large"),
    ],
)
def test_relationship_errors__codes_are_stable(error: type[NexusError], code: str) -> None:
    err = error("what to fix", field="f")
    assert err.code.value == code
    assert err.to_dict() == {"code": code, "message": "what to fix", "details": {"field": "f"}}


def test_check_endpoints__self_relationship__message_names_the_entity() -> None:
    with pytest.raises(SelfRelationship) as info:
        check_endpoints("user:7", "user:7")
    assert "'user:7'" in info.value.message


# --------------------------------------------------------------------------- check_metadata

# {"k":"<n chars>"} is n + 8 bytes as compact JSON
OVERHEAD = len(b'{"k":""}')


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"k": "v"},
        {"nested": {"list": [1, 2.5, None, True, "x"]}},
        {"k": "x" * (MAX_METADATA_BYTES - OVERHEAD)},  # exactly at the limit
        {"k": "é" * ((MAX_METADATA_BYTES - OVERHEAD) // 2)},  # 2 bytes each, at the limit
        {"k": "€" * ((MAX_METADATA_BYTES - OVERHEAD) // 3)},  # 3 bytes each, under the limit
    ],
    ids=["empty", "small", "nested", "ascii-at-limit", "2-byte-at-limit", "3-byte-under-limit"],
)
def test_check_metadata__within_limit(metadata: dict[str, Any]) -> None:
    check_metadata(metadata)


@pytest.mark.parametrize(
    ("metadata", "size"),
    [
        ({"k": "x" * (MAX_METADATA_BYTES - OVERHEAD + 1)}, MAX_METADATA_BYTES + 1),
        ({"k": "é" * ((MAX_METADATA_BYTES - OVERHEAD) // 2 + 1)}, MAX_METADATA_BYTES + 2),
        ({"k": "x" * (2 * MAX_METADATA_BYTES)}, 2 * MAX_METADATA_BYTES + OVERHEAD),
        (
            {f"k{i}": i for i in range(2000)},
            len(json.dumps({f"k{i}": i for i in range(2000)}, separators=(",", ":"))),
        ),
    ],
    ids=["ascii-one-over", "2-byte-one-char-over", "double", "many-keys"],
)
def test_check_metadata__over_limit(metadata: dict[str, Any], size: int) -> None:
    assert size > MAX_METADATA_BYTES
    with pytest.raises(MetadataTooLarge) as info:
        check_metadata(metadata)
    assert info.value.details == {
        "field": "metadata",
        "size_bytes": size,
        "limit_bytes": MAX_METADATA_BYTES,
    }
    assert str(size) in info.value.message


# --------------------------------------------------------------------------- Relationship dicts

T0 = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)

ROUND_TRIP_CASES = [
    Relationship("default", "a", OWNER, "b"),
    Relationship("ns", "user:1", MEMBER, "group:1", {"role": "admin"}, 3),
    Relationship("ns", "a", LINKED, "b", {"nested": {"x": [1, 2, {"y": None}]}}, 2, T0, T0),
    Relationship("ns.1", "org:1", PARENT, "user:1", {}, 1, T0, T0 + timedelta(hours=1), T0 + timedelta(1)),
    Relationship("ns", "a", OWNER, "b", {}, 1, datetime(2024, 1, 1, 9, tzinfo=timezone(timedelta(hours=2)))),
    Relationship("ns", "a", OWNER, "b", {}, 1, datetime(2024, 1, 1)),  # naive stays naive
    Relationship("ns", "é", OWNER, "用户", {"ünïcode": "✓"}, 7),
]


@pytest.mark.parametrize("rel", ROUND_TRIP_CASES, ids=lambda r: f"{r.namespace}:{r.source}")
def test_relationship__to_dict_from_dict__round_trip(rel: Relationship) -> None:
    data = rel.to_dict()
    assert Relationship.from_dict(data) == rel
    # and through JSON, as stored in the changelog table
    assert Relationship.from_dict(json.loads(json.dumps(data))) == rel


@pytest.mark.parametrize("rel", ROUND_TRIP_CASES, ids=lambda r: f"{r.namespace}:{r.source}")
def test_relationship__to_record_from_record__round_trip(rel: Relationship) -> None:
    record = json.loads(json.dumps(rel.to_record()))  # as the changelog table stores it
    stored_key = rel.key.as_stored(rel.namespace)
    namespace, key = RelationshipKey.from_stored(stored_key)
    assert (namespace, key) == (rel.namespace, rel.key)
    assert Relationship.from_record(namespace, key, record) == rel


@pytest.mark.parametrize(
    ("rel", "record"),
    [
        (Relationship("ns", "a", OWNER, "b"), {"v": 1, "m": {}}),
        (
            Relationship("ns", "a", OWNER, "b", {"k": [1]}, 4, T0, None, None),
            {"v": 4, "m": {"k": [1]}, "c": "2024-05-01T12:30:15.123456Z"},
        ),
        (
            Relationship("ns", "a", OWNER, "b", {}, 2, T0, T0 + timedelta(hours=1), T0 + timedelta(days=1)),
            {
                "v": 2,
                "m": {},
                "c": "2024-05-01T12:30:15.123456Z",
                "u": "2024-05-01T13:30:15.123456Z",
                "e": "2024-05-02T12:30:15.123456Z",
            },
        ),
    ],
    ids=["bare", "created only", "all timestamps"],
)
def test_relationship__to_record__compact_without_identity(rel: Relationship, record: dict[str, Any]) -> None:
    """The identity (namespace, type, source, target) is the key; the value holds only the rest."""
    assert rel.to_record() == record


def test_relationship__from_record__defaults() -> None:
    key = RelationshipKey("a", LINKED, "b")
    assert Relationship.from_record("ns", key, {}) == Relationship("ns", "a", LINKED, "b", {}, 1)
    assert Relationship.from_record("ns", key, {"m": None, "v": "3"}).version == 3


@pytest.mark.parametrize(
    ("namespace", "key"),
    [
        ("default", RelationshipKey("a", OWNER, "b")),
        ("a.b_c:d-1", RelationshipKey("user:1", MEMBER, "group:1")),
        ("ns", RelationshipKey("用户:1", PARENT, "é")),
        ("N" * 128, RelationshipKey("x" * MAX_ID_CHARS, LINKED, "y" * MAX_ID_CHARS)),
    ],
    ids=["default", "namespace with : . _ -", "unicode ids", "longest"],
)
def test_relationship_key__from_stored__inverts_as_stored(namespace: str, key: RelationshipKey) -> None:
    assert RelationshipKey.from_stored(key.as_stored(namespace)) == (namespace, key)


def test_relationship_key__from_stored__not_a_stored_key__raises() -> None:
    with pytest.raises(ValueError):
        RelationshipKey.from_stored("ns\x1fowner\x1fa")
    with pytest.raises(ValueError):
        RelationshipKey.from_stored("ns\x1ffriend\x1fa\x1fb")


def test_relationship__to_dict__shape() -> None:
    rel = Relationship("ns", "org:1", PARENT, "user:1", {"k": 1}, 2, T0, T0, None)
    assert rel.to_dict() == {
        "namespace": "ns",
        "source": "org:1",
        "type": "parent",
        "target": "user:1",
        "metadata": {"k": 1},
        "version": 2,
        "created_at": "2024-05-01T12:30:15.123456Z",
        "updated_at": "2024-05-01T12:30:15.123456Z",
        "expires_at": None,
    }


def test_relationship__from_dict__defaults() -> None:
    rel = Relationship.from_dict({"namespace": "ns", "source": "a", "type": "owner", "target": "b"})
    assert rel == Relationship("ns", "a", OWNER, "b", {}, 1, None, None, None)


def test_relationship__from_dict__parses_z_as_utc() -> None:
    rel = Relationship.from_dict(
        {
            "namespace": "ns",
            "source": "a",
            "type": "owner",
            "target": "b",
            "created_at": "2024-05-01T12:30:15Z",
            "metadata": None,
            "version": "4",
        }
    )
    assert rel.created_at == datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)
    assert rel.metadata == {}
    assert rel.version == 4


def test_relationship__key_and_evolve() -> None:
    rel = Relationship("ns", "a", OWNER, "b")
    assert rel.key == RelationshipKey("a", OWNER, "b")
    newer = rel.evolve(version=2, metadata={"x": 1})
    assert (newer.version, newer.metadata) == (2, {"x": 1})
    assert (rel.version, rel.metadata) == (1, {})


offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
moments = st.one_of(
    st.none(),
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2999, 12, 31), timezones=offsets),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@given(
    namespace=st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True),
    source=st.from_regex(r"[^\s\x00-\x1f\x7f]{1,20}", fullmatch=True),
    target=st.from_regex(r"[^\s\x00-\x1f\x7f]{1,20}", fullmatch=True),
    type_=st.sampled_from([OWNER, MEMBER, LINKED, PARENT]),
    metadata=st.dictionaries(st.text(max_size=5), json_values, max_size=4),
    version=st.integers(1, 10**6),
    created_at=moments,
    updated_at=moments,
    expires_at=moments,
)
def test_relationship__round_trip__property(
    namespace: str,
    source: str,
    target: str,
    type_: RelationType,
    metadata: dict[str, Any],
    version: int,
    created_at: datetime | None,
    updated_at: datetime | None,
    expires_at: datetime | None,
) -> None:
    rel = Relationship(
        namespace, source, type_, target, metadata, version, created_at, updated_at, expires_at
    )
    assert Relationship.from_dict(json.loads(json.dumps(rel.to_dict()))) == rel
    namespace_back, key = RelationshipKey.from_stored(rel.key.as_stored(namespace))
    record = json.loads(json.dumps(rel.to_record()))
    assert Relationship.from_record(namespace_back, key, record) == rel
