"""The worker process's latency hygiene: garbage collection in epochs, and a watch on the event loop.

**Garbage collection.** CPython's full (generation 2) collection walks every container object the
process holds. A worker holds many long-lived ones (Faust's and aiokafka's machinery, remembered
requests, waiting executions), so under load a full collection took 50-100 ms about once a second
(measured with `gc.callbacks` during `bench/executions.py`), and each one stalls every partition of
the worker. `GcEpochs` freezes what survived a full collection (`gc.freeze`: later collections skip
it), so a full collection only walks what was allocated since the last one. Frozen objects are still
freed by reference counting; only garbage *cycles* among them would stay, so every `full_interval_s`
the epoch ends: unfreeze, one complete collection, freeze again (one longer pause, rarely).

**Heap trim.** glibc's allocator keeps what the process freed for its own reuse: after a burst
(a batch load's fetches, records and replies) the worker's RSS stayed at its peak, ~58% of it free
memory inside the heap (measured with `malloc_trim` called from gdb after loading 20k relationships:
RSS above baseline 6.4 -> 2.7 KB per relationship). `HeapTrim` calls `malloc_trim(0)` from the
maintenance timer every `interval_s`, returning those
pages (a few ms; logged when slow). Elsewhere than glibc it does nothing.

**Event loop watch.** `LoopWatch` ticks on the loop every `interval_s` and reports how late each tick
ran (the loop's lag: the time a ready message waits because something else holds the loop); a
thread notices a loop that has not ticked for `warn_s` and logs where the loop thread is at that
moment, once per stall; a garbage collection as long is logged by `GcEpochs` (it holds the GIL,
so the watch's thread cannot see it). docs/observability.md, "A slow worker".
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from nexus_streams.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcSettings:
    #: generation 0 threshold (allocations minus deallocations before a young collection)
    threshold0: int = 20_000
    #: freeze what survives a full collection
    freeze: bool = True
    #: seconds between complete collections of frozen objects too (0: never)
    full_interval_s: float = 900.0
    #: log a collection that took at least this long (0: never)
    slow_s: float = 0.25

    @classmethod
    def of(cls, settings: Settings) -> GcSettings:
        """The `NEXUS_GC_*` settings; a collection is slow as a loop stall is
        (`NEXUS_LOOP_STALL_WARN_MS`)."""
        return cls(
            settings.gc_threshold0,
            settings.gc_freeze,
            settings.gc_full_interval_s,
            slow_s=settings.loop_stall_warn_ms / 1000,
        )


class GcEpochs:
    """Freeze the survivors of each full collection; a complete collection every epoch."""

    def __init__(self, settings: GcSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._epoch_started = clock()
        self._installed = False
        self._collecting_since = 0.0
        #: full collections seen, epochs ended, slow collections logged (for tests and the log)
        self.full_collections = 0
        self.epochs = 0
        self.slow_collections = 0

    def install(self) -> None:
        if self._installed:
            return
        _, threshold1, threshold2 = gc.get_threshold()
        gc.set_threshold(self.settings.threshold0, threshold1, threshold2)
        gc.callbacks.append(self._after_collection)
        self._installed = True

    def uninstall(self) -> None:
        if self._installed and self._after_collection in gc.callbacks:
            gc.callbacks.remove(self._after_collection)
        self._installed = False

    def _after_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._collecting_since = time.perf_counter()
            return
        # a collection holds the GIL: the loop watch's thread cannot see it, so it is told here
        seconds = time.perf_counter() - self._collecting_since
        slow = self.settings.slow_s
        if slow > 0 and seconds >= slow:
            self.slow_collections += 1
            log.warning(
                "a generation-%s garbage collection took %.0f ms (%s objects freed)",
                info.get("generation"),
                seconds * 1000,
                info.get("collected"),
            )
        if self.settings.freeze and info.get("generation") == 2:
            self.full_collections += 1
            gc.freeze()

    def settle(self) -> None:
        """After start-up or recovery: collect once and freeze what is left (the rebuilt graphs,
        the loaded tables), so no later collection walks it."""
        if not self.settings.freeze:
            return
        gc.collect()
        gc.freeze()
        self._epoch_started = self._clock()

    def maybe_end_epoch(self) -> float | None:
        """Call now and then (the maintenance timer): at the end of an epoch, a complete
        collection of frozen objects too; returns its seconds, or None when it is not time."""
        interval = self.settings.full_interval_s
        if not self.settings.freeze or interval <= 0 or self._clock() - self._epoch_started < interval:
            return None
        started = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.epochs += 1
        self._epoch_started = self._clock()
        return time.perf_counter() - started


class HeapTrim:
    """`malloc_trim(0)` now and then (see the module docstring)."""

    def __init__(
        self, interval_s: float, slow_s: float = 0.25, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self.slow_s = slow_s
        self._clock = clock
        self._trim = _malloc_trim() if interval_s > 0 else None
        self._last = clock()
        #: trims done (for tests and the log)
        self.trims = 0

    def maybe_trim(self) -> float | None:
        """Trim when `interval_s` passed since the last trim; returns its seconds, or None. (On a
        heap with nothing to give back it costs well under a millisecond.)"""
        if self._trim is None or self._clock() - self._last < self.interval_s:
            return None
        self._last = self._clock()
        started = time.perf_counter()
        self._trim(0)
        seconds = time.perf_counter() - started
        self.trims += 1
        if self.slow_s > 0 and seconds >= self.slow_s:
            log.warning("returning free heap memory to the system (malloc_trim) took %.0f ms", seconds * 1000)
        return seconds


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, None where there is none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return cast("Callable[[int], int]", trim)


class LoopWatch:
    """The event loop's lag, observed every tick; a stack trace of a loop stuck for `warn_s`."""

    def __init__(
        self,
        observe: Callable[[float], None],
        *,
        interval_s: float = 0.05,
        warn_s: float = 0.2,
    ) -> None:
        self.observe = observe
        self.interval_s = interval_s
        self.warn_s = warn_s
        self._last_tick = time.monotonic()
        self._loop_thread: int | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: stalls logged (for tests and the log)
        self.stalls = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Call from inside the running `loop`."""
        self._loop_thread = threading.get_ident()
        self._last_tick = time.monotonic()
        self._schedule(loop, self._last_tick + self.interval_s)
        if self.warn_s > 0:
            self._thread = threading.Thread(target=self._guard, name="nexus-loop-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _schedule(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        self._handle = loop.call_later(max(0.0, due - time.monotonic()), self._tick, loop, due)

    def _tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        now = time.monotonic()
        self._last_tick = now
        try:
            self.observe(max(0.0, now - due))
        finally:
            if not self._stop.is_set():
                self._schedule(loop, now + self.interval_s)

    def _guard(self) -> None:
        reported = 0.0  # the tick of the stall already reported
        while not self._stop.wait(self.warn_s / 2):
            last = self._last_tick
            stuck = time.monotonic() - last
            if stuck < self.warn_s + self.interval_s or last == reported:
                continue
            reported = last
            self.stalls += 1
            frame = sys._current_frames().get(self._loop_thread or -1)  # noqa: SLF001 - the documented way
            where = "".join(traceback.format_stack(frame, limit=12)) if frame is not None else "(unknown)\n"
            log.warning(
                "the event loop has not run a tick for %.0f ms; the loop thread is at:\n%s",
                stuck * 1000,
                where.rstrip(),
            )
