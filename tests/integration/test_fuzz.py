"""Issue 12's fuzz test: a few thousand hypothesis-generated bad messages of every kind (see
tests/integration/fuzzing.py), interleaved with valid requests, sent through the real broker to a
real worker. Every message must be accounted for, every valid request answered ok, the worker
alive and quiet (no Traceback), and the committed offsets at the end of every input partition.

Accounting. A message whose value has a usable request id (a string of 1-128 characters) and a
usable key is accounted for by a result under that request id; any other one by a dead letter
whose `nexus-source-topic/partition/offset` headers name it. Request ids repeat (the fuzzer
duplicates them on purpose, and a duplicate gets the same result again): results are counted per
request id, and a request id sent n times needs n results (a request id that is not usable is
no one's: its messages need dead letters). Deep nesting and numbers beyond a double may end
either way (fuzzing.Outcome.EITHER). A dead letter keeps the original key, and the original
value when it is within the 1 MiB the service accepts; a message that expects a result is
dead-lettered only as an `internal_error`.

The run's input topics accept values up to 2 MiB, as a deployment's may: the service's own
1 MiB limit must then refuse what is over it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.conftest import PARTITIONS, WorkerProcess, own_worker
from tests.integration.fuzzing import MAX_VALUE_BYTES, Message, Outcome, generate, render
from tests.integration.wire import Record, Wire

INBOUND = ("relationships", "queries", "executions", "patterns")
#: the run's input topics take values this large (the broker's default is about 1 MiB)
TOPIC_MAX_MESSAGE_BYTES = 2 * 1024 * 1024
#: hypothesis examples x specs per example: about 2,900 bad messages
EXAMPLES, PER_EXAMPLE = 250, (8, 16)
#: one valid request after every this many fuzzed ones
VALID_EVERY = 9
#: give up when nothing arrives for this long, or at the deadline
STALL_S, DEADLINE_S = 30.0, 150.0


@dataclass
class Valid:
    """A valid request: its result must be ok, and the same for each copy."""

    topic: str
    namespace: str
    payload: dict[str, Any]
    #: a find_path's create (its index among the valid requests): `min_offset` is its offset
    after: int | None = None
    #: a copy of an earlier valid request, sent again unchanged
    again: bool = False


@dataclass
class Ledger:
    """What came back for the messages sent, kept up to date as records arrive."""

    messages: list[Message]
    prefix: str
    by_source: dict[tuple[str, int, int], Message] = field(default_factory=dict)
    deadletters: dict[int, list[Record]] = field(default_factory=lambda: defaultdict(list))
    results: defaultdict[str, list[Record]] = field(default_factory=lambda: defaultdict(list))
    seen: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        for m in self.messages:
            self.by_source[(self.prefix + m.topic, m.partition, m.offset)] = m

    def update(self, wire: Wire) -> None:
        for topic in ("results", "deadletter"):
            records = wire.records[topic]
            for record in records[self.seen[topic] :]:
                if topic == "results":
                    rid = record.headers.get("nexus-request-id")
                    if rid is not None:
                        self.results[rid].append(record)
                    continue
                h = record.headers
                try:
                    source = (
                        h["nexus-source-topic"],
                        int(h["nexus-source-partition"]),
                        int(h["nexus-source-offset"]),
                    )
                except (KeyError, ValueError):
                    continue
                named = self.by_source.get(source)
                if named is not None:
                    self.deadletters[named.index].append(record)
            self.seen[topic] = len(records)

    def unaccounted(self) -> list[Message]:
        """Messages with neither their dead letter nor their result (for a request id that
        should have n results and has k < n, its last n - k messages)."""
        missing = [
            m for m in self.messages if m.outcome is Outcome.DEADLETTER and not self.deadletters[m.index]
        ]
        needing: defaultdict[str, list[Message]] = defaultdict(list)
        for m in self.messages:
            if m.request_id is None:
                continue
            if m.outcome is Outcome.RESULT or (m.outcome is Outcome.EITHER and not self.deadletters[m.index]):
                needing[m.request_id].append(m)
        for rid, waiting in needing.items():
            short = len(waiting) - len(self.results[rid])
            if short > 0:
                missing += waiting[-short:]
        return sorted(missing, key=lambda m: m.index)

    def outbound(self) -> int:
        return sum(self.seen.values())


def describe(m: Message) -> str:
    value = m.value or b""
    return (
        f"#{m.index} {m.topic}[{m.partition}]@{m.offset} key={m.key[:40] if m.key else m.key!r} "
        f"{len(value)} bytes {value[:80]!r} expects {m.outcome.value} rid={m.request_id} {m.labels}"
    )


async def accept_large_values(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    prefix + name,
                    {"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)},
                )
                for name in INBOUND
            ]
        )
    finally:
        await admin.close()


async def lagging_partitions(bootstrap: str, env: dict[str, str]) -> list[str]:
    """Input partitions whose committed offset is short of their end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=env["NEXUS_APP_ID"], enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(env["NEXUS_TOPIC_PREFIX"] + name, p) for name in INBOUND for p in range(PARTITIONS)
        ]
        ends = await consumer.end_offsets(tps)
        lagging = []
        for tp in tps:
            committed = await consumer.committed(tp)
            if ends[tp] > 0 and (committed or 0) < ends[tp]:
                lagging.append(f"{tp.topic}[{tp.partition}] committed={committed} end={ends[tp]}")
        return lagging
    finally:
        await consumer.stop()


