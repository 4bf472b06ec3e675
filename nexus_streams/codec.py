"""Bytes <-> wire models. Two kinds of bad input, two outcomes:

- `Undecodable`: not UTF-8, not JSON, or not a JSON object -> the dead-letter topic;
- a `NexusError` (validation_error, unknown_action, ...) -> an error result naming the field.
"""

from __future__ import annotations

import functools
import json
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from nexus_streams.domain.errors import UnknownAction, ValidationFailed
from nexus_streams.messages import Inbound

MAX_MESSAGE_BYTES = 1024 * 1024
M = TypeVar("M", bound=BaseModel)


class Undecodable(Exception):
    """The value cannot be read as a JSON object; `reason` goes into the dead-letter headers."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_object(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise Undecodable("empty value (tombstone); expected a JSON object")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise Undecodable(f"value is {len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Undecodable(f"value is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
        # "\ud800" is valid JSON but no Unicode text: nothing downstream could encode it
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise Undecodable("value has a lone surrogate escape (e.g. \\ud800); use valid Unicode") from None
    except ValueError as exc:
        if not isinstance(exc, json.JSONDecodeError):
            raise Undecodable(str(exc)) from None
        raise Undecodable(f"value is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(value, dict):
        raise Undecodable(f"value is JSON {type(value).__name__}; expected an object")
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"value is not JSON: {name} is not a JSON number")


def request_id_of(data: dict[str, Any]) -> str | None:
    """The request id of a message that may fail validation, if it has a usable one."""
    value = data.get("request_id")
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None


def field_errors(exc: PydanticValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "(value)", "message": err["msg"]}
        for err in exc.errors(include_url=False)
    ]


def parse_model(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        problems = field_errors(exc)
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise ValidationFailed(f"invalid {model.__name__}: {summary}", errors=problems) from None


def parse_action(actions: dict[str, type[Inbound]], data: dict[str, Any], topic: str) -> Inbound:
    """Pick the model by `action`, then validate the whole message against it."""
    action = data.get("action")
    if action is None:
        raise ValidationFailed(
            f"field 'action' is missing; {topic} accepts: {', '.join(actions)}",
            errors=[{"field": "action", "message": "Field required"}],
        )
    model = actions.get(action) if isinstance(action, str) else None
    if model is None:
        raise UnknownAction(
            f"unknown action {action!r} on {topic}; use one of: {', '.join(actions)}",
            field="action",
            allowed=list(actions),
        )
    return parse_model(model, data)


def encode(model: BaseModel) -> bytes:
    """JSON by wire (alias) names, without null fields except required ones."""
    required = _required_fields(type(model))
    if all(getattr(model, name) is not None for name in required):
        # the common case, serialized by pydantic's core (several times faster than dumping to
        # Python objects and then to JSON; floats may use the shorter exponent form, 1e-7)
        return model.model_dump_json(exclude_none=True, by_alias=True).encode()
    data = model.model_dump(mode="json", exclude_none=True, by_alias=True)
    fields = type(model).model_fields
    for name in required:
        data.setdefault(fields[name].alias or name, None)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


@functools.cache
def _required_fields(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(name for name, info in model.model_fields.items() if info.is_required())
