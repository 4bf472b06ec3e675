"""Redis keeps every write the pattern store had acknowledged across a SIGKILL, with the stack's
persistence settings (scripts/redis/redis.conf), and loses them without AOF (the settings before
issue 12); and the worker's durability check tells the two apart: docs/operations.md.

Each test starts redis-servers of its own (free port, temporary directory), never the stack's:
killing the stack's Redis would break every other test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from nexus_streams.domain.errors import NotFound
from nexus_streams.metrics import Metrics
from nexus_streams.patterns import register_system_patterns, system_patterns
from nexus_streams.store.base import ExecutionRecord, StoredVersion
from nexus_streams.store.redis import Durability, RedisPatternStore, RetryConfig, assess_durability
from tests.integration.conftest import REPO, free_port
from tests.unit.pattern_store_behaviour import make_pattern

REDIS_CONF = REPO / "scripts" / "redis" / "redis.conf"
#: the local stack's Redis before issue 12 (its snapshot rule comes from redis.conf, as it was)
WITHOUT_AOF = ("--appendonly", "no")
#: deadlines (seconds)
READY_S, VERDICT_S = 30.0, 15.0


class RedisServer:
    """redis-server with the stack's persistence settings, `args` overriding them, on a free port
    and a directory of its own; in the foreground, so that SIGKILL is a crash, not a shutdown."""

    def __init__(self, directory: Path, args: Sequence[str] = ()) -> None:
        self.directory = directory
        self.args = list(args)
        self.port = free_port()
        self.log_path = directory / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        assert shutil.which("redis-server"), (
            "redis-server is missing: `make test` installs it (scripts/stack.sh)"
        )
        self.proc = subprocess.Popen(
            ["redis-server", str(REDIS_CONF), "--bind", "127.0.0.1", "--port", str(self.port)]
            + ["--dir", str(self.directory), "--logfile", str(self.log_path), *self.args]
        )
        await self.wait_ready()

    async def wait_ready(self) -> None:
        """Until PING answers: the server listens and has loaded its data (LOADING until then)."""
        client = aioredis.Redis(port=self.port, socket_timeout=2)
        deadline = asyncio.get_running_loop().time() + READY_S
        try:
            while True:
                assert self.proc is not None and self.proc.poll() is None, (
                    f"redis exited; see {self.log_path}"
                )
                with contextlib.suppress(RedisError, OSError):
                    if await client.ping():
                        return
                assert asyncio.get_running_loop().time() < deadline, f"redis not ready; see {self.log_path}"
                await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync or snapshot."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., Awaitable[RedisServer]]]:
    """`await redis_server(*args)`: a started server of the test's own, stopped afterwards."""
    servers: list[RedisServer] = []

    async def start(*args: str) -> RedisServer:
        directory = tmp_path / f"redis-{len(servers)}"
        directory.mkdir()
        server = RedisServer(directory, args)
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@contextlib.asynccontextmanager
async def pattern_store(url: str) -> AsyncIterator[RedisPatternStore]:
    store = RedisPatternStore.from_url(url)
    try:
        yield store
    finally:
        await store.close()


# -- acknowledged writes across a SIGKILL ------------------------------------------------------


async def write_then_crash(server: RedisServer) -> tuple[StoredVersion, StoredVersion]:
    """What a worker writes: the system patterns, two versions of a pattern, statistics in a
    batch (the worker's path) and one on its own; SIGKILL the moment the last one is acknowledged."""
    async with pattern_store(server.url) as store:
        await register_system_patterns(store)
        first = await store.put(make_pattern("durable", depth=3), "alice")
        second = await store.put(make_pattern("durable", depth=4), "alice")
        await store.record_executions(
            [
                ExecutionRecord("durable", 1, "ok", 2.5, execution_id="x-1"),
                ExecutionRecord("durable", 2, "ok", 4.0, execution_id="x-2"),
                ExecutionRecord("durable", 2, "error", 7.0, "timeout", "slow", execution_id="x-3"),
            ]
        )
        await store.record_execution("durable", 2, "error", 1.0, "path_not_found", execution_id="x-4")
        server.kill()
    return first, second


