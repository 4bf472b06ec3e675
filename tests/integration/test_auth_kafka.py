"""Authentication through the real broker (issue 15): a worker with NEXUS_AUTH=required, an HS256
secret and a JWKS (RS256). The spoofing suite: none of its requests succeeds, none has an effect,
each is answered and publishes an access_denied event. The same actions with the right tokens
succeed, the spec's two examples included; a principal over its rate limit is told when to retry."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from nexus_streams.domain.auth import authorization_header
from nexus_streams.store.redis import RedisPatternStore
from tests.integration.conftest import WorkerProcess, own_worker
from tests.integration.wire import Wire

SECRET = "integration-secret-" + "x" * 24
ISSUER = "https://idp.nexus.test"
AUDIENCE = "nexus-tests"
# every test but the flood shares principals (alice above all) over the whole module: the bucket
# holds a module's worth of their requests, the flood sends twice the burst at once
RATE_PER_S, BURST = 20, 200


@dataclass
class AuthWorker:
    wire: Wire
    worker: WorkerProcess
    rsa_key: rsa.RSAPrivateKey
    store: RedisPatternStore
    #: alice's own namespace, where the spoofing suite tries to write
    alice_ns: str
    bob_ns: str


@pytest.fixture(scope="module")
async def auth(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AuthWorker]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path_factory.mktemp("auth") / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "rsa-1", "use": "sig"}]}))
    settings = {
        "NEXUS_AUTH": "required",
        "NEXUS_AUTH_HS256_SECRET": SECRET,
        "NEXUS_AUTH_JWKS": str(jwks),
        "NEXUS_AUTH_ISSUER": ISSUER,
        "NEXUS_AUTH_AUDIENCE": AUDIENCE,
        "NEXUS_RATE_LIMIT_PER_S": str(RATE_PER_S),
        "NEXUS_RATE_LIMIT_BURST": str(BURST),
    }
    async with own_worker(kafka_bootstrap, redis_url, "auth", settings=settings) as (wire, worker, _):
        store = RedisPatternStore.from_url(redis_url, key_prefix=worker.env["NEXUS_REDIS_KEY_PREFIX"])
        try:
            suffix = uuid.uuid4().hex[:8]
            yield AuthWorker(wire, worker, key, store, f"alice-{suffix}", f"bob-{suffix}")
        finally:
            await store.close()


def claims(sub: str, scope: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": sub,
        "scope": scope,
        "iat": now,
        "exp": now + 600,
        "iss": ISSUER,
        "aud": AUDIENCE,
        **changes,
    }


def hs256(sub: str, scope: str, **changes: Any) -> str:
    return jwt.encode(claims(sub, scope, **changes), SECRET, "HS256")


def headers(token: str) -> list[tuple[str, bytes]]:
    return [authorization_header(token)]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def alg_none(sub: str, scope: str) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims(sub, scope)).encode())}."


def hs256_with_public_key(key: rsa.RSAPrivateKey, sub: str, scope: str) -> str:
    """Algorithm confusion: an HS256 token whose HMAC secret is the RSA public key (PEM)."""
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    signing_input = f"{header}.{b64(json.dumps(claims(sub, scope)).encode())}"
    return f"{signing_input}.{b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())}"


def alice_full(ns: str) -> str:
    return hs256("alice", f"relationships:write:{ns} queries:read:{ns} executions:run:{ns} patterns:write")


def create(source: str, target: str, principal: str = "alice", **fields: Any) -> dict[str, Any]:
    return {
        "request_id": f"a-{uuid.uuid4().hex}",
        "principal": principal,
        "action": "create",
        "type": "owner",
        "source": source,
        "target": target,
        **fields,
    }


async def exists(auth: AuthWorker, source: str, target: str, type_: str = "owner") -> bool:
    """Whether alice (with the right token) finds the relationship in her namespace."""
    got = await auth.wire.request(
        "queries",
        auth.alice_ns,
        {"principal": "alice", "action": "get", "type": type_, "source": source, "target": target},
        headers=headers(alice_full(auth.alice_ns)),
    )
    assert got["status"] == "ok" or got["error"]["code"] == "not_found", got
    return got["status"] == "ok"


# -- the spoofing suite ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Spoof:
    name: str
    #: (auth) -> (topic, key, payload, headers)
    message: Callable[[AuthWorker], tuple[str, str, dict[str, Any], list[tuple[str, bytes]]]]
    code: str
    reason: str
    #: (auth) -> whether the attempt had an effect
    effect: Callable[[AuthWorker], Any]


def _write(token: Callable[[AuthWorker], str | None], entity: str, principal: str = "alice") -> Any:
    def message(a: AuthWorker) -> tuple[str, str, dict[str, Any], list[tuple[str, bytes]]]:
        value = token(a)
        return (
            "relationships",
            a.alice_ns,
            create(f"user:{entity}", f"wallet:{entity}", principal),
            (headers(value) if value is not None else []),
        )

    return message


def _written(entity: str) -> Callable[[AuthWorker], Any]:
    return lambda a: exists(a, f"user:{entity}", f"wallet:{entity}")


async def _onboarding_changed(a: AuthWorker) -> bool:
    return (await a.store.get("user_onboarding")).description == "taken over"


def _overwrite_system_pattern(a: AuthWorker) -> tuple[str, str, dict[str, Any], list[tuple[str, bytes]]]:
    document = json.loads(
        (Path(__file__).parents[2] / "nexus_streams/patterns/user_onboarding.json").read_text()
    )
    payload = {
        "request_id": f"p-{uuid.uuid4().hex}",
        "principal": "admin",  # named in NEXUS_ADMINS: that does not count with authentication required
        "action": "store",
        "pattern": {**document, "description": "taken over"},
    }
    return "patterns", "user_onboarding", payload, headers(hs256("admin", "patterns:write"))


def _execute_writing_pattern(a: AuthWorker) -> tuple[str, str, dict[str, Any], list[tuple[str, bytes]]]:
    payload = {
        "request_id": f"x-{uuid.uuid4().hex}",
        "principal": "bob",
        "pattern_id": "user_onboarding",
        "input": {"source": "user:bobexec", "target": "wallet:bobexec"},
    }
    scope = f"executions:run:* relationships:write:{a.bob_ns} queries:read:*"
    return "executions", a.alice_ns, payload, headers(hs256("bob", scope))


def _read_alices_graph(a: AuthWorker) -> tuple[str, str, dict[str, Any], list[tuple[str, bytes]]]:
    payload = {"request_id": f"q-{uuid.uuid4().hex}", "principal": "bob", "action": "stats"}
    return "queries", a.alice_ns, payload, headers(hs256("bob", f"queries:read:{a.bob_ns}"))


async def _nothing(a: AuthWorker) -> bool:
    return False


SPOOFS = [
    Spoof("no token", _write(lambda a: None, "s1"), "unauthenticated", "missing_token", _written("s1")),
    Spoof(
        "an expired token",
        _write(
            lambda a: hs256("alice", f"relationships:write:{a.alice_ns}", exp=int(time.time()) - 3600), "s2"
        ),
        "unauthenticated",
        "expired",
        _written("s2"),
    ),
    Spoof(
        "a wrong signing key",
        _write(
            lambda a: jwt.encode(claims("alice", f"relationships:write:{a.alice_ns}"), "y" * 40, "HS256"),
            "s3",
        ),
        "unauthenticated",
        "bad_signature",
        _written("s3"),
    ),
    Spoof(
        "a wrong audience",
        _write(lambda a: hs256("alice", f"relationships:write:{a.alice_ns}", aud="another-service"), "s4"),
        "unauthenticated",
        "wrong_audience",
        _written("s4"),
    ),
    Spoof(
        "alg none",
        _write(lambda a: alg_none("alice", f"relationships:write:{a.alice_ns}"), "s5"),
        "unauthenticated",
        "algorithm_refused",
        _written("s5"),
    ),
    Spoof(
        "an HS256 token signed with the public key",
        _write(
            lambda a: hs256_with_public_key(a.rsa_key, "alice", f"relationships:write:{a.alice_ns}"), "s6"
        ),
        "unauthenticated",
        "bad_signature",
        _written("s6"),
    ),
    Spoof(
        "bob's token writing to alice's namespace",
        _write(lambda a: hs256("bob", f"relationships:write:{a.bob_ns}"), "s7", principal="bob"),
        "forbidden",
        "missing_scope",
        _written("s7"),
    ),
    Spoof(
        "a principal field that differs from sub",
        _write(lambda a: hs256("mallory", f"relationships:write:{a.alice_ns}"), "s8", principal="alice"),
        "forbidden",
        "principal_mismatch",
        _written("s8"),
    ),
    Spoof(
        "a patterns:write token overwriting a system pattern",
        _overwrite_system_pattern,
        "forbidden",
        "not_permitted",
        _onboarding_changed,
    ),
    Spoof(
        "a pattern whose steps write where its executor may not write",
        _execute_writing_pattern,
        "forbidden",
        "missing_scope",
        lambda a: exists(a, "user:bobexec", "wallet:bobexec"),
    ),
    Spoof("bob reading alice's graph", _read_alices_graph, "forbidden", "missing_scope", _nothing),
]


@pytest.mark.parametrize("spoof", SPOOFS, ids=[s.name for s in SPOOFS])
async def test_spoofing__refused_answered_and_without_effect(auth: AuthWorker, spoof: Spoof) -> None:
    topic, key, payload, sent_headers = spoof.message(auth)
    result = await auth.wire.request(topic, key, payload, headers=sent_headers, timeout_s=60)
    assert result["status"] == "error", result
    assert result["error"]["code"] == spoof.code, result
    assert result["error"]["details"]["reason"] == spoof.reason, result
    events = await auth.wire.events(payload["request_id"], count=2)
    denied = [e for e in events if e["type"] == "access_denied"]
    assert len(denied) == 1, events
    assert denied[0]["data"]["reason"] == spoof.reason
    assert not await spoof.effect(auth), f"{spoof.name} had an effect"


async def test_spoofing__no_token_and_no_request_id__dead_lettered(auth: AuthWorker) -> None:
    value = {
        "principal": "alice",
        "action": "create",
        "type": "owner",
        "source": "user:dl",
        "target": "wallet:dl",
    }
    partition, offset = await auth.wire.send_located("relationships", auth.alice_ns, value)
    await auth.wire.wait_until(lambda: bool(auth.wire.dead_letters("relationships", partition, offset)), 30)
    [dead] = auth.wire.dead_letters("relationships", partition, offset)
    assert dead.headers["nexus-error-code"] == "unauthenticated"
    assert not await exists(auth, "user:dl", "wallet:dl")


async def test_spoofing__a_refused_request_id_runs_once_a_token_comes(auth: AuthWorker) -> None:
    """A refusal is not remembered: nobody can spend alice's request id for her."""
    payload = create("user:retry", "wallet:retry")
    refused = await auth.wire.request("relationships", auth.alice_ns, payload)
    assert refused["error"]["code"] == "unauthenticated"
    token = hs256("alice", f"relationships:write:{auth.alice_ns}")
    await auth.wire.send("relationships", auth.alice_ns, payload, headers(token))
    await auth.wire.wait_until(
        lambda: (
            len(auth.wire.matching("results", lambda r: r.json().get("request_id") == payload["request_id"]))
            >= 2
        ),
        30,
    )
    results = [
        r.json()
        for r in auth.wire.matching("results", lambda r: r.json().get("request_id") == payload["request_id"])
    ]
    assert [r["status"] for r in results] == ["error", "ok"]
    assert await exists(auth, "user:retry", "wallet:retry")


