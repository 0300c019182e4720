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


_second = [-1, ""]  # the last whole second formatted, and its text


def _time(when: float) -> str:
    whole = int(when)
    if whole != _second[0]:
        stamp = datetime.fromtimestamp(whole, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _second[0], _second[1] = whole, stamp
    return f"{_second[1]}.{int((when - whole) * 1000):03d}Z"


def _text(event: LogEvent) -> str:
    template = event.get("log_format")
    if template is not None:
        try:
            # C-level formatting: several times faster than Twisted's
            # string.Formatter, and the same for ordinary {name} fields.
            return str(template.format_map(event))
        except Exception:
            pass  # Twisted's {call()} syntax, a missing field: its formatter
    return formatEvent(event)


def format_json(event: LogEvent) -> str:
    """One event as one line of JSON: time, level, namespace, text, fields."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": _time(event.get("log_time", 0.0)),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", event.get("system", "-")),
        "text": _text(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in _INTERNAL and key not in record:
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    # Anything that is not JSON (an object in a field) goes in as its repr.
    return json.dumps(record, default=repr) + "\n"


def json_observer(out: IO[str]) -> FileLogObserver:
    return FileLogObserver(out, format_json)
