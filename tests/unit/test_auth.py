"""Tokens, scopes, the executor's rights and rate limits (nexus_streams/domain/auth.py): the
spoofing list of issue 15 at the unit level, without a broker."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from nexus_streams.domain.access import AccessPolicy
from nexus_streams.domain.auth import (
    MIN_SECRET_BYTES,
    PATTERNS_ADMIN,
    AccessRequest,
    DenialReason,
    Grant,
    RateLimiter,
    Scopes,
    Verifier,
    authorize,
    bearer_token,
    is_worker_command,
    mint_token,
    parse_jwks,
    scope_needed,
    step_scopes,
    token_subject,
)
from nexus_streams.domain.errors import (
    ErrorCode,
    Forbidden,
    NexusError,
    NotFound,
    RateLimited,
    Unauthenticated,
)
from nexus_streams.domain.patterns import Pattern, PatternKind
from nexus_streams.patterns import system_patterns

NOW = 1_800_000_000.0
SECRET = b"s" * MIN_SECRET_BYTES
OTHER_SECRET = b"o" * MIN_SECRET_BYTES
ISSUER = "https://idp.example"
AUDIENCE = "nexus-streams"


@dataclass(frozen=True)
class Keys:
    rsa: rsa.RSAPrivateKey
    rsa_other: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    ed: ed25519.Ed25519PrivateKey

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key())), "kid": "rsa-1"},
                {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key())), "kid": "ec-1"},
                {**json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self.ed.public_key())), "kid": "ed-1"},
            ]
        }

    def rsa_public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP256R1()),
        ed25519.Ed25519PrivateKey.generate(),
    )


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "alice",
        "scope": "relationships:write:alice queries:read:alice",
        "iat": int(NOW) - 10,
        "exp": int(NOW) + 600,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any], alg: str = "none") -> str:
    return f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(payload)}."


def verifier(keys: Keys, **kwargs: Any) -> Verifier:
    options: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "clock_skew_s": 30.0,
        "clock": lambda: NOW,
    }
    options.update(kwargs)
    secret = options.pop("secret", SECRET)
    return Verifier(parse_jwks(keys.jwks()), secret, **options)


def bearer(token: str) -> str:
    return f"Bearer {token}"


# -- tokens: every way in that must fail, and the ways that must work -------------------------------

Token = Callable[[Keys], str]

REFUSED: list[tuple[str, Token, DenialReason]] = [
    (
        "an HS256 token signed with another secret",
        lambda k: jwt.encode(claims(), OTHER_SECRET, "HS256"),
        DenialReason.BAD_SIGNATURE,
    ),
    (
        "an RS256 token signed with another RSA key",
        lambda k: jwt.encode(claims(), k.rsa_other, "RS256", headers={"kid": "rsa-1"}),
        DenialReason.BAD_SIGNATURE,
    ),
    (
        "an RS256 token signed with another RSA key, no kid",
        lambda k: jwt.encode(claims(), k.rsa_other, "RS256"),
        DenialReason.BAD_SIGNATURE,
    ),
    (
        "a kid the JWKS does not have",
        lambda k: jwt.encode(claims(), k.rsa, "RS256", headers={"kid": "rsa-9"}),
        DenialReason.UNKNOWN_KEY,
    ),
    ("alg none", lambda k: unsigned(claims()), DenialReason.ALGORITHM_REFUSED),
    ("alg None", lambda k: unsigned(claims(), "None"), DenialReason.ALGORITHM_REFUSED),
    ("alg NONE with a kid", lambda k: unsigned(claims(), "NONE"), DenialReason.ALGORITHM_REFUSED),
    (
        "HS256 signed with the RSA public key (algorithm confusion)",
        lambda k: _hs256_with(k.rsa_public_pem()),
        DenialReason.BAD_SIGNATURE,
    ),
    (
        "HS256 with the RSA key's kid (algorithm confusion)",
        lambda k: _hs256_with(k.rsa_public_pem(), kid="rsa-1"),
        DenialReason.BAD_SIGNATURE,
    ),
    (
        "HS512 with the right secret",
        lambda k: jwt.encode(claims(), SECRET * 2, "HS512"),
        DenialReason.ALGORITHM_REFUSED,
    ),
    (
        "RS384 with the RS256 key",
        lambda k: jwt.encode(claims(), k.rsa, "RS384", headers={"kid": "rsa-1"}),
        DenialReason.ALGORITHM_REFUSED,
    ),
    (
        "ES256 naming the RSA key",
        lambda k: jwt.encode(claims(), k.ec, "ES256", headers={"kid": "rsa-1"}),
        DenialReason.ALGORITHM_REFUSED,
    ),
    (
        "PS256 with the RSA key (not its algorithm)",
        lambda k: jwt.encode(claims(), k.rsa, "PS256"),
        DenialReason.ALGORITHM_REFUSED,
    ),
    (
        "a payload changed after signing",
        lambda k: _tampered(jwt.encode(claims(), k.rsa, "RS256")),
        DenialReason.BAD_SIGNATURE,
    ),
    (
        "expired beyond the clock skew",
        lambda k: jwt.encode(claims(exp=int(NOW) - 31), SECRET, "HS256"),
        DenialReason.EXPIRED,
    ),
    (
        "exactly at the end of the skew",
        lambda k: jwt.encode(claims(exp=int(NOW) - 30), SECRET, "HS256"),
        DenialReason.EXPIRED,
    ),
    (
        "not valid before a time beyond the skew",
        lambda k: jwt.encode(claims(nbf=int(NOW) + 31), SECRET, "HS256"),
        DenialReason.NOT_YET_VALID,
    ),
    (
        "issued in the future",
        lambda k: jwt.encode(claims(iat=int(NOW) + 120), SECRET, "HS256"),
        DenialReason.NOT_YET_VALID,
    ),
    ("no exp", lambda k: jwt.encode(claims(exp=DROP), SECRET, "HS256"), DenialReason.INVALID_CLAIMS),
    (
        "exp not a number",
        lambda k: jwt.encode(claims(exp="tomorrow"), SECRET, "HS256"),
        DenialReason.INVALID_CLAIMS,
    ),
    ("exp true", lambda k: jwt.encode(claims(exp=True), SECRET, "HS256"), DenialReason.INVALID_CLAIMS),
    ("no sub", lambda k: jwt.encode(claims(sub=DROP), SECRET, "HS256"), DenialReason.INVALID_CLAIMS),
    ("sub a number", lambda k: jwt.encode(claims(sub=7), SECRET, "HS256"), DenialReason.INVALID_CLAIMS),
    ("sub empty", lambda k: jwt.encode(claims(sub=""), SECRET, "HS256"), DenialReason.INVALID_CLAIMS),
    (
        "sub too long",
        lambda k: jwt.encode(claims(sub="a" * 257), SECRET, "HS256"),
        DenialReason.INVALID_CLAIMS,
    ),
    (
        "scope a list",
        lambda k: jwt.encode(claims(scope=["queries:read:*"]), SECRET, "HS256"),
        DenialReason.INVALID_CLAIMS,
    ),
    (
        "a wrong audience",
        lambda k: jwt.encode(claims(aud="another-service"), SECRET, "HS256"),
        DenialReason.WRONG_AUDIENCE,
    ),
    (
        "a list of wrong audiences",
        lambda k: jwt.encode(claims(aud=["a", "b"]), k.ec, "ES256"),
        DenialReason.WRONG_AUDIENCE,
    ),
    ("no audience", lambda k: jwt.encode(claims(aud=DROP), k.ed, "EdDSA"), DenialReason.WRONG_AUDIENCE),
    (
        "a wrong issuer",
        lambda k: jwt.encode(claims(iss="https://evil.example"), SECRET, "HS256"),
        DenialReason.WRONG_ISSUER,
    ),
    ("no issuer", lambda k: jwt.encode(claims(iss=DROP), k.rsa, "RS256"), DenialReason.WRONG_ISSUER),
    ("not a JWT", lambda k: "not-a-jwt", DenialReason.MALFORMED_TOKEN),
    ("three dots of garbage", lambda k: "a.b.c", DenialReason.MALFORMED_TOKEN),
    (
        "a header without alg",
        lambda k: f"{b64({'typ': 'JWT'})}.{b64(claims())}.sig",
        DenialReason.MALFORMED_TOKEN,
    ),
]


def _hs256_with(secret: bytes, kid: str | None = None) -> str:
    """What PyJWT's encode refuses to do (a PEM as an HMAC secret): sign by hand."""
    import hashlib
    import hmac

    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    signing_input = f"{b64(header)}.{b64(claims())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def _tampered(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64(claims(sub='admin', scope=PATTERNS_ADMIN))}.{signature}"


