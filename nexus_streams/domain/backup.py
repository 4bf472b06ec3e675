"""The backup file format (docs/backups.md): NDJSON, a header line, one line per item, a trailer.

A namespace export:
    {"format": "nexus-streams/namespace", "format_version": 1, "namespace": ..., "offset": ..., ...}
    {"type": "owner", "source": "user:1", "target": "wallet:1", "metadata": {...}, "version": 2,
     "created_at": "...", "updated_at": "...", "expires_at": null}
    ...
    {"end": "nexus-streams/namespace", "relationships": N}

A pattern export has the same shape with format `nexus-streams/patterns` and one line per pattern
version. Pure: the worker turns stored records into lines, the CLI reads and writes files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from nexus_streams.domain.errors import InvalidBackup, UnknownFormatVersion
from nexus_streams.domain.relationships import SEP

NAMESPACE_FORMAT = "nexus-streams/namespace"
PATTERNS_FORMAT = "nexus-streams/patterns"
#: the format version this code writes; it reads the versions in READABLE_VERSIONS
FORMAT_VERSION = 1
READABLE_VERSIONS = frozenset({1})
#: an export line's fields, in the order they are written
LINE_FIELDS = ("type", "source", "target", "metadata", "version", "created_at", "updated_at", "expires_at")


def line_of(stored_key: bytes, record: bytes) -> dict[str, Any]:
    """An export line from a stored relationship: key `r SEP namespace SEP type SEP source SEP
    target`, value the record (`{"v", "m", "c", "u", "e"}`)."""
    _, _, type_, source, target = stored_key.decode().split(SEP)
    value = orjson.loads(record)
    return {
        "type": type_,
        "source": source,
        "target": target,
        "metadata": value.get("m") or {},
        "version": int(value.get("v", 1)),
        "created_at": value.get("c"),
        "updated_at": value.get("u"),
        "expires_at": value.get("e"),
    }


def encoded_line(stored_key: bytes, record: bytes) -> bytes:
    """`line_of` as the JSON of the line, once: the export splices these into its chunks."""
    return orjson.dumps(line_of(stored_key, record))


def restore_command(line: dict[str, Any], where: str) -> dict[str, Any]:
    """The `restore` batch command that puts a relationship back as the line has it."""
    try:
        command = {
            "action": "restore",
            "type": line["type"],
            "source": line["source"],
            "target": line["target"],
            "metadata": line.get("metadata") or {},
            "version": line["version"],
            "created_at": line["created_at"],
            "updated_at": line["updated_at"],
        }
    except (KeyError, TypeError) as exc:
        raise InvalidBackup(f"{where}: not a relationship line (missing {exc})", where=where) from None
    if line.get("expires_at") is not None:
        command["expires_at"] = line["expires_at"]
    return command


@dataclass(frozen=True, slots=True)
class Header:
    """A backup file's first line, checked."""

    format: str
    format_version: int
    data: dict[str, Any]
    #: stable for this file (its header line's bytes): the stem of the import's request ids
    digest: str

    @classmethod
    def parse(cls, raw: bytes, expected_format: str) -> Header:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidBackup("line 1: the header is not JSON; is this a nexus-streams export?") from None
        if not isinstance(data, dict):
            raise InvalidBackup("line 1: the header is not a JSON object; is this a nexus-streams export?")
        found, version = data.get("format"), data.get("format_version")
        if found != expected_format:
            raise UnknownFormatVersion(
                f"the file's format is {found!r}, not {expected_format!r}",
                format=found,
                expected=expected_format,
            )
        if version not in READABLE_VERSIONS:
            raise UnknownFormatVersion(
                f"format_version {version!r} of {found} is not one this version reads "
                f"({', '.join(str(v) for v in sorted(READABLE_VERSIONS))}); use a newer nexus-streams",
                format_version=version,
                readable=sorted(READABLE_VERSIONS),
            )
        digest = hashlib.sha256(raw.strip()).hexdigest()[:16]
        return cls(found, version, data, digest)


def trailer(format_: str, count_field: str, count: int) -> dict[str, Any]:
    return {"end": format_, count_field: count}


def check_trailer(data: dict[str, Any], format_: str, count_field: str, counted: int, line: int) -> None:
    """The last line: says the file is whole, and how many items it has."""
    if data.get("end") != format_:
        raise InvalidBackup(f"line {line}: expected the trailer {{'end': {format_!r}}}", line=line)
    if data.get(count_field) != counted:
        raise InvalidBackup(
            f"the trailer says {data.get(count_field)} {count_field}, the file has {counted}",
            expected=data.get(count_field),
            found=counted,
        )


def import_request_id(digest: str, namespace: str, part: str) -> str:
    """Request ids of an import: the same file into the same namespace gives the same ids, so a
    rerun is answered from the first run's results (or applies the same state again)."""
    stem = hashlib.sha256(f"{digest}{SEP}{namespace}".encode()).hexdigest()[:20]
    return f"import:{stem}:{part}"


__all__ = [
    "FORMAT_VERSION",
    "Header",
    "LINE_FIELDS",
    "NAMESPACE_FORMAT",
    "PATTERNS_FORMAT",
    "check_trailer",
    "import_request_id",
    "encoded_line",
    "line_of",
    "restore_command",
    "trailer",
]
