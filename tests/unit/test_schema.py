"""The namespace schema: which entity kinds may hold which relationship, and how a schema
document is checked (every problem named by its path)."""

from __future__ import annotations

from typing import Any

import pytest

from nexus_streams.domain.errors import ErrorCode, ValidationFailed
from nexus_streams.domain.relationships import RelationType
from nexus_streams.domain.schema import MAX_RULES, WILDCARD, Schema, kind_of

OWNER, MEMBER, LINKED, PARENT, CHILD = (
    RelationType.OWNER,
    RelationType.MEMBER,
    RelationType.LINKED,
    RelationType.PARENT,
    RelationType.CHILD,
)


# --------------------------------------------------------------------------- kind_of


@pytest.mark.parametrize(
    ("entity", "kind"),
    [
        ("user:1", "user"),
        ("user:1:2", "user"),
        ("wallet:0xdead", "wallet"),
        ("user", ""),
        ("user-1", ""),
        (":1", ""),
        ("用户:1", "用户"),
        ("User:1", "User"),
    ],
)
def test_kind_of__is_the_id_up_to_the_first_colon(entity: str, kind: str) -> None:
    assert kind_of(entity) == kind


# --------------------------------------------------------------------------- parse


@pytest.mark.parametrize(
    ("document", "rules"),
    [
        ({}, {}),
        ({"owner": ["user -> wallet"]}, {OWNER: {("user", "wallet")}}),
        ({"owner": ["user->wallet", "  org  ->  wallet "]}, {OWNER: {("user", "wallet"), ("org", "wallet")}}),
        (
            {"member": ["user -> group", "service -> group"]},
            {MEMBER: {("user", "group"), ("service", "group")}},
        ),
        ({"parent": ["org -> team"]}, {PARENT: {("org", "team")}}),
        # child rules are stored as the inverse parent rules
        ({"child": ["team -> org"]}, {PARENT: {("org", "team")}}),
        (
            {"parent": ["org -> team"], "child": ["user -> team"]},
            {PARENT: {("org", "team"), ("team", "user")}},
        ),
        # linked rules match either way round
        ({"linked": ["user -> device"]}, {LINKED: {("user", "device"), ("device", "user")}}),
        ({"owner": ["* -> wallet", "user -> *"]}, {OWNER: {(WILDCARD, "wallet"), ("user", WILDCARD)}}),
        ({"owner": ["user -> wallet", "user -> wallet"]}, {OWNER: {("user", "wallet")}}),
    ],
    ids=repr,
)
def test_schema_parse__valid__rules_in_canonical_direction(
    document: dict[str, list[str]], rules: dict[RelationType, set[tuple[str, str]]]
) -> None:
    schema = Schema.parse(document)
    assert schema.rules == {t: frozenset(p) for t, p in rules.items()}
    assert schema.document == document
    assert CHILD not in schema.rules


def test_schema_parse__exactly_max_rules__accepted() -> None:
    schema = Schema.parse({"owner": [f"k{i} -> wallet" for i in range(MAX_RULES)]})
    assert len(schema.rules[OWNER]) == MAX_RULES


INVALID_DOCUMENTS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("unknown type", {"friend": ["user -> user"]}, ["schema.friend"]),
    ("type is case sensitive", {"Owner": ["user -> wallet"]}, ["schema.Owner"]),
    ("entries not a list", {"owner": "user -> wallet"}, ["schema.owner"]),
    ("entry not a string", {"owner": ["user -> wallet", 3]}, ["schema.owner"]),
    ("no arrow", {"owner": ["user wallet"]}, ["schema.owner.0"]),
    ("two arrows", {"owner": ["user -> wallet", "a -> b -> c"]}, ["schema.owner.1"]),
    ("empty source kind", {"owner": [" -> wallet"]}, ["schema.owner.0"]),
    ("empty target kind", {"owner": ["user ->"]}, ["schema.owner.0"]),
    ("empty entry", {"owner": [""]}, ["schema.owner.0"]),
    ("wrong arrow", {"member": ["user => group"]}, ["schema.member.0"]),
    (
        "every problem listed",
        {
            "owner": ["user -> wallet", "bad", "x -> y -> z"],
            "friend": ["a -> b"],
            "member": "user -> group",
            "child": ["-> org"],
        },
        ["schema.owner.1", "schema.owner.2", "schema.friend", "schema.member", "schema.child.0"],
    ),
    (
        "too many rules",
        {"owner": [f"k{i} -> wallet" for i in range(MAX_RULES)], "member": ["user -> group"]},
        ["schema"],
    ),
    (
        "too many rules and a bad one",
        {"owner": ["bad"] + ["a -> b"] * MAX_RULES},
        ["schema.owner.0", "schema"],
    ),
]


@pytest.mark.parametrize(
    ("document", "fields"), [c[1:] for c in INVALID_DOCUMENTS], ids=[c[0] for c in INVALID_DOCUMENTS]
)
def test_schema_parse__invalid__validation_error_naming_each_problem(
    document: dict[str, Any], fields: list[str]
) -> None:
    with pytest.raises(ValidationFailed) as info:
        Schema.parse(document)
    err = info.value
    assert err.code is ErrorCode.VALIDATION_ERROR
    assert err.to_dict()["code"] == "validation_error"
    problems = err.details["errors"]
    assert [p["field"] for p in problems] == fields
    assert all(isinstance(p["message"], str) and p["message"] for p in problems)
    assert err.message.startswith("invalid schema: ")
    for field in fields:
        assert field in err.message


