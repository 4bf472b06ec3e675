"""Backups through Kafka (docs/backups.md): `export` a namespace (an `export` query, answered in
chunks) into an NDJSON file, `import` one (set_schema, then `batch`es of `restore` commands);
the same for the pattern store. The CLI shows progress and the summary."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from nexus_streams.client import NexusClient, NexusRequestError
from nexus_streams.domain.backup import (
    FORMAT_VERSION,
    NAMESPACE_FORMAT,
    PATTERNS_FORMAT,
    Header,
    check_trailer,
    import_request_id,
    restore_command,
    trailer,
)
from nexus_streams.domain.errors import InvalidBackup
from nexus_streams.domain.times import iso

#: (items done, items in all or None, bytes done): what a progress bar shows
Progress = Callable[[int, int | None, int], None]
#: batches of one import in flight at once
IMPORT_WINDOW = 8


def _no_progress(done: int, total: int | None, size: int) -> None:
    return None


@dataclass(slots=True)
class Summary:
    """What an export or import did."""

    what: str
    items: int = 0
    bytes: int = 0
    seconds: float = 0.0
    #: the input offset of the snapshot (an export, and the file of an import)
    offset: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value) + b"\n"


async def export_namespace(
    client: NexusClient,
    namespace: str,
    out: IO[bytes],
    progress: Progress = _no_progress,
    chunk_bytes: int | None = None,
    timeout_s: float = 60.0,
) -> Summary:
    """Ask the namespace's worker for an export and write it to `out` as it arrives."""
    started = time.perf_counter()
    summary = Summary("export")
    query: dict[str, Any] = {"request_id": f"export-{uuid.uuid4()}", "action": "export"}
    if chunk_bytes is not None:
        query["chunk_bytes"] = chunk_bytes
    expected = 0
    total: int | None = None
    async for result in client.request_stream("queries", namespace, query, timeout_s):
        if result.get("status") != "ok":
            raise NexusRequestError(result)
        output = result["output"]
        if output["chunk"] != expected:
            raise InvalidBackup(
                f"chunk {output['chunk']} arrived where chunk {expected} was expected (the worker "
                "restarted during the export?); run the export again",
                chunk=output["chunk"],
                expected=expected,
            )
        if expected == 0:
            total = output["relationships_total"]
            summary.offset = output["offset"]
            header = {
                "format": NAMESPACE_FORMAT,
                "format_version": FORMAT_VERSION,
                "namespace": namespace,
                "offset": output["offset"],
                "partition": output["partition"],
                "relationships": total,
                "schema": output["schema"],
                "exported_at": output["exported_at"],
            }
            summary.bytes += out.write(_dumps(header))
        for line in output["relationships"]:
            summary.bytes += out.write(_dumps(line))
        summary.items += output["count"]
        expected += 1
        progress(summary.items, total, summary.bytes)
        if output["last"]:
            summary.bytes += out.write(_dumps(trailer(NAMESPACE_FORMAT, "relationships", summary.items)))
            summary.details = {"chunks": expected, "worker_seconds": output.get("seconds")}
    summary.seconds = time.perf_counter() - started
    return summary


async def export_namespace_to(
    client: NexusClient, namespace: str, path: Path, progress: Progress = _no_progress, **kwargs: Any
) -> Summary:
    """Into `path`, written whole or not at all (`path.partial` until the trailer is written)."""
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("wb") as out:
            summary = await export_namespace(client, namespace, out, progress, **kwargs)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return summary


def _restore_batches(
    path: Path, batch_size: int, summary: Summary
) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """The file's relationships as batches of `restore` commands (index, commands),
    the last one once the trailer has confirmed the count."""
    commands: list[dict[str, Any]] = []
    index = counted = 0
    with path.open("rb") as f:
        f.readline()  # the header (read_header checked it)
        summary.bytes = f.tell()
        for number, raw in enumerate(f, start=2):
            summary.bytes += len(raw)
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise InvalidBackup(f"{path}:{number}: not JSON", line=number) from None
            if "end" in line:
                check_trailer(line, NAMESPACE_FORMAT, "relationships", counted, number)
                if commands:
                    yield index, commands
                return
            commands.append(restore_command(line, f"{path}:{number}"))
            counted += 1
            if len(commands) >= batch_size:
                yield index, commands
                commands, index = [], index + 1
    raise InvalidBackup(f"{path}: no trailer line; the file was cut short")


def read_header(path: Path, expected_format: str) -> Header:
    """The file's header, checked (unknown format or version: `unknown_format_version`), and its
    last line, which must be the trailer (else the file was cut short: `invalid_backup`)."""
    with path.open("rb") as f:
        header = Header.parse(f.readline(), expected_format)
        f.seek(0, os.SEEK_END)
        end = f.tell()
        f.seek(max(0, end - 4096))
        tail = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        last = orjson.loads(tail)
    except orjson.JSONDecodeError:
        last = None
    if not isinstance(last, dict) or last.get("end") != expected_format:
        raise InvalidBackup(f"{path}: the last line is not the trailer; the file was cut short")
    return header


