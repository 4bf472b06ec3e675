"""Backup and restore rates (issue 16, docs/backups.md) through a real worker, against a baseline of
the same run. Not a test: it prints one table with goals.

    python bench/backup.py [--relationships 1000000] [--quick]

1. A worker process on the run's topics (bench/harness.py); N relationships loaded into one
   namespace by `batch` commands of 1,000 creates, 8 in flight: the **baseline** of the import
   (the same path, commands of the same size).
2. `export` of that namespace (`backup.export_namespace_to`, what the CLI runs) to a file:
   relationships/s and MB/s, chunks, the largest chunk result on the wire.
3. `import` of the file into an empty namespace (`backup.import_namespace`): relationships/s
   against the load's; then `stats` of both must agree.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from harness import REPO, Bench, add_arguments, note, parse, run

from nexus_streams import backup
from nexus_streams.client import NexusClient
from nexus_streams.settings import Settings

SOURCE = "bench-backup"
TARGET = "bench-restored"
BATCH = 1000
WINDOW = 8
#: issue 16: an export streams at least this many relationships a second
EXPORT_GOAL = 50_000
#: an import is at least this fraction of the load rate through the same batch commands
IMPORT_RATIO_GOAL = 0.7


def creates(start: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "action": "create",
            "type": "owner" if i % 3 else "member",
            "source": f"user:{i // 4}",
            "target": f"item:{i}",
            "metadata": {"n": i, "tag": "bench"},
        }
        for i in range(start, start + count)
    ]


async def load(client: NexusClient, total: int) -> float:
    """The baseline: `total` creates in batches, WINDOW in flight; relationships/s."""
    window = asyncio.Semaphore(WINDOW)

    async def one(index: int) -> None:
        try:
            body = {"request_id": f"load-{index}", "action": "batch"}
            body["commands"] = creates(index * BATCH, min(BATCH, total - index * BATCH))  # type: ignore[assignment]
            result = await client.request("relationships", SOURCE, body, timeout_s=120)
            assert result["status"] == "ok", result.get("error")
        finally:
            window.release()

    started = time.perf_counter()
    tasks = []
    for index in range((total + BATCH - 1) // BATCH):
        await window.acquire()
        tasks.append(asyncio.create_task(one(index)))
    await asyncio.gather(*tasks)
    return total / (time.perf_counter() - started)


async def stats(client: NexusClient, namespace: str) -> dict[str, Any]:
    result = await client.request(
        "queries", namespace, {"request_id": f"stats-{namespace}-{time.time()}", "action": "stats"}
    )
    output: dict[str, Any] = result["output"]
    output.pop("namespace")
    return output


async def measure(bench: Bench) -> None:
    args, report = bench.args, bench.report
    total = args.relationships
    file = REPO / ".stack" / f"bench-backup-{bench.run_id}.ndjson"
    settings = Settings(kafka_bootstrap=args.bootstrap, topic_prefix=bench.prefix)
    try:
        async with bench.worker() as _, NexusClient(settings, principal="bench") as client:
            note(f"loading {total:,} relationships")
            load_rate = await load(client, total)
            note(f"load: {load_rate:,.0f} relationships/s; exporting")
            exported = await backup.export_namespace_to(client, SOURCE, file, timeout_s=300)
            note(f"export: {exported.rate:,.0f} relationships/s; importing")
            imported = await backup.import_namespace(client, file, TARGET, timeout_s=300)
            same = await stats(client, SOURCE) == await stats(client, TARGET)
    finally:
        size = file.stat().st_size if file.exists() else 0
        file.unlink(missing_ok=True)

    report.section(f"backup of one namespace of {total:,} relationships ({args.partitions} partitions)")
    bench.worker_rows()
    report.add("baseline: load by batch creates (relationships/s)", f"{load_rate:,.0f}")
    report.add(
        "export (relationships/s)",
        f"{exported.rate:,.0f}",
        f">= {EXPORT_GOAL:,}",
        exported.rate >= EXPORT_GOAL,
    )
    report.add("  export MB/s (the file)", f"{size / exported.seconds / 1e6:,.1f}")
    report.add(
        "  export seconds, of which the worker's",
        f"{exported.seconds:.2f} / {exported.details['worker_seconds']}",
    )
    report.add("  chunks", f"{exported.details['chunks']:,}")
    report.add("  file bytes per relationship", f"{size / max(total, 1):,.0f}")
    report.add("import (relationships/s)", f"{imported.rate:,.0f}")
    ratio = imported.rate / load_rate
    goal = f">= {IMPORT_RATIO_GOAL}x"
    report.add("  import / load by batch creates", f"{ratio:.2f}x", goal, ratio >= IMPORT_RATIO_GOAL)
    report.add("stats of the restored namespace equal the source's", str(same), "True", same)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, "relationships")
    parser.add_argument("--relationships", type=int, default=1_000_000)
    args = parse(parser, quick={"relationships": 20_000})
    run(args, measure)


if __name__ == "__main__":
    main()
