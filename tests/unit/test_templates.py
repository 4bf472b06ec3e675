"""Templates in step parameters: parsing, scanning a parameter tree, resolving with types kept."""

from __future__ import annotations

from typing import Any

import pytest

from nexus_streams.domain.errors import ErrorCode, TemplateSyntaxError, UnresolvedReference
from nexus_streams.domain.templates import (
    Reference,
    Scope,
    has_templates,
    parse,
    parse_reference,
    render,
    resolve,
    scan,
)

# --------------------------------------------------------------------------- parse_reference

REFERENCES = [
    # expression -> (root, path)
    ("input", ("input", ())),
    ("input.user_id", ("input", ("user_id",))),
    ("  input.user_id  ", ("input", ("user_id",))),
    ("input.a.b.c", ("input", ("a", "b", "c"))),
    ("input.items[0]", ("input", ("items", 0))),
    ("input.items.0", ("input", ("items", "0"))),
    ("input.items[2].id", ("input", ("items", 2, "id"))),
    ("input.with-dash_and_1", ("input", ("with-dash_and_1",))),
    ("steps.find_path.output", ("steps", ("find_path", "output"))),
    ("steps.find_path.output.path", ("steps", ("find_path", "output", "path"))),
    ("steps.find_path.output.path[0]", ("steps", ("find_path", "output", "path", 0))),
    (
        "steps.my-step.output.relationship.metadata",
        ("steps", ("my-step", "output", "relationship", "metadata")),
    ),
    ("context.namespace", ("context", ("namespace",))),
    ("context.execution_id", ("context", ("execution_id",))),
]


@pytest.mark.parametrize(("expression", "expected"), REFERENCES)
def test_parse_reference__valid(expression: str, expected: tuple[str, tuple[Any, ...]]) -> None:
    reference = parse_reference(expression)
    assert (reference.root, reference.path) == expected
    assert reference.text == expression.strip()


BAD_REFERENCES = [
    # expression, a fragment of the message
    ("", "is not a template"),
    ("   ", "is not a template"),
    ("input.", "is not a template"),
    ("input..a", "is not a template"),
    ("input.a b", "is not a template"),
    ("input[x]", "is not a template"),
    ("1input", "is not a template"),
    ("inputs.user", "unknown root 'inputs'"),
    ("env.HOME", "unknown root 'env'"),
    ("steps", "steps.<step id>.output"),
    ("steps.find_path", "steps.<step id>.output"),
    ("steps.find_path.result", "steps.<step id>.output"),
    ("steps[0].output", "steps.<step id>.output"),
    ("context", "context has exactly these fields"),
    ("context.secret", "context has exactly these fields"),
    ("context.namespace.x", "context has exactly these fields"),
]


@pytest.mark.parametrize(("expression", "fragment"), BAD_REFERENCES)
def test_parse_reference__invalid(expression: str, fragment: str) -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        parse_reference(expression)
    assert fragment in info.value.message
    assert info.value.code is ErrorCode.VALIDATION_ERROR


def test_reference__step_id_and_output_path() -> None:
    ref = parse_reference("steps.find_path.output.path[1]")
    assert ref.step_id == "find_path"
    assert ref.output_path == ("path", 1)
    assert str(ref) == "{{steps.find_path.output.path[1]}}"
    assert parse_reference("input.a").step_id is None
    assert parse_reference("input.a").output_path == ()


# --------------------------------------------------------------------------- parse

PARSED = [
    # text -> (whole, literal parts and reference texts in order)
    ("plain", None),
    ("", None),
    ("{{input.a}}", (True, ["@input.a"])),
    ("{{ input.a }}", (True, ["@input.a"])),
    ("user:{{input.n}}", (False, ["user:", "@input.n"])),
    ("{{input.a}}-{{input.b}}", (False, ["@input.a", "-", "@input.b"])),
    (" {{input.a}}", (False, [" ", "@input.a"])),
    ("{{input.a}} ", (False, ["@input.a", " "])),
    ("a}}b", None),  # a lone closing pair is text
]


@pytest.mark.parametrize(("text", "expected"), PARSED)
def test_parse__parts(text: str, expected: tuple[bool, list[str]] | None) -> None:
    template = parse(text)
    if expected is None:
        assert template is None
        return
    assert template is not None
    whole, parts = expected
    assert template.whole is whole
    assert [p if isinstance(p, str) else f"@{p.text}" for p in template.parts] == parts


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{{input.a", "unclosed '{{' at character 0"),
        ("x {{input.a}} {{", "unclosed '{{' at character 14"),
        ("{{}}", "is not a template"),
        ("{{input.a}}{{nope}}", "unknown root 'nope'"),
    ],
)
def test_parse__invalid(text: str, fragment: str) -> None:
    with pytest.raises(TemplateSyntaxError, match=".*") as info:
        parse(text)
    assert fragment in info.value.message


# --------------------------------------------------------------------------- scan


def test_scan__finds_every_reference_with_its_location() -> None:
    tree = {
        "type": "owner",
        "source": "{{input.user}}",
        "metadata": {"by": "{{context.principal}}", "path": ["x", "{{steps.find_path.output.path}}"]},
        "note": "id {{input.id}} of {{input.kind}}",
        "count": 3,
    }
    found = scan(tree)
    assert [(loc, ref.text) for loc, ref in found.references] == [
        (("source",), "input.user"),
        (("metadata", "by"), "context.principal"),
        (("metadata", "path", 1), "steps.find_path.output.path"),
        (("note",), "input.id"),
        (("note",), "input.kind"),
    ]
    assert found.errors == []
    assert found.locations == {("source",), ("metadata", "by"), ("metadata", "path", 1), ("note",)}


