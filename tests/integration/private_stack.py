"""A stack of a test's own: Kafka and Redis from scripts/stack.sh on free ports, in a directory of
its own under .stack/, so a test can SIGKILL them, restart them and FLUSHDB without touching the
stack the other tests share. Stopped and deleted (data and all) at the end.

stack.sh has no command to kill or start one service, so `kill` sends SIGKILL to the pid in the
service's pid file (`kafka.pid`, `redis.pid`) and `start` runs `stack.sh up` again, which starts
whatever is not running with the same configuration and data directory and waits until it
answers. (A `stack.sh kill kafka|redis` and `stack.sh start kafka|redis` would say it more
plainly.)

`redis_only=True` starts only a redis-server and uses the shared broker: stack.sh uses the broker
named by NEXUS_KAFKA_BOOTSTRAP instead of starting one. `sasl_users={name: password}` gives the
broker a second listener, SASL_PLAINTEXT with those PLAIN users, at `sasl_bootstrap`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import redis

from tests.integration.conftest import REPO, free_port

STACK_SH = REPO / "scripts" / "stack.sh"
#: how long `stack.sh up` may take (a broker recovering its log after a SIGKILL is the slowest)
UP_TIMEOUT_S = 180


class PrivateStack:
    def __init__(
        self,
        name: str,
        *,
        redis_only: bool = False,
        shared_bootstrap: str | None = None,
        sasl_users: dict[str, str] | None = None,
    ) -> None:
        safe = re.sub(r"[^A-Za-z0-9_-]", "-", name)
        self.dir = REPO / ".stack" / f"private-{safe}-{uuid.uuid4().hex[:8]}"
        self.redis_port = free_port()
        self.kafka_port = free_port()
        self.controller_port = free_port()
        self.redis_only = redis_only
        env = {k: v for k, v in os.environ.items() if k not in ("NEXUS_KAFKA_BOOTSTRAP", "NEXUS_REDIS_URL")}
        env |= {
            "NEXUS_STACK_DIR": str(self.dir),
            "NEXUS_KAFKA_PORT": str(self.kafka_port),
            "NEXUS_KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "NEXUS_REDIS_PORT": str(self.redis_port),
            "NEXUS_STACK_TIMEOUT_S": str(UP_TIMEOUT_S - 10),
            # one broker of many on a small machine
            "NEXUS_KAFKA_HEAP": "384m",
        }
        self.sasl_bootstrap: str | None = None
        if sasl_users:
            sasl_port = free_port()
            env["NEXUS_KAFKA_SASL_PORT"] = str(sasl_port)
            env["NEXUS_KAFKA_SASL_USERS"] = ",".join(f"{n}:{p}" for n, p in sasl_users.items())
            self.sasl_bootstrap = f"127.0.0.1:{sasl_port}"
        if redis_only:
            assert shared_bootstrap, "a Redis-only stack uses the shared broker"
            env["NEXUS_KAFKA_BOOTSTRAP"] = shared_bootstrap
        self.env = env
        self.bootstrap = (
            shared_bootstrap if redis_only and shared_bootstrap else f"127.0.0.1:{self.kafka_port}"
        )
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"

    def _stack(self, command: str) -> str:
        done = subprocess.run(
            ["bash", str(STACK_SH), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=UP_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"stack.sh {command} failed ({done.returncode}): {done.stderr[-2000:]}\n"
                f"logs: {self.dir / 'logs'}"
            )
        return done.stdout

    def start(self) -> None:
        """Start what is not running (the first time, or after a kill) and wait until it answers."""
        self._stack("up")

    def stop(self) -> None:
        self._stack("down")

    def pid(self, service: str) -> int:
        return int((self.dir / f"{service}.pid").read_text().strip())

    def kill(self, service: str, timeout_s: float = 30.0) -> None:
        """SIGKILL `service` (kafka or redis): no shutdown, no flush; wait until it is gone."""
        assert service in ("kafka", "redis") and not (self.redis_only and service == "kafka")
        pid = self.pid(service)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while _alive(pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"{service} (pid {pid}) still alive {timeout_s}s after SIGKILL")
            time.sleep(0.05)  # polling the process table: there is no event to wait for

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=5)

    def destroy(self) -> None:
        """Stop both and delete every file of the stack."""
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            self.stop()
        for service in ("kafka", "redis"):
            with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
                os.kill(self.pid(service), signal.SIGKILL)  # `down` gave up on it
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self, service: str) -> Path:
        return self.dir / "logs" / f"{service}.log"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child of ours that nobody reaped yet is a zombie: gone for our purposes
    with contextlib.suppress(FileNotFoundError):
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:4]
    return False


@contextlib.asynccontextmanager
async def started_stack(
    name: str,
    *,
    redis_only: bool = False,
    shared_bootstrap: str | None = None,
    sasl_users: dict[str, str] | None = None,
) -> AsyncIterator[PrivateStack]:
    """A started private stack, destroyed afterwards (started off the event loop: it takes a while).
    The `private_stack` fixture (conftest.py) is this for a whole test."""
    stack = PrivateStack(
        name, redis_only=redis_only, shared_bootstrap=shared_bootstrap, sasl_users=sasl_users
    )
    try:
        await asyncio.to_thread(stack.start)
        yield stack
    finally:
        await asyncio.to_thread(stack.destroy)
