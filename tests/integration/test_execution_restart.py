"""A waiting execution survives a SIGKILL of its worker and finishes after the restart."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.conftest import TABLE_STORES, own_worker, wait_until_answering


@pytest.mark.parametrize("store", TABLE_STORES)
async def test_waiting_execution__resumes_after_sigkill(
    kafka_bootstrap: str, redis_url: str, store: str
) -> None:
    async with own_worker(
        kafka_bootstrap, redis_url, "exec-restart", settings={"NEXUS_TABLE_STORE": store}
    ) as (wire, worker, run_id):
        stored = await wire.request(
            "patterns",
            "slow_start",
            {
                "principal": "alice",
                "action": "store",
                "pattern": {
                    "id": "slow_start",
                    "name": "Slow start",
                    "description": "fails once, retried 4 s later",
                    "steps": [
                        {
                            "type": "control",
                            "action": "fail",
                            "parameters": {"code": "timeout", "message": "x", "times": 1},
                            "retry": {"max_attempts": 2, "initial_backoff_ms": 4000, "jitter": 0},
                        },
                        {
                            "type": "relationship",
                            "action": "create",
                            "parameters": {"type": "member"},
                            "depends_on": ["fail"],
                        },
                    ],
                },
            },
        )
        assert stored["status"] == "ok", stored
        namespace, request_id = f"ns-{run_id}", f"x-{uuid.uuid4().hex}"
        await wire.send(
            "executions",
            namespace,
            {
                "request_id": request_id,
                "principal": "alice",
                "pattern_id": "slow_start",
                "step_events": True,
                "input": {"source": "user:k", "target": "group:k"},
            },
        )
        # the first attempt failed and the execution waits for its retry: kill the worker now
        await wire.wait_for(
            "events",
            lambda r: r.json().get("request_id") == request_id and r.json()["type"] == "step_retried",
        )
        worker.kill()
        worker.start()
        await wait_until_answering(wire, worker)

        result = await wire.result(request_id, timeout_s=60)
        assert result["status"] == "ok", result
        assert result["output"]["steps"]["fail"]["attempts"] == 2
        got = await wire.request(
            "queries", namespace, {"action": "get", "type": "member", "source": "user:k", "target": "group:k"}
        )
        assert got["status"] == "ok", got
        created = wire.matching(
            "events",
            lambda r: r.json().get("request_id") == request_id and r.json()["type"] == "relationship_created",
        )
        assert len(created) == 1
