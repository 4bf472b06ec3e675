"""Properties of the relationship commands, driven through NamespaceService.handle.

Random command sequences over a handful of entities (so that duplicates, self-relationships,
not_found, version conflicts, schema violations and hierarchy cycles come up often) run through
the in-process `Worker` of tests/unit/test_service.py, which makes every reply durable as the
Faust agent does:

- a request id sent again is answered with its first result and does nothing else;
- a batch with a failing command changes nothing and names the command that failed; the commands
  before it, batched, do exactly what they do one by one;
- the parent/child hierarchy stays acyclic under any sequence of commands, and every create
  refused with `cycle_detected` names the cycle it would have closed.
"""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any, TypeVar

import networkx as nx
from hypothesis import event, given, settings
from hypothesis import strategies as st

from nexus_streams.domain.relationships import RelationshipKey, RelationType, canonical_key
from nexus_streams.topics import RESULTS
from tests.unit.test_graph import _model_cycle
from tests.unit.test_service import (
    NS,
    PARTITION,
    Worker,
    assert_error,
    command,
    events_of,
    offset_of,
    only,
    result_of,
    specs,
    step,
)

T = TypeVar("T")
Body = dict[str, Any]
"""A command without request_id and principal: a batch step, or a whole command's fields."""

#: kinds for the schemas, one entity without a kind
ENTITIES = ["user:1", "user:2", "group:1", "org:1", "x"]
#: refused by the service with invalid_entity_id (not by the message schema)
BAD_ENTITY = "bad id"
TYPES = [t.value for t in RelationType]  # owner, member, linked, parent, child
UNKNOWN_TYPE = "friend"
SCHEMAS: list[dict[str, list[str]] | None] = [
    {"member": ["user -> group"], "owner": ["user -> *"]},
    {"child": ["group -> org", "user -> group"], "linked": ["user -> user"]},
    None,
]


def request(body: Body, request_id: str) -> dict[str, Any]:
    """The message for `body` under `request_id`."""
    return command(body["action"], request_id, **{k: v for k, v in body.items() if k != "action"})


def batch_of(steps: list[Body]) -> Body:
    return {"action": "batch", "commands": steps}


def creates(entities: list[str], types: list[str]) -> st.SearchStrategy[Body]:
    """create, with a little metadata."""
    entity = st.sampled_from(entities)
    metadata = st.fixed_dictionaries({"n": st.integers(0, 2)})
    return st.builds(
        lambda s, t, d, m: step("create", s, t, d, metadata=m),
        entity,
        st.sampled_from(types),
        entity,
        metadata,
    )


def step_bodies(entities: list[str], types: list[str]) -> st.SearchStrategy[Body]:
    """create / update (with or without expected_version) / delete / delete_entity."""
    entity = st.sampled_from(entities)
    type_ = st.sampled_from(types)
    metadata = st.fixed_dictionaries({"n": st.integers(0, 2)})
    expected_version = st.one_of(st.none(), st.integers(1, 3))
    return st.one_of(
        creates(entities, types),
        st.builds(
            lambda s, t, d, m, v: (
                step("update", s, t, d, metadata=m) | ({} if v is None else {"expected_version": v})
            ),
            entity,
            type_,
            entity,
            metadata,
            expected_version,
        ),
        st.builds(lambda s, t, d: step("delete", s, t, d), entity, type_, entity),
        entity.map(lambda e: {"action": "delete_entity", "entity": e}),
    )


#: every step of a batch is valid as a message; some are refused by the service
valid_steps = step_bodies(ENTITIES + [BAD_ENTITY], TYPES + [UNKNOWN_TYPE])
set_schemas = st.sampled_from(SCHEMAS).map(lambda doc: {"action": "set_schema", "schema": doc})
#: messages that fail validation (validation_error), one command or inside a batch
malformed = st.sampled_from(
    [
        {"action": "update", "type": "owner", "source": "user:1", "target": "group:1"},  # no metadata
        {"action": "create", "type": "owner", "source": "user:1"},  # no target
        batch_of([]),
        batch_of([{"action": "delete_entity"}]),
    ]
)


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of the strategies, each `weight` times as likely (st.one_of counts each strategy once)."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(lambda s: s)


