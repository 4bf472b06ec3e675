"""Who asks, proven (decision 10, docs/security.md): tokens, scopes and rate limits, without I/O.

With authentication required, a request carries a JWT in its Kafka header `authorization`
(`Bearer <token>`). `Verifier.verify` checks it against the keys of a JWKS document (RS256, ES256,
EdDSA, ...) and/or a shared HS256 secret, and gives a `Grant`: the token's `sub` is the principal,
its space-separated `scope` claim what it may do. `authorize` adds the checks of one request: its
`principal` field, when present, must be the `sub`, and its topic's scope must be granted.

| scope | grants |
|---|---|
| `relationships:write:<glob>` | relationship commands in the namespaces the glob matches |
| `queries:read:<glob>` | graph queries there |
| `executions:run:<glob>` | pattern executions there (see below) |
| `patterns:write` | storing, deprecating and deleting one's own patterns |
| `patterns:admin` | the same for system and everyone's patterns; executing every pattern |

An execution also obeys the pattern's own `execute_permission`, and its steps run with the
executor's rights: steps that write (read) need `relationships:write` (`queries:read`) in the
execution's namespace, those of included patterns and compensations too.

A glob is `fnmatch`'s (`*`, `?`, `[...]`), matched against the whole namespace: `tenant-a.*`,
`*` (every namespace). A namespace scope without a glob grants nothing.

Time is injected (`clock`, seconds since the epoch), so verification and rate limits are
reproducible in tests.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt

from nexus_streams.domain.access import AccessPolicy
from nexus_streams.domain.errors import Forbidden, NexusError, RateLimited, Unauthenticated
from nexus_streams.domain.patterns import INCLUDE_STEP, Pattern
from nexus_streams.domain.steps import Category, step_kind


class AuthMode(StrEnum):
    #: development: the principal is the request's `principal` field, as its sender wrote it
    OFF = "off"
    #: every request carries a verified token: its `sub` is the principal, its scopes its rights
    REQUIRED = "required"


class DenialReason(StrEnum):
    """Why a request was refused: `error.details.reason`, the `reason` label of
    `nexus_access_denied_total` and of the `access_denied` event (a closed set)."""

    #: no `authorization` header
    MISSING_TOKEN = "missing_token"  # noqa: S105 - a reason, not a secret
    #: the header is not `Bearer <jwt>`, appears twice, or the JWT cannot be decoded
    MALFORMED_TOKEN = "malformed_token"  # noqa: S105
    #: `alg: none`, or an algorithm no configured key allows
    ALGORITHM_REFUSED = "algorithm_refused"
    #: the token names a key (`kid`) the JWKS does not have
    UNKNOWN_KEY = "unknown_key"
    #: the signature does not verify with the key
    BAD_SIGNATURE = "bad_signature"
    #: `exp` has passed (beyond the clock skew)
    EXPIRED = "expired"
    #: `nbf` or `iat` is in the future (beyond the clock skew)
    NOT_YET_VALID = "not_yet_valid"
    #: `iss` is not NEXUS_AUTH_ISSUER
    WRONG_ISSUER = "wrong_issuer"
    #: `aud` does not include NEXUS_AUTH_AUDIENCE
    WRONG_AUDIENCE = "wrong_audience"
    #: `exp` or `sub` is missing, or a claim has the wrong type
    INVALID_CLAIMS = "invalid_claims"
    #: the request's `principal` field is not the token's `sub`
    PRINCIPAL_MISMATCH = "principal_mismatch"
    #: the token lacks the scope the action needs (`details.missing_scope`)
    MISSING_SCOPE = "missing_scope"
    #: the pattern rules refuse it (owner, system pattern, execute permission)
    NOT_PERMITTED = "not_permitted"
    #: over the principal's rate limit
    RATE_LIMITED = "rate_limited"


#: the Kafka header of the token, and its scheme (RFC 6750, case-insensitive)
AUTHORIZATION_HEADER = "authorization"
BEARER = "bearer"
HS256 = "HS256"
#: what a JWKS key may sign with; symmetric keys belong in NEXUS_AUTH_HS256_SECRET
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
#: RFC 7518 3.2: an HS256 key is at least as long as the hash
MIN_SECRET_BYTES = 32
#: a longer header is refused before it is parsed
MAX_TOKEN_BYTES = 8 * 1024
MAX_PRINCIPAL = 256
#: verified tokens remembered (their signature is not checked again; their times are)
VERIFIED_CACHE_SIZE = 4096

RELATIONSHIPS_WRITE = "relationships:write"
QUERIES_READ = "queries:read"
EXECUTIONS_RUN = "executions:run"
PATTERNS_WRITE = "patterns:write"
PATTERNS_ADMIN = "patterns:admin"
#: the namespace scopes, which take a glob
NAMESPACE_SCOPES = (RELATIONSHIPS_WRITE, QUERIES_READ, EXECUTIONS_RUN)
#: input topic -> the scope its requests need (namespace scopes get `:<namespace>`)
TOPIC_SCOPES = {
    "relationships": RELATIONSHIPS_WRITE,
    "queries": QUERIES_READ,
    "executions": EXECUTIONS_RUN,
    "patterns": PATTERNS_WRITE,
}
#: commands a worker sends itself, without a token: each can only do what the worker would do
#: anyway (remove relationships past their `expires_at`; go on with a waiting execution once
#: its time has come; run a standing query's `on_match` trigger that its subscription holds, as
#: its subscriber: docs/standing-queries.md), so they need none
WORKER_COMMANDS = frozenset(
    {("relationships", "expire"), ("executions", "resume"), ("executions", "trigger")}
)


def is_worker_command(topic: str, action: str | None) -> bool:
    return (topic, action) in WORKER_COMMANDS


def scope_needed(topic: str, namespace: str | None) -> str:
    """The scope a request on `topic` needs: `relationships:write:alice`, `patterns:write`."""
    base = TOPIC_SCOPES[topic]
    if base in NAMESPACE_SCOPES:
        if namespace is None:
            raise ValueError(f"a {topic} request needs its namespace")
        return f"{base}:{namespace}"
    return base


class Scopes:
    """The scopes a token grants: exact ones, and namespace globs by scope."""

    __slots__ = ("_globs", "granted")

    def __init__(self, granted: Iterable[str]) -> None:
        self.granted = frozenset(granted)
        globs: dict[str, list[str]] = {}
        for scope in self.granted:
            resource, _, rest = scope.partition(":")
            verb, _, glob = rest.partition(":")
            base = f"{resource}:{verb}"
            if base in NAMESPACE_SCOPES and glob:
                globs.setdefault(base, []).append(glob)
        self._globs = {base: tuple(found) for base, found in globs.items()}

    @classmethod
    def parse(cls, claim: str) -> Scopes:
        return cls(claim.split())

    def allows(self, needed: str) -> bool:
        """Whether `needed` (a concrete scope, as `scope_needed` gives) is granted."""
        if needed in self.granted:
            return True
        if needed == PATTERNS_WRITE:
            return PATTERNS_ADMIN in self.granted
        resource, _, rest = needed.partition(":")
        verb, _, namespace = rest.partition(":")
        globs = self._globs.get(f"{resource}:{verb}", ())
        return bool(namespace) and any(fnmatch.fnmatchcase(namespace, glob) for glob in globs)

    def __repr__(self) -> str:
        return f"Scopes({' '.join(sorted(self.granted))!r})"


@dataclass(frozen=True, slots=True)
class Grant:
    """A verified token: who (`principal`, its `sub`) and what it may do."""

    principal: str
    scopes: Scopes
    #: `exp`, seconds since the epoch
    expires_at: float

    def allows(self, scope: str) -> bool:
        return self.scopes.allows(scope)

    def require(self, scope: str, **details: Any) -> None:
        """Raise `forbidden` with the missing scope in its details unless `scope` is granted."""
        if not self.scopes.allows(scope):
            raise Forbidden(
                f"{self.principal!r} lacks the scope {scope!r}",
                reason=DenialReason.MISSING_SCOPE.value,
                missing_scope=scope,
                principal=self.principal,
                **details,
            )

    @property
    def is_pattern_admin(self) -> bool:
        return PATTERNS_ADMIN in self.scopes.granted

    def pattern_policy(self) -> AccessPolicy:
        """The pattern rules for this principal: an admin when the token has `patterns:admin`
        (NEXUS_ADMINS does not count when authentication is required)."""
        admins = frozenset({self.principal}) if self.is_pattern_admin else frozenset()
        return AccessPolicy(admins, admin_scope=PATTERNS_ADMIN)

    def require_steps(
        self, pattern: Pattern, namespace: str, resolve: Callable[[str, int | None], Pattern]
    ) -> None:
        """A pattern's steps run with the executor's rights: every scope its steps (those of the
        patterns it includes and the compensations too) need in `namespace` must be granted."""
        for scope, step in step_scopes(pattern, namespace, resolve):
            self.require(scope, pattern_id=pattern.id, step=step)


def step_scopes(
    pattern: Pattern, namespace: str, resolve: Callable[[str, int | None], Pattern]
) -> list[tuple[str, str]]:
    """(scope, step path) for the first step of each kind of right the pattern's steps need in
    `namespace`: writes need `relationships:write`, reads `queries:read`. Included patterns are
    walked (an included pattern that cannot be resolved is skipped: its step fails anyway)."""
    needed: dict[str, str] = {}
    seen: set[tuple[str, int]] = set()

    def walk(current: Pattern, prefix: str) -> None:
        if (current.id, current.version) in seen:
            return
        seen.add((current.id, current.version))
        for step in current.steps:
            kinds = [(step.type, step.action, step.id)]
            if step.compensation is not None:
                kinds.append((step.compensation.type, step.compensation.action, f"{step.id}#compensation"))
            for type_, action, name in kinds:
                try:
                    category = step_kind(type_, action).category
                except NexusError:
                    continue  # an unknown step fails validation; nothing runs
                scope = {Category.WRITE: RELATIONSHIPS_WRITE, Category.READ: QUERIES_READ}.get(category)
                if scope is not None:
                    needed.setdefault(f"{scope}:{namespace}", prefix + name)
            if step.kind == INCLUDE_STEP:
                version = step.parameters.get("version")
                try:
                    included = resolve(
                        str(step.parameters.get("pattern_id")), version if isinstance(version, int) else None
                    )
                except NexusError:
                    continue
                walk(included, f"{prefix}{step.id}/")

    walk(pattern, "")
    return list(needed.items())


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """What `authorize` needs to know of one request."""

    #: its input topic's name: relationships, queries, executions, patterns
    topic: str
    #: the request's namespace (None on the patterns topic, or when its key is no namespace)
    namespace: str | None
    #: its `principal` field, when it has one
    claimed_principal: str | None = None
    action: str | None = None


def authorize(
    authorization: str | None,
    request: AccessRequest,
    verifier: Verifier,
    limiter: RateLimiter | None = None,
) -> Grant:
    """The grant of a request, or `unauthenticated` / `forbidden` / `rate_limited` raised: a valid
    token, within its principal's rate limit, whose `sub` is the `principal` field (when there is
    one) and whose scopes include the one the request's topic needs."""
    grant = verifier.verify(authorization)
    if limiter is not None:
        limiter.check(grant.principal)
    claimed = request.claimed_principal
    if claimed is not None and claimed != grant.principal:
        raise Forbidden(
            f"the request's principal {claimed[:MAX_PRINCIPAL]!r} is not the token's subject "
            f"{grant.principal!r}: send the token of the principal you name",
            reason=DenialReason.PRINCIPAL_MISMATCH.value,
            principal=grant.principal,
            claimed_principal=claimed[:MAX_PRINCIPAL],
        )
    if request.topic in TOPIC_SCOPES and (
        request.namespace is not None or TOPIC_SCOPES[request.topic] not in NAMESPACE_SCOPES
    ):
        grant.require(scope_needed(request.topic, request.namespace), action=request.action)
    return grant


