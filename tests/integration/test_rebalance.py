"""Two workers under a flow of commands (issue 13, "Replicas and hand-over"): a second worker joins,
the first stops on SIGTERM and starts again (graceful rebalances: no second result for any
request), then it is SIGKILLed (the other takes its namespaces over) and comes back. Every
request is answered, every copy of a result is the same, and every namespace holds exactly the
relationships whose creates were answered ok."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.integration.conftest import (
    REPO,
    TABLE_STORES,
    WorkerProcess,
    free_port,
    own_worker,
    wait_until_answering,
)
from tests.integration.wire import Wire

NAMESPACES = 8
RATE = 40.0  # requests a second, spread over the namespaces
#: what a worker logs once its first assignment is recovered
READY = "[^Worker]: Ready"


def second_worker(env: dict[str, str], name: str) -> WorkerProcess:
    """Another member of the same group: same topics and Redis keys, its own data and port."""
    other = {
        **env,
        "NEXUS_DATA_DIR": str(REPO / ".stack" / f"worker-data-{name}"),
        "NEXUS_METRICS_PORT": str(free_port()),
    }
    return WorkerProcess(other, f"worker-{name}")


async def changelog_view(bootstrap: str, env: dict[str, str], namespace: str) -> str:
    """What the state changelog holds of `namespace` (its relationship records, live and
    deleted, and where), and what each worker logged of its rebuilds: whether a loss is in the
    write path or in a rebuild."""
    topic = f"{env['NEXUS_APP_ID']}-state-changelog"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(int(env["NEXUS_PARTITIONS"]))]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        live: dict[bytes, int] = {}
        where: Counter[int] = Counter()
        prefix = f"r\x1f{namespace}\x1f".encode()
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                for record in records:
                    if record.key is not None and record.key.startswith(prefix):
                        where[tp.partition] += 1
                        if record.value is None:
                            live.pop(record.key, None)
                        else:
                            live[record.key] = record.offset
    finally:
        await consumer.stop()
    return f"the changelog holds {len(live)} live records of {namespace} (writes by partition {dict(where)})"


def rebuilds(*workers: WorkerProcess) -> str:
    return "\n".join(
        f"{w.log_path.name}: {line}"
        for w in workers
        for line in w.log_text().splitlines()
        if "graphs rebuilt" in line or "Joined group" in line or "hand-over" in line
    )


def results_of(wire: Wire, mine: set[str]) -> Counter[str]:
    return Counter(rid for r in wire.records["results"] if (rid := r.headers.get("nexus-request-id")) in mine)


def assert_once(wire: Wire, requests: set[str], what: str) -> None:
    doubled = {rid: n for rid, n in results_of(wire, requests).items() if n > 1}
    assert doubled == {}, (
        f"{what} (a graceful rebalance): {len(doubled)} second results, e.g. {list(doubled)[:5]}"
    )


@pytest.mark.parametrize("store", TABLE_STORES)
async def test_two_workers__join_stop_rejoin_kill_rejoin__every_request_answered_once_and_state_intact(
    kafka_bootstrap: str, redis_url: str, store: str
) -> None:
    async with own_worker(kafka_bootstrap, redis_url, "rebalance", settings={"NEXUS_TABLE_STORE": store}) as (
        wire,
        first,
        run_id,
    ):
        second = second_worker(first.env, f"rebalance-b-{run_id}")
        try:  # whatever fails, the second worker stops (a worker left running loads the box)
            sent: dict[str, str] = {}  # request id -> namespace
            stop = asyncio.Event()

            async def flow() -> None:
                i = 0
                loop = asyncio.get_running_loop()
                start = loop.time()
                while not stop.is_set() and i < 8000:
                    namespace = f"ns{i % NAMESPACES}-{run_id}"
                    request_id = f"rb{i}-{run_id}"
                    payload = {
                        "request_id": request_id,
                        "principal": "tests",
                        "action": "create",
                        "type": "member",
                        "source": f"user:{i}",
                        "target": f"group:{i % 50}",
                    }
                    await wire.send("relationships", namespace, payload)
                    sent[request_id] = namespace
                    i += 1
                    await asyncio.sleep(max(0.0, start + i / RATE - loop.time()))

            producer = asyncio.create_task(flow())
            try:
                await wire.wait_until(lambda: len(results_of(wire, set(sent))) >= 100, timeout_s=60)

                async def across(phase: str, worker: WorkerProcess, starts: int) -> None:
                    """`worker` has started `starts` times and been assigned its partitions; the flow
                    goes on past that rebalance; every request so far answered exactly once."""
                    ready = await wire.wait_until(
                        lambda: worker.log_text().count(READY) >= starts, timeout_s=120
                    )
                    assert ready, f"{phase}: {worker.log_path} not ready"
                    after = len(sent) + 2 * int(RATE)  # two more seconds of the flow
                    await wire.wait_until(lambda: len(sent) >= after, timeout_s=30)
                    requests = set(sent)
                    assert await wire.wait_until(
                        lambda: set(results_of(wire, requests)) == requests, timeout_s=90
                    )
                    assert_once(wire, requests, phase)

                # graceful rebalances: a second worker joins; the first stops on SIGTERM, starts again
                second.start()
                await across("a worker joined", second, 1)
                await asyncio.to_thread(first.stop)
                await across("a worker stopped on SIGTERM", second, 1)
                first.start()
                await across("a worker started again", first, 2)

                # the first worker dies; the second takes its namespaces over, then it comes back
                first.kill()
                before_kill = set(sent)
                await wire.wait_until(lambda: set(results_of(wire, before_kill)) == before_kill, timeout_s=90)
                first.start()
                await wait_until_answering(wire, first)
            finally:
                stop.set()
                await producer
            mine = set(sent)
            if not await wire.wait_until(lambda: set(results_of(wire, mine)) == mine, timeout_s=90):
                missing = sorted(mine - set(results_of(wire, mine)))
                raise AssertionError(f"{len(missing)} requests unanswered, e.g. {missing[:5]}")
            copies: dict[str, set[bytes]] = {}
            for record in wire.matching("results", lambda r: r.headers.get("nexus-request-id") in mine):
                copies.setdefault(record.headers["nexus-request-id"], set()).add(record.value or b"")
            assert {rid: len(v) for rid, v in copies.items() if len(v) != 1} == {}
            ok = Counter(
                sent[rid] for rid, values in copies.items() if b'"status":"ok"' in next(iter(values))
            )
            assert sum(ok.values()) == len(mine)
            for n in range(NAMESPACES):
                namespace = f"ns{n}-{run_id}"
                stats = await wire.request("queries", namespace, {"action": "stats"}, timeout_s=60)
                if stats["output"]["relationships"] != ok[namespace]:
                    raise AssertionError(
                        f"{namespace}: {stats['output']['relationships']} relationships, "
                        f"{ok[namespace]} creates answered ok; "
                        + await changelog_view(kafka_bootstrap, first.env, namespace)
                        + "\n"
                        + rebuilds(first, second)
                    )
            for worker in (first, second):
                assert "Traceback" not in worker.log_text(), worker.log_path
        finally:
            second.stop()
            second.remove_data()
