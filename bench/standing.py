"""Standing queries: what they add to the cost of one committed change (issue 16 part 2).

One namespace of `--relationships` (100k) relationships, `--subscriptions` (1,000) standing
queries on it (60% find_path max_depth 3, 20% detect_cycles over parent, 20% neighbors
count_over 5), then `--changes` creates of random relationships. The same changes run, in the same
run and on the same graph, through a service without subscriptions (the baseline), alternating in
blocks so that a slow spell of the machine falls on both. Measured in-process on
`NamespaceService.handle` (the namespace actor's logic, where the evaluations run, on the event
loop): the broker's and the write path's costs are the same with or without subscriptions
(bench/commands.py measures those).

    python bench/standing.py [--relationships 100000] [--subscriptions 1000] [--changes 4000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

from harness import percentile  # bench/harness.py
from report import Report  # bench/report.py

from nexus_streams.domain.graph import MemoryRecords
from nexus_streams.domain.relationships import Relationship, RelationType
from nexus_streams.replies import Received
from nexus_streams.service import NamespaceService
from nexus_streams.topics import QUERIES, RELATIONSHIPS

NS = "bench"
BLOCK = 200


class Service:
    def __init__(self) -> None:
        self.records = MemoryRecords()
        self.service = NamespaceService(Log(), lambda namespace: self.records)
        self.offsets = {QUERIES.name: 0, RELATIONSHIPS.name: 0}

    def handle(self, spec: Any, body: dict[str, Any]) -> Any:
        offset = self.offsets[spec.name]
        self.offsets[spec.name] = offset + 1
        msg = Received(spec, f"nexus.{spec.name}", 0, offset, NS.encode(), json.dumps(body).encode())
        replies = self.service.handle(msg)
        for reply in replies:
            self.records.apply(reply.changes)
        return replies


class Log:
    def get(self, namespace: str, request_id: str) -> None:
        return None


def graph_edges(m: int, seed: int) -> list[tuple[str, RelationType, str]]:
    rng = random.Random(seed)
    entities = m // 2
    edges: set[tuple[str, RelationType, str]] = set()
    while len(edges) < m:
        a, b = rng.randrange(entities), rng.randrange(entities)
        if a == b:
            continue
        type_ = (
            RelationType.PARENT
            if rng.random() < 0.1
            else rng.choice((RelationType.MEMBER, RelationType.OWNER))
        )
        edges.add((f"e:{a}", type_, f"e:{b}"))
    return sorted(edges)


def load(service: Service, edges: list[tuple[str, RelationType, str]]) -> None:
    graph = service.service.graph(NS)
    for source, type_, target in edges:
        rel = Relationship(NS, source, type_, target)
        graph.load(rel.key)
        service.records.data[rel.key] = rel
    service.service.note_partition(NS, 0)


def subscriptions(n: int, entities: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed + 1)
    out = []
    for i in range(n):
        kind = i % 10
        a, b = f"e:{rng.randrange(entities)}", f"e:{rng.randrange(entities)}"
        if kind < 6:
            query = {"action": "find_path", "source": a, "target": b, "max_depth": 3}
        elif kind < 8:
            query = {"action": "detect_cycles", "entity": a, "types": ["parent"]}
        else:
            query = {"action": "neighbors", "entity": a, "count_over": 5}
        out.append(
            {
                "request_id": f"s{i}",
                "principal": "bench",
                "action": "subscribe",
                "subscription_id": f"s{i}",
                "query": query,
            }
        )
    return out


def changes(n: int, entities: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed + 2)
    out = []
    for i in range(n):
        a, b = rng.randrange(entities), rng.randrange(entities)
        type_ = "parent" if rng.random() < 0.1 else "member"
        out.append(
            {
                "request_id": f"c{i}",
                "principal": "bench",
                "action": "create",
                "type": type_,
                "source": f"x:{i}" if a == b else f"e:{a}",
                "target": f"e:{b}",
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relationships", type=int, default=100_000)
    parser.add_argument("--subscriptions", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    entities = args.relationships // 2
    edges = graph_edges(args.relationships, args.seed)
    baseline, standing = Service(), Service()
    print(f"loading {len(edges):,} relationships twice ...", file=sys.stderr, flush=True)
    load(baseline, edges)
    load(standing, edges)
    subscribed = [
        standing.handle(QUERIES, body)[0].result
        for body in subscriptions(args.subscriptions, entities, args.seed)
    ]
    refused = [r for r in subscribed if r is None or r.status != "ok"]
    todo = changes(args.changes, entities, args.seed)
    times: dict[str, list[float]] = {"baseline": [], "standing": []}
    evaluations: list[int] = []
    events = 0
    for start in range(0, len(todo), BLOCK):
        block = todo[start : start + BLOCK]
        for name, service in (("baseline", baseline), ("standing", standing))[
            :: 1 if start // BLOCK % 2 else -1
        ]:
            for body in block:
                t0 = time.perf_counter()
                replies = service.handle(RELATIONSHIPS, body)
                times[name].append(time.perf_counter() - t0)
                if name == "standing":
                    reply = replies[0]
                    evaluations.append(reply.standing.evaluations if reply.standing else 0)
                    events += sum(1 for o in reply.outbound if o.headers.get("nexus-subscription-id"))
    base, stand = sorted(times["baseline"]), sorted(times["standing"])
    mean_base = sum(base) / len(base)
    mean_stand = sum(stand) / len(stand)
    added_us = (mean_stand - mean_base) * 1e6
    report = Report()
    report.section(f"{args.subscriptions} subscriptions, {len(edges):,} relationships, {len(todo)} creates")
    report.add("subscriptions refused at subscribe", str(len(refused)))
    watched = standing.service.subscriptions.watches[NS]
    report.add("entities watched (all subscriptions)", f"{watched.watched_entities():,}")
    report.add("wide / stale subscriptions", f"{len(watched.wide)} / {len(watched.stale)}")
    report.add("evaluations per change (mean)", f"{sum(evaluations) / len(evaluations):.2f}")
    report.add("answer changes (events)", str(events))
    report.add(
        "per change, no subscriptions: p50 / p99",
        f"{percentile(base, 0.5) * 1e3:.0f} / {percentile(base, 0.99) * 1e3:.0f} us",
    )
    report.add(
        "per change, with subscriptions: p50 / p99",
        f"{percentile(stand, 0.5) * 1e3:.0f} / {percentile(stand, 0.99) * 1e3:.0f} us",
    )
    report.add("added per change (mean)", f"{added_us:.1f} us", "<= 100 us", added_us <= 100)
    p99_added = (percentile(stand, 0.99) - percentile(base, 0.99)) * 1e3
    report.add("added per change (p99)", f"{p99_added:.0f} us", "<= 1000 us", p99_added <= 1000)
    print()
    report.print()
    misses = [r.name for r in report.rows if r.ok is False]
    print("\nall goals met" if not misses else f"\ngoals missed: {', '.join(misses)}")


if __name__ == "__main__":
    main()
