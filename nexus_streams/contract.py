"""The topic contract in topics/: an AsyncAPI 3 document and JSON Schemas generated from the
pydantic models. `scripts/gen_topics.py` writes it; tests/test_contract.py fails on drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter

from nexus_streams import __version__
from nexus_streams.messages import GraphQuery, PatternCommand, RelationshipCommand
from nexus_streams.settings import Settings
from nexus_streams.topics import ALL_TOPICS, Header, Partitioning, TopicSpec

HEADER_DOCS: dict[Header, str] = {
    Header.EVENT_TYPE: "the event's `type`",
    Header.PATTERN_ID: "the pattern id, on pattern events and events of a pattern execution",
    Header.PATTERN_VERSION: "the pattern version, where the event has one",
    Header.NAMESPACE: "the namespace",
    Header.REQUEST_ID: "the request's `request_id`",
    Header.STATUS: "`ok` or `error`",
    Header.ERROR_CODE: "why it was dead-lettered: undecodable, invalid_key, validation_error, ...",
    Header.ERROR_REASON: "what is wrong, for a human",
    Header.SOURCE_TOPIC: "the topic the message was read from",
    Header.SOURCE_PARTITION: "its partition",
    Header.SOURCE_OFFSET: "its offset",
}


def schema_file(name: str) -> str:
    return f"schemas/{name}.json"


def json_schemas() -> dict[str, dict[str, Any]]:
    """{relative path: JSON Schema} for every message model, plus the relationship command union."""
    out: dict[str, dict[str, Any]] = {}
    for spec in ALL_TOPICS:
        for model in spec.messages:
            out[schema_file(model.__name__)] = model.model_json_schema(
                mode="serialization" if not spec.inbound else "validation"
            )
    unions: tuple[tuple[str, Any], ...] = (
        ("RelationshipCommand", RelationshipCommand),
        ("GraphQuery", GraphQuery),
        ("PatternCommand", PatternCommand),
    )
    for name, union_type in unions:
        union = TypeAdapter(union_type).json_schema()
        union["title"] = name
        out[schema_file(name)] = union
    return out


def _headers_schema(spec: TopicSpec) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {h.value: {"type": "string", "description": HEADER_DOCS[h]} for h in spec.headers},
    }


def _message(model: type[BaseModel], spec: TopicSpec) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": model.__name__,
        "title": model.__name__,
        "summary": (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else model.__name__,
        "contentType": "application/json",
        "payload": {"$ref": schema_file(model.__name__)},
        "bindings": {"kafka": {"key": {"type": "string", "description": spec.key}}},
    }
    if spec.headers:
        message["headers"] = _headers_schema(spec)
    return message


def asyncapi_document(settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or Settings()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for spec in ALL_TOPICS:
        channel_messages = {}
        for model in spec.messages:
            messages[model.__name__] = _message(model, spec)
            channel_messages[model.__name__] = {"$ref": f"#/components/messages/{model.__name__}"}
        partitions = (
            "NEXUS_PARTITIONS (default 8), the same for every namespace-keyed topic"
            if spec.partitioning is Partitioning.NAMESPACE
            else "NEXUS_PARTITIONS (default 8)"
        )
        channels[spec.name] = {
            "address": settings.topic(spec.name),
            "title": spec.name,
            "description": f"{spec.description} Key: {spec.key}. Partitions: {partitions}.",
            "messages": channel_messages,
            "bindings": {
                "kafka": {
                    "partitions": settings.partitions,
                    "replicas": settings.replication_factor,
                    "topicConfiguration": {"cleanup.policy": [spec.cleanup_policy]},
                }
            },
        }
        operations[f"{'send' if spec.inbound else 'receive'}_{spec.name}"] = {
            "action": "send" if spec.inbound else "receive",
            "channel": {"$ref": f"#/channels/{spec.name}"},
            "summary": (
                f"a client produces to {settings.topic(spec.name)}"
                if spec.inbound
                else f"a client consumes {settings.topic(spec.name)}"
            ),
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "nexus-streams",
            "version": __version__,
            "description": (
                "Topics of nexus-streams. Values are UTF-8 JSON objects, keys UTF-8 strings, "
                "timestamps RFC 3339 UTC. Topic names carry the prefix NEXUS_TOPIC_PREFIX "
                "(default `nexus.`). Generated from the pydantic models by scripts/gen_topics.py."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": settings.kafka_bootstrap,
                "protocol": "kafka",
                "description": "the local stack of scripts/stack.sh",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def render() -> dict[str, str]:
    """{path relative to topics/: file text}: exactly what is checked in."""
    defaults = Settings(
        _env_file=None,
        kafka_bootstrap="127.0.0.1:19092",
        topic_prefix="nexus.",  # type: ignore[call-arg]
        partitions=8,
        replication_factor=1,
    )
    files = {
        "asyncapi.yaml": yaml.safe_dump(asyncapi_document(defaults), sort_keys=False, width=100),
    }
    for path, schema in json_schemas().items():
        files[path] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def write(directory: Path) -> list[Path]:
    written = []
    for rel, text in render().items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
