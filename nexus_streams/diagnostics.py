"""`kill -USR1 <worker pid>`: every asyncio task's await chain, written to the log.

For a worker that is alive but does nothing: where each task waits, down through coroutines and
async generators (where `Task.print_stack` stops), as file:line lines, without the locals' reprs
(some library objects fail to print themselves half-way through a fetch).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import types
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)


def _frame_line(frame: types.FrameType | None, what: str) -> str:
    if frame is None:
        return f"    ({what}, finished or not started)"
    code = frame.f_code
    return f"    {code.co_filename}:{frame.f_lineno} in {code.co_name}"


def _awaited(obj: Any) -> Any:
    """What a coroutine / generator / async generator step waits on, or None."""
    for attr in ("cr_await", "gi_yieldfrom", "ag_await"):
        if hasattr(obj, attr):
            return getattr(obj, attr)
    # wrappers (async_generator_asend, coroutine_wrapper, ...) hide what they drive: find it among
    # what they refer to
    for ref in gc.get_referents(obj):
        if isinstance(ref, (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)):
            return ref
    return None


def await_chain(task: asyncio.Task[Any]) -> Iterator[str]:
    obj: Any = task.get_coro()
    seen: set[int] = set()
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        frame = next((f for a in ("cr_frame", "gi_frame", "ag_frame") if (f := getattr(obj, a, None))), None)
        if isinstance(obj, (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)):
            yield _frame_line(frame, type(obj).__name__)
        elif isinstance(obj, asyncio.Future):
            yield f"    waiting on {type(obj).__name__} (done={obj.done()})"
            return
        elif type(obj).__name__ == "FutureIter":
            return  # awaiting a future
        obj = _awaited(obj)


def dump_tasks() -> str:
    lines = []
    for task in sorted(asyncio.all_tasks(), key=lambda t: t.get_name()):
        lines.append(f"task {task.get_name()}:")
        lines.extend(await_chain(task))
    return "\n".join(lines)


def install_task_dump(*extra: Callable[[], str]) -> None:
    """Replace the worker's SIGUSR1 handler (call from inside the running loop); `extra`: more
    state to write along (the consumer's partitions, say)."""

    def dump() -> None:
        log.warning("asyncio tasks:\n%s", dump_tasks())
        for more in extra:
            try:
                log.warning("%s", more())
            except Exception:  # a diagnostic must not take the worker down
                log.exception("diagnostic %r failed", more)

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
