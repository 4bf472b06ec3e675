"""Benchmark of pattern executions end to end, against a raw aiokafka echo loop measured in the
same run. Not a test: it prints one table with the goals of issue 5 ("Benchmark").

    python bench/executions.py [--seconds 15] [--max-seconds 8] [--namespaces 64] [--partitions 4]
                               [--also-rate R ...] [--no-faust-echo] [--profile worker.prof]

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
   The graph: in each of `--namespaces` namespaces, groups of 8 users (`user:K-M member group:K`);
   each execution of the system pattern `financial_transaction` gets a pair of users of one group
   that was never used before (connected in 2 hops), so every execution commits a new `linked`
   relationship. Consecutive requests go round-robin over the namespaces, so every partition works.
3. For both: maximum throughput (open loop: a bounded count sent as fast as the client can, rate =
   count / (last result - first send)), then a steady rate of half that maximum for `--seconds`,
   paced by schedule (request i is due at t0 + i / rate whatever the results do); a latency is
   the time from the request's scheduled send time to its result's arrival (time.perf_counter,
   client side), so a late generator counts against the latency, not for it.

`--profile PATH` runs the worker under cProfile (written when the worker stops; read it with
`python -m pstats PATH`). It slows the worker down: the table of such a run is not a measurement.
About 1-2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2
from report import Report  # bench/report.py: the table both benchmarks print

REPO = Path(__file__).resolve().parents[1]
LOG_DIR = REPO / ".stack" / "logs"
REQUEST_ID = "nexus-request-id"
STATUS = "nexus-status"
PATTERN = "financial_transaction"
GROUP_SIZE = 8  # users per group: 28 distinct connected pairs
MAX_BATCH = 1000  # NEXUS_MAX_BATCH default
PRINCIPAL = "bench"


# --------------------------------------------------------------------------- measuring


def percentile(sorted_s: list[float], q: float) -> float:
    """q-th percentile of sorted samples in seconds, in milliseconds."""
    if not sorted_s:
        return float("nan")
    return sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))] * 1000


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def box_cpu_seconds() -> float:
    """CPU time all processes of the box spent so far (Linux /proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as stat:
        ticks = [int(x) for x in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU time the server under test, this client and the rest of the box (the broker, and
    whatever else runs) spend during a phase."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.begin = (cpu_seconds(pid), time.process_time(), box_cpu_seconds(), time.perf_counter())

    def shares(self) -> tuple[float, float, float]:
        """(server, client, rest of the box) CPU in % of one core since construction."""
        server, client, box, wall = self.begin
        span = time.perf_counter() - wall
        server_s = cpu_seconds(self.pid) - server
        client_s = time.process_time() - client
        rest_s = box_cpu_seconds() - box - server_s - client_s
        return 100 * server_s / span, 100 * client_s / span, 100 * max(0.0, rest_s) / span


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the load


@dataclass(frozen=True)
class Request:
    topic: str
    key: bytes
    value: bytes
    request_id: bytes


def execution_request(topic: str, namespace: str, source: str, target: str) -> Request:
    """An ExecutionRequest of financial_transaction, as a client sends it."""
    request_id = f"b-{uuid.uuid4().hex}"
    payload = {
        "request_id": request_id,
        "principal": PRINCIPAL,
        "pattern_id": PATTERN,
        "input": {"source": source, "target": target},
    }
    return Request(topic, namespace.encode(), json.dumps(payload).encode(), request_id.encode())


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
        self._pairs = _chain(self._pairs, self._round_robin(first, groups_per_namespace))
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


def _chain(*its: Iterator[tuple[str, str, str]]) -> Iterator[tuple[str, str, str]]:
    for it in its:
        yield from it


# --------------------------------------------------------------------------- the client


@dataclass
class Phase:
    """What one phase measured."""

    sent: int = 0
    received: int = 0
    errors: int = 0
    lost: int = 0
    first_send: float = 0.0
    last_send: float = 0.0
    last_receive: float = 0.0
    latencies: list[float] = field(default_factory=list)
    #: sampled results: (seconds to processed_at, processed_at to result timestamp, to arrival)
    legs: list[tuple[float, float, float]] = field(default_factory=list)
    max_lag: float = 0.0
    error_samples: list[str] = field(default_factory=list)
    #: CPU of the server process, the client and the rest of the box, % of one core over the phase
    cpu: tuple[float, float, float] = (float("nan"), float("nan"), float("nan"))

    def throughput(self) -> float:
        span = self.last_receive - self.first_send
        return self.received / span if span > 0 else float("nan")


class Driver:
    """One producer and one reader of the output topic; results matched by request id."""

    def __init__(self, bootstrap: str, output_topic: str, check_status: bool) -> None:
        self.server_pid = 0  # the process under test, for CPU shares
        self.output_topic = output_topic
        self.check_status = check_status
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100
        )
        #: request id -> (intended send time (perf_counter), wall clock at send)
        self.pending: dict[bytes, tuple[float, float]] = {}
        self.phase = Phase()
        self.sample_every = 0
        self._drained = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.answers: dict[bytes, dict[str, Any]] = {}  # results of requests sent with keep=True
        self._keep: set[bytes] = set()
        self._cpu: CpuMeter | None = None

    async def start(self) -> None:
        await self.producer.start()
        await self.consumer.start()
        parts = await partitions_of(self.consumer, self.output_topic)
        tps = [TopicPartition(self.output_topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)
        self._reader = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.consumer.stop()
        await self.producer.stop()

    def new_phase(self, sample_every: int = 0) -> Phase:
        self.phase = Phase()
        self.sample_every = sample_every
        self.pending.clear()
        self._cpu = CpuMeter(self.server_pid) if self.server_pid else None
        return self.phase

    async def send(self, req: Request, intended: float | None = None, keep: bool = False) -> None:
        now = time.perf_counter()
        phase = self.phase
        if phase.sent == 0:
            phase.first_send = now
        phase.sent += 1
        phase.last_send = now
        if intended is not None:
            phase.max_lag = max(phase.max_lag, now - intended)
        self.pending[req.request_id] = (now if intended is None else intended, time.time())
        if keep:
            self._keep.add(req.request_id)
        self._drained.clear()
        future = await self.producer.send(
            req.topic, req.value, key=req.key, headers=[(REQUEST_ID, req.request_id)]
        )
        future.add_done_callback(self._delivered)

    def _delivered(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.phase.errors += 1
            self.phase.error_samples.append(f"produce failed: {future.exception()!r}")

    async def wait(self, timeout_s: float) -> Phase:
        """Until every pending request was answered, or the timeout (the rest counts as lost)."""
        if self.pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout_s)
        phase = self.phase
        if self._cpu is not None:
            phase.cpu = self._cpu.shares()
        phase.lost = len(self.pending)
        self.pending.clear()
        phase.latencies.sort()
        return phase

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=200)
            arrived = time.perf_counter()
            for records in batches.values():
                for record in records:
                    self._one(record, arrived)

    def _one(self, record: Any, arrived: float) -> None:
        headers = dict(record.headers or ())
        request_id = headers.get(REQUEST_ID)
        sent = self.pending.pop(request_id, None) if request_id is not None else None
        if sent is None:
            return  # a duplicate, the readiness probes, or a previous phase's straggler
        phase = self.phase
        phase.received += 1
        phase.last_receive = arrived
        phase.latencies.append(arrived - sent[0])
        if self.check_status and headers.get(STATUS) != b"ok":
            phase.errors += 1
            if len(phase.error_samples) < 5:
                error = json.loads(record.value).get("error") or {}
                phase.error_samples.append(f"{error.get('code')}: {error.get('message')}")
        if request_id in self._keep:
            self._keep.discard(request_id)
            self.answers[request_id] = json.loads(record.value)
        elif self.sample_every and phase.received % self.sample_every == 0:
            self._legs(record, arrived, sent)
        if not self.pending:
            self._drained.set()

    def _legs(self, record: Any, arrived: float, sent: tuple[float, float]) -> None:
        """Where one result's latency went, by wall clock (ms resolution of record timestamps)."""
        value = json.loads(record.value)
        processed = datetime.fromisoformat(value["processed_at"].replace("Z", "+00:00")).timestamp()
        produced = record.timestamp / 1000
        arrived_wall = sent[1] + (arrived - sent[0])
        self.phase.legs.append((processed - sent[1], produced - processed, arrived_wall - produced))


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        await consumer._client.force_metadata_update()  # noqa: SLF001
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} does not exist")


