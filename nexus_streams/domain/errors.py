"""Errors of the domain, each with a stable machine-readable code (part of the public API)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar


class ErrorCode(StrEnum):
    """Stable error codes carried in `error.code` of results and `error` events."""

    #: a message is valid JSON but does not match the schema of its topic
    VALIDATION_ERROR = "validation_error"
    #: `action` names no command of the topic
    UNKNOWN_ACTION = "unknown_action"
    #: `type` names no relationship type
    UNKNOWN_RELATIONSHIP_TYPE = "unknown_relationship_type"
    #: a relationship breaks a rule not covered by a more specific code
    INVALID_RELATIONSHIP = "invalid_relationship"
    #: source and target are the same entity
    SELF_RELATIONSHIP = "self_relationship"
    #: an entity id is empty, too long, or has whitespace or control characters
    INVALID_ENTITY_ID = "invalid_entity_id"
    #: metadata is larger than its limit
    METADATA_TOO_LARGE = "metadata_too_large"
    #: a batch has more commands than its limit
    BATCH_TOO_LARGE = "batch_too_large"
    #: the namespace schema does not allow this relationship between these entity kinds
    SCHEMA_VIOLATION = "schema_violation"
    #: the relationship exists already
    DUPLICATE_RELATIONSHIP = "duplicate_relationship"
    #: the thing asked for does not exist
    NOT_FOUND = "not_found"
    #: the change would close a cycle in the parent/child hierarchy
    CYCLE_DETECTED = "cycle_detected"
    #: a standing query of this subscription_id exists already, with another definition
    SUBSCRIPTION_EXISTS = "subscription_exists"
    #: no path within the asked depth
    PATH_NOT_FOUND = "path_not_found"
    #: a step depends on an unknown step
    DEPENDENCY_ERROR = "dependency_error"
    #: the state changed since the version the request expected
    CONCURRENT_MODIFICATION = "concurrent_modification"
    #: a step or an execution ran out of time
    TIMEOUT = "timeout"
    #: a size, count or depth limit was reached
    RESOURCE_LIMIT = "resource_limit"
    #: the principal may not do this (`details.missing_scope`: the scope it would need)
    FORBIDDEN = "forbidden"
    #: authentication is required and the message has no valid token (`details.reason` says why)
    UNAUTHENTICATED = "unauthenticated"
    #: the principal sent more than its rate limit; `details.retry_after_s` says when to try again
    RATE_LIMITED = "rate_limited"
    #: a pattern execution failed for another reason
    EXECUTION_ERROR = "execution_error"
    #: the service failed; the request may be retried
    INTERNAL_ERROR = "internal_error"
    #: a step names a (type, action) that no step kind has
    UNKNOWN_STEP = "unknown_step"
    #: the pattern is deprecated: it takes no new executions
    PATTERN_DEPRECATED = "pattern_deprecated"
    #: the pattern store (Redis) did not answer after retries; the request may be retried
    STORE_UNAVAILABLE = "store_unavailable"
    #: a backup file's header names a format or format version this version cannot read
    UNKNOWN_FORMAT_VERSION = "unknown_format_version"
    #: a backup file is not what its header says (a line is not JSON, a field is missing, cut short)
    INVALID_BACKUP = "invalid_backup"


class NexusError(Exception):
    """Base of every error the service reports; `code` is stable, `message` says what to fix."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code.value, "message": self.message, "details": self.details}

    @property
    def reason(self) -> str:
        """What an operator reads in a dead letter's `nexus-error-reason` header."""
        return self.message


class ValidationFailed(NexusError):
    code = ErrorCode.VALIDATION_ERROR


class UnknownAction(NexusError):
    code = ErrorCode.UNKNOWN_ACTION


class UnknownRelationshipType(NexusError):
    code = ErrorCode.UNKNOWN_RELATIONSHIP_TYPE


class InvalidRelationship(NexusError):
    code = ErrorCode.INVALID_RELATIONSHIP


class SelfRelationship(NexusError):
    code = ErrorCode.SELF_RELATIONSHIP


class InvalidEntityId(NexusError):
    code = ErrorCode.INVALID_ENTITY_ID


class MetadataTooLarge(NexusError):
    code = ErrorCode.METADATA_TOO_LARGE


class BatchTooLarge(NexusError):
    code = ErrorCode.BATCH_TOO_LARGE


class SchemaViolation(NexusError):
    code = ErrorCode.SCHEMA_VIOLATION


class ConcurrentModification(NexusError):
    code = ErrorCode.CONCURRENT_MODIFICATION


class DuplicateRelationship(NexusError):
    code = ErrorCode.DUPLICATE_RELATIONSHIP


class NotFound(NexusError):
    code = ErrorCode.NOT_FOUND


class CycleDetected(NexusError):
    code = ErrorCode.CYCLE_DETECTED


class SubscriptionExists(NexusError):
    code = ErrorCode.SUBSCRIPTION_EXISTS


class PathNotFound(NexusError):
    code = ErrorCode.PATH_NOT_FOUND