async def import_namespace(
    client: NexusClient,
    path: Path,
    namespace: str,
    progress: Progress = _no_progress,
    batch_size: int = 1000,
    timeout_s: float = 60.0,
) -> Summary:
    """Restore the export in `path` into `namespace`: its schema, then its relationships in
    `batch`es of `restore` commands whose request ids derive from the file, so a rerun (after an
    interruption) is answered from the first run or applies the same state again."""
    started = time.perf_counter()
    header = read_header(path, NAMESPACE_FORMAT)
    summary = Summary("import", offset=header.data.get("offset"))
    total = header.data.get("relationships")
    if header.data.get("schema") is not None:
        schema_id = import_request_id(header.digest, namespace, "schema")
        command = {"request_id": schema_id, "action": "set_schema", "schema": header.data["schema"]}
        _ok(await client.request("relationships", namespace, command, timeout_s), "the schema")
    window = asyncio.Semaphore(IMPORT_WINDOW)
    failed: list[BaseException] = []
    running: set[asyncio.Task[None]] = set()

    async def send(index: int, commands: list[dict[str, Any]]) -> None:
        try:
            request_id = import_request_id(header.digest, namespace, f"{batch_size}:{index}")
            batch = {"request_id": request_id, "action": "batch", "commands": commands}
            _ok(await client.request("relationships", namespace, batch, timeout_s), f"batch {index}")
            summary.items += len(commands)
            progress(summary.items, total, summary.bytes)
        except BaseException as exc:  # reported once every batch in flight is done
            failed.append(exc)
        finally:
            window.release()

    async def flush(index: int, commands: list[dict[str, Any]]) -> None:
        await window.acquire()
        if failed:
            window.release()
            return
        task = asyncio.create_task(send(index, commands))
        running.add(task)
        task.add_done_callback(running.discard)

    batches = 0
    for index, commands in _restore_batches(path, batch_size, summary):
        await flush(index, commands)
        batches = index + 1
        if failed:
            break
    if running:
        await asyncio.gather(*running)
    if failed:
        raise failed[0]
    summary.details = {"batches": batches, "batch_size": batch_size}
    summary.seconds = time.perf_counter() - started
    return summary


def _ok(result: dict[str, Any], what: str) -> dict[str, Any]:
    if result.get("status") != "ok":
        error = result.get("error") or {}
        result = {**result, "error": {**error, "message": f"{what}: {error.get('message')}"}}
        raise NexusRequestError(result)
    return result


async def export_patterns(
    store: Any, out: IO[bytes], with_stats: bool = False, progress: Progress = _no_progress
) -> Summary:
    """Every user pattern of the store (system patterns ship with the service): one line per
    version, with who stored it and when, the pattern's owner and deprecation, and its
    statistics when asked (`with_stats`)."""
    started = time.perf_counter()
    summary = Summary("export")
    patterns = [p for p in await store.list() if p.kind.value != "system"]
    header = {
        "format": PATTERNS_FORMAT,
        "format_version": FORMAT_VERSION,
        "patterns": len(patterns),
        "with_stats": with_stats,
        "exported_at": iso(datetime.now(UTC)),
    }
    summary.bytes += out.write(_dumps(header))
    for n, pattern in enumerate(patterns, start=1):
        versions = sorted(await store.versions(pattern.id), key=lambda v: v.version)
        for i, info in enumerate(versions):
            line: dict[str, Any] = {
                "pattern_id": pattern.id,
                "version": info.version,
                "created_by": info.created_by,
                "created_at": info.to_dict()["created_at"],
                "owner": pattern.owner,
                "document": (await store.get(pattern.id, info.version)).to_document(),
            }
            if i == len(versions) - 1:
                line["deprecated"] = pattern.deprecated
                if with_stats:
                    line["stats"] = (await store.stats(pattern.id)).to_dict()
            summary.bytes += out.write(_dumps(line))
            summary.items += 1
        progress(n, len(patterns), summary.bytes)
    summary.bytes += out.write(_dumps(trailer(PATTERNS_FORMAT, "versions", summary.items)))
    summary.details = {"patterns": len(patterns)}
    summary.seconds = time.perf_counter() - started
    return summary


async def import_patterns(
    client: NexusClient, path: Path, progress: Progress = _no_progress, timeout_s: float = 30.0
) -> Summary:
    """Store every version of the file through `nexus.patterns`, oldest first, each by the
    principal that stored it (with NEXUS_AUTH=off; with tokens, the token's), then deprecate
    what was deprecated. Request ids derive from the file: a rerun is answered from the first."""
    started = time.perf_counter()
    header = read_header(path, PATTERNS_FORMAT)
    summary = Summary("import")
    lines = [orjson.loads(raw) for raw in path.read_bytes().splitlines()[1:] if raw.strip()]
    *versions, end = lines
    check_trailer(end, PATTERNS_FORMAT, "versions", len(versions), len(lines) + 1)
    for line in versions:
        pattern_id = line["pattern_id"]
        rid = import_request_id(header.digest, "patterns", f"{pattern_id}:{line['version']}")
        command = {"request_id": rid, "action": "store", "pattern": line["document"]}
        if not client.token and (line.get("created_by") or line.get("owner")):
            command["principal"] = line.get("created_by") or line["owner"]
        _ok(
            await client.request("patterns", pattern_id, command, timeout_s),
            f"{pattern_id} v{line['version']}",
        )
        if line.get("deprecated"):
            rid = import_request_id(header.digest, "patterns", f"{pattern_id}:deprecate")
            command = {"request_id": rid, "action": "deprecate", "pattern_id": pattern_id}
            if not client.token and line.get("owner"):
                command["principal"] = line["owner"]
            _ok(await client.request("patterns", pattern_id, command, timeout_s), f"deprecate {pattern_id}")
        summary.items += 1
        progress(summary.items, len(versions), 0)
    summary.bytes = path.stat().st_size
    summary.seconds = time.perf_counter() - started
    return summary
