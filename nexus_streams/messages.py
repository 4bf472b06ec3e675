"""Wire models: the JSON values on every topic (the public contract, exported to topics/).

Inbound models are frozen and forbid unknown fields, so a typo is an error rather than a silent
no-op. They are converted to domain calls at the edge (streams/handlers.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

RequestId = Annotated[str, Field(min_length=1, max_length=128, description="client-chosen idempotency key")]
Principal = Annotated[str, Field(min_length=1, max_length=256, description="who asks")]
EntityId = Annotated[
    str,
    Field(
        description="entity id, e.g. `user:1`: 1-256 printable characters without whitespace "
        "(checked by the service: `invalid_entity_id`); the part before `:` is its kind"
    ),
]
NAMESPACE_REGEX = r"^[A-Za-z0-9._:-]{1,128}$"
Namespace = Annotated[str, Field(min_length=1, max_length=128, pattern=NAMESPACE_REGEX)]
Metadata = Annotated[dict[str, Any], Field(description="JSON object, at most 16 KiB as JSON")]
RelType = Annotated[str, Field(description="owner | member | linked | parent | child")]
TypeFilter = Annotated[
    list[str] | None,
    Field(default=None, description="relationship types to follow; all when absent"),
]
DirectionField = Annotated[
    Literal["out", "in", "both"],
    Field(description="follow relationships as written (out), backwards (in) or either way"),
]

DEFAULT_NAMESPACE = "default"


class Inbound(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: RequestId
    principal: Principal
    namespace: Namespace | None = Field(
        default=None, description="optional; must equal the message key when present"
    )


class Step(BaseModel):
    """The fields of one command; as a message it also has request_id and principal."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# -- relationship commands ---------------------------------------------------------------------


class CreateFields(Step):
    action: Literal["create"]
    type: RelType
    source: EntityId
    target: EntityId
    metadata: Metadata = Field(default_factory=dict)
    expires_at: datetime | None = Field(
        default=None, description="RFC 3339; the relationship is removed then"
    )


class UpdateFields(Step):
    action: Literal["update"]
    type: RelType
    source: EntityId
    target: EntityId
    metadata: Metadata = Field(description="replaces the metadata")
    expected_version: int | None = Field(
        default=None, ge=1, description="fail with concurrent_modification unless at this version"
    )
    expires_at: datetime | None = None


class DeleteFields(Step):
    action: Literal["delete"]
    type: RelType
    source: EntityId
    target: EntityId


class DeleteEntityFields(Step):
    action: Literal["delete_entity"]
    entity: EntityId


class RestoreFields(Step):
    """Put a relationship back exactly as a backup has it (`nexus-streams import`): created, or
    overwritten, with its metadata, version and timestamps; in a `batch` only."""

    action: Literal["restore"]
    type: RelType
    source: EntityId
    target: EntityId
    metadata: Metadata = Field(default_factory=dict)
    version: int = Field(ge=1)
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None


BatchItem = Annotated[
    CreateFields | UpdateFields | DeleteFields | DeleteEntityFields | RestoreFields,
    Field(discriminator="action"),
]


class BatchFields(Step):
    action: Literal["batch"]
    commands: list[BatchItem] = Field(
        min_length=1, description="applied in order, all or nothing (at most NEXUS_MAX_BATCH)"
    )


class SetSchemaFields(Step):
    action: Literal["set_schema"]
    schema_: dict[str, list[str]] | None = Field(
        alias="schema",
        description='{"owner": ["user -> wallet"], ...}; null removes the schema',
    )


class ExpireFields(Step):
    """Sent by the workers themselves to remove expired relationships; harmless if repeated."""

    action: Literal["expire"]


class CreateRelationship(Inbound, CreateFields):
    """Create one relationship."""


class UpdateRelationship(Inbound, UpdateFields):
    """Replace a relationship's metadata (optionally only at an expected version)."""


class DeleteRelationship(Inbound, DeleteFields):
    """Delete one relationship (either form of an inverse pair names the same one)."""


class DeleteEntity(Inbound, DeleteEntityFields):
    """Delete every relationship of an entity; one event per removed relationship."""


class Batch(Inbound, BatchFields):
    """Apply several commands all-or-nothing."""


class SetSchema(Inbound, SetSchemaFields):
    """Set or remove the namespace schema (which entity kinds may hold which relationship)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Expire(Inbound, ExpireFields):
    """Remove the namespace's expired relationships (sent by workers on a timer)."""


