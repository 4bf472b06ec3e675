"""Timestamps as the service writes and reads them: ISO 8601, UTC written as `Z`."""

from __future__ import annotations

from datetime import datetime
from typing import overload

#: the last time written and its text: a batch's relationships share one `now`, which each
#: relationship's record, result entry and event write (`isoformat` costs ~1.5 us)
_last: tuple[datetime | None, str] = (None, "")


@overload
def iso(value: datetime) -> str: ...
@overload
def iso(value: None) -> None: ...
@overload
def iso(value: datetime | None) -> str | None: ...
def iso(value: datetime | None) -> str | None:
    global _last
    if value is None:
        return None
    last, text = _last
    if value is last:  # the very same object (held here, so its id is not reused)
        return text
    text = value.isoformat().replace("+00:00", "Z")
    _last = (value, text)
    return text


@overload
def parse_time(value: str) -> datetime: ...
@overload
def parse_time(value: str | None) -> datetime | None: ...
def parse_time(value: str | None) -> datetime | None:
    """The inverse of `iso`; None and "" read as None."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
