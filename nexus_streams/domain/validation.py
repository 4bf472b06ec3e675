"""Validation of pattern documents at store time, and of execution inputs: every problem at once.

`validate_pattern` reports each problem with its path in the document and a stable code:
- `dependency_error`: `depends_on` names no step; a template names a step that is not upstream;
  an included pattern does not exist or is deprecated;
- `cycle_detected`: steps depend on each other in a cycle (`cycle` lists it), or patterns include
  each other;
- `unknown_step`: no step kind has this (type, action);
- `resource_limit`: too many steps, document too large, inclusion too deep;
- `validation_error`: everything else (shapes, parameters, templates, input schema, duplicate ids).
The raised `PatternInvalid` has the common code when all problems share one, else `validation_error`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from nexus_streams.domain import input_schema, templates
from nexus_streams.domain.errors import (
    ErrorCode,
    InputInvalid,
    Location,
    PatternInvalid,
    Problem,
    format_path,
)
from nexus_streams.domain.patterns import (
    INCLUDE_STEP,
    OnFailure,
    Pattern,
    PatternKind,
    Step,
    closure,
)
from nexus_streams.domain.steps import STEP_KINDS, StepKind, unknown_step_message

#: (pattern id, version or None for the latest) -> the stored pattern, or None if there is none
PatternResolver = Callable[[str, int | None], Pattern | None]

#: top-level fields a document may carry; the store sets the server-managed ones
AUTHOR_FIELDS = frozenset(
    {
        "id",
        "name",
        "description",
        "kind",
        "steps",
        "input_schema",
        "metadata",
        "execute_permission",
        "on_failure",
    }
)
#: accepted and ignored, so that `patterns show` output can be pushed back unchanged
SERVER_FIELDS = frozenset({"version", "deprecated"})
SERVER_METADATA = frozenset({"owner", "created_at", "created_by"})


@dataclass(frozen=True, slots=True)
class PatternLimits:
    max_steps: int = 100
    max_document_bytes: int = 64 * 1024
    #: levels of `pattern`/`execute` nesting below a pattern (0: no composite patterns)
    max_inclusion_depth: int = 4


@dataclass(slots=True)
class _RawStep:
    """What the graph checks need from a step, read leniently so one bad field hides nothing else."""

    index: int
    id: str | None
    type: str | None
    action: str | None
    parameters: Mapping[str, Any] | None
    depends_on: list[tuple[int, str]] = field(default_factory=list)
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"steps[{self.index}]"


def _problem(
    path: str, message: str, code: ErrorCode = ErrorCode.VALIDATION_ERROR, **details: Any
) -> Problem:
    return Problem(path, code, message, details)


def _pydantic_problems(exc: ValidationError, prefix: str) -> list[Problem]:
    problems = []
    for error in exc.errors():
        loc: Location = tuple(error["loc"])
        message = _json_words(error["msg"].removeprefix("Value error, "))
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        problems.append(_problem(format_path(loc, prefix), message))
    return problems


def _json_words(message: str) -> str:
    """Pydantic speaks Python; documents are JSON."""
    return message.replace("valid tuple", "list").replace("valid dictionary", "JSON object")


def _document_order(problem: Problem) -> list[tuple[int, str]]:
    """`steps[2].x` before `steps[10].x`: indices compare as numbers."""
    return [
        (0, part) if i % 2 == 0 else (int(part), "")
        for i, part in enumerate(re.split(r"(\d+)", problem.path))
    ]


def _document_bytes(document: Mapping[str, Any]) -> int:
    return len(json.dumps(document, separators=(",", ":"), ensure_ascii=False, default=str).encode())


def validate_pattern(
    document: Any,
    *,
    resolve_pattern: PatternResolver | None = None,
    limits: PatternLimits | None = None,
    document_bytes: int | None = None,
) -> Pattern:
    """The pattern a document describes, or `PatternInvalid` listing every problem.

    `resolve_pattern` finds the patterns that `pattern`/`execute` steps include (store.inclusions
    prefetches them); an include without a version is pinned to the version found. `document_bytes`
    is the size as received, when known (else measured as compact JSON).
    """
    limits = limits or PatternLimits()
    if not isinstance(document, Mapping):
        raise PatternInvalid.of([_problem("", "a pattern is a JSON object")])
    problems: list[Problem] = []
    pattern_id = document.get("id") if isinstance(document.get("id"), str) else None
    size = document_bytes if document_bytes is not None else _document_bytes(document)
    if size > limits.max_document_bytes:
        problems.append(
            _problem(
                "",
                f"the document is {size} bytes; the limit is {limits.max_document_bytes}",
                ErrorCode.RESOURCE_LIMIT,
                size_bytes=size,
                limit_bytes=limits.max_document_bytes,
            )
        )
    normalized = _normalize(document, problems)
    raw_steps = _raw_steps(document, problems, limits)
    schema = document.get("input_schema")
    schema_problems = input_schema.check_schema(schema) if schema is not None else []
    problems += schema_problems
    usable_schema = schema if schema is not None and not schema_problems else None

    ids = _check_ids(raw_steps, problems)
    upstream = closure(_check_dependencies(raw_steps, ids, problems))
    kinds_by_index = {s.index: _check_kind(s.type, s.action, s.path, problems) for s in raw_steps}
    kinds = {
        step_id: kind for step_id, index in ids.items() if (kind := kinds_by_index.get(index)) is not None
    }
    checks = _Checks(ids, kinds, usable_schema, problems)
    pattern_on_failure = document.get("on_failure") or OnFailure.ROLLBACK_ALL
    pinned: dict[int, int] = {}
    for step in raw_steps:
        kind = kinds_by_index[step.index]
        scope = upstream.get(step.id or "", frozenset())
        if kind is not None and step.parameters is not None:
            checks.parameters(kind, step.parameters, f"{step.path}.parameters", step.id, scope)
        _check_failure_handling(step, pattern_on_failure, scope, checks)
        if kind is not None and kind.key == INCLUDE_STEP and step.parameters is not None:
            version = _check_inclusion(pattern_id, step, resolve_pattern, limits, problems)
            if version is not None:
                pinned[step.index] = version
    includes = any(s.type == INCLUDE_STEP[0] and s.action == INCLUDE_STEP[1] for s in raw_steps)
    _check_kind_field(document.get("kind"), includes, problems)

    if problems:
        subject = f"invalid pattern {pattern_id!r}" if pattern_id else "invalid pattern"
        raise PatternInvalid.of(sorted(problems, key=_document_order), subject, pattern_id=pattern_id)
    if "kind" not in normalized:
        normalized["kind"] = PatternKind.COMPOSITE.value if includes else PatternKind.USER.value
    steps = [dict(s) for s in normalized["steps"]]
    for index, version in pinned.items():
        steps[index]["parameters"] = {**steps[index]["parameters"], "version": version}
    normalized["steps"] = steps
    return Pattern.model_validate(normalized)


def _normalize(document: Mapping[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """The author's fields, shape-checked by the model (steps one by one, so every one reports)."""
    for key in document:
        if key not in AUTHOR_FIELDS | SERVER_FIELDS:
            problems.append(_problem(format_path([key]), "unknown field"))
    normalized = {k: v for k, v in document.items() if k in AUTHOR_FIELDS}
    metadata = document.get("metadata")
    if isinstance(metadata, Mapping):
        normalized["metadata"] = {k: v for k, v in metadata.items() if k not in SERVER_METADATA}
    header = {**normalized, "steps": [{"type": "control", "action": "fail"}]}
    try:
        Pattern.model_validate(header)
    except ValidationError as exc:
        problems += _pydantic_problems(exc, "")
    steps = document.get("steps")
    if isinstance(steps, list):
        for i, raw in enumerate(steps):
            if isinstance(raw, Mapping):
                try:
                    Step.model_validate(raw)
                except ValidationError as exc:
                    # an id defaulted from an unknown action is reported as unknown_step instead
                    defaulted_id = "id" not in raw
                    problems += [
                        p
                        for p in _pydantic_problems(exc, f"steps[{i}]")
                        if not (defaulted_id and p.path == f"steps[{i}].id")
                    ]
    return normalized


