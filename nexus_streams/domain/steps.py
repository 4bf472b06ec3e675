"""The step kinds a pattern may use, keyed by (type, action): parameter schema, output, defaults.

Relationship and graph parameters have the same names, defaults and limits as the commands and
queries on the wire (messages.py; a test keeps them equal), without `action`, `request_id`,
`principal` and `min_offset`. Where a parameter is left out and `input_defaults` names it, it comes
from the execution input: the spec's examples leave `source` and `target` out and take them from the
input's `source` and `target`.

Kinds besides the spec's:
- `graph`/`get` and `graph`/`neighbors`: read one relationship or an entity's relationships
  (e.g. to check something exists before changing it);
- `control`/`assert`: fail the execution unless a value meets a condition
  (`{"value": "{{steps.neighbors.output.count}}", "condition": "equals", "expected": 0}`);
- `control`/`fail`: fail with a chosen code, optionally only for the first `times` attempts:
  exercises rollback, compensation and retry paths on purpose (tests, rehearsals).
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from nexus_streams.domain import templates
from nexus_streams.domain.errors import (
    ErrorCode,
    Location,
    NexusError,
    StepParametersInvalid,
    UnknownStep,
    format_path,
)
from nexus_streams.domain.index import Direction
from nexus_streams.domain.patterns import INCLUDE_STEP, PatternId
from nexus_streams.domain.relationships import RelationType, check_id, check_metadata

#: event types the service publishes itself; a pattern may not publish them
RESERVED_EVENT_TYPES = frozenset(
    {
        "relationship_created",
        "relationship_updated",
        "relationship_deleted",
        "relationship_expired",
        "schema_changed",
        "pattern_stored",
        "pattern_deleted",
        "pattern_deprecated",
        "execution_started",
        "step_completed",
        "step_failed",
        "step_retried",
        "pattern_executed",
        "execution_failed",
        "error",
    }
)
EVENT_TYPE_REGEX = r"^[a-z][a-z0-9_.]{0,63}$"


def _entity_id(value: str) -> str:
    try:
        check_id(value, "id")
    except NexusError as exc:
        raise ValueError(exc.message.removeprefix("id ")) from None
    return value


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    try:
        check_metadata(value)
    except NexusError as exc:
        raise ValueError(exc.message) from None
    return value


def _event_type(value: str) -> str:
    if value in RESERVED_EVENT_TYPES:
        raise ValueError(f"{value!r} is an event type the service publishes itself; choose another")
    return value


EntityId = Annotated[str, AfterValidator(_entity_id)]
Metadata = Annotated[dict[str, Any], AfterValidator(_metadata)]
Types = list[RelationType] | None
EventType = Annotated[str, Field(pattern=EVENT_TYPE_REGEX), AfterValidator(_event_type)]


class Parameters(BaseModel):
    """Base of every step kind's parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# -- relationship ------------------------------------------------------------------------------


class CreateParameters(Parameters):
    type: RelationType
    source: EntityId
    target: EntityId
    metadata: Metadata = Field(default_factory=dict)
    expires_at: datetime | None = None


class UpdateParameters(Parameters):
    type: RelationType
    source: EntityId
    target: EntityId
    metadata: Metadata
    expected_version: int | None = Field(default=None, ge=1)
    expires_at: datetime | None = None


class DeleteParameters(Parameters):
    type: RelationType
    source: EntityId
    target: EntityId


class DeleteEntityParameters(Parameters):
    entity: EntityId


# -- graph ---------------------------------------------------------------------------------------


class GetParameters(Parameters):
    type: RelationType
    source: EntityId
    target: EntityId


class FindPathParameters(Parameters):
    source: EntityId
    target: EntityId
    max_depth: int = Field(default=3, ge=1, le=10)
    types: Types = None
    direction: Direction = Direction.BOTH


