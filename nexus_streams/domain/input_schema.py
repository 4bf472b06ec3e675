"""The JSON Schema subset a pattern's `input_schema` may use, checked and applied without a library.

Keywords: `type` (object, array, string, integer, number, boolean, null, or a list of them),
`properties`, `required`, `additionalProperties` (true/false), `items`, `enum`, `format`
(`entity-id`: an entity id as relationships accept it; `pattern-id`; `date-time`: RFC 3339),
`minLength`, `maxLength`, `minimum`, `maximum`, `title`, `description`. Any other keyword is
rejected rather than silently ignored. The top level describes an object (an execution input).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from nexus_streams.domain.errors import ErrorCode, NexusError, Problem, Segment, format_path
from nexus_streams.domain.patterns import PATTERN_ID_REGEX
from nexus_streams.domain.relationships import check_id

TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "format",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "title",
        "description",
    }
)
MAX_DEPTH = 8
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _entity_id(value: str) -> str | None:
    try:
        check_id(value, "value")
    except NexusError:
        return "an entity id: 1-256 printable characters without whitespace"
    return None


def _pattern_id(value: str) -> str | None:
    return None if re.fullmatch(PATTERN_ID_REGEX, value) else "a pattern id"


def _date_time(value: str) -> str | None:
    if _RFC3339.fullmatch(value):
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
            return None
        except ValueError:
            pass
    return "an RFC 3339 date-time"


#: format -> check returning what the value should be, or None when it is fine
FORMATS: Mapping[str, Callable[[str], str | None]] = {
    "entity-id": _entity_id,
    "pattern-id": _pattern_id,
    "date-time": _date_time,
}


def _problem(where: str, message: str) -> Problem:
    return Problem(where, ErrorCode.VALIDATION_ERROR, message)


def _types_of(schema: Mapping[str, Any]) -> set[str] | None:
    declared = schema.get("type")
    if isinstance(declared, str):
        return {declared}
    if isinstance(declared, list):
        return {t for t in declared if isinstance(t, str)}
    return None


def check_schema(schema: Any, path: str = "input_schema", *, depth: int = 0) -> list[Problem]:
    """Every problem of a schema document (not of a value)."""
    if not isinstance(schema, Mapping):
        return [_problem(path, "a schema is a JSON object")]
    if depth > MAX_DEPTH:
        return [_problem(path, f"schemas nest at most {MAX_DEPTH} levels deep")]
    problems = [
        _problem(
            format_path([keyword], path),
            f"unsupported keyword {keyword!r}; supported: {', '.join(sorted(KEYWORDS))}",
        )
        for keyword in schema
        if keyword not in KEYWORDS
    ]
    if depth == 0 and _types_of(schema) != {"object"}:
        problems.append(_problem(f"{path}.type", 'the input schema describes an object: "type": "object"'))
    for keyword, check in _KEYWORD_CHECKS.items():
        if keyword in schema:
            problems += check(schema, path, depth)
    return problems


def _check_type(schema: Mapping[str, Any], path: str, depth: int) -> list[Problem]:
    declared, types = schema["type"], _types_of(schema)
    if types is None or (isinstance(declared, list) and (not declared or len(types) != len(declared))):
        return [_problem(f"{path}.type", "`type` is a type name or a non-empty list of them")]
    if bad := sorted(types - set(TYPES)):
        return [_problem(f"{path}.type", f"unknown type {bad[0]!r}; use one of: {', '.join(TYPES)}")]
    return []


def _check_properties(schema: Mapping[str, Any], path: str, depth: int) -> list[Problem]:
    properties = schema["properties"]
    if not isinstance(properties, Mapping):
        return [_problem(f"{path}.properties", "`properties` maps names to schemas")]
    problems: list[Problem] = []
    for name, sub in properties.items():
        problems += check_schema(sub, format_path([name], f"{path}.properties"), depth=depth + 1)
    return problems


def _check_required(schema: Mapping[str, Any], path: str, depth: int) -> list[Problem]:
    required, properties = schema["required"], schema.get("properties")
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        return [_problem(f"{path}.required", "`required` is a list of property names")]
    if len(set(required)) != len(required):
        return [_problem(f"{path}.required", "`required` names a property twice")]
    if not isinstance(properties, Mapping):
        return []
    return [
        _problem(f"{path}.required[{i}]", f"{name!r} is required but not in `properties`")
        for i, name in enumerate(required)
        if name not in properties
    ]


def _check_enum(schema: Mapping[str, Any], path: str, depth: int) -> list[Problem]:
    enum, types = schema["enum"], _types_of(schema)
    if not isinstance(enum, list) or not enum:
        return [_problem(f"{path}.enum", "`enum` is a non-empty list of values")]
    if types is None:
        return []
    return [
        _problem(f"{path}.enum[{i}]", f"{value!r} is not of the declared type")
        for i, value in enumerate(enum)
        if not any(_is_type(value, t) for t in types)
    ]


def _check_format(schema: Mapping[str, Any], path: str, depth: int) -> list[Problem]:
    if schema["format"] in FORMATS:
        return []
    return [
        _problem(f"{path}.format", f"unknown format {schema['format']!r}; use one of: {', '.join(FORMATS)}")
    ]


def _expect(keyword: str, is_valid: Callable[[Any], bool], what: str) -> _KeywordCheck:
    def check(schema: Mapping[str, Any], path: str, depth: int) -> list[Problem]:
        return [] if is_valid(schema[keyword]) else [_problem(f"{path}.{keyword}", f"`{keyword}` is {what}")]

    return check


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_KeywordCheck = Callable[[Mapping[str, Any], str, int], list[Problem]]
_KEYWORD_CHECKS: Mapping[str, _KeywordCheck] = {
    "type": _check_type,
    "properties": _check_properties,
    "required": _check_required,
    "additionalProperties": _expect("additionalProperties", lambda v: isinstance(v, bool), "true or false"),
    "items": lambda schema, path, depth: check_schema(schema["items"], f"{path}.items", depth=depth + 1),
    "enum": _check_enum,
    "format": _check_format,
    "minLength": _expect("minLength", _is_count, "a non-negative integer"),
    "maxLength": _expect("maxLength", _is_count, "a non-negative integer"),
    "minimum": _expect("minimum", _is_number, "a number"),
    "maximum": _expect("maximum", _is_number, "a number"),
    "title": _expect("title", lambda v: isinstance(v, str), "a string"),
    "description": _expect("description", lambda v: isinstance(v, str), "a string"),
}


def _is_type(value: Any, type_: str) -> bool:
    match type_:
        case "object":
            return isinstance(value, Mapping)
        case "array":
            return isinstance(value, list | tuple)
        case "string":
            return isinstance(value, str)
        case "integer":
            return (isinstance(value, int) and not isinstance(value, bool)) or (
                isinstance(value, float) and value.is_integer()
            )
        case "number":
            return isinstance(value, int | float) and not isinstance(value, bool)
        case "boolean":
            return isinstance(value, bool)
        case "null":
            return value is None
    return False


def validate_value(schema: Mapping[str, Any], value: Any, path: str = "input") -> list[Problem]:
    """Every way `value` fails a (valid) schema."""
    types = _types_of(schema)
    if types is not None and not any(_is_type(value, t) for t in types):
        wanted = " or ".join(sorted(types))
        return [_problem(path, f"must be {wanted}, not {_json_type(value)}")]
    problems: list[Problem] = []
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(repr(v) for v in schema["enum"])
        problems.append(_problem(path, f"must be one of: {allowed}"))
    if isinstance(value, str):
        problems += _validate_string(schema, value, path)
    elif _is_number(value):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(_problem(path, f"must be at least {schema['minimum']}"))
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(_problem(path, f"must be at most {schema['maximum']}"))
    elif isinstance(value, Mapping):
        problems += _validate_object(schema, value, path)
    elif isinstance(value, list | tuple) and "items" in schema:
        for i, item in enumerate(value):
            problems += validate_value(schema["items"], item, f"{path}[{i}]")
    return problems


def _validate_string(schema: Mapping[str, Any], value: str, path: str) -> list[Problem]:
    problems = []
    if "format" in schema and (wanted := FORMATS[schema["format"]](value)) is not None:
        problems.append(_problem(path, f"must be {wanted}"))
    if len(value) < schema.get("minLength", 0):
        problems.append(_problem(path, f"must have at least {schema['minLength']} characters"))
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        problems.append(_problem(path, f"must have at most {schema['maxLength']} characters"))
    return problems


def _validate_object(schema: Mapping[str, Any], value: Mapping[str, Any], path: str) -> list[Problem]:
    properties: Mapping[str, Any] = schema.get("properties") or {}
    problems = [
        _problem(format_path([name], path), "is required")
        for name in schema.get("required") or ()
        if name not in value
    ]
    for name, item in value.items():
        if name in properties:
            problems += validate_value(properties[name], item, format_path([name], path))
        elif schema.get("additionalProperties") is False:
            problems.append(_problem(format_path([name], path), "is not a field of this input"))
    return problems


def declares(schema: Mapping[str, Any], path: tuple[Segment, ...]) -> str | None:
    """Whether `input.<path>` can exist under the schema: None if it may, else the first segment
    that the schema does not declare (so a template's typo is caught when the pattern is stored)."""
    node: Any = schema
    for segment in path:
        if not isinstance(node, Mapping):
            return None
        properties = node.get("properties")
        if isinstance(properties, Mapping):
            if str(segment) not in properties:
                return str(segment)
            node = properties[str(segment)]
        elif "items" in node and (isinstance(segment, int) or str(segment).isdigit()):
            node = node["items"]
        else:
            return None
    return None


def _json_type(value: Any) -> str:
    for type_ in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is_type(value, type_):
            return type_
    return type(value).__name__
