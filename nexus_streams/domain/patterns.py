"""The pattern model: a named, versioned DAG of steps, and its plan (dependency order).

The document shape is snake_case JSON (or YAML), as in DESIGN.md:
`{"id", "name", "description", "kind", "input_schema", "steps": [{"type", "action", "parameters",
"depends_on", "id", "retry", "timeout_ms", "optional", "on_failure", "compensation"}], ...}`.
A step's id defaults to its action, so the spec's `DependsOn: ["create"]` names a step by action.
Untrusted documents go through `validation.validate_pattern`; `Pattern.from_document` reads
documents this service stored itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from graphlib import TopologicalSorter
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nexus_streams.domain.errors import ErrorCode, NotFound, PatternDeprecated, ValidationFailed

PATTERN_ID_REGEX = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
STEP_ID_REGEX = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
PatternId = Annotated[str, Field(pattern=PATTERN_ID_REGEX, description="letters, digits, `_ . -`")]
StepId = Annotated[str, Field(pattern=STEP_ID_REGEX, description="letters, digits, `_ -`")]
MAX_STEP_TIMEOUT_MS = 3_600_000
MAX_ATTEMPTS = 10
#: the (type, action) of a step that runs another pattern
INCLUDE_STEP = ("pattern", "execute")


class PatternKind(StrEnum):
    #: shipped with the service; only admins store, change or delete them
    SYSTEM = "system"
    #: stored by a user; its owner or an admin may change or delete it
    USER = "user"
    #: a user pattern with `pattern`/`execute` steps that run other patterns
    COMPOSITE = "composite"


class OnFailure(StrEnum):
    """What a failed step (after its retries, unless `optional`) does to the execution."""

    #: discard every change the execution staged; nothing is committed
    ROLLBACK_ALL = "rollback_all"
    #: commit what the steps that completed staged; drop the failed step's branch
    KEEP_COMPLETED = "keep_completed"
    #: run the compensations of the completed steps (latest first), then commit what completed
    #: plus what the compensations staged; steps without a compensation keep their effect
    COMPENSATE = "compensate"


#: errors that retrying cannot fix: the request itself is wrong
DEFAULT_NON_RETRYABLE: tuple[ErrorCode, ...] = (
    ErrorCode.VALIDATION_ERROR,
    ErrorCode.UNKNOWN_ACTION,
    ErrorCode.UNKNOWN_RELATIONSHIP_TYPE,
    ErrorCode.UNKNOWN_STEP,
    ErrorCode.INVALID_ENTITY_ID,
    ErrorCode.SELF_RELATIONSHIP,
    ErrorCode.METADATA_TOO_LARGE,
    ErrorCode.SCHEMA_VIOLATION,
    ErrorCode.DEPENDENCY_ERROR,
    ErrorCode.FORBIDDEN,
    ErrorCode.PATTERN_DEPRECATED,
)


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RetryPolicy(Model):
    """Exponential backoff with a cap and jitter; one attempt (no retry) unless asked."""

    max_attempts: int = Field(default=1, ge=1, le=MAX_ATTEMPTS, description="1 = no retry")
    initial_backoff_ms: int = Field(default=100, ge=0, le=60_000)
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0)
    max_backoff_ms: int = Field(default=10_000, ge=0, le=300_000)
    jitter: float = Field(
        default=0.2, ge=0.0, le=1.0, description="each delay varies by up to this fraction either way"
    )
    non_retryable: tuple[ErrorCode, ...] = Field(
        default=DEFAULT_NON_RETRYABLE, description="error codes that fail the step at once"
    )

    @model_validator(mode="after")
    def _cap_not_below_start(self) -> RetryPolicy:
        if self.max_backoff_ms < self.initial_backoff_ms:
            raise ValueError("max_backoff_ms must be at least initial_backoff_ms")
        return self

    def should_retry(self, code: str, attempt: int) -> bool:
        """After attempt number `attempt` (1-based) failed with `code`."""
        return attempt < self.max_attempts and code not in {c.value for c in self.non_retryable}

    def backoff_ms(self, attempt: int, rand: float) -> float:
        """The wait after attempt `attempt` failed; `rand` is uniform in [0, 1)."""
        base = min(float(self.max_backoff_ms), self.initial_backoff_ms * self.multiplier ** (attempt - 1))
        return max(0.0, min(float(self.max_backoff_ms), base * (1 + self.jitter * (2 * rand - 1))))


class Compensation(Model):
    """A step-like action run when its step fails with `on_failure: compensate`."""

    type: str
    action: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class Step(Model):
    id: StepId = Field(description="defaults to `action`; `depends_on` and templates name steps by id")
    type: str
    action: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout_ms: int | None = Field(default=None, ge=1, le=MAX_STEP_TIMEOUT_MS)
    optional: bool = Field(default=False, description="may fail without failing the execution")
    on_failure: OnFailure | None = Field(default=None, description="default: the pattern's `on_failure`")
    compensation: Compensation | None = None

    @model_validator(mode="before")
    @classmethod
    def _id_defaults_to_action(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("id") is None and isinstance(data.get("action"), str):
            return {**data, "id": data["action"]}
        return data

    @property
    def kind(self) -> tuple[str, str]:
        return (self.type, self.action)


class PatternMetadata(Model):
    owner: str | None = Field(default=None, description="who first stored the pattern (set by the store)")
    tags: tuple[str, ...] = ()
    created_at: datetime | None = Field(default=None, description="when this version was stored")
    created_by: str | None = Field(default=None, description="who stored this version")


@dataclass(frozen=True, slots=True)
class Inclusion:
    """A `pattern`/`execute` step: which pattern (and pinned version) it runs."""

    step_id: str
    pattern_id: str
    version: int | None


class Pattern(Model):
    id: PatternId
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=4000)
    kind: PatternKind = PatternKind.USER
    version: int = Field(default=0, ge=0, description="assigned by the store; 0 until stored")
    steps: tuple[Step, ...] = Field(min_length=1)
    input_schema: dict[str, Any] | None = Field(default=None, description="a JSON Schema subset")
    metadata: PatternMetadata = Field(default_factory=PatternMetadata)
    execute_permission: tuple[str, ...] | None = Field(
        default=None, description="principals that may execute (besides owner and admins); none: anyone"
    )
    deprecated: bool = Field(default=False, description="no new executions")
    on_failure: OnFailure = OnFailure.ROLLBACK_ALL

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise NotFound(f"pattern {self.id!r} has no step {step_id!r}", pattern_id=self.id, step=step_id)

    def on_failure_of(self, step: Step) -> OnFailure:
        return step.on_failure or self.on_failure

    def includes(self) -> list[Inclusion]:
        found = []
        for step in self.steps:
            if step.kind == INCLUDE_STEP:
                version = step.parameters.get("version")
                found.append(
                    Inclusion(
                        step.id,
                        str(step.parameters.get("pattern_id")),
                        version if isinstance(version, int) else None,
                    )
                )
        return found

    def definition(self) -> dict[str, Any]:
        """What the author controls: two patterns with equal definitions are the same version."""
        document = self.model_dump(mode="json", exclude={"version", "deprecated", "metadata"})
        document["tags"] = list(self.metadata.tags)
        return document

    def digest(self) -> str:
        canonical = json.dumps(self.definition(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_document(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Pattern:
        """A document this service stored (already validated)."""
        return cls.model_validate(document)

    @classmethod
    def from_json(cls, text: str | bytes) -> Pattern:
        return cls.model_validate_json(text)

    def ensure_executable(self) -> None:
        if self.deprecated:
            raise PatternDeprecated(
                f"pattern {self.id!r} is deprecated and takes no new executions",
                pattern_id=self.id,
                version=self.version,
            )


def load_document(text: str | bytes) -> dict[str, Any]:
    """A pattern document from JSON or YAML text (as `patterns push FILE` reads it)."""
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError as exc:
            raise ValidationFailed(f"a pattern document must be UTF-8: {exc}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValidationFailed(f"a pattern document must be JSON or YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ValidationFailed(
            f"a pattern document must be a JSON/YAML object, not {type(document).__name__}"
        )
    return document


# -- plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """The dependency structure of a valid pattern, computed once and reused by its executions."""

    #: steps in levels: every step of a level depends only on steps of earlier levels;
    #: within a level, document order
    levels: tuple[tuple[str, ...], ...]
    #: each step's transitive dependencies
    upstream: Mapping[str, frozenset[str]]
    #: each step's transitive dependents (the branch that a failure cuts off)
    downstream: Mapping[str, frozenset[str]]

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(step for level in self.levels for step in level)


def execution_order(pattern: Pattern) -> list[tuple[str, ...]]:
    """Steps in dependency levels (a topological order, document order within a level)."""
    position = {step.id: i for i, step in enumerate(pattern.steps)}
    sorter: TopologicalSorter[str] = TopologicalSorter({s.id: s.depends_on for s in pattern.steps})
    sorter.prepare()  # raises graphlib.CycleError; validated patterns have none
    levels = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        levels.append(tuple(ready))
        sorter.done(*ready)
    return levels


def closure(edges: Mapping[str, tuple[str, ...] | frozenset[str]]) -> dict[str, frozenset[str]]:
    """For each node, every node reachable along `edges` (not itself unless on a cycle)."""
    reach: dict[str, frozenset[str]] = {}
    for start in edges:
        seen: set[str] = set()
        stack = list(edges.get(start, ()))
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(edges.get(node, ()))
        reach[start] = frozenset(seen)
    return reach


def plan(pattern: Pattern) -> Plan:
    upstream = closure({step.id: step.depends_on for step in pattern.steps})
    downstream = {
        step.id: frozenset(s for s, ups in upstream.items() if step.id in ups) for step in pattern.steps
    }
    return Plan(tuple(execution_order(pattern)), upstream, downstream)
