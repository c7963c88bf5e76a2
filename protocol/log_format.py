"""One JSON object per log line, for production log pipelines (LOG_FORMAT=json).

Our log lines are `what happened key=value key=value`; the JSON form keeps the message and lifts each
`key=value` pair into a field of its own, so `request_id` is searchable without parsing text. Nothing is added
that the text line did not hold: secrets and prompts stay out of both, by the same discipline.
"""

import json
import logging
import re
from datetime import UTC, datetime

_PAIR = re.compile(r"(?:^|\s)([a-z_][a-z0-9_]*)=(\S+)")
_RESERVED = frozenset({"ts", "level", "logger", "message", "exc"})


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", <key=value pairs>, "exc"?}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key, value in _PAIR.findall(message):
            if key not in _RESERVED:
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
