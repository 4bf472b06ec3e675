"""The namespace actor's state table underneath Faust: raw bytes per partition, written a batch at a
time.

Faust keeps the `state` table's changelog, recovers it (from the local RocksDB state where there is
one, from the changelog otherwise) and keeps standby replicas. The actor reads and writes the
partitions' stores directly, without Faust's per-key path (which needs a current event, sends one
changelog record at a time and, with `memory://`, keeps every value as decoded Python objects plus
a partition index entry per key):

- `memory://` is `PartitionedMemoryStore`: a dict of bytes per partition;
- `rocksdb://` is Faust's RocksDB store: one database per partition, written by `WriteBatch`.

`PartitionStores` is the one boundary both stand behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from faust.stores import memory
from faust.types import TP, EventT

#: where Faust finds PartitionedMemoryStore (its store registry takes module:class paths)
STORE_CLASS = "nexus_streams.streams.stores:PartitionedMemoryStore"


class PartitionedMemoryStore(memory.Store):  # type: ignore[type-arg]
    """Faust's memory store as one dict of raw bytes per partition (values are not decoded, and
    no second index of keys is kept)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.partitions: dict[int, dict[bytes, bytes]] = {}

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT[Any]],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        for event in batch:
            message = event.message
            data = self.partitions.setdefault(message.partition, {})
            key = message.key or b""
            if message.value is None:
                data.pop(key, None)
            else:
                data[key] = message.value

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        kept = {tp.partition for tp in active_tps} | {tp.partition for tp in standby_tps}
        for partition in [p for p in self.partitions if p not in kept]:
            del self.partitions[partition]

    def _clear(self) -> None:
        self.partitions.clear()

    def reset_state(self) -> None:
        self.partitions.clear()


class PartitionStores(Protocol):
    """Raw state by partition: what the actor reads, and writes one batch at a time."""

    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def write(self, partition: int, writes: Mapping[bytes, bytes | None], offset: int | None) -> None:
        """Apply `writes` (None deletes) at once; `offset`: the changelog offset they reached."""
        ...

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]: ...

    def snapshot(self, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The stored items whose key starts with `prefix`, as they are now: the view is taken
        when this is called (later writes do not show), and read as the iterator is advanced."""
        ...

    def partitions(self) -> list[int]: ...


class MemoryStores:
    def __init__(self, store: PartitionedMemoryStore) -> None:
        self.store = store

    def get(self, partition: int, key: bytes) -> bytes | None:
        data = self.store.partitions.get(partition)
        return None if data is None else data.get(key)

    def write(self, partition: int, writes: Mapping[bytes, bytes | None], offset: int | None) -> None:
        data = self.store.partitions.setdefault(partition, {})
        for key, value in writes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        return iter(list(self.store.partitions.get(partition, {}).items()))

    def snapshot(self, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        # a shallow copy (the values are immutable bytes): ~35 ms per million keys
        copy = dict(self.store.partitions.get(partition, {}))
        return ((key, value) for key, value in copy.items() if key.startswith(prefix))

    def partitions(self) -> list[int]:
        return sorted(self.store.partitions)


class RocksStores:
    """Faust's RocksDB store (rocksdict), one database per partition."""

    def __init__(self, store: Any, changelog_topic: str) -> None:
        self.store = store
        self.changelog_topic = changelog_topic

    def get(self, partition: int, key: bytes) -> bytes | None:
        value: bytes | None = self.store._db_for_partition(partition).get(key)  # noqa: SLF001
        return value

    def write(self, partition: int, writes: Mapping[bytes, bytes | None], offset: int | None) -> None:
        import rocksdict

        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in writes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if offset is not None:
            batch.put(self.store.offset_key, str(offset).encode())
        self.store._db_for_partition(partition).write(batch)  # noqa: SLF001

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        offset_key = self.store.offset_key
        for key, value in self.store._db_for_partition(partition).items():  # noqa: SLF001
            if key != offset_key:
                yield key, value

    def snapshot(self, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        frozen = self.store._db_for_partition(partition).snapshot()  # noqa: SLF001 - RocksDB's own

        def items() -> Iterator[tuple[bytes, bytes]]:
            for key, value in frozen.items(from_key=prefix):
                if not key.startswith(prefix):
                    return
                yield key, value

        return items()

    def partitions(self) -> list[int]:
        return sorted(self.store._dbs)  # noqa: SLF001


def stores_of(table: Any) -> PartitionStores:
    store = table.data
    if isinstance(store, PartitionedMemoryStore):
        return MemoryStores(store)
    return RocksStores(store, table.changelog_topic.get_topic_name())