class TraverseParameters(Parameters):
    start: EntityId
    max_depth: int = Field(default=2, ge=1, le=10)
    types: Types = None
    direction: Direction = Direction.BOTH
    limit: int = Field(default=1000, ge=1, le=10_000)


class NeighborsParameters(Parameters):
    entity: EntityId
    types: Types = None
    direction: Direction = Direction.BOTH
    limit: int = Field(default=1000, ge=1, le=10_000)


class DetectCyclesParameters(Parameters):
    entity: EntityId | None = None
    types: Types = None
    max_cycles: int = Field(default=10, ge=1, le=100)


class ResolveDependenciesParameters(Parameters):
    entity: EntityId
    types: Types = None


# -- event, pattern, control -------------------------------------------------------------------


class PublishParameters(Parameters):
    event_type: EventType
    data: dict[str, Any] = Field(default_factory=dict, description="the event's `data`")


class ExecuteParameters(Parameters):
    pattern_id: PatternId
    version: int | None = Field(default=None, ge=1, description="pinned when the pattern is stored")
    input: dict[str, Any] | None = Field(
        default=None, description="the included pattern's input; none: this execution's input"
    )


class Condition(StrEnum):
    EQUALS = "equals"
    NOT_EQUALS = "not_equals"
    #: `value` is one of `expected` (a list)
    IN = "in"
    NOT_IN = "not_in"
    #: null, "", [] or {}
    EMPTY = "empty"
    NOT_EMPTY = "not_empty"


class AssertParameters(Parameters):
    value: Any = Field(description="usually a template, e.g. `{{steps.neighbors.output.count}}`")
    condition: Condition
    expected: Any = None
    code: ErrorCode = Field(default=ErrorCode.EXECUTION_ERROR, description="the error code when it fails")
    message: str | None = None

    @model_validator(mode="after")
    def _expected_fits(self) -> AssertParameters:
        needs_list = self.condition in (Condition.IN, Condition.NOT_IN)
        if needs_list and not isinstance(self.expected, list) and not templates.has_templates(self.expected):
            raise ValueError(f"condition {self.condition.value!r} needs `expected` to be a list")
        return self

    def holds(self) -> bool:
        value, expected = self.value, self.expected
        empty = value is None or value in ("", [], {})
        match self.condition:
            case Condition.EQUALS:
                return bool(value == expected)
            case Condition.NOT_EQUALS:
                return bool(value != expected)
            case Condition.IN:
                return value in expected
            case Condition.NOT_IN:
                return value not in expected
            case Condition.EMPTY:
                return empty
        return not empty


class FailParameters(Parameters):
    code: ErrorCode = ErrorCode.EXECUTION_ERROR
    message: str = "failed by a control/fail step"
    times: int | None = Field(
        default=None, ge=1, description="fail only the first `times` attempts, then succeed; none: always"
    )


# -- the registry --------------------------------------------------------------------------------


class Category(StrEnum):
    #: stages graph changes (part of the execution's transaction)
    WRITE = "write"
    #: reads the graph as the execution sees it (its own staged changes included)
    READ = "read"
    #: publishes an event when the execution commits
    EVENT = "event"
    #: runs another pattern inside the same transaction
    PATTERN = "pattern"
    #: decides without touching the graph
    CONTROL = "control"


@dataclass(frozen=True, slots=True)
class OutputField:
    type: str
    description: str


_MISSING_FROM_INPUT = "give it in the step's parameters or as {field!r} in the execution input"