def valid_requests(run_id: str, count: int) -> list[Valid]:
    """Creates; find_path queries over what the create before made (read-your-writes: the query's
    `min_offset` is the create's offset); executions of user_onboarding; and now and then the
    latest create or execution sent again (a query is answered afresh, so not repeated)."""
    out: list[Valid] = []
    for n in range(count):
        head = {"request_id": f"ok-{run_id}-{n}", "principal": "alice"}
        namespace = f"ok{n % 4}-{run_id}"
        if n % 3 == 0:
            rel = {"type": "owner", "source": f"user:v{n}", "target": f"wallet:v{n}"}
            out.append(Valid("relationships", namespace, {**head, "action": "create", **rel}))
        elif n % 3 == 1:
            create = out[-1]
            query = {"action": "find_path", "source": create.payload["source"], "max_depth": 2}
            query["target"] = create.payload["target"]
            out.append(Valid("queries", create.namespace, {**head, **query}, after=len(out) - 1))
        else:
            execution = {
                "pattern_id": "user_onboarding",
                "input": {"source": f"user:o{n}", "target": f"w:o{n}"},
            }
            out.append(Valid("executions", namespace, {**head, **execution}))
        if n % 17 == 16:
            latest = out[-1] if out[-1].topic != "queries" else out[-2]
            out.append(Valid(latest.topic, latest.namespace, latest.payload, again=True))
    return out