@pytest.mark.parametrize(
    ("refusal", "code"),
    [("no token", "unauthenticated"), ("bob's token", "forbidden")],
)
async def test_refused_command__releases_a_query_waiting_for_its_offset(
    auth: AuthWorker, refusal: str, code: str
) -> None:
    """A refusal has no effect, but its offset is processed: a query whose `min_offset` is the
    refused command's offset is answered then, not when its wait runs out (NEXUS_MIN_OFFSET_WAIT_S)."""
    ns = f"ryw-{uuid.uuid4().hex[:8]}"
    token = hs256("alice", f"relationships:write:{ns} queries:read:{ns}")
    created = create("user:ryw", "wallet:ryw")
    partition, offset = await auth.wire.send_located("relationships", ns, created, headers(token))
    assert (await auth.wire.result(created["request_id"]))["status"] == "ok"
    waiting = {
        "request_id": f"q-{uuid.uuid4().hex}",
        "principal": "alice",
        "action": "get",
        "type": "owner",
        "source": "user:ryw",
        "target": "wallet:ryw",
        "min_offset": offset + 1,
    }
    await auth.wire.send("queries", ns, waiting, headers(token))
    # the next query of the same partition is answered after the first was read (and parked)
    behind = await auth.wire.request(
        "queries", ns, {"principal": "alice", "action": "stats"}, headers=headers(token)
    )
    assert behind["status"] == "ok", behind
    assert not auth.wire.matching("results", lambda r: r.json().get("request_id") == waiting["request_id"])
    refused_headers = [] if refusal == "no token" else headers(hs256("bob", "relationships:write:bob-*"))
    refused = create("user:no", "wallet:no", principal="alice" if refusal == "no token" else "bob")
    sent_at = time.monotonic()
    refused_at = await auth.wire.send_located("relationships", ns, refused, refused_headers)
    assert refused_at == (partition, offset + 1), "another message took the offset the query waits for"
    assert (await auth.wire.result(refused["request_id"]))["error"]["code"] == code
    answer = await auth.wire.result(waiting["request_id"], timeout_s=10)
    elapsed = time.monotonic() - sent_at
    assert answer["status"] == "ok", answer  # a query left waiting answers `timeout` after 4 s
    assert elapsed < 3.0, f"answered {elapsed:.1f}s after the refusal"
    assert answer["offset"] >= offset + 1, answer


