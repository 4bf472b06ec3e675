"""The gate every input message passes (nexus_streams/auth.py), and what the handlers check with its
grant: the pattern rules and the executor's rights over a pattern's steps. No broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest

from nexus_streams.auth import ADMITTED, Gate, development_token, parse_ttl, verifier_from
from nexus_streams.domain.access import AccessPolicy
from nexus_streams.domain.auth import AuthMode, Grant, RateLimiter, Scopes, Verifier, authorization_header
from nexus_streams.domain.graph import MemoryRecords
from nexus_streams.executions import PatternLookup
from nexus_streams.pattern_registry import PatternRegistry
from nexus_streams.patterns import register_system_patterns, system_patterns
from nexus_streams.replies import Outbound, Received
from nexus_streams.service import NamespaceService, Remembered, Reply
from nexus_streams.settings import Settings
from nexus_streams.store.cache import PatternCache
from nexus_streams.store.memory import MemoryPatternStore
from nexus_streams.topics import EXECUTIONS, PATTERNS, QUERIES, RELATIONSHIPS, TopicSpec

SECRET = "g" * 40
NOW = 1_800_000_000.0
WHEN = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)


def token(sub: str = "alice", scope: str = "relationships:write:alice", **claims: Any) -> str:
    return jwt.encode({"sub": sub, "scope": scope, "exp": int(NOW) + 600, **claims}, SECRET, "HS256")


def gate(mode: AuthMode = AuthMode.REQUIRED, limiter: RateLimiter | None = None) -> Gate:
    verifier = Verifier((), SECRET.encode(), clock=lambda: NOW)
    return Gate(mode, verifier if mode is AuthMode.REQUIRED else None, limiter, clock=lambda: WHEN)


def message(
    value: dict[str, Any] | bytes,
    *,
    spec: TopicSpec = RELATIONSHIPS,
    key: bytes | None = b"alice",
    headers: list[tuple[str, bytes]] | None = None,
    bearer: str | None = None,
) -> Received:
    raw = json.dumps(value).encode() if isinstance(value, dict) else value
    sent = list(headers or [])
    if bearer is not None:
        sent.append(authorization_header(bearer))
    return Received(spec, f"nexus.{spec.name}", 3, 17, key, raw, headers=tuple(sent))


CREATE = {
    "request_id": "r-1",
    "principal": "alice",
    "action": "create",
    "type": "owner",
    "source": "user:1",
    "target": "wallet:1",
}


def outbound(reply: Reply) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for out in reply.outbound:
        value = json.loads(out.value) if out.spec.name != "deadletter" else {"headers": _headers(out)}
        found.setdefault(out.spec.name, []).append(value)
    return found


def _headers(out: Outbound) -> dict[str, str]:
    return {k: v.decode() for k, v in out.headers.items()}


# -- who gets in ----------------------------------------------------------------------------------

DENIED: list[tuple[str, Received, str, str, str | None]] = [
    # name, message, code, reason, verified principal in the access_denied event
    ("no token", message(CREATE), "unauthenticated", "missing_token", None),
    (
        "a token signed with another secret",
        message(CREATE, bearer=jwt.encode({"sub": "alice", "exp": int(NOW) + 60}, "x" * 40, "HS256")),
        "unauthenticated",
        "bad_signature",
        None,
    ),
    (
        "an expired token",
        message(CREATE, bearer=token(exp=int(NOW) - 3600)),
        "unauthenticated",
        "expired",
        None,
    ),
    (
        "alg none",
        message(CREATE, bearer=jwt.encode({"sub": "alice", "exp": int(NOW) + 60}, None, "none")),
        "unauthenticated",
        "algorithm_refused",
        None,
    ),
    (
        "two authorization headers",
        message(CREATE, headers=[authorization_header(token())] * 2),
        "unauthenticated",
        "malformed_token",
        None,
    ),
    (
        "bob's token on alice's namespace",
        message({**CREATE, "principal": "bob"}, bearer=token("bob", "relationships:write:bob")),
        "forbidden",
        "missing_scope",
        "bob",
    ),
    (
        "a principal field that is not the token's sub",
        message({**CREATE, "principal": "admin"}, bearer=token()),
        "forbidden",
        "principal_mismatch",
        "alice",
    ),
    (
        "a query with a write scope",
        message({"request_id": "q-1", "principal": "alice", "action": "stats"}, spec=QUERIES, bearer=token()),
        "forbidden",
        "missing_scope",
        "alice",
    ),
    (
        "an execution without executions:run",
        message(
            {"request_id": "x-1", "principal": "alice", "pattern_id": "user_onboarding"},
            spec=EXECUTIONS,
            bearer=token(scope="relationships:write:alice"),
        ),
        "forbidden",
        "missing_scope",
        "alice",
    ),
    (
        "storing a pattern without patterns:write",
        message(
            {
                "request_id": "p-1",
                "principal": "alice",
                "action": "store",
                "pattern": {"id": "user_onboarding"},
            },
            spec=PATTERNS,
            key=b"user_onboarding",
            bearer=token(scope="executions:run:*"),
        ),
        "forbidden",
        "missing_scope",
        "alice",
    ),
]


@pytest.mark.parametrize(("name", "msg", "code", "reason", "principal"), DENIED, ids=[c[0] for c in DENIED])
def test_gate__refuses(name: str, msg: Received, code: str, reason: str, principal: str | None) -> None:
    admission = gate().admit(msg)
    reply = admission.denied
    assert reply is not None and admission.grant is None
    published = outbound(reply)
    [result] = published["results"]
    assert result["status"] == "error"
    assert result["error"]["code"] == code
    assert result["error"]["details"]["reason"] == reason
    assert result["request_id"] is not None
    error, denied = published["events"]
    assert error["type"] == "error"
    assert denied["type"] == "access_denied"
    assert denied.get("principal") == principal
    assert denied["data"]["reason"] == reason
    assert "deadletter" not in published
    # no effect: nothing to remember, nothing to change
    assert reply.remember is None and reply.remembered is None and reply.changes == []


def test_gate__unauthenticated__names_the_claimed_principal_apart() -> None:
    reply = gate().admit(message({**CREATE, "principal": "admin"})).denied
    assert reply is not None and reply.result is not None and reply.result.error is not None
    assert reply.result.error.details["claimed_principal"] == "admin"
    [_, denied] = outbound(reply)["events"]
    assert "principal" not in denied


def test_gate__refused_relationship_command__counts_as_applied() -> None:
    reply = gate().admit(message(CREATE)).denied
    assert reply is not None
    assert reply.progress == (3, 17)
    assert reply.result is not None and reply.result.offset == 17


def test_gate__rate_limited_relationship_command__counts_as_applied() -> None:
    limited = gate(limiter=RateLimiter(1.0, 1))
    assert limited.admit(message(CREATE, bearer=token())).denied is None
    reply = limited.admit(message(CREATE, bearer=token())).denied
    assert reply is not None and reply.result is not None
    assert reply.result.error is not None and reply.result.error.code == "rate_limited"
    assert reply.progress == (3, 17)


def test_gate__no_request_id__refused_and_dead_lettered() -> None:
    reply = gate().admit(message({"action": "create"})).denied
    assert reply is not None
    published = outbound(reply)
    [dead] = published["deadletter"]
    assert dead["headers"]["nexus-error-code"] == "unauthenticated"
    assert published["results"][0]["request_id"] is None


def test_gate__undecodable_without_a_token__refused() -> None:
    reply = gate().admit(message(b"not json")).denied
    assert reply is not None
    assert outbound(reply)["deadletter"][0]["headers"]["nexus-error-code"] == "unauthenticated"


@pytest.mark.parametrize(
    ("name", "msg", "principal"),
    [
        ("her token in her namespace", message(CREATE, bearer=token()), "alice"),
        (
            "without a principal field",
            message({k: v for k, v in CREATE.items() if k != "principal"}, bearer=token()),
            "alice",
        ),
        (
            "the header's name in another case",
            message(CREATE, headers=[("Authorization", f"Bearer {token()}".encode())]),
            "alice",
        ),
        (
            "a glob",
            message(CREATE, key=b"alice.orders", bearer=token(scope="relationships:write:alice.*")),
            "alice",
        ),
        (
            "undecodable with a valid token: its handler dead-letters it",
            message(b"[1,", bearer=token()),
            "alice",
        ),
        (
            "a key that is no namespace: its handler dead-letters it",
            message(CREATE, key=b"a b", bearer=token()),
            "alice",
        ),
        (
            "a pattern command with patterns:write",
            message(
                {"request_id": "p-1", "principal": "alice", "action": "delete"},
                spec=PATTERNS,
                key=b"mine",
                bearer=token(scope="patterns:write"),
            ),
            "alice",
        ),
    ],
)
def test_gate__admits_with_the_grant(name: str, msg: Received, principal: str) -> None:
    admission = gate().admit(msg)
    assert admission.denied is None
    assert admission.grant is not None and admission.grant.principal == principal


@pytest.mark.parametrize(
    "msg",
    [
        message({"request_id": "expire:1", "principal": "system", "action": "expire"}),
        message(
            {"request_id": "resume:x", "principal": "system", "action": "resume", "execution": "x"},
            spec=EXECUTIONS,
        ),
    ],
)
def test_gate__the_workers_own_commands__need_no_token(msg: Received) -> None:
    assert gate().admit(msg) is ADMITTED


def test_gate__off__admits_everything_without_reading_it() -> None:
    off = gate(AuthMode.OFF)
    assert off.idle
    assert off.admit(message(b"\xff not even json")) is ADMITTED
    assert off.admit(message({**CREATE, "principal": "anyone"})) is ADMITTED


def test_gate__off_with_a_rate_limit__limits_the_claimed_principal() -> None:
    limited = gate(AuthMode.OFF, RateLimiter(1.0, 2, clock=lambda: 0.0))
    assert limited.admit(message(CREATE)).denied is None
    assert limited.admit(message(CREATE)).denied is None
    assert limited.admit(message({**CREATE, "principal": "bob"})).denied is None
    reply = limited.admit(message(CREATE)).denied
    assert reply is not None and reply.result is not None and reply.result.error is not None
    assert reply.result.error.code == "rate_limited"
    assert reply.result.error.details["retry_after_s"] == 1.0
    assert outbound(reply)["events"][1]["principal"] == "alice"  # with auth off, the claim


def test_gate__required_with_a_rate_limit__limits_the_verified_principal() -> None:
    limited = gate(limiter=RateLimiter(1.0, 1, clock=lambda: 0.0))
    assert limited.admit(message(CREATE, bearer=token())).denied is None
    reply = limited.admit(message(CREATE, bearer=token())).denied
    assert reply is not None and reply.result is not None and reply.result.error is not None
    assert reply.result.error.code == "rate_limited"


# -- settings and tools ---------------------------------------------------------------------------


def test_gate__from_settings__required_needs_keys() -> None:
    with pytest.raises(ValueError, match="NEXUS_AUTH_JWKS"):
        Gate.from_settings(Settings(auth=AuthMode.REQUIRED))
    assert Gate.from_settings(Settings()).idle
    assert not Gate.from_settings(Settings(rate_limit_per_s=5)).idle


def test_verifier_from__reads_the_jwks_file(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "k1"}]}))
    verifier = verifier_from(Settings(auth=AuthMode.REQUIRED, auth_jwks=str(path), auth_audience="nexus"))
    assert verifier is not None and verifier.algorithms == {"EdDSA"}
    signed = jwt.encode(
        {"sub": "svc", "aud": "nexus", "exp": 4_000_000_000}, key, "EdDSA", headers={"kid": "k1"}
    )
    assert verifier.verify(f"Bearer {signed}").principal == "svc"


@pytest.mark.parametrize(
    ("content", "message_"),
    [(None, "cannot read"), ("{", "cannot read"), ("[]", "not a JWKS"), ('{"keys": []}', "at least one key")],
)
def test_verifier_from__a_bad_jwks_file__stops_the_worker(
    tmp_path: Path, content: str | None, message_: str
) -> None:
    path = tmp_path / "jwks.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message_):
        verifier_from(Settings(auth=AuthMode.REQUIRED, auth_jwks=str(path)))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("45s", 45), ("30m", 1800), ("1h", 3600), ("7d", 604800), ("1.5h", 5400), (" 2m ", 120)],
)
def test_parse_ttl(text: str, seconds: float) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-1h", "1w", "an hour", "1h30m"])
def test_parse_ttl__refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_ttl(text)


def test_development_token__verifies_with_the_same_settings() -> None:
    settings = Settings(
        auth=AuthMode.REQUIRED, auth_hs256_secret=SECRET, auth_issuer="dev", auth_audience="nx"
    )
    minted = development_token(settings, "alice", "queries:read:*", 3600, now=NOW)
    verifier = verifier_from(settings)
    assert verifier is not None
    verifier.clock = lambda: NOW + 10
    grant = verifier.verify(f"Bearer {minted}")
    assert grant.principal == "alice" and grant.allows("queries:read:anything")
    assert jwt.decode(minted, options={"verify_signature": False})["iss"] == "dev"


@pytest.mark.parametrize(("secret", "message_"), [(None, "not set"), ("short", "at least 32 bytes")])
def test_development_token__needs_a_usable_secret(secret: str | None, message_: str) -> None:
    with pytest.raises(ValueError, match=message_):
        development_token(Settings(auth_hs256_secret=secret), "alice", "", 60, now=NOW)


# -- what the handlers check with the grant ----------------------------------------------------------


def grant(scope: str, principal: str = "alice") -> Grant:
    return Grant(principal, Scopes.parse(scope), NOW + 600)


class Requests:
    def get(self, namespace: str, request_id: str) -> Remembered | None:
        return None


def lookup(grant_: Grant | None, *extra: Any) -> PatternLookup:
    found = PatternLookup(grant=grant_)
    for pattern in [*system_patterns(), *extra]:
        found.add(pattern, latest=True)
    return found


def execute(grant_: Grant | None, pattern_id: str = "user_onboarding", *extra: Any) -> Reply:
    records: dict[str, MemoryRecords] = {}
    service = NamespaceService(Requests(), lambda ns: records.setdefault(ns, MemoryRecords()))
    msg = message(
        {
            "request_id": "x-1",
            "principal": "alice",
            "pattern_id": pattern_id,
            "input": {"source": "user:1", "target": "wallet:1"},
        },
        spec=EXECUTIONS,
    )
    [reply] = service.handle(msg, lookup(grant_, *extra))
    return reply


@pytest.mark.parametrize(
    ("name", "scope", "code", "missing"),
    [
        (
            "a pattern whose step writes where the executor may not write",
            "executions:run:alice",
            "forbidden",
            "relationships:write:alice",
        ),
        (
            "write rights in another namespace only",
            "executions:run:alice relationships:write:bob",
            "forbidden",
            "relationships:write:alice",
        ),
        ("with the right to write", "executions:run:alice relationships:write:alice", None, None),
        ("with a glob", "executions:run:* relationships:write:ali*", None, None),
    ],
)
def test_execution__steps_run_with_the_executors_rights(
    name: str, scope: str, code: str | None, missing: str | None
) -> None:
    reply = execute(grant(scope))
    assert reply.result is not None
    if code is None:
        assert reply.result.status == "ok", reply.result
        assert len(reply.changes) == 1
        return
    assert reply.result.error is not None and reply.result.error.code == code
    assert reply.result.error.details["missing_scope"] == missing
    assert reply.changes == []
    assert "access_denied" in [json.loads(o.value)["type"] for o in reply.outbound if o.spec.name == "events"]


def test_execution__without_a_grant__as_before() -> None:
    reply = execute(None)
    assert reply.result is not None and reply.result.status == "ok"


def test_execution__execute_permission_still_applies_and_patterns_admin_passes_it() -> None:
    from nexus_streams.domain.patterns import Pattern

    restricted = Pattern.model_validate(
        {
            "id": "restricted",
            "name": "R",
            "version": 1,
            "steps": [{"type": "event", "action": "publish", "parameters": {"event_type": "x"}}],
            "metadata": {"owner": "carol"},
            "execute_permission": ["bob"],
        }
    )
    refused = execute(grant("executions:run:alice"), "restricted", restricted)
    assert refused.result is not None and refused.result.error is not None
    assert refused.result.error.code == "forbidden"
    assert refused.result.error.details["missing_scope"] == "patterns:admin"
    admitted = execute(grant("executions:run:alice patterns:admin"), "restricted", restricted)
    assert admitted.result is not None and admitted.result.status == "ok"


async def test_registry__patterns_write_cannot_overwrite_a_system_pattern() -> None:
    store = MemoryPatternStore()
    await register_system_patterns(store)
    registry = PatternRegistry(store, AccessPolicy.of(["alice"]), PatternCache(), Requests())
    document = {**(await store.get("user_onboarding")).to_document(), "description": "mine now"}
    value = {"request_id": "p-1", "principal": "alice", "action": "store", "pattern": document}
    msg = message(value, spec=PATTERNS, key=b"user_onboarding")

    refused = await registry.handle(msg, grant("patterns:write"))  # NEXUS_ADMINS does not count
    assert refused.result is not None and refused.result.error is not None
    assert refused.result.error.code == "forbidden"
    assert refused.result.error.details["missing_scope"] == "patterns:admin"
    assert (await store.get("user_onboarding")).description != "mine now"

    stored = await registry.handle(msg, grant("patterns:admin"))
    assert stored.result is not None and stored.result.status == "ok", stored.result
    assert (await store.get("user_onboarding")).description == "mine now"


def test_the_header_of_the_contract_is_the_one_read() -> None:
    from nexus_streams.domain.auth import AUTHORIZATION_HEADER
    from nexus_streams.topics import ALL_TOPICS, Header

    assert Header.AUTHORIZATION.value == AUTHORIZATION_HEADER
    assert {s.name for s in ALL_TOPICS if Header.AUTHORIZATION in s.headers} == {
        "relationships",
        "queries",
        "executions",
        "patterns",
    }


def test_gate_and_service__decode_a_message_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """With authentication on, the gate and the handler read the same decoded value."""
    import nexus_streams.replies as replies

    decoded: list[bytes | None] = []
    real = replies.decode_object

    def counting(raw: bytes | None) -> dict[str, Any]:
        decoded.append(raw)
        return real(raw)

    monkeypatch.setattr(replies, "decode_object", counting)
    records: dict[str, MemoryRecords] = {}
    service = NamespaceService(Requests(), lambda ns: records.setdefault(ns, MemoryRecords()))
    msg = message(CREATE, bearer=token())
    assert gate().admit(msg).denied is None
    [reply] = service.handle(msg)
    assert reply.result is not None and reply.result.status == "ok", reply.result
    assert len(decoded) == 1


def test_received_data__undecodable__raised_each_time_with_its_reason() -> None:
    from nexus_streams.codec import Undecodable

    msg = message(b"[1, 2]")
    for _ in range(2):
        with pytest.raises(Undecodable, match="JSON list; expected an object"):
            msg.data()
    refused = gate().admit(msg).denied
    assert refused is not None
