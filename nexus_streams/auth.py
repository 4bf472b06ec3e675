"""The gate every inbound message passes before it is handled (docs/security.md).

`Gate.admit(msg)` is the one call per message: it reads the `authorization` header, verifies the
token and checks the request's scope (`domain/auth.py`), applies the rate limit, and answers
either with the reply that refuses the message or with the `Grant` the handlers check the rest
with (pattern rules, the scopes of a pattern's steps). A refused message has no effect: its
reply is an error result (a dead letter when it has no request id), an `error` and an
`access_denied` event; it is not remembered under its request id, so the same request sent
again with a valid token runs.

With NEXUS_AUTH=off and no rate limit, `admit` does nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from nexus_streams.codec import Undecodable, request_id_of
from nexus_streams.domain.auth import (
    AUTHORIZATION_HEADER,
    AccessRequest,
    AuthMode,
    DenialReason,
    Grant,
    RateLimiter,
    Verifier,
    authorize,
    is_worker_command,
    mint_token,
    parse_jwks,
)
from nexus_streams.domain.errors import NexusError, Unauthenticated
from nexus_streams.messages import DEFAULT_NAMESPACE, NAMESPACE_REGEX, utcnow
from nexus_streams.replies import Received, failure
from nexus_streams.service import Reply
from nexus_streams.settings import Settings
from nexus_streams.topics import PATTERNS, RELATIONSHIPS

NAMESPACE = re.compile(NAMESPACE_REGEX)


@dataclass(frozen=True, slots=True)
class Admission:
    #: publish this instead of handling the message
    denied: Reply | None = None
    #: what the verified token grants (None: authentication is off, or a worker's own command)
    grant: Grant | None = None


ADMITTED = Admission()


class Gate:
    def __init__(
        self,
        mode: AuthMode = AuthMode.OFF,
        verifier: Verifier | None = None,
        limiter: RateLimiter | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if mode is AuthMode.REQUIRED and verifier is None:
            raise ValueError("NEXUS_AUTH=required needs NEXUS_AUTH_JWKS and/or NEXUS_AUTH_HS256_SECRET")
        self.mode = mode
        self.verifier = verifier
        self.limiter = limiter
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> Gate:
        return cls(settings.auth, verifier_from(settings), limiter_from(settings))

    @property
    def idle(self) -> bool:
        return self.mode is AuthMode.OFF and self.limiter is None

    def admit(self, msg: Received) -> Admission:
        if self.idle:
            return ADMITTED
        try:
            data = msg.data()  # decoded once: the handler reads the same
        except Undecodable:
            data = None  # refused without a valid token, else dead-lettered by its handler
        fields = data or {}
        action = fields.get("action") if isinstance(fields.get("action"), str) else None
        claimed = fields.get("principal") if isinstance(fields.get("principal"), str) else None
        topic = msg.spec.name
        if data is not None and is_worker_command(topic, action):
            return ADMITTED
        namespace = None if msg.spec is PATTERNS else namespace_of(msg.key)
        grant: Grant | None = None
        try:
            if self.mode is AuthMode.REQUIRED:
                assert self.verifier is not None
                request = AccessRequest(topic, namespace, claimed, action)
                grant = authorize(authorization_of(msg.headers), request, self.verifier, self.limiter)
            elif self.limiter is not None:
                self.limiter.check(claimed or "")
        except NexusError as exc:
            principal = claimed  # with authentication off, the field is all there is
            if self.mode is AuthMode.REQUIRED:
                verified = None if isinstance(exc, Unauthenticated) else exc.details.get("principal")
                principal = verified if isinstance(verified, str) else None
                if claimed is not None and claimed != principal:
                    exc.details.setdefault("claimed_principal", claimed[:256])
            return Admission(denied=self._refusal(msg, exc, fields, namespace, action, principal))
        return Admission(grant=grant)

    def _refusal(
        self,
        msg: Received,
        exc: NexusError,
        data: dict[str, object],
        namespace: str | None,
        action: str | None,
        principal: str | None,
    ) -> Reply:
        by_pattern = msg.spec is PATTERNS
        key = msg.key.decode("utf-8", errors="replace")[:128] if msg.key else None
        result, outbound = failure(
            msg,
            exc,
            namespace=None if by_pattern else (namespace or DEFAULT_NAMESPACE),
            request_id=request_id_of(data),
            principal=principal,
            action=action[:64] if action else None,
            pattern_id=key if by_pattern else None,
            offset=msg.offset if msg.spec is RELATIONSHIPS or by_pattern else None,
            now=self.clock(),
        )
        reply = Reply(msg, outbound, namespace=namespace or DEFAULT_NAMESPACE, result=result)
        if msg.spec is RELATIONSHIPS:
            # every message of the relationships topic counts as applied, refused or not
            reply.progress = (msg.partition, msg.offset)
        return reply


def namespace_of(key: bytes | None) -> str | None:
    """The namespace a message's key names (None: no namespace; its handler dead-letters it)."""
    if not key:
        return DEFAULT_NAMESPACE
    try:
        namespace = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return namespace if NAMESPACE.fullmatch(namespace) else None


