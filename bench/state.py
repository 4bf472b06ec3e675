"""Benchmark of the worker's state (issue 13): memory, recovery, hand-over and the changelog,
measured through the public topics and the worker process only. Not a test: it prints one table.

    python bench/state.py [--relationships 200000] [--soak-s 300] [--stores rocksdb,memory]
                          [--quick] [--no-two-workers] [--keep]

Everything runs on this box against the local stack (`eval "$(bash scripts/stack.sh up)"`), under
run-private topics, consumer groups, Redis keys and data directories, deleted at the end. For each
store (`NEXUS_TABLE_STORE`), one worker:

1. starts on empty state (idle RSS: the baseline);
2. loads `--relationships` through `batch` commands of 1,000 (load rate; RSS above the baseline
   per relationship; bytes of the `state` changelog topic per relationship);
3. is SIGKILLed and started again on its data directory (time from process start to the first ok
   answer of a fresh request; every namespace's relationship count checked); with `rocksdb://`,
   also SIGKILLed and started on a new data directory (a cold recovery from the changelog);
4. soaks: `--soak-rate` commands/s for `--soak-s` that do not grow the graph (create, then
   delete, the same few relationships); RSS from minute 1 to the end.

Then two workers (`--ha-store`, default `rocksdb://`): a flow of writes while a worker starts, a
worker stops on SIGTERM and starts again (results published twice for one request id), then
SIGKILL of one (time until each of its namespaces is answered by the other; state intact).

Every phase has a deadline; a phase that overruns it is reported as timed out, a NO.
RSS is VmRSS of /proc/<pid>/status, of the worker and its children.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import uuid
import zlib
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2
from harness import (  # bench/harness.py: what the benchmarks share
    LOG_DIR,
    MAX_BATCH,
    PRINCIPAL,
    REPO,
    REQUEST_ID,
    Driver,
    Process,
    Request,
    delete_everything,
    note,
    steady,
    worker_env,
)
from report import Report

from nexus_streams.streams.tables import current_key

MiB = 1024 * 1024
#: goals of issue 13
RSS_GOAL_B = {"rocksdb": 400, "memory": 1536}
SOAK_GOAL_B = 20 * MiB  # between minute 1 and minute 5
SOAK_WINDOW_S = 240.0
RESTART_GOAL_S = 5.0  # with local RocksDB state, at 200k relationships
COLD_GOAL_S = 30.0  # from the changelog alone, at 1M relationships
COLD_GOAL_AT = 1_000_000
FAILOVER_GOAL_S = 5.0
LOAD_GOAL = 20_000.0  # relationships/s
CHANGELOG_GOAL_X = 2.0  # changelog bytes per relationship / one relationship record
STORES = {"rocksdb": "rocksdb://", "memory": "memory://"}
#: the state table's key kinds (nexus_streams/streams/tables.py: Kind)
KINDS = {"r": "relationship records r|", "q": "remembered requests q|", "p": "applied offsets p|"}
KINDS |= {"s": "schemas s|", "x": "waiting executions x|", "j": "journal records j|"}


def rss_bytes(pid: int) -> int:
    """VmRSS of a process and its descendants (the analysis process pool, if started)."""
    total = 0
    for p in (pid, *descendants(pid)):
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rpartition(")")[2].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def mib(n: float) -> str:
    return f"{n / MiB:,.1f}"


def spread_namespaces(count: int, partitions: int) -> list[str]:
    """`count` namespace names spread evenly over the partitions (the producers' murmur2)."""
    per = -(-count // partitions)
    used: dict[int, int] = {}
    names: list[str] = []
    i = 0
    while len(names) < count:
        name = f"ns-{i:03d}"
        p = (murmur2(name.encode()) & 0x7FFFFFFF) % partitions
        if used.get(p, 0) < per:
            used[p] = used.get(p, 0) + 1
            names.append(name)
        i += 1
    return names


# --------------------------------------------------------------------------- the client


@dataclass
class Watched:
    """Every result of one request: how many, when the first came, whether they differ."""

    sent: float
    results: int = 0
    first: float | None = None
    #: when the second result came (the first duplicate)
    second: float | None = None
    raw: bytes = b""
    value: dict[str, Any] = field(default_factory=dict)
    differing: bool = False


class Tally(Driver):
    """The harness's driver, which also counts every result of the requests sent with `watch`."""

    def __init__(self, bootstrap: str, results_topic: str) -> None:
        super().__init__(bootstrap, results_topic, check_status=True)
        self.watched: dict[bytes, Watched] = {}

    def _one(self, record: Any, arrived: float) -> None:
        request_id = dict(record.headers or ()).get(REQUEST_ID)
        seen = self.watched.get(request_id) if request_id is not None else None
        if seen is not None:
            seen.results += 1
            if seen.first is None:
                seen.first, seen.raw, seen.value = arrived, record.value, json.loads(record.value)
            else:
                if seen.second is None:
                    seen.second = arrived
                if record.value != seen.raw:
                    seen.differing = True
        super()._one(record, arrived)

    async def watch(self, req: Request) -> Watched:
        seen = self.watched[req.request_id] = Watched(time.perf_counter())
        await self.producer.send(req.topic, req.value, key=req.key, headers=[(REQUEST_ID, req.request_id)])
        return seen


def request(topic: str, namespace: str, body: dict[str, Any], tag: str) -> Request:
    rid = f"{tag}-{uuid.uuid4().hex}"
    value = {"request_id": rid, "principal": PRINCIPAL, **body}
    return Request(topic, namespace.encode(), json.dumps(value).encode(), rid.encode())


def relationship(i: int) -> dict[str, Any]:
    """The i-th relationship of a namespace: about one new entity each, four kinds, no duplicate."""
    k, kind = divmod(i, 4)
    if kind == 0:
        return {"type": "owner", "source": f"user:{k}", "target": f"wallet:{k}"}
    if kind == 1:
        return {"type": "member", "source": f"user:{k}", "target": f"group:{k % 997}"}
    if kind == 2:
        return {"type": "linked", "source": f"user:{k}", "target": f"user:{k + 1}"}
    return {"type": "owner", "source": f"org:{k % 4999}", "target": f"wallet:{k}"}


class Run:
    """One isolated deployment: its topics, app id, workers and data directories."""

    def __init__(self, args: argparse.Namespace, run_id: str, label: str, store: str) -> None:
        self.args, self.label, self.store = args, label, store
        self.id = f"{run_id}-{label}"
        self.prefix = f"bench-{self.id}."
        self.app_id = f"nexus-bench-{self.id}"
        self.namespaces = spread_namespaces(args.namespaces, args.partitions)
        #: relationships each namespace holds by now, as acknowledged by ok results
        self.expected = dict.fromkeys(self.namespaces, 0)
        self.tally = Tally(args.bootstrap, f"{self.prefix}results")
        self.workers: list[Worker] = []
        #: seconds from process start to the first answer on empty state
        self.empty_start = 0.0
        #: idle RSS on empty state
        self.baseline = 0

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def start(self) -> None:
        from nexus_streams.settings import Settings
        from nexus_streams.streams.admin import ensure_topics

        await ensure_topics(
            Settings(
                kafka_bootstrap=self.args.bootstrap,
                app_id=self.app_id,
                topic_prefix=self.prefix,
                partitions=self.args.partitions,
            )
        )
        await self.tally.start()

    def worker(self, name: str) -> Worker:
        env = worker_env(self.args.bootstrap, self.args.redis_url, self.id, self.args.partitions)
        env["NEXUS_TABLE_STORE"] = self.store
        env["NEXUS_DATA_DIR"] = str(REPO / ".stack" / f"bench-data-{self.id}-{name}")
        env.update(dict(item.split("=", 1) for item in self.args.worker_env))
        worker = Worker(f"{self.id}-{name}", env)
        self.workers.append(worker)
        return worker

    def stats(self, namespace: str) -> Request:
        return request(self.topic("queries"), namespace, {"action": "stats"}, "stats")

    async def stop(self) -> None:
        for worker in self.workers:
            await asyncio.to_thread(worker.kill)
        await self.tally.stop()

    async def cleanup(self) -> None:
        for path in (REPO / ".stack").glob(f"bench-data-{self.id}-*"):
            shutil.rmtree(path, ignore_errors=True)
        await delete_everything(
            self.args.bootstrap, self.args.redis_url, (self.prefix, self.app_id), [self.app_id]
        )


class Worker:
    """`python -m nexus_streams worker` with a data directory of its own; started, SIGKILLed,
    SIGTERMed and started again by the benchmark."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name, self.env = name, env
        self.process: Process | None = None
        self.started = 0.0

    def start(self, fresh_data_dir: str | None = None) -> None:
        if fresh_data_dir is not None:
            self.env["NEXUS_DATA_DIR"] = str(REPO / ".stack" / fresh_data_dir)
        self.started = time.perf_counter()
        argv = [sys.executable, "-m", "nexus_streams", "worker"]
        self.process = Process(argv, self.env, self.log_path)

    @property
    def log_path(self) -> Path:
        return LOG_DIR / f"bench-state-{self.name}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.proc.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.proc.send_signal(signal.SIGKILL)
            self.process.proc.wait(30)

    def terminate(self) -> None:
        if self.process is not None:
            self.process.stop(timeout_s=60.0)


async def first_answer(
    run: Run, worker: Worker, deadline_s: float, every_s: float = 0.25
) -> tuple[float, dict[str, Any]]:
    """Seconds from `worker`'s process start to the first ok answer of fresh `stats` queries sent
    every `every_s` (an answer to an early one counts: it is the first the worker gave);
    TimeoutError after `deadline_s`, RuntimeError if the worker exits."""
    probes: list[Watched] = []
    end = time.perf_counter() + deadline_s
    next_send = 0.0
    since = worker.started

    def make() -> Request:
        return run.stats(run.namespaces[0])

    while time.perf_counter() < end:
        if not worker.alive():
            raise RuntimeError(f"the worker exited; see {worker.log_path}")
        for seen in probes:
            if seen.first is not None and seen.value.get("status") == "ok":
                return seen.first - since, seen.value
        if time.perf_counter() >= next_send:
            probes.append(await run.tally.watch(make()))
            next_send = time.perf_counter() + every_s
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no ok answer within {deadline_s:.0f} s")


async def counts(run: Run, deadline_s: float = 60.0) -> dict[str, int]:
    """Each namespace's relationship count, from a `stats` query."""
    sent = {ns: await run.tally.watch(run.stats(ns)) for ns in run.namespaces}
    end = time.perf_counter() + deadline_s
    while any(s.first is None for s in sent.values()) and time.perf_counter() < end:
        await asyncio.sleep(0.05)
    return {ns: int((s.value.get("output") or {}).get("relationships", -1)) for ns, s in sent.items()}


async def intact(run: Run) -> tuple[bool, str]:
    found = await counts(run)
    wrong = [
        f"{ns} {found[ns]} not {run.expected[ns]}" for ns in run.namespaces if found[ns] != run.expected[ns]
    ]
    total = sum(v for v in found.values() if v > 0)
    return not wrong, (f"{total:,} relationships" if not wrong else "; ".join(wrong[:3]))


async def ready(run: Run, worker: Worker, deadline_s: float) -> float:
    """Start `worker`; seconds from its process start to its first ok answer."""
    worker.start()
    seconds, _ = await first_answer(run, worker, deadline_s)
    return seconds


# --------------------------------------------------------------------------- phases


class PhaseTimedOut(Exception):
    pass


async def phase(report: Report, name: str, deadline_s: float, work: Awaitable[Any]) -> Any:
    """Run one phase under its deadline; a timeout or failure is a NO row (None returned)."""
    try:
        async with asyncio.timeout(deadline_s):
            return await work
    except TimeoutError:
        report.add(f"{name}: timed out", f"> {deadline_s:g} s", "within the deadline", False)
    except Exception as exc:  # the benchmark goes on with the next phase
        note(f"{name} failed: {exc!r}")
        report.add(f"{name}: failed", type(exc).__name__, str(exc)[:60], False)
    return None


async def load(run: Run, report: Report, count: int, deadline_s: float) -> float:
    """`count` relationships over the namespaces, `batch` commands of MAX_BATCH, as fast as the
    producer takes them; rate = relationships / (last result - first send)."""
    driver = run.tally
    per_ns = -(-count // len(run.namespaces))
    driver.new_phase()
    created = 0
    sizes: list[int] = []
    for start in range(0, per_ns, MAX_BATCH):
        for ns in run.namespaces:
            first = run.expected[ns]
            n = min(MAX_BATCH, per_ns - start, count - created)
            if n <= 0:
                break
            cmds = [{"action": "create", **relationship(first + j)} for j in range(n)]
            req = request(run.topic("relationships"), ns, {"action": "batch", "commands": cmds}, "load")
            sizes.append(len(req.value))
            await driver.send(req)
            run.expected[ns] += n
            created += n
    result = await driver.wait(deadline_s)
    rate = created / (result.last_receive - result.first_send) if result.received else 0.0
    note(f"loaded {created:,} relationships: {rate:,.0f}/s")
    report.add("relationships loaded", f"{created:,}")
    if result.lost or result.errors:
        report.add(
            "  load: lost / error results",
            f"{result.lost} / {result.errors}",
            "0",
            False,
        )
        for sample in result.error_samples[:2]:
            report.add(f"  e.g. {sample[:90]}", "")
        if result.lost:
            raise PhaseTimedOut(f"{result.lost} batches not answered within {deadline_s:.0f} s")
    report.add(
        f"batch load rate, batches of {MAX_BATCH:,} (relationships/s)",
        f"{rate:,.0f}",
        f">= {LOAD_GOAL:,.0f}",
        rate >= LOAD_GOAL,
    )
    report.add("  command bytes per relationship", f"{sum(sizes) / created:,.0f}")
    return rate


async def settled_rss(worker: Worker, seconds: float = 5.0) -> int:
    """RSS after `seconds` with no traffic."""
    await asyncio.sleep(seconds)
    return worker.rss()


def changelog_bytes(log_dir: Path, topic: str) -> int | None:
    """Bytes of a topic's log segments in the broker's log directory (None: not found)."""
    parts = [p for p in log_dir.glob(f"{topic}-*") if p.name.rpartition("-")[2].isdigit()]
    if not parts:
        return None
    return sum(seg.stat().st_size for part in parts for seg in part.glob("*.log"))


def deep_size(obj: Any) -> int:
    """Bytes of a decoded JSON value as Python objects, about what the memory store keeps: dict
    keys are not counted (the worker's are literals and field names, shared), nor None, bools and
    small ints (singletons)."""
    if obj is None or isinstance(obj, bool) or (isinstance(obj, int) and -5 <= obj <= 256):
        return 0
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(v) for v in obj.values())
    elif isinstance(obj, list):
        size += sum(deep_size(v) for v in obj)
    return size


def stored_value(raw: bytes) -> Any:
    """A state value as Python objects: JSON, or a compressed (`Z`) or framed (`R`) one as the
    worker writes remembered results and journal records."""
    if raw[:1] == b"Z":
        raw = zlib.decompress(raw[1:])
    try:
        return json.loads(raw)
    except ValueError:
        return raw  # a journal record: an index of lengths and the bytes it describes


@dataclass
class KindSample:
    records: int = 0
    stored: int = 0  # key + value bytes in the changelog
    heap: int = 0  # key and value as Python objects


async def sample_changelog(
    bootstrap: str, topic: str, limit: int, deadline_s: float = 30.0
) -> dict[str, KindSample]:
    """Up to `limit` records of the changelog from the start of every partition, by key kind."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    kinds: dict[str, KindSample] = {}
    try:
        await consumer._client.force_metadata_update()  # noqa: SLF001
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        done = {tp for tp in tps if ends[tp] == 0}
        seen = 0
        end = time.perf_counter() + deadline_s
        while seen < limit and len(done) < len(tps) and time.perf_counter() < end:
            for tp, records in (await consumer.getmany(timeout_ms=500, max_records=2000)).items():
                for record in records:
                    if record.offset + 1 >= ends[tp]:
                        done.add(tp)
                    key = current_key(record.key).decode()
                    value = None if record.value is None else stored_value(record.value)
                    sample = kinds.setdefault(key.partition("\x1f")[0], KindSample())
                    sample.records += 1
                    sample.stored += len(record.key) + len(record.value or b"")
                    sample.heap += deep_size(key) + deep_size(value)
                    seen += 1
    finally:
        await consumer.stop()
    return kinds


async def changelog_rows(run: Run, report: Report, relationships: int) -> None:
    topic = f"{run.app_id}-state-changelog"
    total = changelog_bytes(Path(run.args.kafka_log_dir), topic)
    kinds = await sample_changelog(run.args.bootstrap, topic, run.args.sample)
    records = kinds.get("r")
    if records is None or not records.records:
        report.add("state changelog: no relationship record found", "?", "", False)
        return
    record = records.stored / records.records
    report.add("  one relationship record as stored, key + value (B)", f"{record:,.0f}")
    if total is None:
        report.add(
            "state changelog bytes per relationship",
            "unknown",
            f"log dir {run.args.kafka_log_dir} has no {topic}",
            False,
        )
    else:
        per = total / relationships
        report.add("  state changelog topic (MiB)", mib(total))
        report.add(
            "state changelog bytes per relationship",
            f"{per:,.0f}",
            f"<= {CHANGELOG_GOAL_X:g}x record = {CHANGELOG_GOAL_X * record:,.0f}",
            per <= CHANGELOG_GOAL_X * record,
        )
    sampled = sum(k.records for k in kinds.values())
    report.add(
        f"  by kind of key, from {sampled:,} changelog records (B per relationship):", "changelog / heap"
    )
    for kind, sample in sorted(kinds.items(), key=lambda item: -item[1].stored):
        name = KINDS.get(kind, f"{kind}|")
        per_stored, per_heap = sample.stored / records.records, sample.heap / records.records
        report.add(f"    {name}, {sample.records:,} records", f"{per_stored:,.0f} / {per_heap:,.0f}")


async def restart(run: Run, report: Report, worker: Worker, cold: bool, deadline_s: float) -> None:
    """SIGKILL, start again (on a new data directory if `cold`); time to the first ok answer."""
    await asyncio.to_thread(worker.kill)
    fresh = f"bench-data-{run.id}-cold" if cold else None
    worker.start(fresh)
    seconds, _ = await first_answer(run, worker, deadline_s)
    relationships = sum(run.expected.values())
    if cold:
        # the goal is at 1M; at a smaller size, the empty worker's start plus the rest of the
        # goal in proportion
        goal = COLD_GOAL_S
        scaled = ""
        if relationships < COLD_GOAL_AT:
            goal = run.empty_start + (COLD_GOAL_S - run.empty_start) * relationships / COLD_GOAL_AT
            scaled = f" (goal scaled: empty start + ({COLD_GOAL_S:g} s - it) x {relationships:,}/1M)"
        report.add(
            f"cold recovery, new data dir, to first answer (s){scaled}",
            f"{seconds:.1f}",
            f"<= {goal:.1f}",
            seconds <= goal,
        )
    elif run.label == "rocksdb":
        report.add(
            "restart after SIGKILL, local state, to first answer (s)",
            f"{seconds:.1f}",
            f"<= {RESTART_GOAL_S:g} (at 200k)",
            seconds <= RESTART_GOAL_S,
        )
    else:
        report.add(
            "restart after SIGKILL, to first answer (s) (no local state: a cold recovery)", f"{seconds:.1f}"
        )
    ok, detail = await intact(run)
    report.add("  state intact (every namespace's count)", detail, "yes", ok)
    rss = await settled_rss(worker, 3.0)
    report.add("  RSS after recovery (MiB)", mib(rss))
    if run.baseline:
        report.add(
            "  RSS after recovery above the baseline per relationship (B)",
            f"{(rss - run.baseline) / relationships:,.0f}",
        )


async def soak(run: Run, report: Report, worker: Worker) -> None:
    """`--soak-rate` commands/s that do not grow the graph: create, then delete, the same five
    relationships, in one namespace; RSS every second."""
    args = run.args
    ns, topic = run.namespaces[0], run.topic("relationships")
    counter = iter(range(10**9))

    def make() -> Request:
        i = next(counter)
        rel = {"type": "owner", "source": f"soak:{(i // 2) % 5}", "target": "wallet:soak"}
        return request(topic, ns, {"action": "create" if i % 2 == 0 else "delete", **rel}, "soak")

    samples: list[tuple[float, int]] = []

    async def sample() -> None:
        t0 = time.perf_counter()
        while True:
            samples.append((time.perf_counter() - t0, worker.rss()))
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample())
    try:
        result = await steady(run.tally, make, args.soak_rate, args.soak_s)
    finally:
        sampler.cancel()
    begin = args.soak_s / 5 if args.soak_s < 300 else 60.0
    window = args.soak_s - begin
    at_begin = median(r for t, r in samples if abs(t - begin) <= 2.5)
    at_end = median(r for t, r in samples if args.soak_s - 5.0 <= t <= args.soak_s)
    growth = at_end - at_begin
    commands = args.soak_rate * window
    goal = SOAK_GOAL_B * window / SOAK_WINDOW_S
    scaled = "" if abs(window - SOAK_WINDOW_S) < 1 else f" (goal scaled to {window:.0f} s)"
    report.add(f"soak: {result.sent:,} commands at {args.soak_rate:g}/s over {args.soak_s:g} s", "")
    report.add(
        f"soak: RSS growth, {begin:.0f} s to {args.soak_s:.0f} s (MiB){scaled}",
        mib(growth),
        f"<= {goal / MiB:.1f}",
        growth <= goal,
    )
    report.add(
        "  RSS growth per command (B)",
        f"{growth / commands:,.0f}",
        f"<= {SOAK_GOAL_B / (SOAK_WINDOW_S * 300):.0f}",
    )
    report.add(f"  RSS at {begin:.0f} s / at the end (MiB)", f"{mib(at_begin)} / {mib(at_end)}")
    errors = result.errors + result.lost
    report.add("  soak errors (error results, lost)", str(errors), "0", errors == 0)
    for s in result.error_samples[:2]:
        report.add(f"  e.g. {s[:90]}", "")


async def bench_store(args: argparse.Namespace, run_id: str, report: Report, label: str) -> None:
    run = Run(args, run_id, label, STORES[label])
    n = args.relationships
    report.section(
        f"{STORES[label]}, one worker, {n:,} relationships in {len(run.namespaces)} namespaces, "
        f"{args.partitions} partitions"
    )
    try:
        await run.start()
        worker = run.worker("w1")
        seconds = await phase(report, "start", 120, ready(run, worker, 120))
        if seconds is None:
            return
        run.empty_start = seconds
        report.add("  start on empty state to first answer (s)", f"{seconds:.1f}")
        baseline = run.baseline = await settled_rss(worker)
        report.add("  idle RSS, the baseline (MiB)", mib(baseline))
        deadline = 60 + n / 1000  # a floor of 1,000 relationships/s
        if (
            await phase(report, "batch load", deadline + 30, load(run, report, n, deadline)) is None
            and not worker.alive()
        ):
            return
        loaded = await settled_rss(worker)
        per = (loaded - baseline) / n
        report.add("  RSS after the load (MiB)", mib(loaded))
        report.add(
            "RSS above the baseline per relationship (B)",
            f"{per:,.0f}",
            f"<= {RSS_GOAL_B[label]:,}",
            per <= RSS_GOAL_B[label],
        )
        await phase(report, "state changelog", 60, changelog_rows(run, report, n))
        recovery = 90 + n / 1000
        await phase(report, "restart", recovery + 60, restart(run, report, worker, False, recovery))
        if label == "rocksdb":
            await phase(report, "cold recovery", recovery + 60, restart(run, report, worker, True, recovery))
        if args.soak_s > 0 and worker.alive():
            await phase(report, "soak", args.soak_s + 90, soak(run, report, worker))
    finally:
        await run.stop()
        if not args.keep:
            await run.cleanup()


# --------------------------------------------------------------------------- two workers


async def rebalances(run: Run, report: Report, w1: Worker, w2: Worker) -> bool:
    """A flow of writes while w2 starts, w1 stops on SIGTERM, w1 starts again; results counted."""
    args = run.args
    stop = asyncio.Event()
    flow: list[tuple[str, Watched]] = []

    async def send_flow() -> None:
        i, t0 = 0, time.perf_counter()
        while not stop.is_set() and i < args.flow_rate * 600:
            ns = run.namespaces[i % len(run.namespaces)]
            body = {"action": "create", "type": "owner", "source": f"flow:{i}", "target": f"wallet:flow-{i}"}
            flow.append((ns, await run.tally.watch(request(run.topic("relationships"), ns, body, "flow"))))
            i += 1
            await asyncio.sleep(max(0.0, t0 + i / args.flow_rate - time.perf_counter()))

    sender = asyncio.create_task(send_flow())
    changes: list[tuple[float, str]] = []

    def change(what: str) -> None:
        note(what)
        changes.append((time.perf_counter(), what))

    try:
        await asyncio.sleep(3.0)
        change("a worker starts")
        w2.start()
        await asyncio.sleep(args.settle_s)
        change("a worker stops on SIGTERM")
        await asyncio.to_thread(w1.terminate)
        await asyncio.sleep(args.settle_s)
        change("a worker starts again")
        w1.start()
        await asyncio.sleep(args.settle_s)
    finally:
        stop.set()
        await sender
    end = time.perf_counter() + 90
    while any(s.first is None for _, s in flow) and time.perf_counter() < end:
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.0)  # any second result of the last ones
    for ns, seen in flow:
        if seen.value.get("status") == "ok":
            run.expected[ns] += 1
    twice = sum(1 for _, s in flow if s.results > 1)
    lost = sum(1 for _, s in flow if s.first is None)
    errors = sum(1 for _, s in flow if s.first is not None and s.value.get("status") != "ok")
    report.add(
        f"rebalances: {len(flow):,} writes at {args.flow_rate:g}/s; a worker starts, one stops "
        "(SIGTERM), it starts again",
        "",
    )
    report.add("writes with a second result (graceful rebalances)", f"{twice:,}", "0", twice == 0)
    report.add("  of them, with a differing result", str(sum(1 for _, s in flow if s.differing)))
    for i, (at, what) in enumerate(changes):
        until = changes[i + 1][0] if i + 1 < len(changes) else float("inf")
        during = sum(1 for _, s in flow if s.second is not None and at <= s.second < until)
        report.add(f"  of them, the second result after '{what}'", f"{during:,}")
    report.add("  writes unanswered / error results", f"{lost} / {errors}", "0", lost + errors == 0)
    return True


async def failover(run: Run, report: Report, victim: Worker) -> None:
    """SIGKILL `victim`; seconds until every namespace has answered a fresh query again."""
    answered: dict[str, float] = {}
    probes: dict[str, list[Watched]] = {ns: [] for ns in run.namespaces}
    await asyncio.to_thread(victim.kill)
    killed = time.perf_counter()
    deadline = killed + 120
    while len(answered) < len(run.namespaces) and time.perf_counter() < deadline:
        for ns in run.namespaces:
            if ns in answered:
                continue
            first = [s.first for s in probes[ns] if s.first is not None and s.value.get("status") == "ok"]
            if first:
                answered[ns] = min(first) - killed
            elif not probes[ns] or time.perf_counter() - probes[ns][-1].sent >= 0.25:
                probes[ns].append(await run.tally.watch(run.stats(ns)))
        await asyncio.sleep(0.02)
    if len(answered) < len(run.namespaces):
        raise TimeoutError(f"{len(run.namespaces) - len(answered)} namespaces unanswered after 120 s")
    worst = max(answered.values())
    waited = sum(1 for s in answered.values() if s > 1.0)
    report.add(
        "fail-over: SIGKILL of one worker, its namespaces answered (s)",
        f"{worst:.1f}",
        f"<= {FAILOVER_GOAL_S:g}",
        worst <= FAILOVER_GOAL_S,
    )
    report.add("  namespaces that waited more than 1 s", f"{waited} of {len(answered)}")
    ok, detail = await intact(run)
    report.add("  state intact after the fail-over", detail, "yes", ok)


def session_timeout(args: argparse.Namespace) -> str:
    """The workers' NEXUS_SESSION_TIMEOUT_S, as --worker-env sets it or the default."""
    given = dict(item.split("=", 1) for item in args.worker_env or [])
    value = given.get("NEXUS_SESSION_TIMEOUT_S")
    return f"{value} s" if value else "10 s (default)"


async def bench_two_workers(args: argparse.Namespace, run_id: str, report: Report) -> None:
    run = Run(args, run_id, "ha", STORES[args.ha_store])
    report.section(
        f"two workers, {STORES[args.ha_store]}, {args.ha_relationships:,} relationships in "
        f"{len(run.namespaces)} namespaces, session timeout {session_timeout(args)}"
    )
    try:
        await run.start()
        w1, w2 = run.worker("w1"), run.worker("w2")
        if await phase(report, "start", 120, ready(run, w1, 120)) is None:
            return
        n = args.ha_relationships
        if await phase(report, "load", 120 + n / 1000, load_quietly(run, n)) is None:
            return
        report.add("  loaded by batch commands, with the first worker alone", f"{n:,}")
        settle = 3 * args.settle_s + 3 + 60 + 120
        if await phase(report, "rebalances", settle, rebalances(run, report, w1, w2)) is None:
            return
        await asyncio.sleep(args.settle_s)  # the last rebalance done
        await phase(report, "fail-over", 200, failover(run, report, w2))
    finally:
        await run.stop()
        if not args.keep:
            await run.cleanup()


async def load_quietly(run: Run, count: int) -> float:
    return await load(run, Report(), count, 60 + count / 1000)


# --------------------------------------------------------------------------- the run


async def main_async(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    run_id = uuid.uuid4().hex[:10]
    report = Report()
    note(f"run {run_id}: topics bench-{run_id}-*, logs in {LOG_DIR}/bench-state-{run_id}-*.log")
    if args.worker_env:
        report.section(f"workers' environment also: {' '.join(args.worker_env)}")
    if args.quick:
        report.section(
            "--quick: small and short, goals scaled where the row says so: NOT the goals' measurement"
        )
    for label in args.stores:
        await bench_store(args, run_id, report, label)
    if args.two_workers:
        await bench_two_workers(args, run_id, report)
    print()
    report.print()
    print("\nall goals met" if not misses(report) else f"\ngoals missed: {'; '.join(misses(report))}")
    return 0


def misses(report: Report) -> list[str]:
    """The rows that missed their goal, each after the first word of its section (the store)."""
    found, section = [], ""
    for row in report.rows:
        if row.name.startswith("-- "):
            section = row.name[3:].split(",")[0].split(":")[0]
        elif row.ok is False:
            found.append(f"{section}: {row.name.strip()}")
    return found


def iter_stores(text: str) -> list[str]:
    stores = [s.strip().removesuffix("://") for s in text.split(",") if s.strip()]
    unknown = [s for s in stores if s not in STORES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown store {unknown}; choose from {', '.join(STORES)}")
    return stores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--relationships", type=int, help="loaded per store (default 200,000; --quick 20,000)"
    )
    parser.add_argument("--soak-s", type=float, help="soak length, 0 skips it (default 300; --quick 30)")
    parser.add_argument("--soak-rate", type=float, default=300.0, help="soak commands/s")
    parser.add_argument("--stores", type=iter_stores, default=list(STORES), help="rocksdb,memory")
    parser.add_argument("--partitions", type=int, default=8, help="NEXUS_PARTITIONS (the default 8)")
    parser.add_argument("--namespaces", type=int, default=8, help="spread evenly over the partitions")
    parser.add_argument("--no-two-workers", dest="two_workers", action="store_false")
    parser.add_argument("--ha-store", choices=list(STORES), default="rocksdb")
    parser.add_argument(
        "--ha-relationships", type=int, help="two workers' graph (default 20,000; --quick 5,000)"
    )
    parser.add_argument("--flow-rate", type=float, default=50.0, help="writes/s during the rebalances")
    parser.add_argument(
        "--settle-s", type=float, help="time after each membership change (default 20; --quick 12)"
    )
    parser.add_argument("--sample", type=int, default=20_000, help="changelog records read for the breakdown")
    parser.add_argument(
        "--kafka-log-dir",
        default=str(Path(os.environ.get("NEXUS_STACK_DIR", REPO / ".stack")) / "kafka" / "data"),
        help="the broker's log.dirs (changelog bytes); the local stack's by default",
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra environment variable of every worker, e.g. NEXUS_GC_FREEZE=false",
    )
    parser.add_argument("--quick", action="store_true", help="a few minutes: small sizes, short phases")
    parser.add_argument("--keep", action="store_true", help="keep the run's topics, keys and data dirs")
    parser.add_argument("--bootstrap", default=os.environ.get("NEXUS_KAFKA_BOOTSTRAP", "127.0.0.1:19092"))
    parser.add_argument("--redis-url", default=os.environ.get("NEXUS_REDIS_URL", "redis://127.0.0.1:16379/0"))
    args = parser.parse_args()
    quick = args.quick
    args.relationships = args.relationships or (20_000 if quick else 200_000)
    args.soak_s = args.soak_s if args.soak_s is not None else (30.0 if quick else 300.0)
    args.ha_relationships = args.ha_relationships or (5_000 if quick else 20_000)
    args.settle_s = args.settle_s or (12.0 if quick else 20.0)
    for url in (args.bootstrap.split(",")[0], args.redis_url.split("//")[-1].split("/")[0]):
        host = url.rpartition(":")[0]
        if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
            parser.error(f"{url}: this benchmark only talks to 127.0.0.1")
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
