"""The worker serves Prometheus metrics that count what it did."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import WorkerProcess
from tests.integration.wire import Wire


def scrape(port: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:  # noqa: S310
        text = resp.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics__count_ok_errors_and_deadletters(
    wire: Wire, worker: WorkerProcess, namespace: str
) -> None:
    port = worker.env["NEXUS_METRICS_PORT"]
    ok_id, bad_id = f"m-{uuid.uuid4().hex}", f"m-{uuid.uuid4().hex}"
    await wire.send("relationships", namespace, b"not json")
    await wire.send("relationships", namespace, {"request_id": bad_id, "principal": "p", "action": "nope"})
    await wire.send(
        "relationships",
        namespace,
        {
            "request_id": ok_id,
            "principal": "p",
            "action": "create",
            "type": "member",
            "source": "u:1",
            "target": "g:1",
        },
    )
    await wire.result(ok_id)
    await wire.result(bad_id)

    def read(name: str, **labels: str) -> float:
        return scrape(port).get((name, tuple(sorted(labels.items()))), 0.0)

    # metrics are observed right after the outcome is published: poll briefly with a deadline
    async with asyncio.timeout(10):
        while read("nexus_requests_total", topic="relationships", action="create", status="ok") < 1:
            await asyncio.sleep(0.1)
    assert read("nexus_requests_total", topic="relationships", action="other", status="error") >= 1
    assert read("nexus_errors_total", topic="relationships", code="unknown_action") >= 1
    assert read("nexus_deadletters_total", topic="relationships", reason="undecodable") >= 1
    assert read("nexus_request_duration_seconds_count", topic="relationships", action="create") >= 1
