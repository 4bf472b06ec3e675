"""Input written by a transactional producer: its commit markers take offsets that are never
delivered as records, so a partition whose last offset is a marker sits below its high watermark
for good. The stall watch (nexus_streams/stalls.py) must see that nothing is missing there, go past
the marker, and neither read the partition again every few checks nor warn about it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import WorkerProcess, own_worker
from tests.integration.test_metrics_endpoint import scrape
from tests.integration.wire import Wire

STALL_LINE = "below its high watermark"


def counter(worker: WorkerProcess, name: str) -> float:
    return sum(v for (sample, _), v in scrape(worker.env["NEXUS_METRICS_PORT"]).items() if sample == name)


@pytest.fixture(scope="module", params=["at_least_once", "exactly_once"])
async def txn_worker(
    kafka_bootstrap: str, redis_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Wire, WorkerProcess]]:
    """exactly_once reads read_committed: the aborted record is not delivered either."""
    settings = {"NEXUS_PROCESSING_GUARANTEE": request.param}
    async with own_worker(kafka_bootstrap, redis_url, "txn", settings=settings) as (wire, worker, _):
        yield wire, worker


def create(request_id: str, n: int) -> bytes:
    command = {
        "request_id": request_id,
        "principal": "tests",
        "action": "create",
        "type": "member",
        "source": f"user:{n}",
        "target": "group:txn",
    }
    return json.dumps(command).encode()


async def test_transactional_input__answered_and_the_marker_is_no_stall(
    kafka_bootstrap: str, txn_worker: tuple[Wire, WorkerProcess], namespace: str
) -> None:
    wire, worker = txn_worker
    reseeks_before = counter(worker, "nexus_kafka_reseeks_total")
    skipped_before = counter(worker, "nexus_kafka_offsets_without_records_total")
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"txn-{uuid.uuid4().hex[:8]}", acks="all"
    )
    await producer.start()
    try:
        ids = [f"tx-{uuid.uuid4().hex}" for _ in range(5)]
        async with producer.transaction():
            for n, request_id in enumerate(ids):
                await producer.send(
                    wire.topic("relationships"), create(request_id, n), key=namespace.encode()
                )
        # an aborted transaction: its record (which a worker reading read_uncommitted, the default,
        # still receives) and its abort marker
        await producer.begin_transaction()
        aborted = create(f"tx-aborted-{uuid.uuid4().hex}", 9)
        await producer.send(wire.topic("relationships"), aborted, key=namespace.encode())
        await producer.abort_transaction()
        async with producer.transaction():
            last = f"tx-{uuid.uuid4().hex}"
            await producer.send(wire.topic("relationships"), create(last, 5), key=namespace.encode())
    finally:
        await producer.stop()
    for request_id in [*ids, last]:
        assert (await wire.result(request_id))["status"] == "ok"

    # the partition ends in a commit marker: the watch reads past it once, quietly, and goes on
    assert await wire.wait_until(
        lambda: counter(worker, "nexus_kafka_offsets_without_records_total") > skipped_before, timeout_s=30
    ), "the stall watch never went past the transaction marker"
    # and it stays there: the next checks find the partition caught up (a watch that still took
    # the marker for a stall would read again within 3 checks of 1 s, then every 6, 12, ... s)
    settled = asyncio.get_running_loop().time() + 8
    while asyncio.get_running_loop().time() < settled:
        assert counter(worker, "nexus_kafka_reseeks_total") == reseeks_before
        await asyncio.sleep(0.5)
    assert STALL_LINE not in worker.log_text()

    # the partition still answers what comes after
    after = f"tx-after-{uuid.uuid4().hex}"
    await wire.send("relationships", namespace, create(after, 7))
    assert (await wire.result(after))["status"] == "ok"
