"""The topic catalog: every public topic, its key, partitioning, cleanup policy and value model.

One source for the worker (which creates and subscribes to them), the AsyncAPI contract in
topics/ (generated from here) and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel

from nexus_streams.messages import (
    PATTERN_ACTIONS,
    QUERY_ACTIONS,
    RELATIONSHIP_ACTIONS,
    SUBSCRIPTION_ACTIONS,
    DeadLetter,
    DeadLetterHandled,
    Event,
    ExecutionRequest,
    Result,
    TriggerExecution,
)
from nexus_streams.settings import Settings


class Partitioning(StrEnum):
    #: `settings.partitions`; keyed by namespace and co-partitioned with the namespace actor
    NAMESPACE = "namespace"
    #: `settings.partitions`, not co-partitioned (outbound)
    SPREAD = "spread"


class Header(StrEnum):
    """Kafka headers (values are UTF-8): the one a client sets on its requests, and those the
    service sets on what it publishes."""

    #: `Bearer <token>`, on requests: who sends them (docs/security.md)
    AUTHORIZATION = "authorization"

    EVENT_TYPE = "nexus-event-type"
    PATTERN_ID = "nexus-pattern-id"
    PATTERN_VERSION = "nexus-pattern-version"
    NAMESPACE = "nexus-namespace"
    REQUEST_ID = "nexus-request-id"
    STATUS = "nexus-status"
    ERROR_CODE = "nexus-error-code"
    ERROR_REASON = "nexus-error-reason"
    SOURCE_TOPIC = "nexus-source-topic"
    SOURCE_PARTITION = "nexus-source-partition"
    SOURCE_OFFSET = "nexus-source-offset"
    REDRIVE_COUNT = "nexus-redrive-count"
    SUBSCRIPTION_ID = "nexus-subscription-id"


#: the headers that dead-lettering sets and a redrive removes; a dead letter keeps the original
#: message's other headers (`nexus-redrive-count` among them), so that a redrive re-sends them
REASON_HEADERS = (
    Header.ERROR_CODE,
    Header.ERROR_REASON,
    Header.SOURCE_TOPIC,
    Header.SOURCE_PARTITION,
    Header.SOURCE_OFFSET,
)


#: room for a dead-lettered message of the broker's default limit (1 MiB) and its headers
DEADLETTER_MAX_MESSAGE_BYTES = 2 * 1024 * 1024
#: the state changelog's record batches (one per flush, streams/writer.py: at most 4 MiB, more
#: only for one message whose writes alone are larger); the worker's producer takes these too
STATE_MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    partitioning: Partitioning
    cleanup_policy: str
    description: str
    messages: tuple[type[BaseModel], ...]
    headers: tuple[Header, ...] = ()
    inbound: bool = True
    #: the topic's `max.message.bytes`, where the broker's default is too small
    max_message_bytes: int | None = None


RELATIONSHIPS = TopicSpec(
    name="relationships",
    key="namespace (UTF-8); a missing key means `default`",
    partitioning=Partitioning.NAMESPACE,
    cleanup_policy="delete",
    description="Relationship commands: " + ", ".join(RELATIONSHIP_ACTIONS) + ".",
    messages=tuple(RELATIONSHIP_ACTIONS.values()),
    headers=(Header.AUTHORIZATION, Header.REDRIVE_COUNT),
)
QUERIES = TopicSpec(
    name="queries",
    key="namespace (UTF-8); a missing key means `default`",
    partitioning=Partitioning.NAMESPACE,
    cleanup_policy="delete",
    description="Graph queries ("
    + ", ".join(QUERY_ACTIONS)
    + ") and standing queries ("
    + ", ".join(SUBSCRIPTION_ACTIONS)
    + "), answered on the results topic.",
    messages=tuple(QUERY_ACTIONS.values()) + tuple(SUBSCRIPTION_ACTIONS.values()),
    headers=(Header.AUTHORIZATION, Header.REDRIVE_COUNT),
)
EXECUTIONS = TopicSpec(
    name="executions",
    key="namespace (UTF-8); a missing key means `default`",
    partitioning=Partitioning.NAMESPACE,
    cleanup_policy="delete",
    description="Pattern execution requests, run as transactions inside the namespace actor; "
    "`trigger` is sent by the workers for a standing query's `on_match`.",
    messages=(ExecutionRequest, TriggerExecution),
    headers=(Header.AUTHORIZATION, Header.REDRIVE_COUNT),
)
PATTERNS = TopicSpec(
    name="patterns",
    key="pattern id (UTF-8)",
    partitioning=Partitioning.SPREAD,
    cleanup_policy="delete",
    description="Pattern commands: " + ", ".join(PATTERN_ACTIONS) + ".",
    messages=tuple(PATTERN_ACTIONS.values()),
    headers=(Header.AUTHORIZATION, Header.REDRIVE_COUNT),
)
RESULTS = TopicSpec(
    name="results",
    key="namespace (UTF-8)",
    partitioning=Partitioning.SPREAD,
    cleanup_policy="delete",
    description="Exactly one result per request_id.",
    messages=(Result,),
    headers=(Header.REQUEST_ID, Header.STATUS, Header.NAMESPACE),
    inbound=False,
)
EVENTS = TopicSpec(
    name="events",
    key="namespace (UTF-8)",
    partitioning=Partitioning.SPREAD,
    cleanup_policy="delete",
    description="Events: relationship_created, relationship_deleted, error, ...",
    messages=(Event,),
    headers=(
        Header.EVENT_TYPE,
        Header.NAMESPACE,
        Header.PATTERN_ID,
        Header.PATTERN_VERSION,
        Header.SUBSCRIPTION_ID,
    ),
    inbound=False,
)
DEADLETTER = TopicSpec(
    name="deadletter",
    key="the original key, unchanged",
    partitioning=Partitioning.SPREAD,
    cleanup_policy="delete",
    description="Messages that could not be decoded, unchanged, with the reason in headers.",
    messages=(DeadLetter,),
    # an input message may take the broker's whole default limit (1 MiB): its dead letter adds headers
    max_message_bytes=DEADLETTER_MAX_MESSAGE_BYTES,
    headers=(*REASON_HEADERS, Header.REDRIVE_COUNT),
    inbound=False,
)
DEADLETTER_HANDLED = TopicSpec(
    name="deadletter-handled",
    key="`partition:offset` of the dead letter (UTF-8), in the same partition as the dead letter",
    partitioning=Partitioning.SPREAD,
    cleanup_policy="delete",
    description="What `nexus-streams deadletter redrive` and `discard` did with each dead letter, "
    "written once the message is re-sent, so that a dead letter is handled once (docs/deadletters.md).",
    messages=(DeadLetterHandled,),
    headers=(Header.ERROR_CODE,),
    inbound=False,
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    RELATIONSHIPS,
    QUERIES,
    EXECUTIONS,
    PATTERNS,
    RESULTS,
    EVENTS,
    DEADLETTER,
    DEADLETTER_HANDLED,
)


def topic_name(settings: Settings, spec: TopicSpec) -> str:
    return settings.topic(spec.name)
