"""Every Prometheus metric of the worker, in one object, driven from the agents' replies.

Label values come from closed sets (topic names, known actions, error codes), never from user
input, so cardinality stays bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from nexus_streams.domain.errors import ErrorCode
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
