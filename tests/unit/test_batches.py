"""Batches: what was queued while the previous batch was handled comes as the next batch."""

from __future__ import annotations

import asyncio

from nexus_streams.streams.batches import Batches


async def test_items_queued_during_a_batch_form_the_next_one_and_len_counts_both() -> None:
    seen: list[list[int]] = []
    gate = asyncio.Event()

    async def handle(batch: list[int]) -> None:
        seen.append(batch)
        await gate.wait()

    batches: Batches[int] = Batches("test", handle)
    batches.put(1)
    await asyncio.sleep(0)  # the task takes [1] and waits in handle
    batches.put(2)
    batches.put(3)
    assert (seen, len(batches)) == ([[1]], 3)  # one being handled, two queued
    gate.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert (seen, len(batches)) == ([[1], [2, 3]], 0)


async def test_with_linger_items_put_meanwhile_join_the_first_batch() -> None:
    seen: list[list[int]] = []
    done = asyncio.Event()

    async def handle(batch: list[int]) -> None:
        seen.append(batch)
        done.set()

    batches: Batches[int] = Batches("test", handle, linger_s=0.05)
    batches.put(1)
    await asyncio.sleep(0)  # the task wakes and lingers
    batches.put(2)
    batches.put(3)
    assert seen == []
    await asyncio.wait_for(done.wait(), timeout=5)
    assert seen == [[1, 2, 3]]
