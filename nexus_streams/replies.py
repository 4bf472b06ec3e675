"""What the namespace actor publishes: results, events and dead letters as outbound messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from nexus_streams.codec import encode
from nexus_streams.domain.errors import NexusError
from nexus_streams.messages import ErrorBody, Event, Result, SourceRef
from nexus_streams.topics import DEADLETTER, EVENTS, RESULTS, Header, TopicSpec


@dataclass(frozen=True, slots=True)
class Received:
    """One message as read from Kafka; `token` is the transport's handle to acknowledge it."""

    spec: TopicSpec
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    token: object = None


@dataclass(frozen=True, slots=True)
class Outbound:
    spec: TopicSpec
    key: bytes | None
    value: bytes
    headers: dict[str, bytes] = field(default_factory=dict)
    #: publish to this partition (None: by key)
    partition: int | None = None


def _key(namespace: str | None, pattern_id: str | None) -> bytes | None:
    """Namespace-keyed; pattern commands' outcomes by pattern id."""
    value = namespace if namespace is not None else pattern_id
    return None if value is None else value.encode()


def result_message(result: Result) -> Outbound:
    headers = {Header.STATUS.value: result.status.encode()}
    if result.namespace is not None:
        headers[Header.NAMESPACE.value] = result.namespace.encode()
    if result.request_id is not None:
        headers[Header.REQUEST_ID.value] = result.request_id.encode()
    return Outbound(RESULTS, _key(result.namespace, result.pattern_id), encode(result), headers)


def event_message(event: Event) -> Outbound:
    headers = {Header.EVENT_TYPE.value: event.type.encode()}
    if event.namespace is not None:
        headers[Header.NAMESPACE.value] = event.namespace.encode()
    if event.pattern_id is not None:
        headers[Header.PATTERN_ID.value] = event.pattern_id.encode()
    if event.pattern_version is not None:
        headers[Header.PATTERN_VERSION.value] = str(event.pattern_version).encode()
    return Outbound(EVENTS, _key(event.namespace, event.pattern_id), encode(event), headers)


def deadletter_message(msg: Received, code: str, reason: str) -> Outbound:
    headers = {
        Header.ERROR_CODE.value: code.encode(),
        Header.ERROR_REASON.value: reason.encode()[:1024],
        Header.SOURCE_TOPIC.value: msg.topic.encode(),
        Header.SOURCE_PARTITION.value: str(msg.partition).encode(),
        Header.SOURCE_OFFSET.value: str(msg.offset).encode(),
    }
    return Outbound(DEADLETTER, msg.key, msg.value or b"", headers)


def failure(
    msg: Received,
    exc: NexusError,
    *,
    namespace: str | None,
    request_id: str | None,
    principal: str | None,
    action: str | None,
    pattern_id: str | None,
    offset: int | None,
    now: datetime,
) -> tuple[Result, list[Outbound]]:
    """A refused or failed request: its error result, the `error` event, and, when it has no
    request_id (nobody can await its result), the message itself in the dead-letter topic."""
    source = SourceRef(topic=msg.topic, partition=msg.partition, offset=msg.offset)
    body = ErrorBody.model_validate(exc.to_dict())
    result = Result(
        request_id=request_id,
        namespace=namespace,
        pattern_id=pattern_id,
        action=action,
        status="error",
        error=body,
        offset=offset,
        source=source,
        processed_at=now,
    )
    event = Event(
        type="error",
        namespace=namespace,
        occurred_at=now,
        pattern_id=pattern_id,
        request_id=request_id,
        principal=principal,
        error=body,
        data={"action": action, "source": source.model_dump()},
    )
    outbound = [result_message(result), event_message(event)]
    if request_id is None:
        outbound.append(deadletter_message(msg, exc.code.value, exc.message))
    return result, outbound
