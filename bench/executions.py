"""Benchmark of pattern executions end to end, against a raw aiokafka echo loop measured in the
same run. Not a test: it prints one table with the goals of issue 14 ("A batch hot path").

    python bench/executions.py [--seconds 15] [--max-seconds 8] [--namespaces 64] [--partitions 4]
                               [--pattern P ...] [--also-rate R ...] [--no-faust-echo] [--quick]
                               [--profile worker.prof]

Everything runs on this box against the local stack (`source .stack/env`; `bash scripts/stack.sh
up` starts it): the run creates its own topics under a unique prefix, uses its own consumer groups
and Redis key prefix, and deletes them at the end.

1. Baseline: an echo process (plain aiokafka: a consumer group member reading `echo.in`, producing
   each message unchanged to `echo.out`, acks=all like the worker) on topics with the same
   partition count. The load generator sends the very bytes of execution requests (same keys,
   same size) and counts the echoes by their `nexus-request-id` header.
   Then, as a reference row, a Faust agent doing the same (`--faust-echo`; skipped with
   `--no-faust-echo`): what the framework the worker runs on costs per message.
2. A real worker process (`python -m nexus_streams worker`, isolated like the integration tests'
   `worker_env`), after the echo process stopped, so neither competes with the other for the CPU.
   Requests go round-robin over `--namespaces` namespaces, so every partition works.
   - `financial_transaction`: in each namespace, groups of 8 users (`user:K-M member group:K`);
     each execution gets a pair of users of one group that was never used before (connected in 2
     hops), so every execution commits a new `linked` relationship.
   - `user_onboarding`: each execution onboards a new user, `user:oN owner wallet:oN`.
3. For the echo and each pattern: maximum throughput (open loop: a bounded count sent as fast as
   the client can, rate = count / (last result - first send)), then a steady rate of half that
   maximum for `--seconds`, paced by schedule (request i is due at t0 + i / rate whatever the
   results do); a latency is the time from the request's scheduled send time to its result's
   arrival (time.perf_counter, client side), so a late generator counts against the latency, not
   for it. For the patterns, then a steady 100/s for `--seconds`. CPU per message of the worker
   and of the broker (its JVM, from the stack's kafka.pid) from /proc.

`--profile PATH` runs the worker under cProfile (written when the worker stops; read it with
`python -m pstats PATH`). It slows the worker down: the table of such a run is not a measurement.
About 2-3 minutes on 2 cores; `--quick` (a smoke test, not a measurement) under a minute.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from harness import (
    MAX_BATCH,
    Bench,
    Driver,
    Process,
    Request,
    add_arguments,
    error_rows,
    max_then_steady,
    note,
    parse,
    phase_rows,
    request,
    run,
    spread,
    wait_until_answering,
)

FINANCIAL = "financial_transaction"
ONBOARDING = "user_onboarding"
PATTERNS = (FINANCIAL, ONBOARDING)
GROUP_SIZE = 8  # users per group: 28 distinct connected pairs
#: issue 14: executions of either pattern over many namespaces, maximum >= 0.05x the echo's
RATIO_GOAL = 0.05


def execution_request(topic: str, namespace: str, pattern: str, source: str, target: str) -> Request:
    """An ExecutionRequest of `pattern`, as a client sends it."""
    return request(topic, namespace, {"pattern_id": pattern, "input": {"source": source, "target": target}})


class PairPool:
    """Never-used pairs of users connected through their group, round-robin over namespaces."""

    def __init__(self, namespaces: list[str]) -> None:
        self.namespaces = namespaces
        self.groups = dict.fromkeys(namespaces, 0)  # groups created so far, per namespace
        self._pairs: Iterator[tuple[str, str, str]] = iter(())
        self.available = 0

    def grow(self, groups_per_namespace: int, commands: bool = True) -> dict[str, list[dict[str, Any]]]:
        """The relationship commands creating `groups_per_namespace` more groups per namespace
        (none with `commands=False`: the echo loop only needs the names)."""
        created: dict[str, list[dict[str, Any]]] = {}
        first = self.groups[self.namespaces[0]]
        for ns in self.namespaces:
            if commands:
                created[ns] = [
                    {"action": "create", "type": "member", "source": f"user:{k}-{m}", "target": f"group:{k}"}
                    for k in range(first, first + groups_per_namespace)
                    for m in range(GROUP_SIZE)
                ]
            self.groups[ns] = first + groups_per_namespace
        pairs_per_group = GROUP_SIZE * (GROUP_SIZE - 1) // 2
        self.available += groups_per_namespace * pairs_per_group * len(self.namespaces)
        self._pairs = itertools.chain(self._pairs, self._round_robin(first, groups_per_namespace))
        return created

    def _round_robin(self, first: int, count: int) -> Iterator[tuple[str, str, str]]:
        for k in range(first, first + count):
            for a in range(GROUP_SIZE):
                for b in range(a + 1, GROUP_SIZE):
                    for ns in self.namespaces:
                        yield ns, f"user:{k}-{a}", f"user:{k}-{b}"

    def take(self) -> tuple[str, str, str]:
        self.available -= 1
        return next(self._pairs)


def transactions(topic: str, pool: PairPool) -> Callable[[], Request]:
    """financial_transaction between a pair of users never used before."""

    def make() -> Request:
        ns, source, target = pool.take()
        return execution_request(topic, ns, FINANCIAL, source, target)

    return make


def onboardings(topic: str, namespaces: list[str]) -> Callable[[], Request]:
    """user_onboarding of a new user each time, round-robin over the namespaces."""
    counter = itertools.count()

    def make() -> Request:
        n = next(counter)
        ns = namespaces[n % len(namespaces)]
        return execution_request(topic, ns, ONBOARDING, f"user:o{n}", f"wallet:o{n}")

    return make


async def setup_graph(driver: Driver, topic: str, pool: PairPool, pairs: int) -> None:
    """Create groups until at least `pairs` unused pairs exist; batches of <= MAX_BATCH commands."""
    per_group = GROUP_SIZE * (GROUP_SIZE - 1) // 2
    missing = pairs - pool.available
    if missing <= 0:
        return
    groups = -(-missing // (per_group * len(pool.namespaces)))
    commands = pool.grow(groups)
    driver.new_phase()
    started = time.perf_counter()
    for ns, cmds in commands.items():
        for i in range(0, len(cmds), MAX_BATCH):
            body = {"action": "batch", "commands": cmds[i : i + MAX_BATCH]}
            await driver.send(request(topic, ns, body, prefix="setup"))
    phase = await driver.wait(300.0)
    if phase.errors or phase.lost:
        raise RuntimeError(f"setup failed: {phase.errors} errors, {phase.lost} lost: {phase.error_samples}")
    created = groups * GROUP_SIZE * len(pool.namespaces)
    note(f"setup: {created:,} relationships in {time.perf_counter() - started:.1f} s")


async def wait_for_patterns(bench: Bench, driver: Driver, worker: Process) -> None:
    """Until the worker runs both patterns (the system patterns are registered by a task at start,
    maybe after the first commands are answered)."""
    executions, relationships = f"{bench.prefix}executions", f"{bench.prefix}relationships"
    probe_pool = PairPool(["bench-probe"])
    await setup_graph(driver, relationships, probe_pool, 1)
    probes = {
        FINANCIAL: transactions(executions, probe_pool),
        ONBOARDING: onboardings(executions, probe_pool.namespaces),
    }
    for pattern, probe in probes.items():
        answer = await wait_until_answering(
            driver,
            worker,
            probe,
            lambda a: a.get("status") == "ok" or (a.get("error") or {}).get("code") != "not_found",
        )
        if answer.get("status") != "ok":
            raise RuntimeError(f"{pattern} does not run: {answer.get('error')}")


async def measure(bench: Bench, namespaces: list[str]) -> None:
    """The worker: each pattern of --pattern in turn, the graph grown ahead of each
    financial_transaction phase."""
    args, report = bench.args, bench.report
    partitions = spread(namespaces, args.partitions)
    load = f"{FINANCIAL} requests, {len(namespaces)} namespaces on {partitions} partitions"
    echo_max, faust_max = await bench.echoes(lambda topic: transactions(topic, echo_pool(namespaces)), load)
    measured = {}
    async with bench.worker() as (driver, worker):
        await wait_for_patterns(bench, driver, worker)
        for pattern in args.pattern:
            make, prepare = workload(bench, driver, pattern, namespaces)
            measured[pattern] = await max_then_steady(
                args, pattern, driver, make, args.pattern_calibration, prepare, worker=True
            )
    for pattern, phases in measured.items():
        title = f"{args.partitions} partitions, {len(namespaces)} namespaces on {partitions} partitions"
        report.section(f"{pattern} end to end ({title})")
        bench.worker_rows()
        phase_rows(report, pattern, "executions", phases, args.seconds, echo_max, RATIO_GOAL)
        if faust_max:
            ratio = phases.top.throughput() / faust_max
            report.add(f"  {pattern} / faust echo max throughput", f"{ratio:.3f}x")
        error_rows(report, pattern, phases.all())


def workload(
    bench: Bench, driver: Driver, pattern: str, namespaces: list[str]
) -> tuple[Callable[[], Request], Callable[[int], Awaitable[None]]]:
    """The requests of `pattern` and what must be made before n of them are sent."""
    executions = f"{bench.prefix}executions"
    if pattern == ONBOARDING:
        return onboardings(executions, namespaces), _nothing_to_prepare
    pool = PairPool(namespaces)

    async def prepare(count: int) -> None:
        await setup_graph(driver, f"{bench.prefix}relationships", pool, count)

    return transactions(executions, pool), prepare


async def _nothing_to_prepare(count: int) -> None:
    return None


def echo_pool(namespaces: list[str]) -> PairPool:
    """Names of pairs for the echo loops (which create nothing)."""
    pool = PairPool(namespaces)
    pool.grow(10**5, commands=False)
    return pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, "executions")
    parser.add_argument("--namespaces", type=int, default=64)
    parser.add_argument("--pattern-calibration", type=int, default=1000, help="first execution burst")
    parser.add_argument(
        "--pattern",
        action="append",
        choices=PATTERNS,
        help=f"measure only this pattern (repeatable; default: {' and '.join(PATTERNS)})",
    )
    args = parse(parser, quick={"pattern_calibration": 300})
    args.pattern = args.pattern or list(PATTERNS)
    namespaces = [f"ns-{i:03d}" for i in range(args.namespaces)]
    run(args, lambda bench: measure(bench, namespaces))


if __name__ == "__main__":
    main()
