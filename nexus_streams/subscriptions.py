"""Standing queries in the namespace actor, without Faust (docs/standing-queries.md).

The namespace service keeps each namespace's subscriptions here, with the last answer of each.
After a committed change `after_change` evaluates the subscriptions the change can affect
(domain/standing.py) and returns what to publish and what to store; the service puts both in the
reply of the change, so the new answers are written in the same state cycle as the change, and a
redelivery after a crash publishes the same events from the journal, never a second time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nexus_streams.codec import encode
from nexus_streams.domain import templates
from nexus_streams.domain.errors import (
    NexusError,
    ResourceLimit,
    SubscriptionExists,
    ValidationFailed,
)
from nexus_streams.domain.graph import Change
from nexus_streams.domain.index import Direction, GraphIndex
from nexus_streams.domain.standing import (
    Answer,
    Evaluation,
    StandingQuery,
    Watches,
    evaluate,
    parse_types,
    touches_of,
)
from nexus_streams.messages import (
    Event,
    StandingDetectCycles,
    StandingFindPath,
    StandingNeighbors,
    Subscribe,
    TriggerExecution,
)
from nexus_streams.replies import Outbound, event_message
from nexus_streams.topics import EXECUTIONS, Header

MATCHED = "standing_query_matched"
UNMATCHED = "standing_query_unmatched"
#: triggers of one subscription rendered but not yet run (the oldest dropped past it)
MAX_PENDING_TRIGGERS = 16
#: (namespace, subscription_id, state or None to delete): what a reply stores
Write = tuple[str, str, dict[str, Any] | None]


@dataclass(frozen=True, slots=True)
class SubscriptionLimits:
    per_namespace: int = 1000
    visit_budget: int = 50_000
    max_watched: int = 10_000
    #: one evaluation at subscribe (NEXUS_VISIT_LIMIT)
    visit_limit: int = 25_000


@dataclass(slots=True)
class Subscription:
    id: str
    namespace: str
    #: the query as subscribed (its wire form), and its domain form
    definition: dict[str, Any]
    query: StandingQuery
    principal: str
    #: the subscriber's scopes when it subscribed (None: authentication was off); a trigger runs
    #: with them
    scopes: list[str] | None
    #: the offset of the subscribe message: match ids of a new subscription of the same id differ
    generation: int
    answer: Answer
    on_match: dict[str, Any] | None = None
    matches: int = 0
    #: its last evaluation did not fit the budget: its answer may be out of date
    stale: bool = False
    #: match id -> the execution to run (pattern_id, version, input)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.definition,
            "on_match": self.on_match,
            "principal": self.principal,
            "scopes": self.scopes,
            "generation": self.generation,
            "answer": self.answer.to_dict(),
            "matches": self.matches,
            "stale": self.stale,
            "pending": self.pending,
        }

    @classmethod
    def from_dict(cls, namespace: str, subscription_id: str, data: dict[str, Any]) -> Subscription:
        definition = data["query"]
        return cls(
            id=subscription_id,
            namespace=namespace,
            definition=definition,
            query=standing_query(definition),
            principal=data["principal"],
            scopes=data.get("scopes"),
            generation=int(data["generation"]),
            answer=Answer.from_dict(data["answer"]),
            on_match=data.get("on_match"),
            matches=int(data.get("matches", 0)),
            stale=bool(data.get("stale", False)),
            pending=dict(data.get("pending") or {}),
        )

    def listing(self) -> dict[str, Any]:
        return {
            "subscription_id": self.id,
            "query": self.definition,
            "on_match": self.on_match,
            "principal": self.principal,
            "matched": self.answer.matched,
            "witness": self.answer.witness,
            "matches": self.matches,
            "stale": self.stale,
        }


def standing_query(definition: dict[str, Any]) -> StandingQuery:
    """The domain form of a subscription's `query` (its wire form, validated)."""
    action = definition["action"]
    if action == "find_path":
        fp = StandingFindPath.model_validate(definition)
        return StandingQuery(
            "find_path",
            source=fp.source,
            target=fp.target,
            max_depth=fp.max_depth,
            direction=Direction(fp.direction),
            types=parse_types(fp.types),
        )
    if action == "detect_cycles":
        dc = StandingDetectCycles.model_validate(definition)
        return StandingQuery("detect_cycles", entity=dc.entity, types=parse_types(dc.types))
    nb = StandingNeighbors.model_validate(definition)
    return StandingQuery(
        "neighbors",
        entity=nb.entity,
        direction=Direction(nb.direction),
        types=parse_types(nb.types),
        over=nb.count_over,
        under=nb.count_under,
    )


