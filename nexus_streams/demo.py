"""`make demo`: a worker in a subprocess, one relationship command, its result and its event."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path

from nexus_streams.client import NexusClient
from nexus_streams.settings import Settings
from nexus_streams.streams.admin import ensure_topics


async def run_demo(settings: Settings, timeout_s: float = 60.0) -> int:
    await ensure_topics(settings)
    log_path = Path(settings.data_dir) / "demo-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"starting a worker (its log: {log_path})")
    with log_path.open("ab") as log:
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nexus_streams",
            "worker",
            env={**os.environ},
            stdout=log,
            stderr=log,
        )
    try:
        async with NexusClient(settings) as client:
            suffix = uuid.uuid4().hex[:8]
            request_id = f"demo-{suffix}"
            command: dict[str, object] = {
                "request_id": request_id,
                "principal": "demo",
                "action": "create",
                "type": "owner",
                "source": f"user:{suffix}",
                "target": f"wallet:{suffix}",
                "metadata": {"wallet_type": "primary"},
            }
            print("command  (nexus.relationships, key=default):")
            print(json.dumps(command, indent=2))
            result = await client.request("relationships", "default", command, timeout_s)
            print("result   (nexus.results):")
            print(json.dumps(result, indent=2))
            [event] = await client.events_for(request_id, 1, timeout_s)
            print("event    (nexus.events):")
            print(json.dumps(event, indent=2))
            return 0 if result["status"] == "ok" and event["type"] == "relationship_created" else 1
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(worker.wait(), 30)
        except TimeoutError:
            worker.kill()
            await worker.wait()
