"""What the namespace actor publishes: results, events and dead letters as outbound messages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from nexus_streams.codec import Undecodable, cut, decode_object, dumps, encode, request_id_of
from nexus_streams.domain.errors import ErrorCode, InternalError, NexusError
from nexus_streams.domain.times import iso
from nexus_streams.messages import DEFAULT_NAMESPACE, ErrorBody, Event, Result, SourceRef
from nexus_streams.topics import DEADLETTER, EVENTS, PATTERNS, REASON_HEADERS, RESULTS, Header, TopicSpec


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
    #: its Kafka headers as (name, value) pairs: the token is read from them, and its dead letter
    #: keeps them (a redrive re-sends them, its count among them)
    headers: Sequence[tuple[str, bytes | None]] = ()
    #: the value decoded (a dict, or the Undecodable it raised), once `data()` has been asked
    _decoded: dict[str, Any] | Undecodable | None = field(default=None, init=False, repr=False, compare=False)

    def data(self) -> dict[str, Any]:
        """The value as a JSON object (`codec.decode_object`), decoded once for the gate and the
        handler that follows it; raises `Undecodable` (each time) when it is not one. Read only:
        every reader of the message gets the same dict."""
        decoded = self._decoded
        if decoded is None:
            try:
                decoded = decode_object(self.value)
            except Undecodable as exc:
                decoded = exc
            object.__setattr__(self, "_decoded", decoded)
        if isinstance(decoded, Undecodable):
            raise Undecodable(decoded.reason)
        return decoded


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


#: the largest result or event published; the producer's request limit is 1 MiB, and a dead
#: letter (the original message, up to 1 MiB, and its headers) needs more: streams/app.py
MAX_OUTBOUND_BYTES = 900 * 1024
#: an error message's characters (some quote the input)
MAX_ERROR_MESSAGE = 2000
#: the longest action, principal or pattern id a failed request's result and events echo (a value
#: of the message's size echoed made a result larger than the results topic takes: never
#: delivered, so the request was never acknowledged and its partition's commits stopped)
MAX_ECHO = 256


def result_message(result: Result) -> Outbound:
    value = encode(result)
    if len(value) > MAX_OUTBOUND_BYTES:
        error = _too_large(len(value))
        result = result.model_copy(update={"status": "error", "output": None, "error": error})
        value = encode(result)
        if len(value) > MAX_OUTBOUND_BYTES:  # what it echoes of the request is that large
            result = result.model_copy(update=_echoes(result))
            value = encode(result)
    headers = {Header.STATUS.value: result.status.encode()}
    if result.namespace is not None:
        headers[Header.NAMESPACE.value] = result.namespace.encode()
    if result.request_id is not None:
        headers[Header.REQUEST_ID.value] = result.request_id.encode()
    return Outbound(RESULTS, _key(result.namespace, result.pattern_id), value, headers)


def _echoes(message: Result | Event) -> dict[str, str]:
    """The fields a result or an event echoes of its request, cut to MAX_ECHO characters."""
    return {
        name: cut(value, MAX_ECHO)
        for name in ("action", "principal", "pattern_id", "request_id", "namespace")
        if isinstance(value := getattr(message, name, None), str)
    }


def event_message(event: Event) -> Outbound:
    value = encode(event)
    if len(value) > MAX_OUTBOUND_BYTES:
        omitted = {"omitted": f"the event's data was {len(value)} bytes; the limit is {MAX_OUTBOUND_BYTES}"}
        event = event.model_copy(update={"relationship": None, "data": omitted})
        value = encode(event)
        if len(value) > MAX_OUTBOUND_BYTES:
            event = event.model_copy(update=_echoes(event))
            value = encode(event)
    headers = {Header.EVENT_TYPE.value: event.type.encode()}
    if event.namespace is not None:
        headers[Header.NAMESPACE.value] = event.namespace.encode()
    if event.pattern_id is not None:
        headers[Header.PATTERN_ID.value] = event.pattern_id.encode()
    if event.pattern_version is not None:
        headers[Header.PATTERN_VERSION.value] = str(event.pattern_version).encode()
    return Outbound(EVENTS, _key(event.namespace, event.pattern_id), value, headers)


def command_event_message(
    type_: str,
    namespace: str,
    occurred_at: datetime,
    request_id: str | None,
    principal: str | None,
    data: Mapping[str, Any],
) -> Outbound:
    """`event_message` of a namespace command's event (`data`: its relationship, and the rest of
    what it says), the same bytes without the model: a batch writes one event per relationship,
    and building and dumping an `Event` took ~13 us of the ~40 us each costs in-process (orjson:
    ~2 us). Values orjson does not write (an int past 64 bits), or an event over the limit, take
    the model's way (tests/unit/test_replies.py compares the two)."""
    fields: dict[str, Any] = {"type": type_, "namespace": namespace, "occurred_at": iso(occurred_at)}
    if request_id is not None:
        fields["request_id"] = request_id
    if principal is not None:
        fields["principal"] = principal
    relationship = data.get("relationship")
    if relationship is not None:
        fields["relationship"] = relationship
    rest = {k: v for k, v in data.items() if k != "relationship"}
    if rest:
        fields["data"] = rest
    try:
        value = dumps(fields)
    except orjson.JSONEncodeError:
        value = b""
    if not value or len(value) > MAX_OUTBOUND_BYTES:
        return event_message(
            Event(
                type=type_,
                namespace=namespace,
                occurred_at=occurred_at,
                request_id=request_id,
                principal=principal,
                relationship=relationship,
                data=rest or None,
            )
        )
    headers = {Header.EVENT_TYPE.value: type_.encode(), Header.NAMESPACE.value: namespace.encode()}
    return Outbound(EVENTS, namespace.encode(), value, headers)