@dataclass(frozen=True, slots=True)
class Cause:
    """The committed change that asks for evaluations: where it was read, whose request."""

    topic: str
    partition: int
    offset: int
    request_id: str | None
    #: the change is a trigger's execution: its matches run no further triggers
    from_trigger: bool = False


@dataclass(slots=True)
class StandingStats:
    """What one change cost its namespace's standing queries (metrics)."""

    evaluations: int = 0
    matched: int = 0
    unmatched: int = 0
    over_budget: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class AfterChange:
    outbound: list[Outbound] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    stats: StandingStats = field(default_factory=StandingStats)


class Subscriptions:
    """Every namespace's subscriptions and watches on this worker."""

    def __init__(
        self,
        limits: SubscriptionLimits | None = None,
        monotonic: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.limits = limits or SubscriptionLimits()
        self.monotonic = monotonic
        self.by_namespace: dict[str, dict[str, Subscription]] = {}
        self.watches: dict[str, Watches] = {}

    def __len__(self) -> int:
        return sum(len(subs) for subs in self.by_namespace.values())

    def reset(self) -> None:
        self.by_namespace.clear()
        self.watches.clear()

    def of(self, namespace: str) -> dict[str, Subscription]:
        return self.by_namespace.get(namespace, {})

    # -- recovery ------------------------------------------------------------------------------

    def load(self, namespace: str, subscription_id: str, data: dict[str, Any]) -> None:
        sub = Subscription.from_dict(namespace, subscription_id, data)
        self.by_namespace.setdefault(namespace, {})[subscription_id] = sub

    def index(self, index_of: Callable[[str], GraphIndex]) -> None:
        """After loading: what each subscription watches, from the loaded graphs. Its stored
        answer stands; one that this evaluation contradicts (or cannot make) is evaluated on
        every change until an evaluation agrees or publishes the change."""
        for namespace, subs in self.by_namespace.items():
            watches = self.watches[namespace] = Watches()
            index = index_of(namespace)
            for sub in subs.values():
                ev = self._evaluate(index, sub.query, self.limits.visit_limit)
                answer = ev.answer
                if sub.stale or answer is None or answer.matched != sub.answer.matched:
                    ev = Evaluation(None, None, ev.visits)
                watches.watch(sub.id, sub.query, ev)

    # -- requests ------------------------------------------------------------------------------

    def subscribe(
        self,
        index: GraphIndex,
        namespace: str,
        command: Subscribe,
        principal: str,
        scopes: list[str] | None,
        offset: int,
    ) -> tuple[dict[str, Any], Write | None]:
        """The subscribe result's output, and the state to store (None: nothing changed)."""
        definition = command.query.model_dump(mode="json", exclude_none=True)
        on_match = command.on_match.model_dump(mode="json", exclude_none=True) if command.on_match else None
        subs = self.by_namespace.get(namespace, {})
        existing = subs.get(command.subscription_id)
        if existing is not None:
            if scopes is not None and existing.principal != principal:  # authenticated: not yours
                raise SubscriptionExists(
                    f"subscription {command.subscription_id!r} exists and is another principal's; "
                    "choose another subscription_id",
                    subscription_id=command.subscription_id,
                )
            if existing.definition != definition or existing.on_match != on_match:
                raise SubscriptionExists(
                    f"subscription {command.subscription_id!r} exists with another query or on_match; "
                    "unsubscribe it first or choose another subscription_id",
                    subscription_id=command.subscription_id,
                )
            return self._subscribed(existing, created=False, count=len(subs)), None
        if len(subs) >= self.limits.per_namespace:
            raise ResourceLimit(
                f"namespace {namespace!r} has {len(subs)} subscriptions; the limit is "
                f"{self.limits.per_namespace} (NEXUS_SUBSCRIPTIONS_PER_NAMESPACE)",
                count=len(subs),
                limit=self.limits.per_namespace,
            )
        query = standing_query(definition)
        query.check()
        if on_match is not None:
            _check_trigger_input(on_match.get("input", {}))
        ev = self._evaluate(index, query, self.limits.visit_limit)
        if ev.answer is None:
            raise ResourceLimit(
                f"the query visits more than {self.limits.visit_limit} entities (NEXUS_VISIT_LIMIT): "
                "ask with a smaller max_depth or fewer types",
                limit=self.limits.visit_limit,
            )
        sub = Subscription(
            command.subscription_id,
            namespace,
            definition,
            query,
            principal,
            scopes,
            offset,
            ev.answer,
            on_match,
        )
        self.by_namespace.setdefault(namespace, {})[sub.id] = sub
        self.watches.setdefault(namespace, Watches()).watch(sub.id, query, ev)
        output = self._subscribed(sub, created=True, count=len(self.by_namespace[namespace]))
        return output, (namespace, sub.id, sub.to_dict())

    @staticmethod
    def _subscribed(sub: Subscription, created: bool, count: int) -> dict[str, Any]:
        return {
            "subscription_id": sub.id,
            "created": created,
            "matched": sub.answer.matched,
            "witness": sub.answer.witness,
            "subscriptions": count,
        }

    def unsubscribe(self, namespace: str, subscription_id: str) -> tuple[dict[str, Any], Write | None]:
        subs = self.by_namespace.get(namespace)
        sub = subs.pop(subscription_id, None) if subs else None
        if sub is None:
            return {"subscription_id": subscription_id, "removed": False}, None
        self.watches[namespace].unwatch(subscription_id)
        assert subs is not None
        if not subs:
            del self.by_namespace[namespace]
            del self.watches[namespace]
        return {"subscription_id": subscription_id, "removed": True}, (namespace, subscription_id, None)

    def listing(self, namespace: str) -> dict[str, Any]:
        subs = self.by_namespace.get(namespace, {})
        return {
            "count": len(subs),
            "limit": self.limits.per_namespace,
            "subscriptions": [subs[sid].listing() for sid in sorted(subs)],
        }

    def take_trigger(
        self, namespace: str, subscription_id: str, match_id: str
    ) -> tuple[Subscription, dict[str, Any], Write] | None:
        """The pending trigger `match_id` of the subscription, removed from it (None: it has none)."""
        sub = self.of(namespace).get(subscription_id)
        if sub is None or match_id not in sub.pending:
            return None
        run = sub.pending.pop(match_id)
        return sub, run, (namespace, sub.id, sub.to_dict())

    # -- after a change ------------------------------------------------------------------------

    def after_change(
        self, index: GraphIndex, namespace: str, changes: list[Change], cause: Cause, now: datetime
    ) -> AfterChange | None:
        """Evaluate what `changes` can affect; None when the namespace has no subscription."""
        watches = self.watches.get(namespace)
        if not watches:
            return None
        started = self.monotonic()
        out = AfterChange()
        stats = out.stats
        subs = self.by_namespace[namespace]
        budget = self.limits.visit_budget
        for subscription_id in watches.affected(touches_of(changes)):
            sub = subs[subscription_id]
            ev = self._evaluate(index, sub.query, budget) if budget > 0 else Evaluation(None, None, 0)
            budget -= ev.visits
            stats.evaluations += ev.answer is not None or ev.visits > 0
            watches.watch(subscription_id, sub.query, ev)
            answer = ev.answer
            if answer is None:
                stats.over_budget += 1
                if not sub.stale:
                    sub.stale = True
                    out.writes.append((namespace, sub.id, sub.to_dict()))
                continue
            before, sub.answer = sub.answer, answer
            was_stale, sub.stale = sub.stale, False
            if answer.matched != before.matched:
                self._changed(sub, cause, now, out)
            elif was_stale or answer.witness != before.witness:
                out.writes.append((namespace, sub.id, sub.to_dict()))
        stats.seconds = self.monotonic() - started
        return out

    def _changed(self, sub: Subscription, cause: Cause, now: datetime, out: AfterChange) -> None:
        answer = sub.answer
        data: dict[str, Any] = {
            "subscription_id": sub.id,
            "query": sub.definition,
            "witness": answer.witness,
            "offset": cause.offset,
            "source": {"topic": cause.topic, "partition": cause.partition, "offset": cause.offset},
        }
        trigger: Outbound | None = None
        if answer.matched:
            sub.matches += 1
            match_id = f"standing:{sub.id}:{sub.generation}:{sub.matches}"
            data["match_id"] = match_id
            out.stats.matched += 1
            if sub.on_match is not None:
                trigger, data["trigger"] = self._trigger(sub, match_id, dict(data), cause)
        else:
            out.stats.unmatched += 1
        event = Event(
            type=MATCHED if answer.matched else UNMATCHED,
            namespace=sub.namespace,
            occurred_at=now,
            request_id=cause.request_id,
            principal=sub.principal,
            data=data,
        )
        message = event_message(event)
        message.headers[Header.SUBSCRIPTION_ID.value] = sub.id.encode()
        out.outbound.append(message)  # before the trigger: the match is seen before its execution
        if trigger is not None:
            out.outbound.append(trigger)
        out.writes.append((sub.namespace, sub.id, sub.to_dict()))

    def _trigger(
        self, sub: Subscription, match_id: str, match: dict[str, Any], cause: Cause
    ) -> tuple[Outbound | None, dict[str, Any]]:
        """The trigger message of a match, and what the match event says of it."""
        assert sub.on_match is not None
        pattern_id = sub.on_match["pattern_id"]
        if cause.from_trigger:
            return None, {"skipped": "the change was made by a trigger: triggers do not cascade"}
        scope = templates.Scope(
            input=match,
            context={"namespace": sub.namespace, "principal": sub.principal, "request_id": match_id},
        )
        try:
            rendered = templates.resolve(sub.on_match.get("input", {}), scope)
        except NexusError as exc:
            return None, {"error": {"code": exc.code.value, "message": exc.message, "details": exc.details}}
        pending = sub.pending
        while len(pending) >= MAX_PENDING_TRIGGERS:
            pending.pop(next(iter(pending)))
        version = sub.on_match.get("version")
        pending[match_id] = {"pattern_id": pattern_id, "version": version, "input": rendered}
        message = TriggerExecution(
            request_id=match_id,
            principal=sub.principal,
            action="trigger",
            subscription_id=sub.id,
            pattern_id=pattern_id,
            version=sub.on_match.get("version"),
        )
        return Outbound(EXECUTIONS, sub.namespace.encode(), encode(message), {}), {
            "request_id": match_id,
            "pattern_id": pattern_id,
        }

    def _evaluate(self, index: GraphIndex, query: StandingQuery, visit_limit: int) -> Evaluation:
        return evaluate(
            index,
            query,
            visit_limit=min(visit_limit, self.limits.visit_limit),
            max_watched=self.limits.max_watched,
        )


def _check_trigger_input(tree: Any) -> None:
    found = templates.scan(tree)
    if found.errors:
        where, message = found.errors[0]
        raise ValidationFailed(f"on_match.input: {message}", field="on_match.input")
    for _, reference in found.references:
        if reference.root == "steps":
            raise ValidationFailed(
                f"on_match.input: {reference} names a step; a trigger's input reads the match "
                "(`{{input.witness}}`, `{{input.match_id}}`, ...) and `{{context.namespace}}`",
                field="on_match.input",
            )


__all__ = ["Cause", "Subscription", "SubscriptionLimits", "Subscriptions"]
