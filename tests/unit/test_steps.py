"""The step-kind registry: kinds, parameter schemas (as stored and as run), input defaults, outputs."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from nexus_streams import messages
from nexus_streams.domain.errors import ErrorCode, StepParametersInvalid, UnknownStep, UnresolvedReference
from nexus_streams.domain.index import Direction
from nexus_streams.domain.relationships import RelationType
from nexus_streams.domain.steps import (
    RESERVED_EVENT_TYPES,
    STEP_KINDS,
    AssertParameters,
    Category,
    Condition,
    CreateParameters,
    FindPathParameters,
    step_kind,
)
from nexus_streams.domain.templates import Scope

EXPECTED_KINDS = {
    ("relationship", "create"),
    ("relationship", "update"),
    ("relationship", "delete"),
    ("relationship", "delete_entity"),
    ("graph", "get"),
    ("graph", "find_path"),
    ("graph", "traverse"),
    ("graph", "neighbors"),
    ("graph", "detect_cycles"),
    ("graph", "resolve_dependencies"),
    ("event", "publish"),
    ("pattern", "execute"),
    ("control", "assert"),
    ("control", "fail"),
}


def test_registry__has_the_kinds() -> None:
    assert set(STEP_KINDS) == EXPECTED_KINDS


@pytest.mark.parametrize(
    ("type_", "action", "fragment"),
    [
        (
            "relationship",
            "frobnicate",
            "'relationship' steps have no action 'frobnicate'; use one of: create, delete",
        ),
        ("graph", "create", "'graph' steps have no action 'create'"),
        ("Relationship", "create", "unknown step type 'Relationship'; use one of: control, event, graph"),
        ("http", "get", "unknown step type 'http'"),
    ],
)
def test_step_kind__unknown_is_rejected(type_: str, action: str, fragment: str) -> None:
    with pytest.raises(UnknownStep) as info:
        step_kind(type_, action)
    assert fragment in info.value.message
    assert info.value.code is ErrorCode.UNKNOWN_STEP


# parity with the wire: a step's parameters are the command's fields minus the envelope

WIRE_MODELS: list[tuple[tuple[str, str], type[BaseModel]]] = [
    (("relationship", "create"), messages.CreateFields),
    (("relationship", "update"), messages.UpdateFields),
    (("relationship", "delete"), messages.DeleteFields),
    (("relationship", "delete_entity"), messages.DeleteEntityFields),
    (("graph", "get"), messages.GetRelationship),
    (("graph", "find_path"), messages.FindPath),
    (("graph", "traverse"), messages.Traverse),
    (("graph", "neighbors"), messages.Neighbors),
    (("graph", "detect_cycles"), messages.DetectCycles),
    (("graph", "resolve_dependencies"), messages.ResolveDependencies),
]
ENVELOPE = {"action", "request_id", "principal", "namespace", "min_offset"}


@pytest.mark.parametrize(("key", "wire"), WIRE_MODELS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_parameters__same_fields_and_defaults_as_the_wire(
    key: tuple[str, str], wire: type[BaseModel]
) -> None:
    ours = STEP_KINDS[key].parameters.model_fields
    theirs = {name: f for name, f in wire.model_fields.items() if name not in ENVELOPE}
    assert set(ours) == set(theirs)
    for name, field in ours.items():
        assert field.is_required() == theirs[name].is_required(), name
        if not field.is_required():
            default = field.get_default(call_default_factory=True)
            assert default == theirs[name].get_default(call_default_factory=True), name


# check: parameters as stored (templates unknown until run time, defaults from the input)

CHECKS: list[tuple[str, tuple[str, str], dict[str, Any], list[tuple[tuple[Any, ...], str]]]] = [
    (
        "spec create: source/target from input",
        ("relationship", "create"),
        {"type": "owner", "metadata": {"wallet_type": "primary"}},
        [],
    ),
    ("spec find_path", ("graph", "find_path"), {"max_depth": 3}, []),
    ("spec publish", ("event", "publish"), {"event_type": "user_created"}, []),
    (
        "unknown relationship type",
        ("relationship", "create"),
        {"type": "friend"},
        [(("type",), "Input should be 'owner', 'member', 'linked', 'parent' or 'child'")],
    ),
    ("missing type", ("relationship", "create"), {}, [(("type",), "Field required")]),
    (
        "extra field",
        ("relationship", "create"),
        {"type": "owner", "colour": "red"},
        [(("colour",), "Extra inputs are not permitted")],
    ),
    (
        "literal id checked",
        ("relationship", "create"),
        {"type": "owner", "source": "user 1"},
        [(("source",), "must be 1 to 256 printable characters without whitespace")],
    ),
    (
        "max_depth over limit",
        ("graph", "find_path"),
        {"max_depth": 11},
        [(("max_depth",), "Input should be less than or equal to 10")],
    ),
    ("templated max_depth unknown yet", ("graph", "find_path"), {"max_depth": "{{input.depth}}"}, []),
    (
        "templated id unknown yet",
        ("relationship", "create"),
        {"type": "owner", "source": "user:{{input.id}}"},
        [],
    ),
    ("templated list entry", ("graph", "traverse"), {"types": ["owner", "{{input.t}}"]}, []),
    (
        "bad list entry",
        ("graph", "traverse"),
        {"types": ["owner", "friend"]},
        [(("types", 1), "Input should be 'owner', 'member', 'linked', 'parent' or 'child'")],
    ),
    (
        "bad direction",
        ("graph", "neighbors"),
        {"direction": "up"},
        [(("direction",), "Input should be 'out', 'in' or 'both'")],
    ),
    (
        "delete_entity never defaults",
        ("relationship", "delete_entity"),
        {},
        [(("entity",), "Field required")],
    ),
    ("detect_cycles entity optional", ("graph", "detect_cycles"), {}, []),
    (
        "update needs metadata",
        ("relationship", "update"),
        {"type": "owner"},
        [(("metadata",), "Field required")],
    ),
    (
        "reserved event type",
        ("event", "publish"),
        {"event_type": "pattern_executed"},
        [(("event_type",), "'pattern_executed' is an event type the service publishes itself")],
    ),
    (
        "event type shape",
        ("event", "publish"),
        {"event_type": "User Created"},
        [(("event_type",), "String should match pattern")],
    ),
    ("execute needs pattern_id", ("pattern", "execute"), {}, [(("pattern_id",), "Field required")]),
    (
        "execute bad id",
        ("pattern", "execute"),
        {"pattern_id": "a:b"},
        [(("pattern_id",), "String should match")],
    ),
    (
        "assert in needs a list",
        ("control", "assert"),
        {"value": 1, "condition": "in", "expected": 3},
        [((), "condition 'in' needs `expected` to be a list")],
    ),
    (
        "assert in with templated list",
        ("control", "assert"),
        {"value": 1, "condition": "in", "expected": "{{input.allowed}}"},
        [],
    ),
    ("fail code must be known", ("control", "fail"), {"code": "oops"}, [(("code",), "Input should be")]),
    (
        "metadata too large",
        ("relationship", "create"),
        {"type": "owner", "metadata": {"x": "y" * 17_000}},
        [(("metadata",), "metadata is")],
    ),
]


@pytest.mark.parametrize(("name", "key", "parameters", "expected"), CHECKS, ids=[c[0] for c in CHECKS])
def test_check(
    name: str, key: tuple[str, str], parameters: dict[str, Any], expected: list[tuple[tuple[Any, ...], str]]
) -> None:
    problems = STEP_KINDS[key].check(parameters)
    assert [loc for loc, _ in problems] == [loc for loc, _ in expected]
    for (_, message), (_, fragment) in zip(problems, expected, strict=True):
        assert fragment in message


# bind: the parameters of one run


def test_bind__spec_create_takes_source_and_target_from_input() -> None:
    kind = step_kind("relationship", "create")
    bound = kind.bind(
        {"type": "owner", "metadata": {"wallet_type": "primary"}},
        Scope(input={"source": "user:1", "target": "wallet:1"}),
    )
    assert isinstance(bound, CreateParameters)
    assert (bound.type, bound.source, bound.target) == (RelationType.OWNER, "user:1", "wallet:1")
    assert bound.metadata == {"wallet_type": "primary"}


def test_bind__explicit_parameter_wins_over_input() -> None:
    bound = step_kind("graph", "find_path").bind(
        {"source": "a", "max_depth": 3}, Scope(input={"source": "x", "target": "b"})
    )
    assert isinstance(bound, FindPathParameters)
    assert (bound.source, bound.target, bound.max_depth, bound.direction) == ("a", "b", 3, Direction.BOTH)


def test_bind__templates_resolve_with_types() -> None:
    scope = Scope(
        input={"user": "user:1", "depth": 2},
        outputs={"find_path": {"path": ["user:1", "user:2"]}},
        context={"principal": "alice"},
    )
    bound = step_kind("relationship", "create").bind(
        {
            "type": "linked",
            "source": "{{input.user}}",
            "target": "{{steps.find_path.output.path[1]}}",
            "metadata": {"hops": "{{steps.find_path.output.path}}", "by": "by {{context.principal}}"},
        },
        scope,
    )
    assert isinstance(bound, CreateParameters)
    assert bound.target == "user:2"
    assert bound.metadata == {"hops": ["user:1", "user:2"], "by": "by alice"}


def test_bind__missing_default_says_where_it_comes_from() -> None:
    with pytest.raises(StepParametersInvalid) as info:
        step_kind("relationship", "create").bind({"type": "owner"}, Scope(input={"source": "user:1"}))
    assert info.value.details["errors"] == [
        {
            "field": "target",
            "message": "Field required: give it in the step's parameters or as 'target' in the "
            "execution input",
        }
    ]
    assert info.value.code is ErrorCode.VALIDATION_ERROR


def test_bind__template_of_wrong_type_fails_at_run_time() -> None:
    with pytest.raises(StepParametersInvalid) as info:
        step_kind("graph", "find_path").bind(
            {"max_depth": "{{input.depth}}"}, Scope(input={"source": "a", "target": "b", "depth": "deep"})
        )
    assert info.value.details["errors"][0]["field"] == "max_depth"


def test_bind__unresolved_reference() -> None:
    with pytest.raises(UnresolvedReference):
        step_kind("event", "publish").bind(
            {"event_type": "x", "data": {"u": "{{input.user}}"}}, Scope(input={})
        )


@pytest.mark.parametrize(
    ("condition", "value", "expected", "holds"),
    [
        (Condition.EQUALS, 0, 0, True),
        (Condition.EQUALS, 1, 0, False),
        (Condition.NOT_EQUALS, 1, 0, True),
        (Condition.IN, "a", ["a", "b"], True),
        (Condition.IN, "c", ["a", "b"], False),
        (Condition.NOT_IN, "c", ["a", "b"], True),
        (Condition.EMPTY, [], None, True),
        (Condition.EMPTY, None, None, True),
        (Condition.EMPTY, "", None, True),
        (Condition.EMPTY, {}, None, True),
        (Condition.EMPTY, [0], None, False),
        (Condition.NOT_EMPTY, [0], None, True),
        (Condition.NOT_EMPTY, 0, None, True),
    ],
)
def test_assert__holds(condition: Condition, value: Any, expected: Any, holds: bool) -> None:
    assert AssertParameters(value=value, condition=condition, expected=expected).holds() is holds


def test_assert__bound_from_a_step_output() -> None:
    bound = step_kind("control", "assert").bind(
        {
            "value": "{{steps.neighbors.output.count}}",
            "condition": "equals",
            "expected": 0,
            "code": "invalid_relationship",
        },
        Scope(input={}, outputs={"neighbors": {"count": 2}}),
    )
    assert isinstance(bound, AssertParameters)
    assert not bound.holds()
    assert bound.code is ErrorCode.INVALID_RELATIONSHIP


def test_input_defaults__only_where_the_spec_leaves_ends_out() -> None:
    defaults = {kind.name: dict(kind.input_defaults) for kind in STEP_KINDS.values() if kind.input_defaults}
    assert defaults == {
        "relationship/create": {"source": "source", "target": "target"},
        "relationship/update": {"source": "source", "target": "target"},
        "relationship/delete": {"source": "source", "target": "target"},
        "graph/get": {"source": "source", "target": "target"},
        "graph/find_path": {"source": "source", "target": "target"},
        "graph/traverse": {"start": "source"},
        "graph/neighbors": {"entity": "source"},
        "graph/resolve_dependencies": {"entity": "source"},
    }


def test_categories__writes_are_the_relationship_steps() -> None:
    writes = {kind.key for kind in STEP_KINDS.values() if kind.category is Category.WRITE}
    assert writes == {k for k in EXPECTED_KINDS if k[0] == "relationship"}


@pytest.mark.parametrize("key", sorted(EXPECTED_KINDS))
def test_describe__every_kind(key: tuple[str, str]) -> None:
    described = STEP_KINDS[key].describe()
    assert (described["type"], described["action"]) == key
    assert described["parameters"]["type"] == "object"
    assert described["output"]
    assert described["description"]


def test_reserved_event_types__include_the_service_events() -> None:
    assert {"relationship_created", "pattern_executed", "error", "execution_failed"} <= RESERVED_EVENT_TYPES
