"""Metrics (nexus_streams/metrics.py) from real service replies, graph sizes, consumer lag, Redis
attempts and Faust's sensor hooks; and the dashboards and rules only use metrics that exist."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from nexus_streams.domain.errors import NotFound
from nexus_streams.domain.graph import MemoryRecords
from nexus_streams.executions import ExecutionStats
from nexus_streams.messages import Result
from nexus_streams.metrics import OTHER_NAMESPACES, FaustSensor, Metrics
from nexus_streams.service import NamespaceService, Received, Reply
from nexus_streams.store.redis import RedisPatternStore, RetryConfig, _observed
from nexus_streams.topics import EVENTS, EXECUTIONS, PATTERNS, QUERIES, RELATIONSHIPS, RESULTS, TopicSpec

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((REPO / "prometheus" / "rules").glob("*.yml"))
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == name
    }


class Service:
    """NamespaceService as the actor drives it, with its replies fed to Metrics.observe."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.results: dict[tuple[str, str], Result] = {}
        self.records: dict[str, MemoryRecords] = {}
        self.offset = 0
        self.service = NamespaceService(self, lambda ns: self.records.setdefault(ns, MemoryRecords()))

    # the request log
    def get(self, namespace: str, request_id: str) -> Result | None:
        return self.results.get((namespace, request_id))

    def send(
        self, value: dict[str, Any] | bytes, spec: TopicSpec = RELATIONSHIPS, ns: str = "ns"
    ) -> list[Reply]:
        self.offset += 1
        raw = value if isinstance(value, bytes) else json.dumps({"principal": "p", **value}).encode()
        replies = self.service.handle(Received(spec, f"nexus.{spec.name}", 0, self.offset, ns.encode(), raw))
        done = []
        for reply in replies:
            if reply.deferred is not None:
                done += reply.deferred.finish(reply.deferred.work(), None)
            else:
                done.append(reply)
        for reply in done:
            for change in reply.changes:
                records = self.records.setdefault(reply.namespace, MemoryRecords())
                records.apply([change])
            assert reply.message is not None
            self.metrics.observe(reply.message.spec, reply, 0.003)
        return done


def create(source: str, target: str, type_: str = "member", **fields: Any) -> dict[str, Any]:
    return {
        "request_id": f"r-{source}-{target}",
        "action": "create",
        "type": type_,
        "source": source,
        "target": target,
        **fields,
    }


def test_observe__counts_requests_errors_latency_changes_and_deadletters() -> None:
    m = Metrics()
    s = Service(m)
    s.send(create("u:1", "g:1"))
    commands = [{k: v for k, v in create(f"u:{i}", "g:1").items() if k != "request_id"} for i in (2, 3)]
    (batch,) = s.send({"request_id": "b", "action": "batch", "commands": commands})
    assert batch.result is not None and batch.result.status == "ok", batch.result
    s.send({"request_id": "d", "action": "delete", "type": "member", "source": "u:3", "target": "g:1"})
    s.send({**create("u:1", "g:1"), "request_id": "dup"})
    s.send(b"not json")
    s.send({"action": "create"})  # no request_id: an error result and a dead letter

    assert value(m, "nexus_requests_total", topic="relationships", action="create", status="ok") == 1
    assert value(m, "nexus_requests_total", topic="relationships", action="create", status="error") == 2
    assert value(m, "nexus_errors_total", topic="relationships", code="duplicate_relationship") == 1
    assert value(m, "nexus_request_duration_seconds_count", topic="relationships", action="batch") == 1
    assert value(m, "nexus_graph_changes_total", change="put") == 3
    assert value(m, "nexus_graph_changes_total", change="remove") == 1
    assert value(m, "nexus_deadletters_total", topic="relationships", reason="undecodable") == 1
    assert value(m, "nexus_deadletters_total", topic="relationships", reason="validation_error") == 1


