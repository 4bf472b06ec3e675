"""The pattern model, validation (every problem at once, with paths), the plan, the input schema
subset, composite inclusions, and the shipped system patterns."""

from __future__ import annotations

import copy
import itertools
import json
from graphlib import CycleError, TopologicalSorter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_streams.domain.errors import (
    ErrorCode,
    InputInvalid,
    NotFound,
    PatternCycleDetected,
    PatternDependencyError,
    PatternDeprecated,
    PatternInvalid,
    PatternTooLarge,
    PatternUnknownStep,
    ValidationFailed,
)
from nexus_streams.domain.input_schema import check_schema, validate_value
from nexus_streams.domain.patterns import (
    DEFAULT_NON_RETRYABLE,
    OnFailure,
    Pattern,
    PatternKind,
    RetryPolicy,
    Step,
    execution_order,
    load_document,
    plan,
)
from nexus_streams.domain.validation import PatternLimits, validate_input, validate_pattern
from nexus_streams.patterns import system_patterns

ENDS_SCHEMA = {
    "type": "object",
    "properties": {
        "source": {"type": "string", "format": "entity-id"},
        "target": {"type": "string", "format": "entity-id"},
    },
    "required": ["source", "target"],
}


def doc(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": "p", "name": "P", "steps": list(steps), **fields}


CREATE = {"type": "relationship", "action": "create", "parameters": {"type": "owner"}}
PUBLISH = {
    "type": "event",
    "action": "publish",
    "parameters": {"event_type": "done"},
    "depends_on": ["create"],
}
FIND = {"type": "graph", "action": "find_path", "parameters": {"max_depth": 3}}

# --------------------------------------------------------------------------- the spec's examples

SPEC_USER_ONBOARDING = {
    "id": "user_onboarding",
    "name": "User Onboarding Flow",
    "description": "Creates a new user with wallet and referral relationships",
    "steps": [
        {
            "type": "relationship",
            "action": "create",
            "parameters": {"type": "owner", "metadata": {"wallet_type": "primary"}},
        },
        {
            "type": "event",
            "action": "publish",
            "parameters": {"event_type": "user_created"},
            "depends_on": ["create"],
        },
    ],
}
SPEC_FINANCIAL_TRANSACTION = {
    "id": "financial_transaction",
    "name": "Financial Transaction Flow",
    "description": "Handles a financial transaction between users",
    "steps": [
        {"type": "graph", "action": "find_path", "parameters": {"max_depth": 3}},
        {
            "type": "relationship",
            "action": "create",
            "parameters": {"type": "linked", "metadata": {"transaction_type": "transfer"}},
            "depends_on": ["find_path"],
        },
    ],
}


@pytest.mark.parametrize(
    "document", [SPEC_USER_ONBOARDING, SPEC_FINANCIAL_TRANSACTION], ids=lambda d: d["id"]
)
def test_validate__spec_examples_as_written(document: dict[str, Any]) -> None:
    pattern = validate_pattern(document)
    assert pattern.kind is PatternKind.USER
    assert [s.id for s in pattern.steps] == [s["action"] for s in document["steps"]]
    assert [list(s.depends_on) for s in pattern.steps] == [s.get("depends_on", []) for s in document["steps"]]


def test_system_patterns__are_the_spec_examples_verbatim() -> None:
    shipped = {p.id: p for p in system_patterns()}
    assert list(shipped) == ["user_onboarding", "financial_transaction"]
    for spec in (SPEC_USER_ONBOARDING, SPEC_FINANCIAL_TRANSACTION):
        pattern = shipped[spec["id"]]
        assert pattern.kind is PatternKind.SYSTEM
        assert (pattern.name, pattern.description) == (spec["name"], spec["description"])
        steps = [
            {"type": s.type, "action": s.action, "parameters": s.parameters, "depends_on": list(s.depends_on)}
            for s in pattern.steps
        ]
        assert steps == [{"depends_on": [], **s} for s in spec["steps"]]
        assert pattern.input_schema is not None
        assert pattern.input_schema["required"] == ["source", "target"]
        assert all(p["format"] == "entity-id" for p in pattern.input_schema["properties"].values())


def test_system_patterns__input_schema_is_enforced() -> None:
    onboarding = system_patterns()[0]
    validate_input(onboarding, {"source": "user:1", "target": "wallet:1"})
    with pytest.raises(InputInvalid) as info:
        validate_input(onboarding, {"source": "user 1"})
    assert [p["path"] for p in info.value.details["problems"]] == ["input.target", "input.source"]


# --------------------------------------------------------------------------- the model


def test_step__id_defaults_to_action() -> None:
    assert Step.model_validate({"type": "graph", "action": "find_path"}).id == "find_path"
    assert Step.model_validate({"type": "graph", "action": "find_path", "id": "route"}).id == "route"


def test_step__defaults() -> None:
    step = Step.model_validate(CREATE)
    assert step.depends_on == ()
    assert step.retry == RetryPolicy()
    assert step.retry.max_attempts == 1
    assert (step.timeout_ms, step.optional, step.on_failure, step.compensation) == (None, False, None, None)


def test_pattern__round_trips_through_its_document() -> None:
    pattern = validate_pattern(doc(CREATE, PUBLISH, input_schema=ENDS_SCHEMA, metadata={"tags": ["a"]}))
    assert Pattern.from_document(pattern.to_document()) == pattern
    assert Pattern.from_json(pattern.to_json()) == pattern
    assert json.loads(pattern.to_json())["steps"][1]["depends_on"] == ["create"]


def test_pattern__shown_document_can_be_stored_again() -> None:
    """Server-managed fields (version, deprecated, owner, created_*) are accepted and ignored."""
    pattern = validate_pattern(doc(CREATE))
    shown = pattern.model_copy(update={"version": 7, "deprecated": True}).to_document()
    shown["metadata"] |= {"owner": "mallory", "created_by": "mallory", "created_at": "2020-01-01T00:00:00Z"}
    again = validate_pattern(shown)
    assert (again.version, again.deprecated, again.metadata.owner) == (0, False, None)
    assert again.digest() == pattern.digest()


DIGESTS = [
    # (change, same digest?)
    (lambda d: d, True),
    (lambda d: d["steps"][0].update(id="create"), True),  # the default id written out
    (lambda d: d["steps"][0].update(depends_on=[]), True),
    (lambda d: d.update(version=3, deprecated=True), True),
    (lambda d: d.update(metadata={"owner": "x"}), True),
    (lambda d: d.update(name="Q"), False),
    (lambda d: d.update(description="d"), False),
    (lambda d: d["steps"][0]["parameters"].update(type="member"), False),
    (lambda d: d.update(metadata={"tags": ["t"]}), False),
    (lambda d: d.update(execute_permission=["bob"]), False),
    (lambda d: d.update(on_failure="keep_completed"), False),
    (lambda d: d["steps"][0].update(retry={"max_attempts": 2}), False),
]


@pytest.mark.parametrize(("change", "same"), DIGESTS)
def test_digest__depends_on_the_definition_only(change: Any, same: bool) -> None:
    base = doc(copy.deepcopy(CREATE))
    changed = copy.deepcopy(base)
    change(changed)
    assert (validate_pattern(changed).digest() == validate_pattern(base).digest()) is same


def test_pattern__step_lookup_and_on_failure() -> None:
    pattern = validate_pattern(
        doc(CREATE, {**PUBLISH, "on_failure": "keep_completed"}, on_failure="rollback_all")
    )
    assert pattern.step("publish").action == "publish"
    with pytest.raises(NotFound):
        pattern.step("nope")
    assert pattern.on_failure_of(pattern.step("create")) is OnFailure.ROLLBACK_ALL
    assert pattern.on_failure_of(pattern.step("publish")) is OnFailure.KEEP_COMPLETED


def test_pattern__deprecated_is_not_executable() -> None:
    pattern = validate_pattern(doc(CREATE)).model_copy(update={"deprecated": True})
    with pytest.raises(PatternDeprecated) as info:
        pattern.ensure_executable()
    assert info.value.code is ErrorCode.PATTERN_DEPRECATED


# --------------------------------------------------------------------------- retry policy

BACKOFFS = [
    # policy, attempt, rand, expected ms
    ({"initial_backoff_ms": 100, "multiplier": 2, "jitter": 0}, 1, 0.5, 100),
    ({"initial_backoff_ms": 100, "multiplier": 2, "jitter": 0}, 3, 0.5, 400),
    ({"initial_backoff_ms": 100, "multiplier": 2, "max_backoff_ms": 300, "jitter": 0}, 3, 0.5, 300),
    ({"initial_backoff_ms": 100, "multiplier": 2, "jitter": 0.5}, 1, 0.0, 50),
    ({"initial_backoff_ms": 100, "multiplier": 2, "jitter": 0.5}, 1, 0.999999, 150),
    ({"initial_backoff_ms": 100, "multiplier": 2, "max_backoff_ms": 100, "jitter": 0.5}, 1, 0.999999, 100),
    ({"initial_backoff_ms": 0, "jitter": 1}, 5, 0.9, 0),
]


@pytest.mark.parametrize(("policy", "attempt", "rand", "expected"), BACKOFFS)
def test_retry__backoff(policy: dict[str, Any], attempt: int, rand: float, expected: float) -> None:
    assert RetryPolicy.model_validate(policy).backoff_ms(attempt, rand) == pytest.approx(expected, abs=0.01)


def test_retry__should_retry() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry("timeout", 1)
    assert policy.should_retry("concurrent_modification", 2)
    assert not policy.should_retry("timeout", 3)
    assert not policy.should_retry("validation_error", 1)
    assert ErrorCode.VALIDATION_ERROR in DEFAULT_NON_RETRYABLE
    assert not RetryPolicy().should_retry("timeout", 1)  # one attempt unless asked


# ------------------------------------------------------------------ validation, one problem at a time

INVALID: list[tuple[str, dict[str, Any], list[tuple[str, str, str]]]] = [
    # name, document, [(path, code, fragment of the message)]
    ("not an object", [], [("", "validation_error", "a pattern is a JSON object")]),  # type: ignore[list-item]
    ("no steps", {"id": "p", "name": "P"}, [("steps", "validation_error", "at least one step")]),
    ("empty steps", doc(), [("steps", "validation_error", "at least one step")]),
    ("missing name", {"id": "p", "steps": [FIND]}, [("name", "validation_error", "Field required")]),
    ("bad id", {**doc(FIND), "id": "a:b"}, [("id", "validation_error", "String should match pattern")]),
    ("unknown top-level field", {**doc(FIND), "Steps": []}, [("Steps", "validation_error", "unknown field")]),
    (
        "step not an object",
        doc(FIND, "create"),
        [("steps[1]", "validation_error", "a step is a JSON object")],
    ),
    (
        "unknown step field",
        doc({**FIND, "DependsOn": ["x"]}),
        [("steps[0].DependsOn", "validation_error", "unknown field")],
    ),
    (
        "step missing action",
        doc({"type": "graph"}),
        [("steps[0].action", "validation_error", "Field required")],
    ),
    (
        "unknown step kind",
        doc({"type": "graph", "action": "teleport"}),
        [("steps[0]", "unknown_step", "'graph' steps have no action 'teleport'")],
    ),
    (
        "unknown step type",
        doc({"type": "http", "action": "get"}),
        [("steps[0]", "unknown_step", "unknown step type 'http'")],
    ),
    (
        "unknown dependency",
        doc(FIND, {**CREATE, "depends_on": ["find_path", "nope"]}),
        [("steps[1].depends_on[1]", "dependency_error", "depends on 'nope', which is no step")],
    ),
    (
        "dependency listed twice",
        doc(FIND, {**CREATE, "depends_on": ["find_path", "find_path"]}),
        [("steps[1].depends_on[1]", "validation_error", "'find_path' is listed twice")],
    ),
    (
        "self dependency",
        doc({**FIND, "depends_on": ["find_path"]}),
        [("steps[0].depends_on[0]", "cycle_detected", "find_path -> find_path")],
    ),
    (
        "two-step cycle",
        doc({**FIND, "depends_on": ["create"]}, {**CREATE, "depends_on": ["find_path"]}),
        [("steps[0].depends_on[0]", "cycle_detected", "find_path -> create -> find_path")],
    ),
    (
        "duplicate defaulted id",
        doc(CREATE, CREATE),
        [
            (
                "steps[1].action",
                "validation_error",
                "step id 'create' is already used by steps[0] (a step's id defaults",
            )
        ],
    ),
    (
        "duplicate explicit id",
        doc({**CREATE, "id": "x"}, {**FIND, "id": "x"}),
        [("steps[1].id", "validation_error", "step id 'x' is already used by steps[0]")],
    ),
    (
        "bad step id",
        doc({**CREATE, "id": "a.b"}),
        [("steps[0].id", "validation_error", "String should match")],
    ),
    (
        "bad parameter",
        doc({**FIND, "parameters": {"max_depth": 0}}),
        [("steps[0].parameters.max_depth", "validation_error", "greater than or equal to 1")],
    ),
    (
        "parameters not an object",
        doc({**FIND, "parameters": [1]}),
        [("steps[0].parameters", "validation_error", "Input should be a JSON object")],
    ),
    (
        "bad retry",
        doc({**FIND, "retry": {"max_attempts": 0}}),
        [("steps[0].retry.max_attempts", "validation_error", "greater than or equal to 1")],
    ),
    (
        "retry cap below start",
        doc({**FIND, "retry": {"initial_backoff_ms": 500, "max_backoff_ms": 100}}),
        [("steps[0].retry", "validation_error", "max_backoff_ms must be at least initial_backoff_ms")],
    ),
    (
        "unknown non-retryable code",
        doc({**FIND, "retry": {"non_retryable": ["oops"]}}),
        [("steps[0].retry.non_retryable[0]", "validation_error", "Input should be")],
    ),
    (
        "bad timeout",
        doc({**FIND, "timeout_ms": 0}),
        [("steps[0].timeout_ms", "validation_error", "greater than or equal to 1")],
    ),
    (
        "bad on_failure",
        doc({**FIND, "on_failure": "panic"}),
        [("steps[0].on_failure", "validation_error", "Input should be 'rollback_all'")],
    ),
    (
        "compensation without compensate",
        doc(
            {
                **FIND,
                "compensation": {"type": "event", "action": "publish", "parameters": {"event_type": "x"}},
            }
        ),
        [("steps[0].compensation", "validation_error", "runs only with on_failure `compensate`")],
    ),
    (
        "compensation of unknown kind",
        doc({**FIND, "on_failure": "compensate", "compensation": {"type": "event", "action": "shout"}}),
        [("steps[0].compensation", "unknown_step", "'event' steps have no action 'shout'")],
    ),
    (
        "compensation with bad parameter",
        doc({**FIND, "on_failure": "compensate", "compensation": {"type": "event", "action": "publish"}}),
        [("steps[0].compensation.parameters.event_type", "validation_error", "Field required")],
    ),
    (
        "compensation runs a pattern",
        doc(
            {
                **FIND,
                "on_failure": "compensate",
                "compensation": {"type": "pattern", "action": "execute", "parameters": {"pattern_id": "x"}},
            }
        ),
        [("steps[0].compensation", "validation_error", "a compensation cannot run a pattern")],
    ),
    (
        "malformed template",
        doc({**CREATE, "parameters": {"type": "owner", "metadata": {"a": "{{input.a"}}}),
        [("steps[0].parameters.metadata.a", "validation_error", "unclosed '{{'")],
    ),
    (
        "template with unknown root",
        doc({**CREATE, "parameters": {"type": "owner", "source": "{{env.USER}}"}}),
        [("steps[0].parameters.source", "validation_error", "unknown root 'env'")],
    ),
    (
        "template names no step",
        doc({**CREATE, "parameters": {"type": "owner", "source": "{{steps.x.output.a}}"}}),
        [("steps[0].parameters.source", "dependency_error", "names no step of this pattern")],
    ),
    (
        "template names own step",
        doc({**CREATE, "parameters": {"type": "owner", "source": "{{steps.create.output}}"}}),
        [("steps[0].parameters.source", "dependency_error", "a step cannot use its own output")],
    ),
    (
        "template names a step that is not upstream",
        doc(
            FIND, {**CREATE, "parameters": {"type": "owner", "target": "{{steps.find_path.output.path[1]}}"}}
        ),
        [("steps[1].parameters.target", "dependency_error", "step 'find_path' is not upstream of 'create'")],
    ),
    (
        "template names a downstream step",
        doc(
            {**FIND, "parameters": {"max_depth": "{{steps.create.output.relationship}}"}},
            {**CREATE, "depends_on": ["find_path"]},
        ),
        [
            (
                "steps[0].parameters.max_depth",
                "dependency_error",
                "step 'create' is not upstream of 'find_path'",
            )
        ],
    ),
    (
        "template names an unknown output",
        doc(
            FIND,
            {
                **CREATE,
                "parameters": {"type": "owner", "metadata": {"p": "{{steps.find_path.output.hops}}"}},
                "depends_on": ["find_path"],
            },
        ),
        [
            (
                "steps[1].parameters.metadata.p",
                "validation_error",
                "graph/find_path outputs found, length, path",
            )
        ],
    ),
    (
        "template names an undeclared input field",
        doc(
            {**CREATE, "parameters": {"type": "owner", "metadata": {"u": "{{input.user}}"}}},
            input_schema=ENDS_SCHEMA,
        ),
        [
            (
                "steps[0].parameters.metadata.u",
                "validation_error",
                "names 'user', which the input schema does not declare",
            )
        ],
    ),
    (
        "defaulted end not in input schema",
        doc(CREATE, input_schema={"type": "object", "properties": {"source": {"type": "string"}}}),
        [
            (
                "steps[0].parameters.target",
                "validation_error",
                "comes from the input's 'target', which the input schema",
            )
        ],
    ),
    (
        "templated pattern_id",
        doc({"type": "pattern", "action": "execute", "parameters": {"pattern_id": "{{input.p}}"}}),
        [("steps[0].parameters.pattern_id", "validation_error", "pattern_id must be written out")],
    ),
    (
        "input schema not an object",
        doc(FIND, input_schema={"type": "string"}),
        [("input_schema.type", "validation_error", 'describes an object: "type": "object"')],
    ),
    (
        "kind user with inclusions",
        doc({"type": "pattern", "action": "execute", "parameters": {"pattern_id": "inner"}}, kind="user"),
        [("kind", "validation_error", "with `pattern`/`execute` steps is `composite`")],
    ),
    (
        "kind composite without inclusions",
        doc(FIND, kind="composite"),
        [("kind", "validation_error", "has at least one `pattern`/`execute` step")],
    ),
    ("unknown kind", doc(FIND, kind="magic"), [("kind", "validation_error", "Input should be 'system'")]),
    (
        "bad execute_permission",
        doc(FIND, execute_permission="bob"),
        [("execute_permission", "validation_error", "Input should be a list")],
    ),
    (
        "bad tags",
        doc(FIND, metadata={"tags": "a"}),
        [("metadata.tags", "validation_error", "Input should be a list")],
    ),
]


@pytest.mark.parametrize(("name", "document", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_validate__invalid(name: str, document: Any, expected: list[tuple[str, str, str]]) -> None:
    resolve = {
        ("inner", None): validate_pattern({**doc(FIND), "id": "inner"}).model_copy(update={"version": 1})
    }
    with pytest.raises(PatternInvalid) as info:
        validate_pattern(document, resolve_pattern=lambda i, v: resolve.get((i, v)))
    problems = info.value.details["problems"]
    assert [(p["path"], p["code"]) for p in problems] == [(path, code) for path, code, _ in expected], (
        problems
    )
    for problem, (_, _, fragment) in zip(problems, expected, strict=True):
        assert fragment in problem["message"]
    assert info.value.code == (
        expected[0][1] if len({c for _, c, _ in expected}) == 1 else "validation_error"
    )


ERROR_CLASSES = [
    (doc({"type": "x", "action": "y"}), PatternUnknownStep, ErrorCode.UNKNOWN_STEP),
    (doc({**FIND, "depends_on": ["nope"]}), PatternDependencyError, ErrorCode.DEPENDENCY_ERROR),
    (doc({**FIND, "depends_on": ["find_path"]}), PatternCycleDetected, ErrorCode.CYCLE_DETECTED),
    (doc(*[{**FIND, "id": f"s{i}"} for i in range(4)]), PatternTooLarge, ErrorCode.RESOURCE_LIMIT),
    (doc({**FIND, "parameters": {"max_depth": 0}}), PatternInvalid, ErrorCode.VALIDATION_ERROR),
]


@pytest.mark.parametrize(("document", "cls", "code"), ERROR_CLASSES)
def test_validate__error_class_and_code_when_problems_share_one(
    document: Any, cls: type, code: ErrorCode
) -> None:
    with pytest.raises(PatternInvalid) as info:
        validate_pattern(document, limits=PatternLimits(max_steps=3))
    assert type(info.value) is cls
    assert info.value.code is code
    assert info.value.to_dict()["code"] == code.value


def test_validate__cycle_unknown_dependency_and_bad_parameter_in_one_error() -> None:
    """The issue's acceptance case: one error that lists every problem with its path."""
    document = doc(
        {"type": "graph", "action": "find_path", "parameters": {"max_depth": 99}, "depends_on": ["create"]},
        {
            "type": "relationship",
            "action": "create",
            "parameters": {"type": "owner"},
            "depends_on": ["find_path"],
        },
        {"type": "event", "action": "publish", "parameters": {"event_type": "done"}, "depends_on": ["ghost"]},
    )
    with pytest.raises(PatternInvalid) as info:
        validate_pattern(document)
    error = info.value
    assert error.code is ErrorCode.VALIDATION_ERROR
    assert error.to_dict()["details"]["problems"] == [
        {
            "path": "steps[0].depends_on[0]",
            "code": "cycle_detected",
            "message": "steps depend on each other in a cycle: find_path -> create -> find_path",
            "cycle": ["find_path", "create", "find_path"],
        },
        {
            "path": "steps[0].parameters.max_depth",
            "code": "validation_error",
            "message": "Input should be less than or equal to 10",
        },
        {
            "path": "steps[2].depends_on[0]",
            "code": "dependency_error",
            "message": "step 'publish' depends on 'ghost', which is no step of this pattern "
            "(steps: find_path, create, publish)",
        },
    ]
    assert error.message.startswith("invalid pattern 'p' (3 problems): steps[0].depends_on[0]: ")
    for problem in error.problems:
        assert f"{problem.path}: {problem.message}" in error.message


def test_validate__problems_in_document_order() -> None:
    steps = [{**FIND, "id": f"s{i}", "parameters": {"max_depth": 0}} for i in range(12)]
    with pytest.raises(PatternInvalid) as info:
        validate_pattern(doc(*steps))
    assert [p.path for p in info.value.problems] == [f"steps[{i}].parameters.max_depth" for i in range(12)]


def test_validate__every_cycle_reported_once() -> None:
    document = doc(
        {**FIND, "id": "a", "depends_on": ["b"]},
        {**FIND, "id": "b", "depends_on": ["a"]},
        {**FIND, "id": "c", "depends_on": ["d", "a"]},
        {**FIND, "id": "d", "depends_on": ["e"]},
        {**FIND, "id": "e", "depends_on": ["c"]},
    )
    with pytest.raises(PatternCycleDetected) as info:
        validate_pattern(document)
    assert [p.details["cycle"] for p in info.value.problems] == [["a", "b", "a"], ["c", "d", "e", "c"]]


def test_validate__cycle_found_through_a_dead_end_branch() -> None:
    # b's first dependency (c) leads back only to b: the reported cycle still closes at a
    document = doc(
        {**FIND, "id": "a", "depends_on": ["b"]},
        {**FIND, "id": "b", "depends_on": ["c", "a"]},
        {**FIND, "id": "c", "depends_on": ["b"]},
    )
    with pytest.raises(PatternCycleDetected) as info:
        validate_pattern(document)
    assert [p.details["cycle"] for p in info.value.problems] == [["a", "b", "a"]]


# --------------------------------------------------------------------------- validation, what passes

VALID: list[tuple[str, dict[str, Any]]] = [
    (
        "templates from input and upstream steps",
        doc(
            FIND,
            {"type": "graph", "action": "neighbors", "parameters": {"entity": "{{input.source}}"}},
            {
                **CREATE,
                "parameters": {
                    "type": "linked",
                    "source": "{{steps.find_path.output.path[0]}}",
                    "metadata": {
                        "hops": "{{steps.find_path.output.length}}",
                        "by": "{{context.principal}}",
                        "n": "{{steps.neighbors.output.count}}",
                    },
                },
                "depends_on": ["find_path", "neighbors"],
            },
            input_schema=ENDS_SCHEMA,
        ),
    ),
    (
        "transitive upstream",
        doc(
            FIND,
            {**CREATE, "depends_on": ["find_path"]},
            {
                **PUBLISH,
                "parameters": {"event_type": "done", "data": {"path": "{{steps.find_path.output.path}}"}},
            },
        ),
    ),
    (
        "whole input without schema",
        doc({**PUBLISH, "depends_on": [], "parameters": {"event_type": "x", "data": "{{input}}"}}),
    ),
    (
        "any input field without schema",
        doc({**CREATE, "parameters": {"type": "owner", "metadata": {"a": "{{input.x.y}}"}}}),
    ),
    (
        "compensation",
        doc(
            FIND,
            {
                **CREATE,
                "depends_on": ["find_path"],
                "on_failure": "compensate",
                "compensation": {
                    "type": "event",
                    "action": "publish",
                    "parameters": {
                        "event_type": "transfer_failed",
                        "data": {"p": "{{steps.find_path.output.path}}"},
                    },
                },
            },
        ),
    ),
    (
        "pattern-level compensate with compensations",
        doc(
            {**FIND, "compensation": {"type": "control", "action": "fail"}},
            on_failure="compensate",
        ),
    ),
    (
        "keep_completed and optional",
        doc(
            FIND,
            {
                **CREATE,
                "optional": True,
                "on_failure": "keep_completed",
                "retry": {"max_attempts": 3, "non_retryable": []},
                "timeout_ms": 500,
            },
        ),
    ),
    ("execute permission and tags", doc(FIND, execute_permission=["bob"], metadata={"tags": ["x"]})),
    ("explicit ids", doc({**FIND, "id": "route"}, {**CREATE, "id": "link", "depends_on": ["route"]})),
    (
        "diamond",
        doc(
            {**FIND, "id": "a"},
            {**FIND, "id": "b", "depends_on": ["a"]},
            {**FIND, "id": "c", "depends_on": ["a"]},
            {**FIND, "id": "d", "depends_on": ["b", "c"]},
        ),
    ),
]


@pytest.mark.parametrize(("name", "document"), VALID, ids=[c[0] for c in VALID])
def test_validate__valid(name: str, document: dict[str, Any]) -> None:
    pattern = validate_pattern(document)
    assert len(pattern.steps) == len(document["steps"])


# --------------------------------------------------------------------------- limits


def test_limits__steps_and_document_size() -> None:
    many = doc(*[{**FIND, "id": f"s{i}"} for i in range(6)])
    validate_pattern(many, limits=PatternLimits(max_steps=6))
    with pytest.raises(PatternTooLarge) as info:
        validate_pattern(many, limits=PatternLimits(max_steps=5))
    assert info.value.problems[0].path == "steps"
    assert info.value.problems[0].details == {"steps": 6, "limit": 5}

    big = doc({**PUBLISH, "depends_on": [], "parameters": {"event_type": "x", "data": {"blob": "x" * 2000}}})
    with pytest.raises(PatternTooLarge) as info:
        validate_pattern(big, limits=PatternLimits(max_document_bytes=1024))
    assert "the limit is 1024" in info.value.message
    with pytest.raises(PatternTooLarge):
        validate_pattern(doc(FIND), document_bytes=10**6)


# --------------------------------------------------------------------------- composite patterns


def stored(document: dict[str, Any], version: int = 1, deprecated: bool = False) -> Pattern:
    """A pattern as the store would return it (built directly: its own includes are not checked)."""
    includes = any(s["type"] == "pattern" for s in document["steps"])
    kind = "composite" if includes else "user"
    return Pattern.model_validate({"kind": kind, **document, "version": version, "deprecated": deprecated})


def include(pattern_id: str, version: int | None = None, step_id: str | None = None) -> dict[str, Any]:
    parameters: dict[str, Any] = {"pattern_id": pattern_id}
    if version is not None:
        parameters["version"] = version
    step: dict[str, Any] = {"type": "pattern", "action": "execute", "parameters": parameters}
    if step_id:
        step["id"] = step_id
    return step


class Library:
    """A resolver over a dict of stored patterns, by id and version (None: the latest)."""

    def __init__(self, *patterns: Pattern) -> None:
        self.patterns = {(p.id, p.version): p for p in patterns}

    def __call__(self, pattern_id: str, version: int | None) -> Pattern | None:
        if version is None:
            versions = [v for i, v in self.patterns if i == pattern_id]
            return self.patterns[(pattern_id, max(versions))] if versions else None
        return self.patterns.get((pattern_id, version))


def test_composite__pins_the_latest_version_and_infers_the_kind() -> None:
    leaf1 = stored({**doc(FIND), "id": "leaf"}, 1)
    leaf2 = stored({**doc(FIND, CREATE), "id": "leaf"}, 2)
    pattern = validate_pattern({**doc(include("leaf")), "id": "top"}, resolve_pattern=Library(leaf1, leaf2))
    assert pattern.kind is PatternKind.COMPOSITE
    assert pattern.steps[0].parameters == {"pattern_id": "leaf", "version": 2}
    pinned = validate_pattern({**doc(include("leaf", 1)), "id": "top"}, resolve_pattern=Library(leaf1, leaf2))
    assert pinned.steps[0].parameters == {"pattern_id": "leaf", "version": 1}
    assert [i.version for i in pinned.includes()] == [1]


def test_composite__system_pattern_may_include() -> None:
    leaf = stored({**doc(FIND), "id": "leaf"})
    pattern = validate_pattern(
        {**doc(include("leaf")), "id": "top", "kind": "system"}, resolve_pattern=Library(leaf)
    )
    assert pattern.kind is PatternKind.SYSTEM


COMPOSITE_PROBLEMS: list[tuple[str, dict[str, Any], list[Pattern], int, str, str]] = [
    # name, document, stored patterns, depth limit, code, fragment
    (
        "includes itself",
        {**doc(include("top")), "id": "top"},
        [],
        4,
        "cycle_detected",
        "pattern 'top' includes itself",
    ),
    (
        "missing",
        {**doc(include("ghost")), "id": "top"},
        [],
        4,
        "dependency_error",
        "pattern 'ghost' does not exist",
    ),
    (
        "missing version",
        {**doc(include("leaf", 9)), "id": "top"},
        [stored({**doc(FIND), "id": "leaf"})],
        4,
        "dependency_error",
        "version 9 of pattern 'leaf' does not exist",
    ),
    (
        "deprecated",
        {**doc(include("leaf")), "id": "top"},
        [stored({**doc(FIND), "id": "leaf"}, deprecated=True)],
        4,
        "dependency_error",
        "pattern 'leaf' is deprecated",
    ),
    (
        "cycle through another",
        {**doc(include("mid")), "id": "top"},
        [stored({**doc(include("top", 1)), "id": "mid"}), stored({**doc(FIND), "id": "top"})],
        4,
        "cycle_detected",
        "patterns include each other in a cycle: top -> mid -> top",
    ),
    (
        "too deep",
        {**doc(include("a")), "id": "top"},
        [
            stored({**doc(include("b", 1)), "id": "a"}),
            stored({**doc(include("c", 1)), "id": "b"}),
            stored({**doc(FIND), "id": "c"}),
        ],
        2,
        "resource_limit",
        "patterns nest 3 deep (top -> a -> b -> c); the limit is 2",
    ),
    (
        "composites disabled",
        {**doc(include("leaf")), "id": "top"},
        [stored({**doc(FIND), "id": "leaf"})],
        0,
        "resource_limit",
        "composite patterns are disabled",
    ),
    (
        "nested version gone",
        {**doc(include("a")), "id": "top"},
        [stored({**doc(include("b", 1)), "id": "a"})],
        4,
        "dependency_error",
        "'a' includes version 1 of 'b', which is no longer stored",
    ),
]


@pytest.mark.parametrize(
    ("name", "document", "library", "depth", "code", "fragment"),
    COMPOSITE_PROBLEMS,
    ids=[c[0] for c in COMPOSITE_PROBLEMS],
)
def test_composite__problems(
    name: str, document: dict[str, Any], library: list[Pattern], depth: int, code: str, fragment: str
) -> None:
    with pytest.raises(PatternInvalid) as info:
        validate_pattern(
            document, resolve_pattern=Library(*library), limits=PatternLimits(max_inclusion_depth=depth)
        )
    [problem] = info.value.details["problems"]
    assert problem["path"] == "steps[0].parameters.pattern_id"
    assert (problem["code"], info.value.code) == (code, code)
    assert fragment in problem["message"]


def test_composite__within_the_depth_limit() -> None:
    library = Library(stored({**doc(include("b", 1)), "id": "a"}), stored({**doc(FIND), "id": "b"}))
    validate_pattern(
        {**doc(include("a")), "id": "top"},
        resolve_pattern=library,
        limits=PatternLimits(max_inclusion_depth=2),
    )


def test_composite__needs_a_resolver() -> None:
    with pytest.raises(PatternDependencyError):
        validate_pattern({**doc(include("leaf")), "id": "top"})


def test_composite__step_outputs_of_an_include() -> None:
    leaf = stored({**doc(FIND), "id": "leaf"})
    document = {
        **doc(
            include("leaf", step_id="sub"),
            {
                **PUBLISH,
                "depends_on": ["sub"],
                "parameters": {"event_type": "x", "data": {"s": "{{steps.sub.output.steps}}"}},
            },
        ),
        "id": "top",
    }
    validate_pattern(document, resolve_pattern=Library(leaf))
    document["steps"][1]["parameters"]["data"] = {"s": "{{steps.sub.output.result}}"}
    with pytest.raises(
        PatternInvalid, match="pattern/execute outputs pattern_id, version, steps; not 'result'"
    ):
        validate_pattern(document, resolve_pattern=Library(leaf))


# --------------------------------------------------------------------------- plan


def test_execution_order__levels_in_document_order() -> None:
    pattern = validate_pattern(
        doc(
            {**FIND, "id": "d", "depends_on": ["b", "c"]},
            {**FIND, "id": "c", "depends_on": ["a"]},
            {**FIND, "id": "b", "depends_on": ["a"]},
            {**FIND, "id": "a"},
            {**FIND, "id": "e"},
        )
    )
    assert execution_order(pattern) == [("a", "e"), ("c", "b"), ("d",)]
    planned = plan(pattern)
    assert planned.order == ("a", "e", "c", "b", "d")
    assert planned.upstream["d"] == {"a", "b", "c"}
    assert planned.upstream["a"] == frozenset()
    assert planned.downstream["a"] == {"b", "c", "d"}
    assert planned.downstream["d"] == frozenset()


def test_execution_order__spec_examples() -> None:
    orders = {p.id: execution_order(p) for p in system_patterns()}
    assert orders == {
        "user_onboarding": [("create",), ("publish",)],
        "financial_transaction": [("find_path",), ("create",)],
    }


def test_execution_order__refuses_an_unvalidated_cycle() -> None:
    pattern = Pattern.model_validate(doc({**FIND, "depends_on": ["find_path"]}))
    with pytest.raises(CycleError):
        execution_order(pattern)


# --------------------------------------------------------------------------- input schema subset

SCHEMA_PROBLEMS: list[tuple[Any, list[tuple[str, str]]]] = [
    ({"type": "object"}, []),
    (ENDS_SCHEMA, []),
    ("object", [("input_schema", "a schema is a JSON object")]),
    ({}, [("input_schema.type", "describes an object")]),
    ({"type": "object", "$ref": "#/x"}, [("input_schema.$ref", "unsupported keyword '$ref'")]),
    (
        {"type": "object", "properties": {"a": {"type": "str"}}},
        [("input_schema.properties.a.type", "unknown type 'str'")],
    ),
    (
        {"type": "object", "properties": {"a": {"type": []}}},
        [("input_schema.properties.a.type", "non-empty list")],
    ),
    ({"type": ["object", "null"]}, [("input_schema.type", "describes an object")]),
    ({"type": "object", "properties": []}, [("input_schema.properties", "maps names to schemas")]),
    ({"type": "object", "required": "a"}, [("input_schema.required", "a list of property names")]),
    ({"type": "object", "required": ["a", "a"]}, [("input_schema.required", "names a property twice")]),
    (
        {"type": "object", "properties": {}, "required": ["a"]},
        [("input_schema.required[0]", "'a' is required but not in")],
    ),
    (
        {"type": "object", "additionalProperties": {}},
        [("input_schema.additionalProperties", "true or false")],
    ),
    (
        {"type": "object", "properties": {"a": {"enum": []}}},
        [("input_schema.properties.a.enum", "non-empty list")],
    ),
    (
        {"type": "object", "properties": {"a": {"type": "string", "enum": ["x", 1]}}},
        [("input_schema.properties.a.enum[1]", "1 is not of the declared type")],
    ),
    (
        {"type": "object", "properties": {"a": {"format": "email"}}},
        [("input_schema.properties.a.format", "unknown format")],
    ),
    (
        {"type": "object", "properties": {"a": {"minLength": -1, "maximum": "9"}}},
        [
            ("input_schema.properties.a.minLength", "non-negative integer"),
            ("input_schema.properties.a.maximum", "a number"),
        ],
    ),
    (
        {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "nope"}}}},
        [("input_schema.properties.a.items.type", "unknown type 'nope'")],
    ),
    ({"type": "object", "title": 3}, [("input_schema.title", "a string")]),
]