RelationshipCommand = Annotated[
    CreateRelationship | UpdateRelationship | DeleteRelationship | DeleteEntity | Batch | SetSchema | Expire,
    Field(discriminator="action"),
]
RELATIONSHIP_ACTIONS: dict[str, type[Inbound]] = {
    "create": CreateRelationship,
    "update": UpdateRelationship,
    "delete": DeleteRelationship,
    "delete_entity": DeleteEntity,
    "batch": Batch,
    "set_schema": SetSchema,
    "expire": Expire,
}


# -- graph queries -----------------------------------------------------------------------------


class Query(Inbound):
    action: str
    min_offset: int | None = Field(
        default=None,
        ge=0,
        description="answer only once the namespace's partition of the relationships topic has "
        "been applied up to this offset (the `offset` of an earlier result): read-your-writes",
    )


class GetRelationship(Query):
    """One relationship with its metadata and version."""

    action: Literal["get"]
    type: RelType
    source: EntityId
    target: EntityId


class FindPath(Query):
    """The shortest path (by hops) from source to target within max_depth relationships."""

    action: Literal["find_path"]
    source: EntityId
    target: EntityId
    max_depth: int = Field(default=3, ge=1, le=10)
    types: TypeFilter = None
    direction: DirectionField = "both"


class Traverse(Query):
    """Every entity within max_depth of start; resource_limit if more than `limit`."""

    action: Literal["traverse"]
    start: EntityId
    max_depth: int = Field(default=2, ge=1, le=10)
    types: TypeFilter = None
    direction: DirectionField = "both"
    limit: int = Field(default=1000, ge=1, le=10_000)


class Neighbors(Query):
    """The relationships of one entity (depth 1), with their metadata."""

    action: Literal["neighbors"]
    entity: EntityId
    types: TypeFilter = None
    direction: DirectionField = "both"
    limit: int = Field(default=1000, ge=1, le=10_000)


class DetectCycles(Query):
    """Directed cycles over `types`: reachable from `entity`, or in the whole namespace."""

    action: Literal["detect_cycles"]
    entity: EntityId | None = None
    types: TypeFilter = None
    max_cycles: int = Field(default=10, ge=1, le=100)


class ResolveDependencies(Query):
    """The dependency closure of `entity` over `types`, dependencies first."""

    action: Literal["resolve_dependencies"]
    entity: EntityId
    types: TypeFilter = None


class Analyze(Query):
    """Components, degree distribution, top entities by degree and PageRank (on a snapshot)."""

    action: Literal["analyze"]
    top: int = Field(default=10, ge=1, le=100)
    max_age_ms: int | None = Field(
        default=None,
        ge=0,
        description="rebuild the snapshot if older; default NEXUS_SNAPSHOT_MAX_AGE_S",
    )


class Stats(Query):
    """Counts by type, entities, relationships and degree statistics."""

    action: Literal["stats"]


class Export(Query):
    """Every relationship and the schema of the namespace as of one offset, answered as a series
    of results with this request_id (`output.chunk` 0, 1, ...; the last has `output.last`)."""

    action: Literal["export"]
    chunk_bytes: int | None = Field(
        default=None,
        ge=4096,
        description="the largest chunk, as JSON; at most (and by default) NEXUS_EXPORT_CHUNK_BYTES",
    )


GraphQuery = Annotated[
    GetRelationship
    | FindPath
    | Traverse
    | Neighbors
    | DetectCycles
    | ResolveDependencies
    | Analyze
    | Stats
    | Export,
    Field(discriminator="action"),
]
QUERY_ACTIONS: dict[str, type[Inbound]] = {
    "get": GetRelationship,
    "find_path": FindPath,
    "traverse": Traverse,
    "neighbors": Neighbors,
    "detect_cycles": DetectCycles,
    "resolve_dependencies": ResolveDependencies,
    "analyze": Analyze,
    "stats": Stats,
    "export": Export,
}


# -- standing queries (docs/standing-queries.md) ------------------------------------------------

SubscriptionId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._:-]{1,64}$",
        description="client-chosen, unique in the namespace: 1-64 letters, digits and . _ : -",
    ),
]


class StandingFindPath(Step):
    """Matched while a path of at most max_depth relationships leads from source to target."""

    action: Literal["find_path"]
    source: EntityId
    target: EntityId
    max_depth: int = Field(default=3, ge=1, le=10)
    types: TypeFilter = None
    direction: DirectionField = "both"


class StandingDetectCycles(Step):
    """Matched while a directed cycle over `types` is reachable from `entity`."""

    action: Literal["detect_cycles"]
    entity: EntityId
    types: TypeFilter = None


class StandingNeighbors(Step):
    """Matched while the entity's count of matching relationships is over `count_over` (or
    under `count_under`; exactly one of them)."""

    action: Literal["neighbors"]
    entity: EntityId
    types: TypeFilter = None
    direction: DirectionField = "both"
    count_over: int | None = Field(default=None, ge=0)
    count_under: int | None = Field(default=None, ge=1)


