"""LOG_FORMAT=json: one JSON object per line, with the line's key=value pairs as fields of their own."""

import json
import logging

from protocol.log_format import JsonFormatter
from protocol.settings import CommonSettings


def formatted(message: str, *args: object, exc: bool = False) -> dict[str, object]:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError as error:
            exc_info = (type(error), error, error.__traceback__)
    record = logging.LogRecord("workers.generate", logging.INFO, __file__, 1, message, args, exc_info)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed: dict[str, object] = json.loads(line)
    return parsed


def test_a_log_line_becomes_one_object_whose_pairs_are_searchable_fields() -> None:
    entry = formatted("job finished request_id=%s status=%s tokens=%d", "req-1", "completed", 12)
    assert entry["message"] == "job finished request_id=req-1 status=completed tokens=12"
    assert (entry["request_id"], entry["status"], entry["tokens"]) == ("req-1", "completed", "12")
    assert (entry["level"], entry["logger"]) == ("INFO", "workers.generate") and "ts" in entry


def test_a_pair_cannot_overwrite_the_lines_own_fields_and_tracebacks_stay_on_the_line() -> None:
    entry = formatted("odd level=debug message=x", exc=True)
    assert entry["level"] == "INFO" and entry["message"] == "odd level=debug message=x"
    assert "RuntimeError: boom" in str(entry["exc"])


def test_log_format_is_a_validated_setting() -> None:
    assert CommonSettings.from_env(log_format="json").log_format == "json"
    assert CommonSettings.from_env().log_format == "text"