@pytest.mark.parametrize(("schema", "expected"), SCHEMA_PROBLEMS)
def test_input_schema__check(schema: Any, expected: list[tuple[str, str]]) -> None:
    problems = check_schema(schema)
    assert [p.path for p in problems] == [path for path, _ in expected]
    for problem, (_, fragment) in zip(problems, expected, strict=True):
        assert fragment in problem.message


def test_input_schema__too_deep() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(10):
        schema = {"type": "object", "properties": {"x": schema}}
    assert any("nest at most" in p.message for p in check_schema(schema))


RICH_SCHEMA = {
    "type": "object",
    "properties": {
        "source": {"type": "string", "format": "entity-id"},
        "amount": {"type": "number", "minimum": 0, "maximum": 1000},
        "count": {"type": "integer"},
        "currency": {"type": "string", "enum": ["EUR", "USD"]},
        "note": {"type": ["string", "null"], "minLength": 2, "maxLength": 5},
        "at": {"type": "string", "format": "date-time"},
        "pattern": {"type": "string", "format": "pattern-id"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "flag": {"type": "boolean"},
        "nested": {
            "type": "object",
            "properties": {"x": {"type": "integer"}},
            "required": ["x"],
            "additionalProperties": False,
        },
    },
    "required": ["source"],
}

INPUTS: list[tuple[dict[str, Any], list[tuple[str, str]]]] = [
    ({"source": "user:1"}, []),
    (
        {
            "source": "user:1",
            "amount": 10.5,
            "count": 3,
            "currency": "EUR",
            "note": None,
            "at": "2026-01-02T03:04:05Z",
            "pattern": "user_onboarding",
            "tags": ["a"],
            "flag": False,
            "nested": {"x": 1},
            "extra": "allowed",
        },
        [],
    ),
    ({"count": 2.0, "source": "u"}, []),  # 2.0 is an integer in JSON
    ({}, [("input.source", "is required")]),
    ({"source": "user 1"}, [("input.source", "must be an entity id")]),
    ({"source": ""}, [("input.source", "must be an entity id")]),
    ({"source": 1}, [("input.source", "must be string, not integer")]),
    ({"source": "u", "amount": -1}, [("input.amount", "must be at least 0")]),
    ({"source": "u", "amount": 1001}, [("input.amount", "must be at most 1000")]),
    ({"source": "u", "amount": True}, [("input.amount", "must be number, not boolean")]),
    ({"source": "u", "count": 1.5}, [("input.count", "must be integer, not number")]),
    ({"source": "u", "currency": "GBP"}, [("input.currency", "must be one of: 'EUR', 'USD'")]),
    ({"source": "u", "note": "x"}, [("input.note", "at least 2 characters")]),
    ({"source": "u", "note": "toolong"}, [("input.note", "at most 5 characters")]),
    ({"source": "u", "at": "yesterday"}, [("input.at", "must be an RFC 3339 date-time")]),
    ({"source": "u", "at": "2026-13-02T03:04:05Z"}, [("input.at", "must be an RFC 3339 date-time")]),
    ({"source": "u", "pattern": "a:b"}, [("input.pattern", "must be a pattern id")]),
    ({"source": "u", "tags": ["a", 2]}, [("input.tags[1]", "must be string")]),
    (
        {"source": "u", "nested": {"y": 1}},
        [("input.nested.x", "is required"), ("input.nested.y", "is not a field")],
    ),
]


@pytest.mark.parametrize(("value", "expected"), INPUTS)
def test_input_schema__validate_value(value: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    problems = validate_value(RICH_SCHEMA, value)
    assert [p.path for p in problems] == [path for path, _ in expected]
    for problem, (_, fragment) in zip(problems, expected, strict=True):
        assert fragment in problem.message


def test_validate_input__lists_every_problem() -> None:
    pattern = validate_pattern(doc({**PUBLISH, "depends_on": []}, input_schema=RICH_SCHEMA))
    with pytest.raises(InputInvalid) as info:
        validate_input(pattern, {"amount": -1, "currency": "GBP"})
    assert info.value.code is ErrorCode.VALIDATION_ERROR
    assert [p["path"] for p in info.value.details["problems"]] == [
        "input.source",
        "input.amount",
        "input.currency",
    ]
    assert "invalid input for pattern 'p' (3 problems)" in info.value.message


def test_validate_input__without_schema_any_object() -> None:
    pattern = validate_pattern(doc(FIND))
    validate_input(pattern, {"anything": [1]})
    with pytest.raises(InputInvalid):
        validate_input(pattern, ["not", "an", "object"])


# --------------------------------------------------------------------------- documents as text


def test_load_document__json_and_yaml() -> None:
    yaml_text = """
id: user_onboarding
name: User Onboarding Flow
steps:
  - type: relationship
    action: create
    parameters: {type: owner, metadata: {wallet_type: primary}}
  - type: event
    action: publish
    parameters: {event_type: user_created}
    depends_on: [create]
"""
    from_yaml = validate_pattern(load_document(yaml_text))
    from_json = validate_pattern(load_document(json.dumps(load_document(yaml_text)).encode()))
    assert from_yaml == from_json
    assert [s.id for s in from_yaml.steps] == ["create", "publish"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b"\xff", "must be UTF-8"),
        ("[1, 2]", "must be a JSON/YAML object, not list"),
        ("a: [", "must be JSON or YAML"),
        ("just text", "not str"),
    ],
)
def test_load_document__rejects(text: str | bytes, fragment: str) -> None:
    with pytest.raises(ValidationFailed, match=".*") as info:
        load_document(text)
    assert fragment in info.value.message


