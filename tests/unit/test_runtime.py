"""GcEpochs and LoopWatch (nexus_streams/runtime.py): the worker's latency hygiene."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
import weakref
from collections.abc import Iterator

import pytest

from nexus_streams.runtime import GcEpochs, GcSettings, HeapTrim, LoopWatch
from tests.unit.test_metrics import Clock


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def clean_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    callbacks = list(gc.callbacks)
    yield
    gc.callbacks[:] = callbacks
    gc.set_threshold(*threshold)
    gc.unfreeze()


def cycle() -> Node:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a


def test_install_sets_the_young_threshold_and_freezes_after_full_collections(clean_gc: None) -> None:
    epochs = GcEpochs(GcSettings(threshold0=12_345))
    epochs.install()
    assert gc.get_threshold()[0] == 12_345
    gc.unfreeze()
    survivor = [Node() for _ in range(10)]
    gc.collect()
    assert epochs.full_collections == 1
    assert gc.get_freeze_count() >= len(survivor)


def test_without_freeze_nothing_is_frozen(clean_gc: None) -> None:
    epochs = GcEpochs(GcSettings(freeze=False))
    epochs.install()
    gc.unfreeze()
    gc.collect()
    assert gc.get_freeze_count() == 0
    epochs.settle()
    assert gc.get_freeze_count() == 0
    assert epochs.maybe_end_epoch() is None


def test_a_frozen_cycle_is_collected_at_the_end_of_the_epoch(clean_gc: None) -> None:
    clock = Clock()
    epochs = GcEpochs(GcSettings(full_interval_s=60), clock=clock)
    epochs.install()
    held: Node | None = cycle()
    ref = weakref.ref(held)
    epochs.settle()  # the cycle is alive here: frozen with the rest
    held = None
    # unreachable now, but frozen: young and full collections skip it
    gc.collect()
    assert ref() is not None
    clock.now = 59.0
    assert epochs.maybe_end_epoch() is None
    assert ref() is not None
    clock.now = 60.0
    seconds = epochs.maybe_end_epoch()
    assert seconds is not None and seconds >= 0
    assert ref() is None
    assert epochs.epochs == 1
    assert gc.get_freeze_count() > 0  # frozen again afterwards
    assert epochs.maybe_end_epoch() is None  # a new epoch started


def test_a_slow_collection_is_logged(clean_gc: None, caplog: pytest.LogCaptureFixture) -> None:
    epochs = GcEpochs(GcSettings(freeze=False, slow_s=1e-9))
    epochs.install()
    with caplog.at_level(logging.WARNING, logger="nexus_streams.runtime"):
        gc.collect()
    assert epochs.slow_collections == 1
    assert any("generation-2 garbage collection took" in r.getMessage() for r in caplog.records)
    quiet = GcEpochs(GcSettings(freeze=False, slow_s=0))
    epochs.uninstall()
    quiet.install()
    gc.collect()
    assert quiet.slow_collections == 0


def test_uninstall_removes_the_callback(clean_gc: None) -> None:
    epochs = GcEpochs(GcSettings())
    epochs.install()
    epochs.install()  # twice is once
    assert gc.callbacks.count(epochs._after_collection) == 1
    epochs.uninstall()
    assert epochs._after_collection not in gc.callbacks


async def wait_for(condition: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def block_the_loop_for(seconds: float) -> None:
    time.sleep(seconds)  # the stall under test, not a wait for a condition


async def test_loop_watch_observes_lag_and_reports_where_a_stuck_loop_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lags: list[float] = []
    watch = LoopWatch(lags.append, interval_s=0.01, warn_s=0.1)
    watch.start(asyncio.get_running_loop())
    try:
        await wait_for(lambda: len(lags) >= 3)
        assert max(lags) < 0.1  # an idle loop runs its ticks on time
        with caplog.at_level(logging.WARNING, logger="nexus_streams.runtime"):
            block_the_loop_for(0.4)
            await wait_for(lambda: any(lag >= 0.3 for lag in lags))
        assert watch.stalls == 1  # one stall, one report
        [record] = [r for r in caplog.records if "has not run a tick" in r.getMessage()]
        assert "block_the_loop_for" in record.getMessage()
    finally:
        watch.stop()
    count = len(lags)
    await asyncio.sleep(0.05)
    assert len(lags) == count  # stopped: no more ticks


async def test_loop_watch_with_warnings_off_starts_no_thread() -> None:
    lags: list[float] = []
    watch = LoopWatch(lags.append, interval_s=0.01, warn_s=0)
    watch.start(asyncio.get_running_loop())
    try:
        await wait_for(lambda: len(lags) >= 2)
        assert watch._thread is None
    finally:
        watch.stop()


# -- heap trim ---------------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_heap_trim__returns_freed_memory_to_the_system() -> None:
    now = [0.0]
    trim = HeapTrim(10.0, clock=lambda: now[0])
    assert trim._trim is not None, "glibc's malloc_trim (this project's machines run glibc)"
    # many mid-sized allocations (glibc's heap, not mmap), freed but one in a hundred
    chunks = [bytearray(4000) for _ in range(50_000)]
    kept = chunks[::100]
    del chunks
    before = _rss()
    assert trim.maybe_trim() is None  # not yet: interval_s has not passed
    now[0] = 11.0
    assert trim.maybe_trim() is not None and trim.trims == 1
    assert _rss() < before - 50 * 2**20, (before, _rss())
    assert kept


def test_heap_trim__off_with_interval_zero() -> None:
    trim = HeapTrim(0.0, clock=lambda: 100.0)
    assert trim.maybe_trim() is None and trim.trims == 0