def _raw_steps(document: Mapping[str, Any], problems: list[Problem], limits: PatternLimits) -> list[_RawStep]:
    steps = document.get("steps")
    if not isinstance(steps, list) or not steps:
        problems.append(_problem("steps", "a pattern has a list of at least one step"))
        return []
    if len(steps) > limits.max_steps:
        problems.append(
            _problem(
                "steps",
                f"the pattern has {len(steps)} steps; the limit is {limits.max_steps}",
                ErrorCode.RESOURCE_LIMIT,
                steps=len(steps),
                limit=limits.max_steps,
            )
        )
    found = []
    for i, raw in enumerate(steps):
        if not isinstance(raw, Mapping):
            problems.append(_problem(f"steps[{i}]", "a step is a JSON object"))
            continue
        type_ = raw.get("type") if isinstance(raw.get("type"), str) else None
        action = raw.get("action") if isinstance(raw.get("action"), str) else None
        step_id = raw.get("id") if raw.get("id") is not None else action
        parameters = raw.get("parameters", {})
        depends_on = raw.get("depends_on") or []
        found.append(
            _RawStep(
                i,
                step_id if isinstance(step_id, str) else None,
                type_,
                action,
                parameters if isinstance(parameters, Mapping) else None,
                [(j, d) for j, d in enumerate(depends_on) if isinstance(d, str)]
                if isinstance(depends_on, list)
                else [],
                raw,
            )
        )
    return found


