"""Looks up, ahead of validation, the patterns a composite document includes (validation is pure
and synchronous; the store is not)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nexus_streams.domain.errors import NotFound
from nexus_streams.domain.patterns import INCLUDE_STEP, Pattern
from nexus_streams.domain.validation import PatternResolver
from nexus_streams.store.base import PatternStore

Ref = tuple[str, int | None]


def _document_includes(document: Mapping[str, Any]) -> list[Ref]:
    refs: list[Ref] = []
    steps = document.get("steps")
    for step in steps if isinstance(steps, list) else []:
        if not isinstance(step, Mapping) or (step.get("type"), step.get("action")) != INCLUDE_STEP:
            continue
        parameters = step.get("parameters")
        if isinstance(parameters, Mapping) and isinstance(parameters.get("pattern_id"), str):
            version = parameters.get("version")
            valid_version = isinstance(version, int) and not isinstance(version, bool)
            refs.append((parameters["pattern_id"], version if valid_version else None))
    return refs


async def inclusion_resolver(
    store: PatternStore, document: Mapping[str, Any], max_depth: int
) -> PatternResolver:
    """A resolver over every pattern the document includes, transitively, up to one level past
    `max_depth` (enough for validation to see a cycle or a nesting that is too deep)."""
    found: dict[Ref, Pattern | None] = {}
    frontier = _document_includes(document)
    for _ in range(max_depth + 1):
        following: list[Ref] = []
        for ref in frontier:
            if ref in found:
                continue
            try:
                pattern: Pattern | None = await store.get(*ref)
            except NotFound:
                pattern = None
            found[ref] = pattern
            if pattern is not None:
                following += [(i.pattern_id, i.version) for i in pattern.includes()]
        frontier = following

    def resolve(pattern_id: str, version: int | None) -> Pattern | None:
        return found.get((pattern_id, version))

    return resolve