# -- the same actions with the right tokens ----------------------------------------------------------


async def ok(auth: AuthWorker, topic: str, key: str, payload: dict[str, Any], token: str) -> dict[str, Any]:
    result = await auth.wire.request(topic, key, payload, headers=headers(token), timeout_s=60)
    assert result["status"] == "ok", result.get("error", result)
    return result


async def test_right_tokens__relationships_and_queries(auth: AuthWorker) -> None:
    ns = auth.alice_ns
    await ok(
        auth,
        "relationships",
        ns,
        create("user:ok1", "wallet:ok1"),
        hs256("alice", f"relationships:write:{ns}"),
    )
    created = await ok(
        auth,
        "relationships",
        ns,
        create("user:ok2", "wallet:ok2"),
        hs256("alice", "relationships:write:alice-*"),
    )
    [event] = [
        e for e in await auth.wire.events(created["request_id"]) if e["type"] == "relationship_created"
    ]
    assert event["principal"] == "alice"
    rs256 = jwt.encode(
        claims("alice", f"relationships:write:{ns}"), auth.rsa_key, "RS256", headers={"kid": "rsa-1"}
    )
    await ok(auth, "relationships", ns, create("user:ok3", "wallet:ok3"), rs256)
    for entity in ("ok1", "ok2", "ok3"):
        assert await exists(auth, f"user:{entity}", f"wallet:{entity}")
    stats = await ok(
        auth, "queries", ns, {"principal": "alice", "action": "stats"}, hs256("alice", "queries:read:*")
    )
    assert stats["output"]["relationships"] >= 3