# -- tokens ----------------------------------------------------------------------------------


def bearer_token(authorization: str | None) -> str:
    """The JWT of an `authorization` header value (`Bearer <jwt>`)."""
    if authorization is None or not authorization.strip():
        raise _unauthenticated(DenialReason.MISSING_TOKEN, "no token: send `authorization: Bearer <jwt>`")
    if len(authorization) > MAX_TOKEN_BYTES:
        raise _unauthenticated(
            DenialReason.MALFORMED_TOKEN, f"the authorization header is over {MAX_TOKEN_BYTES} bytes"
        )
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != BEARER or not token or " " in token:
        raise _unauthenticated(DenialReason.MALFORMED_TOKEN, "the authorization header is not `Bearer <jwt>`")
    return token


def authorization_header(token: str) -> tuple[str, bytes]:
    """The Kafka header a producer sends its token in."""
    return (AUTHORIZATION_HEADER, f"Bearer {token}".encode())


def _unauthenticated(reason: DenialReason, message: str, **details: Any) -> Unauthenticated:
    return Unauthenticated(f"unauthenticated: {message}", reason=reason.value, **details)


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: str
    scopes: Scopes
    expires_at: float
    not_before: float | None


class Verifier:
    """Checks tokens against JWKS keys and/or an HS256 secret.

    The algorithm comes from the key, never from the token alone: a JWKS key signs with its own
    `alg` (or the one its type implies: RSA RS256, P-256 ES256, Ed25519 EdDSA), and only
    an HS256 token is checked with the secret. So `alg: none` is refused, and so is an HS256
    token signed with an RSA public key (algorithm confusion): the public key is never an HMAC
    secret here."""

    def __init__(
        self,
        keys: Sequence[jwt.PyJWK] = (),
        hs256_secret: bytes | None = None,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        clock_skew_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        cache_size: int = VERIFIED_CACHE_SIZE,
    ) -> None:
        if not keys and hs256_secret is None:
            raise ValueError("no keys: give a JWKS (NEXUS_AUTH_JWKS) and/or NEXUS_AUTH_HS256_SECRET")
        if hs256_secret is not None and len(hs256_secret) < MIN_SECRET_BYTES:
            raise ValueError(f"NEXUS_AUTH_HS256_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        for key in keys:
            if key.algorithm_name not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(
                    f"JWKS key {key.key_id!r} is for {key.algorithm_name}; a JWKS holds public keys "
                    f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))}), an HS256 secret goes in "
                    "NEXUS_AUTH_HS256_SECRET"
                )
        self.keys = tuple(keys)
        self.hs256_secret = hs256_secret
        self.issuer = issuer
        self.audience = audience
        self.clock_skew_s = clock_skew_s
        self.clock = clock
        self.cache_size = cache_size
        self._verified: OrderedDict[str, _Verified] = OrderedDict()

    @classmethod
    def from_jwks(cls, document: Mapping[str, Any], **kwargs: Any) -> Verifier:
        return cls(parse_jwks(document), **kwargs)

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms some configured key allows."""
        found = {key.algorithm_name for key in self.keys}
        return frozenset(found | ({HS256} if self.hs256_secret is not None else set()))

    def verify(self, authorization: str | None) -> Grant:
        token = bearer_token(authorization)
        verified = self._verified.get(token)
        if verified is None:
            verified = self._check_signed(token)
            self._verified[token] = verified
            if len(self._verified) > self.cache_size:
                self._verified.popitem(last=False)
        self._check_times(verified)
        return Grant(verified.principal, verified.scopes, verified.expires_at)

    def _check_times(self, verified: _Verified) -> None:
        now = self.clock()
        if verified.expires_at <= now - self.clock_skew_s:
            raise _unauthenticated(
                DenialReason.EXPIRED,
                f"the token expired at {verified.expires_at:.0f} (now {now:.0f})",
                expired_at=verified.expires_at,
            )
        if verified.not_before is not None and verified.not_before > now + self.clock_skew_s:
            raise _unauthenticated(
                DenialReason.NOT_YET_VALID,
                f"the token is valid from {verified.not_before:.0f} (now {now:.0f})",
                not_before=verified.not_before,
            )

    def _check_signed(self, token: str) -> _Verified:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _unauthenticated(DenialReason.MALFORMED_TOKEN, "the token is not a JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise _unauthenticated(DenialReason.MALFORMED_TOKEN, "the token's header has no `alg`")
        kid = header.get("kid")
        candidates = self._keys_for(alg, kid if isinstance(kid, str) else None)
        payload: dict[str, Any] | None = None
        for key in candidates:
            try:
                payload = jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    audience=self.audience,
                    issuer=self.issuer,
                    options={
                        # times are checked on every use with the injected clock (`_check_times`)
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                        "verify_aud": self.audience is not None,
                        "require": ["exp", "sub"],
                    },
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise _claims_error(exc) from None
        if payload is None:
            raise _unauthenticated(DenialReason.BAD_SIGNATURE, "the token's signature does not verify")
        return _verified_of(payload, self.clock(), self.clock_skew_s)

    def _keys_for(self, alg: str, kid: str | None) -> list[Any]:
        if alg.lower() == "none":
            raise _unauthenticated(
                DenialReason.ALGORITHM_REFUSED, "unsigned tokens (`alg: none`) are refused"
            )
        if alg == HS256 and self.hs256_secret is not None:
            return [self.hs256_secret]
        named = [key for key in self.keys if kid is None or key.key_id == kid]
        if kid is not None and not named:
            raise _unauthenticated(DenialReason.UNKNOWN_KEY, f"no key {kid[:64]!r} in the JWKS", kid=kid[:64])
        usable = [key.key for key in named if key.algorithm_name == alg]
        if not usable:
            allowed = sorted(
                {key.algorithm_name for key in named} | ({HS256} if self.hs256_secret else set())
            )
            raise _unauthenticated(
                DenialReason.ALGORITHM_REFUSED,
                f"{alg[:16]!r} is not an algorithm of the configured keys ({', '.join(allowed)})",
                algorithm=alg[:16],
                allowed=allowed,
            )
        return usable


def _claims_error(exc: Exception) -> Unauthenticated:
    if isinstance(exc, jwt.InvalidAudienceError):
        return _unauthenticated(DenialReason.WRONG_AUDIENCE, "the token is not for this service (`aud`)")
    if isinstance(exc, jwt.InvalidIssuerError):
        return _unauthenticated(DenialReason.WRONG_ISSUER, "the token's issuer (`iss`) is not trusted")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        reason = {"aud": DenialReason.WRONG_AUDIENCE, "iss": DenialReason.WRONG_ISSUER}.get(
            exc.claim, DenialReason.INVALID_CLAIMS
        )
        return _unauthenticated(reason, f"the token has no `{exc.claim}` claim", claim=exc.claim)
    if isinstance(exc, jwt.InvalidAlgorithmError | jwt.InvalidKeyError):
        return _unauthenticated(DenialReason.ALGORITHM_REFUSED, "the token's algorithm is not allowed")
    if isinstance(exc, jwt.exceptions.InvalidSubjectError | jwt.exceptions.InvalidJTIError):
        return _unauthenticated(DenialReason.INVALID_CLAIMS, "`sub` and `jti` must be strings")
    return _unauthenticated(DenialReason.MALFORMED_TOKEN, "the token cannot be decoded")


def _number(payload: Mapping[str, Any], claim: str) -> float | None:
    value = payload.get(claim)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _unauthenticated(DenialReason.INVALID_CLAIMS, f"`{claim}` must be a number of seconds")
    return float(value)


def _verified_of(payload: Mapping[str, Any], now: float, skew_s: float) -> _Verified:
    subject = payload.get("sub")
    if not isinstance(subject, str) or not 0 < len(subject) <= MAX_PRINCIPAL:
        raise _unauthenticated(DenialReason.INVALID_CLAIMS, f"`sub` must be 1-{MAX_PRINCIPAL} characters")
    scope = payload.get("scope", "")
    if not isinstance(scope, str):
        raise _unauthenticated(DenialReason.INVALID_CLAIMS, "`scope` must be a space-separated string")
    expires_at = _number(payload, "exp")
    assert expires_at is not None  # required by the decode
    not_before = _number(payload, "nbf")
    issued_at = _number(payload, "iat")
    if issued_at is not None and issued_at > now + skew_s:
        raise _unauthenticated(DenialReason.NOT_YET_VALID, "the token was issued in the future (`iat`)")
    return _Verified(subject, Scopes.parse(scope), expires_at, not_before)


def parse_jwks(document: Mapping[str, Any]) -> list[jwt.PyJWK]:
    """The signing keys of a JWKS document (`{"keys": [...]}`); a key that cannot be used raises,
    so a typo in the file stops the worker instead of refusing every token later."""
    keys = document.get("keys")
    if not isinstance(keys, list) or not keys:
        raise ValueError('a JWKS is {"keys": [...]} with at least one key')
    parsed = []
    for i, data in enumerate(keys):
        if not isinstance(data, dict):
            raise ValueError(f"JWKS key {i} is not an object")
        if data.get("use", "sig") != "sig":
            continue  # an encryption key
        try:
            key = jwt.PyJWK(data)
        except jwt.PyJWTError as exc:
            raise ValueError(f"JWKS key {i} ({data.get('kid')!r}) cannot be used: {exc}") from None
        parsed.append(key)
    if not parsed:
        raise ValueError("the JWKS has no signing key")
    return parsed


def mint_token(
    secret: bytes,
    subject: str,
    scope: str,
    ttl_s: float,
    *,
    now: float,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """A development token signed with the HS256 secret (`nexus-streams token`)."""
    claims: dict[str, Any] = {"sub": subject, "iat": int(now), "exp": int(now + ttl_s)}
    if scope.split():
        claims["scope"] = " ".join(scope.split())
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=HS256)


def token_subject(token: str) -> str | None:
    """The `sub` of a token, NOT verified: what a client puts in its requests' `principal`."""
    try:
        subject = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.PyJWTError:
        return None
    return subject if isinstance(subject, str) else None


