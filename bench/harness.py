"""What bench/executions.py and bench/commands.py share: the load generator and its phases, CPU
meters of the server, the broker and the client, the echo loops they are compared with, the worker
process, the report's rows and the run's isolation and cleanup.

Run as a script, this module is one of the echo loops (`--echo` or `--faust-echo`): the
benchmarks start it as a child process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
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
MAX_BATCH = 1000  # NEXUS_MAX_BATCH default
PRINCIPAL = "bench"
#: the rate of the low-load latency phase (issue 14: p99 <= 15 ms at 100/s)
LOW_RATE = 100.0
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


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


@dataclass(frozen=True)
class Cpu:
    """CPU of a phase, each in % of one core over its span."""

    server: float = float("nan")  #: the process under test (echo or worker)
    broker: float = float("nan")  #: the Kafka broker's JVM
    client: float = float("nan")  #: this load generator
    rest: float = float("nan")  #: everything else on the box (Redis, other people's work)


class CpuMeter:
    """CPU time the server under test, the broker, this client and the rest of the box spend
    during a phase."""

    def __init__(self, pid: int, broker_pid: int) -> None:
        self.pid, self.broker_pid = pid, broker_pid
        self.begin = (
            cpu_seconds(pid),
            cpu_seconds(broker_pid),
            time.process_time(),
            box_cpu_seconds(),
            time.perf_counter(),
        )

    def shares(self) -> Cpu:
        server, broker, client, box, wall = self.begin
        span = time.perf_counter() - wall
        server_s = cpu_seconds(self.pid) - server
        broker_s = cpu_seconds(self.broker_pid) - broker
        client_s = time.process_time() - client
        rest_s = box_cpu_seconds() - box - server_s - broker_s - client_s
        return Cpu(*(100 * s / span for s in (server_s, broker_s, client_s, max(0.0, rest_s))))


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def stack_dir() -> Path:
    """Where scripts/stack.sh keeps its pid files (NEXUS_STACK_DIR, as the script reads it)."""
    return Path(os.environ.get("NEXUS_STACK_DIR", REPO / ".stack"))


def broker_pid(given: int | None, bootstrap: str) -> int:
    """The broker's JVM: `given`, else the pid in the stack's kafka.pid; it must run Kafka and
    listen on the bootstrap port (another engineer's broker would be measured otherwise)."""
    source = "--broker-pid"
    if given is None:
        pid_file = stack_dir() / "kafka.pid"
        source = str(pid_file)
        try:
            given = int(pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"no broker pid ({exc}): start the stack or pass --broker-pid") from None
    try:
        cmdline = Path(f"/proc/{given}/cmdline").read_bytes()
    except OSError:
        raise SystemExit(f"broker pid {given} (from {source}) does not run") from None
    if b"kafka.Kafka" not in cmdline:
        raise SystemExit(f"pid {given} (from {source}) is not a Kafka broker")
    port = int(bootstrap.split(",")[0].rpartition(":")[2])
    if not listens_on(given, port):
        raise SystemExit(f"broker pid {given} (from {source}) does not listen on {port}: pass --broker-pid")
    return given


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds a socket listening on TCP `port` (Linux /proc)."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            for row in list(rows)[1:]:
                cols = row.split()
                if cols[3] == "0A" and int(cols[1].rpartition(":")[2], 16) == port:  # 0A: LISTEN
                    listening.add(f"socket:[{cols[9]}]")
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(fd) in listening:
                return True
    return False


# --------------------------------------------------------------------------- the load


@dataclass(frozen=True)
class Request:
    topic: str
    key: bytes
    value: bytes
    request_id: bytes


def request(topic: str, namespace: str, body: dict[str, Any], prefix: str = "b") -> Request:
    """`body` with a fresh request id and the bench's principal, keyed by `namespace`."""
    request_id = f"{prefix}-{uuid.uuid4().hex}"
    payload = {"request_id": request_id, "principal": PRINCIPAL, **body}
    return Request(topic, namespace.encode(), json.dumps(payload).encode(), request_id.encode())


#: makes the next request of a workload for the given input topic
Workload = Callable[[str], Callable[[], Request]]


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
    cpu: Cpu = Cpu()

    def throughput(self) -> float:
        span = self.last_receive - self.first_send
        return self.received / span if span > 0 else float("nan")

    def enqueue_rate(self) -> float:
        """How fast the client got the phase's requests into its producer."""
        span = self.last_send - self.first_send
        return self.sent / span if span > 0 else float("nan")


class Driver:
    """One producer and one reader of the output topic; results matched by request id."""

    def __init__(self, bootstrap: str, output_topic: str, check_status: bool) -> None:
        self.server_pid = 0  # the process under test, for CPU shares
        self.broker_pid = 0
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
        self._cpu = CpuMeter(self.server_pid, self.broker_pid) if self.server_pid else None
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


async def _no_preparation(count: int) -> None:
    return None


@dataclass
class Phases:
    """The phases of one workload, in the order they ran."""

    warm: Phase  #: the calibration burst
    top: Phase  #: the maximum burst
    half: Phase  #: steady at half of the maximum
    low: Phase | None = None  #: steady at LOW_RATE
    extras: list[tuple[float, Phase]] = field(default_factory=list)  #: --also-rate (rate, phase)

    def all(self) -> list[Phase]:
        low = [self.low] if self.low else []
        return [self.warm, self.top, self.half, *low, *(phase for _, phase in self.extras)]


async def max_then_steady(
    args: argparse.Namespace,
    label: str,
    driver: Driver,
    make: Callable[[], Request],
    calibration: int,
    prepare: Callable[[int], Awaitable[None]] = _no_preparation,
    worker: bool = False,
) -> Phases:
    """Calibration burst, maximum burst, steady at half the maximum, then for a `worker` steady
    at LOW_RATE and at each --also-rate, with latencies by leg (from the results' processed_at)
    every --sample-every. `prepare(n)` runs before a phase that sends n requests (and before
    the maximum burst, for it and the half-rate phase): for workloads that need state made
    ahead, such as the pairs of financial_transaction."""
    seconds = args.seconds

    async def steady_phase(rate: float, message: str) -> Phase:
        await prepare(int(rate * seconds) + 100)
        note(f"{label}: {message}")
        return await steady(driver, make, rate, seconds, args.sample_every if worker else 0)

    await prepare(calibration)
    note(f"{label}: calibration burst of {calibration:,}")
    warm = await burst(driver, make, calibration, timeout_s=120)
    estimate = warm.throughput() if warm.received else 100.0
    count = int(min(max(estimate * args.max_seconds, calibration), 200_000))
    # for the maximum burst and the steady phase at about half of it, with a margin
    await prepare(int(count * 1.3 + estimate * seconds * 0.8) + 100)
    note(f"{label}: ~{estimate:,.0f}/s; maximum over a burst of {count:,}")
    top = await burst(driver, make, count, timeout_s=60 + 3 * count / max(estimate, 1))
    rate = top.throughput() / 2
    half = await steady_phase(rate, f"{top.throughput():,.0f}/s; steady {rate:,.0f}/s for {seconds:g} s")
    phases = Phases(warm, top, half)
    if worker:
        phases.low = await steady_phase(LOW_RATE, f"steady {LOW_RATE:,.0f}/s for {seconds:g} s")
        for extra in args.also_rate:
            message = f"steady {extra:,.0f}/s for {seconds:g} s (--also-rate)"
            phases.extras.append((extra, await steady_phase(extra, message)))
    return phases


# --------------------------------------------------------------------------- processes


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


def code_version(tree: Path) -> str:
    """The commit of the worker's tree and whether its package has uncommitted changes."""
    if tree != REPO:
        return f"{tree} (not the repository's working tree)"
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "nexus_streams"], capture_output=True, text=True)
    changed = [line[3:] for line in dirty.stdout.splitlines()]
    return f"{head.stdout.strip()}" + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


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


