"""Backups without a broker: the file format, `restore` in a batch, the export snapshot and its
chunks (streams/export.py on a memory store)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from nexus_streams.domain.backup import (
    NAMESPACE_FORMAT,
    Header,
    check_trailer,
    import_request_id,
    line_of,
    restore_command,
)
from nexus_streams.domain.errors import InvalidBackup, UnknownFormatVersion
from nexus_streams.domain.graph import Graph, MemoryRecords, plan_create, plan_expire
from nexus_streams.domain.relationships import RelationType
from nexus_streams.messages import Result
from nexus_streams.replies import Outbound, result_message
from nexus_streams.service import ExportPlan, Received
from nexus_streams.streams.export import ExportLimits, Exports, chunk_message, take_snapshot
from nexus_streams.streams.stores import MemoryStores, PartitionedMemoryStore
from nexus_streams.streams.writer import StateWriter
from nexus_streams.topics import QUERIES
from tests.unit.test_service import NOW, NOW_JSON, RESULTS, Worker, batch, body, only, step

RECORD_KEY = b"r\x1fns\x1fowner\x1fuser:1\x1fwallet:1"


@pytest.fixture
def worker() -> Worker:
    return Worker()


def header(**fields: Any) -> bytes:
    return json.dumps({"format": NAMESPACE_FORMAT, "format_version": 1, **fields}).encode()


@pytest.mark.parametrize(
    ("raw", "error", "match"),
    [
        (header(format_version=2), UnknownFormatVersion, "format_version 2"),
        (header(format_version="1"), UnknownFormatVersion, "format_version '1'"),
        (header(format="nexus-streams/patterns"), UnknownFormatVersion, "not 'nexus-streams/namespace'"),
        (b"not json", InvalidBackup, "not JSON"),
        (b"[1]", InvalidBackup, "not a JSON object"),
    ],
)
def test_header__refuses_what_it_cannot_read(raw: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match) as caught:
        Header.parse(raw, NAMESPACE_FORMAT)
    assert caught.value.code.value in ("unknown_format_version", "invalid_backup")  # type: ignore[attr-defined]


def test_header__digest_is_stable_and_names_the_file() -> None:
    one = Header.parse(header(offset=1) + b"\n", NAMESPACE_FORMAT)
    assert one.digest == Header.parse(header(offset=1), NAMESPACE_FORMAT).digest
    assert one.digest != Header.parse(header(offset=2), NAMESPACE_FORMAT).digest
    ids = {import_request_id(one.digest, ns, "1000:0") for ns in ("a", "b", "x" * 128)}
    assert len(ids) == 3 and all(len(i) <= 128 for i in ids)


def test_trailer__counts_must_agree() -> None:
    check_trailer({"end": NAMESPACE_FORMAT, "relationships": 2}, NAMESPACE_FORMAT, "relationships", 2, 4)
    with pytest.raises(InvalidBackup, match="says 3"):
        check_trailer({"end": NAMESPACE_FORMAT, "relationships": 3}, NAMESPACE_FORMAT, "relationships", 2, 4)


def test_line_of__a_stored_record_as_a_line_and_back_as_a_restore_command() -> None:
    record = orjson.dumps({"v": 3, "m": {"a": 1}, "c": NOW_JSON, "u": NOW_JSON})
    line = line_of(RECORD_KEY, record)
    assert line == {
        "type": "owner",
        "source": "user:1",
        "target": "wallet:1",
        "metadata": {"a": 1},
        "version": 3,
        "created_at": NOW_JSON,
        "updated_at": NOW_JSON,
        "expires_at": None,
    }
    command = restore_command(line, "f:2")
    assert command["action"] == "restore" and "expires_at" not in command
    with pytest.raises(InvalidBackup, match="f:3"):
        restore_command({"type": "owner"}, "f:3")


def restore(source: str, target: str, type_: str = "owner", **kw: Any) -> dict[str, Any]:
    return step(
        "restore",
        source,
        type_,
        target,
        **{"version": 4, "created_at": NOW_JSON, "updated_at": "2024-05-01T12:30:00Z", **kw},
    )


def test_restore__puts_back_version_and_timestamps_and_twice_changes_nothing(worker: Worker) -> None:
    worker.ok(batch(step("create", "user:1", "owner", "wallet:1", metadata={"old": True})))
    output = worker.ok(
        batch(
            restore("user:1", "wallet:1", metadata={"x": 1}),
            restore("g:2", "g:1", "child"),
            request_id="r-restore",
        )
    )
    assert [r["restored"] for r in output["results"]] == [True, True]
    got = body(
        only(
            worker.ask(
                {
                    "request_id": "q1",
                    "principal": "p",
                    "action": "get",
                    "type": "owner",
                    "source": "user:1",
                    "target": "wallet:1",
                }
            ),
            RESULTS,
        )
    )
    rel = got["output"]["relationship"]
    assert (rel["version"], rel["metadata"], rel["updated_at"]) == (4, {"x": 1}, "2024-05-01T12:30:00Z")
    again = worker.one(batch(restore("user:1", "wallet:1", metadata={"x": 1}), request_id="r-again"))
    assert again.changes == []
    assert [o for o in again.outbound if o.spec is not RESULTS] == []  # no events: nothing changed
    assert body(only(again, RESULTS))["output"]["results"][0]["restored"] is False


def test_restore__keeps_the_rules(worker: Worker) -> None:
    worker.ok(batch(step("create", "a:1", "parent", "a:2"), request_id="r-create"))
    result = body(only(worker.one(batch(restore("a:2", "a:1", "parent"), request_id="r-cycle")), RESULTS))
    assert result["error"]["code"] == "cycle_detected"


def test_expiry__two_relationships_expiring_at_the_same_instant() -> None:
    records = MemoryRecords()
    graph = Graph("ns", records)
    at = NOW + timedelta(seconds=1)
    plan_create(graph, "user:2", RelationType.OWNER, "wallet:1", {}, NOW, at)
    plan_create(graph, "user:1", RelationType.OWNER, "wallet:1", {}, NOW, at)
    records.apply(graph.commit())  # both in the expiry heap: compared by key on the same instant
    assert plan_expire(graph, at).output == {"expired": 2}


# --------------------------------------------------------------------------- the snapshot


class NoSend:
    async def __call__(self, builder: Any, partition: int) -> int:
        raise AssertionError("not flushed in these tests")


def stores_with(records: dict[bytes, bytes]) -> tuple[StateWriter, MemoryStores]:
    store = PartitionedMemoryStore.__new__(PartitionedMemoryStore)
    store.partitions = {0: dict(records)}
    stores = MemoryStores(store)

    async def publish(replies: list[Any]) -> None:
        return None

    return StateWriter(lambda: stores, NoSend(), publish), stores


def key(i: int, namespace: str = "ns") -> bytes:
    return f"r\x1f{namespace}\x1fowner\x1fuser:{i}\x1fwallet:{i}".encode()


def value(i: int) -> bytes:
    return orjson.dumps({"v": 1, "m": {"pad": "x" * 100, "i": i}, "c": NOW_JSON, "u": NOW_JSON})


def test_snapshot__is_the_state_when_taken_with_the_unflushed_writes() -> None:
    writer, stores = stores_with({key(i): value(i) for i in range(5)} | {key(9, "other"): value(9)})
    writer.put(0, key(5), value(5))  # open cycle, not in the store yet
    writer.put(0, key(0), None)  # deleted, not flushed
    items = take_snapshot(writer, stores, [0], "ns")
    writer.put(0, key(6), value(6))  # after the snapshot
    stores.write(0, {key(7): value(7), key(1): None}, None)
    assert sorted(k for k, _ in items) == sorted(key(i) for i in (1, 2, 3, 4, 5))


def plan(relationships: int, chunk_bytes: int | None = None) -> ExportPlan:
    from nexus_streams.messages import Export

    query = Export(request_id="e-1", principal="p", action="export", chunk_bytes=chunk_bytes)
    msg = Received(QUERIES, "nexus.queries", 0, 7, b"ns", b"{}", token=None)
    return ExportPlan(msg, query, "ns", (0,), relationships, {"owner": ["user -> wallet"]}, 41)


def stream(count: int, limits: ExportLimits, chunk_bytes: int | None = None) -> list[Result]:
    writer, stores = stores_with({key(i): value(i) for i in range(count)})
    sent: list[Result] = []

    async def publish(result: Result, message: Outbound, p: ExportPlan, last: bool) -> None:
        assert last == bool((result.output or {}).get("last"))
        assert (result.output or {})["relationships"] == []  # the lines are in the message only
        sent.append(Result.model_validate_json(message.value))

    async def run() -> None:
        exports = Exports(limits, publish, lambda: datetime(2024, 5, 1, tzinfo=UTC))
        await exports.start(plan(count, chunk_bytes), take_snapshot(writer, stores, [0], "ns"))
        assert not exports.running

    asyncio.run(run())
    return sent


LIMITS = ExportLimits(chunk_bytes=16 * 1024, max_running=1, slice_s=0.02, publish_timeout_s=5)


def test_export__chunks_under_the_limit_carry_every_relationship_once() -> None:
    sent = stream(1000, LIMITS)
    outputs = [r.output or {} for r in sent]
    assert [o["chunk"] for o in outputs] == list(range(len(sent)))
    assert len(sent) > 5 and outputs[-1]["last"] and not any(o["last"] for o in outputs[:-1])
    assert all(len(r.model_dump_json()) <= 16 * 1024 + 4096 for r in sent)
    lines = [line for o in outputs for line in o["relationships"]]
    assert len(lines) == len({line["target"] for line in lines}) == 1000
    head = outputs[0]
    assert (head["relationships_total"], head["offset"], head["schema"]) == (
        1000,
        41,
        {"owner": ["user -> wallet"]},
    )
    assert all(r.offset == 41 and r.request_id == "e-1" for r in sent)
    assert outputs[-1]["relationships_sent"] == 1000


def test_export__the_next_chunk_is_read_while_one_is_published_never_two_at_once() -> None:
    writer, stores = stores_with({key(i): value(i) for i in range(1000)})
    publishing, chunks, overlapped = 0, [], 0

    async def publish(result: Result, message: Outbound, p: ExportPlan, last: bool) -> None:
        nonlocal publishing
        publishing += 1
        assert publishing == 1
        await asyncio.sleep(0.01)
        chunks.append((result.output or {})["chunk"])
        publishing -= 1

    async def run() -> None:
        nonlocal overlapped
        exports = Exports(LIMITS, publish, lambda: NOW)
        task = exports.start(plan(1000), take_snapshot(writer, stores, [0], "ns"))
        while not task.done():
            overlapped += publishing
            await asyncio.sleep(0)
        await task

    asyncio.run(run())
    assert chunks == list(range(len(chunks))) and len(chunks) > 5 and overlapped > 0


@pytest.mark.parametrize(
    "schema",
    [None, {"owner": ["user -> wallet"]}, {'"output":{"relationships":[]': ['"output":{"relationships":[]']}],
)
def test_chunk_message__splices_the_lines_into_the_chunks_result(schema: Any) -> None:
    lines = [orjson.dumps({"type": "owner", "n": n}) for n in range(3)]
    output = {"relationships": [], "chunk": 0, "last": True, "count": 3, "schema": schema}
    result = Result(
        request_id='e"1', namespace="ns", action="export", status="ok", output=output, processed_at=NOW
    )
    message = chunk_message(result, lines)
    decoded = json.loads(message.value)
    assert decoded["output"]["relationships"] == [{"type": "owner", "n": n} for n in range(3)]
    assert decoded["output"]["schema"] == schema and decoded["request_id"] == 'e"1'
    assert (
        message.headers == result_message(result).headers
        and chunk_message(result, []).value == result_message(result).value
    )


def test_export__a_smaller_chunk_asked_for_and_an_empty_namespace() -> None:
    assert len(stream(1000, LIMITS, chunk_bytes=4096)) > len(stream(1000, LIMITS))
    (only_chunk,) = stream(0, LIMITS)
    assert (only_chunk.output or {})["last"] and (only_chunk.output or {})["count"] == 0


def test_export__yields_the_loop_between_slices() -> None:
    """A slice reads for at most slice_s: with a tiny one, other tasks run while it streams."""
    writer, stores = stores_with({key(i): value(i) for i in range(3000)})
    ticks = 0

    async def publish(result: Result, message: Outbound, p: ExportPlan, last: bool) -> None:
        return None

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def run() -> None:
        limits = ExportLimits(chunk_bytes=800 * 1024, max_running=1, slice_s=0.0001, publish_timeout_s=5)
        exports = Exports(limits, publish, lambda: NOW)
        tick = asyncio.create_task(ticker())
        await exports.start(plan(3000), take_snapshot(writer, stores, [0], "ns"))
        tick.cancel()

    asyncio.run(run())
    assert ticks >= 3000 // 256


def test_export__over_the_running_limit_is_refused() -> None:
    async def run() -> Result | None:
        exports = Exports(LIMITS, lambda *a: asyncio.sleep(3600), lambda: NOW)
        writer, stores = stores_with({key(1): value(1)})
        task = exports.start(plan(1), take_snapshot(writer, stores, [0], "ns"))
        refused = exports.refuse(plan(1))
        exports.cancel_all()
        with pytest.raises(asyncio.CancelledError):
            await task
        return refused

    refused = asyncio.run(run())
    assert refused is not None and refused.error is not None
    assert refused.error.code == "resource_limit" and refused.error.details["limit"] == 1


def test_service__export_is_taken_at_its_point_in_the_partition(worker: Worker) -> None:
    worker.ok(batch(step("create", "user:1", "owner", "wallet:1"), request_id="r-1"))
    reply = worker.one({"request_id": "e-1", "principal": "p", "action": "export"}, spec=QUERIES)
    assert reply.export is not None and reply.message is None  # acknowledged after the last chunk
    assert (reply.export.relationships, reply.export.offset) == (1, worker.offsets[("relationships", 3)])
    unknown = worker.one(
        {"request_id": "e-2", "principal": "p", "action": "export"}, spec=QUERIES, key=b"nobody"
    )
    assert (
        unknown.export is not None and unknown.export.relationships == 0 and unknown.export.partitions == ()
    )
