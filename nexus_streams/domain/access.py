"""Who may do what with a pattern. Principals are the `principal` of each request; the admin role
comes from settings (`NEXUS_ADMINS`, comma-separated), or, when authentication is required, from
the `patterns:admin` scope of the request's token (`domain/auth.py`: `Grant.pattern_policy`).

| operation | system pattern | user or composite pattern |
|---|---|---|
| read (get, list, versions, stats) | everyone | everyone |
| store a new id | admins | everyone (who becomes its owner) |
| store a new version, deprecate, delete | admins | its owner, admins |
| execute | everyone, unless `execute_permission` lists principals: then those, the owner and admins |

Changing a pattern's kind to or from `system` counts as changing a system pattern.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from nexus_streams.domain.errors import Forbidden
from nexus_streams.domain.patterns import Pattern, PatternKind


class Operation(StrEnum):
    READ = "read"
    STORE = "store"
    DEPRECATE = "deprecate"
    DELETE = "delete"
    EXECUTE = "execute"


class Role(StrEnum):
    #: stores, changes and deletes system patterns and anyone's patterns; executes every pattern
    ADMIN = "admin"
    #: everyone else
    USER = "user"


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    admins: frozenset[str] = frozenset()
    #: the scope that makes a principal an admin, named in a refusal's `details.missing_scope`
    #: (None: admins are named in settings)
    admin_scope: str | None = None

    @classmethod
    def of(cls, admins: Iterable[str]) -> AccessPolicy:
        return cls(frozenset(admins))

    def role(self, principal: str) -> Role:
        return Role.ADMIN if principal in self.admins else Role.USER

    def is_admin(self, principal: str) -> bool:
        return principal in self.admins

    def check_store(self, principal: str, pattern: Pattern, existing: Pattern | None) -> None:
        """Storing `pattern` (a new id when `existing` is None, else a new version of it)."""
        if self.is_admin(principal):
            return
        if pattern.kind is PatternKind.SYSTEM or (
            existing is not None and existing.kind is PatternKind.SYSTEM
        ):
            raise self._forbidden(
                principal, Operation.STORE, pattern.id, "only admins store or change system patterns"
            )
        if existing is not None and existing.metadata.owner != principal:
            raise self._forbidden(
                principal,
                Operation.STORE,
                pattern.id,
                f"pattern {pattern.id!r} belongs to {existing.metadata.owner!r}; only its owner or an "
                "admin may change it",
            )

    def check_change(self, principal: str, operation: Operation, existing: Pattern) -> None:
        """Deprecating or deleting an existing pattern."""
        if self.is_admin(principal):
            return
        if existing.kind is PatternKind.SYSTEM:
            raise self._forbidden(
                principal, operation, existing.id, f"only admins {operation.value} system patterns"
            )
        if existing.metadata.owner != principal:
            raise self._forbidden(
                principal,
                operation,
                existing.id,
                f"pattern {existing.id!r} belongs to {existing.metadata.owner!r}; only its owner or an "
                f"admin may {operation.value} it",
            )

    def check_deprecate(self, principal: str, existing: Pattern) -> None:
        self.check_change(principal, Operation.DEPRECATE, existing)

    def check_delete(self, principal: str, existing: Pattern) -> None:
        self.check_change(principal, Operation.DELETE, existing)

    def check_execute(self, principal: str, pattern: Pattern) -> None:
        allowed = pattern.execute_permission
        if allowed is None or self.is_admin(principal) or principal == pattern.metadata.owner:
            return
        if principal not in allowed:
            raise self._forbidden(
                principal,
                Operation.EXECUTE,
                pattern.id,
                f"pattern {pattern.id!r} may be executed only by its owner, admins and: {', '.join(allowed)}",
            )

    def _forbidden(self, principal: str, operation: Operation, pattern_id: str, why: str) -> Forbidden:
        details: dict[str, str] = {"reason": "not_permitted"}
        if self.admin_scope is not None:
            details["missing_scope"] = self.admin_scope
        return Forbidden(
            f"{principal!r} may not {operation.value} pattern {pattern_id!r}: {why}",
            principal=principal,
            operation=operation.value,
            pattern_id=pattern_id,
            **details,
        )

    def check_read(self, principal: str, pattern: Pattern) -> None:
        """Everyone may read every pattern; here so that a future rule has one place to go."""

    def allows(
        self, principal: str, operation: Operation, pattern: Pattern, existing: Pattern | None = None
    ) -> bool:
        try:
            match operation:
                case Operation.STORE:
                    self.check_store(principal, pattern, existing)
                case Operation.EXECUTE:
                    self.check_execute(principal, pattern)
                case Operation.READ:
                    self.check_read(principal, pattern)
                case _:
                    self.check_change(principal, operation, pattern)
        except Forbidden:
            return False
        return True