# --------------------------------------------------------------------------- the echo loops


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


# --------------------------------------------------------------------------- the report's rows


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
    """p50 and p99 at half rate (with issue 14's goals if `goals`), and the phase's worst."""
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


def cpu_rows(
    report: Report, server: str, phase: Phase, rate: float, goal: bool = False, per: str = "message"
) -> None:
    """Where the phase's CPU went, and the server's and the broker's CPU per message (`rate` of
    them a second); with `goal`, issue 14's: the broker spends at most what the worker does."""
    cpu = phase.cpu
    report.add(
        f"  CPU, % of one core: {server} / broker / this client / rest of the box",
        " / ".join(f"{x:.0f}" for x in (cpu.server, cpu.broker, cpu.client, cpu.rest)),
    )
    server_us, broker_us = cpu.server * 10_000 / rate, cpu.broker * 10_000 / rate
    report.add(f"  {server} CPU per {per} (us)", f"{server_us:,.0f}")
    name = f"  broker CPU per {per} (us){', goal at the maximum' if goal else ''}"
    report.add(name, f"{broker_us:,.0f}", *((f"<= {server}'s", broker_us <= server_us) if goal else ()))


def phase_rows(
    report: Report, label: str, unit: str, phases: Phases, seconds: float, echo_max: float, ratio_goal: float
) -> None:
    """The rows of a workload on the worker: its maximum and ratio to the echo (with the goal),
    CPU, latency at half of the maximum and at LOW_RATE, and by leg."""
    top, half = phases.top, phases.half
    throughput = top.throughput()
    report.add(f"{label} max throughput ({unit}/s)", f"{throughput:,.0f}")
    ratio = throughput / echo_max
    report.add(f"{label} / echo max throughput", f"{ratio:.3f}x", f">= {ratio_goal:g}x", ratio >= ratio_goal)
    report.add(f"  burst of {top.sent:,}, generator enqueue rate (msgs/s)", f"{top.enqueue_rate():,.0f}")
    cpu_rows(report, "worker", top, throughput, goal=True)
    rate = half.sent / seconds
    report.add(f"  steady rate ({unit}/s)", f"{rate:,.0f}")
    latency_rows(report, label, half, goals=True)
    cpu_rows(report, "worker", half, rate)
    leg_rows(report, half, f"  latency by leg, {len(half.legs)} sampled results, p50 / p99 (ms, ms clocks)")
    if phases.low is not None:
        low = phases.low
        p99 = percentile(low.latencies, 0.99)
        report.add(f"{label} p50 latency at {LOW_RATE:g}/s (ms)", f"{percentile(low.latencies, 0.5):.1f}")
        report.add(f"{label} p99 latency at {LOW_RATE:g}/s (ms)", f"{p99:.1f}", "<= 15", p99 <= 15)
        leg_rows(report, low)
    for extra, phase in phases.extras:
        report.add(
            f"  at {extra:,.0f}/s (--also-rate): p50 / p99 latency (ms)", latency_pair_s(phase.latencies)
        )
        leg_rows(report, phase)