async def test_right_tokens__the_spec_examples(auth: AuthWorker) -> None:
    ns = auth.alice_ns
    token = alice_full(ns)
    onboarded = await ok(
        auth,
        "executions",
        ns,
        {
            "principal": "alice",
            "pattern_id": "user_onboarding",
            "input": {"source": "user:on", "target": "wallet:on"},
        },
        token,
    )
    assert onboarded["output"]["steps"]["create"]["status"] == "completed"
    batch = {
        "principal": "alice",
        "action": "batch",
        "commands": [
            {"action": "create", "type": "member", "source": "user:pa", "target": "group:t"},
            {"action": "create", "type": "member", "source": "user:pb", "target": "group:t"},
        ],
    }
    await ok(auth, "relationships", ns, batch, token)
    transfer = {
        "principal": "alice",
        "pattern_id": "financial_transaction",
        "input": {"source": "user:pa", "target": "user:pb"},
    }
    await ok(auth, "executions", ns, transfer, token)
    assert await exists(auth, "user:pa", "user:pb", "linked")


async def test_right_tokens__patterns(auth: AuthWorker) -> None:
    pattern_id = f"alices_{uuid.uuid4().hex[:8]}"
    document = {
        "id": pattern_id,
        "name": "Alice's",
        "description": "one event",
        "steps": [{"type": "event", "action": "publish", "parameters": {"event_type": "hello"}}],
    }
    store = {"principal": "alice", "action": "store", "pattern": document}
    stored = await ok(auth, "patterns", pattern_id, store, hs256("alice", "patterns:write"))
    assert stored["output"]["created"] is True
    # another principal's pattern needs patterns:admin
    refused = await auth.wire.request(
        "patterns",
        pattern_id,
        {"principal": "carol", "action": "deprecate"},
        headers=headers(hs256("carol", "patterns:write")),
    )
    assert refused["error"]["code"] == "forbidden"
    assert refused["error"]["details"]["missing_scope"] == "patterns:admin"
    await ok(
        auth,
        "patterns",
        pattern_id,
        {"principal": "carol", "action": "deprecate"},
        hs256("carol", "patterns:admin"),
    )


