"""The system patterns shipped with the service: the spec's examples, as JSON documents here.

They are registered at worker start by `register_system_patterns` (idempotent: an unchanged
document makes no new version)."""

from __future__ import annotations

from importlib import resources

from nexus_streams.domain.errors import NotFound
from nexus_streams.domain.patterns import Pattern, PatternKind, load_document
from nexus_streams.domain.validation import validate_pattern
from nexus_streams.store.base import PatternStore, StoredVersion

#: the principal recorded as owner and author of the shipped versions
SYSTEM_PRINCIPAL = "system"
SYSTEM_PATTERN_FILES = ("user_onboarding.json", "financial_transaction.json")


def system_patterns() -> list[Pattern]:
    """The shipped system patterns, validated."""
    folder = resources.files(__name__)
    patterns = []
    for name in SYSTEM_PATTERN_FILES:
        pattern = validate_pattern(load_document(folder.joinpath(name).read_bytes()))
        assert pattern.kind is PatternKind.SYSTEM, f"{name} must be a system pattern"
        patterns.append(pattern)
    return patterns


async def register_system_patterns(store: PatternStore) -> list[StoredVersion]:
    """Stores each shipped pattern unless an admin has stored a version of it since the shipped
    one: a shipped change becomes a new version; an admin's change is not overwritten."""
    registered = []
    for pattern in system_patterns():
        try:
            current = await store.get(pattern.id)
        except NotFound:
            current = None
        if current is not None and current.metadata.created_by != SYSTEM_PRINCIPAL:
            continue
        registered.append(await store.put(pattern, SYSTEM_PRINCIPAL))
    return registered