@pytest.mark.parametrize(("name", "make", "reason"), REFUSED, ids=[case[0] for case in REFUSED])
def test_verify__refuses(keys: Keys, name: str, make: Token, reason: DenialReason) -> None:
    with pytest.raises(Unauthenticated) as info:
        verifier(keys).verify(bearer(make(keys)))
    assert info.value.code is ErrorCode.UNAUTHENTICATED
    assert info.value.details["reason"] == reason.value, info.value.message


def test_verify__algorithm_confusion_without_a_secret__refused_as_an_algorithm(keys: Keys) -> None:
    """With only a JWKS, an HS256 token cannot even be tried: no key allows HS256."""
    with pytest.raises(Unauthenticated) as info:
        verifier(keys, secret=None).verify(bearer(_hs256_with(keys.rsa_public_pem(), kid="rsa-1")))
    assert info.value.details["reason"] == DenialReason.ALGORITHM_REFUSED.value
    assert "RS256" in info.value.details["allowed"]


def test_verify__hs256_without_a_secret__refused(keys: Keys) -> None:
    with pytest.raises(Unauthenticated) as info:
        verifier(keys, secret=None).verify(bearer(jwt.encode(claims(), SECRET, "HS256")))
    assert info.value.details["reason"] == DenialReason.ALGORITHM_REFUSED.value


