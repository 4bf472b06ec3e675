"""Relationship commands through the real broker, driven with plain aiokafka."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest

from tests.integration.conftest import WorkerProcess
from tests.integration.wire import Wire


def rid(prefix: str = "r") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def create(request_id: str, source: str, target: str, type_: str = "owner", **extra: object) -> dict:
    return {
        "request_id": request_id,
        "principal": "alice",
        "action": "create",
        "type": type_,
        "source": source,
        "target": target,
        **extra,
    }


async def assert_still_answering(wire: Wire, namespace: str) -> None:
    request_id = rid("after")
    await wire.send("relationships", namespace, create(request_id, "user:after", f"wallet:{request_id}"))
    result = await wire.result(request_id)
    assert result["status"] == "ok", result


async def test_create__result_and_event(wire: Wire, namespace: str) -> None:
    request_id = rid()
    await wire.send(
        "relationships",
        namespace,
        create(request_id, "user:1", "wallet:1", metadata={"wallet_type": "primary"}),
    )

    result = await wire.result(request_id)
    [event] = await wire.events(request_id)

    assert result["status"] == "ok"
    assert result["namespace"] == namespace
    assert result["output"]["relationship"]["metadata"] == {"wallet_type": "primary"}
    assert isinstance(result["offset"], int)
    assert event["type"] == "relationship_created"
    assert event["namespace"] == namespace
    assert event["relationship"]["source"] == "user:1"
    assert event["relationship"]["target"] == "wallet:1"
    [record] = wire.matching("events", lambda r: r.json().get("request_id") == request_id)
    assert record.headers["nexus-event-type"] == "relationship_created"
    assert record.key == namespace.encode()
    await assert_still_answering(wire, namespace)


async def test_delete__result_and_event(wire: Wire, namespace: str) -> None:
    created, deleted = rid("c"), rid("d")
    await wire.send("relationships", namespace, create(created, "team:1", "user:2", "parent"))
    assert (await wire.result(created))["status"] == "ok"

    # the inverse form names the same relationship
    await wire.send(
        "relationships",
        namespace,
        {
            "request_id": deleted,
            "principal": "alice",
            "action": "delete",
            "type": "child",
            "source": "user:2",
            "target": "team:1",
        },
    )

    result = await wire.result(deleted)
    [event] = await wire.events(deleted)
    assert result["status"] == "ok", result
    assert event["type"] == "relationship_deleted"
    assert event["relationship"] == {**result["output"]["relationship"]}
    await assert_still_answering(wire, namespace)


async def test_delete__missing_is_not_found(wire: Wire, namespace: str) -> None:
    request_id = rid()
    await wire.send(
        "relationships",
        namespace,
        {
            "request_id": request_id,
            "principal": "alice",
            "action": "delete",
            "type": "owner",
            "source": "user:x",
            "target": "wallet:x",
        },
    )
    result = await wire.result(request_id)
    assert result["status"] == "error"
    assert result["error"]["code"] == "not_found"
    await assert_still_answering(wire, namespace)


async def test_garbage__goes_to_deadletter_with_reason(wire: Wire, namespace: str) -> None:
    marker = uuid.uuid4().hex.encode()
    await wire.send("relationships", namespace, b"\xff\xfe not json " + marker)

    [record] = await wire.wait_for("deadletter", lambda r: marker in (r.value or b""))
    assert record.value == b"\xff\xfe not json " + marker
    assert record.key == namespace.encode()
    assert record.headers["nexus-error-code"] == "undecodable"
    assert "UTF-8" in record.headers["nexus-error-reason"]
    assert record.headers["nexus-source-topic"] == wire.topic("relationships")
    await assert_still_answering(wire, namespace)


async def test_bad_fields__validation_error_names_the_field(wire: Wire, namespace: str) -> None:
    request_id = rid()
    await wire.send(
        "relationships",
        namespace,
        {
            "request_id": request_id,
            "principal": "alice",
            "action": "create",
            "type": "owner",
            "source": "user:1",
            "target": "wallet:1",
            "metadata": "red",
            "colour": "red",
        },
    )

    result = await wire.result(request_id)
    [event] = await wire.events(request_id)

    assert result["status"] == "error"
    assert result["error"]["code"] == "validation_error"
    fields = {e["field"] for e in result["error"]["details"]["errors"]}
    assert fields == {"metadata", "colour"}
    assert "metadata" in result["error"]["message"]
    assert event["type"] == "error"
    assert event["error"]["code"] == "validation_error"
    await assert_still_answering(wire, namespace)


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ({"action": "explode"}, "unknown_action"),
        (
            {"action": "create", "type": "friend", "source": "a", "target": "b"},
            "unknown_relationship_type",
        ),
        (
            {"action": "create", "type": "owner", "source": "a", "target": "a"},
            "self_relationship",
        ),
    ],
)
async def test_invalid_command__error_code(wire: Wire, namespace: str, command: dict, code: str) -> None:
    request_id = rid()
    await wire.send("relationships", namespace, {"request_id": request_id, "principal": "alice", **command})
    result = await wire.result(request_id)
    assert result["status"] == "error"
    assert result["error"]["code"] == code
    await assert_still_answering(wire, namespace)


async def test_duplicate_request_id__same_result_no_second_effect(wire: Wire, namespace: str) -> None:
    request_id = rid()
    command = create(request_id, "user:dup", "wallet:dup")
    await wire.send("relationships", namespace, command)
    await wire.send("relationships", namespace, command)

    first, second = [
        r.json()
        for r in await wire.wait_for(
            "results", lambda r: r.headers.get("nexus-request-id") == request_id, count=2
        )
    ]
    assert first == second
    assert first["status"] == "ok"
    await assert_still_answering(wire, namespace)
    assert len(wire.matching("events", lambda r: r.json().get("request_id") == request_id)) == 1


async def test_hundred_garbage_then_valid__all_deadlettered_and_answered(
    wire: Wire, worker: WorkerProcess, namespace: str
) -> None:
    marker = uuid.uuid4().hex
    for i in range(100):
        await wire.send("relationships", namespace, f"garbage {marker} {i} {{".encode())
    await assert_still_answering(wire, namespace)

    dead = await wire.wait_for("deadletter", lambda r: marker.encode() in (r.value or b""), count=100)
    assert len(dead) == 100
    assert worker.alive()
    log = worker.log_text()
    assert "crashed" not in log.lower()
    assert "Traceback" not in log


async def test_kcat__plain_json_create_is_answered(wire: Wire) -> None:
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    assert kcat, "kcat is not installed; `make test` installs it (scripts/stack.sh)"
    request_id = rid("kcat")
    value = (
        f'{{"request_id": "{request_id}", "principal": "alice", "action": "create", '
        f'"type": "owner", "source": "user:kcat-{request_id}", "target": "wallet:kcat"}}'
    )
    bootstrap = wire.producer.client._bootstrap_servers
    subprocess.run(
        [kcat, "-P", "-b", bootstrap, "-t", wire.topic("relationships"), "-k", "default"],
        input=value.encode(),
        check=True,
        timeout=30,
    )
    result = await wire.result(request_id)
    assert result["status"] == "ok"
    assert result["namespace"] == "default"
