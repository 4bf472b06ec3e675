"""The namespace actor's logic, without Faust: one inbound message in, a `Reply` out.

The Faust agent (streams/agents.py) feeds messages in the order of their partition, applies the
`Reply.changes` to its changelog-backed table and publishes `Reply.outbound`. Keeping this free of
Faust makes every outcome testable without a broker.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from nexus_streams.codec import (
    Undecodable,
    decode_object,
    encode,
    parse_action,
    parse_model,
    request_id_of,
)
from nexus_streams.domain.errors import (
    ErrorCode,
    NexusError,
    NotFound,
    UnknownAction,
    ValidationFailed,
)
from nexus_streams.domain.graph import (
    Change,
    DomainEvent,
    Graph,
    Outcome,
    Put,
    plan_create,
    plan_delete,
)
from nexus_streams.domain.relationships import Relationship, parse_type
from nexus_streams.messages import (
    DEFAULT_NAMESPACE,
    NAMESPACE_REGEX,
    RELATIONSHIP_ACTIONS,
    CreateRelationship,
    DeleteRelationship,
    ErrorBody,
    Event,
    ExecutionRequest,
    GraphQuery,
    Inbound,
    Result,
    SourceRef,
    utcnow,
)
from nexus_streams.topics import (
    DEADLETTER,
    EVENTS,
    EXECUTIONS,
    QUERIES,
    RELATIONSHIPS,
    RESULTS,
    Header,
    TopicSpec,
)

log = logging.getLogger(__name__)

NAMESPACE_PATTERN = re.compile(NAMESPACE_REGEX.strip("^$"))

QUERY_ACTIONS: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Received:
    """One message as read from Kafka."""

    spec: TopicSpec
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Outbound:
    spec: TopicSpec
    key: bytes | None
    value: bytes
    headers: dict[str, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class Reply:
    outbound: list[Outbound] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    #: the result to remember under its request id, for answering duplicates
    remember: Result | None = None
    namespace: str = DEFAULT_NAMESPACE
    result: Result | None = None


class RequestLog(Protocol):
    """Results already given, by (namespace, request_id): what makes redelivery harmless."""

    def get(self, namespace: str, request_id: str) -> Result | None: ...


class NamespaceService:
    """Owns the live graphs of the namespaces this worker is assigned."""

    def __init__(self, requests: RequestLog, clock: Callable[[], datetime] = utcnow) -> None:
        self.requests = requests
        self.clock = clock
        self.graphs: dict[str, Graph] = {}

    def graph(self, namespace: str) -> Graph:
        graph = self.graphs.get(namespace)
        if graph is None:
            graph = self.graphs[namespace] = Graph(namespace)
        return graph

    def load(self, relationships: Iterable[Relationship]) -> None:
        """Rebuild the live graphs from the durable store (after recovery)."""
        self.graphs.clear()
        for rel in relationships:
            self.graph(rel.namespace).apply([Put(rel)])

    def handle(self, msg: Received) -> Reply:
        source = SourceRef(topic=msg.topic, partition=msg.partition, offset=msg.offset)
        try:
            data = decode_object(msg.value)
        except Undecodable as exc:
            return self._deadletter(msg, "undecodable", exc.reason)
        namespace, key_error = _namespace_of(msg.key)
        request_id = request_id_of(data)
        if key_error is not None:
            return self._deadletter(msg, "invalid_key", key_error)
        if request_id is not None:
            previous = self.requests.get(namespace, request_id)
            if previous is not None:
                return self._replay(previous)
        action = data.get("action") if isinstance(data.get("action"), str) else None
        try:
            command = self._parse(msg.spec, data)
            if command.namespace is not None and command.namespace != namespace:
                raise ValidationFailed(
                    f"field 'namespace' is {command.namespace!r} but the message key is "
                    f"{namespace!r}; leave the field out or make them equal",
                    errors=[{"field": "namespace", "message": "does not match the key"}],
                )
            outcome = self._dispatch(namespace, command)
        except NexusError as exc:
            return self._error(msg, namespace, request_id, action, data, source, exc)
        except Exception as exc:  # a bug must not kill the agent: answer and log it
            log.exception("internal error handling %s", source)
            internal = NexusError(
                f"internal error: {type(exc).__name__}; the request may be retried"
            )
            return self._error(msg, namespace, request_id, action, data, source, internal)
        return self._ok(namespace, command, outcome, source)

    def _parse(self, spec: TopicSpec, data: dict[str, Any]) -> Inbound:
        if spec is RELATIONSHIPS:
            return parse_action(RELATIONSHIP_ACTIONS, data, "relationships")
        if spec is QUERIES:
            query = parse_model(GraphQuery, data)
            if query.action not in QUERY_ACTIONS:
                raise UnknownAction(
                    f"unknown query action {query.action!r}; this version answers: "
                    f"{', '.join(QUERY_ACTIONS) or 'none yet'}",
                    field="action",
                    allowed=list(QUERY_ACTIONS),
                )
            return query
        if spec is EXECUTIONS:
            return parse_model(ExecutionRequest, data)
        raise ValueError(f"the namespace actor does not read {spec.name}")

    def _dispatch(self, namespace: str, command: Inbound) -> Outcome:
        graph = self.graph(namespace)
        now = self.clock()
        if isinstance(command, CreateRelationship):
            return plan_create(
                graph,
                command.source,
                parse_type(command.type),
                command.target,
                command.metadata,
                now,
                command.expires_at,
            )
        if isinstance(command, DeleteRelationship):
            return plan_delete(graph, command.source, parse_type(command.type), command.target)
        if isinstance(command, ExecutionRequest):
            raise NotFound(
                f"pattern {command.pattern_id!r} not found", pattern_id=command.pattern_id
            )
        raise UnknownAction(f"no handler for {type(command).__name__}")

    def _ok(self, namespace: str, command: Inbound, outcome: Outcome, source: SourceRef) -> Reply:
        self.graph(namespace).apply(outcome.changes)
        now = self.clock()
        result = Result(
            request_id=command.request_id,
            namespace=namespace,
            action=getattr(command, "action", "execute"),
            status="ok",
            output=outcome.output,
            offset=source.offset,
            source=source,
            processed_at=now,
        )
        reply = Reply(changes=outcome.changes, remember=result, namespace=namespace, result=result)
        reply.outbound.append(_result_message(result))
        for event in outcome.events:
            reply.outbound.append(
                _event_message(_event(event, namespace, now, command.request_id, command.principal))
            )
        return reply

    def _error(
        self,
        msg: Received,
        namespace: str,
        request_id: str | None,
        action: str | None,
        data: dict[str, Any],
        source: SourceRef,
        exc: NexusError,
    ) -> Reply:
        now = self.clock()
        body = ErrorBody.model_validate(exc.to_dict())
        result = Result(
            request_id=request_id,
            namespace=namespace,
            action=action,
            status="error",
            error=body,
            offset=source.offset,
            source=source,
            processed_at=now,
        )
        principal = data.get("principal") if isinstance(data.get("principal"), str) else None
        event = Event(
            type="error",
            namespace=namespace,
            occurred_at=now,
            request_id=request_id,
            principal=principal,
            error=body,
            data={"action": action, "source": source.model_dump()},
        )
        reply = Reply(namespace=namespace, result=result)
        reply.outbound += [_result_message(result), _event_message(event)]
        if request_id is None:
            # nobody can await a result without a request id: keep the message itself too
            reply.outbound.append(_deadletter_message(msg, exc.code.value, exc.message))
        elif exc.code is not ErrorCode.INTERNAL_ERROR:
            reply.remember = result  # a failure of ours is not remembered: a retry runs again
        return reply

    def _replay(self, previous: Result) -> Reply:
        return Reply(
            outbound=[_result_message(previous)], namespace=previous.namespace, result=previous
        )

    def _deadletter(self, msg: Received, code: str, reason: str) -> Reply:
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s", msg.topic, msg.partition, msg.offset, code, reason
        )
        return Reply(outbound=[_deadletter_message(msg, code, reason)])


def _namespace_of(key: bytes | None) -> tuple[str, str | None]:
    if not key:
        return DEFAULT_NAMESPACE, None
    try:
        namespace = key.decode("utf-8")
    except UnicodeDecodeError:
        return DEFAULT_NAMESPACE, "message key is not UTF-8; the key is the namespace"
    if not NAMESPACE_PATTERN.fullmatch(namespace):
        return DEFAULT_NAMESPACE, (
            f"message key {namespace[:140]!r} is not a namespace: use 1-128 characters "
            "of letters, digits and . _ : -"
        )
    return namespace, None


def _event(
    event: DomainEvent, namespace: str, now: datetime, request_id: str, principal: str
) -> Event:
    return Event(
        type=event.type,
        namespace=namespace,
        occurred_at=now,
        request_id=request_id,
        principal=principal,
        relationship=event.data.get("relationship"),
        data={k: v for k, v in event.data.items() if k != "relationship"} or None,
    )


def _result_message(result: Result) -> Outbound:
    headers = {
        Header.STATUS.value: result.status.encode(),
        Header.NAMESPACE.value: result.namespace.encode(),
    }
    if result.request_id is not None:
        headers[Header.REQUEST_ID.value] = result.request_id.encode()
    return Outbound(RESULTS, result.namespace.encode(), encode(result), headers)


def _event_message(event: Event) -> Outbound:
    headers = {
        Header.EVENT_TYPE.value: event.type.encode(),
        Header.NAMESPACE.value: event.namespace.encode(),
    }
    if event.pattern_id is not None:
        headers[Header.PATTERN_ID.value] = event.pattern_id.encode()
    return Outbound(EVENTS, event.namespace.encode(), encode(event), headers)


def _deadletter_message(msg: Received, code: str, reason: str) -> Outbound:
    headers = {
        Header.ERROR_CODE.value: code.encode(),
        Header.ERROR_REASON.value: reason.encode()[:1024],
        Header.SOURCE_TOPIC.value: msg.topic.encode(),
        Header.SOURCE_PARTITION.value: str(msg.partition).encode(),
        Header.SOURCE_OFFSET.value: str(msg.offset).encode(),
    }
    return Outbound(DEADLETTER, msg.key, msg.value or b"", headers)
