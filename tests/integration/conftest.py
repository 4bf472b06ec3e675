"""Integration fixtures: the real broker and Redis of the local stack (scripts/stack.sh) and a
real worker process. A missing service fails the run loudly; nothing here skips."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from tests.integration.wire import Wire

if TYPE_CHECKING:
    from tests.integration.private_stack import PrivateStack

REPO = Path(__file__).resolve().parents[2]
LOG_DIR = REPO / ".stack" / "logs"
PARTITIONS = 4


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def _require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the suite with `make test`, which starts the local stack")
    return value


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    bootstrap = _require_env("NEXUS_KAFKA_BOOTSTRAP")
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        pytest.fail(f"no Kafka broker answers at {bootstrap}: {exc}; start it with `make stack-up`")
    return bootstrap


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = _require_env("NEXUS_REDIS_URL")
    try:
        assert redis.Redis.from_url(url, socket_timeout=5).ping()
    except redis.RedisError as exc:
        pytest.fail(f"no Redis answers at {url}: {exc}; start it with `make stack-up`")
    return url


class WorkerProcess:
    """`nexus-streams worker` as a user runs it, in its own process, logging to a file."""

    def __init__(self, env: dict[str, str], name: str, module: str = "nexus_streams") -> None:
        self.env = env
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        #: what `python -m` runs (a test may wrap the worker, e.g. to inject failures)
        self.module = module

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "worker"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit or flush."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def dump_tasks(self) -> None:
        """SIGUSR1: the worker writes every asyncio task's stack to its log (a test failed waiting)."""
        if self.proc is not None and self.alive():
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(2)

    def remove_data(self) -> None:
        """The worker's data directory (under .stack/), once it is stopped for good."""
        shutil.rmtree(self.env["NEXUS_DATA_DIR"], ignore_errors=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: run ids of this session's workers: their topics and groups are deleted when the session ends
RUN_IDS: set[str] = set()


def worker_env(kafka_bootstrap: str, redis_url: str, run_id: str) -> dict[str, str]:
    RUN_IDS.add(run_id)
    return {
        **os.environ,
        "NEXUS_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "NEXUS_REDIS_URL": redis_url,
        "NEXUS_APP_ID": f"nexus-test-{run_id}",
        "NEXUS_TOPIC_PREFIX": f"t-{run_id}.",
        "NEXUS_PARTITIONS": str(PARTITIONS),
        "NEXUS_DATA_DIR": str(REPO / ".stack" / f"worker-data-{run_id}"),
        "NEXUS_METRICS_PORT": str(free_port()),
        "NEXUS_REDIS_KEY_PREFIX": f"nexus-test-{run_id}:",
        "NEXUS_ADMINS": "admin",
        # short enough for a test to see a parked query time out
        "NEXUS_MIN_OFFSET_WAIT_S": "4",
        # small enough for a test to go over it (test_graph_kafka)
        "NEXUS_MAX_DELETE_ENTITY": "20",
    }


async def wait_until_answering(wire: Wire, worker: WorkerProcess, timeout_s: float = 120.0) -> None:
    """A worker is ready when it answers a command; poll with fresh requests until the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        assert worker.alive(), f"worker exited; see {worker.log_path}"
        request_id = f"ready-{uuid.uuid4().hex}"
        await wire.send(
            "relationships",
            "readiness",
            {
                "request_id": request_id,
                "principal": "tests",
                "action": "create",
                "type": "linked",
                "source": f"probe:{request_id}",
                "target": "probe:target",
            },
        )
        try:
            await wire.result(request_id, timeout_s=5)
            return
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"worker did not answer within {timeout_s}s; see {worker.log_path}"
                ) from None


async def create_topics(kafka_bootstrap: str, env: dict[str, str]) -> None:
    """A run's topics, created by the same code the worker runs at start."""
    from nexus_streams.settings import Settings
    from nexus_streams.streams.admin import ensure_topics

    await ensure_topics(
        Settings(
            kafka_bootstrap=kafka_bootstrap,
            app_id=env["NEXUS_APP_ID"],
            topic_prefix=env["NEXUS_TOPIC_PREFIX"],
            partitions=PARTITIONS,
        )
    )


@contextlib.asynccontextmanager
async def own_worker(
    kafka_bootstrap: str,
    redis_url: str,
    name: str,
    module: str = "nexus_streams",
    settings: dict[str, str] | None = None,
) -> AsyncIterator[tuple[Wire, WorkerProcess, str]]:
    """A worker of its own (own topics, group, Redis keys) for tests that kill and restart it;
    yields it answering, with a Wire on its topics and the run id; stops both afterwards.
    `settings`: NEXUS_* variables that differ from `worker_env`'s."""
    run_id = f"{name}-{uuid.uuid4().hex[:8]}"
    env = worker_env(kafka_bootstrap, redis_url, run_id) | (settings or {})
    await create_topics(kafka_bootstrap, env)
    wire = Wire(kafka_bootstrap, env["NEXUS_TOPIC_PREFIX"])
    await wire.start()
    worker = WorkerProcess(env, f"worker-{run_id}", module)
    try:
        worker.start()
        await wait_until_answering(wire, worker)
        yield wire, worker, run_id
    finally:
        worker.stop()
        worker.remove_data()
        await wire.stop()


@pytest.fixture(scope="session", autouse=True)
async def delete_run_topics(kafka_bootstrap: str) -> AsyncIterator[None]:
    """Leave the broker as the session found it: a broker that kept every test's partitions
    (thousands after a few runs) grows slow (docs/observability.md, "A slow worker")."""
    yield
    from nexus_streams.streams.admin import delete_topics_with_prefixes

    runs = sorted(RUN_IDS)
    await delete_topics_with_prefixes(
        kafka_bootstrap,
        tuple(f"t-{r}." for r in runs) + tuple(f"nexus-test-{r}-" for r in runs),
        [f"nexus-test-{r}" for r in runs],
    )


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
async def topics_ready(kafka_bootstrap: str, redis_url: str, run_id: str) -> dict[str, str]:
    """The run's topics, created by the same code the worker runs at start."""
    env = worker_env(kafka_bootstrap, redis_url, run_id)
    await create_topics(kafka_bootstrap, env)
    return env


@pytest.fixture(scope="session")
def worker(topics_ready: dict[str, str], run_id: str) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(topics_ready, f"worker-{run_id}")
    proc.start()
    yield proc
    proc.stop()
    proc.remove_data()


@pytest.fixture(scope="session")
async def wire(
    kafka_bootstrap: str, topics_ready: dict[str, str], worker: WorkerProcess
) -> AsyncIterator[Wire]:
    w = Wire(kafka_bootstrap, topics_ready["NEXUS_TOPIC_PREFIX"])
    await w.start()
    await wait_until_answering(w, worker)
    yield w
    await w.stop()


#: the table stores the restart, crash and multi-worker tests run on
TABLE_STORES = ("memory://", "rocksdb://")


@pytest.fixture
async def private_stack(request: pytest.FixtureRequest) -> AsyncIterator[PrivateStack]:
    """Kafka and Redis of the test's own, which it may kill (tests/integration/private_stack.py)."""
    from tests.integration.private_stack import started_stack

    async with started_stack(request.node.name[:40]) as stack:
        yield stack


@pytest.fixture
def namespace() -> str:
    """Each test its own namespace, so tests never see each other's graph."""
    return f"ns-{uuid.uuid4().hex[:12]}"