def test_observe__snapshot_age_of_analysis_answers() -> None:
    m = Metrics()
    s = Service(m)
    s.send(create("u:1", "g:1"))
    (reply,) = s.send({"request_id": "a", "action": "analyze", "max_age_ms": 0}, spec=QUERIES)
    assert reply.result is not None and reply.result.status == "ok", reply.result
    s.send({"request_id": "c", "action": "detect_cycles"}, spec=QUERIES)
    assert value(m, "nexus_graph_snapshot_age_seconds_count", action="analyze") == 1
    assert value(m, "nexus_graph_snapshot_age_seconds_count", action="detect_cycles") == 1
    assert value(m, "nexus_requests_total", topic="queries", action="analyze", status="ok") == 1


def test_observe__unknown_actions_and_codes_are_bounded() -> None:
    m = Metrics()
    result = Result.model_validate(
        {
            "request_id": "x",
            "namespace": "ns",
            "action": "anything-a-client-sends",
            "status": "error",
            "error": {"code": "made_up", "message": "?"},
            "processed_at": NOW,
        }
    )
    m.observe(RELATIONSHIPS, Reply(None, result=result), 0.001)
    assert value(m, "nexus_requests_total", topic="relationships", action="other", status="error") == 1
    assert value(m, "nexus_errors_total", topic="relationships", code="other") == 1


def test_observe__step_outcomes_of_execution_results() -> None:
    m = Metrics()
    result = Result.model_validate(
        {
            "request_id": "x",
            "namespace": "ns",
            "pattern_id": "p1",
            "action": "execute",
            "status": "error",
            "error": {"code": "path_not_found", "message": "no path"},
            "output": {"steps": {"check": {"status": "failed"}, "create": {"status": "skipped"}}},
            "processed_at": NOW,
        }
    )
    m.observe(EXECUTIONS, Reply(None, result=result), 0.001)
    assert value(m, "nexus_pattern_steps_total", pattern="p1", status="failed") == 1
    assert value(m, "nexus_pattern_steps_total", pattern="p1", status="skipped") == 1


def test_observe_execution__executions_retries_failures_rollbacks() -> None:
    m = Metrics()
    stats = ExecutionStats("p1", 2, "error", 12.5, "timeout", "slow", "e1", 1, 2, "all")
    m.observe_execution(stats)
    m.observe_execution(ExecutionStats("p1", 2, "ok", 1.0, None, None, "e2", 0, 0, "all"))
    assert value(m, "nexus_pattern_executions_total", pattern="p1", version="2", status="error") == 1
    assert value(m, "nexus_pattern_executions_total", pattern="p1", version="2", status="ok") == 1
    assert value(m, "nexus_pattern_step_failures_total", pattern="p1") == 1
    assert value(m, "nexus_pattern_step_retries_total", pattern="p1") == 2
    assert value(m, "nexus_pattern_rollbacks_total", pattern="p1", policy="all") == 1
    assert value(m, "nexus_pattern_execution_duration_seconds_count", pattern="p1") == 2


def test_failure_counters__start_at_zero_for_the_alerts() -> None:
    m = Metrics()
    assert value(m, "nexus_deadletters_total", topic="relationships", reason="undecodable") == 0
    assert value(m, "nexus_deadletters_total", topic="patterns", reason="undecodable") == 0
    assert value(m, "nexus_errors_total", topic="executions", code="store_unavailable") == 0
    assert value(m, "nexus_access_denied_total", reason="bad_signature") == 0
    assert value(m, "nexus_access_denied_total", reason="missing_scope") == 0


@pytest.mark.parametrize(
    ("code", "details", "reason"),
    [
        ("unauthenticated", {"reason": "expired"}, "expired"),
        ("forbidden", {"reason": "missing_scope", "missing_scope": "queries:read:ns"}, "missing_scope"),
        ("forbidden", {}, "not_permitted"),
        ("rate_limited", {"reason": "rate_limited", "retry_after_s": 1.0}, "rate_limited"),
        ("unauthenticated", {"reason": "a-client-made-this-up"}, "other"),
    ],
)
def test_observe__refusals_count_by_reason(code: str, details: dict[str, Any], reason: str) -> None:
    m = Metrics()
    result = Result.model_validate(
        {
            "request_id": "x",
            "namespace": "ns",
            "action": "create",
            "status": "error",
            "error": {"code": code, "message": "no", "details": details},
            "processed_at": NOW,
        }
    )
    m.observe(RELATIONSHIPS, Reply(None, result=result), 0.001)
    assert value(m, "nexus_access_denied_total", reason=reason) == 1
    assert value(m, "nexus_errors_total", topic="relationships", code=code) == 1