def _check_ids(steps: list[_RawStep], problems: list[Problem]) -> dict[str, int]:
    """Step id -> index of the step that has it first."""
    ids: dict[str, int] = {}
    for step in steps:
        if step.id is None:
            continue
        if step.id in ids:
            field_name = "id" if "id" in step.raw else "action"
            hint = "" if "id" in step.raw else " (a step's id defaults to its action: give one an `id`)"
            problems.append(
                _problem(
                    f"{step.path}.{field_name}",
                    f"step id {step.id!r} is already used by steps[{ids[step.id]}]{hint}",
                )
            )
        else:
            ids[step.id] = step.index
    return ids


def _check_dependencies(
    steps: list[_RawStep], ids: Mapping[str, int], problems: list[Problem]
) -> dict[str, tuple[str, ...]]:
    """The dependency edges between known steps; reports unknown targets and cycles."""
    edges: dict[str, tuple[str, ...]] = {}
    where: dict[tuple[str, str], str] = {}
    for step in steps:
        if step.id is None or ids.get(step.id) != step.index:
            continue
        known: list[str] = []
        for j, dependency in step.depends_on:
            path = f"{step.path}.depends_on[{j}]"
            if dependency not in ids:
                problems.append(
                    _problem(
                        path,
                        f"step {step.id!r} depends on {dependency!r}, which is no step of this pattern "
                        f"(steps: {', '.join(ids)})",
                        ErrorCode.DEPENDENCY_ERROR,
                    )
                )
            elif dependency in known:
                problems.append(_problem(path, f"{dependency!r} is listed twice"))
            else:
                known.append(dependency)
                where.setdefault((step.id, dependency), path)
        edges[step.id] = tuple(known)
    for cycle in _cycles(edges):
        problems.append(
            _problem(
                where[(cycle[0], cycle[1])],
                "steps depend on each other in a cycle: " + " -> ".join(cycle),
                ErrorCode.CYCLE_DETECTED,
                cycle=cycle,
            )
        )
    return edges


def _cycles(edges: Mapping[str, tuple[str, ...]]) -> list[list[str]]:
    """One cycle per group of steps that depend on each other (a strongly connected component),
    starting at its first step in document order."""
    reach = closure(edges)
    cycles: list[list[str]] = []
    covered: set[str] = set()
    for node in edges:  # document order
        if node in covered or node not in reach[node]:
            continue
        component = {node} | {other for other in reach[node] if node in reach.get(other, ())}
        covered |= component
        cycles.append(_cycle_through(node, component, edges))
    return cycles


