"""Standing queries: the pure evaluation and affected-index (domain/standing.py), and the
namespace service's subscribe / change / event path (without Faust)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_streams.domain.graph import Put, Remove
from nexus_streams.domain.index import Direction, GraphIndex
from nexus_streams.domain.relationships import Relationship, RelationshipKey, RelationType, canonical_key
from nexus_streams.domain.standing import (
    Answer,
    StandingQuery,
    Touch,
    Watches,
    evaluate,
)
from nexus_streams.service import Limits, Reply
from nexus_streams.subscriptions import MATCHED, UNMATCHED
from nexus_streams.topics import EVENTS, EXECUTIONS, QUERIES, RESULTS, Header
from tests.unit.test_index import ENTITIES, index_of, random_keys
from tests.unit.test_service import NS, Worker, body, create, delete, only

OWNER, MEMBER, LINKED, PARENT, CHILD = (
    RelationType.OWNER,
    RelationType.MEMBER,
    RelationType.LINKED,
    RelationType.PARENT,
    RelationType.CHILD,
)
LIMIT = 10_000


def key(source: str, type_: RelationType, target: str) -> RelationshipKey:
    return canonical_key(source, type_, target)


def path_query(source: str = "e0", target: str = "e3", depth: int = 3, **kw: Any) -> StandingQuery:
    return StandingQuery("find_path", source=source, target=target, max_depth=depth, **kw)


def answer(index: GraphIndex, query: StandingQuery) -> Answer:
    ev = evaluate(index, query, visit_limit=LIMIT, max_watched=LIMIT)
    assert ev.answer is not None
    return ev.answer


# --------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize(
    ("edges", "query", "matched", "witness"),
    [
        ([], path_query(), False, None),
        (
            [key("e0", OWNER, "e1"), key("e1", OWNER, "e2"), key("e2", OWNER, "e3")],
            path_query(),
            True,
            {"path": ["e0", "e1", "e2", "e3"]},
        ),
        (  # 3 hops do not fit max_depth 2
            [key("e0", OWNER, "e1"), key("e1", OWNER, "e2"), key("e2", OWNER, "e3")],
            path_query(depth=2),
            False,
            None,
        ),
        (  # against the direction
            [key("e3", OWNER, "e0")],
            path_query(direction=Direction.OUT),
            False,
            None,
        ),
        ([key("e0", MEMBER, "e3")], path_query(types=(OWNER,)), False, None),
        (
            [key("e0", OWNER, "e1"), key("e1", OWNER, "e0")],
            StandingQuery("detect_cycles", entity="e0"),
            True,
            {"cycle": ["e0", "e1", "e0"]},
        ),
        ([key("e0", OWNER, "e1")], StandingQuery("detect_cycles", entity="e0"), False, None),
        (
            [key("e0", OWNER, "e1"), key("e0", OWNER, "e2")],
            StandingQuery("neighbors", entity="e0", over=1),
            True,
            {"count": 2},
        ),
        ([key("e0", OWNER, "e1")], StandingQuery("neighbors", entity="e0", over=1), False, {"count": 1}),
        ([key("e0", OWNER, "e1")], StandingQuery("neighbors", entity="e0", under=2), True, {"count": 1}),
    ],
)
def test_evaluate__answers_and_witness(
    edges: list[RelationshipKey], query: StandingQuery, matched: bool, witness: dict[str, Any] | None
) -> None:
    got = answer(index_of(edges), query)
    assert got.matched is matched
    if witness is None:
        assert got.witness is None
    else:
        assert got.witness is not None
        assert {k: got.witness[k] for k in witness} == witness


def test_evaluate__over_the_visit_limit__no_answer() -> None:
    edges = [key("e0", OWNER, f"x{i}") for i in range(50)]
    ev = evaluate(
        index_of(edges), StandingQuery("neighbors", entity="e0", over=10), visit_limit=20, max_watched=20
    )
    assert ev.answer is None


def test_evaluate__find_path_not_matched__watches_the_smaller_ball() -> None:
    # e0 has a wide neighbourhood, e3 a narrow one: the ball of e3 (depth 2) is watched
    edges = [key("e0", OWNER, f"x{i}") for i in range(20)] + [key("e3", OWNER, "e4")]
    ev = evaluate(index_of(edges), path_query(), visit_limit=LIMIT, max_watched=LIMIT)
    assert ev.watched == frozenset({"e3", "e4"})


def test_evaluate__both_balls_over_max_watched__wide() -> None:
    edges = [key("e0", OWNER, f"x{i}") for i in range(20)] + [key("e3", OWNER, f"y{i}") for i in range(20)]
    ev = evaluate(index_of(edges), path_query(), visit_limit=LIMIT, max_watched=5)
    assert ev.answer == Answer(False)
    assert ev.watched is None


# --------------------------------------------------------------------------- what a change affects


def watches_of(index: GraphIndex, queries: dict[str, StandingQuery], max_watched: int = LIMIT) -> Watches:
    watches = Watches()
    for sid, query in queries.items():
        watches.watch(sid, query, evaluate(index, query, visit_limit=LIMIT, max_watched=max_watched))
    return watches


def test_affected__unrelated_change__none() -> None:
    index = index_of([key("e0", OWNER, "e1")])
    watches = watches_of(index, {"p": path_query("e0", "e3", 2)})
    assert watches.affected([Touch(key("e5", OWNER, "e6"), added=True)]) == []
    # e3 has no relationship: its ball ({e3}) is smaller than e0's, and only it is watched
    assert watches.affected([Touch(key("e1", OWNER, "e2"), added=True)]) == []
    assert watches.affected([Touch(key("e1", OWNER, "e3"), added=True)]) == ["p"]


def test_affected__matched_path__only_removing_its_witness() -> None:
    index = index_of([key("e0", OWNER, "e3"), key("e0", OWNER, "e1")])
    watches = watches_of(index, {"p": path_query()})
    assert watches.affected([Touch(key("e0", OWNER, "e1"), added=False)]) == []
    assert watches.affected([Touch(key("e0", OWNER, "e2"), added=True)]) == []
    assert watches.affected([Touch(key("e0", OWNER, "e3"), added=False)]) == ["p"]


def test_affected__type_not_followed__none() -> None:
    index = index_of([key("e0", OWNER, "e1")])
    watches = watches_of(index, {"p": path_query(types=(OWNER,))})
    assert watches.affected([Touch(key("e1", MEMBER, "e3"), added=True)]) == []
    assert watches.affected([Touch(key("e1", OWNER, "e3"), added=True)]) == ["p"]


def test_affected__stale__always() -> None:
    watches = Watches()
    query = path_query()
    from nexus_streams.domain.standing import Evaluation

    watches.watch("s", query, Evaluation(None, None, 0))
    assert watches.affected([Touch(key("e6", MEMBER, "e7"), added=True)]) == ["s"]
    watches.unwatch("s")
    assert watches.affected([Touch(key("e6", MEMBER, "e7"), added=True)]) == []
    assert not watches.by_entity and not watches.stale


_QUERIES: dict[str, StandingQuery] = {
    "p1": path_query("e0", "e3", 1),
    "p2": path_query("e0", "e3", 2),
    "p3": path_query("e1", "e4", 3, direction=Direction.OUT),
    "p4": path_query("e2", "e5", 2, direction=Direction.IN, types=(OWNER, CHILD)),
    "p5": path_query("e0", "e6", 3, types=(LINKED, MEMBER)),
    "c1": StandingQuery("detect_cycles", entity="e0"),
    "c2": StandingQuery("detect_cycles", entity="e3", types=(CHILD, OWNER)),
    "n1": StandingQuery("neighbors", entity="e1", over=2),
    "n2": StandingQuery("neighbors", entity="e2", under=2, direction=Direction.OUT, types=(PARENT,)),
}
_change = st.tuples(
    st.booleans(),
    st.sampled_from(ENTITIES),
    st.sampled_from(list(RelationType)),
    st.sampled_from(ENTITIES),
).filter(lambda c: c[1] != c[3])


@settings(max_examples=150, deadline=None)
@given(
    random_keys(), st.lists(st.lists(_change, min_size=1, max_size=3), min_size=1, max_size=8), st.booleans()
)
def test_affected__sound__every_changed_answer_was_evaluated(
    keys: list[RelationshipKey], changes: list[list[tuple[bool, str, RelationType, str]]], narrow: bool
) -> None:
    """Against brute force: after any sequence of batches, a subscription whose answer changed is
    among those `affected` named (so never a missed event), and the kept answers stay exact."""
    index = index_of(keys)
    max_watched = 3 if narrow else LIMIT
    watches = watches_of(index, _QUERIES, max_watched)
    answers = {sid: answer(index, q) for sid, q in _QUERIES.items()}
    for batch in changes:
        touches = []
        for add, source, type_, target in batch:
            k = key(source, type_, target)
            if add and index.add(k):
                touches.append(Touch(k, added=True))
            elif not add and index.remove(k):
                touches.append(Touch(k, added=False))
        affected = set(watches.affected(touches))
        for sid, query in _QUERIES.items():
            now = answer(index, query)
            if now.matched != answers[sid].matched:
                assert sid in affected, (sid, batch)
            if sid in affected:
                watches.watch(sid, query, evaluate(index, query, visit_limit=LIMIT, max_watched=max_watched))
                answers[sid] = now


# --------------------------------------------------------------------------- the service


class SubscribingWorker(Worker):
    """Worker with the subscription state kept as the actor keeps it."""

    def __init__(self, limits: Limits | None = None) -> None:
        super().__init__(limits)
        self.subscriptions_table: dict[tuple[str, str], dict[str, Any]] = {}

    def complete(self, reply: Reply) -> None:
        for namespace, sid, state in reply.subscriptions:
            if state is None:
                self.subscriptions_table.pop((namespace, sid), None)
            else:
                self.subscriptions_table[(namespace, sid)] = json.loads(json.dumps(state))
        super().complete(reply)

    def rebuild(self) -> None:
        super().rebuild()
        for (namespace, sid), state in self.subscriptions_table.items():
            self.service.load_subscription(namespace, sid, state)
        self.service.loaded()

    def subscribe(self, sid: str, query: dict[str, Any], **kw: Any) -> dict[str, Any]:
        reply = self.one(
            {
                "request_id": f"s-{sid}",
                "principal": "alice",
                "action": "subscribe",
                "subscription_id": sid,
                "query": query,
                **kw,
            },
            spec=QUERIES,
        )
        return body(only(reply, RESULTS))

    def standing_events(self) -> list[dict[str, Any]]:
        return [
            {**body(o), "_header": o.headers.get(Header.SUBSCRIPTION_ID.value)}
            for o in self.published
            if o.spec is EVENTS and body(o)["type"] in (MATCHED, UNMATCHED)
        ]


@pytest.fixture
def sw() -> SubscribingWorker:
    return SubscribingWorker()


PATH = {"action": "find_path", "source": "user:1", "target": "user:3", "max_depth": 2}


def test_service__subscribe__initial_answer_and_stored(sw: SubscribingWorker) -> None:
    result = sw.subscribe("s1", PATH)
    assert result["status"] == "ok"
    assert result["output"] == {
        "subscription_id": "s1",
        "created": True,
        "matched": False,
        "witness": None,
        "subscriptions": 1,
    }
    assert (NS, "s1") in sw.subscriptions_table
    again = sw.subscribe("s1", PATH)
    assert again["output"]["created"] is False
    other = sw.subscribe("s1", {**PATH, "max_depth": 3})
    assert other["error"]["code"] == "subscription_exists"


def test_service__change_matches_then_unmatches__one_event_each_with_offset(sw: SubscribingWorker) -> None:
    sw.subscribe("s1", PATH)
    sw.ok(create("user:1", "member", "group:1", request_id="r1"))
    assert sw.standing_events() == []  # half a path
    reply = sw.one(create("group:1", "member", "user:3", request_id="r2"))
    events = sw.standing_events()
    assert len(events) == 1
    event = events[0]
    assert event["type"] == MATCHED and event["_header"] == b"s1"
    assert event["data"]["offset"] == reply.message.offset  # type: ignore[union-attr]
    assert event["data"]["witness"]["path"] == ["user:1", "group:1", "user:3"]
    assert event["data"]["match_id"] == f"standing:s1:{sw.offsets[('queries', 3)]}:1"
    sw.ok(create("user:1", "owner", "wallet:9", request_id="r3"))  # unrelated: nothing
    assert len(sw.standing_events()) == 1
    removal = sw.one(delete("group:1", "member", "user:3", request_id="r4"))
    events = sw.standing_events()
    assert [e["type"] for e in events] == [MATCHED, UNMATCHED]
    assert events[1]["data"]["offset"] == removal.message.offset  # type: ignore[union-attr]


def test_service__rebuild__answer_kept__no_duplicate_and_no_lost_event(sw: SubscribingWorker) -> None:
    sw.subscribe("s1", PATH)
    sw.ok(create("user:1", "member", "group:1", request_id="r1"))
    sw.ok(create("group:1", "member", "user:3", request_id="r2"))
    assert len(sw.standing_events()) == 1
    sw.rebuild()
    sw.ok(create("user:1", "member", "user:3", request_id="r3"))  # a second path: still matched
    assert len(sw.standing_events()) == 1
    sw.ok(delete("group:1", "member", "user:3", request_id="r4"))  # the witness goes, another path stays
    assert len(sw.standing_events()) == 1
    sw.ok(delete("user:1", "member", "user:3", request_id="r5"))
    assert [e["type"] for e in sw.standing_events()] == [MATCHED, UNMATCHED]


def test_service__unsubscribe_and_list(sw: SubscribingWorker) -> None:
    sw.subscribe("s1", PATH)
    sw.subscribe("s2", {"action": "neighbors", "entity": "user:1", "count_over": 0})
    listed = sw.one({"request_id": "l", "principal": "a", "action": "list_subscriptions"}, spec=QUERIES)
    output = body(only(listed, RESULTS))["output"]
    assert [s["subscription_id"] for s in output["subscriptions"]] == ["s1", "s2"]
    gone = sw.one(
        {"request_id": "u", "principal": "a", "action": "unsubscribe", "subscription_id": "s1"}, spec=QUERIES
    )
    assert body(only(gone, RESULTS))["output"] == {"subscription_id": "s1", "removed": True}
    assert (NS, "s1") not in sw.subscriptions_table
    sw.ok(create("user:1", "member", "group:1", request_id="r1"))
    sw.ok(create("group:1", "member", "user:3", request_id="r2"))
    assert [e["data"]["subscription_id"] for e in sw.standing_events()] == ["s2"]


def test_service__subscriptions_per_namespace__resource_limit() -> None:
    sw = SubscribingWorker(Limits(subscriptions_per_namespace=2))
    sw.subscribe("a", PATH)
    sw.subscribe("b", PATH)
    third = sw.subscribe("c", PATH)
    assert third["error"]["code"] == "resource_limit"
    assert third["error"]["details"]["limit"] == 2


def test_service__visit_budget__over_budget_answered_on_a_later_change() -> None:
    sw = SubscribingWorker(Limits(subscription_visit_budget=100, visit_limit=100))
    for i in range(3):
        sw.subscribe(f"n{i}", {"action": "neighbors", "entity": "hub:1", "count_over": 60})
    sw.ok(
        {
            "request_id": "b",
            "principal": "a",
            "action": "batch",
            "commands": [
                {"action": "create", "type": "owner", "source": "hub:1", "target": f"x:{i}"}
                for i in range(61)
            ],
        }
    )
    # 62 visits each: the first fits the budget of 100, the others wait
    assert [e["data"]["subscription_id"] for e in sw.standing_events()] == ["n0"]
    listed = sw.one({"request_id": "l", "principal": "a", "action": "list_subscriptions"}, spec=QUERIES)
    stale = {s["subscription_id"]: s["stale"] for s in body(only(listed, RESULTS))["output"]["subscriptions"]}
    assert stale == {"n0": False, "n1": True, "n2": True}
    sw.ok(create("other:1", "owner", "other:2", request_id="r2"))
    sw.ok(create("other:1", "owner", "other:3", request_id="r3"))
    assert sorted(e["data"]["subscription_id"] for e in sw.standing_events()) == ["n0", "n1", "n2"]


def test_service__on_match__trigger_message_once_and_runs_pending_input(sw: SubscribingWorker) -> None:
    sw.subscribe(
        "t1",
        PATH,
        on_match={
            "pattern_id": "notify",
            "input": {"who": "{{input.witness.path.0}}", "id": "{{input.match_id}}"},
        },
    )
    sw.ok(create("user:1", "member", "user:3", request_id="r1"))
    triggers = [o for o in sw.published if o.spec is EXECUTIONS]
    assert len(triggers) == 1
    trigger = json.loads(triggers[0].value)
    assert trigger["action"] == "trigger" and trigger["subscription_id"] == "t1"
    pending = sw.subscriptions_table[(NS, "t1")]["pending"]
    assert pending == {
        trigger["request_id"]: {
            "pattern_id": "notify",
            "version": None,
            "input": {"who": "user:1", "id": trigger["request_id"]},
        }
    }
    # the worker's trigger runs (here: the pattern is not in the lookup, so not_found), once
    ran = sw.one(trigger, spec=EXECUTIONS)
    assert body(only(ran, RESULTS))["request_id"] == trigger["request_id"]
    assert sw.subscriptions_table[(NS, "t1")]["pending"] == {}
    again = sw.one(trigger, spec=EXECUTIONS)  # a duplicate: the first result, nothing runs
    assert body(only(again, RESULTS)) == body(only(ran, RESULTS))
    forged = sw.one({**trigger, "request_id": "standing:t1:0:99"}, spec=EXECUTIONS)
    assert body(only(forged, RESULTS))["error"]["code"] == "not_found"


def test_service__relationship_change__evaluates_only_what_it_can_affect(sw: SubscribingWorker) -> None:
    for i in range(20):
        sw.subscribe(f"p{i}", {"action": "find_path", "source": f"a:{i}", "target": f"b:{i}", "max_depth": 2})
    reply = sw.one(create("a:7", "owner", "c:1", request_id="r1"))
    assert reply.standing is not None and reply.standing.evaluations == 1
    reply = sw.one(create("z:1", "owner", "z:2", request_id="r2"))
    assert reply.standing is not None and reply.standing.evaluations == 0


def test_relationship_key_of_put_and_remove() -> None:
    rel = Relationship("ns", "a", OWNER, "b")
    from nexus_streams.domain.standing import touches_of

    assert [t.added for t in touches_of([Put(rel), Remove(rel)])] == [True, False]
