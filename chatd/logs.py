"""
Log output: ``--log-format json`` writes one JSON object per line, ready for
journald or a log shipper.  (``text`` is twistd's own format.)
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import FileLogObserver, LogEvent, formatEvent

# Keys of Twisted's (and the legacy log's) own bookkeeping, left out of the
# object; ``log_namespace``, ``log_level`` and the text are kept by name.
_INTERNAL = frozenset({"message", "system", "isError", "format", "why", "failure", "time"})


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def format_json(event: LogEvent) -> str:
    """One event as one line of JSON: time, level, namespace, text, fields."""
    when = datetime.fromtimestamp(event.get("log_time", 0), tz=timezone.utc)
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", event.get("system", "-")),
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in _INTERNAL and key not in record:
            record[key] = _jsonable(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record) + "\n"


def json_observer(out: IO[str]) -> FileLogObserver:
    return FileLogObserver(out, format_json)
