"""Before the worker starts: the public topics created, and a crashed worker's previous
incarnation taken out of the consumer group."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import CoordinationType
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.protocol.group import LeaveGroupRequest

from nexus_streams.connection import kafka_options
from nexus_streams.settings import Settings
from nexus_streams.topics import ALL_TOPICS, STATE_MAX_MESSAGE_BYTES, Partitioning

log = logging.getLogger(__name__)


class TopicMismatch(Exception):
    """An existing topic has a partition count that breaks co-partitioning."""


#: the namespace actor's and the pattern registry's changelog-backed tables (streams/tables.py)
TABLES = ("state", "pattern_requests")
_NAMESPACE = Partitioning.NAMESPACE
_SPREAD = Partitioning.SPREAD


def changelog_topic(settings: Settings, table: str) -> str:
    """Faust's name for a table's changelog topic."""
    return f"{settings.app_id}-{table}-changelog"


def _spread(settings: Settings) -> set[str]:
    return {settings.topic(spec.name) for spec in ALL_TOPICS if spec.partitioning is Partitioning.SPREAD}


async def ensure_topics(settings: Settings, timeout_s: float = 60.0) -> dict[str, int]:
    """Create missing topics; return {topic: partitions}. Idempotent; safe with several workers."""
    admin = AIOKafkaAdminClient(**kafka_options(settings), request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        policies = {settings.topic(spec.name): spec.cleanup_policy for spec in ALL_TOPICS}
        limits = {
            settings.topic(spec.name): spec.max_message_bytes for spec in ALL_TOPICS if spec.max_message_bytes
        }
        limits |= {changelog_topic(settings, table): STATE_MAX_MESSAGE_BYTES for table in TABLES}
        # the tables' changelogs too: left to Faust, their creation races its first assignment on a
        # new broker (the agent then fails with PartitionsMismatch on a changelog it cannot see yet)
        policies |= {changelog_topic(settings, table): "compact" for table in TABLES}
        wanted = {name: _NAMESPACE if name not in _spread(settings) else _SPREAD for name in policies}
        existing = await _partitions(admin, list(wanted))
        missing = [
            NewTopic(
                name=name,
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs={"cleanup.policy": policy}
                | ({"max.message.bytes": str(limits[name])} if name in limits else {}),
            )
            for name, policy in policies.items()
            if name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another worker won the race
            log.info("created topics: %s", ", ".join(t.name for t in missing))
        await _raise_message_limits(admin, {n: b for n, b in limits.items() if n in existing})
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            existing = await _partitions(admin, list(wanted))
            if len(existing) == len(wanted):
                break
            if asyncio.get_running_loop().time() > deadline:
                absent = sorted(set(wanted) - set(existing))
                raise TimeoutError(f"topics not visible after {timeout_s}s: {absent}")
            await asyncio.sleep(0.2)
        for name, partitioning in wanted.items():
            if partitioning is _NAMESPACE and existing[name] != settings.partitions:
                raise TopicMismatch(
                    f"topic {name} has {existing[name]} partitions but NEXUS_PARTITIONS is "
                    f"{settings.partitions}; the namespace topics must be co-partitioned"
                )
        return existing
    finally:
        await admin.close()


#: DescribeConfigs' config_source of a topic's own (dynamic) setting
_DYNAMIC_TOPIC_CONFIG = 1


async def _raise_message_limits(admin: AIOKafkaAdminClient, wanted: dict[str, int]) -> None:
    """Topics made before the worker asked for a larger `max.message.bytes` (the changelogs, the
    dead letters) get it; their other settings of their own are kept (AlterConfigs replaces the
    whole set)."""
    if not wanted:
        return
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in wanted]
    changes = []
    for response in await admin.describe_configs(resources):
        for _code, _message, _type, name, entries in response.resources:
            own = {entry[0]: entry[1] for entry in entries if _is_own(entry, response.API_VERSION)}
            current = next((int(e[1]) for e in entries if e[0] == "max.message.bytes"), 0)
            if current < wanted[name]:
                own["max.message.bytes"] = str(wanted[name])
                changes.append(ConfigResource(ConfigResourceType.TOPIC, name, configs=own))
    if changes:
        await admin.alter_configs(changes)
        log.info("raised max.message.bytes of %s", ", ".join(c.name for c in changes))


def _is_own(entry: tuple[Any, ...], api_version: int) -> bool:
    """A topic's own setting: `is_default` false (DescribeConfigs v0), or from the topic (v1+)."""
    if api_version == 0:
        return not entry[3]
    return bool(entry[3] == _DYNAMIC_TOPIC_CONFIG)