def test_observe__other_errors_are_no_refusal() -> None:
    m = Metrics()
    result = Result.model_validate(
        {
            "request_id": "x",
            "namespace": "ns",
            "action": "get",
            "status": "error",
            "error": {"code": "not_found", "message": "no"},
            "processed_at": NOW,
        }
    )
    m.observe(QUERIES, Reply(None, result=result), 0.001)
    assert sum(samples(m, "nexus_access_denied_total").values()) == 0


# -- graphs ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_observe_graphs__top_namespaces_by_name_the_rest_as_other() -> None:
    clock = Clock()
    m = Metrics(top_namespaces=2, graph_refresh_s=5, monotonic=clock)
    s = Service(m)
    for i in range(3):
        s.send(create(f"u:{i}", "g:1"), ns="big")
    s.send(create("u:1", "w:1", "owner"), ns="big")
    for i in range(2):
        s.send(create(f"u:{i}", "g:1"), ns="mid")
    s.send(create("u:1", "u:2", "linked"), ns="small")
    s.send(create("u:1", "u:3", "linked"), ns="tiny")
    m.observe_graphs(s.service.graphs)

    assert value(m, "nexus_graph_relationships", namespace="big", type="member") == 3
    assert value(m, "nexus_graph_relationships", namespace="big", type="owner") == 1
    assert value(m, "nexus_graph_relationships", namespace="mid", type="member") == 2
    assert value(m, "nexus_graph_relationships", namespace=OTHER_NAMESPACES, type="linked") == 2
    assert value(m, "nexus_graph_relationships", namespace="small", type="linked") is None
    assert value(m, "nexus_graph_entities", namespace="big") == 5
    assert value(m, "nexus_graph_entities", namespace=OTHER_NAMESPACES) == 4
    assert value(m, "nexus_graph_namespaces") == 4
    assert sum(samples(m, "nexus_graph_relationships").values()) == 8

    # "small" grows past "mid": mid moves into _other, within the refresh interval nothing changes
    for i in range(5):
        s.send(create(f"x:{i}", "g:9"), ns="small")
    m.observe_graphs(s.service.graphs)
    assert value(m, "nexus_graph_relationships", namespace="small", type="member") is None
    clock.now = 5.0
    m.observe_graphs(s.service.graphs)
    assert value(m, "nexus_graph_relationships", namespace="small", type="member") == 5
    assert value(m, "nexus_graph_relationships", namespace="mid", type="member") is None
    assert value(m, "nexus_graph_entities", namespace="mid") is None
    assert sum(samples(m, "nexus_graph_relationships").values()) == 13


def test_observe_graphs__no_other_series_when_all_fit() -> None:
    m = Metrics()
    s = Service(m)
    s.send(create("u:1", "g:1"))
    m.observe_graphs(s.service.graphs, force=True)
    assert value(m, "nexus_graph_entities", namespace="ns") == 2
    assert value(m, "nexus_graph_entities", namespace=OTHER_NAMESPACES) is None


# -- consumer lag --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


class FakeConsumer:
    def __init__(self, highwaters: dict[TP, int | None], positions: dict[TP, int]) -> None:
        self.highwaters = highwaters
        self.positions = positions
        self.fail = False

    def assignment(self) -> set[TP]:
        if self.fail:
            raise RuntimeError("consumer not started")
        return set(self.highwaters)

    def highwater(self, tp: TP) -> int | None:
        return self.highwaters[tp]

    async def position(self, tp: TP) -> int | None:
        return self.positions.get(tp)


class FakeMonitor:
    def __init__(self, committed: dict[TP, int]) -> None:
        self.tp_committed_offsets = committed


TOPICS = {f"nexus.{s.name}": s for s in (RELATIONSHIPS, QUERIES, PATTERNS, RESULTS, EVENTS)}


