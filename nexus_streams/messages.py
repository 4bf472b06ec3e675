"""Wire models: the JSON values on every topic (the public contract, exported to topics/).

Inbound models are frozen and forbid unknown fields, so a typo is an error rather than a silent
no-op. They are converted to domain calls at the edge (streams/handlers.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

RequestId = Annotated[
    str, Field(min_length=1, max_length=128, description="client-chosen idempotency key")
]
Principal = Annotated[str, Field(min_length=1, max_length=256, description="who asks")]
EntityId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        pattern=r"^[^\s\x00-\x1f\x7f-\x9f]+$",
        description="entity id, e.g. `user:1`",
    ),
]
NAMESPACE_REGEX = r"^[A-Za-z0-9._:-]{1,128}$"
Namespace = Annotated[str, Field(min_length=1, max_length=128, pattern=NAMESPACE_REGEX)]
Metadata = Annotated[dict[str, Any], Field(description="JSON object, at most 16 KiB as JSON")]

DEFAULT_NAMESPACE = "default"


class Inbound(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: RequestId
    principal: Principal
    namespace: Namespace | None = Field(
        default=None, description="optional; must equal the message key when present"
    )


class CreateRelationship(Inbound):
    """Create one relationship. `type` is one of owner, member, linked, parent, child."""

    action: Literal["create"]
    type: str = Field(description="owner | member | linked | parent | child")
    source: EntityId
    target: EntityId
    metadata: Metadata = Field(default_factory=dict)
    expires_at: datetime | None = Field(default=None, description="RFC 3339; optional")


class DeleteRelationship(Inbound):
    """Delete one relationship (either direction of an inverse pair names the same one)."""

    action: Literal["delete"]
    type: str
    source: EntityId
    target: EntityId


RelationshipCommand = Annotated[
    CreateRelationship | DeleteRelationship, Field(discriminator="action")
]
RELATIONSHIP_ACTIONS: dict[str, type[Inbound]] = {
    "create": CreateRelationship,
    "delete": DeleteRelationship,
}


class GraphQuery(Inbound):
    """A graph query; the actions and their parameters are listed in topics/README.md."""

    model_config = ConfigDict(frozen=True, extra="allow")

    action: str
    min_offset: int | None = Field(
        default=None, ge=0, description="answer only once the namespace applied this offset"
    )


class ExecutionRequest(Inbound):
    """Run a stored pattern in the namespace given by the key."""

    pattern_id: str = Field(min_length=1, max_length=128)
    version: int | None = Field(default=None, ge=1)
    input: dict[str, Any] = Field(default_factory=dict)
    timeout_ms: int | None = Field(default=None, ge=1)
    step_events: bool = False


class PatternCommand(BaseModel):
    """Store, deprecate or delete a pattern; the key is the pattern id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: RequestId
    principal: Principal
    action: Literal["store", "deprecate", "delete"]
    pattern: dict[str, Any] | None = None
    pattern_id: str | None = None
    version: int | None = None


class ErrorBody(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str = Field(description="stable snake_case error code, see topics/README.md")
    message: str = Field(description="what is wrong and what to fix")
    details: dict[str, Any] = Field(default_factory=dict)


class SourceRef(BaseModel):
    """Where a request was read: its topic, partition and offset."""

    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int
    offset: int


class Result(BaseModel):
    """Exactly one per request_id on the results topic."""

    model_config = ConfigDict(frozen=True)
    #: written even when null
    ALWAYS: ClassVar[frozenset[str]] = frozenset({"request_id"})

    request_id: str | None = Field(description="null only when the request had no usable one")
    namespace: str
    action: str | None = None
    status: Literal["ok", "error"]
    output: dict[str, Any] | None = None
    error: ErrorBody | None = None
    offset: int | None = Field(
        default=None, description="offset at which the request was applied (read-your-writes)"
    )
    source: SourceRef | None = None
    processed_at: datetime


class Event(BaseModel):
    """Something that happened; `type` and `pattern_id` are also Kafka headers."""

    model_config = ConfigDict(frozen=True)

    type: str = Field(description="relationship_created, relationship_deleted, error, ...")
    namespace: str
    occurred_at: datetime
    request_id: str | None = None
    principal: str | None = None
    pattern_id: str | None = None
    pattern_version: int | None = None
    execution_id: str | None = None
    relationship: dict[str, Any] | None = None
    error: ErrorBody | None = None
    data: dict[str, Any] | None = None


class DeadLetter(BaseModel):
    """Documents the dead-letter topic: the value is the original bytes, unchanged."""

    model_config = ConfigDict(frozen=True)

    value: str = Field(description="the original message value, byte for byte")


RESULT_ADAPTER: TypeAdapter[Result] = TypeAdapter(Result)


def utcnow() -> datetime:
    return datetime.now(UTC)