async def test_right_tokens__a_pattern_runs_with_the_executors_rights(auth: AuthWorker) -> None:
    ns = auth.bob_ns
    token = hs256("bob", f"executions:run:{ns} relationships:write:{ns}")
    payload = {
        "principal": "bob",
        "pattern_id": "user_onboarding",
        "input": {"source": "user:b1", "target": "wallet:b1"},
    }
    await ok(auth, "executions", ns, payload, token)


# -- standing queries with authentication (docs/standing-queries.md) ---------------------------------

PATH = {"action": "find_path", "source": "user:1", "target": "user:3", "max_depth": 2}
ONBOARD = {
    "pattern_id": "user_onboarding",
    "input": {"source": "{{input.witness.path.0}}", "target": "wallet:{{input.offset}}"},
}


def subscription(sid: str, principal: str = "alice", **fields: Any) -> dict[str, Any]:
    return {
        "request_id": f"s-{uuid.uuid4().hex}",
        "principal": principal,
        "action": "subscribe",
        "subscription_id": sid,
        "query": PATH,
        **fields,
    }


async def refused_with(
    auth: AuthWorker, ns: str, payload: dict[str, Any], token: str, code: str, reason: str
) -> dict[str, Any]:
    result = await auth.wire.request("queries", ns, payload, headers=headers(token))
    assert result["status"] == "error", result
    assert (result["error"]["code"], result["error"]["details"]["reason"]) == (code, reason), result
    events = await auth.wire.events(payload["request_id"], count=2)
    assert [e["data"]["reason"] for e in events if e["type"] == "access_denied"] == [reason], events
    return result


async def test_standing__subscribe_needs_queries_read_of_the_namespace(auth: AuthWorker) -> None:
    ns = f"sq-{uuid.uuid4().hex[:8]}"
    await refused_with(
        auth, ns, subscription("s1", "bob"), hs256("bob", "queries:read:bob-*"), "forbidden", "missing_scope"
    )
    await refused_with(
        auth,
        ns,
        subscription("s1"),
        hs256("alice", f"relationships:write:{ns}"),
        "forbidden",
        "missing_scope",
    )
    await refused_with(
        auth, ns, {**subscription("s1"), "principal": "alice"}, "x.y.z", "unauthenticated", "malformed_token"
    )
    subscribed = await ok(auth, "queries", ns, subscription("s1"), hs256("alice", f"queries:read:{ns}"))
    assert subscribed["output"]["created"] is True
    listed = await ok(
        auth,
        "queries",
        ns,
        {"principal": "alice", "action": "list_subscriptions"},
        hs256("alice", f"queries:read:{ns}"),
    )
    [only] = listed["output"]["subscriptions"]
    assert (only["subscription_id"], only["principal"]) == ("s1", "alice")