any_bodies = weighted(
    (4, valid_steps),
    (2, st.lists(valid_steps, min_size=1, max_size=4).map(batch_of)),
    (1, set_schemas),
    (1, malformed),
)


# --------------------------------------------------------------------------- 1. replays


#: ("new", body, None): a new request; ("replay", n, body or None): the n-th earlier request id
#: again (modulo their count), with its first body (None) or with another one
Move = tuple[str, Body | int, Body | None]
moves = st.lists(
    st.one_of(
        any_bodies.map(lambda b: ("new", b, None)),
        st.tuples(st.just("replay"), st.integers(0, 1000), st.one_of(st.none(), any_bodies)),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(moves)
def test_commands__property__replaying_a_request_id_is_a_no_op(steps: list[Move]) -> None:
    """A request id seen before, with its own body or any other, is answered with exactly the
    first result (same key, value and headers), publishes no event, makes no change and leaves
    the graph, records, schema and request log as they were. The replays are invisible: a twin
    worker that only gets the new requests (at the same offsets) answers them identically and
    ends in the same state."""
    worker, twin = Worker(), Worker()
    sent: list[tuple[str, Body, Any]] = []  # (request_id, body, first reply)
    for kind, what, other in steps:
        if kind == "replay" and not sent:
            continue
        if isinstance(what, dict):  # a new request
            request_id = f"r-{len(sent)}"
            reply = worker.one(request(what, request_id))
            twin_reply = twin.one(request(what, request_id), offset=offset_of(reply))
            assert reply.outbound == twin_reply.outbound
            assert reply.result is not None and reply.remember == reply.result
            sent.append((request_id, what, reply))
            continue
        request_id, body, first = sent[what % len(sent)]
        assert first.result is not None
        event(f"replay of an {first.result.status} result" + (" with another body" if other else ""))
        before = worker.graph_state()
        remembered = worker.log.get(NS, request_id)
        reply = worker.one(request(other or body, request_id))
        assert specs(reply) == ["results"]
        assert reply.outbound[0] == only(first, RESULTS)
        assert reply.result == first.result
        assert (reply.changes, reply.remember, reply.schema) == ([], None, None)
        assert reply.progress == (PARTITION, offset_of(reply))
        assert worker.graph_state() == before
        assert worker.log.get(NS, request_id) == remembered
    assert worker.graph_state() == twin.graph_state()


# --------------------------------------------------------------------------- 2. failed batches


#: a step the service refuses whatever the state: a self relationship, an unknown type, a bad id
failing_steps = st.one_of(
    st.builds(
        lambda a, e, t: step(a, e, t, e) | ({"metadata": {}} if a == "update" else {}),
        st.sampled_from(["create", "update", "delete"]),
        st.sampled_from(ENTITIES),
        st.sampled_from(TYPES),
    ),
    st.builds(
        lambda a, s, d: step(a, s, UNKNOWN_TYPE, d) | ({"metadata": {}} if a == "update" else {}),
        st.sampled_from(["create", "update", "delete"]),
        st.sampled_from(ENTITIES),
        st.sampled_from(ENTITIES),
    ),
    st.just({"action": "delete_entity", "entity": BAD_ENTITY}),
)
#: mostly creates, so that the starting state has something in it
setup_bodies = weighted((2, creates(ENTITIES, TYPES)), (1, any_bodies))


def _unordered(events: list[dict[str, Any]]) -> list[str]:
    """Events without their request id, sorted: the order of one delete_entity's events follows
    the index's adjacency lists, which a rolled-back batch may leave in another order."""
    return sorted(
        json.dumps({k: v for k, v in e.items() if k != "request_id"}, sort_keys=True) for e in events
    )


@settings(max_examples=250, deadline=None)
@given(
    setup=st.lists(setup_bodies, max_size=15),
    steps=st.lists(valid_steps, max_size=5),
    failing=failing_steps,
    at=st.integers(0, 5),
)
def test_commands__property__a_failed_batch_changes_nothing(
    setup: list[Body], steps: list[Body], failing: Body, at: int
) -> None:
    """From any state, a batch with a failing command is refused with the error that the first
    failing command gets on its own, plus `details.index` (its position) and a message naming it;
    it publishes only the `error` event, makes no change and leaves the graph as it was. The
    commands before the failing one, batched, answer what they answer one by one, publish their
    events (in command order) and end in the same state."""
    at = min(at, len(steps))
    commands = [*steps[:at], failing, *steps[at:]]
    worker, twin = Worker(), Worker()
    for n, body in enumerate(setup):
        worker.one(request(body, f"setup-{n}"))
        twin.one(request(body, f"setup-{n}"))
    before = worker.graph_state()
    assert twin.graph_state() == before

    reply = worker.one(request(batch_of(commands), "r-batch"))

    # the same commands one by one on the twin, up to the first that fails
    outputs: list[dict[str, Any]] = []
    events: list[list[dict[str, Any]]] = []
    for index, body in enumerate(commands):
        single = twin.one(request(body, f"single-{index}"))
        if result_of(single)["status"] == "error":
            expected = result_of(single)["error"]
            break
        outputs.append(result_of(single)["output"])
        events.append(events_of(single))
    else:
        raise AssertionError(f"{failing} did not fail on its own")
    assert index <= at
    event(f"fails at {'the inserted command' if index == at else 'an earlier command'}")

    error = assert_error(reply, expected["code"], "r-batch")  # the error event only, no change
    assert error["details"] == {"index": index, **expected.get("details", {})}
    assert error["message"] == (
        f"batch command {index} ({commands[index]['action']}) failed, nothing applied: {expected['message']}"
    )
    assert worker.graph_state() == before
    assert worker.service.graph(NS).savepoint() == 0
    assert worker.log.result(NS, "r-batch") == reply.result

    if index == 0:
        return
    prefix = worker.one(request(batch_of(commands[:index]), "r-prefix"))
    assert result_of(prefix)["status"] == "ok", result_of(prefix)
    assert result_of(prefix)["output"] == {"results": outputs, "count": index}
    published = events_of(prefix)
    assert len(published) == sum(len(e) for e in events)
    for expected_events in events:
        chunk, published = published[: len(expected_events)], published[len(expected_events) :]
        assert _unordered(chunk) == _unordered(expected_events)
    assert worker.graph_state() == twin.graph_state()


# --------------------------------------------------------------------------- 3. the hierarchy


HIERARCHY = ["a", "b", "c", "d"]
PARENT = RelationType.PARENT


def _hierarchy_steps() -> st.SearchStrategy[Body]:
    """Mostly creates of parent and child relationships; some owner and member ones, deletes and
    delete_entity. One in eight is a self relationship (which fails a batch)."""
    entity = st.sampled_from(HIERARCHY)
    ends = weighted(
        (7, st.permutations(HIERARCHY).map(lambda p: (p[0], p[1]))), (1, entity.map(lambda e: (e, e)))
    )
    type_ = st.sampled_from(["parent", "child"] * 3 + ["owner", "member"])
    return weighted(
        (6, st.builds(lambda e, t: step("create", e[0], t, e[1]), ends, type_)),
        (1, st.builds(lambda e, t: step("delete", e[0], t, e[1]), ends, type_)),
        (1, entity.map(lambda e: {"action": "delete_entity", "entity": e})),
    )


hierarchy_steps = _hierarchy_steps()
hierarchy_bodies = weighted(
    (2, hierarchy_steps), (1, st.lists(hierarchy_steps, min_size=1, max_size=4).map(batch_of))
)


def _keys(worker: Worker) -> set[RelationshipKey]:
    """The namespace's relationships, as the index holds them (always in canonical form)."""
    state = worker.graph_state()
    keys = set(state["relationships"])
    assert set(state["records"]) == keys
    assert all(k.type is not RelationType.CHILD for k in keys)
    return keys


def _edges(keys: set[RelationshipKey]) -> set[tuple[str, str]]:
    """The hierarchy: (parent, child) for every parent relationship (child ones are stored so)."""
    return {(k.source, k.target) for k in keys if k.type is PARENT}


def _model_step(keys: set[RelationshipKey], body: Body) -> tuple[str | None, set[RelationshipKey]]:
    """(the error code the step must get, or None; the relationships after it)."""
    if body["action"] == "delete_entity":
        return None, {k for k in keys if body["entity"] not in (k.source, k.target)}
    if body["source"] == body["target"]:
        return "self_relationship", keys
    key = canonical_key(body["source"], RelationType(body["type"]), body["target"])
    if body["action"] == "delete":
        return (None, keys - {key}) if key in keys else ("not_found", keys)
    if key in keys:
        return "duplicate_relationship", keys
    if _model_cycle(keys, key):
        return "cycle_detected", keys
    return None, keys | {key}


def _check_cycle(cycle: list[str], refused: Body, known: set[tuple[str, str]]) -> None:
    """`cycle` is [parent, child, ..., parent]: the refused relationship, then a path of the
    `known` parent relationships (those in place when it was refused) from its child back to its
    parent, visiting no entity twice."""
    key = canonical_key(refused["source"], RelationType(refused["type"]), refused["target"])
    assert cycle[0] == cycle[-1], cycle
    assert len(cycle) >= 3 and len(set(cycle[:-1])) == len(cycle) - 1, cycle
    assert (cycle[0], cycle[1]) == (key.source, key.target), (cycle, refused)
    assert set(pairwise(cycle[1:])) <= known, (cycle, known)


@settings(max_examples=300, deadline=None)
@given(st.lists(hierarchy_bodies, min_size=5, max_size=40))
def test_commands__property__the_hierarchy_stays_acyclic(bodies: list[Body]) -> None:
    """Whatever creates, deletes, delete_entity and batches of parent and child relationships
    (among owner and member ones) arrive, after every command the parent relationships form no
    cycle, and each is stored in its canonical parent form. A create refused with
    `cycle_detected` carries in `details.cycle` the cycle it would close (starting and ending at
    the same entity, through relationships that exist at that point). Every outcome is what a
    naive model of the relationships predicts, so refusing too much fails as well."""
    worker = Worker()
    model: set[RelationshipKey] = set()
    for n, body in enumerate(bodies):
        before = model
        steps = body["commands"] if body["action"] == "batch" else [body]
        expected_code, expected_index, at_failure = None, None, model
        for i, each in enumerate(steps):
            code, after = _model_step(model, each)
            if code is not None:
                # a batch's cycle may run through relationships its earlier commands made
                expected_code, expected_index, at_failure, model = code, i, model, before
                break
            model = after

        result = result_of(worker.one(request(body, f"r-{n}")))
        keys = _keys(worker)
        edges = _edges(keys)
        assert nx.is_directed_acyclic_graph(nx.DiGraph(list(edges))), sorted(edges)
        assert keys == model
        error = result.get("error") or {}
        assert error.get("code") == expected_code, (body, result)
        if body["action"] == "batch" and expected_index is not None:
            assert error["details"]["index"] == expected_index
        if expected_code == "cycle_detected":
            event("cycle_detected in a batch" if body["action"] == "batch" else "cycle_detected")
            assert expected_index is not None
            _check_cycle(error["details"]["cycle"], steps[expected_index], _edges(at_failure))