async def test_stack_redis__keeps_acknowledged_patterns_and_statistics_across_a_sigkill(
    redis_server: Callable[..., Awaitable[RedisServer]],
) -> None:
    server = await redis_server()
    first, second = await write_then_crash(server)
    assert (first.created, second.created) == (True, True)

    await server.start()  # the same directory and port
    async with pattern_store(server.url) as store:
        assert [v.version for v in await store.versions("durable")] == [1, 2]
        assert (await store.get("durable", 1)).to_json() == first.pattern.to_json()
        assert (await store.get("durable")).to_json() == second.pattern.to_json()
        assert {p.id for p in await store.list()} == {"durable"} | {p.id for p in system_patterns()}
        stats = await store.stats("durable")
        assert (stats.total.executions, stats.total.successes, stats.total.failures) == (4, 2, 2)
        assert stats.total.duration_sum_us == 14_500
        assert (stats.total.last_status, stats.total.last_error_code) == ("error", "path_not_found")
        assert {v: s.executions for v, s in stats.versions.items()} == {1: 1, 2: 3}
        # the execution ids too: a redelivered execution still counts once
        assert not await store.record_execution("durable", 2, "ok", 1.0, execution_id="x-4")


async def test_stack_redis__without_aof_the_same_sigkill_loses_them(
    redis_server: Callable[..., Awaitable[RedisServer]],
) -> None:
    """The test above can fail: with the settings before issue 12 the same crash loses it all."""
    server = await redis_server(*WITHOUT_AOF)
    await write_then_crash(server)

    await server.start()
    async with pattern_store(server.url) as store:
        assert await store.list() == []
        with pytest.raises(NotFound):
            await store.get("durable")
        for pattern in system_patterns():
            with pytest.raises(NotFound):
                await store.get(pattern.id)


# -- the worker's durability check -------------------------------------------------------------


async def watch_until_verdict(store: RedisPatternStore, metrics: Metrics) -> dict[str, float]:
    """Run the worker's check (`watch_durability`, as the worker runs it from its start) until
    the gauge has a series; returns the gauge's samples by reason."""
    task = asyncio.create_task(store.watch_durability(metrics.observe_redis_durability))
    deadline = asyncio.get_running_loop().time() + VERDICT_S
    try:
        while not (samples := gauge(metrics)):
            assert not task.done(), task
            assert asyncio.get_running_loop().time() < deadline, "no verdict in time"
            await asyncio.sleep(0.02)
        return samples
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def gauge(metrics: Metrics) -> dict[str, float]:
    return {
        s.labels["reason"]: s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "nexus_redis_durable"
    }


def store_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "nexus_streams.store.redis"]


