"""The Python client API (store_pattern, execute_pattern, subscribe_events) and its CLI twins."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

import pytest

from nexus_streams.client import NexusClient, NexusRequestError
from nexus_streams.settings import Settings
from tests.integration.conftest import WorkerProcess
from tests.integration.test_cli import cli
from tests.integration.wire import Wire


@pytest.fixture
async def client(wire: Wire, worker: WorkerProcess):
    settings = Settings(
        kafka_bootstrap=worker.env["NEXUS_KAFKA_BOOTSTRAP"], topic_prefix=worker.env["NEXUS_TOPIC_PREFIX"]
    )
    async with NexusClient(settings) as c:
        yield c


async def test_client__store_execute_and_subscribe(client: NexusClient, namespace: str) -> None:
    pattern_id = f"welcome_{uuid.uuid4().hex[:8]}"
    stored = await client.store_pattern(
        {
            "id": pattern_id,
            "name": "Welcome",
            "description": "link a user to a group",
            "steps": [{"type": "relationship", "action": "create", "parameters": {"type": "member"}}],
        },
        principal="alice",
    )
    assert stored["output"]["version"] == 1

    events = client.subscribe_events(pattern_id, "pattern_executed")
    first = asyncio.ensure_future(anext(events))
    result = await client.execute_pattern(
        pattern_id, {"source": "user:w", "target": "group:w"}, namespace=namespace
    )
    assert result["status"] == "ok"
    event = await asyncio.wait_for(first, 30)
    assert event["pattern_id"] == pattern_id
    assert event["request_id"] == result["request_id"]
    await events.aclose()

    with pytest.raises(NexusRequestError) as failed:
        await client.execute_pattern(
            pattern_id, {"source": "user:w", "target": "group:w"}, namespace=namespace
        )
    assert failed.value.code == "duplicate_relationship"
    assert failed.value.result["output"]["steps"]["create"]["status"] == "failed"


async def test_cli__execute_and_events(wire: Wire, worker: WorkerProcess, namespace: str) -> None:
    follower = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nexus_streams",
        "events",
        "--pattern",
        "user_onboarding",
        "--type",
        "pattern_executed",
        "--count",
        "1",
        env=worker.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert follower.stderr is not None
    ready = await asyncio.wait_for(follower.stderr.readline(), 60)
    assert b"following" in ready, ready
    code, out, err = await cli(
        {**worker.env},
        "execute",
        "user_onboarding",
        "--input",
        '{"source": "user:c", "target": "wallet:c"}',
        "--namespace",
        namespace,
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "ok"
    # the follower started before the execution; it prints the event and stops after one
    line, _ = await asyncio.wait_for(follower.communicate(), 60)
    event = json.loads(line.decode().splitlines()[0])
    assert event["request_id"] == result["request_id"]

    code, out, _ = await cli(
        worker.env, "execute", "user_onboarding", "--input", '{"source": "user:c"}', "--namespace", namespace
    )
    assert code == 1
    assert json.loads(out)["error"]["code"] == "validation_error"
