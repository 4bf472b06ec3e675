"""Templates in step parameters: `{{input.user_id}}`, `{{steps.find_path.output.path}}`,
`{{context.namespace}}`.

A string that is exactly one template takes the referenced value with its JSON type (a list stays a
list); a template inside a longer string is replaced by the value as text: strings as they are,
anything else as compact JSON (`"user:{{input.n}}"` with n=5 gives `"user:5"`). Templates are read
in values only, never in object keys, and there is no escape for a literal `{{`.

References:
- `input` or `input.<field>...`: the execution input;
- `steps.<step id>.output...`: the output of an upstream step (one the step depends on, directly or
  transitively);
- `context.<field>`: facts of the execution (see `CONTEXT_FIELDS`).
Path segments are `.name` or `[index]` (`.0` also indexes a list).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from nexus_streams.domain.errors import (
    Location,
    Segment,
    TemplateSyntaxError,
    UnresolvedReference,
    format_path,
)

ROOTS = ("input", "steps", "context")
#: what `{{context.<field>}}` may name; the executor provides them
CONTEXT_FIELDS = frozenset(
    {"namespace", "principal", "request_id", "execution_id", "pattern_id", "pattern_version"}
)
OPEN, CLOSE = "{{", "}}"
_EXPRESSION = re.compile(r"(?P<root>[A-Za-z_][A-Za-z0-9_]*)(?P<rest>(?:\.[A-Za-z0-9_-]+|\[[0-9]+\])*)")
_SEGMENT = re.compile(r"\.([A-Za-z0-9_-]+)|\[([0-9]+)\]")
GRAMMAR = "`input.<field>`, `steps.<step id>.output[.<field>...]` or `context.<field>`"


@dataclass(frozen=True, slots=True)
class Reference:
    """What one template names: a root (`input`, `steps`, `context`) and a path below it."""

    root: str
    path: tuple[Segment, ...]
    #: the expression as written between the braces, trimmed
    text: str

    @property
    def step_id(self) -> str | None:
        return str(self.path[0]) if self.root == "steps" else None

    @property
    def output_path(self) -> tuple[Segment, ...]:
        """For a step reference, the path below `output`."""
        return self.path[2:] if self.root == "steps" else ()

    def __str__(self) -> str:
        return f"{OPEN}{self.text}{CLOSE}"


@dataclass(frozen=True, slots=True)
class Template:
    """A string value with at least one template: literal text and references in order."""

    parts: tuple[str | Reference, ...]

    @property
    def whole(self) -> bool:
        """The string is exactly one template: it resolves to the value with its JSON type."""
        return len(self.parts) == 1 and isinstance(self.parts[0], Reference)

    @property
    def references(self) -> tuple[Reference, ...]:
        return tuple(p for p in self.parts if isinstance(p, Reference))


def parse_reference(expression: str) -> Reference:
    text = expression.strip()
    match = _EXPRESSION.fullmatch(text)
    if match is None:
        raise TemplateSyntaxError(f"{OPEN}{expression}{CLOSE} is not a template: write {GRAMMAR}")
    root = match["root"]
    path: tuple[Segment, ...] = tuple(
        int(index) if index else name for name, index in _SEGMENT.findall(match["rest"])
    )
    if root not in ROOTS:
        raise TemplateSyntaxError(f"{OPEN}{text}{CLOSE}: unknown root {root!r}; write {GRAMMAR}")
    if root == "steps" and (len(path) < 2 or not isinstance(path[0], str) or path[1] != "output"):
        raise TemplateSyntaxError(
            f"{OPEN}{text}{CLOSE}: a step reference is `steps.<step id>.output[.<field>...]`"
        )
    if root == "context" and (len(path) != 1 or path[0] not in CONTEXT_FIELDS):
        allowed = ", ".join(sorted(CONTEXT_FIELDS))
        raise TemplateSyntaxError(f"{OPEN}{text}{CLOSE}: context has exactly these fields: {allowed}")
    return Reference(root, path, text)


def parse(value: str) -> Template | None:
    """The templates in one string, or None when it has none."""
    if OPEN not in value:
        return None
    parts: list[str | Reference] = []
    position = 0
    while (start := value.find(OPEN, position)) >= 0:
        end = value.find(CLOSE, start + len(OPEN))
        if end < 0:
            raise TemplateSyntaxError(f"unclosed {OPEN!r} at character {start} of {value!r}")
        if start > position:
            parts.append(value[position:start])
        parts.append(parse_reference(value[start + len(OPEN) : end]))
        position = end + len(CLOSE)
    if position < len(value):
        parts.append(value[position:])
    return Template(tuple(parts))


def _walk(tree: Any, location: Location = ()) -> Iterator[tuple[Location, str]]:
    """Every string value in a JSON tree, with its location."""
    if isinstance(tree, str):
        yield location, tree
    elif isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _walk(value, (*location, str(key)))
    elif isinstance(tree, list | tuple):
        for index, value in enumerate(tree):
            yield from _walk(value, (*location, index))


@dataclass(slots=True)
class Scan:
    """The templates found in a parameter tree, by location."""

    #: (where, template) for every string value that has templates
    templates: list[tuple[Location, Template]] = field(default_factory=list)
    #: (where, what is wrong) for every string value whose templates do not parse
    errors: list[tuple[Location, str]] = field(default_factory=list)

    @property
    def references(self) -> list[tuple[Location, Reference]]:
        return [(where, ref) for where, template in self.templates for ref in template.references]

    @property
    def locations(self) -> set[Location]:
        """Where a value depends on templates (also where one failed to parse)."""
        return {where for where, _ in self.templates} | {where for where, _ in self.errors}


def scan(tree: Any) -> Scan:
    found = Scan()
    for where, text in _walk(tree):
        try:
            template = parse(text)
        except TemplateSyntaxError as exc:
            found.errors.append((where, exc.message))
            continue
        if template is not None:
            found.templates.append((where, template))
    return found


def has_templates(tree: Any) -> bool:
    return any(OPEN in text for _, text in _walk(tree))


@dataclass(frozen=True, slots=True)
class Scope:
    """What templates resolve against during an execution."""

    input: Mapping[str, Any]
    #: outputs of the steps that completed, by step id
    outputs: Mapping[str, Any] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)


def lookup(reference: Reference, scope: Scope) -> Any:
    if reference.root == "input":
        value: Any = scope.input
        below: tuple[Segment, ...] = reference.path
        name = "the execution input"
    elif reference.root == "steps":
        step_id = reference.step_id
        assert step_id is not None
        if step_id not in scope.outputs:
            raise UnresolvedReference(
                f"{reference}: step {step_id!r} has no output (it has not completed)",
                reference=reference.text,
            )
        value, below, name = scope.outputs[step_id], reference.output_path, f"the output of step {step_id!r}"
    else:
        value, below, name = scope.context, reference.path, "the execution context"
    walked: list[Segment] = []
    for segment in below:
        index = _index(segment, len(value)) if isinstance(value, list) else None
        if isinstance(value, Mapping) and str(segment) in value:
            value = value[str(segment)]
        elif index is not None:
            value = value[index]
        else:
            at = format_path(walked) or "top level"
            raise UnresolvedReference(
                f"{reference}: {name} has no {segment!r} at {at}",
                reference=reference.text,
                missing=format_path([*walked, segment]),
            )
        walked.append(segment)
    return value


def _index(segment: Segment, length: int) -> int | None:
    if isinstance(segment, int) or segment.isdigit():
        index = int(segment)
        return index if index < length else None
    return None


def render(value: Any) -> str:
    """How a value reads inside a longer string."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def resolve_string(text: str, scope: Scope) -> Any:
    template = parse(text)
    if template is None:
        return text
    if template.whole:
        reference = template.parts[0]
        assert isinstance(reference, Reference)
        return lookup(reference, scope)
    return "".join(p if isinstance(p, str) else render(lookup(p, scope)) for p in template.parts)


def resolve(tree: Any, scope: Scope, location: Location = ()) -> Any:
    """A copy of a JSON tree with every template replaced by its value."""
    if isinstance(tree, str):
        try:
            return resolve_string(tree, scope)
        except (UnresolvedReference, TemplateSyntaxError) as exc:
            where = format_path(location)
            if where:
                exc.message = f"{where}: {exc.message}"
                exc.args = (exc.message,)
                exc.details = {"field": where, **exc.details}
            raise
    if isinstance(tree, Mapping):
        return {key: resolve(value, scope, (*location, str(key))) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return [resolve(value, scope, (*location, i)) for i, value in enumerate(tree)]
    return tree
