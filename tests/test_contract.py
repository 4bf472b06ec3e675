"""topics/ is generated from the models: fail when the checked-in files drift from them."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field

from nexus_streams.contract import JSON_SCHEMA_DIALECT, JSON_SCHEMA_FORMAT, draft_07, render
from nexus_streams.domain.errors import ErrorCode
from nexus_streams.messages import PATTERN_ACTIONS, QUERY_ACTIONS, RELATIONSHIP_ACTIONS
from nexus_streams.settings import Settings
from nexus_streams.topics import ALL_TOPICS

REPO = Path(__file__).resolve().parents[1]
TOPICS_DIR = REPO / "topics"
README = (REPO / "README.md").read_text()
TOPICS_README = (TOPICS_DIR / "README.md").read_text()
RENDERED = render()


@pytest.mark.parametrize("path", sorted(RENDERED))
def test_contract__checked_in_file_matches_models(path: str) -> None:
    on_disk = TOPICS_DIR / path
    assert on_disk.exists(), f"topics/{path} is missing; run `make topics-gen`"
    assert on_disk.read_text() == RENDERED[path], f"topics/{path} drifted; run `make topics-gen`"


def test_contract__no_stale_schema_files() -> None:
    on_disk = {str(p.relative_to(TOPICS_DIR)) for p in (TOPICS_DIR / "schemas").glob("*.json")}
    assert on_disk == {p for p in RENDERED if p.startswith("schemas/")}


def test_contract__every_topic_is_a_channel_with_resolvable_messages() -> None:
    doc = yaml.safe_load(RENDERED["asyncapi.yaml"])
    assert doc["asyncapi"].startswith("3.")
    assert set(doc["channels"]) == {spec.name for spec in ALL_TOPICS}
    for name, channel in doc["channels"].items():
        assert channel["address"] == f"nexus.{name}"
        assert channel["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"]
        for ref in channel["messages"].values():
            message_name = ref["$ref"].rsplit("/", 1)[-1]
            message = doc["components"]["messages"][message_name]
            assert message["payload"]["schema"]["$ref"] in RENDERED
    for operation in doc["operations"].values():
        assert operation["channel"]["$ref"].rsplit("/", 1)[-1] in doc["channels"]


def test_contract__every_schema_file_is_in_the_document_with_its_format() -> None:
    """So the AsyncAPI parser (tests/test_asyncapi.py) checks each file, as the format it is in."""
    doc = yaml.safe_load(RENDERED["asyncapi.yaml"])
    schemas = [m["payload"] for m in doc["components"]["messages"].values()]
    schemas += doc["components"]["schemas"].values()
    assert {s["schemaFormat"] for s in schemas} == {JSON_SCHEMA_FORMAT}
    assert {s["schema"]["$ref"] for s in schemas} == {p for p in RENDERED if p.startswith("schemas/")}


@pytest.mark.parametrize("path", sorted(p for p in RENDERED if p.startswith("schemas/")))
def test_contract__schema_file_is_draft_07(path: str) -> None:
    schema = json.loads(RENDERED[path])
    assert schema["$schema"] == JSON_SCHEMA_DIALECT
    assert not {"$defs", "prefixItems"} & set(keywords(schema))
    assert all(ref.startswith("#/definitions/") for ref in refs(schema))


def keywords(value: Any) -> list[str]:
    """Every key of every object in a JSON value (property names too: enough to find keywords)."""
    if isinstance(value, dict):
        return [*value, *(k for v in value.values() for k in keywords(v))]
    if isinstance(value, list):
        return [k for v in value for k in keywords(v)]
    return []


def refs(value: Any) -> list[str]:
    """Every `$ref` and every reference of a `discriminator` mapping in a JSON value."""
    if isinstance(value, list):
        return [r for v in value for r in refs(v)]
    if not isinstance(value, dict):
        return []
    own = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
    mapping = value.get("mapping", {}) if isinstance(value.get("mapping"), dict) else {}
    return own + [r for r in mapping.values() if isinstance(r, str)] + refs(list(value.values()))


# ------------------------------------------------------------------ JSON Schema 2020-12 -> draft-07


class Colour(StrEnum):
    RED = "red"


class Sample(BaseModel):
    pair: tuple[int, str]
    colour: Colour = Field(Colour.RED, description="a colour")


@pytest.mark.parametrize(
    ("schema_2020_12", "expected_draft_07"),
    [
        ({"type": "string"}, {"type": "string"}),
        (
            {"$defs": {"A": {"type": "integer"}}, "properties": {"a": {"$ref": "#/$defs/A"}}},
            {"definitions": {"A": {"type": "integer"}}, "properties": {"a": {"$ref": "#/definitions/A"}}},
        ),
        # draft-07 ignores a $ref's siblings: they stand beside an allOf instead
        (
            {"$ref": "#/$defs/A", "description": "d", "default": 1},
            {"allOf": [{"$ref": "#/definitions/A"}], "description": "d", "default": 1},
        ),
        (
            {"$ref": "#/$defs/A", "allOf": [{"minimum": 0}]},
            {"allOf": [{"$ref": "#/definitions/A"}, {"minimum": 0}]},
        ),
        (
            {"type": "array", "prefixItems": [{"type": "integer"}], "items": {"type": "string"}},
            {"type": "array", "items": [{"type": "integer"}], "additionalItems": {"type": "string"}},
        ),
        (
            {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "null"}], "maxItems": 2},
            {"type": "array", "items": [{"type": "integer"}, {"type": "null"}], "maxItems": 2},
        ),
        (
            {
                "oneOf": [{"$ref": "#/$defs/A"}],
                "discriminator": {"propertyName": "k", "mapping": {"a": "#/$defs/A"}},
            },
            {
                "oneOf": [{"$ref": "#/definitions/A"}],
                "discriminator": {"propertyName": "k", "mapping": {"a": "#/definitions/A"}},
            },
        ),
        # data is not a schema: a default or a property named like a keyword stays as it is
        (
            {"properties": {"$defs": {"default": {"$ref": "#/$defs/A", "prefixItems": []}}}},
            {"properties": {"$defs": {"default": {"$ref": "#/$defs/A", "prefixItems": []}}}},
        ),
        (
            Sample.model_json_schema(),
            {
                "definitions": {"Colour": {"enum": ["red"], "title": "Colour", "type": "string"}},
                "properties": {
                    "pair": {
                        "items": [{"type": "integer"}, {"type": "string"}],
                        "maxItems": 2,
                        "minItems": 2,
                        "title": "Pair",
                        "type": "array",
                    },
                    "colour": {
                        "allOf": [{"$ref": "#/definitions/Colour"}],
                        "default": "red",
                        "description": "a colour",
                    },
                },
                "required": ["pair"],
                "title": "Sample",
                "type": "object",
            },
        ),
    ],
)
def test_draft_07__rewrites_2020_12(
    schema_2020_12: dict[str, Any], expected_draft_07: dict[str, Any]
) -> None:
    assert draft_07(schema_2020_12) == {"$schema": JSON_SCHEMA_DIALECT, **expected_draft_07}


@pytest.mark.parametrize(
    "schema_2020_12",
    [
        {"type": "object", "unevaluatedProperties": False},
        {"properties": {"a": {"dependentRequired": {"a": ["b"]}}}},
        {"items": {"$dynamicRef": "#node"}},
    ],
)
def test_draft_07__refuses_keywords_without_a_draft_07_form(schema_2020_12: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="draft-07 has no form of"):
        draft_07(schema_2020_12)


# ------------------------------------------------------------------ the hand-written docs


def section(text: str, title: str) -> str:
    """The body of the `## title` section of a markdown text, up to the next `## ` heading."""
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def error_table() -> set[str]:
    """The codes of the error table of topics/README.md."""
    table = section(TOPICS_README, "Error codes")
    return {line.split("|")[1].strip(" `") for line in table.splitlines() if line.startswith("| `")}


def test_docs__topics_error_table__lists_every_error_code() -> None:
    assert error_table() == {code.value for code in ErrorCode}


@pytest.mark.parametrize("doc", ["README.md", "topics/README.md"])
def test_docs__every_command_and_query_action_is_named(doc: str) -> None:
    text = README if doc == "README.md" else TOPICS_README
    actions = [*RELATIONSHIP_ACTIONS, *QUERY_ACTIONS, *PATTERN_ACTIONS]
    assert [a for a in actions if f"`{a}`" not in text] == []


def test_docs__readme_settings_table__names_every_setting() -> None:
    table = section(README, "Settings")
    missing = [name for name in Settings.model_fields if f"`NEXUS_{name.upper()}`" not in table]
    assert missing == []
