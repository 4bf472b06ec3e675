"""What `appendfsync always` costs the pattern store's writes, against `everysec` and no AOF.

    .venv/bin/python scripts/redis/measure_fsync.py [--puts 200] [--batches 200] [--singles 500]
                                                     [--dir DIR]

For each policy it starts its own redis-server (scripts/redis/redis.conf, the policy given on the
command line, a free port, a fresh directory under --dir: put it on the disk Redis will use) and
times the store's real write paths through `RedisPatternStore`:

- `put`: a new version of a pattern (WATCH, reads, MULTI/EXEC), as the pattern agent stores one;
- `record_executions`: a batch of 50 statistics in one pipeline, as the worker writes them (one
  pipeline per 50 ms at most);
- `record_execution`: one statistic, one round trip.

It prints mean, p50, p99 and max in milliseconds per call. Not a test; docs/operations.md has the
figures of a run and the decision they support.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from redis.exceptions import RedisError

from nexus_streams.domain.patterns import Pattern
from nexus_streams.domain.validation import validate_pattern
from nexus_streams.store.base import ExecutionRecord
from nexus_streams.store.redis import RedisPatternStore

REDIS_CONF = Path(__file__).resolve().parent / "redis.conf"
POLICIES = {
    "appendonly no": ["--appendonly", "no"],
    "appendfsync everysec": ["--appendfsync", "everysec"],
    "appendfsync always": ["--appendfsync", "always"],
}
BATCH = 50
READY_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pattern(n: int) -> Pattern:
    return validate_pattern(
        {
            "id": "bench",
            "name": "Bench",
            "description": f"version {n}",  # a new document: every put makes a new version
            "steps": [{"type": "graph", "action": "find_path", "parameters": {"max_depth": 3}}],
        }
    )


async def timed(count: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    samples = []
    for i in range(count):
        started = time.perf_counter()
        await call(i)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def row(policy: str, operation: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"| {policy} | {operation} | {len(samples)} | {statistics.fmean(samples):.3f} | "
        f"{statistics.median(samples):.3f} | {p99:.3f} | {ordered[-1]:.3f} |"
    )


async def measure(policy: str, args: list[str], workdir: Path, counts: argparse.Namespace) -> list[str]:
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="fsync-", dir=workdir))
    proc = subprocess.Popen(
        [
            "redis-server",
            str(REDIS_CONF),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(data),
            "--save",
            "",
            *args,
        ],
        stdout=subprocess.DEVNULL,
    )
    store = RedisPatternStore.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        deadline = time.monotonic() + READY_S
        while True:
            try:
                if await store.redis.ping():
                    break
            except RedisError:  # refused while it starts
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not answer on {port} within {READY_S}s")
            await asyncio.sleep(0.05)
        await store.put(pattern(0), "bench")
        puts = await timed(counts.puts, lambda i: store.put(pattern(i + 1), "bench"))
        batch = [ExecutionRecord("bench", 1, "ok", 3.0) for _ in range(BATCH)]
        batches = await timed(counts.batches, lambda i: store.record_executions(batch))
        singles = await timed(counts.singles, lambda i: store.record_execution("bench", 1, "ok", 3.0))
        return [
            row(policy, "put", puts),
            row(policy, f"record_executions ({BATCH})", batches),
            row(policy, "record_execution", singles),
        ]
    finally:
        await store.close()
        proc.terminate()
        proc.wait(30)
        subprocess.run(["rm", "-rf", str(data)], check=False)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--puts", type=int, default=200)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--singles", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    counts = parser.parse_args()
    lines = [
        "| policy | operation | calls | mean ms | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for policy, args in POLICIES.items():
        lines += await measure(policy, args, counts.dir, counts)
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