def error_rows(report: Report, label: str, phases: list[Phase]) -> None:
    """Errors of a workload's phases (goal: none), and a few of them."""
    errors = sum(p.errors + p.lost for p in phases)
    report.add(f"{label} errors (error results, lost, failed sends)", str(errors), "0", errors == 0)
    for sample in [sample for p in phases for sample in p.error_samples][:5]:
        report.add(f"  e.g. {sample[:90]}", "")


# --------------------------------------------------------------------------- a run


@dataclass
class Bench:
    """One run of a benchmark: its id (in every topic, group and key it creates), options, report."""

    args: argparse.Namespace
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    report: Report = field(default_factory=Report)

    @property
    def prefix(self) -> str:
        """The run's topic prefix (the worker's public topics and the echo loops' topics)."""
        return f"bench-{self.run_id}."

    def driver(self, output_topic: str, server: Process, check_status: bool) -> Driver:
        driver = Driver(self.args.bootstrap, output_topic, check_status)
        driver.server_pid = server.proc.pid
        driver.broker_pid = self.args.broker_pid
        return driver

    async def echo(self, workload: Workload, load: str, kind: EchoKind = AIOKAFKA_ECHO) -> float:
        """Run an echo loop (`kind`) as a child process, measure it with the requests of
        `workload` (described by `load`), report it; return its maximum throughput."""
        args = self.args
        slug = kind.flag.strip("-")
        prefix = f"{self.prefix}{slug}."
        source, sink = f"{prefix}in", f"{prefix}out"
        await create_topics(args.bootstrap, [source, sink], args.partitions)
        argv = [sys.executable, __file__, kind.flag, source, sink]
        argv += ["--group", f"nexus-bench-{self.run_id}-{slug}", "--bootstrap", args.bootstrap]
        argv += ["--partitions", str(args.partitions)]
        argv += ["--data-dir", str(REPO / ".stack" / f"bench-data-{self.run_id}" / slug)]
        log = LOG_DIR / f"bench-{self.run_id}-{slug}.log"
        echo = Process(argv, {**os.environ, "PYTHONUNBUFFERED": "1"}, log)
        driver = self.driver(sink, echo, check_status=False)
        make = workload(source)
        try:
            await driver.start()
            await wait_until_answering(driver, echo, make, lambda _: True)
            phases = await max_then_steady(args, kind.label, driver, make, args.echo_calibration)
        finally:
            try:
                await driver.stop()
            finally:
                echo.stop()
        label, report = kind.label, self.report
        top, half = phases.top, phases.half
        report.section(kind.title.format(partitions=args.partitions))
        report.add(f"  the messages: {load}", "")
        report.add(f"{label} max throughput (msgs/s)", f"{top.throughput():,.0f}")
        report.add(f"  burst of {top.sent:,}, generator enqueue rate (msgs/s)", f"{top.enqueue_rate():,.0f}")
        cpu_rows(report, f"{label} process", top, top.throughput())
        latency_rows(report, label, half, goals=False)
        cpu_rows(report, f"{label} process", half, half.sent / args.seconds)
        report.add(f"  {label} lost at half rate", str(half.lost + top.lost))
        return top.throughput()

    async def echoes(self, workload: Workload, load: str) -> tuple[float, float | None]:
        """The aiokafka echo's maximum, and the Faust echo's unless --no-faust-echo."""
        echo_max = await self.echo(workload, load)
        if not self.args.faust_echo:
            return echo_max, None
        faust_max = await self.echo(workload, load, FAUST_ECHO)
        ceiling = f"{faust_max / echo_max:.3f}x"
        self.report.add("faust echo / echo max throughput (the framework's ceiling)", ceiling)
        return echo_max, faust_max

    @contextlib.asynccontextmanager
    async def worker(self) -> AsyncIterator[tuple[Driver, Process]]:
        """A worker process (under cProfile with --profile) on the run's topics, once it answers a
        relationship command, with a driver reading its results."""
        from nexus_streams.settings import Settings
        from nexus_streams.streams.admin import ensure_topics

        args = self.args
        await ensure_topics(
            Settings(
                kafka_bootstrap=args.bootstrap,
                app_id=f"nexus-bench-{self.run_id}",
                topic_prefix=self.prefix,
                partitions=args.partitions,
            )
        )
        env = worker_env(args.bootstrap, args.redis_url, self.run_id, args.partitions)
        env.update(dict(item.split("=", 1) for item in args.worker_env))
        argv = [sys.executable, "-m", "nexus_streams", "worker"]
        if args.profile:
            argv[1:1] = ["-m", "cProfile", "-o", str(Path(args.profile).resolve())]
        tree = Path(args.worker_tree).resolve() if args.worker_tree else REPO
        proc = Process(argv, env, LOG_DIR / f"bench-{self.run_id}-worker.log", cwd=tree)
        driver = self.driver(f"{self.prefix}results", proc, check_status=True)
        relationships = f"{self.prefix}relationships"

        def probe() -> Request:
            rid = uuid.uuid4().hex
            body = {"action": "create", "type": "linked", "source": f"probe:{rid}", "target": "probe:target"}
            return request(relationships, "readiness", body, prefix="ready")

        try:
            await driver.start()
            started = time.perf_counter()
            await wait_until_answering(driver, proc, probe, lambda _: True)
            note(f"worker (pid {proc.proc.pid}) answers after {time.perf_counter() - started:.1f} s")
            yield driver, proc
        finally:
            try:
                await driver.stop()
            finally:
                proc.stop()

    def worker_rows(self) -> None:
        """Which code the worker ran, and how."""
        args = self.args
        tree = Path(args.worker_tree).resolve() if args.worker_tree else REPO
        self.report.add(f"  worker code: {code_version(tree)}", "")
        if args.worker_env:
            self.report.add(f"  worker environment also: {' '.join(args.worker_env)}", "")
        if args.profile:
            self.report.add(f"(worker ran under cProfile: not a measurement; profile in {args.profile})", "")

    async def cleanup(self) -> None:
        """Delete the run's topics, consumer groups, Redis keys and Faust data (unless --keep)."""
        if self.args.keep:
            return
        shutil.rmtree(REPO / ".stack" / f"bench-data-{self.run_id}", ignore_errors=True)
        prefixes = (self.prefix, f"nexus-bench-{self.run_id}")
        groups = [f"nexus-bench-{self.run_id}{suffix}" for suffix in ("", "-echo", "-faust-echo")]
        try:
            await delete_everything(self.args.bootstrap, self.args.redis_url, prefixes, groups)
        except Exception as exc:  # do not hide the error of the run itself
            note(f"cleanup failed ({exc!r}): topics {prefixes[0]}*, {prefixes[1]}* may remain")