StandingQuerySpec = Annotated[
    StandingFindPath | StandingDetectCycles | StandingNeighbors, Field(discriminator="action")
]


class OnMatch(Step):
    """A pattern to run each time the subscription's answer turns to matched; its request_id is
    the match's id, so it runs once per match."""

    pattern_id: str = Field(min_length=1, max_length=128)
    version: int | None = Field(default=None, ge=1)
    input: dict[str, Any] = Field(
        default_factory=dict,
        description="the execution input; templates `{{input.<field>}}` read the match "
        "(subscription_id, match_id, offset, witness)",
    )


class Subscribe(Inbound):
    """Register a standing query on the namespace (the key)."""

    action: Literal["subscribe"]
    subscription_id: SubscriptionId
    query: StandingQuerySpec
    on_match: OnMatch | None = None


class Unsubscribe(Inbound):
    """Remove a standing query (ok, `removed: false`, when there is none)."""

    action: Literal["unsubscribe"]
    subscription_id: SubscriptionId


class ListSubscriptions(Inbound):
    """The namespace's standing queries with their current answers."""

    action: Literal["list_subscriptions"]


SubscriptionCommand = Annotated[Subscribe | Unsubscribe | ListSubscriptions, Field(discriminator="action")]
SUBSCRIPTION_ACTIONS: dict[str, type[Inbound]] = {
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "list_subscriptions": ListSubscriptions,
}


class TriggerExecution(Inbound):
    """Sent by the worker itself when a subscription with `on_match` matches: runs the
    subscription's pattern on the input it rendered then (kept in the subscription, not read from
    this message), as the subscriber. Harmless if repeated: its request_id is the match's id."""

    action: Literal["trigger"]
    subscription_id: SubscriptionId
    pattern_id: str = Field(min_length=1, max_length=128, description="for the worker's pattern prefetch")
    version: int | None = Field(default=None, ge=1)


class ExecutionRequest(Inbound):
    """Run a stored pattern in the namespace given by the key."""

    pattern_id: str = Field(min_length=1, max_length=128)
    version: int | None = Field(default=None, ge=1)
    input: dict[str, Any] = Field(default_factory=dict)
    timeout_ms: int | None = Field(default=None, ge=1)
    step_events: bool = False


class PatternRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: RequestId
    principal: Principal


class StorePattern(PatternRequest):
    """Store a pattern: version 1 of a new id, version n+1 of an existing one (none if identical)."""

    action: Literal["store"]
    pattern: dict[str, Any] = Field(description="the pattern document; its `id` must equal the key")


class DeprecatePattern(PatternRequest):
    """Deprecate a pattern: it takes no new executions; a new version clears it."""

    action: Literal["deprecate"]
    pattern_id: str | None = Field(default=None, description="optional; must equal the key")


class DeletePattern(PatternRequest):
    """Delete a pattern with all its versions and statistics."""

    action: Literal["delete"]
    pattern_id: str | None = Field(default=None, description="optional; must equal the key")


PatternCommand = Annotated[StorePattern | DeprecatePattern | DeletePattern, Field(discriminator="action")]
PATTERN_ACTIONS: dict[str, type[BaseModel]] = {
    "store": StorePattern,
    "deprecate": DeprecatePattern,
    "delete": DeletePattern,
}


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

    request_id: str | None = Field(description="null only when the request had no usable one")
    namespace: str | None = Field(description="the namespace; null for pattern commands")
    pattern_id: str | None = Field(default=None, description="for pattern commands and executions")
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
    namespace: str | None = Field(description="the namespace; null for pattern events")
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


class DeadLetterHandled(BaseModel):
    """What an operator's tool did with one dead letter (`nexus.deadletter-handled`)."""

    model_config = ConfigDict(frozen=True)

    deadletter: SourceRef = Field(description="the dead letter: its topic, partition and offset")
    outcome: Literal["redriven", "discarded"]
    error_code: str = Field(description="the dead letter's `nexus-error-code`")
    source: SourceRef | None = Field(description="where the original message had been read")
    redrive_count: int | None = Field(
        default=None, description="`nexus-redrive-count` of the re-sent message (redriven only)"
    )
    sent_to: SourceRef | None = Field(default=None, description="where it was re-sent (redriven only)")
    edited: bool = Field(default=False, description="the value was edited before it was re-sent")
    principal: str = Field(description="who handled it")
    handled_at: datetime


RESULT_ADAPTER: TypeAdapter[Result] = TypeAdapter(Result)


def utcnow() -> datetime:
    return datetime.now(UTC)