async def burst(driver: Driver, make: Callable[[], Request], count: int, timeout_s: float) -> Phase:
    """Open loop: `count` requests as fast as the producer takes them."""
    driver.new_phase()
    for _ in range(count):
        await driver.send(make())
    return await driver.wait(timeout_s)


async def steady(
    driver: Driver, make: Callable[[], Request], rate: float, seconds: float, sample_every: int = 0
) -> Phase:
    """Request i is due at t0 + i / rate; each is sent when due (late ones at once)."""
    count = max(1, int(rate * seconds))
    requests = [make() for _ in range(count)]  # built beforehand: no JSON work on the schedule
    driver.new_phase(sample_every)
    t0 = time.perf_counter() + 0.05
    i = 0
    while i < count:
        now = time.perf_counter()
        while i < count and t0 + i / rate <= now:
            await driver.send(requests[i], intended=t0 + i / rate)
            i += 1
        if i < count:
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
    return await driver.wait(30.0)


async def max_then_half(
    report: Report,
    label: str,
    driver: Driver,
    make: Callable[[], Request],
    calibration: int,
    max_seconds: float,
    seconds: float,
    sample_every: int = 0,
) -> tuple[Phase, Phase, Phase]:
    note(f"{label}: calibration burst of {calibration:,}")
    warm = await burst(driver, make, calibration, timeout_s=120)
    estimate = warm.throughput() if warm.received else 100.0
    count = int(min(max(estimate * max_seconds, calibration), 200_000))
    note(f"{label}: ~{estimate:,.0f}/s; maximum over a burst of {count:,}")
    top = await burst(driver, make, count, timeout_s=60 + 3 * count / max(estimate, 1))
    rate = top.throughput() / 2
    note(f"{label}: {top.throughput():,.0f}/s; steady {rate:,.0f}/s for {seconds:g} s")
    half = await steady(driver, make, rate, seconds, sample_every)
    return warm, top, half


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A child process logging to a file; stopped with SIGTERM (then SIGKILL) by its pid."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


