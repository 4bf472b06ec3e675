"""The pattern registry's logic, without Faust: a pattern command in, a `Reply` out.

Commands arrive on the patterns topic keyed by pattern id, so one registry instance sees every
command of a pattern in order. Storing validates the whole document (every problem at once),
checks access, writes a version to the store, and invalidates the worker's cache; every outcome
is a result, and successes are also events (`pattern_stored`, `pattern_deprecated`,
`pattern_deleted`) that other workers use to invalidate their caches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from nexus_streams.codec import (
    MAX_NESTING_DEPTH,
    Undecodable,
    check_nesting,
    parse_model,
    request_id_of,
    short,
)
from nexus_streams.domain.access import AccessPolicy
from nexus_streams.domain.auth import Grant
from nexus_streams.domain.errors import (
    ErrorCode,
    InternalError,
    NexusError,
    NotFound,
    UnknownAction,
    ValidationFailed,
)
from nexus_streams.domain.patterns import Pattern
from nexus_streams.domain.validation import PatternLimits, validate_pattern
from nexus_streams.messages import (
    PATTERN_ACTIONS,
    DeletePattern,
    DeprecatePattern,
    Event,
    Result,
    SourceRef,
    StorePattern,
    utcnow,
)
from nexus_streams.replies import Received, deadletter_message, event_message, failure, result_message
from nexus_streams.service import Remembered, Reply, RequestLog
from nexus_streams.store.base import PatternStore
from nexus_streams.store.cache import PatternCache
from nexus_streams.store.inclusions import inclusion_resolver

log = logging.getLogger(__name__)

#: the request log is shared with the namespace actor's shape: (scope, request_id)
REQUEST_SCOPE = "patterns"


class PatternRegistry:
    def __init__(
        self,
        store: PatternStore,
        policy: AccessPolicy,
        cache: PatternCache,
        requests: RequestLog,
        limits: PatternLimits | None = None,
        clock: Callable[[], datetime] = utcnow,
        max_nesting_depth: int = MAX_NESTING_DEPTH,
    ) -> None:
        self.store = store
        self.policy = policy
        self.cache = cache
        self.requests = requests
        self.limits = limits or PatternLimits()
        self.clock = clock
        self.max_nesting_depth = max_nesting_depth

    async def handle(self, msg: Received, grant: Grant | None = None) -> Reply:
        """`grant`: what the message's verified token grants (None: authentication is off, and
        the admins are those of `policy`)."""
        policy = self.policy if grant is None else grant.pattern_policy()
        try:
            data = msg.data()
        except Undecodable as exc:
            return Reply(msg, [deadletter_message(msg, "undecodable", exc.reason)])
        key = msg.key.decode("utf-8", errors="replace") if msg.key else None
        request_id = request_id_of(data)
        if request_id is not None:
            previous = self.requests.get(REQUEST_SCOPE, request_id)
            if previous is not None:
                return Reply(msg, [result_message(previous.result)], result=previous.result)
        action = data.get("action") if isinstance(data.get("action"), str) else None
        principal = data.get("principal") if isinstance(data.get("principal"), str) else None
        try:
            check_nesting(data, self.max_nesting_depth)
            command = self._parse(data)
            output, events, pattern_id = await self._run(command, key, policy)
        except NexusError as exc:
            return self._error(msg, request_id, principal, action, key or _document_id(data), exc)
        except Exception as exc:  # a bug must not kill the agent: answer and log it
            log.exception("internal error on %s[%d]@%d", msg.topic, msg.partition, msg.offset)
            internal = InternalError.of(exc)
            return self._error(msg, request_id, principal, action, key, internal)
        reply = self._ok(msg, command, pattern_id, output, events)
        reply.remembered = Remembered.of(reply)
        return reply

    def _parse(self, data: dict[str, Any]) -> StorePattern | DeprecatePattern | DeletePattern:
        action = data.get("action")
        model = PATTERN_ACTIONS.get(action) if isinstance(action, str) else None
        if model is None:
            raise UnknownAction(
                f"unknown action {short(action)} on patterns; use one of: {', '.join(PATTERN_ACTIONS)}",
                field="action",
                allowed=list(PATTERN_ACTIONS),
            )
        command = parse_model(model, data)
        assert isinstance(command, StorePattern | DeprecatePattern | DeletePattern)
        return command

    async def _run(
        self, command: StorePattern | DeprecatePattern | DeletePattern, key: str | None, policy: AccessPolicy
    ) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any], int | None]], str]:
        if isinstance(command, StorePattern):
            return await self._store(command, key, policy)
        pattern_id = _same_id(key, command.pattern_id)
        existing = await self.store.get(pattern_id)
        if isinstance(command, DeprecatePattern):
            policy.check_deprecate(command.principal, existing)
            pattern = await self.store.deprecate(pattern_id)
            self.cache.invalidate(pattern_id)
            output = {"pattern_id": pattern_id, "version": pattern.version, "deprecated": True}
            return output, [("pattern_deprecated", output, pattern.version)], pattern_id
        policy.check_delete(command.principal, existing)
        removed = await self.store.delete(pattern_id)
        self.cache.invalidate(pattern_id)
        output = {"pattern_id": pattern_id, "versions_deleted": removed}
        return output, [("pattern_deleted", output, None)], pattern_id

    async def _store(
        self, command: StorePattern, key: str | None, policy: AccessPolicy
    ) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any], int | None]], str]:
        document = command.pattern
        pattern_id = _same_id(key, document.get("id") if isinstance(document.get("id"), str) else None)
        resolver = await inclusion_resolver(self.store, document, self.limits.max_inclusion_depth)
        size = len(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode())
        pattern = validate_pattern(
            document, resolve_pattern=resolver, limits=self.limits, document_bytes=size
        )
        existing: Pattern | None
        try:
            existing = await self.store.get(pattern.id)
        except NotFound:
            existing = None
        policy.check_store(command.principal, pattern, existing)
        stored = await self.store.put(pattern, command.principal)
        self.cache.invalidate(pattern.id)
        output: dict[str, Any] = {
            "pattern_id": stored.pattern_id,
            "version": stored.version,
            "created": stored.created,
            "kind": stored.pattern.kind.value,
        }
        events: list[tuple[str, dict[str, Any], int | None]] = (
            [("pattern_stored", output, stored.version)] if stored.created else []
        )
        return output, events, pattern_id

    def _ok(
        self,
        msg: Received,
        command: BaseModel,
        pattern_id: str,
        output: dict[str, Any],
        events: list[tuple[str, dict[str, Any], int | None]],
    ) -> Reply:
        now = self.clock()
        request_id = getattr(command, "request_id", None)
        principal = getattr(command, "principal", None)
        result = Result(
            request_id=request_id,
            namespace=None,
            pattern_id=pattern_id,
            action=getattr(command, "action", None),
            status="ok",
            output=output,
            source=SourceRef(topic=msg.topic, partition=msg.partition, offset=msg.offset),
            offset=msg.offset,
            processed_at=now,
        )
        reply = Reply(msg, [result_message(result)], result=result, remember=result)
        for type_, data, version in events:
            event = Event(
                type=type_,
                namespace=None,
                occurred_at=now,
                request_id=request_id,
                principal=principal,
                pattern_id=pattern_id,
                pattern_version=version,
                data=data,
            )
            reply.outbound.append(event_message(event))
        return reply

    def _error(
        self,
        msg: Received,
        request_id: str | None,
        principal: str | None,
        action: str | None,
        pattern_id: str | None,
        exc: NexusError,
    ) -> Reply:
        result, outbound = failure(
            msg,
            exc,
            namespace=None,
            request_id=request_id,
            principal=principal,
            action=action,
            pattern_id=pattern_id,
            offset=msg.offset,
            now=self.clock(),
        )
        reply = Reply(msg, outbound, result=result)
        if request_id is not None and exc.code not in (ErrorCode.INTERNAL_ERROR, ErrorCode.STORE_UNAVAILABLE):
            reply.remember = result  # failures of ours are not remembered: a retry runs again
            reply.remembered = Remembered.of(reply)
        return reply


def _same_id(key: str | None, named: str | None) -> str:
    """The pattern id: the message key, and the id in the command when both are given."""
    if key and named and key != named:
        raise ValidationFailed(
            f"the message key is {short(key)} but the command names pattern {short(named)}; make them equal",
            errors=[{"field": "pattern_id", "message": "does not match the key"}],
        )
    pattern_id = named or key
    if not pattern_id:
        raise ValidationFailed(
            "no pattern id: key the message by pattern id (or name it in the command)",
            errors=[{"field": "pattern_id", "message": "missing"}],
        )
    return pattern_id


def _document_id(data: dict[str, Any]) -> str | None:
    pattern = data.get("pattern")
    if isinstance(pattern, dict) and isinstance(pattern.get("id"), str):
        return str(pattern["id"])
    pattern_id = data.get("pattern_id")
    return pattern_id if isinstance(pattern_id, str) else None