async def send_all(bootstrap: str, prefix: str, fuzzed: list[Message], valid: list[Valid]) -> list[Message]:
    """Send the fuzzed messages with a valid request after every VALID_EVERY of them; fill in
    where each landed; return the valid requests as messages."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=TOPIC_MAX_MESSAGE_BYTES + 4096
    )
    await producer.start()
    try:
        sent: list[tuple[Message, asyncio.Future[Any]]] = []
        valid_sent: list[Message] = []
        deliveries: list[asyncio.Future[Any]] = []
        plan = iter(valid)
        for n, m in enumerate(fuzzed):
            sent.append((m, await producer.send(prefix + m.topic, m.value, key=m.key)))
            v = next(plan, None) if n % VALID_EVERY == VALID_EVERY - 1 else None
            if v is None:
                continue
            payload = dict(v.payload)
            if v.after is not None:
                payload["min_offset"] = (await deliveries[v.after]).offset
            vm = Message(
                len(fuzzed) + len(valid_sent),
                v.topic,
                v.namespace.encode(),
                json.dumps(payload).encode(),
                Outcome.RESULT,
                payload["request_id"],
                labels=("valid", "again" if v.again else "first"),
            )
            delivery = await producer.send(prefix + vm.topic, vm.value, key=vm.key)
            deliveries.append(delivery)
            sent.append((vm, delivery))
            valid_sent.append(vm)
        for m, delivery in sent:
            meta = await delivery
            m.partition, m.offset = meta.partition, meta.offset
        return valid_sent
    finally:
        await producer.stop()


async def wait_for_accounting(wire: Wire, ledger: Ledger) -> list[Message]:
    """Wait until every message is accounted for, nothing arrived for STALL_S, or DEADLINE_S;
    return what is still unaccounted for."""
    deadline = time.monotonic() + DEADLINE_S
    last_progress, last_count = time.monotonic(), -1
    while True:
        ledger.update(wire)
        left = ledger.unaccounted()
        now = time.monotonic()
        if not left or now > deadline or now - last_progress > STALL_S:
            return left
        if ledger.outbound() != last_count:
            last_count, last_progress = ledger.outbound(), now
        # wake when records arrive, or after a second to judge the stall
        await wire.wait_until(
            lambda seen=last_count: len(wire.records["results"]) + len(wire.records["deadletter"]) > seen, 1.0
        )


def deadletter_problems(ledger: Ledger) -> list[str]:
    """A dead letter keeps the original key and value and gives a reason (and an allowed code);
    a well-formed request is dead-lettered only as an internal error."""
    problems = []
    for m in ledger.messages:
        for dl in ledger.deadletters[m.index]:
            code = dl.headers.get("nexus-error-code")
            if dl.key != m.key:
                problems.append(f"dead letter of {describe(m)} has key {dl.key!r}")
            if len(m.value or b"") <= MAX_VALUE_BYTES and (dl.value or b"") != (m.value or b""):
                problems.append(
                    f"dead letter of {describe(m)} changed the value ({len(dl.value or b'')} bytes)"
                )
            if not dl.headers.get("nexus-error-reason"):
                problems.append(f"dead letter of {describe(m)} gives no reason")
            if m.codes and code not in m.codes:
                problems.append(
                    f"dead letter of {describe(m)} has code {code}, expected one of {sorted(m.codes)}"
                )
            if m.outcome is Outcome.RESULT and code != "internal_error":
                problems.append(f"well-formed request dead-lettered with code {code}: {describe(m)}")
    return problems


async def commit_problems(bootstrap: str, env: dict[str, str]) -> list[str]:
    """Every message handled means every input offset committed; Faust commits on a timer (every
    few seconds), so poll the broker until it has or 30 s passed."""
    deadline = time.monotonic() + 30
    while True:
        lagging = await lagging_partitions(bootstrap, env)
        if not lagging or time.monotonic() > deadline:
            return ["committed offsets short of the end: " + "; ".join(lagging)] if lagging else []
        await asyncio.sleep(1.0)  # polling: there is no event to wait for


def consumer_dump(worker: WorkerProcess) -> str:
    """What the worker says of its acknowledgements and commits (kill -USR1), and its rebalances:
    where a commit stopped, and why."""
    before = len(worker.log_text())
    worker.dump_tasks()
    log = worker.log_text()
    prefix = worker.env["NEXUS_TOPIC_PREFIX"]
    state = [
        line
        for line in log[before:].splitlines()
        if line.startswith(("consumer:", "agent ", "producer:", f"  {prefix}."))
    ]
    events = [
        line
        for line in log[:before].splitlines()
        if any(word in line for word in ("rebalanc", "Rebalanc", "revoked", "hand-over", "stalled", "commit"))
    ]
    return (
        "worker state:\n"
        + ("\n".join(state) or "(no dump)")
        + "\nits rebalances and commits:\n"
        + "\n".join(events[-30:])
    )


async def test_fuzz__every_message_accounted_for_and_the_worker_unharmed(
    kafka_bootstrap: str, redis_url: str
) -> None:
    started = time.monotonic()
    # a valid query waits for its min_offset as long as the test waits for everything
    settings = {"NEXUS_MIN_OFFSET_WAIT_S": str(DEADLINE_S)}
    async with own_worker(kafka_bootstrap, redis_url, "fuzz", settings=settings) as (wire, worker, run_id):
        prefix = worker.env["NEXUS_TOPIC_PREFIX"]
        await accept_large_values(kafka_bootstrap, prefix)
        fuzzed = render(generate(EXAMPLES, PER_EXAMPLE), run_id, [f"fz{k}-{run_id}" for k in range(4)])
        counts = Counter(m.outcome for m in fuzzed)
        # the generator keeps its teeth: every outcome comes up often, and values over the limit
        assert min(counts[Outcome.RESULT], counts[Outcome.DEADLETTER]) > 500, counts
        assert counts[Outcome.EITHER] > 30, counts
        assert sum(1 for m in fuzzed if len(m.value or b"") > MAX_VALUE_BYTES) >= 5

        valid = valid_requests(run_id, len(fuzzed) // VALID_EVERY)
        valid_sent = await send_all(kafka_bootstrap, prefix, fuzzed, valid)
        sent_s = time.monotonic() - started
        ledger = Ledger(fuzzed + valid_sent, prefix)
        left = await wait_for_accounting(wire, ledger)

        problems: list[str] = []
        if left:
            by_label = Counter(label for m in left for label in m.labels[:1] + m.labels[3:4])
            problems.append(
                f"{len(left)} of {len(ledger.messages)} messages unaccounted for after "
                f"{time.monotonic() - started:.0f}s (by kind/encoding: {dict(by_label.most_common(12))}); "
                "first ones:\n  " + "\n  ".join(describe(m) for m in left[:15])
            )
        for rid in {v.payload["request_id"] for v in valid}:
            copies = [r.json() for r in ledger.results[rid]]
            if any(c["status"] != "ok" for c in copies) or any(c != copies[0] for c in copies):
                problems.append(f"valid request {rid} answered {copies[:2]}")
        problems += deadletter_problems(ledger)
        if not worker.alive():
            problems.append(f"the worker exited with {worker.proc.returncode if worker.proc else None}")
        log = worker.log_text()
        if "Traceback" in log:
            at = log.index("Traceback")
            problems.append(f"the worker logged a Traceback:\n{log[max(0, at - 300) : at + 1500]}")
        if not left and (lagging := await commit_problems(kafka_bootstrap, worker.env)):
            problems += [*lagging, consumer_dump(worker)]
        assert not problems, (
            f"{len(ledger.messages)} messages ({len(valid_sent)} valid) sent in {sent_s:.0f}s, "
            f"{time.monotonic() - started:.0f}s in all; worker log {worker.log_path}\n"
            + "\n".join(problems[:40])
        )
