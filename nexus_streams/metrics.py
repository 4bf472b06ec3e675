"""Every Prometheus metric of the worker, in one object, driven from the agents' replies, the
maintenance timer (graph sizes, consumer lag), the pattern store (Redis timings) and a Faust sensor.

Label values come from closed sets (topic names, known actions, error codes, relationship types,
partition numbers), never from free user input, so cardinality stays bounded. Two labels are open
sets kept small on purpose:

- `pattern`: pattern ids are a managed set (stored through `nexus.patterns`), not per request input.
- `namespace` (graph size gauges only): the `TOP_NAMESPACES` largest namespaces of a worker by
  relationship count; all others are summed into `namespace="_other"`, so sums stay exact.

docs/observability.md lists every metric with the panels and alerts built on it.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from faust.sensors import Sensor
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from nexus_streams.domain.auth import DenialReason
from nexus_streams.domain.errors import ErrorCode
from nexus_streams.domain.graph import Change, Graph, Put
from nexus_streams.domain.index import CANONICAL_TYPES
from nexus_streams.executions import ExecutionStats
from nexus_streams.messages import (
    PATTERN_ACTIONS,
    QUERY_ACTIONS,
    RELATIONSHIP_ACTIONS,
    SUBSCRIPTION_ACTIONS,
    ErrorBody,
)
from nexus_streams.replies import ACCESS_DENIED_CODES, denial_reason
from nexus_streams.service import Reply
from nexus_streams.store.redis import Durability
from nexus_streams.subscriptions import StandingStats
from nexus_streams.topics import DEADLETTER, EXECUTIONS, PATTERNS, QUERIES, RELATIONSHIPS, TopicSpec
from nexus_streams.topics import Header as H

log = logging.getLogger(__name__)
KNOWN_ACTIONS = (
    frozenset(RELATIONSHIP_ACTIONS)
    | frozenset(QUERY_ACTIONS)
    | frozenset(SUBSCRIPTION_ACTIONS)
    | frozenset(PATTERN_ACTIONS)
    | {"execute"}
)
KNOWN_CODES = frozenset(code.value for code in ErrorCode)
#: the topics the agents consume (lag and assignment are exported for these)
INPUT_TOPICS = (RELATIONSHIPS, QUERIES, EXECUTIONS, PATTERNS)
DEADLETTER_REASONS = KNOWN_CODES | {"undecodable", "invalid_key"}
DENIAL_REASONS = frozenset(reason.value for reason in DenialReason)
DENIAL_CODES = frozenset(code.value for code in ACCESS_DENIED_CODES)
STEP_STATUSES = frozenset(
    {"pending", "waiting_retry", "completed", "failed", "skipped", "compensated", "rolled_back"}
)
#: RedisPatternStore operations (`_run(operation, ...)`)
REDIS_OPERATIONS = frozenset(
    {"put", "get", "versions", "list", "deprecate", "delete", "record_execution", "stats", "persistence"}
)
#: exception class names of Redis failures, as the `error` label of `nexus_redis_errors_total`
REDIS_ERRORS = {
    "ConnectionError": "connection",
    "TimeoutError": "timeout",
    "BusyLoadingError": "loading",
    "ReadOnlyError": "read_only",
    "ResponseError": "response",
    "OSError": "connection",
    "ConnectionRefusedError": "connection",
}
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REDIS_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0)
SNAPSHOT_AGE_BUCKETS_S = (0.1, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 45, 60, 120, 300)
#: time per change spent on standing queries: microseconds for a few, tens of ms at the budget
STANDING_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
KAFKA_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: namespaces exported by name in the graph size gauges (per worker); the rest are `_other`
TOP_NAMESPACES = 20
OTHER_NAMESPACES = "_other"
#: the lag is not read when the consumer does not tell a position this fast (rebalancing)
POSITION_TIMEOUT_S = 1.0
#: the graph size gauges are refreshed at most this often (the scan is O(namespaces))
GRAPH_REFRESH_S = 5.0


class _Series:
    """The label sets a gauge family currently exports, so a refresh can drop those that are gone
    (a namespace left the top N, a partition was revoked) without a moment with no series at all."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self.exported: set[tuple[str, ...]] = set()

    def replace(self, values: Mapping[tuple[str, ...], float]) -> None:
        for labels, value in values.items():
            self.gauge.labels(*labels).set(value)
        for gone in self.exported - values.keys():
            self.gauge.remove(*gone)
        self.exported = set(values)


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        top_namespaces: int = TOP_NAMESPACES,
        graph_refresh_s: float = GRAPH_REFRESH_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.top_namespaces = top_namespaces
        self.graph_refresh_s = graph_refresh_s
        self.monotonic = monotonic
        self._graphs_refreshed_at = -math.inf
        r = self.registry

        # -- requests ----------------------------------------------------------------------------
        self.requests = Counter(
            "nexus_requests",
            "Requests answered, by input topic, action and status",
            ["topic", "action", "status"],
            registry=r,
        )
        self.errors = Counter("nexus_errors", "Error results by error code", ["topic", "code"], registry=r)
        self.deadletters = Counter(
            "nexus_deadletters",
            "Messages sent to the dead-letter topic, by reason",
            ["topic", "reason"],
            registry=r,
        )
        self.access_denied = Counter(
            "nexus_access_denied",
            "Requests refused: unauthenticated, forbidden or rate_limited, by reason (docs/security.md)",
            ["reason"],
            registry=r,
        )
        self.deadletters_waiting = Gauge(
            "nexus_deadletters_waiting",
            "Dead letters on the dead-letter topic neither redriven nor discarded, by source topic and "
            "reason (docs/deadletters.md); every worker counts the whole topic. No series until the "
            "worker has read it to the end",
            ["topic", "reason"],
            registry=r,
        )
        self._waiting_series = _Series(self.deadletters_waiting)
        self.latency = Histogram(
            "nexus_request_duration_seconds",
            "Time from reading a request to having published its outcome",
            ["topic", "action"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )

        # -- pattern executions ------------------------------------------------------------------
        self.executions = Counter(
            "nexus_pattern_executions",
            "Finished pattern executions by pattern, version and status",
            ["pattern", "version", "status"],
            registry=r,
        )
        self.execution_duration = Histogram(
            "nexus_pattern_execution_duration_seconds",
            "Duration of finished pattern executions, from start to commit or rollback",
            ["pattern"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.step_failures = Counter(
            "nexus_pattern_step_failures",
            "Failed steps of finished executions",
            ["pattern"],
            registry=r,
        )
        self.step_retries = Counter(
            "nexus_pattern_step_retries",
            "Step retries of finished executions",
            ["pattern"],
            registry=r,
        )
        self.steps = Counter(
            "nexus_pattern_steps",
            "Top-level steps of finished executions by final status",
            ["pattern", "status"],
            registry=r,
        )
        self.rollbacks = Counter(
            "nexus_pattern_rollbacks",
            "Failed executions by what their rollback kept",
            ["pattern", "policy"],
            registry=r,
        )
        self.step_duration = Histogram(
            "nexus_pattern_step_duration_seconds",
            "Time the attempts of a step ran (not waiting for retries), by pattern and step kind",
            ["pattern", "step"],
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=self.registry,
        )
        self.executions_in_flight = Gauge(
            "nexus_pattern_executions_in_flight",
            "Executions waiting (for a retry) on this worker",
            registry=r,
        )

        # -- graphs ------------------------------------------------------------------------------
        self.graph_relationships = Gauge(
            "nexus_graph_relationships",
            f"Relationships per namespace and type (the {top_namespaces} largest namespaces of this "
            f"worker by name, the others summed as namespace={OTHER_NAMESPACES})",
            ["namespace", "type"],
            registry=r,
        )
        self.graph_entities = Gauge(
            "nexus_graph_entities",
            f"Entities per namespace (same top {top_namespaces} and {OTHER_NAMESPACES} as "
            "nexus_graph_relationships)",
            ["namespace"],
            registry=r,
        )
        self.graph_namespaces = Gauge(
            "nexus_graph_namespaces", "Namespaces whose graph this worker holds", registry=r
        )
        self.graph_changes = Counter(
            "nexus_graph_changes",
            "Relationship records written (put: created or updated) or removed",
            ["change"],
            registry=r,
        )
        self.snapshot_age = Histogram(
            "nexus_graph_snapshot_age_seconds",
            "Age of the igraph snapshot an analysis answer was computed on (reused up to "
            "NEXUS_SNAPSHOT_MAX_AGE_S or the query's max_age_ms)",
            ["action"],
            buckets=SNAPSHOT_AGE_BUCKETS_S,
            registry=r,
        )
        self._relationship_series = _Series(self.graph_relationships)
        self._entity_series = _Series(self.graph_entities)

        # -- standing queries (docs/standing-queries.md) -----------------------------------------
        self.standing_subscriptions = Gauge(
            "nexus_standing_subscriptions", "Standing queries of the namespaces this worker owns", registry=r
        )
        self.standing_evaluations = Counter(
            "nexus_standing_evaluations",
            "Standing queries evaluated after a committed change (only those it can affect)",
            registry=r,
        )
        self.standing_answers = Counter(
            "nexus_standing_answers",
            "Standing query answers that changed: matched or unmatched (one event each)",
            ["change"],
            registry=r,
        )
        self.standing_over_budget = Counter(
            "nexus_standing_over_budget",
            "Standing queries left unanswered by a change (over NEXUS_SUBSCRIPTION_VISIT_BUDGET); "
            "they are evaluated on the following changes",
            registry=r,
        )
        self.standing_seconds = Histogram(
            "nexus_standing_change_seconds",
            "Time one committed change spent evaluating its namespace's standing queries",
            buckets=STANDING_BUCKETS_S,
            registry=r,
        )

        # -- Kafka consumer and Faust ------------------------------------------------------------
        self.consumer_lag = Gauge(
            "nexus_consumer_lag",
            "Messages of an assigned input partition not yet committed (high watermark minus "
            "committed offset)",
            ["topic", "partition"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "nexus_consumer_assigned_partitions",
            "Input partitions assigned to this worker",
            ["topic"],
            registry=r,
        )
        self._lag_series = _Series(self.consumer_lag)
        self._assigned_series = _Series(self.assigned_partitions)
        self.rebalances = Counter(
            "nexus_kafka_rebalances", "Consumer group rebalances this worker went through", registry=r
        )
        self.rebalance_duration = Histogram(
            "nexus_kafka_rebalance_duration_seconds",
            "Duration of rebalances, including table recovery",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.commit_duration = Histogram(
            "nexus_kafka_commit_duration_seconds",
            "Duration of consumer offset commits",
            buckets=KAFKA_BUCKETS_S,
            registry=r,
        )
        self.send_duration = Histogram(
            "nexus_kafka_send_duration_seconds",
            "Time from handing a message to the producer to its acknowledgement",
            buckets=KAFKA_BUCKETS_S,
            registry=r,
        )
        self.send_errors = Counter(
            "nexus_kafka_send_errors", "Messages the producer failed to publish", registry=r
        )
        self.reseeks = Counter(
            "nexus_kafka_reseeks",
            "Input partitions read again from the next expected offset after they stalled with "
            "unread messages (see nexus_streams/stalls.py)",
            registry=r,
        )
        self.offsets_without_records = Counter(
            "nexus_kafka_offsets_without_records",
            "Input offsets found to hold no record for the agent (transaction markers, aborted "
            "transactions' records), read again once to check and then gone past (nexus_streams/stalls.py)",
            registry=r,
        )
        self.loop_lag = Histogram(
            "nexus_event_loop_lag_seconds",
            "How late the worker's event loop ran a timer tick (every 50 ms): the time a ready "
            "message waits while something else holds the loop",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.buffer_full = Counter(
            "nexus_kafka_topic_buffer_full",
            "Times a partition's buffer was full and the consumer had to wait for the agent",
            registry=r,
        )

        # -- Redis -------------------------------------------------------------------------------
        self.redis_duration = Histogram(
            "nexus_redis_operation_duration_seconds",
            "Duration of one attempt of a pattern store (Redis) operation",
            ["operation"],
            buckets=REDIS_BUCKETS_S,
            registry=r,
        )
        self.redis_errors = Counter(
            "nexus_redis_errors",
            "Failed attempts of pattern store (Redis) operations, by kind of failure",
            ["operation", "error"],
            registry=r,
        )
        self.redis_durable = Gauge(
            "nexus_redis_durable",
            "1 when the pattern store's Redis keeps every acknowledged write across a crash (AOF, "
            "fsync before each reply), 0 when it could lose some; reason: the verdict "
            "(docs/operations.md). No series until Redis first answered",
            ["reason"],
            registry=r,
        )
        self._durable_series = _Series(self.redis_durable)

        self._initialize()

    def _initialize(self) -> None:
        """Zero series for the failures the alerts count with `increase`/`rate`: a counter series
        that appears with its first increment at 1 would hide that first failure from them."""
        for spec in INPUT_TOPICS:
            for reason in ("undecodable",) if spec is PATTERNS else ("undecodable", "invalid_key"):
                self.deadletters.labels(spec.name, reason)
            for code in ("internal_error", "store_unavailable"):
                self.errors.labels(spec.name, code)
        for reason in DENIAL_REASONS:
            self.access_denied.labels(reason)
        for change in ("matched", "unmatched"):
            self.standing_answers.labels(change)

    # -- driven by the agents ------------------------------------------------------------------

    def observe_execution(self, stats: ExecutionStats) -> None:
        """Pattern ids label these: patterns are a managed set, not user input per request."""
        self.executions.labels(stats.pattern_id, str(stats.version), stats.status).inc()
        self.execution_duration.labels(stats.pattern_id).observe(stats.duration_ms / 1000)
        for step_kind, seconds in stats.step_durations:
            self.step_duration.labels(stats.pattern_id, step_kind).observe(seconds)
        if stats.step_failures:
            self.step_failures.labels(stats.pattern_id).inc(stats.step_failures)
        if stats.step_retries:
            self.step_retries.labels(stats.pattern_id).inc(stats.step_retries)
        if stats.status == "error":
            self.rollbacks.labels(stats.pattern_id, stats.rollback).inc()

    def observe(self, spec: TopicSpec, reply: Reply, seconds: float) -> None:
        result = reply.result
        if result is not None:
            action = result.action if result.action in KNOWN_ACTIONS else "other"
            self.requests.labels(spec.name, action, result.status).inc()
            self.latency.labels(spec.name, action).observe(seconds)
            if result.error is not None:
                code = result.error.code if result.error.code in KNOWN_CODES else "other"
                self.errors.labels(spec.name, code).inc()
                self._count_denial(result.error)
            output = result.output or {}
            snapshot = output.get("snapshot")
            if isinstance(snapshot, dict) and isinstance(snapshot.get("age_ms"), int | float):
                self.snapshot_age.labels(action).observe(snapshot["age_ms"] / 1000)
            steps = output.get("steps")
            if action == "execute" and result.pattern_id and isinstance(steps, dict):
                for step in steps.values():
                    status = step.get("status") if isinstance(step, dict) else None
                    self.steps.labels(result.pattern_id, status if status in STEP_STATUSES else "other").inc()
        self._observe_changes(reply)
        for out in reply.outbound:
            if out.spec is DEADLETTER:
                reason = out.headers.get(H.ERROR_CODE.value, b"other").decode()
                self.deadletters.labels(spec.name, reason if reason in DEADLETTER_REASONS else "other").inc()

    def observe_changes(self, changes: list[Change]) -> None:
        """Graph changes applied. A reply counts those it still holds when observed; the worker
        counts them as it writes them to the changelog and drops them from the waiting reply."""
        puts = sum(1 for change in changes if isinstance(change, Put))
        if puts:
            self.graph_changes.labels("put").inc(puts)
        if len(changes) > puts:
            self.graph_changes.labels("remove").inc(len(changes) - puts)

    def _observe_changes(self, reply: Reply) -> None:
        self.observe_changes(reply.changes)
        if reply.standing is not None:
            self._observe_standing(reply.standing)

    def _observe_standing(self, standing: StandingStats) -> None:
        self.standing_evaluations.inc(standing.evaluations)
        self.standing_seconds.observe(standing.seconds)
        self.standing_answers.labels("matched").inc(standing.matched)
        self.standing_answers.labels("unmatched").inc(standing.unmatched)
        self.standing_over_budget.inc(standing.over_budget)

    def _count_denial(self, error: ErrorBody) -> None:
        if error.code in DENIAL_CODES:
            reason = denial_reason(error)
            self.access_denied.labels(reason if reason in DENIAL_REASONS else "other").inc()

    # -- driven by the maintenance timer -------------------------------------------------------

    def observe_graphs(self, graphs: Mapping[str, Graph], *, force: bool = False) -> None:
        """Graph size gauges from each graph's index counters (no scan of relationships): the
        `top_namespaces` largest by name, the others summed as `_other`. At most every
        `graph_refresh_s` seconds unless `force`."""
        now = self.monotonic()
        if not force and now - self._graphs_refreshed_at < self.graph_refresh_s:
            return
        self._graphs_refreshed_at = now
        top = heapq.nlargest(self.top_namespaces, graphs.items(), key=lambda item: len(item[1]))
        named = {namespace for namespace, _ in top}
        relationships: dict[tuple[str, ...], float] = {}
        entities: dict[tuple[str, ...], float] = {}
        for namespace, graph in top:
            for type_, count in graph.index.counts_by_type().items():
                relationships[(namespace, type_)] = count
            entities[(namespace,)] = graph.index.entity_count
        if len(graphs) > len(named):
            other_types = dict.fromkeys((t.value for t in CANONICAL_TYPES), 0)
            other_entities = 0
            for namespace, graph in graphs.items():
                if namespace not in named:
                    for type_, count in graph.index.counts_by_type().items():
                        other_types[type_] = other_types.get(type_, 0) + count
                    other_entities += graph.index.entity_count
            for type_, count in other_types.items():
                relationships[(OTHER_NAMESPACES, type_)] = count
            entities[(OTHER_NAMESPACES,)] = other_entities
        self._relationship_series.replace(relationships)
        self._entity_series.replace(entities)
        self.graph_namespaces.set(len(graphs))

    async def observe_consumer(self, consumer: Any, monitor: Any, topics: Mapping[str, TopicSpec]) -> None:
        """Lag of every assigned partition of the input topics (`topics`: Kafka topic name -> spec):
        the partition's high watermark minus the offset committed by this worker (Faust's monitor
        records each commit) or, before the first commit, the consumer's position. A consumer not
        started yet (or stopping) leaves the gauges as they are."""
        try:
            lags, assigned = await self._consumer_state(consumer, monitor, topics)
        except Exception as exc:  # the consumer between rebalances or stopping; next tick again
            log.debug("consumer lag not read: %r", exc)
            return
        self._lag_series.replace(lags)
        self._assigned_series.replace(assigned)

    @staticmethod
    async def _consumer_state(
        consumer: Any, monitor: Any, topics: Mapping[str, TopicSpec]
    ) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, ...], float]]:
        lags: dict[tuple[str, ...], float] = {}
        inputs = {name: spec for name, spec in topics.items() if spec in INPUT_TOPICS}
        assigned: dict[tuple[str, ...], float] = dict.fromkeys(((s.name,) for s in inputs.values()), 0)
        committed: Mapping[Any, int] = getattr(monitor, "tp_committed_offsets", None) or {}
        for tp in consumer.assignment():
            spec = inputs.get(tp.topic)
            if spec is None:
                continue  # changelog topics: recovery, not processing
            assigned[(spec.name,)] += 1
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue  # nothing fetched yet
            done = committed.get(tp)
            if done is None:
                done = await asyncio.wait_for(consumer.position(tp), POSITION_TIMEOUT_S)
            if done is not None:
                lags[(spec.name, str(tp.partition))] = max(0, int(highwater) - int(done))
        return lags, assigned

    def observe_deadletters_waiting(self, waiting: Mapping[tuple[str, str], int]) -> None:
        """`streams.deadletters.watch_waiting`: (topic, reason) -> dead letters waiting."""
        self._waiting_series.replace({labels: float(count) for labels, count in waiting.items()})

    # -- driven by the pattern store -----------------------------------------------------------

    def observe_redis(self, operation: str, seconds: float, error: BaseException | None) -> None:
        """`RedisPatternStore.observer`: called after every attempt of an operation."""
        operation = operation if operation in REDIS_OPERATIONS else "other"
        self.redis_duration.labels(operation).observe(seconds)
        if error is not None:
            self.redis_errors.labels(operation, REDIS_ERRORS.get(type(error).__name__, "other")).inc()

    def observe_redis_durability(self, verdict: Durability) -> None:
        """`RedisPatternStore.watch_durability`: one series, labelled with the latest verdict."""
        self._durable_series.replace({(verdict.value,): 1.0 if verdict.durable else 0.0})

    # -- Faust ---------------------------------------------------------------------------------

    def faust_sensor(self) -> FaustSensor:
        """A Faust sensor feeding the nexus_kafka_* metrics; `app.sensors.add(...)` it."""
        return FaustSensor(self)

    def serve(self, port: int) -> None:
        start_http_server(port, addr="0.0.0.0", registry=self.registry)  # noqa: S104


class FaustSensor(Sensor):
    """Faust's own timings that tell whether the worker keeps up: rebalances (with recovery),
    offset commits, producer acknowledgements and errors, full partition buffers."""

    def __init__(self, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics

    def on_rebalance_start(self, app: Any) -> dict[Hashable, Any]:
        return {"time_start": time.monotonic()}

    def on_rebalance_end(self, app: Any, state: dict[Hashable, Any]) -> None:
        self.metrics.rebalances.inc()
        if isinstance(state, dict) and "time_start" in state:
            self.metrics.rebalance_duration.observe(time.monotonic() - state["time_start"])

    def on_commit_initiated(self, consumer: Any) -> Any:
        return time.monotonic()

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        if isinstance(state, float):
            self.metrics.commit_duration.observe(time.monotonic() - state)

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> Any:
        return time.monotonic()

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        if isinstance(state, float):
            self.metrics.send_duration.observe(time.monotonic() - state)

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        self.metrics.send_errors.inc()

    def on_topic_buffer_full(self, tp: Any) -> None:
        self.metrics.buffer_full.inc()