def test_scan__reports_syntax_errors_and_keeps_going() -> None:
    found = scan({"a": "{{input.a", "b": ["{{nope.x}}", "{{input.ok}}"], "c": "{{input.c}}"})
    assert [loc for loc, _ in found.errors] == [("a",), ("b", 0)]
    assert [ref.text for _, ref in found.references] == ["input.ok", "input.c"]
    assert ("a",) in found.locations  # a value that failed to parse is not checked for its type either


def test_scan__keys_are_never_templates() -> None:
    assert scan({"{{input.a}}": 1}).references == []


@pytest.mark.parametrize(
    ("tree", "expected"),
    [({"a": "x"}, False), ({"a": ["{{input.a}}"]}, True), ("{{", True), (3, False), ([{"b": "{{x"}], True)],
)
def test_has_templates(tree: Any, expected: bool) -> None:
    assert has_templates(tree) is expected


# --------------------------------------------------------------------------- resolve

SCOPE = Scope(
    input={"user_id": "user:1", "n": 5, "flag": True, "items": [{"id": "a"}, {"id": "b"}], "nothing": None},
    outputs={
        "find_path": {"path": ["user:1", "user:9", "user:2"], "length": 2, "found": True},
        "create": {"relationship": {"metadata": {"wallet_type": "primary"}}},
    },
    context={"namespace": "default", "principal": "alice", "pattern_version": 3},
)

RESOLVED = [
    # a whole-string template keeps the JSON type
    ("{{input.user_id}}", "user:1"),
    ("{{input.n}}", 5),
    ("{{input.flag}}", True),
    ("{{input.nothing}}", None),
    ("{{input.items}}", [{"id": "a"}, {"id": "b"}]),
    ("{{input.items[1].id}}", "b"),
    ("{{input.items.0.id}}", "a"),
    ("{{steps.find_path.output.path}}", ["user:1", "user:9", "user:2"]),
    ("{{steps.find_path.output.path[2]}}", "user:2"),
    ("{{steps.find_path.output}}", {"path": ["user:1", "user:9", "user:2"], "length": 2, "found": True}),
    ("{{steps.create.output.relationship.metadata.wallet_type}}", "primary"),
    ("{{context.pattern_version}}", 3),
    # embedded in a longer string it is text: strings as they are, the rest as compact JSON
    ("user:{{input.n}}", "user:5"),
    ("{{input.user_id}}/{{context.namespace}}", "user:1/default"),
    ("flag={{input.flag}}", "flag=true"),
    ("none={{input.nothing}}", "none=null"),
    ("path={{steps.find_path.output.path}}", 'path=["user:1","user:9","user:2"]'),
    ("by {{context.principal}}", "by alice"),
    ("no template", "no template"),
]


@pytest.mark.parametrize(("text", "expected"), RESOLVED)
def test_resolve__values(text: str, expected: Any) -> None:
    assert resolve(text, SCOPE) == expected


def test_resolve__whole_input() -> None:
    assert resolve("{{input}}", SCOPE) == SCOPE.input


def test_resolve__walks_a_tree_and_leaves_other_values() -> None:
    tree = {"a": ["{{input.n}}", 1, None, {"b": "x-{{input.n}}"}], "c": 2.5, "d": False}
    assert resolve(tree, SCOPE) == {"a": [5, 1, None, {"b": "x-5"}], "c": 2.5, "d": False}


UNRESOLVED = [
    # text, fragment of the message
    ("{{input.missing}}", "the execution input has no 'missing' at top level"),
    ("{{input.items[5]}}", "the execution input has no 5 at items"),
    ("{{input.items[0].name}}", "has no 'name' at items[0]"),
    ("{{input.n.x}}", "has no 'x' at n"),
    ("{{steps.later.output.x}}", "step 'later' has no output (it has not completed)"),
    ("{{steps.find_path.output.hops}}", "the output of step 'find_path' has no 'hops'"),
    ("{{context.request_id}}", "the execution context has no 'request_id'"),
    ("prefix {{input.missing}}", "has no 'missing'"),
]


@pytest.mark.parametrize(("text", "fragment"), UNRESOLVED)
def test_resolve__unresolved(text: str, fragment: str) -> None:
    with pytest.raises(UnresolvedReference) as info:
        resolve({"metadata": {"x": text}}, SCOPE)
    assert fragment in info.value.message
    assert info.value.message.startswith("metadata.x: ")
    assert info.value.details["field"] == "metadata.x"
    assert info.value.code is ErrorCode.VALIDATION_ERROR


def test_resolve__syntax_error_names_its_location() -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        resolve({"a": [0, "{{input.x"]}, SCOPE)
    assert info.value.message.startswith("a[1]: unclosed")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("s", "s"),
        (1, "1"),
        (1.5, "1.5"),
        (True, "true"),
        (None, "null"),
        ([1, "a"], '[1,"a"]'),
        ({"é": 1}, '{"é":1}'),
    ],
)
def test_render(value: Any, text: str) -> None:
    assert render(value) == text


def test_reference_is_hashable_value() -> None:
    assert Reference("input", ("a",), "input.a") == parse_reference("input.a")