def add_arguments(parser: argparse.ArgumentParser, unit: str) -> None:
    """The options both benchmarks take; `unit` names what their requests are."""
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each steady-rate phase")
    parser.add_argument("--max-seconds", type=float, default=8.0, help="about how long a maximum burst lasts")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test in under a minute, not a measurement: --seconds 2 --max-seconds 2, smaller "
        "calibration bursts, --no-faust-echo",
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--echo-calibration", type=int, default=5000, help="first echo burst (count)")
    parser.add_argument("--sample-every", type=int, default=10, help="decompose every n-th latency")
    parser.add_argument(
        "--also-rate",
        type=float,
        action="append",
        default=[],
        metavar="RATE",
        help=f"after the {LOW_RATE:g}/s phase, one more steady phase at RATE {unit}/s (repeatable): "
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
    parser.add_argument(
        "--broker-pid",
        type=int,
        help="the broker's process, for its CPU (default: the pid in the stack's kafka.pid)",
    )
    parser.add_argument(
        "--no-faust-echo",
        dest="faust_echo",
        action="store_false",
        help="skip the Faust agent echo (the framework's own cost per message, a reference row)",
    )


def parse(parser: argparse.ArgumentParser, quick: dict[str, Any]) -> argparse.Namespace:
    """The arguments, with `quick`'s values (and the common quick ones) under --quick; only
    127.0.0.1 is allowed, and the broker's process must be found."""
    args = parser.parse_args()
    for url in (args.bootstrap.split(",")[0], args.redis_url.split("//")[-1].split("/")[0]):
        if url.rpartition(":")[0] not in LOCAL_HOSTS:
            parser.error(f"{url}: this benchmark only talks to 127.0.0.1")
    if args.quick:
        overrides = {"seconds": 2.0, "max_seconds": 2.0, "echo_calibration": 2000, "faust_echo": False}
        for name, value in (overrides | quick).items():
            setattr(args, name, value)
    args.broker_pid = broker_pid(args.broker_pid, args.bootstrap)
    return args


def run(args: argparse.Namespace, body: Callable[[Bench], Awaitable[None]]) -> None:
    """Run `body` on a new Bench, clean up after it, print its table and the goals missed."""

    async def main_async() -> None:
        # SIGTERM cancels the run like Ctrl-C does, so the cleanup below still runs
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        bench = Bench(args)
        note(f"run {bench.run_id}: topics {bench.prefix}*, logs in {LOG_DIR}/bench-{bench.run_id}-*.log")
        try:
            await body(bench)
        finally:
            await bench.cleanup()
        print()
        bench.report.print()
        misses = [r.name.strip() for r in bench.report.rows if r.ok is False]
        print("\nall goals met" if not misses else f"\ngoals missed: {', '.join(misses)}")

    asyncio.run(main_async())


def main() -> None:
    """An echo loop, as the benchmarks start it."""
    parser = argparse.ArgumentParser(description="an echo loop of bench/executions.py and bench/commands.py")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--echo", nargs=2, metavar=("SOURCE", "SINK"), help="plain aiokafka")
    kind.add_argument("--faust-echo", nargs=2, metavar=("SOURCE", "SINK"), help="a Faust agent")
    parser.add_argument("--group", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    if args.bootstrap.rpartition(":")[0] not in LOCAL_HOSTS:
        parser.error(f"{args.bootstrap}: the echo loops only talk to 127.0.0.1")
    if args.echo:
        asyncio.run(echo_loop(args.bootstrap, args.echo[0], args.echo[1], args.group))
    else:
        source, sink = args.faust_echo
        faust_echo(args.bootstrap, source, sink, args.group, args.partitions, args.data_dir)


if __name__ == "__main__":
    main()