async def test_observe_consumer__lag_from_committed_offsets_or_position() -> None:
    m = Metrics()
    rel0, rel1, q0, p0 = (
        TP("nexus.relationships", 0),
        TP("nexus.relationships", 1),
        TP("nexus.queries", 0),
        TP("nexus.patterns", 0),
    )
    changelog = TP("nexus-streams-relationships-changelog", 0)
    consumer = FakeConsumer({rel0: 120, rel1: 50, q0: 7, p0: None, changelog: 999}, {rel1: 45, q0: 7})
    await m.observe_consumer(consumer, FakeMonitor({rel0: 100}), TOPICS)

    assert value(m, "nexus_consumer_lag", topic="relationships", partition="0") == 20
    assert value(m, "nexus_consumer_lag", topic="relationships", partition="1") == 5
    assert value(m, "nexus_consumer_lag", topic="queries", partition="0") == 0
    assert value(m, "nexus_consumer_lag", topic="patterns", partition="0") is None  # nothing fetched yet
    assert len(samples(m, "nexus_consumer_lag")) == 3  # the changelog is not an input topic
    assert value(m, "nexus_consumer_assigned_partitions", topic="relationships") == 2
    assert value(m, "nexus_consumer_assigned_partitions", topic="executions") is None  # not in TOPICS
    assert value(m, "nexus_consumer_assigned_partitions", topic="results") is None  # not an input

    # rel1 revoked: its series goes; a failing consumer leaves the gauges as they are
    del consumer.highwaters[rel1]
    await m.observe_consumer(consumer, FakeMonitor({rel0: 110}), TOPICS)
    assert value(m, "nexus_consumer_lag", topic="relationships", partition="1") is None
    assert value(m, "nexus_consumer_lag", topic="relationships", partition="0") == 10
    consumer.fail = True
    await m.observe_consumer(consumer, FakeMonitor({}), TOPICS)
    assert value(m, "nexus_consumer_lag", topic="relationships", partition="0") == 10


# -- dead letters waiting ----------------------------------------------------------------------


def test_observe_deadletters_waiting__series_follow_the_count() -> None:
    m = Metrics()
    assert samples(m, "nexus_deadletters_waiting") == {}  # nothing until the topic was read
    m.observe_deadletters_waiting({("relationships", "undecodable"): 2, ("queries", "invalid_key"): 1})
    assert value(m, "nexus_deadletters_waiting", topic="relationships", reason="undecodable") == 2
    m.observe_deadletters_waiting({("relationships", "undecodable"): 0})
    assert samples(m, "nexus_deadletters_waiting") == {
        (("reason", "undecodable"), ("topic", "relationships")): 0.0
    }


# -- Redis -------------------------------------------------------------------------------------


def test_observe_redis__duration_per_attempt_and_errors_by_kind() -> None:
    m = Metrics()
    m.observe_redis("get", 0.002, None)
    m.observe_redis("get", 0.5, RedisConnectionError("refused"))
    m.observe_redis("record_execution", 0.001, ResponseError("WRONGTYPE"))
    m.observe_redis("made_up", 0.001, KeyError("x"))
    assert value(m, "nexus_redis_operation_duration_seconds_count", operation="get") == 2
    assert value(m, "nexus_redis_errors_total", operation="get", error="connection") == 1
    assert value(m, "nexus_redis_errors_total", operation="record_execution", error="response") == 1
    assert value(m, "nexus_redis_errors_total", operation="other", error="other") == 1


async def test_store_observer__told_about_every_attempt() -> None:
    seen: list[tuple[str, BaseException | None]] = []

    def observer(operation: str, seconds: float, error: BaseException | None) -> None:
        assert seconds >= 0
        seen.append((operation, error))

    async def ok() -> int:
        return 1

    async def missing() -> int:
        raise NotFound("no such pattern")

    async def broken() -> int:
        raise ResponseError("WRONGTYPE")

    assert await _observed("get", ok, observer)() == 1
    with pytest.raises(NotFound):
        await _observed("get", missing, observer)()
    with pytest.raises(ResponseError):
        await _observed("get", broken, observer)()
    assert [(op, type(e).__name__ if e else None) for op, e in seen] == [
        ("get", None),
        ("get", None),
        ("get", "ResponseError"),
    ]