def worker_env(bootstrap: str, redis_url: str, run_id: str, partitions: int) -> dict[str, str]:
    """Like tests/integration/conftest.py's worker_env: nothing shared with other runs."""
    return {
        **os.environ,
        "NEXUS_KAFKA_BOOTSTRAP": bootstrap,
        "NEXUS_REDIS_URL": redis_url,
        "NEXUS_APP_ID": f"nexus-bench-{run_id}",
        "NEXUS_TOPIC_PREFIX": f"bench-{run_id}.",
        "NEXUS_PARTITIONS": str(partitions),
        "NEXUS_DATA_DIR": str(REPO / ".stack" / f"bench-data-{run_id}"),
        "NEXUS_METRICS_PORT": "0",
        "NEXUS_REDIS_KEY_PREFIX": f"nexus-bench-{run_id}:",
        # NEXUS_LOG_LEVEL stays INFO (the default): at WARNING or above Faust keeps its terminal
        # spinner, which sets the root logger to DEBUG (faust/worker.py, _setup_spinner_handler), and
        # every debug call of aiokafka and Faust then builds a LogRecord (about 36 per execution)
        "NEXUS_LOG_LEVEL": "INFO",
    }


async def wait_until_answering(
    driver: Driver, proc: Process, make: Callable[[], Request], ok: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Send fresh probes until one is answered and `ok` with its answer (2 minutes at most)."""
    deadline = time.monotonic() + 120
    while True:
        if not proc.alive():
            raise RuntimeError(f"process exited; see {proc.log_path}")
        req = make()
        driver.new_phase()
        await driver.send(req, keep=True)
        await driver.wait(5.0)
        answer = driver.answers.pop(req.request_id, None)
        if answer is not None and ok(answer):
            return answer
        if time.monotonic() > deadline:
            raise RuntimeError(f"no good answer within 120 s (last: {answer}); see {proc.log_path}")
        await asyncio.sleep(0.5)


# --------------------------------------------------------------------------- topics, cleanup


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def delete_everything(
    bootstrap: str, redis_url: str, prefixes: tuple[str, ...], groups: list[str]
) -> None:
    """The run's topics (public, changelog, Faust-internal), consumer groups and Redis keys."""
    from nexus_streams.streams.admin import delete_topics_with_prefixes

    await delete_topics_with_prefixes(bootstrap, prefixes, groups)
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        for prefix in prefixes:
            keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
            for i in range(0, len(keys), 500):
                await client.delete(*keys[i : i + 500])
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- the echo loop


async def echo_loop(bootstrap: str, source: str, sink: str, group: str) -> None:
    """Consume `source` in a consumer group, produce every message unchanged to `sink`."""
    consumer = AIOKafkaConsumer(
        source, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest"
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    parent = os.getppid()
    try:
        while not stop.is_set() and os.getppid() == parent:  # never outlive the benchmark
            batches = await consumer.getmany(timeout_ms=100)
            for records in batches.values():
                for r in records:
                    await producer.send(sink, r.value, key=r.key, headers=list(r.headers or ()))
    finally:
        await consumer.stop()
        await producer.stop()


def faust_echo(bootstrap: str, source: str, sink: str, group: str, partitions: int, datadir: str) -> None:
    """A Faust agent that forwards every message of `source` unchanged to `sink`: what the
    framework itself costs per message, with no work on it (the worker's agents run on Faust)."""
    import faust

    app = faust.App(
        group,
        broker=f"kafka://{bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        producer_acks=-1,
        topic_partitions=partitions,
        web_enabled=False,
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
        datadir=datadir,
    )
    Path(datadir).mkdir(parents=True, exist_ok=True)
    inbound, outbound = app.topic(source), app.topic(sink)

    async def forward(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            await outbound.send(key=message.key, value=message.value, headers=list(message.headers or ()))

    app.agent(inbound, name="forward")(forward)
    parent = os.getppid()

    async def orphaned() -> None:  # never outlive the benchmark
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    app.task(orphaned)
    # loglevel INFO: at WARNING Faust's spinner sets the root logger to DEBUG (see worker_env)
    faust.Worker(app, loglevel="INFO", quiet=True).execute_from_commandline()


# --------------------------------------------------------------------------- the run


def spread(namespaces: list[str], partitions: int) -> int:
    """Partitions the namespaces land on (the producers' murmur2 partitioner)."""
    return len({(murmur2(ns.encode()) & 0x7FFFFFFF) % partitions for ns in namespaces})


LEGS = ("send -> worker starts it", "worker: start -> result produced", "result produced -> arrival")


def latency_pair_s(sorted_s: list[float]) -> str:
    return f"{percentile(sorted_s, 0.5):.1f} / {percentile(sorted_s, 0.99):.1f}"


def leg_rows(report: Report, phase: Phase, title: str | None = None) -> None:
    """p50 / p99 of each leg of the phase's sampled results, after a `title` row if given; no rows
    at all if no result was sampled."""
    if not phase.legs:
        return
    if title is not None:
        report.add(title, "")
    for name, leg in zip(LEGS, zip(*phase.legs, strict=True), strict=True):
        report.add(f"    {name}", latency_pair_s(sorted(leg)))


def latency_rows(report: Report, label: str, phase: Phase, goals: bool) -> tuple[float, float]:
    p50, p99 = percentile(phase.latencies, 0.5), percentile(phase.latencies, 0.99)
    report.add(
        f"{label} p50 latency at half rate (ms)", f"{p50:.1f}", *(("<= 10", p50 <= 10) if goals else ())
    )
    report.add(
        f"{label} p99 latency at half rate (ms)", f"{p99:.1f}", *(("<= 50", p99 <= 50) if goals else ())
    )
    report.add(
        f"  {label} max latency / longest generator lag (ms)",
        f"{percentile(phase.latencies, 1.0):.1f} / {phase.max_lag * 1000:.1f}",
    )
    return p50, p99


@dataclass(frozen=True)
class EchoKind:
    #: the --flag that runs it as a child process, a label, the report's section title
    flag: str
    label: str
    title: str


AIOKAFKA_ECHO = EchoKind("--echo", "echo", "baseline: aiokafka echo loop ({partitions} partitions, acks=all)")
FAUST_ECHO = EchoKind(
    "--faust-echo",
    "faust echo",
    "reference: Faust agent echo ({partitions} partitions, acks=all), the framework's own cost",
)


async def run_echo(
    args: argparse.Namespace,
    run_id: str,
    report: Report,
    namespaces: list[str],
    kind: EchoKind = AIOKAFKA_ECHO,
) -> float:
    slug = kind.flag.strip("-")
    prefix = f"bench-{run_id}.{slug}."
    source, sink = f"{prefix}in", f"{prefix}out"
    await create_topics(args.bootstrap, [source, sink], args.partitions)
    argv = [sys.executable, __file__, kind.flag, source, sink, "--group", f"nexus-bench-{run_id}-{slug}"]
    argv += ["--bootstrap", args.bootstrap, "--partitions", str(args.partitions)]
    argv += ["--data-dir", str(REPO / ".stack" / f"bench-data-{run_id}" / slug)]
    echo = Process(argv, {**os.environ, "PYTHONUNBUFFERED": "1"}, LOG_DIR / f"bench-{run_id}-{slug}.log")
    driver = Driver(args.bootstrap, sink, check_status=False)
    driver.server_pid = echo.proc.pid
    pool = PairPool(namespaces)
    pool.grow(10**5, commands=False)  # only names: the echo loop creates nothing

    def make() -> Request:
        return execution_request(source, *pool.take())

    try:
        await driver.start()
        await wait_until_answering(driver, echo, make, lambda _: True)
        _, top, half = await max_then_half(
            report, kind.label, driver, make, args.echo_calibration, args.max_seconds, args.seconds
        )
    finally:
        try:
            await driver.stop()
        finally:
            echo.stop()
    label = kind.label
    report.section(kind.title.format(partitions=args.partitions))
    report.add(f"{label} max throughput (msgs/s)", f"{top.throughput():,.0f}")
    report.add(f"  burst of {top.sent:,}, generator enqueue rate (msgs/s)", f"{enqueue_rate(top):,.0f}")
    cpu_rows(report, f"{label} process", top, top.throughput())
    latency_rows(report, label, half, goals=False)
    cpu_rows(report, f"{label} process", half, half.sent / args.seconds)
    report.add(f"  {label} lost at half rate", str(half.lost + top.lost))
    return top.throughput()


def cpu_rows(report: Report, server: str, phase: Phase, rate: float) -> None:
    report.add(
        f"  CPU, % of one core: {server} / this client / rest of the box (broker, others)",
        " / ".join(f"{x:.0f}" for x in phase.cpu),
    )
    report.add(f"  {server} CPU per message (us)", f"{phase.cpu[0] * 10_000 / rate:,.0f}")


def enqueue_rate(phase: Phase) -> float:
    span = phase.last_send - phase.first_send
    return phase.sent / span if span > 0 else float("nan")


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
            rid = f"setup-{uuid.uuid4().hex}"
            value = {
                "request_id": rid,
                "principal": PRINCIPAL,
                "action": "batch",
                "commands": cmds[i : i + MAX_BATCH],
            }
            await driver.send(Request(topic, ns.encode(), json.dumps(value).encode(), rid.encode()))
    phase = await driver.wait(300.0)
    if phase.errors or phase.lost:
        raise RuntimeError(f"setup failed: {phase.errors} errors, {phase.lost} lost: {phase.error_samples}")
    created = groups * GROUP_SIZE * len(pool.namespaces)
    note(f"setup: {created:,} relationships in {time.perf_counter() - started:.1f} s")


def start_worker(args: argparse.Namespace, run_id: str) -> tuple[Process, str, Path]:
    """The worker process (under cProfile with --profile), its topic prefix and source tree."""
    env = worker_env(args.bootstrap, args.redis_url, run_id, args.partitions)
    env.update(dict(item.split("=", 1) for item in args.worker_env))
    argv = [sys.executable, "-m", "nexus_streams", "worker"]
    if args.profile:
        argv[1:1] = ["-m", "cProfile", "-o", str(Path(args.profile).resolve())]
    tree = Path(args.worker_tree).resolve() if args.worker_tree else REPO
    worker = Process(argv, env, LOG_DIR / f"bench-{run_id}-worker.log", cwd=tree)
    return worker, env["NEXUS_TOPIC_PREFIX"], tree


async def wait_for_pattern(driver: Driver, worker: Process, prefix: str) -> None:
    """Until the worker answers a command and runs the pattern (the system patterns are
    registered by a task at start, maybe after the first commands are answered)."""
    executions, relationships = f"{prefix}executions", f"{prefix}relationships"

    def probe_relationship() -> Request:
        rid = f"ready-{uuid.uuid4().hex}"
        body = {"request_id": rid, "principal": PRINCIPAL, "action": "create", "type": "linked"}
        body |= {"source": f"probe:{rid}", "target": "probe:target"}
        return Request(relationships, b"readiness", json.dumps(body).encode(), rid.encode())

    started = time.perf_counter()
    await wait_until_answering(driver, worker, probe_relationship, lambda _: True)
    note(f"worker answers after {time.perf_counter() - started:.1f} s")
    probe_pool = PairPool(["bench-probe"])
    await setup_graph(driver, relationships, probe_pool, 1)
    answer = await wait_until_answering(
        driver,
        worker,
        lambda: execution_request(executions, *probe_pool.take()),
        lambda a: a.get("status") == "ok" or (a.get("error") or {}).get("code") != "not_found",
    )
    if answer.get("status") != "ok":
        raise RuntimeError(f"{PATTERN} does not run: {answer.get('error')}")


async def measure_pattern(
    args: argparse.Namespace, driver: Driver, prefix: str, pool: PairPool
) -> tuple[Phase, Phase, Phase, list[tuple[float, Phase]]]:
    """Calibration burst, maximum burst, steady half rate, then the --also-rate phases as
    (rate, phase); the graph grows ahead of each."""
    executions, relationships = f"{prefix}executions", f"{prefix}relationships"

    def make() -> Request:
        return execution_request(executions, *pool.take())

    async def steady_phase(rate: float, message: str) -> Phase:
        """A steady phase at `rate` (noted with `message`), after topping up the graph if fewer
        unused pairs remain than it needs."""
        if rate * args.seconds > pool.available:
            await setup_graph(driver, relationships, pool, int(rate * args.seconds) + 100)
        note(message)
        return await steady(driver, make, rate, args.seconds, sample_every=args.sample_every)

    await setup_graph(driver, relationships, pool, args.pattern_calibration)
    note(f"pattern: calibration burst of {args.pattern_calibration:,}")
    warm = await burst(driver, make, args.pattern_calibration, timeout_s=120)
    estimate = warm.throughput() if warm.received else 100.0
    count = int(min(max(estimate * args.max_seconds, args.pattern_calibration), 200_000))
    # pairs for the maximum burst and the steady phase at about half of it, with a margin
    await setup_graph(driver, relationships, pool, int(count * 1.3 + estimate * args.seconds * 0.8) + 100)
    note(f"pattern: ~{estimate:,.0f}/s; maximum over a burst of {count:,}")
    top = await burst(driver, make, count, timeout_s=60 + 3 * count / max(estimate, 1))
    rate = top.throughput() / 2
    half = await steady_phase(
        rate, f"pattern: {top.throughput():,.0f}/s; steady {rate:,.0f}/s for {args.seconds:g} s"
    )
    extras: list[tuple[float, Phase]] = []
    for extra in args.also_rate:
        message = f"pattern: steady {extra:,.0f}/s for {args.seconds:g} s (--also-rate)"
        extras.append((extra, await steady_phase(extra, message)))
    return warm, top, half, extras


async def run_pattern(
    args: argparse.Namespace,
    run_id: str,
    report: Report,
    namespaces: list[str],
    echo_max: float,
    faust_max: float | None,
) -> None:
    from nexus_streams.settings import Settings
    from nexus_streams.streams.admin import ensure_topics

    prefix = f"bench-{run_id}."
    await ensure_topics(
        Settings(
            kafka_bootstrap=args.bootstrap,
            app_id=f"nexus-bench-{run_id}",
            topic_prefix=prefix,
            partitions=args.partitions,
        )
    )
    worker, prefix, tree = start_worker(args, run_id)
    driver = Driver(args.bootstrap, f"{prefix}results", check_status=True)
    driver.server_pid = worker.proc.pid
    try:
        await driver.start()
        await wait_for_pattern(driver, worker, prefix)
        warm, top, half, extras = await measure_pattern(args, driver, prefix, PairPool(namespaces))
    finally:
        try:
            await driver.stop()
        finally:
            worker.stop()

    title = f"{PATTERN} end to end ({args.partitions} partitions, {len(namespaces)} namespaces"
    report.section(f"{title} on {spread(namespaces, args.partitions)} partitions)")
    report.add(f"  worker code: {code_version(tree)}", "")
    if args.worker_env:
        report.add(f"  worker environment also: {' '.join(args.worker_env)}", "")
    throughput = top.throughput()
    report.add("pattern max throughput (executions/s)", f"{throughput:,.0f}")
    report.add(f"  burst of {top.sent:,}, generator enqueue rate (msgs/s)", f"{enqueue_rate(top):,.0f}")
    cpu_rows(report, "worker", top, throughput)
    ratio = throughput / echo_max
    report.add("pattern / echo max throughput", f"{ratio:.3f}x", ">= 0.5x", ratio >= 0.5)
    if faust_max:
        report.add("  pattern / faust echo max throughput", f"{throughput / faust_max:.3f}x")
        report.add(
            "  faust echo / echo max throughput (the framework's ceiling)", f"{faust_max / echo_max:.3f}x"
        )
    rate = half.sent / args.seconds
    report.add("  steady rate (executions/s)", f"{rate:,.0f}")
    latency_rows(report, "pattern", half, goals=True)
    cpu_rows(report, "worker", half, rate)
    leg_rows(report, half, f"  latency by leg, {len(half.legs)} sampled results, p50 / p99 (ms, ms clocks)")
    for extra, phase in extras:
        report.add(
            f"  at {extra:,.0f}/s (--also-rate): p50 / p99 latency (ms)", latency_pair_s(phase.latencies)
        )
        leg_rows(report, phase)
    errors = sum(p.errors + p.lost for p in (warm, top, half, *(phase for _, phase in extras)))
    report.add("errors (error results, lost, failed sends)", str(errors), "0", errors == 0)
    for sample in (warm.error_samples + top.error_samples + half.error_samples)[:5]:
        report.add(f"  e.g. {sample[:90]}", "")
    if args.profile:
        report.add(f"(worker ran under cProfile: not a measurement; profile in {args.profile})", "")


def code_version(tree: Path) -> str:
    """The commit of the worker's tree and whether its package has uncommitted changes."""
    if tree != REPO:
        return f"{tree} (not the repository's working tree)"
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "nexus_streams"], capture_output=True, text=True)
    changed = [line[3:] for line in dirty.stdout.splitlines()]
    return f"{head.stdout.strip()}" + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


async def main_async(args: argparse.Namespace) -> int:
    # SIGTERM cancels the run like Ctrl-C does, so the cleanup below still runs
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    run_id = uuid.uuid4().hex[:10]
    namespaces = [f"ns-{i:03d}" for i in range(args.namespaces)]
    report = Report()
    prefixes = (f"bench-{run_id}.", f"nexus-bench-{run_id}")
    groups = [f"nexus-bench-{run_id}", f"nexus-bench-{run_id}-echo", f"nexus-bench-{run_id}-faust-echo"]
    note(f"run {run_id}: topics bench-{run_id}.*, logs in {LOG_DIR}/bench-{run_id}-*.log")
    try:
        echo_max = await run_echo(args, run_id, report, namespaces)
        faust_max = await run_echo(args, run_id, report, namespaces, FAUST_ECHO) if args.faust_echo else None
        await run_pattern(args, run_id, report, namespaces, echo_max, faust_max)
    finally:
        if not args.keep:
            shutil.rmtree(REPO / ".stack" / f"bench-data-{run_id}", ignore_errors=True)  # Faust's datadir
            try:
                await delete_everything(args.bootstrap, args.redis_url, prefixes, groups)
            except Exception as exc:  # do not hide the error of the run itself
                note(f"cleanup failed ({exc!r}): topics {prefixes[0]}*, {prefixes[1]}* may remain")
    print()
    report.print()
    misses = [r.name.strip() for r in report.rows if r.ok is False]
    print("\nall goals met" if not misses else f"\ngoals missed: {', '.join(misses)}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each steady-rate phase")
    parser.add_argument("--max-seconds", type=float, default=8.0, help="about how long a maximum burst lasts")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--namespaces", type=int, default=64)
    parser.add_argument("--echo-calibration", type=int, default=5000, help="first echo burst (count)")
    parser.add_argument("--pattern-calibration", type=int, default=1000, help="first execution burst")
    parser.add_argument("--sample-every", type=int, default=10, help="decompose every n-th latency")
    parser.add_argument(
        "--also-rate",
        type=float,
        action="append",
        default=[],
        metavar="RATE",
        help="after the half-rate phase, one more steady phase at RATE executions/s (repeatable): "
        "latency against load, reported but not judged",
    )
    parser.add_argument("--profile", help="run the worker under cProfile, writing this file")
    parser.add_argument(
        "--worker-tree",
        help="run the worker from this copy of the repository (e.g. `git archive HEAD | tar -x -C DIR`) "
        "instead of the working tree",
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra environment variable of the worker, e.g. a Faust setting: PRODUCER_LINGER=0.002",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's topics and Redis keys")
    parser.add_argument("--bootstrap", default=os.environ.get("NEXUS_KAFKA_BOOTSTRAP", "127.0.0.1:19092"))
    parser.add_argument("--redis-url", default=os.environ.get("NEXUS_REDIS_URL", "redis://127.0.0.1:16379/0"))
    parser.add_argument("--echo", nargs=2, metavar=("SOURCE", "SINK"), help=argparse.SUPPRESS)
    parser.add_argument("--faust-echo", dest="faust_echo_of", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-faust-echo",
        dest="faust_echo",
        action="store_false",
        help="skip the Faust agent echo (the framework's own cost per message, a reference row)",
    )
    parser.add_argument("--group", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for url in (args.bootstrap.split(",")[0], args.redis_url.split("//")[-1].split("/")[0]):
        host = url.rpartition(":")[0]
        if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
            parser.error(f"{url}: this benchmark only talks to 127.0.0.1")
    if args.echo:
        asyncio.run(echo_loop(args.bootstrap, args.echo[0], args.echo[1], args.group))
        return
    if args.faust_echo_of:
        faust_echo(args.bootstrap, *args.faust_echo_of, args.group, args.partitions, args.data_dir)
        return
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
