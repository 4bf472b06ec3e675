"""The topic contract in topics/: an AsyncAPI 3 document and JSON Schemas generated from the
pydantic models. `scripts/gen_topics.py` writes it; tests/test_contract.py fails on drift, and
tests/test_asyncapi.py runs the official AsyncAPI parser on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter

from nexus_streams import __version__
from nexus_streams.messages import GraphQuery, PatternCommand, RelationshipCommand, SubscriptionCommand
from nexus_streams.settings import Settings
from nexus_streams.topics import ALL_TOPICS, Header, Partitioning, TopicSpec

HEADER_DOCS: dict[Header, str] = {
    Header.AUTHORIZATION: "`Bearer <token>`: a JWT whose `sub` is the principal and whose `scope` "
    "covers the request; required when the service runs with NEXUS_AUTH=required (topics/README.md)",
    Header.EVENT_TYPE: "the event's `type`",
    Header.PATTERN_ID: "the pattern id, on pattern events and events of a pattern execution",
    Header.PATTERN_VERSION: "the pattern version, where the event has one",
    Header.NAMESPACE: "the namespace",
    Header.SUBSCRIPTION_ID: "the subscription, on standing_query_matched and standing_query_unmatched "
    "events (docs/standing-queries.md)",
    Header.REQUEST_ID: "the request's `request_id`",
    Header.STATUS: "`ok` or `error`",
    Header.ERROR_CODE: "why it was dead-lettered: undecodable, invalid_key, validation_error, ...",
    Header.ERROR_REASON: "what is wrong, for a human",
    Header.SOURCE_TOPIC: "the topic the message was read from",
    Header.SOURCE_PARTITION: "its partition",
    Header.SOURCE_OFFSET: "its offset",
    Header.REDRIVE_COUNT: "how many times the message was redriven from nexus.deadletter (absent: never); "
    "a dead letter keeps its message's count, and `nexus-streams deadletter redrive` re-sends it with the "
    "count plus one, up to NEXUS_REDRIVE_MAX",
}


#: The schema format the document declares for every payload. pydantic writes JSON Schema 2020-12,
#: which the AsyncAPI 3 parser does not know; draft-07 is the newest JSON Schema it validates, so
#: the schemas are rewritten to draft-07 (`draft_07`) and declared as such.
JSON_SCHEMA_FORMAT = "application/schema+json;version=draft-07"
JSON_SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"

#: the unions of a topic's commands: schema files no message names, listed in components.schemas
UNIONS: tuple[tuple[str, Any], ...] = (
    ("RelationshipCommand", RelationshipCommand),
    ("GraphQuery", GraphQuery),
    ("SubscriptionCommand", SubscriptionCommand),
    ("PatternCommand", PatternCommand),
)

# keywords whose value is one schema, a list of schemas, or {name: schema}
_SUBSCHEMA = frozenset(
    {
        "additionalProperties",
        "additionalItems",
        "items",
        "contains",
        "propertyNames",
        "not",
        "if",
        "then",
        "else",
    }
)
_SUBSCHEMA_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SUBSCHEMA_MAP = frozenset({"properties", "patternProperties", "$defs", "definitions"})
# 2020-12 keywords without a draft-07 form: the generator fails rather than mislabel a schema
_NO_DRAFT_07 = frozenset(
    {
        "$anchor",
        "$dynamicAnchor",
        "$dynamicRef",
        "$vocabulary",
        "dependentRequired",
        "dependentSchemas",
        "maxContains",
        "minContains",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)


def draft_07(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic's JSON Schema 2020-12 as draft-07, with `$schema` saying so."""
    return {"$schema": JSON_SCHEMA_DIALECT, **_draft_07(schema, "#")}


def _draft_07(schema: Any, where: str) -> Any:
    """`$defs` become `definitions`; `prefixItems` the list form of `items` (2020-12's `items`
    next to it becomes `additionalItems`); a `$ref` with siblings moves into `allOf`, since
    draft-07 ignores whatever stands beside a `$ref`. Values that are data (`default`, `const`,
    `enum`, `examples`) are kept as they are, and so is the OpenAPI `discriminator` annotation,
    which draft-07 ignores, but for the references of its `mapping`."""
    if not isinstance(schema, dict):
        return schema  # true / false
    if unsupported := sorted(_NO_DRAFT_07 & schema.keys()):
        raise ValueError(f"{where}: JSON Schema draft-07 has no form of {', '.join(unsupported)}")
    out = {key: _draft_07_value(key, value, f"{where}/{key}") for key, value in schema.items()}
    if "$defs" in out:
        out["definitions"] = {**out.get("definitions", {}), **out.pop("$defs")}
    if "prefixItems" in out:
        rest = out.pop("items", None)
        out["items"] = out.pop("prefixItems")
        if rest is not None:
            out["additionalItems"] = rest
    if "$ref" in out and len(out) > 1:
        out["allOf"] = [{"$ref": out.pop("$ref")}, *out.get("allOf", [])]
    return out


def _draft_07_value(key: str, value: Any, where: str) -> Any:
    """The draft-07 value of keyword `key` of a schema (its name unchanged)."""
    if key in _SUBSCHEMA:
        return _draft_07(value, where)
    if key in _SUBSCHEMA_LIST:
        return [_draft_07(v, f"{where}/{i}") for i, v in enumerate(value)]
    if key in _SUBSCHEMA_MAP:
        return {name: _draft_07(v, f"{where}/{name}") for name, v in value.items()}
    if key == "$ref":
        return _definitions_ref(value)
    if key == "discriminator" and isinstance(value, dict) and "mapping" in value:
        return {**value, "mapping": {k: _definitions_ref(v) for k, v in value["mapping"].items()}}
    return value


def _definitions_ref(ref: str) -> str:
    return "#/definitions/" + ref.removeprefix("#/$defs/") if ref.startswith("#/$defs/") else ref


def schema_file(name: str) -> str:
    return f"schemas/{name}.json"


def json_schemas() -> dict[str, dict[str, Any]]:
    """{relative path: JSON Schema draft-07} for every message model, plus the command unions."""
    out: dict[str, dict[str, Any]] = {}
    for spec in ALL_TOPICS:
        for model in spec.messages:
            out[schema_file(model.__name__)] = draft_07(
                model.model_json_schema(mode="serialization" if not spec.inbound else "validation")
            )
    for name, union_type in UNIONS:
        union = TypeAdapter(union_type).json_schema()
        union["title"] = name
        out[schema_file(name)] = draft_07(union)
    return out


def _schema(name: str) -> dict[str, Any]:
    """A Multi Format Schema object: the schema file `name` and the format it is written in."""
    return {"schemaFormat": JSON_SCHEMA_FORMAT, "schema": {"$ref": schema_file(name)}}


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
        "payload": _schema(model.__name__),
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
        "components": {"schemas": {name: _schema(name) for name, _ in UNIONS}, "messages": messages},
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
