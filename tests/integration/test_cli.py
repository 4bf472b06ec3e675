"""The `nexus-streams` command against the real broker, Redis and worker."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path

from tests.integration.conftest import WorkerProcess
from tests.integration.wire import Wire


async def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nexus_streams",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli__patterns_push_show_list_stats(wire: Wire, worker: WorkerProcess, tmp_path: Path) -> None:
    pattern_id = f"cli_{uuid.uuid4().hex[:8]}"
    file = tmp_path / "pattern.yaml"
    file.write_text(
        f"id: {pattern_id}\nname: From YAML\ndescription: pushed by the CLI\nsteps:\n"
        "  - type: relationship\n    action: create\n    parameters: {type: member}\n"
    )
    code, out, err = await cli(worker.env, "patterns", "push", str(file), "--principal", "carol")
    assert code == 0, err
    assert json.loads(out)["output"]["version"] == 1

    code, out, _ = await cli(worker.env, "patterns", "show", pattern_id)
    assert code == 0
    assert json.loads(out)["description"] == "pushed by the CLI"
    code, out, _ = await cli(worker.env, "patterns", "list")
    assert code == 0
    assert "user_onboarding" in out
    code, out, _ = await cli(worker.env, "patterns", "stats", pattern_id)
    assert code == 0
    assert "executions" in out

    code, _, err = await cli(worker.env, "patterns", "show", f"{pattern_id}_missing")
    assert code == 1
    assert "not_found" in err


async def test_cli__send_prints_the_result(wire: Wire, worker: WorkerProcess) -> None:
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    code, out, err = await cli(
        worker.env,
        "send",
        "relationships",
        '{"action": "create", "type": "member", "source": "user:c", "target": "group:c"}',
        "--key",
        namespace,
    )
    assert code == 0, err
    assert json.loads(out)["namespace"] == namespace
    code, out, _ = await cli(worker.env, "send", "queries", '{"action": "stats"}', "--key", namespace)
    assert code == 0
    assert json.loads(out)["output"]["relationships"] == 1
    code, out, _ = await cli(worker.env, "send", "relationships", '{"action": "nope"}', "--key", namespace)
    assert code == 1
    assert json.loads(out)["error"]["code"] == "unknown_action"