async def test_store_observer__retries_of_an_unreachable_redis_each_counted() -> None:
    from nexus_streams.domain.errors import StoreUnavailable

    m = Metrics()
    store = RedisPatternStore.from_url(
        "redis://127.0.0.1:1/0", socket_timeout_s=1, retry=RetryConfig(3, 0, 0)
    )
    store.observer = m.observe_redis
    try:
        with pytest.raises(StoreUnavailable):
            await store.get("anything")
    finally:
        await store.close()
    assert value(m, "nexus_redis_errors_total", operation="get", error="connection") == 3
    assert value(m, "nexus_redis_operation_duration_seconds_count", operation="get") == 3


# -- Faust sensor --------------------------------------------------------------------------------


def test_faust_sensor__rebalances_commits_sends() -> None:
    m = Metrics()
    sensor = m.faust_sensor()
    assert isinstance(sensor, FaustSensor)
    state = sensor.on_rebalance_start(None)
    sensor.on_rebalance_end(None, state)
    sensor.on_commit_completed(None, sensor.on_commit_initiated(None))
    sensor.on_send_completed(None, sensor.on_send_initiated(None, "t", None, 1, 2), None)
    sensor.on_send_error(None, RuntimeError("x"), None)
    sensor.on_topic_buffer_full(None)
    assert value(m, "nexus_kafka_rebalances_total") == 1
    assert value(m, "nexus_kafka_rebalance_duration_seconds_count") == 1
    assert value(m, "nexus_kafka_commit_duration_seconds_count") == 1
    assert value(m, "nexus_kafka_send_duration_seconds_count") == 1
    assert value(m, "nexus_kafka_send_errors_total") == 1
    assert value(m, "nexus_kafka_topic_buffer_full_total") == 1


# -- dashboards and rules ------------------------------------------------------------------------


def dashboards() -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in DASHBOARDS]


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found += [panel, *panel.get("panels", [])]
    return [p for p in found if p["type"] != "row"]


def exported_names() -> set[str]:
    """Every sample name the worker's registry can export (counters with _total, histograms with
    _bucket/_count/_sum), plus Prometheus' own `up`."""
    registry = CollectorRegistry()
    Metrics(registry)
    names = {"up"}
    for family in registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "count", "sum", "created")}
        else:
            names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(nexus_[a-z_]+|up)\b(?=\s*[{\[)\s])", expr + " "))


def test_dashboards__the_two_boards_with_unique_uids_and_panel_ids() -> None:
    boards = dashboards()
    assert {b["title"] for b in boards} >= {"Nexus overview", "Patterns and graph"}
    assert len({b["uid"] for b in boards}) == len(boards)
    for board in boards:
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), board["title"]


def test_dashboards__every_panel_has_the_datasource_and_targets_with_expr() -> None:
    provisioned = yaml.safe_load((REPO / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (datasource,) = provisioned["datasources"]
    for board in dashboards():
        for panel in panels(board):
            where = f"{board['title']} / {panel.get('title')}"
            assert panel.get("title") and panel.get("description"), where
            assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, where
            assert panel.get("targets"), where
            for target in panel["targets"]:
                assert target.get("expr", "").strip(), where
                assert target.get("refId"), where
                assert target.get("datasource", panel["datasource"])["uid"] == datasource["uid"], where
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, where


def test_dashboards_and_rules__use_only_metrics_the_worker_exports() -> None:
    names = exported_names()
    exprs = [t["expr"] for board in dashboards() for p in panels(board) for t in p["targets"]]
    exprs += [
        rule["expr"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used, exprs
    assert used <= names, sorted(used - names)


def test_rules__every_alert_is_query_comparison_threshold_with_severity_and_summary() -> None:
    alert = re.compile(r"^(?P<query>.+?)\s*(?:>=|<=|==|!=|>|<)\s*-?[0-9.]+(?:e[+-]?[0-9]+)?\s*$", re.S)
    rules = [r for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {
        "NexusServerErrors",
        "NexusErrorRateHigh",
        "NexusConsumerLagGrowing",
        "NexusDeadletters",
        "NexusExecutionFailureRate",
    }
    for rule in rules:
        assert alert.match(rule["expr"].strip()), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
