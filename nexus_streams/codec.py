"""Bytes <-> wire models. Two kinds of bad input, two outcomes:

- `Undecodable`: not UTF-8, not JSON, or not a JSON object -> the dead-letter topic;
- a `NexusError` (validation_error, unknown_action, ...) -> an error result naming the field.
"""

from __future__ import annotations

import functools
import json
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from nexus_streams.domain.errors import UnknownAction, ValidationFailed
from nexus_streams.messages import Inbound

MAX_MESSAGE_BYTES = 1024 * 1024
#: how deep objects and arrays may nest in a message (NEXUS_MAX_NESTING_DEPTH's default)
MAX_NESTING_DEPTH = 64
#: orjson's own bound: deeper values do not parse at all
ORJSON_MAX_DEPTH = 1024
#: field errors listed in one error result; the rest are counted
MAX_FIELD_ERRORS = 20
M = TypeVar("M", bound=BaseModel)


def dumps(value: Any) -> bytes:
    """`orjson.dumps`, copied to its own length: for bytes that are kept (state values). orjson
    (3.12 on) hands back its whole output buffer, at least 4 KiB for any value, so a 60-byte
    relationship record kept as it came held 4 KB of heap: with `memory://`, 4.8 KB per
    relationship after a batch load against 0.6 KB after a restart had read the same records
    back from the changelog (tracemalloc: 2 blocks of ~2 KB per record, all at this call). The
    copy costs ~0.1 us."""
    return b"".join((orjson.dumps(value), b""))


class Undecodable(Exception):
    """The value cannot be read as a JSON object; `reason` goes into the dead-letter headers."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_object(raw: bytes | None) -> dict[str, Any]:
    """One JSON object, read once; nesting past orjson's own bound (1,024 levels) is undecodable,
    and `check_nesting` holds the value to the configured depth before anything walks it."""
    if raw is None:
        raise Undecodable("empty value (tombstone); expected a JSON object")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise Undecodable(f"value is {len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Undecodable(_decode_reason(raw, exc)) from None
    if not isinstance(value, dict):
        raise Undecodable(f"value is JSON {type(value).__name__}; expected an object")
    return value


def _decode_reason(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"value is not UTF-8: {bad.reason} at byte {bad.start}"
    if exc.msg.startswith("depth limit exceeded"):
        return f"value nests deeper than {ORJSON_MAX_DEPTH} levels at char {exc.pos}; keep JSON shallow"
    if "surrogate" in exc.msg:
        return "value has a lone surrogate escape (e.g. \\ud800); use valid Unicode"
    return f"value is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"


def check_nesting(value: dict[str, Any], max_depth: int = MAX_NESTING_DEPTH) -> None:
    """Refuse values nested deeper than `max_depth` (objects and arrays), without recursion: a
    deep value would exhaust the interpreter's stack in whatever walks it next (validation,
    encoding, logging)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        items = container.values() if isinstance(container, dict) else container
        for item in items:
            if isinstance(item, dict | list):
                if depth >= max_depth:
                    raise ValidationFailed(
                        f"value nests objects and arrays deeper than {max_depth} levels "
                        "(NEXUS_MAX_NESTING_DEPTH): flatten it",
                        errors=[{"field": "(value)", "message": f"nested deeper than {max_depth}"}],
                        limit=max_depth,
                    )
                stack.append((item, depth + 1))


def request_id_of(data: dict[str, Any]) -> str | None:
    """The request id of a message that may fail validation, if it has a usable one."""
    value = data.get("request_id")
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None


def field_errors(exc: PydanticValidationError) -> list[dict[str, str]]:
    """The first `MAX_FIELD_ERRORS` problems (a value with thousands of unknown fields must not
    make a result larger than the broker takes)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    listed = [
        {"field": cut(".".join(str(p) for p in err["loc"]) or "(value)"), "message": cut(err["msg"])}
        for err in errors[:MAX_FIELD_ERRORS]
    ]
    if len(errors) > MAX_FIELD_ERRORS:
        listed.append({"field": "(value)", "message": f"and {len(errors) - MAX_FIELD_ERRORS} more problems"})
    return listed


def short(value: object, limit: int = 120) -> str:
    """`repr(value)` for an error message, cut to `limit` characters."""
    return cut(repr(value), limit)


def cut(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


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
            f"unknown action {short(action)} on {topic}; use one of: {', '.join(actions)}",
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