async def test_durability_check__the_stack_redis_is_durable(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexus_streams.store.redis")
    async with pattern_store(redis_url) as store:
        settings = await store.persistence()
        assert settings["appendonly"] == "yes" and settings["appendfsync"] == "always", settings
        assert assess_durability(settings) is Durability.AOF_ALWAYS
        assert await watch_until_verdict(store, Metrics()) == {"aof_always": 1.0}
    (record,) = store_records(caplog)
    assert record.levelno == logging.INFO
    assert "keeps every acknowledged write" in record.getMessage()


async def test_durability_check__redis_without_aof_warns_and_sets_the_gauge_to_0(
    redis_server: Callable[..., Awaitable[RedisServer]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nexus_streams.store.redis")
    server = await redis_server(*WITHOUT_AOF)
    async with pattern_store(server.url) as store:
        assert assess_durability(await store.persistence()) is Durability.AOF_OFF
        assert await watch_until_verdict(store, Metrics()) == {"aof_off": 0.0}
    (record,) = store_records(caplog)
    assert record.levelno == logging.WARNING
    assert "can lose acknowledged writes" in record.getMessage()
    assert "reason=aof_off" in record.getMessage() and "appendonly=no" in record.getMessage()


async def test_durability_check__sees_a_change_of_the_running_redis(
    redis_server: Callable[..., Awaitable[RedisServer]], caplog: pytest.LogCaptureFixture
) -> None:
    """Checked again while the worker runs: AOF turned on later ends the warning and flips the
    gauge; each change is logged once."""
    caplog.set_level(logging.INFO, logger="nexus_streams.store.redis")
    server = await redis_server(*WITHOUT_AOF)
    metrics = Metrics()
    async with pattern_store(server.url) as store:
        store.durability_check_interval_s = 0.05
        task = asyncio.create_task(store.watch_durability(metrics.observe_redis_durability))
        try:
            await until(lambda: gauge(metrics) == {"aof_off": 0.0}, "the first verdict")
            await store.redis.config_set("appendonly", "yes")
            await until(lambda: gauge(metrics) == {"aof_always": 1.0}, "the verdict after CONFIG SET")
            # Redis refuses to shut down while it writes its first AOF
            deadline = asyncio.get_running_loop().time() + READY_S
            while (await store.redis.info("persistence"))["aof_rewrite_in_progress"]:
                assert asyncio.get_running_loop().time() < deadline, "the first AOF not written in time"
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert [r.levelno for r in store_records(caplog)] == [logging.WARNING, logging.INFO]


async def test_durability_check__waits_for_a_redis_that_comes_later(tmp_path: Path) -> None:
    """A worker may start before Redis: no verdict (no series) until Redis answers, then one."""
    server = RedisServer(tmp_path)  # not started yet: its port refuses connections
    metrics = Metrics()
    store = RedisPatternStore.from_url(server.url, retry=RetryConfig(attempts=1))
    store.observer = metrics.observe_redis
    refused = {"operation": "persistence", "error": "connection"}
    task = asyncio.create_task(store.watch_durability(metrics.observe_redis_durability))
    try:
        await until(
            lambda: bool(metrics.registry.get_sample_value("nexus_redis_errors_total", refused)), "a try"
        )
        assert gauge(metrics) == {}
        await server.start()
        await until(lambda: gauge(metrics) == {"aof_always": 1.0}, "the verdict once Redis answers")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()
        server.stop()


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + VERDICT_S
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {VERDICT_S}s"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("args", "username", "settings", "verdict"),
    [
        # CONFIG renamed away, as managed Redis often does: INFO persistence says AOF is on
        (["--rename-command", "CONFIG", ""], None, {"aof_enabled": "1"}, Durability.APPENDFSYNC_UNKNOWN),
        (["--rename-command", "CONFIG", "", *WITHOUT_AOF], None, {"aof_enabled": "0"}, Durability.AOF_OFF),
        # CONFIG not permitted to the store's user (ACL): NOPERM, then INFO
        (
            ["--user", "store", "on", "nopass", "~*", "&*", "+@all", "-config"],
            "store",
            {"aof_enabled": "1"},
            Durability.APPENDFSYNC_UNKNOWN,
        ),
        # neither answers
        (["--rename-command", "CONFIG", "", "--rename-command", "INFO", ""], None, {}, Durability.UNKNOWN),
    ],
    ids=["config-renamed", "config-renamed-aof-off", "config-forbidden-by-acl", "config-and-info-renamed"],
)
async def test_durability_check__falls_back_to_info_then_unknown(
    redis_server: Callable[..., Awaitable[RedisServer]],
    args: list[str],
    username: str | None,
    settings: dict[str, str],
    verdict: Durability,
) -> None:
    server = await redis_server(*args)
    url = server.url.replace("redis://", f"redis://{username}:any@") if username else server.url
    async with pattern_store(url) as store:
        assert await store.persistence() == settings
        assert assess_durability(settings) is verdict
        assert await watch_until_verdict(store, Metrics()) == {verdict.value: 0.0}
