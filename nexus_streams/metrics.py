"""Every Prometheus metric of the worker, in one object, driven from the agents' replies.

Label values come from closed sets (topic names, known actions, error codes), never from user
input, so cardinality stays bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from nexus_streams.domain.errors import ErrorCode
from nexus_streams.executions import ExecutionStats
from nexus_streams.messages import PATTERN_ACTIONS, QUERY_ACTIONS, RELATIONSHIP_ACTIONS
from nexus_streams.service import Reply
from nexus_streams.topics import DEADLETTER, TopicSpec
from nexus_streams.topics import Header as H

KNOWN_ACTIONS = (
    frozenset(RELATIONSHIP_ACTIONS) | frozenset(QUERY_ACTIONS) | frozenset(PATTERN_ACTIONS) | {"execute"}
)
KNOWN_CODES = frozenset(code.value for code in ErrorCode)
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "nexus_requests",
            "Requests answered, by input topic, action and status",
            ["topic", "action", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "nexus_errors", "Error results by error code", ["topic", "code"], registry=self.registry
        )
        self.deadletters = Counter(
            "nexus_deadletters",
            "Messages sent to the dead-letter topic, by reason",
            ["topic", "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "nexus_request_duration_seconds",
            "Time from reading a request to having published its outcome",
            ["topic", "action"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

        self.executions = Counter(
            "nexus_pattern_executions",
            "Finished pattern executions by pattern, version and status",
            ["pattern", "version", "status"],
            registry=self.registry,
        )
        self.execution_duration = Histogram(
            "nexus_pattern_execution_duration_seconds",
            "Duration of finished pattern executions, from start to commit or rollback",
            ["pattern"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.step_failures = Counter(
            "nexus_pattern_step_failures",
            "Failed steps of finished executions",
            ["pattern"],
            registry=self.registry,
        )
        self.step_retries = Counter(
            "nexus_pattern_step_retries",
            "Step retries of finished executions",
            ["pattern"],
            registry=self.registry,
        )
        self.rollbacks = Counter(
            "nexus_pattern_rollbacks",
            "Failed executions by what their rollback kept",
            ["pattern", "policy"],
            registry=self.registry,
        )
        self.executions_in_flight = Gauge(
            "nexus_pattern_executions_in_flight",
            "Executions waiting (for a retry) on this worker",
            registry=self.registry,
        )

    def observe_execution(self, stats: ExecutionStats) -> None:
        """Pattern ids label these: patterns are a managed set, not user input per request."""
        self.executions.labels(stats.pattern_id, str(stats.version), stats.status).inc()
        self.execution_duration.labels(stats.pattern_id).observe(stats.duration_ms / 1000)
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
        for out in reply.outbound:
            if out.spec is DEADLETTER:
                reason = out.headers.get(H.ERROR_CODE.value, b"other").decode()
                self.deadletters.labels(
                    spec.name,
                    reason if reason in KNOWN_CODES or reason in ("undecodable", "invalid_key") else "other",
                ).inc()

    def serve(self, port: int) -> None:
        start_http_server(port, addr="0.0.0.0", registry=self.registry)  # noqa: S104
