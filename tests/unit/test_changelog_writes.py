"""ChangelogWrites: the futures of a table's changelog sends, taken per reply."""

from __future__ import annotations

import asyncio
from typing import Any

from nexus_streams.streams.tables import ChangelogWrites


class FakeTable:
    """Only what ChangelogWrites wraps: `send_changelog` returning the record's future."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []

    def send_changelog(
        self, partition: int | None, key: Any, value: Any, **kwargs: Any
    ) -> asyncio.Future[Any]:
        self.sent.append((key, value))
        return asyncio.get_running_loop().create_future()


async def test_take_returns_the_futures_of_the_sends_since_the_last_take() -> None:
    table = FakeTable()
    writes = ChangelogWrites(table)
    first = table.send_changelog(0, "a", 1)
    second = table.send_changelog(0, "b", None)
    assert writes.take() == [first, second]
    assert writes.take() == []
    third = table.send_changelog(1, "c", 3)
    assert writes.take() == [third]
    assert table.sent == [("a", 1), ("b", None), ("c", 3)]  # the sends themselves still happen