async def test_standing__on_match_needs_executions_run(auth: AuthWorker) -> None:
    ns = f"sq-{uuid.uuid4().hex[:8]}"
    refused = await refused_with(
        auth,
        ns,
        subscription("t1", on_match=ONBOARD),
        hs256("alice", f"queries:read:{ns} relationships:write:{ns}"),
        "forbidden",
        "missing_scope",
    )
    assert refused["error"]["details"]["missing_scope"] == f"executions:run:{ns}"


async def test_standing__trigger_runs_as_the_subscriber_with_its_scopes(auth: AuthWorker) -> None:
    """The match runs user_onboarding as alice with the scopes her token had at subscribe time;
    a subscriber without write rights gets a trigger that is refused, not one that writes."""
    ns = f"sq-{uuid.uuid4().hex[:8]}"
    alice = hs256("alice", f"queries:read:{ns} executions:run:{ns} relationships:write:{ns}")
    await ok(auth, "queries", ns, subscription("writer", on_match=ONBOARD), alice)
    carol = hs256("carol", f"queries:read:{ns} executions:run:{ns}")  # no relationships:write
    await ok(auth, "queries", ns, subscription("reader", "carol", on_match=ONBOARD), carol)
    change = create("user:1", "user:3", type="member")
    partition, offset = await auth.wire.send_located("relationships", ns, change, headers(alice))
    assert (await auth.wire.result(change["request_id"]))["status"] == "ok"

    def matched(sid: str) -> list[dict[str, Any]]:
        return [
            r.json()
            for r in auth.wire.matching(
                "events",
                lambda r: (
                    r.headers.get("nexus-subscription-id") == sid and r.headers.get("nexus-namespace") == ns
                ),
            )
            if r.json()["type"] == "standing_query_matched"
        ]

    assert await auth.wire.wait_until(lambda: bool(matched("writer")) and bool(matched("reader")), 30)
    ran = await auth.wire.result(matched("writer")[0]["data"]["trigger"]["request_id"])
    assert ran["status"] == "ok", ran
    got = await ok(
        auth,
        "queries",
        ns,
        {
            "principal": "alice",
            "action": "get",
            "type": "owner",
            "source": "user:1",
            "target": f"wallet:{offset}",
        },
        alice,
    )
    assert got["output"]["relationship"]["source"] == "user:1"
    executed = [e for e in await auth.wire.events(ran["request_id"]) if e["type"] == "pattern_executed"]
    assert executed and executed[0]["principal"] == "alice", executed
    refused = await auth.wire.result(matched("reader")[0]["data"]["trigger"]["request_id"])
    assert refused["status"] == "error", refused
    assert refused["error"]["code"] == "forbidden", refused
    assert refused["error"]["details"]["missing_scope"] == f"relationships:write:{ns}", refused


async def test_standing__only_the_subscriber_unsubscribes(auth: AuthWorker) -> None:
    ns = f"sq-{uuid.uuid4().hex[:8]}"
    alice = hs256("alice", f"queries:read:{ns}")
    await ok(auth, "queries", ns, subscription("mine"), alice)
    bob = hs256("bob", "queries:read:*")
    gone = {
        "request_id": f"u-{uuid.uuid4().hex}",
        "principal": "bob",
        "action": "unsubscribe",
        "subscription_id": "mine",
    }
    await refused_with(auth, ns, gone, bob, "forbidden", "not_permitted")
    taken = await auth.wire.request("queries", ns, subscription("mine", "bob"), headers=headers(bob))
    assert taken["error"]["code"] == "subscription_exists", taken
    removed = await ok(
        auth,
        "queries",
        ns,
        {"principal": "alice", "action": "unsubscribe", "subscription_id": "mine"},
        alice,
    )
    assert removed["output"]["removed"] is True


# -- rate limits and the counter ----------------------------------------------------------------------