@dataclass(frozen=True, slots=True)
class StepKind:
    type: str
    action: str
    parameters: builtins.type[Parameters]
    output: Mapping[str, OutputField]
    description: str
    category: Category
    #: parameter -> input field it comes from when the step leaves it out
    input_defaults: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.type, self.action)

    @property
    def name(self) -> str:
        return f"{self.type}/{self.action}"

    def check(self, parameters: Mapping[str, Any]) -> list[tuple[Location, str]]:
        """Problems of parameters as stored, before an execution: (where, what).

        A value with templates is only known at run time, so its type is not checked here;
        a parameter that defaults from the input counts as given.
        """
        found = templates.scan(parameters)
        unknown_yet: set[Location] = found.locations
        candidate = dict(parameters)
        for name, input_field in self.input_defaults.items():
            if name not in candidate:
                candidate[name] = f"{{{{input.{input_field}}}}}"
                unknown_yet.add((name,))
        try:
            self.parameters.model_validate(candidate)
        except ValidationError as exc:
            return [
                (tuple(error["loc"]), _message(error["msg"]))
                for error in exc.errors()
                if not any(tuple(error["loc"])[: len(where)] == where for where in unknown_yet)
            ]
        return []

    def bind(self, parameters: Mapping[str, Any], scope: templates.Scope) -> Parameters:
        """The parameters of one run: defaults from the input, templates resolved, validated.

        Raises UnresolvedReference or StepParametersInvalid (both `validation_error`)."""
        values = dict(parameters)
        for name, input_field in self.input_defaults.items():
            if name not in values and input_field in scope.input:
                values[name] = scope.input[input_field]
        resolved = templates.resolve(values, scope)
        try:
            return self.parameters.model_validate(resolved)
        except ValidationError as exc:
            errors = []
            for error in exc.errors():
                loc = tuple(error["loc"])
                message = _message(error["msg"])
                if error["type"] == "missing" and len(loc) == 1 and loc[0] in self.input_defaults:
                    message += ": " + _MISSING_FROM_INPUT.format(field=self.input_defaults[str(loc[0])])
                errors.append({"field": format_path(loc), "message": message})
            listing = "; ".join(f"{e['field'] or '(parameters)'}: {e['message']}" for e in errors)
            raise StepParametersInvalid(
                f"invalid parameters for {self.name}: {listing}", errors=errors
            ) from None

    def describe(self) -> dict[str, Any]:
        """For docs and `patterns kinds`: the parameter JSON Schema, the output, the input defaults."""
        return {
            "type": self.type,
            "action": self.action,
            "category": self.category.value,
            "description": self.description,
            "parameters": self.parameters.model_json_schema(),
            "input_defaults": dict(self.input_defaults),
            "output": {
                name: {"type": f.type, "description": f.description} for name, f in self.output.items()
            },
        }


def _message(msg: str) -> str:
    text = re.sub(r"^(Value error|Assertion failed), ", "", msg)
    return text.replace("valid tuple", "list").replace("valid dictionary", "JSON object")


def _out(**fields: tuple[str, str]) -> Mapping[str, OutputField]:
    return MappingProxyType({name: OutputField(*spec) for name, spec in fields.items()})


_RELATIONSHIP = ("object", "the relationship: namespace, source, type, target, metadata, version, timestamps")
_ENDS = MappingProxyType({"source": "source", "target": "target"})
_FROM_SOURCE_AS_ENTITY = MappingProxyType({"entity": "source"})