# -- rate limits -----------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per principal: `rate_per_s` requests a second, up to `burst` at once.

    Buckets of principals not seen for a while are full again, so they are forgotten first
    when more than `max_principals` are tracked (the least recently seen goes first)."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int = 0,
        clock: Callable[[], float] = time.monotonic,
        max_principals: int = 100_000,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self.rate_per_s = rate_per_s
        self.burst = float(burst or max(1, math.ceil(rate_per_s)))
        self.clock = clock
        self.max_principals = max_principals
        #: principal -> (tokens, when counted), least recently seen first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, principal: str) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one is available."""
        now = self.clock()
        tokens, at = self._buckets.pop(principal, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
        retry_after = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            retry_after = (1.0 - tokens) / self.rate_per_s
        self._buckets[principal] = (tokens, now)
        if len(self._buckets) > self.max_principals:
            self._buckets.popitem(last=False)
        return retry_after

    def check(self, principal: str) -> None:
        """`take`, raising `rate_limited` (with `details.retry_after_s`) when over the limit."""
        retry_after = self.take(principal)
        if retry_after > 0:
            retry_after = math.ceil(retry_after * 1000) / 1000  # whole milliseconds, never 0
            raise RateLimited(
                f"{principal[:MAX_PRINCIPAL]!r} is over its rate limit of {self.rate_per_s:g} requests/s "
                f"(burst {self.burst:g}); retry after {retry_after:.3f}s",
                reason=DenialReason.RATE_LIMITED.value,
                retry_after_s=retry_after,
                limit_per_s=self.rate_per_s,
                burst=self.burst,
                principal=principal[:MAX_PRINCIPAL],
            )

    def __len__(self) -> int:
        return len(self._buckets)