async def _partitions(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for meta in await admin.describe_topics(names):
        if meta.get("error_code", 0) == 0 and meta.get("partitions"):
            found[meta["topic"]] = len(meta["partitions"])
    return found


async def delete_topics_with_prefixes(
    bootstrap: str, prefixes: tuple[str, ...], groups: list[str] | None = None, timeout_s: float = 60.0
) -> list[str]:
    """Delete every topic whose name starts with one of `prefixes` (public, changelog and Faust's
    internal topics of a run), and the consumer `groups`; returns the topics deleted. For tests
    and benchmarks that leave the broker as they found it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        doomed = sorted(t for t in await admin.list_topics() if t.startswith(prefixes))
        if doomed:
            await admin.delete_topics(doomed)
        if groups:
            try:
                await admin.delete_consumer_groups(groups)
            except Exception as exc:  # a group that never committed does not exist: nothing to do
                log.debug("deleting consumer groups %s: %r", groups, exc)
        return doomed
    finally:
        await admin.close()


# -- the previous incarnation of a worker -----------------------------------------------------------


def member_file(settings: Settings) -> Path:
    """Where the worker keeps its consumer group member id (in its data directory)."""
    return Path(settings.data_dir) / f"{settings.app_id}.member-id"


def remember_member(path: Path, member_id: str) -> None:
    """Keep the member id the group gave this worker (at each assignment; atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(member_id)
    os.replace(partial, path)


async def leave_for_previous_run(settings: Settings, timeout_s: float = 10.0) -> str | None:
    """Take the worker's previous incarnation out of the group, if the data directory names one.

    A worker that crashed (SIGKILL, OOM, power) stays a member until its session times out
    (`NEXUS_SESSION_TIMEOUT_S`), and the rebalance its successor starts waits for it: ~6 s of a
    10 s timeout before the restarted worker answered anything. A LeaveGroup with the old member
    id ends that wait at once. A member id that is no longer in the group is refused
    (UNKNOWN_MEMBER_ID), harmlessly. Static members (`NEXUS_GROUP_INSTANCE_ID`) are replaced by the
    broker itself. Returns the broker's answer (None: nothing to do, or it could not be asked:
    the session timeout then does it, later)."""
    path = member_file(settings)
    if settings.group_instance_id is not None or not path.is_file():
        return None
    member_id = path.read_text().strip()
    if not member_id:
        return None
    admin = AIOKafkaAdminClient(**kafka_options(settings), request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        client = admin._client  # noqa: SLF001 - the admin client has no LeaveGroup of its own
        coordinator = await asyncio.wait_for(
            client.coordinator_lookup(CoordinationType.GROUP, settings.app_id), timeout_s
        )
        response = await asyncio.wait_for(
            client.send(coordinator, LeaveGroupRequest(settings.app_id, member_id)), timeout_s
        )
        answer: str = for_code(response.error_code).__name__
    except Exception as exc:  # the session timeout removes it, later
        log.warning("could not take the previous run's member %s out of the group: %r", member_id, exc)
        return None
    finally:
        await admin.close()
    log.info("the previous run's group member %s left the group: %s", member_id, answer)
    return answer