ACCEPTED: list[tuple[str, Token]] = [
    ("HS256 with the secret", lambda k: jwt.encode(claims(), SECRET, "HS256")),
    ("RS256 with its kid", lambda k: jwt.encode(claims(), k.rsa, "RS256", headers={"kid": "rsa-1"})),
    ("RS256 without a kid", lambda k: jwt.encode(claims(), k.rsa, "RS256")),
    ("ES256", lambda k: jwt.encode(claims(), k.ec, "ES256", headers={"kid": "ec-1"})),
    ("EdDSA", lambda k: jwt.encode(claims(), k.ed, "EdDSA", headers={"kid": "ed-1"})),
    ("expired within the clock skew", lambda k: jwt.encode(claims(exp=int(NOW) - 29), SECRET, "HS256")),
    ("nbf within the skew", lambda k: jwt.encode(claims(nbf=int(NOW) + 29), SECRET, "HS256")),
    ("an audience among several", lambda k: jwt.encode(claims(aud=["x", AUDIENCE]), SECRET, "HS256")),
    ("no scope at all", lambda k: jwt.encode(claims(scope=DROP), SECRET, "HS256")),
]


@pytest.mark.parametrize(("name", "make"), ACCEPTED, ids=[case[0] for case in ACCEPTED])
def test_verify__accepts(keys: Keys, name: str, make: Token) -> None:
    grant = verifier(keys).verify(bearer(make(keys)))
    assert grant.principal == "alice"


def test_verify__issuer_and_audience_not_configured__not_checked(keys: Keys) -> None:
    plain = verifier(keys, issuer=None, audience=None)
    token = jwt.encode(claims(iss="anyone", aud="anything"), SECRET, "HS256")
    assert plain.verify(bearer(token)).principal == "alice"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, DenialReason.MISSING_TOKEN),
        ("", DenialReason.MISSING_TOKEN),
        ("   ", DenialReason.MISSING_TOKEN),
        ("Basic YWxpY2U6c2VjcmV0", DenialReason.MALFORMED_TOKEN),
        ("Bearer", DenialReason.MALFORMED_TOKEN),
        ("Bearer ", DenialReason.MALFORMED_TOKEN),
        ("Bearer a b", DenialReason.MALFORMED_TOKEN),
        ("Token abc", DenialReason.MALFORMED_TOKEN),
        ("Bearer " + "a" * 9000, DenialReason.MALFORMED_TOKEN),
    ],
)
def test_bearer_token__refuses(header: str | None, reason: DenialReason) -> None:
    with pytest.raises(Unauthenticated) as info:
        bearer_token(header)
    assert info.value.details["reason"] == reason.value


