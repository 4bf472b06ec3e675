"""topics/ is generated from the models: fail when the checked-in files drift from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nexus_streams.contract import render
from nexus_streams.topics import ALL_TOPICS

TOPICS_DIR = Path(__file__).resolve().parents[1] / "topics"
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
