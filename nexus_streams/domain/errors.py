"""Errors of the domain, each with a stable machine-readable code (part of the public API)."""

from __future__ import annotations

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
    #: the principal may not do this
    FORBIDDEN = "forbidden"
    #: a pattern execution failed for another reason
    EXECUTION_ERROR = "execution_error"
    #: the service failed; the request may be retried
    INTERNAL_ERROR = "internal_error"


class NexusError(Exception):
    """Base of every error the service reports; `code` is stable, `message` says what to fix."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code.value, "message": self.message, "details": self.details}


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


class PathNotFound(NexusError):
    code = ErrorCode.PATH_NOT_FOUND


class Timeout(NexusError):
    code = ErrorCode.TIMEOUT


class ResourceLimit(NexusError):
    code = ErrorCode.RESOURCE_LIMIT


class Forbidden(NexusError):
    code = ErrorCode.FORBIDDEN
