"""The private parts of faust-streaming and aiokafka the worker's batch path relies on
(streams/consumer.py, streams/writer.py, streams/stores.py). pyproject.toml pins the versions
they were written against; this fails when an upgrade changes one of them."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder
from faust.stores import memory, rocksdb
from faust.tables.base import Collection
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

from nexus_streams.streams.consumer import BatchConsumer


def parameters(fn: object) -> list[str]:
    return list(inspect.signature(fn).parameters)  # type: ignore[arg-type]


def test_versions__the_ones_the_batch_path_was_written_against() -> None:
    assert version("faust-streaming") == "0.15.3"
    assert version("aiokafka").startswith("0.14.")


@pytest.mark.parametrize(
    ("owner", "name", "expected"),
    [
        (faust_consumer.Consumer, "_drain_messages", ["self", "fetcher"]),
        (faust_consumer.Consumer, "_wait_next_records", ["self", "timeout"]),
        (faust_consumer.Consumer, "track_message", ["self", "message"]),
        (faust_consumer.Consumer, "ack", ["self", "message"]),
        (faust_consumer.Consumer, "_add_gap", ["self", "tp", "offset_from", "offset_to"]),
        (faust_consumer.Consumer, "perform_seek", ["self"]),
        (faust_consumer.Consumer, "seek", ["self", "partition", "offset"]),
        (faust_consumer.Consumer, "commit", ["self", "topics", "start_new_transaction"]),
        (faust_consumer.Consumer, "on_partitions_revoked", ["self", "revoked"]),
        (faust_consumer.Consumer, "on_partitions_assigned", ["self", "assigned", "generation_id"]),
        (faust_consumer.Consumer, "wait_empty", ["self"]),
        (faust_consumer.Consumer, "stop_flow", ["self"]),
        (faust_aiokafka.Consumer, "_to_message", ["self", "tp", "record"]),
        (faust_aiokafka.Consumer, "highwater", ["self", "tp"]),
        (rocksdb.Store, "_db_for_partition", ["self", "partition"]),
        (memory.Store, "apply_changelog_batch", ["self", "batch", "to_key", "to_value"]),
        (memory.Store, "on_recovery_completed", ["self", "active_tps", "standby_tps"]),
        (Collection, "_new_store_by_url", ["self", "url"]),
        (AIOKafkaProducer, "send_batch", ["self", "batch", "topic", "partition"]),
        (
            BatchBuilder,
            "__init__",
            [
                "self",
                "batch_size",
                "compression_type",
                "is_transactional",
                "key_serializer",
                "value_serializer",
            ],
        ),
        (BatchBuilder, "append", ["self", "timestamp", "key", "value", "headers"]),
    ],
    ids=lambda v: v if isinstance(v, str) else getattr(v, "__qualname__", "")[:30],
)
def test_private_api__methods_keep_their_signatures(owner: type, name: str, expected: list[str]) -> None:
    assert parameters(getattr(owner, name)) == expected


def test_private_api__state_the_consumer_reads() -> None:
    """Attributes of Consumer's instances (read from its source: they are instance state)."""
    source = inspect.getsource(faust_consumer.Consumer)
    for attribute in (
        "_read_offset",
        "_buffered_partitions",
        "_n_acked",
        "_commit_every",
        "_unacked_messages",
        "_committed_offset",
        "_acked",
    ):
        assert f"self.{attribute}" in source, attribute
    assert "flow_active" in inspect.getsource(faust_consumer.Consumer)
    # the fetcher is a mode Service whose `_stopped` event the loop watches
    assert "_stopped" in inspect.getsource(faust_consumer.Consumer._drain_messages)


def test_private_api__transport_builds_its_consumer_from_a_class_attribute() -> None:
    assert issubclass(BatchConsumer, faust_aiokafka.Consumer)
    assert faust_aiokafka.Transport.Consumer is faust_aiokafka.Consumer
    assert "self.Consumer(" in inspect.getsource(faust_aiokafka.Transport.__mro__[1].create_consumer)


def test_private_api__stores_and_producer_internals() -> None:
    assert "offset_key" in inspect.getsource(rocksdb.Store)
    assert "self._dbs" in inspect.getsource(rocksdb.Store)
    assert "self._producer" in inspect.getsource(faust_aiokafka.Producer)
    # a store class is found by the scheme of the table's store URL
    assert "stores.by_url(url)" in inspect.getsource(Collection._new_store_by_url)


def test_private_api__revocation_forgets_acknowledgements_before_its_commit() -> None:
    """Why BatchConsumer.on_partitions_revoked commits first: Faust drops the revoked partitions'
    acknowledgements, then calls the app's handler (which waits for the streams and commits). If
    an upgrade commits before forgetting, the override is no longer needed (but still harmless)."""
    source = inspect.getsource(faust_consumer.Consumer.on_partitions_revoked)
    assert source.index("self._acked.pop(tp") < source.index("self._on_partitions_revoked")
