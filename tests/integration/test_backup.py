"""Backups through the real broker and worker (docs/backups.md): export a namespace, import it into
an empty one, and the two answer the same; an interrupted import run again doubles nothing; a
file of an unknown format version is refused."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from nexus_streams import backup
from nexus_streams.client import NexusClient
from nexus_streams.domain.errors import UnknownFormatVersion
from nexus_streams.settings import Settings
from tests.integration.conftest import WorkerProcess, own_worker
from tests.integration.test_cli import cli
from tests.integration.wire import Wire

CHAIN = 40
SPOKES = 1500


def client_for(worker: WorkerProcess) -> NexusClient:
    env = worker.env
    return NexusClient(
        Settings(kafka_bootstrap=env["NEXUS_KAFKA_BOOTSTRAP"], topic_prefix=env["NEXUS_TOPIC_PREFIX"]),
        principal="tests",
    )


def graph_commands() -> list[dict[str, Any]]:
    """A chain (unique paths), a parent hierarchy, two member cycles, spokes with metadata."""
    commands: list[dict[str, Any]] = []
    for i in range(CHAIN):
        commands.append({"action": "create", "type": "linked", "source": f"n:{i}", "target": f"n:{i + 1}"})
    for i in range(1, 30):
        commands.append(
            {"action": "create", "type": "parent", "source": f"org:{i // 3}", "target": f"org:{i}"}
        )
    for ring in (("g:a", "g:b", "g:c"), ("g:x", "g:y")):
        for a, b in zip(ring, ring[1:] + ring[:1], strict=True):
            commands.append({"action": "create", "type": "member", "source": a, "target": b})
    for i in range(SPOKES):
        commands.append(
            {
                "action": "create",
                "type": "owner",
                "source": f"user:{i % 97}",
                "target": f"wallet:{i}",
                "metadata": {"i": i, "label": f"wallet {i} ü"},
                **({"expires_at": "2999-01-01T00:00:00Z"} if i % 10 == 0 else {}),
            }
        )
    return commands


async def fill(wire: Wire, namespace: str) -> None:
    schema = {"owner": ["user -> wallet"]}
    assert (await wire.request("relationships", namespace, {"action": "set_schema", "schema": schema}))[
        "status"
    ] == "ok"
    commands = graph_commands()
    for start in range(0, len(commands), 500):
        batch = {"action": "batch", "commands": commands[start : start + 500]}
        done = await wire.request("relationships", namespace, batch)
        assert done["status"] == "ok", done["error"]
    for i in range(50):  # versions above 1
        update = {
            "action": "update",
            "type": "owner",
            "source": f"user:{i % 97}",
            "target": f"wallet:{i}",
            "metadata": {"i": i, "updated": True},
        }
        assert (await wire.request("relationships", namespace, update))["status"] == "ok"


async def answers(wire: Wire, namespace: str) -> dict[str, Any]:
    """What the round trip must keep: stats, a sample of get, find_path, detect_cycles."""

    async def query(body: dict[str, Any]) -> dict[str, Any]:
        result = await wire.request("queries", namespace, body)
        return {"status": result["status"], "output": result.get("output"), "error": result.get("error")}

    stats = await query({"action": "stats"})
    stats["output"].pop("namespace")
    gets = []
    for i in (*range(0, 60, 7), 1499):
        got = await query(
            {"action": "get", "type": "owner", "source": f"user:{i % 97}", "target": f"wallet:{i}"}
        )
        got["output"]["relationship"].pop("namespace")
        gets.append(got)
    for type_, source, target in (("child", "org:1", "org:0"), ("member", "g:a", "g:b")):
        got = await query({"action": "get", "type": type_, "source": source, "target": target})
        got["output"]["relationship"].pop("namespace")
        gets.append(got)
    paths = []
    for source, target, depth in (
        ("n:0", "n:5", 5),
        ("n:3", "n:12", 10),
        ("n:0", "n:30", 3),
        ("org:0", "org:28", 4),
    ):
        found = await query({"action": "find_path", "source": source, "target": target, "max_depth": depth})
        if found["status"] == "ok":
            for rel in found["output"]["relationships"]:
                rel.pop("namespace", None)
        paths.append(found)
    cycles = await query({"action": "detect_cycles", "types": ["member"]})
    cycles["output"].pop("snapshot")
    cycles["output"]["cycles"] = sorted(_rotated(c) for c in cycles["output"]["cycles"])
    return {"stats": stats, "gets": gets, "paths": paths, "cycles": cycles}


def _rotated(cycle: list[str]) -> list[str]:
    ring = cycle[:-1] if len(cycle) > 1 and cycle[0] == cycle[-1] else cycle
    start = ring.index(min(ring))
    return ring[start:] + ring[:start]


def read_file(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_backup__round_trip_answers_the_same_and_a_rerun_doubles_nothing(
    wire: Wire, worker: WorkerProcess, tmp_path: Path
) -> None:
    source = f"ns-src-{uuid.uuid4().hex[:8]}"
    target = f"ns-dst-{uuid.uuid4().hex[:8]}"
    await fill(wire, source)
    file = tmp_path / "backup.ndjson"
    async with client_for(worker) as client:
        # small chunks: many results, and writes sent right behind the export are not in it
        export = asyncio.create_task(backup.export_namespace_to(client, source, file, chunk_bytes=8192))
        late = {"action": "create", "type": "linked", "source": "late:1", "target": "late:2"}
        await asyncio.sleep(0)
        late_result = await wire.request("relationships", source, late)
        summary = await export
    lines = read_file(file)
    header, body, end = lines[0], lines[1:-1], lines[-1]
    expected = len(graph_commands())
    assert header["format"] == "nexus-streams/namespace" and header["format_version"] == 1
    assert header["relationships"] == len(body) == summary.items == end["relationships"]
    assert header["schema"] == {"owner": ["user -> wallet"]}
    assert summary.details["chunks"] > 10
    if len(body) == expected:  # the export came first: the late create is not in it
        assert header["offset"] < late_result["offset"]
        assert not [b for b in body if b["source"] == "late:1"]
    else:  # the late create was applied first: it is in, and the offset says so
        assert len(body) == expected + 1 and header["offset"] >= late_result["offset"]
    assert len({(b["type"], b["source"], b["target"]) for b in body}) == len(body)
    updated = next(b for b in body if b["target"] == "wallet:3")
    assert updated["version"] == 2 and updated["metadata"] == {"i": 3, "updated": True}
    assert next(b for b in body if b["target"] == "wallet:10")["expires_at"] == "2999-01-01T00:00:00Z"

    # interrupted after a few batches, then run again: nothing doubles, nothing fails
    async with client_for(worker) as client:

        def stop_after_two_batches(done: int, total: int | None, size: int) -> None:
            if done >= 200:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            await backup.import_namespace(client, file, target, stop_after_two_batches, batch_size=100)
        first = await backup.import_namespace(client, file, target, batch_size=100)
        again = await backup.import_namespace(client, file, target, batch_size=100)
    assert first.items == again.items == len(body)

    source_answers = await answers(wire, source)
    if len(body) == expected:  # the late relationship is not in the backup: compare without it
        gone = await wire.request(
            "relationships",
            source,
            {"action": "delete", **{k: late[k] for k in ("type", "source", "target")}},
        )
        assert gone["status"] == "ok"
        source_answers = await answers(wire, source)
    assert await answers(wire, target) == source_answers

    restored = await wire.wait_for(
        "events",
        lambda r: (
            r.headers.get("nexus-event-type") == "relationship_restored" and r.json()["namespace"] == target
        ),
        count=len(body),
    )
    assert len(restored) == len(body)  # one per relationship, over three runs


async def test_backup__unknown_format_version_and_cut_short_files_are_refused(
    wire: Wire, worker: WorkerProcess, tmp_path: Path
) -> None:
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    future = tmp_path / "future.ndjson"
    future.write_text(
        json.dumps({"format": "nexus-streams/namespace", "format_version": 99, "namespace": "x"})
        + "\n"
        + json.dumps({"end": "nexus-streams/namespace", "relationships": 0})
        + "\n"
    )
    async with client_for(worker) as client:
        with pytest.raises(UnknownFormatVersion, match="format_version 99"):
            await backup.import_namespace(client, future, namespace)
    code, _, err = await cli(worker.env, "import", str(future), "--namespace", namespace)
    assert code == 2
    assert "unknown_format_version" in err

    cut = tmp_path / "cut.ndjson"
    cut.write_text(
        json.dumps({"format": "nexus-streams/namespace", "format_version": 1, "namespace": "x"})
        + "\n"
        + json.dumps(
            {
                "type": "linked",
                "source": "a:1",
                "target": "a:2",
                "version": 1,
                "created_at": "2024-01-01T00:00:00Z",
                "updated_at": "2024-01-01T00:00:00Z",
            }
        )
        + "\n"
    )
    code, _, err = await cli(worker.env, "import", str(cut), "--namespace", namespace)
    assert code == 2
    assert "invalid_backup" in err and "cut short" in err
    stats = await wire.request("queries", namespace, {"action": "stats"})
    assert stats["output"]["relationships"] == 0  # nothing was sent


async def test_backup__cli_export_and_import(wire: Wire, worker: WorkerProcess, tmp_path: Path) -> None:
    source = f"ns-{uuid.uuid4().hex[:8]}"
    target = f"ns-{uuid.uuid4().hex[:8]}"
    batch = {"action": "batch", "commands": graph_commands()[:300]}
    assert (await wire.request("relationships", source, batch))["status"] == "ok"
    file = tmp_path / "cli.ndjson"
    code, _, err = await cli(worker.env, "export", "--namespace", source, "--output", str(file))
    assert code == 0, err
    assert "exported 300 relationships" in err and "bytes" in err
    code, _, err = await cli(worker.env, "import", str(file), "--namespace", target)
    assert code == 0, err
    assert "imported 300 relationships" in err
    stats = await wire.request("queries", target, {"action": "stats"})
    assert stats["output"]["relationships"] == 300
    with pytest.raises(UnknownFormatVersion):
        backup.read_header(tmp_path / "cli.ndjson", "nexus-streams/patterns")


async def test_backup__patterns_round_trip_every_version_and_deprecation(
    wire: Wire, worker: WorkerProcess, kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    from nexus_streams.store.redis import RedisPatternStore

    pattern_id = f"bk_{uuid.uuid4().hex[:8]}"
    for description in ("first", "second"):
        document = {
            "id": pattern_id,
            "name": "Backed up",
            "description": description,
            "steps": [{"type": "relationship", "action": "create", "parameters": {"type": "member"}}],
        }
        store = {"action": "store", "pattern": document, "principal": "carol"}
        assert (await wire.request("patterns", pattern_id, store))["status"] == "ok"
    deprecate = {"action": "deprecate", "pattern_id": pattern_id, "principal": "carol"}
    assert (await wire.request("patterns", pattern_id, deprecate))["status"] == "ok"
    file = tmp_path / "patterns.ndjson"
    code, _, err = await cli(worker.env, "patterns", "export", "--output", str(file), "--with-stats")
    assert code == 0, err
    mine = [line for line in read_file(file)[1:-1] if line["pattern_id"] == pattern_id]
    assert [(m["version"], m["document"]["description"]) for m in mine] == [(1, "first"), (2, "second")]
    assert mine[-1]["deprecated"] is True and "stats" in mine[-1] and mine[0]["created_by"] == "carol"

    # into an empty store (another key prefix): the same versions, owner and deprecation
    async with own_worker(kafka_bootstrap, redis_url, "patterns-restore") as (_, other, _):
        env, prefix = other.env, other.env["NEXUS_REDIS_KEY_PREFIX"]
        for _ in range(2):  # a rerun doubles nothing
            code, _, err = await cli(env, "patterns", "import", str(file))
            assert code == 0, err
        restored = RedisPatternStore.from_settings(Settings(redis_url=redis_url, redis_key_prefix=prefix))
        try:
            versions = await restored.versions(pattern_id)
            summary = next(s for s in await restored.list() if s.id == pattern_id)
            latest = await restored.get(pattern_id)
        finally:
            await restored.close()
    assert [v.version for v in versions] == [1, 2]
    assert (summary.owner, summary.deprecated, latest.description) == ("carol", True, "second")
