"""Issue 12's cold-start tests: a worker answers no execution before its system patterns
(user_onboarding, financial_transaction) are registered, and registers them again when they are
found missing.

- Executions produced before the worker starts, on an empty pattern store: all answered ok.
- The same when Redis comes up only after the worker is ready (registration is still retrying):
  nothing may be answered `store_unavailable` or `not_found` meanwhile.
- The store flushed under a running worker: the patterns come back (in Redis, and for a worker
  restarted with an empty cache and a store flushed again before it runs anything).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from nexus_streams.domain.errors import NexusError
from nexus_streams.store.redis import RedisPatternStore
from tests.integration.conftest import (
    WorkerProcess,
    create_topics,
    own_worker,
    wait_until_answering,
    worker_env,
)
from tests.integration.private_stack import started_stack
from tests.integration.wire import Wire

SYSTEM_PATTERNS = ("user_onboarding", "financial_transaction")
NAMESPACES = 5
#: per namespace: an onboarding, then a transfer over what it made (ordered: one topic, one key)
PAIRS = 2


def executions(run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(namespace, request) x 20: user_onboarding and financial_transaction in 5 namespaces."""
    out = []
    for n in range(NAMESPACES):
        namespace = f"cold{n}-{run_id}"
        for k in range(PAIRS):
            people = {"source": f"user:{n}-{k}", "target": f"wallet:{n}-{k}"}
            for pattern_id in SYSTEM_PATTERNS:
                out.append(
                    (
                        namespace,
                        {
                            "request_id": f"{pattern_id[:4]}-{n}-{k}-{run_id}",
                            "principal": "alice",
                            "pattern_id": pattern_id,
                            "input": people,
                        },
                    )
                )
    return out


async def answers(
    wire: Wire, requests: list[tuple[str, dict[str, Any]]], timeout_s: float
) -> dict[str, dict]:
    rids = {request["request_id"] for _, request in requests}

    def arrived() -> dict[str, dict]:
        return {
            rid: r.json()
            for r in wire.records["results"]
            if (rid := r.headers.get("nexus-request-id")) in rids
        }

    await wire.wait_until(lambda: len(arrived()) == len(rids), timeout_s)
    return arrived()


def not_ok(requests: list[tuple[str, dict[str, Any]]], got: dict[str, dict]) -> list[str]:
    problems = []
    for namespace, request in requests:
        result = got.get(request["request_id"])
        if result is None:
            problems.append(f"{request['request_id']} ({request['pattern_id']} in {namespace}): no answer")
        elif result["status"] != "ok":
            problems.append(f"{request['request_id']} ({request['pattern_id']}): {result['error']}")
    return problems


async def test_cold_start__executions_before_the_worker__answered_ok_on_an_empty_store(
    kafka_bootstrap: str, redis_url: str
) -> None:
    run_id = f"cold-{uuid.uuid4().hex[:8]}"
    env = worker_env(kafka_bootstrap, redis_url, run_id)  # a fresh key prefix: an empty store
    await create_topics(kafka_bootstrap, env)
    wire = Wire(kafka_bootstrap, env["NEXUS_TOPIC_PREFIX"])
    await wire.start()
    worker = WorkerProcess(env, f"worker-{run_id}")
    store = RedisPatternStore.from_url(redis_url, key_prefix=env["NEXUS_REDIS_KEY_PREFIX"])
    try:
        assert await store.list() == [], "the store of a fresh key prefix is not empty"
        requests = executions(run_id)
        for namespace, request in requests:
            await wire.send("executions", namespace, request)
        worker.start()
        got = await answers(wire, requests, timeout_s=120)
        problems = not_ok(requests, got)
        assert not problems, f"worker log {worker.log_path}\n" + "\n".join(problems)
    finally:
        worker.stop()
        worker.remove_data()
        await wire.stop()
        await store.close()