@pytest.mark.parametrize("header", ["Bearer abc", "bearer abc", "BEARER abc", "  Bearer   abc  "])
def test_bearer_token__scheme_in_any_case(header: str) -> None:
    assert bearer_token(header) == "abc"


def test_verify__a_cached_token_still_expires(keys: Keys) -> None:
    now = [NOW]
    checker = verifier(keys, clock=lambda: now[0])
    token = bearer(jwt.encode(claims(exp=int(NOW) + 60), SECRET, "HS256"))
    assert checker.verify(token).principal == "alice"
    assert checker.verify(token).principal == "alice"  # from the cache
    now[0] = NOW + 91
    with pytest.raises(Unauthenticated) as info:
        checker.verify(token)
    assert info.value.details["reason"] == DenialReason.EXPIRED.value


def test_verify__the_cache_is_bounded(keys: Keys) -> None:
    checker = verifier(keys, cache_size=3)
    for i in range(10):
        checker.verify(bearer(jwt.encode(claims(sub=f"u{i}"), SECRET, "HS256")))
    assert len(checker._verified) == 3


def test_verify__error_never_quotes_the_token(keys: Keys) -> None:
    token = jwt.encode(claims(aud="another"), SECRET, "HS256")
    with pytest.raises(Unauthenticated) as info:
        verifier(keys).verify(bearer(token))
    assert token not in json.dumps(info.value.to_dict())