def _cycle_through(start: str, component: set[str], edges: Mapping[str, tuple[str, ...]]) -> list[str]:
    """A shortest cycle from `start` back to itself inside its strongly connected component."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in edges.get(node, ()):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if nxt in component and nxt not in parent:
                    parent[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")  # pragma: no cover - it is in a cyclic component


def _check_kind(type_: str | None, action: str | None, path: str, problems: list[Problem]) -> StepKind | None:
    if type_ is None or action is None:
        return None  # the shape check reports the missing field
    kind = STEP_KINDS.get((type_, action))
    if kind is None:
        problems.append(_problem(path, unknown_step_message(type_, action), ErrorCode.UNKNOWN_STEP))
    return kind


@dataclass(slots=True)
class _Checks:
    """Parameter and template checks, with what they need to know about the whole pattern."""

    #: step id -> index of the step with that id
    ids: Mapping[str, int]
    #: step id -> its kind, for known kinds
    kinds: Mapping[str, StepKind]
    #: the input schema when it is valid
    schema: Mapping[str, Any] | None
    problems: list[Problem]

    def parameters(
        self,
        kind: StepKind,
        parameters: Mapping[str, Any],
        path: str,
        step_id: str | None,
        upstream: frozenset[str],
    ) -> None:
        for loc, message in kind.check(parameters):
            self.problems.append(_problem(format_path(loc, path), message))
        found = templates.scan(parameters)
        for loc, message in found.errors:
            self.problems.append(_problem(format_path(loc, path), message))
        for loc, reference in found.references:
            self.reference(reference, format_path(loc, path), step_id, upstream)
        for name, input_field in kind.input_defaults.items():
            if (
                name not in parameters
                and self.schema is not None
                and input_schema.declares(self.schema, (input_field,))
            ):
                self.problems.append(
                    _problem(
                        format_path([name], path),
                        f"{name!r} is not given, so it comes from the input's {input_field!r}, "
                        "which the input schema does not declare",
                    )
                )
        if kind.key == INCLUDE_STEP:
            for name in ("pattern_id", "version"):
                if name in parameters and templates.has_templates(parameters[name]):
                    self.problems.append(
                        _problem(
                            format_path([name], path),
                            f"{name} must be written out: included patterns are checked when this "
                            "pattern is stored",
                        )
                    )

    def reference(
        self, reference: templates.Reference, path: str, step_id: str | None, upstream: frozenset[str]
    ) -> None:
        if reference.root == "input" and self.schema is not None:
            missing = input_schema.declares(self.schema, reference.path)
            if missing is not None:
                self.problems.append(
                    _problem(path, f"{reference} names {missing!r}, which the input schema does not declare")
                )
        if reference.root != "steps":
            return
        target = reference.step_id
        assert target is not None
        if target == step_id:
            self.problems.append(
                _problem(path, f"{reference}: a step cannot use its own output", ErrorCode.DEPENDENCY_ERROR)
            )
        elif target not in self.ids:
            self.problems.append(
                _problem(path, f"{reference} names no step of this pattern", ErrorCode.DEPENDENCY_ERROR)
            )
        elif target not in upstream:
            self.problems.append(
                _problem(
                    path,
                    f"{reference}: step {target!r} is not upstream of {step_id!r}; "
                    f"add {target!r} to depends_on so it runs first",
                    ErrorCode.DEPENDENCY_ERROR,
                )
            )
        elif (kind := self.kinds.get(target)) is not None and reference.output_path:
            name = reference.output_path[0]
            if name not in kind.output:
                self.problems.append(
                    _problem(path, f"{reference}: {kind.name} outputs {', '.join(kind.output)}; not {name!r}")
                )


def _check_failure_handling(
    step: _RawStep, pattern_on_failure: Any, upstream: frozenset[str], checks: _Checks
) -> None:
    problems = checks.problems
    on_failure = step.raw.get("on_failure") or pattern_on_failure
    compensation = step.raw.get("compensation")
    # under `compensate`, a step without a compensation keeps what it did (reads need none)
    if compensation is None or not isinstance(compensation, Mapping):
        return
    if on_failure != OnFailure.COMPENSATE:
        problems.append(
            _problem(
                f"{step.path}.compensation",
                "a compensation runs only with on_failure `compensate` (on the step or the pattern)",
            )
        )
    type_, action = compensation.get("type"), compensation.get("action")
    if not isinstance(type_, str) or not isinstance(action, str):
        return
    path = f"{step.path}.compensation"
    if (type_, action) == INCLUDE_STEP:
        problems.append(_problem(path, "a compensation cannot run a pattern"))
        return
    kind = _check_kind(type_, action, path, problems)
    parameters = compensation.get("parameters", {})
    if kind is not None and isinstance(parameters, Mapping):
        checks.parameters(kind, parameters, f"{path}.parameters", step.id, upstream)


def _check_inclusion(
    pattern_id: str | None,
    step: _RawStep,
    resolve: PatternResolver | None,
    limits: PatternLimits,
    problems: list[Problem],
) -> int | None:
    """Checks one `pattern`/`execute` step's inclusion graph; the version it pins."""
    assert step.parameters is not None
    included_id = step.parameters.get("pattern_id")
    version = step.parameters.get("version")
    if not isinstance(included_id, str) or templates.has_templates(included_id):
        return None
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        return None
    path = f"{step.path}.parameters.pattern_id"
    if limits.max_inclusion_depth < 1:
        problems.append(
            _problem(
                path, "composite patterns are disabled (inclusion depth limit 0)", ErrorCode.RESOURCE_LIMIT
            )
        )
        return None
    if included_id == pattern_id:
        problems.append(
            _problem(
                path,
                f"pattern {pattern_id!r} includes itself",
                ErrorCode.CYCLE_DETECTED,
                cycle=[pattern_id, pattern_id],
            )
        )
        return None
    if resolve is None:
        problems.append(
            _problem(path, "included patterns cannot be looked up here", ErrorCode.DEPENDENCY_ERROR)
        )
        return None
    included = resolve(included_id, version)
    if included is None:
        which = f"version {version} of pattern" if version is not None else "pattern"
        problems.append(_problem(path, f"{which} {included_id!r} does not exist", ErrorCode.DEPENDENCY_ERROR))
        return None
    if included.deprecated:
        problems.append(
            _problem(
                path, f"pattern {included_id!r} is deprecated; include another", ErrorCode.DEPENDENCY_ERROR
            )
        )
        return None
    chain = [pattern_id or "(this pattern)", included_id]
    problem = _walk_inclusions(included, chain, resolve, limits)
    if problem is not None:
        code, message, details = problem
        problems.append(_problem(path, message, code, **details))
        return None
    return included.version