def _too_large(size: int) -> ErrorBody:
    return ErrorBody(
        code=ErrorCode.RESOURCE_LIMIT.value,
        message=f"the request was processed, but its result is {size} bytes as JSON and the limit is "
        f"{MAX_OUTBOUND_BYTES}: ask for less (a lower `limit`, `types`, `max_depth`)",
        details={"bytes": size, "limit": MAX_OUTBOUND_BYTES},
    )


_REASON_HEADERS = frozenset(h.value for h in REASON_HEADERS)


def deadletter_message(msg: Received, code: str, reason: str) -> Outbound:
    given = msg.headers or ()
    original = given.items() if isinstance(given, Mapping) else given
    headers = {k: v for k, v in original if v is not None and k not in _REASON_HEADERS}
    headers |= {
        Header.ERROR_CODE.value: code.encode(),
        Header.ERROR_REASON.value: reason.encode()[:1024],
        Header.SOURCE_TOPIC.value: msg.topic.encode(),
        Header.SOURCE_PARTITION.value: str(msg.partition).encode(),
        Header.SOURCE_OFFSET.value: str(msg.offset).encode(),
    }
    return Outbound(DEADLETTER, msg.key, msg.value or b"", headers)


#: the refusals that also produce an `access_denied` event (abuse monitoring, docs/security.md)
ACCESS_DENIED_CODES = frozenset({ErrorCode.UNAUTHENTICATED, ErrorCode.FORBIDDEN, ErrorCode.RATE_LIMITED})
ACCESS_DENIED = "access_denied"


def denial_reason(error: NexusError | ErrorBody) -> str:
    """The `reason` of a refusal: its `details.reason`, else what its code implies."""
    reason = error.details.get("reason")
    if isinstance(reason, str):
        return reason
    code = error.code.value if isinstance(error, NexusError) else error.code
    return {"unauthenticated": "malformed_token", "rate_limited": "rate_limited"}.get(code, "not_permitted")


def access_denied_event(
    body: ErrorBody,
    *,
    namespace: str | None,
    request_id: str | None,
    principal: str | None,
    action: str | None,
    pattern_id: str | None,
    source: SourceRef,
    now: datetime,
) -> Event:
    """Who was refused what, and why: `principal` is the verified one (none when the request was
    not authenticated; the field it claimed is in `error.details.claimed_principal`)."""
    data: dict[str, Any] = {
        "action": action,
        "reason": denial_reason(body),
        "code": body.code,
        "source": source.model_dump(),
    }
    return Event(
        type=ACCESS_DENIED,
        namespace=namespace,
        occurred_at=now,
        pattern_id=pattern_id,
        request_id=request_id,
        principal=principal,
        error=body,
        data=data,
    )


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
    """A refused or failed request: its error result, the `error` event (and an `access_denied`
    event when it was refused: unauthenticated, forbidden, rate_limited), and the message itself in
    the dead-letter topic when it has no request_id (nobody can await its result) or when the
    service failed on it (an operator looks at it, and can redrive it)."""
    source = SourceRef(topic=msg.topic, partition=msg.partition, offset=msg.offset)
    action, principal, pattern_id = (
        None if v is None else cut(v, MAX_ECHO) for v in (action, principal, pattern_id)
    )
    body = ErrorBody.model_validate(exc.to_dict())
    if len(body.message) > MAX_ERROR_MESSAGE:
        body = body.model_copy(update={"message": body.message[: MAX_ERROR_MESSAGE - 3] + "..."})
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
    if exc.code in ACCESS_DENIED_CODES:
        denied = access_denied_event(
            body,
            namespace=namespace,
            request_id=request_id,
            principal=principal,
            action=action,
            pattern_id=pattern_id,
            source=source,
            now=now,
        )
        outbound.append(event_message(denied))
    if request_id is None or exc.code is ErrorCode.INTERNAL_ERROR:
        outbound.append(deadletter_message(msg, exc.code.value, exc.reason))
    return result, outbound


def unforeseen(msg: Received, exc: BaseException, now: datetime) -> tuple[Result, list[Outbound]]:
    """The outcome of a message whose handling raised what no handler caught: `internal_error`,
    with what can still be read of the message (its request id, principal, action)."""
    try:
        data = msg.data()
    except Undecodable:
        data = {}
    request_id = request_id_of(data)
    principal = data.get("principal") if isinstance(data.get("principal"), str) else None
    action = data.get("action") if isinstance(data.get("action"), str) else None
    key = msg.key.decode("utf-8", errors="replace")[:128] if msg.key else None
    by_namespace = msg.spec is not PATTERNS
    return failure(
        msg,
        InternalError.of(exc),
        namespace=(key or DEFAULT_NAMESPACE) if by_namespace else None,
        request_id=request_id,
        principal=principal[:256] if principal else None,
        action=action[:64] if action else None,
        pattern_id=None if by_namespace else key,
        offset=None,
        now=now,
    )
