"""A namespace's optional schema: which entity kinds may hold which relationship.

    {"owner": ["user -> wallet"], "member": ["user -> group", "service -> group"]}

An entity's kind is its id up to the first `:` (`user:1` is a `user`); `*` matches any kind.
Types the schema does not name are unrestricted. `child` rules read as the inverse `parent`
rules, `linked` rules match either way round. The schema applies to writes made after it is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nexus_streams.domain.errors import ValidationFailed
from nexus_streams.domain.relationships import RelationType, canonical_key, parse_type

WILDCARD = "*"
MAX_RULES = 1000


def kind_of(entity: str) -> str:
    return entity.split(":", 1)[0] if ":" in entity else ""


@dataclass(frozen=True)
class Schema:
    #: canonical type -> allowed (source kind, target kind) pairs, in canonical direction
    rules: dict[RelationType, frozenset[tuple[str, str]]]
    document: dict[str, list[str]]

    @classmethod
    def parse(cls, document: dict[str, Any]) -> Schema:
        rules: dict[RelationType, set[tuple[str, str]]] = {}
        problems: list[dict[str, str]] = []
        count = 0
        for type_name, entries in document.items():
            try:
                type_ = parse_type(type_name)
            except Exception as exc:  # noqa: BLE001 - reported with its path below
                problems.append({"field": f"schema.{type_name}", "message": str(exc)})
                continue
            # a named type is restricted to its rules, even to none
            rules.setdefault(RelationType.PARENT if type_ is RelationType.CHILD else type_, set())
            if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
                problems.append(
                    {
                        "field": f"schema.{type_name}",
                        "message": "expected a list of 'kind -> kind' strings",
                    }
                )
                continue
            for i, entry in enumerate(entries):
                count += 1
                parts = [p.strip() for p in entry.split("->")]
                if len(parts) != 2 or not all(parts):
                    problems.append(
                        {
                            "field": f"schema.{type_name}.{i}",
                            "message": f"{entry!r} is not 'kind -> kind'",
                        }
                    )
                    continue
                key = canonical_key(parts[0], type_, parts[1])
                pairs = rules.setdefault(key.type, set())
                pairs.add((key.source, key.target))
                if key.type is RelationType.LINKED:
                    pairs.add((key.target, key.source))
        if count > MAX_RULES:
            problems.append({"field": "schema", "message": f"{count} rules; the limit is {MAX_RULES}"})
        if problems:
            summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
            raise ValidationFailed(f"invalid schema: {summary}", errors=problems)
        return cls({t: frozenset(p) for t, p in rules.items()}, document)

    def violation(self, source: str, type_: RelationType, target: str) -> str | None:
        """Why `source type target` breaks the schema, or None if it is allowed."""
        key = canonical_key(source, type_, target)
        allowed = self.rules.get(key.type)
        if allowed is None:
            return None
        s, t = kind_of(key.source), kind_of(key.target)
        for rule_s, rule_t in allowed:
            if rule_s in (s, WILDCARD) and rule_t in (t, WILDCARD):
                return None
        rules = ", ".join(f"{a} -> {b}" for a, b in sorted(allowed))
        return (
            f"the namespace schema does not allow {key.type.value} from a {s or '(no kind)'!r} to a "
            f"{t or '(no kind)'!r} entity; allowed: {rules}"
        )
