"""Benchmark of relationship commands end to end, against a raw aiokafka echo loop measured in the
same run. Not a test: it prints one table with the goals of issue 14 ("A batch hot path") and the
batch load goal of issue 13.

    python bench/commands.py [--seconds 15] [--max-seconds 8] [--partitions 4] [--batch-size 1000]
                             [--max-batches 100] [--also-rate R ...] [--no-faust-echo] [--quick]
                             [--profile worker.prof]

The same method as bench/executions.py (see bench/harness.py and bench/README.md), on the local
stack, with its own topics, groups and Redis keys, deleted at the end:

1. Baseline: the aiokafka echo loop (and, unless `--no-faust-echo`, the Faust agent echo) fed
   the very bytes of the `create` commands below, with the same key: one namespace, so one
   partition of `--partitions` works, as for the worker.
2. A real worker process; `create` commands in ONE namespace, each a new relationship
   (`user:I member group:(I % 1000)`, I counting up): the maximum (an open loop of a bounded
   count), latency p50 / p99 at half of it and p99 at 100/s (paced by schedule: latency from
   a request's scheduled send time to its result's arrival), CPU per command of the worker and
   of the broker.
3. Then, in the same namespace, `batch` commands of `--batch-size` creates each: relationships a
   second through batches (an open loop of at most `--max-batches` batches).

About 2 minutes on 2 cores; `--quick` (a smoke test, not a measurement) under a minute.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from typing import Any

from harness import (
    Bench,
    Request,
    add_arguments,
    burst,
    cpu_rows,
    error_rows,
    max_then_steady,
    note,
    parse,
    phase_rows,
    request,
    run,
    spread,
)

NAMESPACE = "bench-commands"
GROUPS = 1000
#: issue 14: relationship creates in one namespace, maximum >= 0.15x the echo's
RATIO_GOAL = 0.15
#: issue 13: loads through batch commands of 1,000 creates, relationships a second
BATCH_GOAL = 20_000


class Creates:
    """`create` commands of relationships never made before: user:I member group:(I % GROUPS)."""

    def __init__(self) -> None:
        self._users = itertools.count()

    def command(self) -> dict[str, Any]:
        i = next(self._users)
        return {"action": "create", "type": "member", "source": f"user:{i}", "target": f"group:{i % GROUPS}"}

    def one_by_one(self, topic: str) -> Callable[[], Request]:
        return lambda: request(topic, NAMESPACE, self.command())

    def batches(self, topic: str, size: int) -> Callable[[], Request]:
        return lambda: request(
            topic, NAMESPACE, {"action": "batch", "commands": [self.command() for _ in range(size)]}
        )


async def measure(bench: Bench) -> None:
    args, report = bench.args, bench.report
    where = f"one namespace on {spread([NAMESPACE], args.partitions)} of {args.partitions} partitions"
    echo_max, faust_max = await bench.echoes(lambda topic: Creates().one_by_one(topic), f"creates, {where}")
    relationships = f"{bench.prefix}relationships"
    creates = Creates()
    async with bench.worker() as (driver, _):
        single = await max_then_steady(
            args, "create", driver, creates.one_by_one(relationships), args.create_calibration, worker=True
        )
        make = creates.batches(relationships, args.batch_size)
        note(f"batch: calibration burst of 2 x {args.batch_size:,}")
        warm = await burst(driver, make, 2, timeout_s=120)
        count = int(min(max(warm.throughput() * args.max_seconds, 2), args.max_batches))
        note(f"batch: ~{warm.throughput() * args.batch_size:,.0f} relationships/s; a burst of {count:,}")
        top = await burst(driver, make, count, timeout_s=60 + 3 * count / max(warm.throughput(), 0.1))

    report.section(f"relationship create end to end ({where})")
    bench.worker_rows()
    phase_rows(report, "create", "commands", single, args.seconds, echo_max, RATIO_GOAL)
    if faust_max:
        report.add("  create / faust echo max throughput", f"{single.top.throughput() / faust_max:.3f}x")
    error_rows(report, "create", single.all())

    report.section(f"batch load: batch commands of {args.batch_size:,} creates, the same namespace")
    rate = top.throughput() * args.batch_size
    goal = f">= {BATCH_GOAL:,} (issue 13)"
    report.add("batch max throughput (relationships/s)", f"{rate:,.0f}", goal, rate >= BATCH_GOAL)
    report.add(f"  burst of {top.sent:,} batches: batches/s", f"{top.throughput():,.1f}")
    cpu_rows(report, "worker", top, rate, per="relationship")
    error_rows(report, "batch", [warm, top])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, "commands")
    parser.add_argument("--create-calibration", type=int, default=1000, help="first create burst")
    parser.add_argument("--batch-size", type=int, default=1000, help="creates in one batch command")
    parser.add_argument(
        "--max-batches", type=int, default=100, help="at most this many batches in the batch burst"
    )
    args = parse(parser, quick={"create_calibration": 300, "max_batches": 20})
    run(args, measure)


if __name__ == "__main__":
    main()