_KINDS = (
    StepKind(
        "relationship",
        "create",
        CreateParameters,
        _out(relationship=_RELATIONSHIP),
        "create a relationship (staged until the execution commits)",
        Category.WRITE,
        _ENDS,
    ),
    StepKind(
        "relationship",
        "update",
        UpdateParameters,
        _out(relationship=_RELATIONSHIP),
        "replace a relationship's metadata",
        Category.WRITE,
        _ENDS,
    ),
    StepKind(
        "relationship",
        "delete",
        DeleteParameters,
        _out(relationship=_RELATIONSHIP),
        "delete a relationship",
        Category.WRITE,
        _ENDS,
    ),
    StepKind(
        "relationship",
        "delete_entity",
        DeleteEntityParameters,
        _out(entity=("string", "the entity"), deleted=("integer", "relationships removed")),
        "delete every relationship of an entity (never defaulted from the input: name it)",
        Category.WRITE,
    ),
    StepKind(
        "graph",
        "get",
        GetParameters,
        _out(relationship=_RELATIONSHIP),
        "read one relationship; not_found if it does not exist",
        Category.READ,
        _ENDS,
    ),
    StepKind(
        "graph",
        "find_path",
        FindPathParameters,
        _out(
            found=("boolean", "always true: no path fails the step with path_not_found"),
            length=("integer", "relationships on the path"),
            path=("array", "entities from source to target"),
            relationships=("array", "the relationships on the path, with metadata"),
        ),
        "shortest path within max_depth; path_not_found otherwise",
        Category.READ,
        _ENDS,
    ),
    StepKind(
        "graph",
        "traverse",
        TraverseParameters,
        _out(
            start=("string", "the start entity"),
            count=("integer", "entities reached"),
            entities=("array", "[{id, depth}] in breadth-first order"),
            relationships=("array", "the relationships followed"),
        ),
        "every entity within max_depth of start",
        Category.READ,
        MappingProxyType({"start": "source"}),
    ),
    StepKind(
        "graph",
        "neighbors",
        NeighborsParameters,
        _out(
            entity=("string", "the entity"),
            count=("integer", "relationships found"),
            neighbors=("array", "[{entity, relationship}]"),
        ),
        "the relationships of one entity",
        Category.READ,
        _FROM_SOURCE_AS_ENTITY,
    ),
    StepKind(
        "graph",
        "detect_cycles",
        DetectCyclesParameters,
        _out(
            scope=("string", "entity or namespace"),
            entity=("string", "the entity, when given"),
            count=("integer", "cycles found"),
            cycles=("array", "each cycle as [a, b, ..., a]"),
        ),
        "directed cycles reachable from entity, or in the whole namespace (entity is never defaulted)",
        Category.READ,
    ),
    StepKind(
        "graph",
        "resolve_dependencies",
        ResolveDependenciesParameters,
        _out(
            entity=("string", "the entity"),
            count=("integer", "entities in the order"),
            order=("array", "dependencies first, entity last"),
        ),
        "the dependency closure of entity; cycle_detected if it has a cycle",
        Category.READ,
        _FROM_SOURCE_AS_ENTITY,
    ),
    StepKind(
        "event",
        "publish",
        PublishParameters,
        _out(event_type=("string", "the event's type"), data=("object", "the event's data")),
        "publish an event of event_type (only when the execution commits)",
        Category.EVENT,
    ),
    StepKind(
        "pattern",
        "execute",
        ExecuteParameters,
        _out(
            pattern_id=("string", "the included pattern"),
            version=("integer", "the version that ran"),
            steps=("object", "the included pattern's step outputs, by step id"),
        ),
        "run another pattern inside this execution's transaction (composite patterns)",
        Category.PATTERN,
    ),
    StepKind(
        "control",
        "assert",
        AssertParameters,
        _out(value=("any", "the value that met the condition")),
        "fail with `code` unless value meets the condition",
        Category.CONTROL,
    ),
    StepKind(
        "control",
        "fail",
        FailParameters,
        _out(attempt=("integer", "the attempt that succeeded (with `times`)")),
        "fail with `code` (for the first `times` attempts, or always)",
        Category.CONTROL,
    ),
)

STEP_KINDS: Mapping[tuple[str, str], StepKind] = MappingProxyType({kind.key: kind for kind in _KINDS})
assert INCLUDE_STEP in STEP_KINDS


def step_kind(type_: str, action: str) -> StepKind:
    try:
        return STEP_KINDS[(type_, action)]
    except KeyError:
        raise UnknownStep(unknown_step_message(type_, action), type=type_, action=action) from None


def unknown_step_message(type_: str, action: str) -> str:
    actions = sorted(a for t, a in STEP_KINDS if t == type_)
    if actions:
        return f"{type_!r} steps have no action {action!r}; use one of: {', '.join(actions)}"
    types = sorted({t for t, _ in STEP_KINDS})
    return f"unknown step type {type_!r}; use one of: {', '.join(types)}"
