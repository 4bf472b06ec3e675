"""Issue 16, part 3, through the real broker: dead letters an operator can act on.

A worker of this module's own dead-letters what it cannot use; `nexus-streams deadletter` lists
and shows them, redrives them (once each, with a count that stops at NEXUS_REDRIVE_MAX), edits
one before re-sending it, discards them, and a dry run changes nothing. Each test sends to input
topics no other test of the module uses, or names its dead letters by offset.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import WorkerProcess, own_worker
from tests.integration.wire import Record, Wire

#: the CLI's own deadline per command (seconds)
CLI_S = 90.0


@pytest.fixture(scope="module")
async def dlq(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[tuple[Wire, WorkerProcess]]:
    async with own_worker(kafka_bootstrap, redis_url, "dlq") as (wire, worker, _):
        yield wire, worker


async def cli(worker: WorkerProcess, *args: str, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nexus_streams",
        "deadletter",
        *args,
        env={**worker.env, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), CLI_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cli_json(worker: WorkerProcess, *args: str, **env: str) -> Any:
    code, out, err = await cli(worker, *args, "--json", **env)
    assert code == 0, err
    return json.loads(out)


async def dead_letter(wire: Wire, topic: str, at: tuple[int, int], timeout_s: float = 30.0) -> Record:
    """The one dead letter of the message at `at` (partition, offset) of `topic`."""
    await wire.wait_until(lambda: bool(wire.dead_letters(topic, *at)), timeout_s)
    found = wire.dead_letters(topic, *at)
    assert len(found) == 1, f"{len(found)} dead letters for {topic}{list(at)}"
    return found[0]


async def end_offsets(worker: WorkerProcess, wire: Wire, names: tuple[str, ...]) -> dict[str, int]:
    """The summed end offsets of the topics `names` of the module's run."""
    consumer = AIOKafkaConsumer(bootstrap_servers=worker.env["NEXUS_KAFKA_BOOTSTRAP"], group_id=None)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        found = {}
        for name in names:
            parts = consumer.partitions_for_topic(wire.topic(name))
            assert parts, f"no partitions of {wire.topic(name)}"
            ends = await consumer.end_offsets([TopicPartition(wire.topic(name), p) for p in parts])
            found[name] = sum(ends.values())
        return found
    finally:
        await consumer.stop()


def letters_of(listing: dict[str, Any], wire: Wire, topic: str) -> list[dict[str, Any]]:
    return [d for d in listing["deadletters"] if (d["source"] or {}).get("topic") == wire.topic(topic)]


