"""Issue 12's fault test, on a private stack (tests/integration/private_stack.py): commands and
executions flow from a producer task while Redis is SIGKILLed and restarted, then the broker is
SIGKILLed and restarted, and at the end the worker is restarted.

The producer acts as a real client: a send that failed is sent again with the same request_id,
and an answer that invites a retry (`store_unavailable`, `internal_error`: "the request may be
retried with the same request_id", topics/README.md) is retried with the same request_id too.

Asserted: every request answered ok within the deadline; no two different final results for one
request (a retried transient error is not final); every namespace holds exactly the relationships
its ok answers made (`stats`, `get`); the patterns stored before the Redis crash, acknowledged,
are still in Redis after it, and still run after the worker restarts (no cache to hide a loss);
the system patterns run after the worker restart; no Traceback in the worker log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from nexus_streams.domain.errors import NexusError
from nexus_streams.store.redis import RedisPatternStore
from tests.integration.conftest import (
    WorkerProcess,
    create_topics,
    own_worker,
    wait_until_answering,
    worker_env,
)
from tests.integration.private_stack import PrivateStack, started_stack
from tests.integration.wire import Wire

NAMESPACES = 3
#: requests the producer sends in all (about 10 a second)
REQUESTS = 280
SEND_INTERVAL_S = 0.1
#: answers that say "try again, same request_id"
TRANSIENT = frozenset({"store_unavailable", "internal_error"})
RETRIES = 5
DEADLINE_S = 90.0


def grant(pattern_id: str) -> dict[str, Any]:
    """A user pattern: a member relationship between the input's source and target, announced."""
    return {
        "id": pattern_id,
        "name": f"Grant ({pattern_id})",
        "description": "adds a member and announces it",
        "steps": [
            {"type": "relationship", "action": "create", "parameters": {"type": "member"}},
            {
                "type": "event",
                "action": "publish",
                "parameters": {"event_type": "member_added"},
                "depends_on": ["create"],
            },
        ],
    }


@dataclass
class Request:
    topic: str
    namespace: str
    payload: dict[str, Any]
    #: the relationship type an ok answer adds to the namespace
    adds: str
    sends: int = 0


@dataclass
class Client:
    """Sends requests as a client would: retried until the broker takes them."""

    bootstrap: str
    prefix: str
    requests: dict[str, Request] = field(default_factory=dict)
    failed_sends: int = 0
    producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", request_timeout_ms=5000, retry_backoff_ms=200
        )
        await self.producer.start()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    async def send(self, request: Request, deadline: float, track: bool = True) -> None:
        """Send until the broker takes it (or the deadline); `track`: one of the requests whose
        answers the test accounts for."""
        assert self.producer is not None
        if track:
            self.requests[request.payload["request_id"]] = request
        value = json.dumps(request.payload).encode()
        while True:
            try:
                async with asyncio.timeout(8):
                    await self.producer.send_and_wait(
                        self.prefix + request.topic, value, key=request.namespace.encode()
                    )
                request.sends += 1
                return
            except (KafkaError, TimeoutError, OSError) as exc:
                self.failed_sends += 1
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not send {request.payload['request_id']}: {exc!r}") from exc
                await asyncio.sleep(0.5)  # a client's backoff before sending again