@pytest.mark.parametrize(
    ("keys_", "secret", "message"),
    [
        ((), None, "no keys"),
        ((), b"short", "at least 32 bytes"),
        (
            [jwt.PyJWK({"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "alg": "HS256"})],
            None,
            "HS256",
        ),
    ],
)
def test_verifier__refuses_a_configuration(keys_: Any, secret: bytes | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Verifier(keys_, secret)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "at least one key"),
        ({"keys": []}, "at least one key"),
        ({"keys": ["x"]}, "not an object"),
        ({"keys": [{"kty": "RSA", "kid": "broken"}]}, "cannot be used"),
        ({"keys": [{"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA"}]}, "cannot be used"),
        ({"keys": [{"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}]}, "no signing key"),
    ],
)
def test_parse_jwks__refuses(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_jwks(document)


def test_parse_jwks__algorithms_from_the_key_types(keys: Keys) -> None:
    assert [k.algorithm_name for k in parse_jwks(keys.jwks())] == ["RS256", "ES256", "EdDSA"]
    assert verifier(keys).algorithms == {"RS256", "ES256", "EdDSA", "HS256"}


def test_mint_token__verifies_and_names_its_subject(keys: Keys) -> None:
    token = mint_token(
        SECRET, "bob", " queries:read:bob  patterns:write ", 3600, now=NOW, issuer=ISSUER, audience=AUDIENCE
    )
    grant = verifier(keys).verify(bearer(token))
    assert grant.principal == "bob"
    assert grant.scopes.granted == {"queries:read:bob", "patterns:write"}
    assert grant.expires_at == NOW + 3600
    assert token_subject(token) == "bob"
    assert token_subject("garbage") is None


# -- scopes -------------------------------------------------------------------------------------------

SCOPE_CASES: list[tuple[str, str, str, bool]] = [
    # granted, topic, namespace, allowed
    ("relationships:write:alice", "relationships", "alice", True),
    ("relationships:write:alice", "relationships", "bob", False),
    ("relationships:write:alice", "queries", "alice", False),
    ("queries:read:alice", "relationships", "alice", False),
    ("relationships:write:alice", "executions", "alice", False),
    ("executions:run:alice", "executions", "alice", True),
    ("relationships:write:*", "relationships", "anything.at:all", True),
    ("relationships:write:tenant-a.*", "relationships", "tenant-a.orders", True),
    ("relationships:write:tenant-a.*", "relationships", "tenant-a", False),
    ("relationships:write:tenant-a.*", "relationships", "tenant-b.orders", False),
    ("relationships:write:tenant-a*", "relationships", "tenant-ab", True),
    ("relationships:write:team-?", "relationships", "team-1", True),
    ("relationships:write:team-?", "relationships", "team-12", False),
    ("relationships:write:team-[ab]", "relationships", "team-b", True),
    ("relationships:write:team-[ab]", "relationships", "team-c", False),
    ("relationships:write:Alice", "relationships", "alice", False),
    ("relationships:write", "relationships", "alice", False),
    ("relationships:write:", "relationships", "alice", False),
    ("relationships:*:alice", "relationships", "alice", False),
    ("*", "relationships", "alice", False),
    ("relationships:write:tenant:alice", "relationships", "tenant:alice", True),
    ("relationships:write:tenant:*", "relationships", "tenant:bob", True),
    ("queries:read:alice queries:read:bob", "queries", "bob", True),
    ("patterns:write", "patterns", "", True),
    ("patterns:admin", "patterns", "", True),
    ("patterns:read", "patterns", "", False),
    ("relationships:write:*", "patterns", "", False),
    ("", "queries", "alice", False),
]


@pytest.mark.parametrize(("granted", "topic", "namespace", "allowed"), SCOPE_CASES)
def test_scopes__allows(granted: str, topic: str, namespace: str, allowed: bool) -> None:
    needed = scope_needed(topic, namespace or None)
    assert Scopes.parse(granted).allows(needed) is allowed


def grant(scope: str, principal: str = "alice") -> Grant:
    return Grant(principal, Scopes.parse(scope), NOW + 600)


AUTHORIZE_CASES: list[tuple[str, str, AccessRequest, str | None, str | None]] = [
    # name, token scope (sub alice), request, error code, missing scope
    (
        "her own namespace",
        "relationships:write:alice",
        AccessRequest("relationships", "alice", "alice"),
        None,
        None,
    ),
    (
        "without a principal field",
        "relationships:write:alice",
        AccessRequest("relationships", "alice", None),
        None,
        None,
    ),
    (
        "bob's namespace",
        "relationships:write:alice",
        AccessRequest("relationships", "bob", "alice"),
        "forbidden",
        "relationships:write:bob",
    ),
    (
        "claiming to be bob",
        "relationships:write:*",
        AccessRequest("relationships", "bob", "bob"),
        "forbidden",
        None,
    ),
    (
        "claiming to be an admin",
        "patterns:write",
        AccessRequest("patterns", None, "admin"),
        "forbidden",
        None,
    ),
    (
        "reading with a write scope",
        "relationships:write:alice",
        AccessRequest("queries", "alice", "alice"),
        "forbidden",
        "queries:read:alice",
    ),
    (
        "running with a read scope",
        "queries:read:alice",
        AccessRequest("executions", "alice", "alice"),
        "forbidden",
        "executions:run:alice",
    ),
    (
        "storing a pattern without patterns:write",
        "executions:run:*",
        AccessRequest("patterns", None, "alice"),
        "forbidden",
        "patterns:write",
    ),
    ("storing a pattern", "patterns:write", AccessRequest("patterns", None, "alice"), None, None),
    (
        "an undecodable message: no principal, a namespace",
        "queries:read:alice",
        AccessRequest("queries", "alice"),
        None,
        None,
    ),
    (
        "a key that is no namespace: its handler dead-letters it",
        "",
        AccessRequest("relationships", None),
        None,
        None,
    ),
]


@pytest.mark.parametrize(
    ("name", "scope", "request_", "code", "missing"), AUTHORIZE_CASES, ids=[c[0] for c in AUTHORIZE_CASES]
)
def test_authorize(
    keys: Keys, name: str, scope: str, request_: AccessRequest, code: str | None, missing: str | None
) -> None:
    token = bearer(jwt.encode(claims(scope=scope), SECRET, "HS256"))
    if code is None:
        assert authorize(token, request_, verifier(keys)).principal == "alice"
        return
    with pytest.raises(NexusError) as info:
        authorize(token, request_, verifier(keys))
    assert info.value.code.value == code
    assert info.value.details.get("missing_scope") == missing
    expected = DenialReason.MISSING_SCOPE if missing else DenialReason.PRINCIPAL_MISMATCH
    assert info.value.details["reason"] == expected.value
    assert info.value.details["principal"] == "alice"


def test_authorize__no_token__unauthenticated(keys: Keys) -> None:
    with pytest.raises(Unauthenticated) as info:
        authorize(None, AccessRequest("relationships", "alice", "alice"), verifier(keys))
    assert info.value.details["reason"] == "missing_token"


def test_authorize__rate_limit_counts_the_verified_principal(keys: Keys) -> None:
    limiter = RateLimiter(1.0, burst=2, clock=lambda: NOW)
    token = bearer(jwt.encode(claims(), SECRET, "HS256"))
    request = AccessRequest("relationships", "alice", "mallory")  # forbidden, and still counted
    for _ in range(2):
        with pytest.raises(Forbidden):
            authorize(token, request, verifier(keys), limiter)
    with pytest.raises(RateLimited) as info:
        authorize(token, request, verifier(keys), limiter)
    assert info.value.details["retry_after_s"] == 1.0


@pytest.mark.parametrize(
    ("topic", "action", "exempt"),
    [
        ("relationships", "expire", True),
        ("executions", "resume", True),
        ("relationships", "resume", False),
        ("executions", "expire", False),
        ("relationships", "create", False),
        ("patterns", "store", False),
        ("queries", None, False),
    ],
)
def test_is_worker_command(topic: str, action: str | None, exempt: bool) -> None:
    assert is_worker_command(topic, action) is exempt


# -- pattern rules from the token -------------------------------------------------------------------

STEP = {"type": "graph", "action": "find_path", "parameters": {"source": "a", "target": "b"}}


def pattern(
    pattern_id: str = "p",
    kind: PatternKind = PatternKind.USER,
    owner: str | None = None,
    steps: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> Pattern:
    return Pattern.model_validate(
        {
            "id": pattern_id,
            "name": "P",
            "kind": kind,
            "steps": steps or [STEP],
            "version": 1,
            "metadata": {"owner": owner},
            **fields,
        }
    )


SYSTEM = {p.id: p for p in system_patterns()}
ONBOARDING = SYSTEM["user_onboarding"]

PATTERN_POLICY_CASES: list[tuple[str, Grant, Pattern, Pattern | None, bool]] = [
    # name, grant, stored, existing, allowed
    ("patterns:write overwriting a system pattern", grant("patterns:write"), ONBOARDING, ONBOARDING, False),
    (
        "patterns:write storing a new system pattern",
        grant("patterns:write"),
        pattern(kind=PatternKind.SYSTEM),
        None,
        False,
    ),
    (
        "patterns:write turning a system pattern into hers",
        grant("patterns:write"),
        pattern("user_onboarding"),
        ONBOARDING,
        False,
    ),
    ("patterns:admin overwriting a system pattern", grant("patterns:admin"), ONBOARDING, ONBOARDING, True),
    ("patterns:write storing her own new pattern", grant("patterns:write"), pattern(), None, True),
    (
        "patterns:write changing her own pattern",
        grant("patterns:write"),
        pattern(),
        pattern(owner="alice"),
        True,
    ),
    (
        "patterns:write changing bob's pattern",
        grant("patterns:write"),
        pattern(),
        pattern(owner="bob"),
        False,
    ),
    ("patterns:admin changing bob's pattern", grant("patterns:admin"), pattern(), pattern(owner="bob"), True),
    (
        "a principal named admin without the scope",
        grant("patterns:write", "admin"),
        ONBOARDING,
        ONBOARDING,
        False,
    ),
]


@pytest.mark.parametrize(
    ("name", "who", "stored", "existing", "allowed"),
    PATTERN_POLICY_CASES,
    ids=[c[0] for c in PATTERN_POLICY_CASES],
)
def test_grant_pattern_policy__store(
    name: str, who: Grant, stored: Pattern, existing: Pattern | None, allowed: bool
) -> None:
    policy = who.pattern_policy()
    if allowed:
        policy.check_store(who.principal, stored, existing)
        return
    with pytest.raises(Forbidden) as info:
        policy.check_store(who.principal, stored, existing)
    assert info.value.details["missing_scope"] == PATTERNS_ADMIN
    assert info.value.details["reason"] == "not_permitted"


def test_grant_pattern_policy__names_in_settings_do_not_count() -> None:
    named = AccessPolicy.of(["admin"])
    assert named.is_admin("admin")
    assert not grant("patterns:write", "admin").pattern_policy().is_admin("admin")
    assert grant("patterns:admin", "carol").pattern_policy().is_admin("carol")


@pytest.mark.parametrize(
    ("scope", "execute_permission", "allowed"),
    [
        ("executions:run:*", None, True),
        ("executions:run:*", ("bob",), False),
        ("executions:run:* patterns:admin", ("bob",), True),
        ("executions:run:*", ("alice",), True),
    ],
)
def test_grant_pattern_policy__execute(
    scope: str, execute_permission: tuple[str, ...] | None, allowed: bool
) -> None:
    target = pattern(owner="carol", execute_permission=execute_permission)
    assert grant(scope).pattern_policy().allows("alice", "execute", target) is allowed  # type: ignore[arg-type]


# -- the executor's rights over a pattern's steps ---------------------------------------------------

WRITE = {"type": "relationship", "action": "create", "parameters": {"type": "member"}}
PUBLISH = {"type": "event", "action": "publish", "parameters": {"event_type": "x"}}
CHECK = {"type": "control", "action": "assert", "parameters": {"value": 1, "condition": "not_empty"}}
WITH_COMPENSATION = {
    "type": "control",
    "action": "assert",
    "parameters": {"value": 1, "condition": "not_empty"},
    "compensation": {"type": "relationship", "action": "delete", "parameters": {"type": "member"}},
}
WRITER = pattern("writer", steps=[WRITE])
READER = pattern("reader", steps=[STEP])


def include(pattern_id: str, version: int | None = 1) -> dict[str, Any]:
    parameters: dict[str, Any] = {"pattern_id": pattern_id}
    if version is not None:
        parameters["version"] = version
    return {"id": f"run_{pattern_id}", "type": "pattern", "action": "execute", "parameters": parameters}


def resolve(pattern_id: str, version: int | None) -> Pattern:
    found = {"writer": WRITER, "reader": READER}.get(pattern_id)
    if found is None:
        raise NotFound(f"no pattern {pattern_id}")
    return found


STEP_CASES: list[tuple[str, Pattern, dict[str, str]]] = [
    (
        "financial_transaction reads and writes",
        SYSTEM["financial_transaction"],
        {"queries:read:ns": "find_path", "relationships:write:ns": "create"},
    ),
    ("user_onboarding writes", ONBOARDING, {"relationships:write:ns": "create"}),
    ("events and checks need nothing", pattern(steps=[PUBLISH, CHECK]), {}),
    (
        "a compensation that writes",
        pattern(steps=[WITH_COMPENSATION]),
        {"relationships:write:ns": "assert#compensation"},
    ),
    (
        "an included pattern that writes",
        pattern("outer", PatternKind.COMPOSITE, steps=[include("writer")]),
        {"relationships:write:ns": "run_writer/create"},
    ),
    (
        "an included pattern that reads",
        pattern("outer", PatternKind.COMPOSITE, steps=[include("reader", None)]),
        {"queries:read:ns": "run_reader/find_path"},
    ),
    (
        "an included pattern that is gone",
        pattern("outer", PatternKind.COMPOSITE, steps=[include("gone")]),
        {},
    ),
]


@pytest.mark.parametrize(("name", "target", "expected"), STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_step_scopes(name: str, target: Pattern, expected: dict[str, str]) -> None:
    assert dict(step_scopes(target, "ns", resolve)) == expected


REQUIRE_STEPS_CASES: list[tuple[str, str, Pattern, str | None]] = [
    # name, scope, pattern, missing
    (
        "a pattern that writes where the executor may not write",
        "executions:run:ns",
        ONBOARDING,
        "relationships:write:ns",
    ),
    (
        "writing in another namespace only",
        "executions:run:ns relationships:write:other",
        ONBOARDING,
        "relationships:write:ns",
    ),
    ("allowed to write", "executions:run:ns relationships:write:ns", ONBOARDING, None),
    (
        "a transfer without read",
        "executions:run:ns relationships:write:ns",
        SYSTEM["financial_transaction"],
        "queries:read:ns",
    ),
    (
        "a transfer with both",
        "executions:run:* relationships:write:* queries:read:ns",
        SYSTEM["financial_transaction"],
        None,
    ),
    (
        "a composite whose included pattern writes",
        "executions:run:ns queries:read:ns",
        pattern("outer", PatternKind.COMPOSITE, steps=[include("writer")]),
        "relationships:write:ns",
    ),
]


@pytest.mark.parametrize(
    ("name", "scope", "target", "missing"), REQUIRE_STEPS_CASES, ids=[c[0] for c in REQUIRE_STEPS_CASES]
)
def test_grant_require_steps(name: str, scope: str, target: Pattern, missing: str | None) -> None:
    if missing is None:
        grant(scope).require_steps(target, "ns", resolve)
        return
    with pytest.raises(Forbidden) as info:
        grant(scope).require_steps(target, "ns", resolve)
    assert info.value.details["missing_scope"] == missing
    assert info.value.details["pattern_id"] == target.id


# -- rate limits --------------------------------------------------------------------------------------

RATE_CASES: list[tuple[str, float, int, list[float], list[bool]]] = [
    # name, rate/s, burst, request times, allowed
    ("a burst, then refused", 1.0, 3, [0, 0, 0, 0], [True, True, True, False]),
    ("refills at the rate", 1.0, 1, [0, 0.5, 1.0, 1.9, 2.0], [True, False, True, False, True]),
    ("burst defaults to a second's worth", 5.0, 0, [0] * 6, [True] * 5 + [False]),
    ("a fractional rate: burst of one", 0.5, 0, [0, 1, 2], [True, False, True]),
    ("never above the burst after idling", 10.0, 2, [0, 100, 100, 100], [True, True, True, False]),
]


@pytest.mark.parametrize(
    ("name", "rate", "burst", "times", "allowed"), RATE_CASES, ids=[c[0] for c in RATE_CASES]
)
def test_rate_limiter(name: str, rate: float, burst: int, times: list[float], allowed: list[bool]) -> None:
    now = [0.0]
    limiter = RateLimiter(rate, burst, clock=lambda: now[0])
    got = []
    for at in times:
        now[0] = at
        got.append(limiter.take("alice") == 0.0)
    assert got == allowed


def test_rate_limiter__per_principal_with_retry_after() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 1, clock=lambda: now[0])
    limiter.check("alice")
    limiter.check("bob")
    with pytest.raises(RateLimited) as info:
        limiter.check("alice")
    assert info.value.code is ErrorCode.RATE_LIMITED
    assert info.value.details["retry_after_s"] == 0.5
    assert info.value.details["reason"] == "rate_limited"
    now[0] = 0.5
    limiter.check("alice")


def test_rate_limiter__retry_after_a_token_almost_refilled__at_least_a_millisecond() -> None:
    now = [0.0]
    limiter = RateLimiter(20.0, 1, clock=lambda: now[0])
    limiter.check("alice")
    now[0] = 0.04999  # 0.9998 of a token back: due in 10 microseconds
    with pytest.raises(RateLimited) as info:
        limiter.check("alice")
    assert info.value.details["retry_after_s"] == 0.001


def test_rate_limiter__forgets_the_least_recently_seen() -> None:
    limiter = RateLimiter(1.0, 1, clock=lambda: 0.0, max_principals=3)
    for name in ("a", "b", "c", "d"):
        limiter.take(name)
    assert len(limiter) == 3
    assert limiter.take("a") == 0.0  # forgotten: a full bucket again
    assert limiter.take("d") > 0


def test_rate_limiter__refuses_no_rate() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)