def waiting(worker: WorkerProcess) -> dict[tuple[str, str], float]:
    """The worker's nexus_deadletters_waiting, by (topic, reason)."""
    url = f"http://127.0.0.1:{worker.env['NEXUS_METRICS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310
        text = resp.read().decode()
    return {
        (sample.labels["topic"], sample.labels["reason"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "nexus_deadletters_waiting"
    }


async def waiting_becomes(worker: WorkerProcess, labels: tuple[str, str], count: float) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while (now := waiting(worker).get(labels)) != count:
        assert asyncio.get_running_loop().time() < deadline, f"waiting{labels} = {now}, expected {count}"
        await asyncio.sleep(0.5)


def editor(tmp_path: Path, body: str) -> str:
    """An $EDITOR: a script that rewrites the file it is given (`path`) as `body` says."""
    script = tmp_path / f"editor-{uuid.uuid4().hex[:6]}.py"
    script.write_text(f"import json, sys\npath = sys.argv[1]\n{body}\n")
    return f"{sys.executable} {script}"


async def test_deadletter__list_and_show_the_reasons__a_dry_run_changes_nothing(
    dlq: tuple[Wire, WorkerProcess],
) -> None:
    wire, worker = dlq
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    garbage = await wire.producer.send_and_wait(
        wire.topic("relationships"), b"\x00 not json", key=namespace.encode(), headers=[("trace", b"t-1")]
    )
    nameless = {"principal": "ops", "action": "create", "type": "member", "source": "user:1", "target": "g:1"}
    no_id = await wire.send_located("relationships", namespace, nameless)
    bad_key = await wire.send_located("queries", "not a namespace!", {"request_id": "q", "action": "stats"})
    letter = await dead_letter(wire, "relationships", (garbage.partition, garbage.offset))
    await dead_letter(wire, "relationships", no_id)
    await dead_letter(wire, "queries", bad_key)

    listing = await cli_json(worker, "list", "--topic", "relationships", "--topic", "queries")
    rows = {(d["source"]["topic"], d["source"]["offset"]): d for d in listing["deadletters"]}
    assert listing["matched"] == 3 == len(rows)
    assert rows[(wire.topic("relationships"), garbage.offset)]["code"] == "undecodable"
    assert rows[(wire.topic("relationships"), no_id[1])]["code"] == "validation_error"
    assert rows[(wire.topic("queries"), bad_key[1])]["code"] == "invalid_key"
    assert {d["state"] for d in rows.values()} == {"waiting"}
    only = await cli_json(worker, "list", "--reason", "invalid_key")
    assert [d["code"] for d in only["deadletters"]] == ["invalid_key"]
    assert (await cli_json(worker, "list", "--since", "2099-01-01"))["matched"] == 0
    code, out, _ = await cli(worker, "list")
    assert code == 0 and "undecodable" in out and "invalid_key" in out and "waiting" in out

    shown = await cli_json(worker, "show", str(letter.offset), "--partition", str(letter.partition))
    assert shown["headers"]["trace"] == "t-1"
    assert shown["headers"]["nexus-source-offset"] == str(garbage.offset)
    assert shown["value"] == "\x00 not json" and shown["state"] == "waiting"
    code, out, _ = await cli(worker, "show", str(letter.offset), "--partition", str(letter.partition))
    assert code == 0 and "nexus-error-reason" in out and "\\x00 not json" in out
    code, _, err = await cli(worker, "show", "999999")
    assert code == 1 and "not_found" in err

    before = await end_offsets(worker, wire, ("relationships", "queries", "deadletter", "deadletter-handled"))
    report = await cli_json(worker, "redrive", "--dry-run")
    assert report["dry_run"] and report["counts"].get("would_resend", 0) >= 3
    assert "resent" not in report["counts"]
    await asyncio.sleep(2)  # a re-sent message would be dead-lettered again by now
    assert (
        await end_offsets(worker, wire, ("relationships", "queries", "deadletter", "deadletter-handled"))
        == before
    )
    again = await cli_json(worker, "list", "--topic", "relationships", "--topic", "queries", "--waiting")
    assert again["matched"] == 3


async def test_redrive__an_edited_message_succeeds__a_bad_one_returns_counted__once_each(
    dlq: tuple[Wire, WorkerProcess], tmp_path: Path
) -> None:
    wire, worker = dlq
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    command = {"principal": "ops", "action": "create", "type": "member", "source": "user:e", "target": "g:e"}
    fixable = await dead_letter(
        wire, "relationships", await wire.send_located("relationships", namespace, command)
    )
    sent = await wire.producer.send_and_wait(
        wire.topic("relationships"), b"still { bad", key=namespace.encode(), headers=[("trace", b"t-2")]
    )
    bad = await dead_letter(wire, "relationships", (sent.partition, sent.offset))
    fixed, at = f"fixed-{uuid.uuid4().hex[:8]}", ["--partition", str(fixable.partition)]

    # an editor closed without a change, or leaving no JSON: nothing is sent
    unchanged = editor(tmp_path, "pass")
    report = await cli_json(worker, "redrive", str(fixable.offset), *at, "--edit", EDITOR=unchanged)
    assert report["counts"] == {"not_edited": 1}
    broken = editor(tmp_path, "open(path, 'w').write('{ nope')")
    code, _, err = await cli(worker, "redrive", str(fixable.offset), *at, "--edit", EDITOR=broken)
    assert code == 1 and "not JSON" in err
    code, _, err = await cli(worker, "redrive", "--edit")
    assert code == 1 and "OFFSET" in err

    # fixed in the editor: re-sent, answered
    add_id = editor(
        tmp_path,
        f"doc = json.load(open(path))\ndoc['request_id'] = {fixed!r}\njson.dump(doc, open(path, 'w'))",
    )
    report = await cli_json(worker, "redrive", str(fixable.offset), *at, "--edit", EDITOR=add_id)
    (outcome,) = report["outcomes"]
    assert (outcome["action"], outcome["redrive_count"], outcome["edited"]) == ("resent", 1, True)
    result = await wire.result(fixed)
    assert result["status"] == "ok" and result["output"]["relationship"]["source"] == "user:e"
    assert result["source"] == outcome["sent_to"]

    # still bad: it returns, with the count and its own headers
    report = await cli_json(worker, "redrive", str(bad.offset), "--partition", str(bad.partition))
    (outcome,) = report["outcomes"]
    assert outcome["action"] == "resent" and outcome["redrive_count"] == 1
    to = outcome["sent_to"]
    back = await dead_letter(wire, "relationships", (to["partition"], to["offset"]))
    assert back.value == b"still { bad" and back.key == namespace.encode()
    assert back.headers["nexus-redrive-count"] == "1" and back.headers["trace"] == "t-2"
    assert back.headers["nexus-error-code"] == "undecodable"

    # once each: the redriven ones are skipped, their state says why
    for offset, partition in ((fixable.offset, fixable.partition), (bad.offset, bad.partition)):
        report = await cli_json(worker, "redrive", str(offset), "--partition", str(partition))
        assert report["counts"] == {"handled": 1}
        shown = await cli_json(worker, "show", str(offset), "--partition", str(partition))
        assert shown["state"] == "redriven" and shown["handled"]["principal"] == "cli"
    assert (await cli_json(worker, "show", str(fixable.offset), *at))["handled"]["edited"] is True
    shown = await cli_json(worker, "show", str(back.offset), "--partition", str(back.partition))
    assert shown["state"] == "waiting" and shown["redrive_count"] == 1


async def test_redrive__the_count_reaches_the_limit__never_a_loop(dlq: tuple[Wire, WorkerProcess]) -> None:
    """Run after run over the same filter: each re-sends only the newest copy, until its count is
    NEXUS_REDRIVE_MAX (2 here); then nothing more is sent."""
    wire, worker = dlq
    first = await dead_letter(wire, "patterns", await wire.send_located("patterns", "p-loop", b"<not json>"))
    copies = [first]
    for run in range(1, 5):
        report = await cli_json(worker, "redrive", "--topic", "patterns", NEXUS_REDRIVE_MAX="2")
        counts = report["counts"]
        if run <= 2:
            assert counts == {"resent": 1, **({"handled": run - 1} if run > 1 else {})}, counts
            (resent,) = [o for o in report["outcomes"] if o["action"] == "resent"]
            to = resent["sent_to"]
            copies.append(await dead_letter(wire, "patterns", (to["partition"], to["offset"])))
            assert copies[-1].headers["nexus-redrive-count"] == str(run)
        else:
            assert counts == {"handled": 2, "limit": 1}, counts
    await asyncio.sleep(2)  # a fourth copy would be back by now
    assert len([r for r in wire.records["deadletter"] if r.value == b"<not json>"]) == 3

    # the last copy: discarded, then it is no longer waiting
    last = copies[-1]
    report = await cli_json(
        worker, "discard", str(last.offset), "--partition", str(last.partition), "--dry-run"
    )
    assert report["counts"] == {"would_discard": 1}
    report = await cli_json(worker, "discard", str(last.offset), "--partition", str(last.partition))
    assert report["counts"] == {"discarded": 1}
    assert (await cli_json(worker, "list", "--topic", "patterns", "--waiting"))["matched"] == 0
    states = [
        d["state"]
        for d in letters_of(await cli_json(worker, "list", "--topic", "patterns"), wire, "patterns")
    ]
    assert states == ["redriven", "redriven", "discarded"]
    code, _, err = await cli(worker, "discard")
    assert code == 1 and "--all" in err


async def test_waiting__the_worker_counts_the_dead_letters_waiting_by_topic_and_reason(
    dlq: tuple[Wire, WorkerProcess],
) -> None:
    """Every test before left some waiting: those are counted too, each under its own labels."""
    wire, worker = dlq
    labels = ("executions", "undecodable")
    assert labels not in waiting(worker)
    first = await dead_letter(wire, "executions", await wire.send_located("executions", "ns-w", b"nope"))
    second = await dead_letter(
        wire, "executions", await wire.send_located("executions", "ns-w", b"nope again")
    )
    await waiting_becomes(worker, labels, 2)
    assert waiting(worker)[("relationships", "validation_error")] >= 1  # the first test's, untouched

    report = await cli_json(worker, "redrive", str(first.offset), "--partition", str(first.partition))
    to = report["outcomes"][0]["sent_to"]
    await dead_letter(wire, "executions", (to["partition"], to["offset"]))
    await waiting_becomes(worker, labels, 2)  # the redriven one is back, as a new dead letter
    await cli_json(worker, "discard", "--topic", "executions")
    await waiting_becomes(worker, labels, 0)
    assert (await cli_json(worker, "list", "--topic", "executions", "--waiting"))["matched"] == 0
    assert second.headers["nexus-error-code"] == "undecodable"