# --------------------------------------------------------------------------- properties


@st.composite
def dependency_graphs(draw: st.DrawFn, acyclic: bool) -> dict[str, list[str]]:
    count = draw(st.integers(1, 8))
    ids = [f"s{i}" for i in range(count)]
    graph = {}
    for i, step_id in enumerate(ids):
        candidates = ids[:i] if acyclic else ids
        graph[step_id] = draw(st.lists(st.sampled_from(candidates), unique=True)) if candidates else []
    order = draw(st.permutations(ids))
    return {step_id: graph[step_id] for step_id in order}


def graph_document(graph: dict[str, list[str]]) -> dict[str, Any]:
    return doc(*[{**FIND, "id": step_id, "depends_on": deps} for step_id, deps in graph.items()])


@given(dependency_graphs(acyclic=True))
def test_property__a_dag_validates_and_its_order_respects_dependencies(graph: dict[str, list[str]]) -> None:
    pattern = validate_pattern(graph_document(graph))
    levels = execution_order(pattern)
    level_of = {step: i for i, level in enumerate(levels) for step in level}
    assert sorted(level_of) == sorted(graph)
    for step, deps in graph.items():
        assert all(level_of[d] < level_of[step] for d in deps)
    planned = plan(pattern)
    for step in graph:
        reachable, stack = set(), list(graph[step])
        while stack:
            node = stack.pop()
            if node not in reachable:
                reachable.add(node)
                stack.extend(graph[node])
        assert planned.upstream[step] == reachable


