"""`nexus-streams worker` with failures injected where a message is handled, for
test_hostile_input.py: a message whose value holds one of the markers below makes that place raise
`InjectedFault`, as a bug would. Run as `python -m tests.integration.faulty_worker worker`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from nexus_streams import pattern_registry, service
from nexus_streams.cli import main
from nexus_streams.domain import algorithms, graph
from nexus_streams.executions import Executions
from nexus_streams.streams import app


class InjectedFault(Exception):
    """Raised by the test where the code did not foresee a failure."""


#: marker -> what raises; each is looked for in the raw value of the message being handled
MARKERS = {
    "fault:actor": "the namespace actor, around the service (NamespaceService.handle)",
    "fault:create": "a relationship command (plan_create)",
    "fault:query": "a graph query (find_path)",
    "fault:execution": "an execution (Executions.start)",
    "fault:prefetch": "the pattern prefetch of an execution (NamespaceActor.prefetch)",
    "fault:pattern": "the pattern agent, around the registry (PatternRegistry.handle)",
    "fault:validate": "a pattern command (validate_pattern)",
}

#: the raw value of the message being handled (the agents handle one at a time)
current: list[bytes] = [b""]


def _raises_on(marker: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def check() -> None:
        if marker.encode() in current[0]:
            raise InjectedFault(f"{marker} injected")

    if _is_coroutine(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            check()
            return await fn(*args, **kwargs)

        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check()
        return fn(*args, **kwargs)

    return wrapper


def _is_coroutine(fn: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)


def _noting(fn: Callable[..., Any], message_at: int) -> Callable[..., Any]:
    """Wrap what handles one message: note the message's value (argument `message_at`) first."""

    @functools.wraps(fn)
    async def wrapper(self: Any, *args: Any) -> Any:
        current[0] = args[message_at].value or b""
        return await fn(self, *args)

    return wrapper


def install() -> None:
    # handle_message(spec, msg, token, started); handle_event(event, msg)
    app.NamespaceActor.handle_message = _noting(app.NamespaceActor.handle_message, 1)  # type: ignore[method-assign]
    app.PatternActor.handle_event = _noting(app.PatternActor.handle_event, 1)  # type: ignore[method-assign]
    service.NamespaceService.handle = _raises_on("fault:actor", service.NamespaceService.handle)  # type: ignore[method-assign]
    service.plan_create = _raises_on("fault:create", graph.plan_create)
    service.algorithms.find_path = _raises_on("fault:query", algorithms.find_path)
    Executions.start = _raises_on("fault:execution", Executions.start)  # type: ignore[method-assign]
    app.NamespaceActor.prefetch = _raises_on("fault:prefetch", app.NamespaceActor.prefetch)  # type: ignore[method-assign]
    pattern_registry.PatternRegistry.handle = _raises_on(  # type: ignore[method-assign]
        "fault:pattern", pattern_registry.PatternRegistry.handle
    )
    pattern_registry.validate_pattern = _raises_on("fault:validate", pattern_registry.validate_pattern)


if __name__ == "__main__":
    install()
    main()
