"""Logging of the worker: plain text or JSON lines (`NEXUS_LOG_JSON=true`), and one line per
failed request with the fields an operator searches by.

Each failure line carries `request_id`, `namespace`, `pattern`, `action`, `code`, `topic` (and
`failed_step` for executions), as JSON fields or as `key=value` after the text. The level says who
has to act:

- `ERROR`: the service failed (`internal_error`);
- `WARNING`: an outage (`store_unavailable`); undecodable messages sent to the dead-letter topic
  (logged by the service, with topic, partition, offset and reason);
- `INFO`: the request was refused or failed for a reason of its own (validation, not found,
  a pattern's step failing, ...): the caller got the error result, the operator sees the rate
  in Grafana (`nexus_errors_total`).

Log lines never hold a message's payload, a relationship's metadata or an execution's input at
INFO or above: at most the error message (clipped to `MAX_MESSAGE_CHARS`); the error's details
are logged at DEBUG only.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

from nexus_streams.messages import Result
from nexus_streams.replies import Outbound
from nexus_streams.topics import DEADLETTER, TopicSpec

log = logging.getLogger("nexus_streams.requests")

#: the structured fields a record may carry (`extra=`), in the order they are printed
FIELDS = (
    "request_id",
    "namespace",
    "pattern",
    "action",
    "code",
    "failed_step",
    "topic",
    "deadletter",
    "details",
)
MAX_MESSAGE_CHARS = 300
#: the service's own failures
ERROR_CODES = frozenset({"internal_error"})
#: outages an operator has to look at (the request may be retried)
WARNING_CODES = frozenset({"store_unavailable"})


def level_of(code: str) -> int:
    if code in ERROR_CODES:
        return logging.ERROR
    if code in WARNING_CODES:
        return logging.WARNING
    return logging.INFO


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS if getattr(record, name, None) is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, message, the structured
    fields of the record, and `exc` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...` (the structured fields after the text)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        text = super().formatMessage(record)
        fields = _fields(record)
        if not fields:
            return text
        return text + " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (not text or any(c in text for c in ' ="')) else text


def logging_config(level: str | int = "INFO", json_lines: bool = False) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the whole process (given to Faust's worker too, so its
    own lines come out in the same format)."""
    level_name = logging.getLevelName(level) if isinstance(level, int) else level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "nexus": {"()": f"{__name__}.{'JsonFormatter' if json_lines else 'TextFormatter'}"},
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "nexus",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level_name, "handlers": ["default"]},
    }


def configure(level: str | int = "INFO", json_lines: bool = False) -> dict[str, Any]:
    config = logging_config(level, json_lines)
    logging.config.dictConfig(config)
    return config


def log_reply(spec: TopicSpec, result: Result | None, outbound: list[Outbound]) -> None:
    """One line per failed request (a `result` with status error). A request without a usable
    request_id is also dead-lettered: its line says `deadletter=true`. Messages that could not be
    decoded at all have no result: the service logs their dead letter itself (a WARNING with topic,
    partition, offset and reason), so they are not logged twice."""
    if result is None or result.status != "error" or result.error is None:
        return
    code = result.error.code
    steps = (result.output or {}).get("steps")
    failed = (
        next((n for n, s in steps.items() if isinstance(s, dict) and s.get("status") == "failed"), None)
        if isinstance(steps, dict)
        else None
    )
    fields = {
        "request_id": result.request_id,
        "namespace": result.namespace,
        "pattern": result.pattern_id,
        "action": None if result.action is None else clip(result.action, 100),
        "code": code,
        "failed_step": failed,
        "topic": spec.name,
        "deadletter": True if any(out.spec is DEADLETTER for out in outbound) else None,
    }
    log.log(level_of(code), "request failed: %s", clip(result.error.message), extra=fields)
    if result.error.details and log.isEnabledFor(logging.DEBUG):
        log.debug(
            "request failed, details",
            extra={"request_id": result.request_id, "code": code, "details": result.error.details},
        )