async def test_cold_start__redis_comes_after_the_worker__executions_wait_for_the_system_patterns(
    kafka_bootstrap: str,
) -> None:
    async with started_stack("cold-redis", redis_only=True, shared_bootstrap=kafka_bootstrap) as stack:
        await asyncio.to_thread(stack.stop)  # Redis is down when the worker starts
        run_id = f"late-{stack.dir.name[-8:]}"
        env = worker_env(kafka_bootstrap, stack.redis_url, run_id)
        await create_topics(kafka_bootstrap, env)
        wire = Wire(kafka_bootstrap, env["NEXUS_TOPIC_PREFIX"])
        await wire.start()
        worker = WorkerProcess(env, f"worker-{run_id}")
        try:
            requests = executions(run_id)
            for namespace, request in requests:
                await wire.send("executions", namespace, request)
            worker.start()
            # Redis comes once the worker is consuming and has failed to register the patterns
            deadline = time.monotonic() + 90
            waited_for = ("Worker ready", "system patterns not registered")
            while not all(line in worker.log_text() for line in waited_for):
                assert worker.alive() and time.monotonic() < deadline, (
                    f"worker not ready; see {worker.log_path}"
                )
                await asyncio.sleep(0.2)  # polling the worker's log: there is no event to wait for
            await asyncio.to_thread(stack.start)
            got = await answers(wire, requests, timeout_s=120)
            problems = not_ok(requests, got)
            assert not problems, f"worker log {worker.log_path}\n" + "\n".join(problems)
        finally:
            worker.stop()
            worker.remove_data()
            await wire.stop()


async def execute_both(wire: Wire, namespace: str, tag: str, timeout_s: float = 60) -> list[str]:
    """Run both system patterns once in `namespace`; the problems, if any."""
    problems = []
    people = {"source": f"user:{tag}", "target": f"wallet:{tag}"}
    for pattern_id in SYSTEM_PATTERNS:
        result = await wire.request(
            "executions", namespace, {"pattern_id": pattern_id, "input": people}, timeout_s=timeout_s
        )
        if result["status"] != "ok":
            problems.append(f"{pattern_id} ({tag}): {result['error']}")
    return problems


async def registered(store: RedisPatternStore, timeout_s: float) -> list[str]:
    """The system patterns missing from Redis once `timeout_s` has passed (polled)."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = []
        for pattern_id in SYSTEM_PATTERNS:
            try:
                await store.get(pattern_id)
            except NexusError:
                missing.append(pattern_id)
        if not missing or time.monotonic() > deadline:
            return missing
        await asyncio.sleep(0.5)  # polling Redis: there is no event to wait for


async def test_cold_start__store_flushed__system_patterns_registered_again(kafka_bootstrap: str) -> None:
    async with started_stack("cold-flush", redis_only=True, shared_bootstrap=kafka_bootstrap) as stack:
        async with own_worker(kafka_bootstrap, stack.redis_url, "flush") as (wire, worker, run_id):
            store = RedisPatternStore.from_url(
                stack.redis_url, key_prefix=worker.env["NEXUS_REDIS_KEY_PREFIX"]
            )
            flush = stack.redis()
            try:
                namespace = f"flush-{run_id}"
                assert await execute_both(wire, namespace, "before") == []
                problems: list[str] = []

                flush.flushdb()  # every key of this Redis, as an operator's FLUSHDB
                problems += await execute_both(wire, namespace, "flushed")
                missing = await registered(store, timeout_s=30)
                if missing:
                    problems.append(f"30 s after FLUSHDB, still missing from Redis: {missing}")

                # a restarted worker has an empty cache: flushed again before it runs anything,
                # it must find the patterns missing and register them again
                worker.stop()
                worker.start()
                await wait_until_answering(wire, worker)
                assert not await registered(store, timeout_s=30), "not registered at start"
                flush.flushdb()
                problems += await execute_both(wire, namespace, "restarted")
                missing = await registered(store, timeout_s=30)
                if missing:
                    problems.append(f"after the restart and a FLUSHDB, still missing from Redis: {missing}")
                assert not problems, f"worker log {worker.log_path}\n" + "\n".join(problems)
            finally:
                flush.close()
                await store.close()
