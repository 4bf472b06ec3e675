"""The namespace actor's logic, without Faust: one inbound message in, `Reply`s out.

The Faust agent (streams/app.py) feeds messages in partition order, writes `Reply.changes` to its
changelog-backed tables, publishes `Reply.outbound`, and acknowledges `Reply.message` once that is
done. Keeping this free of Faust makes every outcome testable without a broker.

Three kinds of answer:
- immediate (commands, most queries);
- parked: a query whose `min_offset` the partition has not applied yet waits (unacknowledged)
  until a later relationship command reaches it, or times out;
- deferred: whole-graph analysis runs `Deferred.work` in a thread, off the event loop, and
  `Deferred.finish` turns its outcome into the reply.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from nexus_streams.codec import (
    MAX_NESTING_DEPTH,
    Undecodable,
    check_nesting,
    parse_action,
    parse_model,
    request_id_of,
)
from nexus_streams.domain import algorithms, analysis
from nexus_streams.domain.access import AccessPolicy
from nexus_streams.domain.auth import EXECUTIONS_RUN, DenialReason, Grant, Scopes
from nexus_streams.domain.errors import (
    BatchTooLarge,
    ErrorCode,
    Forbidden,
    InternalError,
    NexusError,
    NotFound,
    PathNotFound,
    ResourceLimit,
    Timeout,
    ValidationFailed,
)
from nexus_streams.domain.graph import (
    Change,
    DomainEvent,
    Graph,
    Outcome,
    RecordStore,
    plan_create,
    plan_delete,
    plan_delete_entity,
    plan_expire,
    plan_restore,
    plan_update,
)
from nexus_streams.domain.index import Direction
from nexus_streams.domain.relationships import (
    Relationship,
    RelationshipKey,
    RelationType,
    canonical_key,
    check_endpoints,
    check_id,
    expiry_of,
    parse_type,
)
from nexus_streams.domain.schema import Schema
from nexus_streams.executions import Executions, ExecutionStats, PatternLookup, ResumeExecution
from nexus_streams.messages import (
    DEFAULT_NAMESPACE,
    NAMESPACE_REGEX,
    QUERY_ACTIONS,
    RELATIONSHIP_ACTIONS,
    SUBSCRIPTION_ACTIONS,
    Analyze,
    Batch,
    CreateFields,
    DeleteEntityFields,
    DeleteFields,
    DetectCycles,
    ErrorBody,
    ExecutionRequest,
    Expire,
    Export,
    FindPath,
    GetRelationship,
    Inbound,
    ListSubscriptions,
    Neighbors,
    Query,
    ResolveDependencies,
    RestoreFields,
    Result,
    SetSchema,
    SourceRef,
    Stats,
    Step,
    Subscribe,
    Traverse,
    TriggerExecution,
    Unsubscribe,
    UpdateFields,
    utcnow,
)
from nexus_streams.replies import (
    Outbound,
    Received,
    command_event_message,
    deadletter_message,
    event_message,
    failure,
    result_message,
)
from nexus_streams.subscriptions import Cause, StandingStats, SubscriptionLimits, Subscriptions, Write
from nexus_streams.topics import EXECUTIONS, QUERIES, RELATIONSHIPS, TopicSpec

log = logging.getLogger(__name__)

NAMESPACE_PATTERN = re.compile(NAMESPACE_REGEX.strip("^$"))
#: outcomes that may change when the request is sent again (the README says to retry them)
_NOT_FINAL = frozenset({ErrorCode.INTERNAL_ERROR, ErrorCode.STORE_UNAVAILABLE})
#: what the queries topic takes: graph queries and standing queries
_QUERIES_TOPIC_ACTIONS = {**QUERY_ACTIONS, **SUBSCRIPTION_ACTIONS}


@dataclass(frozen=True)
class Limits:
    """Bounds that keep every answer and every step of the actor small."""

    max_batch: int = 1000
    max_delete_entity: int = 10_000
    visit_limit: int = 25_000
    snapshot_max_age_s: float = 30.0
    min_offset_wait_s: float = 30.0
    max_nesting_depth: int = MAX_NESTING_DEPTH
    subscriptions_per_namespace: int = 1000
    subscription_visit_budget: int = 50_000
    subscription_max_watched: int = 10_000


@dataclass(slots=True)
class Deferred:
    """Work to run in a thread; `finish(value, error)` builds the replies on the event loop."""

    work: Callable[[], Any]
    finish: Callable[[Any, BaseException | None], list[Reply]]


@dataclass(frozen=True, slots=True)
class ExportPlan:
    """An export taken at one point of its partition's order: the actor snapshots the records of
    `partitions` at once and streams them back in chunks (streams/export.py)."""

    msg: Received
    query: Export
    namespace: str
    partitions: tuple[int, ...]
    #: relationships in the namespace at that point (the index agrees with the records)
    relationships: int
    schema: dict[str, list[str]] | None
    #: the relationships-topic offset of the partition applied at that point
    offset: int | None


@dataclass(slots=True)
class Reply:
    #: acknowledge this message once the reply is published (None: not yet)
    message: Received | None
    outbound: list[Outbound] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    namespace: str = DEFAULT_NAMESPACE
    #: the result to remember under its request id, for answering duplicates (`Remembered`)
    remember: Result | None = None
    #: set by `handle` from `remember`: what the caller stores
    remembered: Remembered | None = None
    result: Result | None = None
    #: a namespace schema to store (document, or None to remove)
    schema: tuple[str, dict[str, list[str]] | None] | None = None
    #: an execution's state to store (key, state) or to drop (key, None)
    execution_state: tuple[str, dict[str, Any] | None] | None = None
    #: wake this waiting execution (namespace, request_id) at this time
    wake_at: tuple[str, str, datetime] | None = None
    #: a finished execution to count (pattern statistics, metrics)
    execution_stats: ExecutionStats | None = None
    #: (partition, offset) of the relationships topic now applied
    progress: tuple[int, int] | None = None
    deferred: Deferred | None = None
    #: an export to stream back (the message is acknowledged after its last chunk)
    export: ExportPlan | None = None
    #: called once the reply's messages are published (after its state is in the changelog)
    on_published: Callable[[], None] | None = None
    #: published again from the journal (a redelivery after a crash): not journaled again
    replayed: bool = False
    #: subscriptions to store (namespace, subscription_id, state) or to drop (state None)
    subscriptions: list[Write] = field(default_factory=list)
    #: what the change cost the namespace's standing queries (metrics)
    standing: StandingStats | None = None
    #: the reply of a standing query's trigger: its matches run no further triggers
    from_trigger: bool = False


@dataclass(frozen=True, slots=True)
class Remembered:
    """What a request's duplicates are answered with: its result, kept under its request id for
    the retention window (`RequestWindow`). Its events are not kept: a redelivery of the very
    message after a crash is answered from the journal (streams/journal.py), and a client's
    duplicate gets the result alone."""

    result: Result

    @classmethod
    def of(cls, reply: Reply) -> Remembered:
        assert reply.result is not None
        return cls(reply.result)

    def to_dict(self) -> dict[str, Any]:
        return self.result.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Remembered:
        # earlier versions kept {"result": ..., "events": ..., "changes": ...}
        return cls(Result.model_validate(data.get("result", data) if "status" not in data else data))


class RequestWindow:
    """Which remembered requests to forget, by partition: past `max_count` (the oldest first) or
    older than `max_age_s`. Pure bookkeeping of (time, key); the caller deletes what it names."""

    def __init__(self, max_age_s: float, max_count: int) -> None:
        self.max_age_s = max_age_s
        self.max_count = max_count
        self._kept: dict[int, deque[tuple[float, bytes]]] = {}

    def __len__(self) -> int:
        return sum(len(kept) for kept in self._kept.values())

    def admit(self, partition: int, key: bytes, at: float) -> list[bytes]:
        """Remember `key` from `at`; returns the keys this pushes out (over the count)."""
        kept = self._kept.setdefault(partition, deque())
        kept.append((at, key))
        return [kept.popleft()[1] for _ in range(len(kept) - self.max_count)]

    def expired(self, now: float) -> dict[int, list[bytes]]:
        """The keys older than the window, by partition (forgotten here)."""
        oldest_kept = now - self.max_age_s
        out: dict[int, list[bytes]] = {}
        for partition, kept in self._kept.items():
            while kept and kept[0][0] <= oldest_kept:
                out.setdefault(partition, []).append(kept.popleft()[1])
        return out

    def load(self, partition: int, key: bytes, at: float) -> None:
        self._kept.setdefault(partition, deque()).append((at, key))

    def loaded(self) -> dict[int, list[bytes]]:
        """After loading: order by time; returns what is already over the count."""
        out: dict[int, list[bytes]] = {}
        for partition, kept in self._kept.items():
            ordered = deque(sorted(kept))
            over = [ordered.popleft()[1] for _ in range(len(ordered) - self.max_count)]
            self._kept[partition] = ordered
            if over:
                out[partition] = over
        return out

    def forget(self, partitions: set[int] | None = None) -> None:
        """Drop the bookkeeping of `partitions` (all when None)."""
        for partition in list(self._kept) if partitions is None else partitions:
            self._kept.pop(partition, None)


class RequestLog(Protocol):
    """What requests did, by (namespace, request_id): what makes redelivery harmless."""

    def get(self, namespace: str, request_id: str) -> Remembered | None: ...


@dataclass(slots=True)
class _Parked:
    msg: Received
    namespace: str
    query: Query
    min_offset: int
    deadline: float


@dataclass(slots=True)
class _Snapshot:
    snapshot: analysis.EdgeSnapshot
    #: the snapshot holds at least the writes up to this offset (maybe a few later ones)
    applied_offset: int | None
    #: by the service's monotonic clock
    taken_at: float


class NamespaceService:
    """Owns the live graphs of the namespaces whose partitions this worker is assigned."""

    def __init__(
        self,
        requests: RequestLog,
        records_for: Callable[[str], RecordStore],
        limits: Limits | None = None,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        offload: Callable[..., Any] | None = None,
        executions: Executions | None = None,
    ) -> None:
        self.requests = requests
        self.records_for = records_for
        self.limits = limits or Limits()
        self.clock = clock
        self.monotonic = monotonic
        #: runs whole-graph igraph work (holds the GIL for long C calls); the worker passes a
        #: process pool, tests run it inline
        self.offload: Callable[..., Any] = offload or (lambda fn, *args, **kwargs: fn(*args, **kwargs))
        self.graphs: dict[str, Graph] = {}
        self.executions = executions or Executions(AccessPolicy.of(()))
        limits = self.limits
        self.subscriptions = Subscriptions(
            SubscriptionLimits(
                per_namespace=limits.subscriptions_per_namespace,
                visit_budget=limits.subscription_visit_budget,
                max_watched=limits.subscription_max_watched,
                visit_limit=limits.visit_limit,
            )
        )
        #: relationships-topic partition -> highest offset applied
        self.applied: dict[int, int] = {}
        self._parked: dict[int, list[_Parked]] = {}
        self._snapshots: dict[str, _Snapshot] = {}
        #: the partitions each namespace's messages came from (its state's partitions)
        self._partitions: dict[str, tuple[int, ...]] = {}

    def partitions_of(self, namespace: str) -> tuple[int, ...]:
        return self._partitions.get(namespace, ())

    def note_partition(self, namespace: str, partition: int) -> None:
        """`namespace` has state in `partition` (its messages come from there)."""
        known = self._partitions.get(namespace)
        if known is None:
            self._partitions[namespace] = (partition,)
        elif partition not in known:  # messages without a key: `default` over several partitions
            self._partitions[namespace] = (partition, *known)

    def graph(self, namespace: str) -> Graph:
        graph = self.graphs.get(namespace)
        if graph is None:
            graph = self.graphs[namespace] = Graph(namespace, self.records_for(namespace))
        return graph

    # -- recovery ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything: the assignment changed, state is reloaded, parked queries come again."""
        self.graphs.clear()
        self.executions.reset()
        self.subscriptions.reset()
        self._parked.clear()
        self._partitions.clear()
        self.applied.clear()
        self._snapshots.clear()

    def load_record(self, stored_key: str, record: dict[str, Any]) -> None:
        namespace, key = RelationshipKey.from_stored(stored_key)
        # the index holds keys only: a whole Relationship (three timestamps parsed) per record
        # was a third of a rebuild's time
        self.graph(namespace).load(key, expiry_of(record))

    def load_schema(self, namespace: str, document: dict[str, list[str]]) -> None:
        self.graph(namespace).schema = Schema.parse(document)

    def load_progress(self, partition: int, offset: int) -> None:
        self.applied[partition] = max(offset, self.applied.get(partition, -1))

    def load_subscription(self, namespace: str, subscription_id: str, state: dict[str, Any]) -> None:
        self.subscriptions.load(namespace, subscription_id, state)

    def loaded(self) -> None:
        """Every kind loaded: what the subscriptions watch, from the graphs."""
        self.subscriptions.index(lambda namespace: self.graph(namespace).index)

    # -- the actor -----------------------------------------------------------------------------

    def handle(self, msg: Received, patterns: PatternLookup | None = None) -> list[Reply]:
        """The replies to one message. After making those of a relationships message durable,
        the caller asks `release_parked(partition)` for the queries that waited for it.
        `patterns`: those an execution message needs, fetched by the caller beforehand."""
        self.executions.lookup = patterns or PatternLookup()
        replies = self._handle(msg)
        for reply in replies:
            if reply.remember is not None and reply.remember.request_id is not None:
                reply.remembered = Remembered.of(reply)
            if reply.changes and reply.message is not None:
                self._after_change(reply, reply.message)
        if msg.spec is RELATIONSHIPS:
            # every message of the relationships topic counts as applied, answered or not
            self.applied[msg.partition] = max(msg.offset, self.applied.get(msg.partition, -1))
            replies[0].progress = (msg.partition, msg.offset)
        return replies

    def _handle(self, msg: Received) -> list[Reply]:
        try:
            data = msg.data()
        except Undecodable as exc:
            return [self._deadletter(msg, "undecodable", exc.reason)]
        namespace, key_error = _namespace_of(msg.key)
        if key_error is not None:
            return [self._deadletter(msg, "invalid_key", key_error)]
        if msg.spec is not QUERIES:  # a query creates no state: queried namespaces are not kept
            self.note_partition(namespace, msg.partition)
        request_id = request_id_of(data)
        if request_id is not None and msg.spec is not QUERIES:
            previous = self.requests.get(namespace, request_id)
            if previous is not None:
                return [self._replay(msg, namespace, previous)]
        action = data.get("action") if isinstance(data.get("action"), str) else None
        try:
            check_nesting(data, self.limits.max_nesting_depth)
            command = self._parse(msg.spec, data)
            if command.namespace is not None and command.namespace != namespace:
                raise ValidationFailed(
                    f"field 'namespace' is {command.namespace!r} but the message key is "
                    f"{namespace!r}; leave the field out or make them equal",
                    errors=[{"field": "namespace", "message": "does not match the key"}],
                )
        except NexusError as exc:
            return [self._error(msg, namespace, request_id, action, data, exc)]
        if isinstance(command, Query):
            return self._query(msg, namespace, command)
        if isinstance(command, Subscribe | Unsubscribe | ListSubscriptions):
            return [self._subscription(msg, namespace, command)]
        return [self._command(msg, namespace, command, data)]

    # -- standing queries (docs/standing-queries.md) -------------------------------------------

    def _subscription(
        self, msg: Received, namespace: str, command: Subscribe | Unsubscribe | ListSubscriptions
    ) -> Reply:
        subscriptions = self.subscriptions
        write: Write | None = None
        try:
            if isinstance(command, Subscribe):
                grant = self.executions.lookup.grant
                scopes = None if grant is None else sorted(grant.scopes.granted)
                if grant is not None and command.on_match is not None:
                    needed = f"{EXECUTIONS_RUN}:{namespace}"
                    if not grant.scopes.allows(needed):
                        raise Forbidden(
                            f"forbidden: on_match runs a pattern as {grant.principal}, which needs "
                            f"the scope {needed}",
                            reason=DenialReason.MISSING_SCOPE.value,
                            missing_scope=needed,
                            principal=grant.principal,
                        )
                principal = command.principal if grant is None else grant.principal
                graph = self.graphs.get(namespace) or Graph(namespace, self.records_for(namespace))
                output, write = subscriptions.subscribe(
                    graph.index, namespace, command, principal, scopes, msg.offset
                )
                if write is not None:
                    self.note_partition(namespace, msg.partition)
                    self.graph(namespace)  # the namespace has state now
            elif isinstance(command, Unsubscribe):
                self._check_subscriber(namespace, command.subscription_id)
                output, write = subscriptions.unsubscribe(namespace, command.subscription_id)
            else:
                output = subscriptions.listing(namespace)
        except NexusError as exc:
            return self._error(msg, namespace, command.request_id, command.action, _who(command), exc)
        reply = self._ok(msg, namespace, command, Outcome(output))
        if write is not None:
            reply.subscriptions.append(write)
        return reply

    def _after_change(self, reply: Reply, msg: Received) -> None:
        """The standing queries a committed change can affect, evaluated; their new answers go
        with the change's reply (its state cycle, its journal record)."""
        namespace = reply.namespace
        graph = self.graphs.get(namespace)
        if graph is None:
            return
        result = reply.result
        cause = Cause(
            msg.topic,
            msg.partition,
            msg.offset,
            result.request_id if result is not None else None,
            from_trigger=reply.from_trigger,
        )
        try:
            after = self.subscriptions.after_change(
                graph.index, namespace, reply.changes, cause, self.clock()
            )
        except Exception:  # the change is committed: a bug here must not lose it
            log.exception(
                "standing queries of %s not evaluated after %s@%d", namespace, msg.topic, msg.offset
            )
            return
        if after is None:
            return
        reply.outbound += after.outbound
        reply.subscriptions += after.writes
        reply.standing = after.stats

    def release_overdue(self) -> list[Reply]:
        """Answer parked queries whose wait ran out with a `timeout` error."""
        now = self.monotonic()
        replies = []
        for partition, parked in self._parked.items():
            overdue = [p for p in parked if p.deadline <= now]
            if not overdue:
                continue
            self._parked[partition] = [p for p in parked if p.deadline > now]
            for p in overdue:
                applied = self.applied.get(partition)
                exc = Timeout(
                    f"min_offset {p.min_offset} not applied within {self.limits.min_offset_wait_s}s "
                    f"(applied: {applied}); is the offset from this namespace's partition?",
                    min_offset=p.min_offset,
                    applied_offset=applied,
                )
                replies.append(
                    self._error(p.msg, p.namespace, p.query.request_id, p.query.action, _who(p.query), exc)
                )
        return replies

    def namespaces_due(self, now: datetime) -> list[str]:
        """Namespaces with relationships whose expires_at has passed."""
        at = now.timestamp()
        return sorted(ns for ns, g in self.graphs.items() if (n := g.next_expiry()) is not None and n <= at)

    # -- commands ------------------------------------------------------------------------------

    def _parse(self, spec: TopicSpec, data: dict[str, Any]) -> Inbound:
        if spec is RELATIONSHIPS:
            return parse_action(RELATIONSHIP_ACTIONS, data, "relationships")
        if spec is QUERIES:
            return parse_action(_QUERIES_TOPIC_ACTIONS, data, "queries")
        if spec is EXECUTIONS:
            if data.get("action") == "resume":
                return parse_model(ResumeExecution, data)
            if data.get("action") == "trigger":
                return parse_model(TriggerExecution, data)
            return parse_model(ExecutionRequest, data)
        raise ValueError(f"the namespace actor does not read {spec.name}")

    def _replay(self, msg: Received, namespace: str, previous: Remembered) -> Reply:
        """A request seen before: the same result, no second effect (a redelivery of the very
        message is answered before it gets here: from the journal, with its events)."""
        result = previous.result
        return Reply(msg, [result_message(result)], namespace=namespace, result=result)

    def release_parked(self, partition: int) -> list[Reply]:
        """Answers to the queries parked on `partition` that its applied offset now reaches.

        Call it once the replies of the relationships message that moved the offset are durable:
        the answers read the records."""
        parked = self._parked.get(partition)
        if not parked:
            return []
        applied = self.applied.get(partition, -1)
        ready = [p for p in parked if p.min_offset <= applied]
        if not ready:
            return []
        self._parked[partition] = [p for p in parked if p.min_offset > applied]
        replies: list[Reply] = []
        for p in ready:
            replies += self._answer(p.msg, p.namespace, p.query)
        return replies

    def _command(self, msg: Received, namespace: str, command: Inbound, data: dict[str, Any]) -> Reply:
        if isinstance(command, TriggerExecution):
            return self._trigger(msg, namespace, command, data)
        if isinstance(command, ExecutionRequest | ResumeExecution):
            return self._execute(msg, namespace, command, data)
        graph = self.graph(namespace)
        savepoint = graph.savepoint()
        try:
            outcome, schema = self._run_command(graph, command)
            changes = graph.commit()
        except NexusError as exc:
            graph.rollback(savepoint)
            return self._error(
                msg, namespace, command.request_id, getattr(command, "action", None), data, exc
            )
        except Exception as exc:  # a bug must not kill the agent: answer and log it
            graph.rollback(savepoint)
            log.exception("internal error on %s[%d]@%d", msg.topic, msg.partition, msg.offset)
            internal = InternalError.of(exc)
            return self._error(
                msg, namespace, command.request_id, getattr(command, "action", None), data, internal
            )
        reply = self._ok(msg, namespace, command, outcome)
        reply.changes = changes
        reply.schema = schema
        if isinstance(command, Expire):
            reply.outbound = reply.outbound[1:]  # a worker's own sweep: events only, no result
        else:
            reply.remember = reply.result
        return reply

    def _run_command(
        self, graph: Graph, command: Inbound
    ) -> tuple[Outcome, tuple[str, dict[str, list[str]] | None] | None]:
        now = self.clock()
        if isinstance(command, Batch):
            if len(command.commands) > self.limits.max_batch:
                raise BatchTooLarge(
                    f"batch has {len(command.commands)} commands; the limit is "
                    f"{self.limits.max_batch} (NEXUS_MAX_BATCH): split it",
                    commands=len(command.commands),
                    limit=self.limits.max_batch,
                )
            outputs: list[dict[str, Any]] = []
            events: list[DomainEvent] = []
            for i, step in enumerate(command.commands):
                try:
                    outcome = self._run_step(graph, step, now)
                except NexusError as exc:
                    exc.message = f"batch command {i} ({step.action}) failed, nothing applied: {exc.message}"
                    exc.details = {"index": i, **exc.details}
                    raise
                outputs.append(outcome.output)
                events += outcome.events
            return Outcome({"results": outputs, "count": len(outputs)}, events), None
        if isinstance(command, SetSchema):
            if command.schema_ is None:
                graph.schema = None
                return Outcome({"schema": None}, [DomainEvent("schema_changed", {"schema": None})]), (
                    graph.namespace,
                    None,
                )
            schema = Schema.parse(command.schema_)
            graph.schema = schema
            return (
                Outcome(
                    {"schema": schema.document},
                    [DomainEvent("schema_changed", {"schema": schema.document})],
                ),
                (graph.namespace, schema.document),
            )
        if isinstance(command, Expire):
            return plan_expire(graph, now), None
        return self._run_step(graph, command, now), None

    def _run_step(self, graph: Graph, step: Step | Inbound, now: datetime) -> Outcome:
        if isinstance(step, CreateFields):
            return plan_create(
                graph,
                step.source,
                parse_type(step.type),
                step.target,
                step.metadata,
                now,
                step.expires_at,
            )
        if isinstance(step, UpdateFields):
            return plan_update(
                graph,
                step.source,
                parse_type(step.type),
                step.target,
                step.metadata,
                now,
                step.expected_version,
                step.expires_at,
            )
        if isinstance(step, DeleteFields):
            return plan_delete(graph, step.source, parse_type(step.type), step.target)
        if isinstance(step, DeleteEntityFields):
            return plan_delete_entity(graph, step.entity, self.limits.max_delete_entity)
        if isinstance(step, RestoreFields):
            type_ = parse_type(step.type)
            key = canonical_key(step.source, type_, step.target)  # a child line is stored as parent
            return plan_restore(
                graph,
                Relationship(
                    graph.namespace,
                    key.source,
                    key.type,
                    key.target,
                    step.metadata,
                    step.version,
                    step.created_at,
                    step.updated_at,
                    step.expires_at,
                ),
            )
        raise ValidationFailed(f"{type(step).__name__} is not a relationship command")

    # -- executions ----------------------------------------------------------------------------

    def _check_subscriber(self, namespace: str, subscription_id: str) -> None:
        """With authentication required, only its subscriber ends a subscription (and its trigger):
        reading a namespace does not let one principal silence another's standing query."""
        grant = self.executions.lookup.grant
        sub = self.subscriptions.of(namespace).get(subscription_id)
        if grant is None or sub is None or sub.principal == grant.principal:
            return
        raise Forbidden(
            f"forbidden: subscription {subscription_id!r} is {sub.principal}'s; only its subscriber "
            "unsubscribes it",
            reason=DenialReason.NOT_PERMITTED.value,
            principal=grant.principal,
            subscription_id=subscription_id,
        )

    def _trigger(
        self, msg: Received, namespace: str, command: TriggerExecution, data: dict[str, Any]
    ) -> Reply:
        """A standing query's match runs its pattern: the input rendered at the match, kept in the
        subscription; as the subscriber, with the scopes it had when it subscribed."""
        if (namespace, command.request_id) in self.executions.waiting:
            return Reply(msg, namespace=namespace)  # running (waiting for a retry)
        taken = self.subscriptions.take_trigger(namespace, command.subscription_id, command.request_id)
        if taken is None:
            exc = NotFound(
                f"subscription {command.subscription_id!r} has no pending trigger {command.request_id!r}",
                subscription_id=command.subscription_id,
            )
            return self._error(msg, namespace, command.request_id, "execute", data, exc, command.pattern_id)
        sub, run, write = taken
        request = ExecutionRequest(
            request_id=command.request_id,
            principal=sub.principal,
            pattern_id=run["pattern_id"],
            version=run.get("version"),
            input=run["input"],
        )
        if sub.scopes is not None:  # a trigger's rights: the subscriber's when it subscribed
            self.executions.lookup.grant = Grant(sub.principal, Scopes(sub.scopes), math.inf)
        reply = self._execute(msg, namespace, request, {"principal": sub.principal})
        reply.subscriptions.append(write)
        reply.from_trigger = True
        return reply

    def _execute(
        self, msg: Received, namespace: str, command: ExecutionRequest | ResumeExecution, data: dict[str, Any]
    ) -> Reply:
        graph = self.graph(namespace)
        now = self.clock()
        try:
            if isinstance(command, ResumeExecution):
                ran = self.executions.resume(namespace, command.execution, graph, now)
            else:
                ran = self.executions.start(command, namespace, graph, now)
        except NexusError as exc:
            pattern_id = command.pattern_id if isinstance(command, ExecutionRequest) else None
            return self._error(msg, namespace, command.request_id, "execute", data, exc, pattern_id)
        except Exception as exc:  # a bug must not kill the agent: answer and log it
            log.exception(
                "internal error running an execution on %s[%d]@%d", msg.topic, msg.partition, msg.offset
            )
            internal = InternalError.of(exc)
            return self._error(msg, namespace, command.request_id, "execute", data, internal)
        if ran is None:
            return Reply(msg, namespace=namespace)  # a duplicate of a running request, or a late resume
        execution = ran.execution
        key = Executions.stored_key(namespace, execution.request_id)
        reply = Reply(msg, namespace=namespace, changes=ran.changes)
        if ran.outcome is None:
            assert ran.wait_until is not None
            reply.execution_state = (key, ran.state)
            reply.wake_at = (namespace, execution.request_id, ran.wait_until)
        else:
            outcome = ran.outcome
            error = ErrorBody.model_validate(outcome.error) if outcome.error else None
            result = Result(
                request_id=execution.request_id,
                namespace=namespace,
                pattern_id=outcome.pattern_id,
                action="execute",
                status=outcome.status,
                output=outcome.output(),
                error=error,
                offset=self.applied.get(msg.partition),
                source=SourceRef(topic=msg.topic, partition=msg.partition, offset=msg.offset),
                processed_at=now,
            )
            reply.result = reply.remember = result
            reply.outbound.append(result_message(result))
            reply.execution_state = (key, None)
            reply.execution_stats = ran.stats
        reply.outbound += [event_message(e) for e in ran.events]
        return reply

    def waiting_due(self, now: datetime) -> list[tuple[str, str]]:
        """Waiting executions (namespace, request_id) whose wake-up time has come."""
        return self.executions.due(now)

    # -- queries -------------------------------------------------------------------------------

    def _query(self, msg: Received, namespace: str, query: Query) -> list[Reply]:
        if query.min_offset is not None and self.applied.get(msg.partition, -1) < query.min_offset:
            self._parked.setdefault(msg.partition, []).append(
                _Parked(
                    msg,
                    namespace,
                    query,
                    query.min_offset,
                    self.monotonic() + self.limits.min_offset_wait_s,
                )
            )
            return []
        return self._answer(msg, namespace, query)

    def _answer(self, msg: Received, namespace: str, query: Query) -> list[Reply]:
        # a query must not create state: an unknown namespace is read as an empty one
        graph = self.graphs.get(namespace)
        if graph is None:
            graph = Graph(namespace, self.records_for(namespace))
        if isinstance(query, Export):
            return [self._export(msg, graph, query)]
        try:
            if isinstance(query, Analyze) or (isinstance(query, DetectCycles) and query.entity is None):
                return [self._deferred_query(msg, graph, query)]
            output = self._run_query(graph, query)
        except NexusError as exc:
            return [self._error(msg, namespace, query.request_id, query.action, _who(query), exc)]
        except Exception as exc:
            log.exception("internal error on %s[%d]@%d", msg.topic, msg.partition, msg.offset)
            internal = InternalError.of(exc)
            return [self._error(msg, namespace, query.request_id, query.action, _who(query), internal)]
        return [self._ok(msg, namespace, query, Outcome(output))]

    def _run_query(self, graph: Graph, query: Query) -> dict[str, Any]:
        index = graph.index
        limits = self.limits
        if isinstance(query, GetRelationship):
            return {
                "relationship": graph.require(query.source, parse_type(query.type), query.target).to_dict()
            }
        if isinstance(query, FindPath):
            check_endpoints(query.source, query.target)
            path = algorithms.find_path(
                index,
                query.source,
                query.target,
                max_depth=query.max_depth,
                direction=Direction(query.direction),
                types=_types(query.types),
                visit_limit=limits.visit_limit,
            )
            if path is None:
                raise PathNotFound(
                    f"no path from {query.source} to {query.target} within {query.max_depth} relationships",
                    source=query.source,
                    target=query.target,
                    max_depth=query.max_depth,
                )
            return {
                "found": True,
                "length": len(path.relationships),
                "path": path.entities,
                "relationships": [self._record(graph, key) for key in path.relationships],
            }
        if isinstance(query, Traverse):
            check_id(query.start, "start")
            walk = algorithms.traverse(
                index,
                query.start,
                max_depth=query.max_depth,
                direction=Direction(query.direction),
                types=_types(query.types),
                limit=query.limit,
            )
            return {
                "start": query.start,
                "count": len(walk.entities),
                "entities": [{"id": e, "depth": d} for e, d in walk.entities],
                "relationships": [_key_dict(k) for k in walk.relationships],
            }
        if isinstance(query, Neighbors):
            check_id(query.entity, "entity")
            found = index.neighbors(query.entity, Direction(query.direction), _types(query.types))
            if len(found) > query.limit:
                raise ResourceLimit(
                    f"{query.entity} has {len(found)} matching relationships; the limit is "
                    f"{query.limit}: narrow `types`/`direction` or raise `limit`",
                    count=len(found),
                    limit=query.limit,
                )
            return {
                "entity": query.entity,
                "count": len(found),
                "neighbors": [
                    {"entity": other, "relationship": self._record(graph, key)} for other, key in found
                ],
            }
        if isinstance(query, DetectCycles):
            assert query.entity is not None
            check_id(query.entity, "entity")
            cycles = algorithms.detect_cycles_from(
                index,
                query.entity,
                types=_types(query.types),
                max_cycles=query.max_cycles,
                visit_limit=limits.visit_limit,
            )
            return {
                "scope": "entity",
                "entity": query.entity,
                "count": len(cycles),
                "cycles": cycles,
            }
        if isinstance(query, ResolveDependencies):
            check_id(query.entity, "entity")
            order = algorithms.resolve_dependencies(
                index, query.entity, types=_types(query.types), visit_limit=limits.visit_limit
            )
            return {"entity": query.entity, "count": len(order), "order": order}
        if isinstance(query, Stats):
            return self._stats(graph)
        raise ValidationFailed(f"no handler for query {type(query).__name__}")

    def _deferred_query(self, msg: Received, graph: Graph, query: Query) -> Reply:
        namespace = graph.namespace
        if isinstance(query, DetectCycles):
            algorithms.dependency_types(_types(query.types))  # fail fast, before going off the loop
        max_age_s = (
            query.max_age_ms / 1000
            if isinstance(query, Analyze) and query.max_age_ms is not None
            else self.limits.snapshot_max_age_s
        )
        now = self.monotonic()
        cached = self._snapshots.get(namespace)
        reuse = cached if cached is not None and now - cached.taken_at <= max_age_s else None
        index = graph.index
        applied = self.applied.get(msg.partition)

        def work() -> tuple[analysis.EdgeSnapshot, dict[str, Any]]:
            snap = reuse.snapshot if reuse is not None else analysis.capture(index)
            if isinstance(query, Analyze):
                return snap, self.offload(analysis.analyze, snap, top=query.top)
            assert isinstance(query, DetectCycles)
            cycles = self.offload(
                analysis.detect_cycles_all, snap, types=_types(query.types), max_cycles=query.max_cycles
            )
            return snap, {"scope": "namespace", "count": len(cycles), "cycles": cycles}

        def finish(value: Any, error: BaseException | None) -> list[Reply]:
            if error is not None:
                if not isinstance(error, NexusError):
                    log.error("analysis of %s failed: %r", namespace, error)
                    error = InternalError.of(error)
                return [self._error(msg, namespace, query.request_id, query.action, _who(query), error)]
            snap, output = value
            taken = reuse or _Snapshot(snap, applied, taken_at=now)
            self._snapshots[namespace] = taken
            output["snapshot"] = {
                "age_ms": round((self.monotonic() - taken.taken_at) * 1000, 1),
                "relationships": snap.relationship_count,
                "applied_offset": taken.applied_offset,
            }
            return [self._ok(msg, namespace, query, Outcome(output))]

        return Reply(None, namespace=namespace, deferred=Deferred(work, finish))

    def _export(self, msg: Received, graph: Graph, query: Export) -> Reply:
        namespace = graph.namespace
        plan = ExportPlan(
            msg,
            query,
            namespace,
            self.partitions_of(namespace) if namespace in self.graphs else (),
            len(graph.index),
            graph.schema.document if graph.schema else None,
            self.applied.get(msg.partition),
        )
        return Reply(None, namespace=namespace, export=plan)

    def _stats(self, graph: Graph) -> dict[str, Any]:
        index = graph.index
        histogram = index.degree_histogram()
        entities = index.entity_count
        degree: dict[str, Any] = {"min": 0, "max": 0, "mean": 0.0, "median": 0}
        if histogram:
            degrees = sorted(histogram)
            half, seen, median = (entities + 1) // 2, 0, degrees[0]
            for d in degrees:
                seen += histogram[d]
                if seen >= half:
                    median = d
                    break
            degree = {
                "min": degrees[0],
                "max": degrees[-1],
                "mean": round(2 * len(index) / entities, 3),
                "median": median,
            }
        return {
            "namespace": graph.namespace,
            "relationships": len(index),
            "entities": entities,
            "by_type": index.counts_by_type(),
            "degree": degree,
            "schema": graph.schema.document if graph.schema else None,
        }

    def _record(self, graph: Graph, key: RelationshipKey) -> dict[str, Any]:
        rel = graph.get(key)
        return rel.to_dict() if rel is not None else _key_dict(key)

    # -- replies -------------------------------------------------------------------------------

    def _ok(self, msg: Received, namespace: str, command: Inbound, outcome: Outcome) -> Reply:
        now = self.clock()
        source = SourceRef(topic=msg.topic, partition=msg.partition, offset=msg.offset)
        offset = msg.offset if msg.spec is RELATIONSHIPS else self.applied.get(msg.partition)
        action = getattr(command, "action", "execute")
        result = Result(
            request_id=command.request_id,
            namespace=namespace,
            action=action,
            status="ok",
            output=outcome.output,
            offset=offset,
            source=source,
            processed_at=now,
        )
        reply = Reply(msg, [result_message(result)], namespace=namespace, result=result)
        for event in outcome.events:
            reply.outbound.append(
                command_event_message(
                    event.type, namespace, now, command.request_id, command.principal, event.data
                )
            )
        return reply

    def _error(
        self,
        msg: Received,
        namespace: str,
        request_id: str | None,
        action: str | None,
        data: dict[str, Any],
        exc: NexusError,
        pattern_id: str | None = None,
    ) -> Reply:
        result, outbound = failure(
            msg,
            exc,
            namespace=namespace,
            request_id=request_id,
            principal=data.get("principal") if isinstance(data.get("principal"), str) else None,
            action=action,
            pattern_id=pattern_id,
            offset=msg.offset if msg.spec is RELATIONSHIPS else self.applied.get(msg.partition),
            now=self.clock(),
        )
        reply = Reply(msg, outbound, namespace=namespace, result=result)
        if request_id is not None and exc.code not in _NOT_FINAL and msg.spec is not QUERIES:
            reply.remember = result  # ours or the store's is not remembered: a retry runs again
        return reply

    def _deadletter(self, msg: Received, code: str, reason: str) -> Reply:
        log.warning("dead-lettered %s[%d]@%d: %s: %s", msg.topic, msg.partition, msg.offset, code, reason)
        return Reply(msg, [deadletter_message(msg, code, reason)])


def _who(request: Inbound) -> dict[str, Any]:
    return {"principal": request.principal}


def _types(names: list[str] | None) -> list[RelationType] | None:
    return None if names is None else [parse_type(n) for n in names]


def _key_dict(key: RelationshipKey) -> dict[str, str]:
    return {"source": key.source, "type": key.type.value, "target": key.target}


def _namespace_of(key: bytes | None) -> tuple[str, str | None]:
    if not key:
        return DEFAULT_NAMESPACE, None
    try:
        namespace = key.decode("utf-8")
    except UnicodeDecodeError:
        return DEFAULT_NAMESPACE, "message key is not UTF-8; the key is the namespace"
    if not NAMESPACE_PATTERN.fullmatch(namespace):
        return DEFAULT_NAMESPACE, (
            f"message key {namespace[:140]!r} is not a namespace: use 1-128 characters "
            "of letters, digits and . _ : -"
        )
    return namespace, None


__all__ = ["Deferred", "ExportPlan", "Limits", "NamespaceService", "Received", "Reply", "canonical_key"]
