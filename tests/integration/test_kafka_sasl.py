"""The worker and the tools with a Kafka identity of their own (NEXUS_KAFKA_SECURITY_PROTOCOL,
NEXUS_KAFKA_SASL_*; docs/security.md): a broker of the test's own with a SASL_PLAINTEXT listener
(PLAIN users). A worker that knows only that listener and its credentials creates its topics,
answers, and follows its pattern events; NexusClient and the CLI with credentials get results;
a client without credentials, or with a wrong password, is refused by Kafka."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from nexus_streams.client import NexusClient
from nexus_streams.settings import Settings
from tests.integration.conftest import WorkerProcess, worker_env
from tests.integration.private_stack import PrivateStack, started_stack
from tests.integration.test_cli import cli

WORKER_USER, WORKER_PASSWORD = "nexus-worker", "worker-" + uuid.uuid4().hex
TOOL_USER, TOOL_PASSWORD = "orders-service", "orders-" + uuid.uuid4().hex
READY_S = 120.0


@dataclass
class SaslWorker:
    stack: PrivateStack
    worker: WorkerProcess
    #: the worker's environment with the tool's credentials instead of the worker's
    tool_env: dict[str, str]

    def settings(self, **fields: object) -> Settings:
        return Settings(
            kafka_bootstrap=self.tool_env["NEXUS_KAFKA_BOOTSTRAP"],
            topic_prefix=self.tool_env["NEXUS_TOPIC_PREFIX"],
            **fields,  # type: ignore[arg-type]
        )

    def tool_settings(self) -> Settings:
        return self.settings(
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_username=TOOL_USER,
            kafka_sasl_password=TOOL_PASSWORD,
        )


def create(namespace_entity: str) -> dict[str, object]:
    return {
        "request_id": f"sasl-{uuid.uuid4().hex}",
        "action": "create",
        "type": "owner",
        "source": f"user:{namespace_entity}",
        "target": f"wallet:{namespace_entity}",
    }


@pytest.fixture(scope="module")
async def sasl(redis_url: str) -> AsyncIterator[SaslWorker]:
    users = {WORKER_USER: WORKER_PASSWORD, TOOL_USER: TOOL_PASSWORD}
    async with started_stack("sasl", sasl_users=users) as stack:
        assert stack.sasl_bootstrap is not None
        run_id = f"sasl-{uuid.uuid4().hex[:8]}"
        env = worker_env(stack.sasl_bootstrap, stack.redis_url, run_id) | {
            "NEXUS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "NEXUS_KAFKA_SASL_USERNAME": WORKER_USER,
            "NEXUS_KAFKA_SASL_PASSWORD": WORKER_PASSWORD,
        }
        worker = WorkerProcess(env, f"worker-{run_id}")
        worker.start()
        tool_env = env | {"NEXUS_KAFKA_SASL_USERNAME": TOOL_USER, "NEXUS_KAFKA_SASL_PASSWORD": TOOL_PASSWORD}
        sasl = SaslWorker(stack, worker, tool_env)
        try:
            await wait_answering(sasl)
            yield sasl
        finally:
            worker.stop()
            worker.remove_data()


async def wait_answering(sasl: SaslWorker) -> None:
    """The worker created its topics and answers a request (both only through the SASL listener)."""
    deadline = asyncio.get_running_loop().time() + READY_S
    while True:
        assert sasl.worker.alive(), f"worker exited; see {sasl.worker.log_path}"
        try:
            async with NexusClient(sasl.tool_settings()) as client:
                result = await client.request("relationships", "readiness", create("probe"), timeout_s=5)
                assert result["status"] in ("ok", "error"), result
                return
        except (RuntimeError, TimeoutError, KafkaError):  # no topics yet, or no answer yet
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"worker did not answer within {READY_S}s; see {sasl.worker.log_path}"
                ) from None
            await asyncio.sleep(0.5)


async def test_sasl__worker_and_client_with_credentials__answered(sasl: SaslWorker) -> None:
    namespace = f"sasl-{uuid.uuid4().hex[:8]}"
    async with NexusClient(sasl.tool_settings()) as client:
        created = await client.request("relationships", namespace, create("1"))
        assert created["status"] == "ok", created
        got = await client.request(
            "queries",
            namespace,
            {
                "request_id": f"q-{uuid.uuid4().hex}",
                "action": "get",
                "type": "owner",
                "source": "user:1",
                "target": "wallet:1",
            },
        )
        assert got["status"] == "ok", got
        # a pattern change reaches the worker's event follower, which connects the same way
        stored = await client.store_pattern(
            {
                "id": f"sasl_{uuid.uuid4().hex[:8]}",
                "name": "over SASL",
                "description": "one event",
                "steps": [{"type": "event", "action": "publish", "parameters": {"event_type": "hi"}}],
            },
            principal="alice",
        )
        assert stored["status"] == "ok", stored
    log = sasl.worker.log_text()
    assert "cannot follow" not in log, log[-2000:]


async def test_sasl__cli_with_credentials__sends(sasl: SaslWorker) -> None:
    namespace = f"sasl-cli-{uuid.uuid4().hex[:8]}"
    command = json.dumps({"action": "create", "type": "member", "source": "user:c", "target": "group:c"})
    code, out, err = await cli(sasl.tool_env, "send", "relationships", command, "--key", namespace)
    assert code == 0, err
    assert json.loads(out)["status"] == "ok"


async def test_sasl__client_without_credentials__refused(sasl: SaslWorker) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=sasl.tool_env["NEXUS_KAFKA_BOOTSTRAP"], request_timeout_ms=5000
    )
    with pytest.raises(KafkaError):
        try:
            await asyncio.wait_for(producer.start(), 30)
        finally:
            await producer.stop()


async def test_sasl__wrong_password__refused(sasl: SaslWorker) -> None:
    settings = sasl.settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username=TOOL_USER,
        kafka_sasl_password="not-" + TOOL_PASSWORD,
    )
    client = NexusClient(settings)
    with pytest.raises(KafkaError):
        try:
            await asyncio.wait_for(client.start(), 30)
        finally:
            await client.stop()
    env = sasl.tool_env | {"NEXUS_KAFKA_SASL_PASSWORD": "not-" + TOOL_PASSWORD}
    command = json.dumps({"action": "stats"})
    code, _, err = await cli(env, "send", "queries", command, "--key", "default", "--timeout", "10")
    assert code == 1
    assert f"as {TOOL_USER} over SASL_PLAINTEXT" in " ".join(err.split()), err
    assert "NEXUS_KAFKA_SASL_" in err, err
