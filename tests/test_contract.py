"""topics/ is generated from the models: fail when the checked-in files drift from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nexus_streams.contract import render
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
            assert message["payload"]["$ref"] in RENDERED
    for operation in doc["operations"].values():
        assert operation["channel"]["$ref"].rsplit("/", 1)[-1] in doc["channels"]


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