async def test_rate_limit__over_it__rate_limited_with_retry_after(auth: AuthWorker) -> None:
    ns = f"flood-{uuid.uuid4().hex[:8]}"
    token = hs256("flood", f"relationships:write:{ns}")
    payloads = [create(f"user:f{i}", f"wallet:f{i}", principal="flood") for i in range(2 * BURST)]
    await asyncio.gather(*(auth.wire.send("relationships", ns, p, headers(token)) for p in payloads))
    results = await asyncio.gather(*(auth.wire.result(p["request_id"], timeout_s=60) for p in payloads))
    limited = [r for r in results if r["status"] == "error"]
    assert limited, "nothing was rate limited"
    assert {r["error"]["code"] for r in limited} == {"rate_limited"}
    assert all(r["error"]["details"]["retry_after_s"] > 0 for r in limited)
    assert len(results) - len(limited) >= BURST


def metric(auth: AuthWorker, name: str) -> dict[str, float]:
    port = auth.worker.env["NEXUS_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:  # noqa: S310
        text = resp.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.rpartition(" ")
            found[labels[len(name) :]] = float(value)
    return found


async def test_metrics__refusals_count_by_reason(auth: AuthWorker) -> None:
    refused = await auth.wire.request("relationships", auth.alice_ns, create("user:m", "wallet:m"))
    assert refused["error"]["code"] == "unauthenticated"
    deadline = time.monotonic() + 10  # counted once published: the result may come first
    while (counted := metric(auth, "nexus_access_denied_total")).get('{reason="missing_token"}', 0) < 1:
        assert time.monotonic() < deadline, counted
        await asyncio.sleep(0.2)
    assert set(counted) >= {'{reason="bad_signature"}', '{reason="missing_scope"}'}


# -- the tools against the worker ----------------------------------------------------------------------


async def test_cli__token_then_send_with_it(auth: AuthWorker) -> None:
    from tests.integration.test_cli import cli

    ns = auth.alice_ns
    env = {k: v for k, v in auth.worker.env.items() if k != "NEXUS_TOKEN"}
    code, minted, err = await cli(
        env, "token", "--sub", "alice", "--scope", f"relationships:write:{ns}", "--ttl", "5m"
    )
    assert code == 0, err
    command = '{"action": "create", "type": "owner", "source": "user:cli", "target": "wallet:cli"}'
    code, out, err = await cli(env, "send", "relationships", command, "--key", ns, "--token", minted.strip())
    assert code == 0, err
    assert json.loads(out)["status"] == "ok"
    # without a token: refused, exit 1
    code, out, _ = await cli(env, "send", "relationships", command, "--key", ns)
    assert code == 1
    assert json.loads(out)["error"]["code"] == "unauthenticated"


async def test_cli__execute_with_nexus_token(auth: AuthWorker) -> None:
    from tests.integration.test_cli import cli

    ns = auth.alice_ns
    env = {**auth.worker.env, "NEXUS_TOKEN": alice_full(ns)}
    code, out, err = await cli(
        env,
        "execute",
        "user_onboarding",
        "--namespace",
        ns,
        "--input",
        '{"source": "user:ex", "target": "wallet:ex"}',
    )
    assert code == 0, err
    assert json.loads(out)["status"] == "ok"
    assert await exists(auth, "user:ex", "wallet:ex")


async def test_client__sends_its_token(auth: AuthWorker) -> None:
    from nexus_streams.client import NexusClient, NexusRequestError
    from nexus_streams.settings import Settings

    ns = auth.alice_ns
    settings = Settings(
        kafka_bootstrap=auth.worker.env["NEXUS_KAFKA_BOOTSTRAP"],
        topic_prefix=auth.worker.env["NEXUS_TOPIC_PREFIX"],
    )
    async with NexusClient(settings, token=alice_full(ns)) as client:
        result = await client.execute_pattern(
            "user_onboarding", {"source": "user:cl", "target": "wallet:cl"}, namespace=ns
        )
        assert result["status"] == "ok"
    async with NexusClient(settings) as anonymous:
        with pytest.raises(NexusRequestError) as info:
            await anonymous.execute_pattern(
                "user_onboarding", {"source": "user:an", "target": "wallet:an"}, namespace=ns
            )
        assert info.value.code == "unauthenticated"