def request_at(i: int, run_id: str, custom: list[str]) -> Request:
    """The i-th request: a create, an onboarding, a transfer over what that onboarding made, or
    an execution of a custom pattern (those stored so far, in turn)."""
    namespace = f"f{(i // 4) % NAMESPACES}-{run_id}"
    head = {"request_id": f"x{i}-{run_id}", "principal": "alice"}
    kind = i % 4
    if kind == 0:
        create = {"action": "create", "type": "parent", "source": f"team:{i}", "target": f"user:{i}"}
        return Request("relationships", namespace, {**head, **create}, "parent")
    if kind == 1:
        execution = {
            "pattern_id": "user_onboarding",
            "input": {"source": f"user:o{i}", "target": f"wallet:o{i}"},
        }
        return Request("executions", namespace, {**head, **execution}, "owner")
    if kind == 2:
        # over the owner relationship the onboarding just before made (same namespace, same topic)
        transfer = {"source": f"user:o{i - 1}", "target": f"wallet:o{i - 1}"}
        return Request(
            "executions",
            namespace,
            {**head, "pattern_id": "financial_transaction", "input": transfer},
            "linked",
        )
    pattern_id = custom[(i // 4) % len(custom)]
    execution = {"pattern_id": pattern_id, "input": {"source": f"user:c{i}", "target": f"group:c{i}"}}
    return Request("executions", namespace, {**head, **execution}, "member")


class Answers:
    """The results on the wire by request id, indexed as they arrive (cheap to ask often)."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.seen = 0
        self.by_request: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)

    def of(self, request_id: str) -> list[dict[str, Any]]:
        records = self.wire.records["results"]
        for record in records[self.seen :]:
            rid = record.headers.get("nexus-request-id")
            if rid is not None:
                self.by_request[rid].append(record.json())
        self.seen = len(records)
        return self.by_request.get(request_id, [])


def final(copies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The answers that are not an invitation to retry."""
    return [c for c in copies if c["status"] == "ok" or c["error"]["code"] not in TRANSIENT]


@dataclass
class FaultRun:
    """One run of the scenario: the private stack, a worker on it, the client and what came back."""

    stack: PrivateStack
    run_id: str
    wire: Wire
    worker: WorkerProcess
    client: Client
    store: RedisPatternStore
    deadline: float
    answers: Answers = field(init=False)
    #: the custom patterns stored so far (executions take them in turn)
    custom: list[str] = field(default_factory=list)
    retried: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.answers = Answers(self.wire)

    async def ask(self, topic: str, key: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A request of the test's own (not accounted for with the stream): its result."""
        request = Request(topic, key, {"principal": "alice", **payload}, "")
        await self.client.send(request, self.deadline, track=False)
        return await self.wire.result(payload["request_id"], 60)

    async def store_pattern(self, name: str) -> None:
        pattern_id = f"{name}-{self.run_id}"
        payload = {"request_id": f"store-{pattern_id}", "action": "store", "pattern": grant(pattern_id)}
        stored = await self.ask("patterns", pattern_id, payload)
        assert stored["status"] == "ok", stored
        self.custom.append(pattern_id)

    async def produce(self) -> None:
        for i in range(REQUESTS):
            await self.client.send(request_at(i, self.run_id, self.custom), self.deadline)
            await asyncio.sleep(SEND_INTERVAL_S)  # the client's pace

    def answered(self) -> int:
        return sum(1 for rid in self.client.requests if self.answers.of(rid))

    async def settle(self) -> dict[str, tuple[Request, list[dict[str, Any]]]]:
        """Wait for every request's final answer, retrying with the same request_id those answered
        only with errors that invite a retry; what has none at the deadline."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            pending = {}
            for rid, req in self.client.requests.items():
                copies = self.answers.of(rid)
                if not final(copies):
                    pending[rid] = (req, copies)
            exhausted = all(
                self.retried[rid] >= RETRIES and len(c) >= req.sends for rid, (req, c) in pending.items()
            )
            if not pending or exhausted or time.monotonic() > deadline:
                return pending
            for rid, (req, copies) in pending.items():
                # every send answered, and only with errors that invite a retry: send it again
                if copies and len(copies) >= req.sends and self.retried[rid] < RETRIES:
                    self.retried[rid] += 1
                    await self.client.send(req, deadline + 30)
            seen = len(self.wire.records["results"])
            await self.wire.wait_until(lambda seen=seen: len(self.wire.records["results"]) > seen, 2.0)

    def answer_problems(self) -> tuple[list[str], defaultdict[str, Counter[str]]]:
        """One final answer per request, ok; and what the ok answers made, by namespace and type."""
        problems = []
        made: defaultdict[str, Counter[str]] = defaultdict(Counter)
        refused: defaultdict[tuple[str, str], list[str]] = defaultdict(list)
        for rid, req in self.client.requests.items():
            finals = final(self.answers.of(rid))
            if len({repr(sorted(a.items())) for a in finals}) > 1:
                problems.append(f"different results for {rid}: {finals[:2]}")
            if finals and finals[0]["status"] != "ok":
                what = req.payload.get("pattern_id") or req.payload.get("action") or req.topic
                refused[(what, finals[0]["error"]["code"])].append(rid)
            if finals and finals[0]["status"] == "ok" and req.adds:
                made[req.namespace][req.adds] += 1
        for (what, code), rids in refused.items():
            problems.append(f"{len(rids)} requests ({what}) answered {code}, e.g. {rids[:3]}")
        return problems, made

    async def graph_problems(self, made: defaultdict[str, Counter[str]]) -> list[str]:
        """Each namespace holds exactly what its ok answers made: counts by type, and each create."""
        problems = []
        for n in range(NAMESPACES):
            namespace = f"f{n}-{self.run_id}"
            stats = await self.ask(
                "queries", namespace, {"request_id": f"stats-{namespace}", "action": "stats"}
            )
            by_type = {t: c for t, c in (stats.get("output") or {}).get("by_type", {}).items() if c}
            if by_type != dict(made[namespace]):
                problems.append(f"{namespace} holds {by_type}, its ok answers made {dict(made[namespace])}")
        creates = [
            (rid, req)
            for rid, req in self.client.requests.items()
            if req.topic == "relationships" and final(self.answers.of(rid))
        ]

        async def get(rid: str, req: Request) -> str | None:
            p = req.payload
            query = {"action": "get", "type": p["type"], "source": p["source"], "target": p["target"]}
            got = await self.ask("queries", req.namespace, {"request_id": f"get-{rid}", **query})
            return (
                None
                if got["status"] == "ok"
                else f"the relationship {rid} created is missing: {got.get('error')}"
            )

        problems += [p for p in await asyncio.gather(*(get(rid, req) for rid, req in creates)) if p]
        return problems

    async def pattern_problems(self) -> list[str]:
        """The acknowledged patterns are in Redis, as stored."""
        problems = []
        for pattern_id in self.custom:
            try:
                pattern = await self.store.get(pattern_id)
            except NexusError as exc:
                problems.append(
                    f"pattern {pattern_id}, stored and acknowledged before Redis died: {exc.message}"
                )
                continue
            if (pattern.version, pattern.name) != (1, grant(pattern_id)["name"]):
                problems.append(f"pattern {pattern_id} came back as v{pattern.version} {pattern.name!r}")
        return problems

    async def restart_problems(self) -> list[str]:
        """After a worker restart (an empty pattern cache) every pattern still runs."""
        self.worker.stop()
        self.worker.start()
        await wait_until_answering(self.wire, self.worker)
        problems = []
        namespace = f"after-{self.run_id}"
        for k, pattern_id in enumerate(["user_onboarding", "financial_transaction", *self.custom]):
            # the transfer goes over what the onboarding just before made
            people = (
                {"source": f"user:a{k}", "target": f"wallet:a{k}"}
                if k != 1
                else {"source": "user:a0", "target": "wallet:a0"}
            )
            payload = {"request_id": f"after-{k}-{self.run_id}", "pattern_id": pattern_id, "input": people}
            ran = await self.ask("executions", namespace, payload)
            if ran["status"] != "ok":
                problems.append(f"after the worker restart, {pattern_id} answers {ran['error']}")
        return problems


async def test_faults__redis_and_broker_sigkilled__nothing_lost_nothing_doubled(
    private_stack: PrivateStack,
) -> None:
    started = time.monotonic()
    stack = private_stack
    run_id = stack.dir.name[-8:]
    env = worker_env(stack.bootstrap, stack.redis_url, f"faults-{run_id}")
    await create_topics(stack.bootstrap, env)
    run = FaultRun(
        stack,
        run_id,
        Wire(stack.bootstrap, env["NEXUS_TOPIC_PREFIX"]),
        WorkerProcess(env, f"worker-faults-{run_id}"),
        Client(stack.bootstrap, env["NEXUS_TOPIC_PREFIX"]),
        RedisPatternStore.from_url(stack.redis_url, key_prefix=env["NEXUS_REDIS_KEY_PREFIX"]),
        deadline=time.monotonic() + 180,
    )
    wire, worker, client = run.wire, run.worker, run.client
    await wire.start()
    producer: asyncio.Task[None] | None = None
    # the test's own clients log every failed connection while the broker is down: expected here
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        worker.start()
        await wait_until_answering(wire, worker)
        await client.start()
        await run.store_pattern("grant-a")
        warm = {
            "request_id": f"warm-{run_id}",
            "pattern_id": run.custom[0],
            "input": {"source": "user:s", "target": "group:s"},
        }
        ran = await run.ask("executions", f"setup-{run_id}", warm)
        assert ran["status"] == "ok", ran  # and grant-a is in the worker's cache

        producer = asyncio.create_task(run.produce())
        assert await wire.wait_until(lambda: run.answered() >= 30 or producer.done(), 60), "no answers"

        # a pattern stored and acknowledged just before Redis dies must survive it; it is not in the
        # worker's cache yet, so executions of it read Redis
        await run.store_pattern("grant-b")
        await asyncio.to_thread(stack.kill, "redis")
        during = len(client.requests)
        assert await wire.wait_until(lambda: len(client.requests) >= during + 30 or producer.done(), 30)
        await asyncio.to_thread(stack.start)  # Redis again, from what it persisted

        after_redis = run.answered()
        assert await wire.wait_until(lambda: run.answered() >= after_redis + 20 or producer.done(), 60), (
            "no answers after Redis came back"
        )
        await asyncio.to_thread(stack.kill, "kafka")
        failed = client.failed_sends
        for _ in range(60):  # the client notices (its sends fail) before the broker comes back
            if client.failed_sends > failed + 1 or producer.done():
                break
            await asyncio.sleep(0.5)  # polling the client's counter
        await asyncio.to_thread(stack.start)
        await asyncio.wait_for(producer, timeout=max(1.0, run.deadline - time.monotonic()))

        pending = await run.settle()
        problems: list[str] = []
        if pending:
            problems.append(
                f"{len(pending)} of {len(client.requests)} requests without a final answer after "
                f"{time.monotonic() - started:.0f}s: "
                + "; ".join(
                    f"{rid} ({req.topic}, sent {req.sends}x): {[c.get('error') for c in copies][:2]}"
                    for rid, (req, copies) in list(pending.items())[:8]
                )
            )
        answered, made = run.answer_problems()
        problems += answered
        problems += await run.graph_problems(made)
        problems += await run.pattern_problems()
        problems += await run.restart_problems()
        log = worker.log_text()
        if "Traceback" in log:
            at = log.index("Traceback")
            problems.append(f"the worker logged a Traceback:\n{log[max(0, at - 300) : at + 1500]}")
        assert not problems, (
            f"{len(client.requests)} requests, {client.failed_sends} failed sends, "
            f"{sum(run.retried.values())} retries, {time.monotonic() - started:.0f}s; "
            f"worker log {worker.log_path}\n" + "\n".join(problems[:30])
        )
    finally:
        quiet.setLevel(level)
        if producer is not None and not producer.done():
            producer.cancel()
        await client.stop()
        worker.stop()
        worker.remove_data()
        await wire.stop()
        await run.store.close()


async def test_faults__store_unavailable_execution__retried_with_the_same_request_id_runs_again(
    kafka_bootstrap: str,
) -> None:
    """`store_unavailable`: "the request may be retried with the same request_id". Redis is stopped
    cleanly (it saves), so the pattern is there when it comes back; only the retry is in question."""
    async with started_stack("unavailable", redis_only=True, shared_bootstrap=kafka_bootstrap) as stack:
        async with own_worker(kafka_bootstrap, stack.redis_url, "unavailable") as (wire, worker, run_id):
            pattern_id = f"grant-{run_id}"
            stored = await wire.request(
                "patterns", pattern_id, {"action": "store", "pattern": grant(pattern_id)}, timeout_s=60
            )
            assert stored["status"] == "ok", stored  # and not in the worker's cache: never executed
            await asyncio.to_thread(stack.stop)
            request = {
                "request_id": f"x-{run_id}",
                "principal": "alice",
                "pattern_id": pattern_id,
                "input": {"source": "user:1", "target": "group:1"},
            }
            namespace = f"ns-{run_id}"
            await wire.send("executions", namespace, request)
            first = await wire.result(request["request_id"], timeout_s=60)
            assert first["status"] == "error" and first["error"]["code"] == "store_unavailable", first
            await asyncio.to_thread(stack.start)
            await wire.send("executions", namespace, request)
            copies = await wire.wait_for(
                "results", lambda r: r.headers.get("nexus-request-id") == request["request_id"], 2, 60
            )
            retry = copies[-1].json()
            assert retry["status"] == "ok", f"the retry after Redis came back: {retry}"
