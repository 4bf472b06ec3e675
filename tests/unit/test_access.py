"""Who may store, change, deprecate, delete, read and execute which pattern."""

from __future__ import annotations

from typing import Any

import pytest

from nexus_streams.domain.access import AccessPolicy, Operation, Role
from nexus_streams.domain.errors import ErrorCode, Forbidden
from nexus_streams.domain.patterns import Pattern, PatternKind
from nexus_streams.settings import Settings

POLICY = AccessPolicy.of(["root", "ops"])
STEP = {"type": "graph", "action": "find_path", "parameters": {"source": "a", "target": "b"}}


def pattern(kind: PatternKind = PatternKind.USER, owner: str | None = None, **fields: Any) -> Pattern:
    return Pattern.model_validate(
        {"id": "p", "name": "P", "kind": kind, "steps": [STEP], "metadata": {"owner": owner}, **fields}
    )


SYSTEM = pattern(PatternKind.SYSTEM, owner="system")
ALICES = pattern(PatternKind.USER, owner="alice")
ALICES_COMPOSITE = pattern(PatternKind.COMPOSITE, owner="alice")

STORE_CASES: list[tuple[str, str, Pattern, Pattern | None, bool]] = [
    # name, principal, pattern stored, existing, allowed
    ("anyone stores a new user pattern", "bob", pattern(), None, True),
    ("anyone stores a new composite pattern", "bob", pattern(PatternKind.COMPOSITE), None, True),
    ("a user may not store a new system pattern", "bob", pattern(PatternKind.SYSTEM), None, False),
    ("an admin stores a new system pattern", "root", pattern(PatternKind.SYSTEM), None, True),
    ("the owner changes her pattern", "alice", pattern(), ALICES, True),
    (
        "the owner changes her composite pattern",
        "alice",
        pattern(PatternKind.COMPOSITE),
        ALICES_COMPOSITE,
        True,
    ),
    ("another user may not change it", "bob", pattern(), ALICES, False),
    ("an admin changes anyone's pattern", "ops", pattern(), ALICES, True),
    ("a user may not change a system pattern", "bob", pattern(), SYSTEM, False),
    (
        "even the system pattern's recorded owner is no admin",
        "system",
        pattern(PatternKind.SYSTEM),
        SYSTEM,
        False,
    ),
    ("an admin changes a system pattern", "root", pattern(PatternKind.SYSTEM), SYSTEM, True),
    (
        "the owner may not make her pattern a system pattern",
        "alice",
        pattern(PatternKind.SYSTEM),
        ALICES,
        False,
    ),
    ("an admin turns a system pattern into a user pattern", "root", pattern(), SYSTEM, True),
]


@pytest.mark.parametrize(
    ("name", "principal", "stored", "existing", "allowed"), STORE_CASES, ids=[c[0] for c in STORE_CASES]
)
def test_store(name: str, principal: str, stored: Pattern, existing: Pattern | None, allowed: bool) -> None:
    assert POLICY.allows(principal, Operation.STORE, stored, existing) is allowed
    if allowed:
        POLICY.check_store(principal, stored, existing)
    else:
        with pytest.raises(Forbidden) as info:
            POLICY.check_store(principal, stored, existing)
        assert info.value.code is ErrorCode.FORBIDDEN
        assert info.value.details == {
            "principal": principal,
            "operation": "store",
            "pattern_id": "p",
            "reason": "not_permitted",
        }


CHANGE_CASES: list[tuple[str, Pattern, bool]] = [
    # principal, existing, allowed (the same for deprecate and delete)
    ("alice", ALICES, True),
    ("alice", ALICES_COMPOSITE, True),
    ("bob", ALICES, False),
    ("root", ALICES, True),
    ("alice", SYSTEM, False),
    ("system", SYSTEM, False),
    ("ops", SYSTEM, True),
]


@pytest.mark.parametrize("operation", [Operation.DEPRECATE, Operation.DELETE])
@pytest.mark.parametrize(("principal", "existing", "allowed"), CHANGE_CASES)
def test_deprecate_and_delete(operation: Operation, principal: str, existing: Pattern, allowed: bool) -> None:
    check = POLICY.check_deprecate if operation is Operation.DEPRECATE else POLICY.check_delete
    assert POLICY.allows(principal, operation, existing) is allowed
    if allowed:
        check(principal, existing)
    else:
        with pytest.raises(Forbidden) as info:
            check(principal, existing)
        assert info.value.details["operation"] == operation.value
        assert f"'{principal}' may not {operation.value} pattern 'p'" in info.value.message


EXECUTE_CASES: list[tuple[str, Pattern, bool]] = [
    ("anyone", ALICES, True),
    ("anyone", SYSTEM, True),
    ("bob", pattern(owner="alice", execute_permission=["bob"]), True),
    ("carol", pattern(owner="alice", execute_permission=["bob"]), False),
    ("alice", pattern(owner="alice", execute_permission=["bob"]), True),  # the owner always may
    ("root", pattern(owner="alice", execute_permission=["bob"]), True),  # admins always may
    ("bob", pattern(owner="alice", execute_permission=[]), False),  # an empty list: owner and admins only
    ("carol", pattern(PatternKind.SYSTEM, owner="system", execute_permission=["bob"]), False),
]


@pytest.mark.parametrize(("principal", "target", "allowed"), EXECUTE_CASES)
def test_execute(principal: str, target: Pattern, allowed: bool) -> None:
    assert POLICY.allows(principal, Operation.EXECUTE, target) is allowed
    if not allowed:
        with pytest.raises(Forbidden, match="may be executed only by its owner, admins and"):
            POLICY.check_execute(principal, target)


@pytest.mark.parametrize("target", [ALICES, SYSTEM, pattern(owner="alice", execute_permission=[])])
def test_read__everyone(target: Pattern) -> None:
    assert POLICY.allows("anyone", Operation.READ, target)
    POLICY.check_read("anyone", target)


def test_roles() -> None:
    assert POLICY.role("root") is Role.ADMIN
    assert POLICY.role("alice") is Role.USER
    assert AccessPolicy().role("root") is Role.USER  # no admins unless configured


@pytest.mark.parametrize(
    ("value", "admins"),
    [("", set()), ("root", {"root"}), ("root, ops ,", {"root", "ops"}), (" , ", set())],
)
def test_settings__admins_from_a_comma_separated_list(
    value: str, admins: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_ADMINS", value)
    settings = Settings()
    assert settings.admin_principals() == admins
    assert AccessPolicy.of(settings.admin_principals()).admins == admins