class Timeout(NexusError):
    code = ErrorCode.TIMEOUT


class ResourceLimit(NexusError):
    code = ErrorCode.RESOURCE_LIMIT


class Forbidden(NexusError):
    code = ErrorCode.FORBIDDEN


class Unauthenticated(NexusError):
    code = ErrorCode.UNAUTHENTICATED


class RateLimited(NexusError):
    code = ErrorCode.RATE_LIMITED


class DependencyError(NexusError):
    code = ErrorCode.DEPENDENCY_ERROR


class ExecutionError(NexusError):
    code = ErrorCode.EXECUTION_ERROR


class UnknownStep(NexusError):
    code = ErrorCode.UNKNOWN_STEP


class PatternDeprecated(NexusError):
    code = ErrorCode.PATTERN_DEPRECATED


class StoreUnavailable(NexusError):
    code = ErrorCode.STORE_UNAVAILABLE


class UnknownFormatVersion(NexusError):
    code = ErrorCode.UNKNOWN_FORMAT_VERSION


class InvalidBackup(NexusError):
    code = ErrorCode.INVALID_BACKUP


class InternalError(NexusError):
    """What the service did not foresee, as the outcome of the message that provoked it."""

    code = ErrorCode.INTERNAL_ERROR

    @classmethod
    def of(cls, exc: BaseException) -> InternalError:
        error = cls(
            f"internal error: {type(exc).__name__}; the request may be retried",
            exception=type(exc).__name__,
        )
        error.cause = f"{type(exc).__name__}: {exc}"[:500]
        return error

    cause: str = ""

    @property
    def reason(self) -> str:
        return f"{self.message} ({self.cause})" if self.cause else self.message


# -- problems: validation that reports everything it found at once ----------------------------

Segment = str | int
Location = tuple[Segment, ...]


def format_path(parts: Iterable[Segment], prefix: str = "") -> str:
    """`("steps", 1, "depends_on", 0)` -> `steps[1].depends_on[0]`, appended to `prefix`."""
    text = prefix
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem in a document: where (`steps[1].depends_on[0]`), a stable code, what to fix."""

    path: str
    code: ErrorCode
    message: str
    #: machine-readable facts, e.g. `cycle` for cycle_detected; merged into `to_dict()`
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "code": self.code.value, "message": self.message, **self.details}

    def __str__(self) -> str:
        return f"{self.path or '(document)'}: {self.message}"


def _listing(subject: str, problems: Sequence[Problem]) -> str:
    count = len(problems)
    return f"{subject} ({count} problem{'s' if count != 1 else ''}): " + "; ".join(map(str, problems))


class PatternInvalid(NexusError):
    """A pattern document failed validation; `details.problems` lists every problem with its path.

    `code` is the problems' common code when they share one (a lone cycle is `cycle_detected`),
    else `validation_error`: use `PatternInvalid.of(problems)` to get the right subclass.
    """

    code = ErrorCode.VALIDATION_ERROR

    def __init__(self, message: str, problems: Sequence[Problem], **details: Any) -> None:
        super().__init__(message, problems=[p.to_dict() for p in problems], **details)
        self.problems = tuple(problems)

    @staticmethod
    def of(problems: Sequence[Problem], subject: str = "invalid pattern", **details: Any) -> PatternInvalid:
        codes = {p.code for p in problems}
        cls = _PATTERN_INVALID.get(codes.pop(), PatternInvalid) if len(codes) == 1 else PatternInvalid
        return cls(_listing(subject, problems), problems, **details)


class PatternDependencyError(PatternInvalid):
    code = ErrorCode.DEPENDENCY_ERROR


class PatternCycleDetected(PatternInvalid):
    code = ErrorCode.CYCLE_DETECTED


class PatternTooLarge(PatternInvalid):
    code = ErrorCode.RESOURCE_LIMIT


class PatternUnknownStep(PatternInvalid):
    code = ErrorCode.UNKNOWN_STEP


_PATTERN_INVALID: dict[ErrorCode, type[PatternInvalid]] = {
    cls.code: cls
    for cls in (PatternDependencyError, PatternCycleDetected, PatternTooLarge, PatternUnknownStep)
}


class InputInvalid(ValidationFailed):
    """An execution input does not match the pattern's input schema; `details.problems` lists why."""

    def __init__(self, message: str, problems: Sequence[Problem], **details: Any) -> None:
        super().__init__(message, problems=[p.to_dict() for p in problems], **details)
        self.problems = tuple(problems)

    @staticmethod
    def of(problems: Sequence[Problem], subject: str = "invalid input") -> InputInvalid:
        return InputInvalid(_listing(subject, problems), problems)


class TemplateSyntaxError(ValidationFailed):
    """A `{{...}}` in a parameter value is not a template this service understands."""


class UnresolvedReference(ValidationFailed):
    """A template names a value the execution does not have (an input field, a step output)."""


class StepParametersInvalid(ValidationFailed):
    """A step's parameters, after defaults and templates, do not match its kind's schema."""
