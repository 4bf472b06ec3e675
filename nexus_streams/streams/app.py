"""create_app(settings) -> faust.App: topics, tables and the namespace agent. Nothing at import."""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
from faust.types import EventT

from nexus_streams.domain.graph import Put
from nexus_streams.domain.relationships import Relationship
from nexus_streams.messages import Result
from nexus_streams.metrics import Metrics
from nexus_streams.service import NamespaceService, Received
from nexus_streams.settings import Settings
from nexus_streams.topics import (
    ALL_TOPICS,
    EXECUTIONS,
    QUERIES,
    RELATIONSHIPS,
    TopicSpec,
)

log = logging.getLogger(__name__)

SEP = "\x1f"


class TableRequestLog:
    """Results by (namespace, request_id), in a changelog-backed table."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, namespace: str, request_id: str) -> Result | None:
        stored = self.table.get(f"{namespace}{SEP}{request_id}")
        return None if stored is None else Result.model_validate(stored)

    def put(self, result: Result) -> None:
        assert result.request_id is not None
        self.table[f"{result.namespace}{SEP}{result.request_id}"] = result.model_dump(mode="json")


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


def create_app(settings: Settings, metrics: Metrics | None = None) -> faust.App:
    metrics = metrics or Metrics()
    app = faust.App(
        settings.app_id,
        broker=broker_urls(settings.kafka_bootstrap),
        store=settings.table_store,
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        processing_guarantee=settings.processing_guarantee,
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
    )
    topics: dict[TopicSpec, faust.TopicT] = {
        spec: app.topic(
            settings.topic(spec.name),
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
            internal=False,
        )
        for spec in ALL_TOPICS
    }
    by_name = {settings.topic(spec.name): spec for spec in ALL_TOPICS}
    inbound = app.topic(
        *(settings.topic(spec.name) for spec in (RELATIONSHIPS, QUERIES, EXECUTIONS)),
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
        internal=False,
    )
    relationships = app.Table(
        "relationships",
        default=None,
        partitions=settings.partitions,
        help="relationships by namespace/type/source/target (canonical form)",
    )
    requests = app.Table(
        "requests",
        default=None,
        partitions=settings.partitions,
        help="results by namespace/request_id, for idempotent redelivery",
    )
    request_log = TableRequestLog(requests)
    service = NamespaceService(request_log)

    @relationships.on_recover
    async def rebuild_graphs() -> None:
        service.load(Relationship.from_dict(value) for value in relationships.values())
        log.info(
            "graphs rebuilt: %d namespaces, %d relationships",
            len(service.graphs),
            sum(len(g) for g in service.graphs.values()),
        )

    @app.agent(inbound, name="apply_namespace_commands")
    async def apply_namespace_commands(stream: faust.StreamT[bytes]) -> None:
        event: EventT[bytes]
        async for event in stream.events():
            msg = event.message
            started = time.perf_counter()
            reply = service.handle(
                Received(
                    spec=by_name[msg.topic],
                    topic=msg.topic,
                    partition=msg.partition,
                    offset=msg.offset,
                    key=msg.key,
                    value=msg.value,
                )
            )
            for change in reply.changes:
                rel = change.relationship
                stored_key = rel.key.as_stored(rel.namespace)
                if isinstance(change, Put):
                    relationships[stored_key] = rel.to_dict()
                elif stored_key in relationships:
                    del relationships[stored_key]
            if reply.remember is not None:
                request_log.put(reply.remember)
            for out in reply.outbound:
                await topics[out.spec].send(key=out.key, value=out.value, headers=out.headers)
            metrics.observe(by_name[msg.topic], reply, time.perf_counter() - started)

    app.nexus_service = service  # type: ignore[attr-defined]
    app.nexus_metrics = metrics  # type: ignore[attr-defined]
    return app
