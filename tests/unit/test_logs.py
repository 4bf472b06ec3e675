"""Structured logs (nexus_streams/logs.py): JSON lines or text with key=value fields, one line per
failed request at a level by error code, no payloads or metadata."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from nexus_streams import logs
from nexus_streams.messages import Result
from nexus_streams.replies import Received, deadletter_message, result_message
from nexus_streams.topics import EXECUTIONS, PATTERNS, RELATIONSHIPS

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SECRET = "the-metadata-nobody-may-read"


def result(**fields: Any) -> Result:
    return Result.model_validate(
        {
            "request_id": "r-1",
            "namespace": "ns",
            "action": "create",
            "status": "ok",
            "processed_at": NOW,
            **fields,
        }
    )


def error(code: str, **fields: Any) -> Result:
    return result(
        status="error",
        error={"code": code, "message": f"{code} happened", "details": {"metadata": {"k": SECRET}}},
        **fields,
    )


@pytest.fixture
def captured() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    logs.log.addHandler(handler)
    previous = logs.log.level
    logs.log.setLevel(logging.INFO)
    yield records
    logs.log.removeHandler(handler)
    logs.log.setLevel(previous)


def record(message: str = "request failed: x", **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("nexus_streams.requests", logging.WARNING, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_formatter__one_object_with_the_fields() -> None:
    line = logs.JsonFormatter().format(
        record(
            request_id="r-1", namespace="ns", pattern="p", code="timeout", failed_step="s1", other="ignored"
        )
    )
    data = json.loads(line)
    assert "\n" not in line
    assert data["level"] == "WARNING"
    assert data["logger"] == "nexus_streams.requests"
    assert data["message"] == "request failed: x"
    assert data["ts"].endswith("+00:00")
    assert {k: data[k] for k in ("request_id", "namespace", "pattern", "code", "failed_step")} == {
        "request_id": "r-1",
        "namespace": "ns",
        "pattern": "p",
        "code": "timeout",
        "failed_step": "s1",
    }
    assert "other" not in data


def test_json_formatter__exception_traceback_in_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = record()
        rec.exc_info = sys.exc_info()
    data = json.loads(logs.JsonFormatter().format(rec))
    assert "ValueError: boom" in data["exc"]


def test_text_formatter__fields_as_key_value_after_the_message() -> None:
    text = logs.TextFormatter().format(record(request_id="r 1", namespace="ns", code="not_found"))
    assert text.endswith('request failed: x request_id="r 1" namespace=ns code=not_found')
    assert logs.TextFormatter().format(record("plain")).endswith("plain")


@pytest.mark.parametrize(
    ("code", "level"),
    [
        ("internal_error", logging.ERROR),
        ("store_unavailable", logging.WARNING),
        ("validation_error", logging.INFO),
        ("not_found", logging.INFO),
        ("path_not_found", logging.INFO),
    ],
)
def test_log_reply__one_line_per_failure_at_the_level_of_its_code(
    captured: list[logging.LogRecord], code: str, level: int
) -> None:
    logs.log_reply(RELATIONSHIPS, error(code), [])
    (rec,) = captured
    assert rec.levelno == level
    assert rec.getMessage() == f"request failed: {code} happened"
    assert (rec.request_id, rec.namespace, rec.code, rec.topic) == ("r-1", "ns", code, "relationships")  # type: ignore[attr-defined]


def test_log_reply__execution_failure_names_pattern_and_failed_step(
    captured: list[logging.LogRecord],
) -> None:
    failed = error(
        "path_not_found",
        action="execute",
        pattern_id="financial_transaction",
        output={"steps": {"check": {"status": "failed"}, "create": {"status": "skipped"}}},
    )
    logs.log_reply(EXECUTIONS, failed, [result_message(failed)])
    (rec,) = captured
    assert rec.pattern == "financial_transaction"  # type: ignore[attr-defined]
    assert rec.failed_step == "check"  # type: ignore[attr-defined]
    assert not hasattr(rec, "deadletter") or rec.deadletter is None  # type: ignore[attr-defined]


def test_log_reply__successes_and_undecodable_messages_log_nothing_here(
    captured: list[logging.LogRecord],
) -> None:
    logs.log_reply(RELATIONSHIPS, result(), [])
    msg = Received(RELATIONSHIPS, "nexus.relationships", 0, 5, b"ns", b"garbage")
    logs.log_reply(RELATIONSHIPS, None, [deadletter_message(msg, "undecodable", "not JSON")])
    assert captured == []  # the dead letter is logged by the service itself


def test_log_reply__no_request_id_marks_the_dead_letter(captured: list[logging.LogRecord]) -> None:
    failed = error("validation_error", request_id=None)
    msg = Received(PATTERNS, "nexus.patterns", 0, 5, b"p", b"{}")
    logs.log_reply(
        PATTERNS, failed, [result_message(failed), deadletter_message(msg, "validation_error", "x")]
    )
    (rec,) = captured
    assert rec.deadletter is True  # type: ignore[attr-defined]


def test_log_reply__details_only_at_debug_in_a_line_of_their_own(captured: list[logging.LogRecord]) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logs.log.addHandler(handler)
    try:
        logs.log_reply(RELATIONSHIPS, error("validation_error"), [])
        assert SECRET not in stream.getvalue()
        logs.log.setLevel(logging.DEBUG)
        logs.log_reply(RELATIONSHIPS, error("validation_error"), [])
    finally:
        logs.log.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["level"] for line in lines] == ["INFO", "INFO", "DEBUG"]
    assert all(SECRET not in json.dumps(line) for line in lines if line["level"] != "DEBUG")
    assert lines[2]["details"]["metadata"]["k"] == SECRET


def test_log_reply__long_messages_are_clipped(captured: list[logging.LogRecord]) -> None:
    failed = result(status="error", error={"code": "validation_error", "message": "x" * 5000})
    logs.log_reply(RELATIONSHIPS, failed, [])
    (rec,) = captured
    assert len(rec.getMessage()) <= len("request failed: ") + logs.MAX_MESSAGE_CHARS


@pytest.mark.parametrize("json_lines", [True, False])
def test_logging_config__applies_to_every_logger(
    json_lines: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        config = logs.configure("info", json_lines)
        assert config["root"]["level"] == "INFO"
        logging.getLogger("faust.worker").warning("started %s", "w1")
        logging.getLogger("nexus_streams.x").debug("hidden")
        err = capsys.readouterr().err.strip().splitlines()
    finally:
        root.handlers[:], root.level = saved
    (line,) = err
    if json_lines:
        assert json.loads(line)["message"] == "started w1"
        assert json.loads(line)["logger"] == "faust.worker"
    else:
        assert line.endswith("WARNING faust.worker: started w1")