def _walk_inclusions(
    pattern: Pattern, chain: list[str], resolve: PatternResolver, limits: PatternLimits
) -> tuple[ErrorCode, str, dict[str, Any]] | None:
    depth = len(chain) - 1
    if depth > limits.max_inclusion_depth:
        return (
            ErrorCode.RESOURCE_LIMIT,
            f"patterns nest {depth} deep ({' -> '.join(chain)}); the limit is {limits.max_inclusion_depth}",
            {"chain": chain, "limit": limits.max_inclusion_depth},
        )
    for inclusion in pattern.includes():
        if inclusion.pattern_id in chain:
            cycle = [*chain[chain.index(inclusion.pattern_id) :], inclusion.pattern_id]
            return (
                ErrorCode.CYCLE_DETECTED,
                "patterns include each other in a cycle: " + " -> ".join(cycle),
                {"cycle": cycle},
            )
        nested = resolve(inclusion.pattern_id, inclusion.version)
        if nested is None:
            return (
                ErrorCode.DEPENDENCY_ERROR,
                f"{chain[-1]!r} includes version {inclusion.version} of {inclusion.pattern_id!r}, "
                "which is no longer stored",
                {"chain": [*chain, inclusion.pattern_id]},
            )
        problem = _walk_inclusions(nested, [*chain, inclusion.pattern_id], resolve, limits)
        if problem is not None:
            return problem
    return None


def _check_kind_field(kind: Any, includes: bool, problems: list[Problem]) -> None:
    if kind == PatternKind.USER and includes:
        problems.append(_problem("kind", "a pattern with `pattern`/`execute` steps is `composite`"))
    elif kind == PatternKind.COMPOSITE and not includes:
        problems.append(_problem("kind", "a `composite` pattern has at least one `pattern`/`execute` step"))


def validate_input(pattern: Pattern, value: Any) -> None:
    """An execution input against the pattern's input schema; `InputInvalid` lists every problem."""
    if not isinstance(value, Mapping):
        raise InputInvalid.of(
            [_problem("input", "the input is a JSON object")], f"invalid input for {pattern.id!r}"
        )
    if pattern.input_schema is None:
        return
    problems = input_schema.validate_value(pattern.input_schema, value, "input")
    if problems:
        raise InputInvalid.of(problems, f"invalid input for pattern {pattern.id!r}")