@given(dependency_graphs(acyclic=False))
def test_property__every_reported_cycle_is_real_and_cycles_are_never_missed(
    graph: dict[str, list[str]],
) -> None:
    has_cycle = False
    try:
        TopologicalSorter(graph).prepare()
    except CycleError:
        has_cycle = True
    try:
        validate_pattern(graph_document(graph))
    except PatternInvalid as exc:
        cycles = [p.details["cycle"] for p in exc.problems if p.code is ErrorCode.CYCLE_DETECTED]
        assert cycles and has_cycle
        assert len({frozenset(c) for c in cycles}) == len(cycles)  # one per group of steps
        for cycle in cycles:
            assert cycle[0] == cycle[-1]
            assert len(set(cycle[:-1])) == len(cycle) - 1
            assert all(b in graph[a] for a, b in itertools.pairwise(cycle))
    else:
        assert not has_cycle


@pytest.mark.parametrize(
    "document",
    [doc({**FIND, "on_failure": "compensate"}), doc(FIND, on_failure="compensate")],
    ids=["step-level", "pattern-level"],
)
def test_validate__compensate_without_compensation__step_keeps_its_effect(document: dict[str, Any]) -> None:
    """Under `compensate`, only steps that declare a compensation are undone; others need none."""
    assert validate_pattern(document).steps[0].compensation is None