def test_schema_parse__unknown_type__message_lists_the_types() -> None:
    with pytest.raises(ValidationFailed) as info:
        Schema.parse({"friend": ["a -> b"]})
    (problem,) = info.value.details["errors"]
    assert "'friend'" in problem["message"]
    for t in RelationType:
        assert t.value in problem["message"]


def test_schema_parse__too_many_rules__message_names_the_limit() -> None:
    with pytest.raises(ValidationFailed) as info:
        Schema.parse({"owner": ["a -> b"] * (MAX_RULES + 1)})
    assert info.value.details["errors"] == [
        {"field": "schema", "message": f"{MAX_RULES + 1} rules; the limit is {MAX_RULES}"}
    ]


# --------------------------------------------------------------------------- violation

DOCUMENT = {
    "owner": ["user -> wallet", "org -> wallet"],
    "member": ["* -> group"],
    "parent": ["org -> team"],
    "child": ["user -> team"],
    "linked": ["user -> device"],
}

VIOLATIONS = [
    # (source, type, target, allowed)
    ("user:1", OWNER, "wallet:1", True),
    ("org:1", OWNER, "wallet:1", True),
    ("wallet:1", OWNER, "user:1", False),  # directed: not the other way round
    ("user:1", OWNER, "user:2", False),
    ("service:1", OWNER, "wallet:1", False),
    ("user", OWNER, "wallet:1", False),  # an id without a kind matches no named kind
    ("User:1", OWNER, "wallet:1", False),  # kinds are case sensitive
    # `*` matches any kind, also none
    ("user:1", MEMBER, "group:1", True),
    ("service:9", MEMBER, "group:1", True),
    ("nokind", MEMBER, "group:1", True),
    ("user:1", MEMBER, "team:1", False),
    # parent rules, also written as child
    ("org:1", PARENT, "team:1", True),
    ("team:1", CHILD, "org:1", True),
    ("team:1", PARENT, "org:1", False),
    ("org:1", CHILD, "team:1", False),
    # child rules, also written as parent
    ("user:1", CHILD, "team:1", True),
    ("team:1", PARENT, "user:1", True),
    ("team:1", CHILD, "user:1", False),
    # linked either way round, whatever the order of the ids
    ("user:1", LINKED, "device:1", True),
    ("device:1", LINKED, "user:1", True),
    ("user:z", LINKED, "device:a", True),
    ("device:z", LINKED, "user:a", True),
    ("user:1", LINKED, "user:2", False),
    ("device:1", LINKED, "wallet:1", False),
]


@pytest.mark.parametrize(("source", "type_", "target", "allowed"), VIOLATIONS, ids=repr)
def test_schema_violation__table(source: str, type_: RelationType, target: str, allowed: bool) -> None:
    problem = Schema.parse(DOCUMENT).violation(source, type_, target)
    if allowed:
        assert problem is None
    else:
        assert problem is not None
        assert "does not allow" in problem


@pytest.mark.parametrize(
    "type_",
    [OWNER, MEMBER, LINKED, PARENT, CHILD],
)
def test_schema_violation__type_not_in_the_schema__unrestricted(type_: RelationType) -> None:
    others = {t.value: ["x -> y"] for t in (OWNER, MEMBER, LINKED, PARENT) if t is not type_}
    if type_ is CHILD:
        others.pop("parent")  # child is governed by the parent rules
    schema = Schema.parse(others)
    assert schema.violation("a:1", type_, "b:1") is None


def test_schema_violation__message_names_kinds_and_allowed_rules() -> None:
    schema = Schema.parse({"owner": ["user -> wallet", "org -> wallet"]})
    problem = schema.violation("wallet:1", OWNER, "nokind")
    assert problem == (
        "the namespace schema does not allow owner from a 'wallet' to a '(no kind)' entity; "
        "allowed: org -> wallet, user -> wallet"
    )


def test_schema_violation__child__reported_in_canonical_direction() -> None:
    schema = Schema.parse({"parent": ["org -> team"]})
    problem = schema.violation("org:1", CHILD, "team:1")  # = team:1 parent org:1
    assert problem is not None
    assert "parent from a 'team' to a 'org' entity" in problem


@pytest.mark.parametrize(
    ("source", "type_", "target"),
    [
        (s, t, d)
        for s in ("org:1", "team:1", "user:1")
        for d in ("org:2", "team:2", "x")
        for t in (PARENT, CHILD)
    ],
    ids=repr,
)
def test_schema__child_rule__equivalent_to_the_inverse_parent_rule(
    source: str, type_: RelationType, target: str
) -> None:
    as_parent = Schema.parse({"parent": ["org -> team"]})
    as_child = Schema.parse({"child": ["team -> org"]})
    assert as_parent.rules == as_child.rules
    assert (as_parent.violation(source, type_, target) is None) == (
        as_child.violation(source, type_, target) is None
    )


def test_schema__empty_rule_list__forbids_the_type() -> None:
    """A type the schema names is restricted to its rules; "types the schema does not name are
    unrestricted" (domain/schema.py), and `{"owner": []}` names owner with no allowed pair."""
    schema = Schema.parse({"owner": []})
    assert schema.violation("user:1", OWNER, "wallet:1") is not None
    assert schema.violation("user:1", MEMBER, "group:1") is None