def authorization_of(headers: Sequence[tuple[str, bytes | None]]) -> str | None:
    """The value of the `authorization` header (its name in any case); twice is refused."""
    values = [v for name, v in headers if name.lower() == AUTHORIZATION_HEADER and v is not None]
    if not values:
        return None
    if len(values) > 1:
        raise Unauthenticated(
            "unauthenticated: more than one authorization header",
            reason=DenialReason.MALFORMED_TOKEN.value,
        )
    try:
        return values[0].decode("utf-8") if isinstance(values[0], bytes) else str(values[0])
    except UnicodeDecodeError:
        raise Unauthenticated(
            "unauthenticated: the authorization header is not UTF-8",
            reason=DenialReason.MALFORMED_TOKEN.value,
        ) from None


# -- from settings -----------------------------------------------------------------------------


def verifier_from(settings: Settings) -> Verifier | None:
    """The token verifier NEXUS_AUTH_* describe (None with NEXUS_AUTH=off); a JWKS file that
    cannot be read or used stops the worker here, with what is wrong."""
    if settings.auth is AuthMode.OFF:
        return None
    keys = []
    if settings.auth_jwks:
        path = Path(settings.auth_jwks)
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"NEXUS_AUTH_JWKS: cannot read {path}: {exc}") from None
        if not isinstance(document, dict):
            raise ValueError(f"NEXUS_AUTH_JWKS: {path} is not a JWKS object")
        try:
            keys = parse_jwks(document)
        except ValueError as exc:
            raise ValueError(f"NEXUS_AUTH_JWKS: {path}: {exc}") from None
    secret = settings.auth_hs256_secret
    return Verifier(
        keys,
        secret.get_secret_value().encode() if secret is not None else None,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        clock_skew_s=settings.auth_clock_skew_s,
    )


def limiter_from(settings: Settings) -> RateLimiter | None:
    if settings.rate_limit_per_s <= 0:
        return None
    return RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)


# -- development tokens --------------------------------------------------------------------------

_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_ttl(text: str) -> float:
    """`90`, `45s`, `30m`, `1h`, `7d` -> seconds."""
    match = _DURATION.match(text)
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"{text!r} is not a duration such as 90, 45s, 30m, 1h or 7d")
    return float(match[1]) * _UNITS_S[match[2] or "s"]


def development_token(settings: Settings, subject: str, scope: str, ttl_s: float, now: float) -> str:
    """A token signed with NEXUS_AUTH_HS256_SECRET, with the configured issuer and audience."""
    secret = settings.auth_hs256_secret
    if secret is None:
        raise ValueError("NEXUS_AUTH_HS256_SECRET is not set: a development token is signed with it")
    # the worker refuses a shorter secret: refuse to mint what it would refuse
    Verifier((), secret.get_secret_value().encode())
    return mint_token(
        secret.get_secret_value().encode(),
        subject,
        scope,
        ttl_s,
        now=now,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
    )
