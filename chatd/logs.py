"""
Log output: ``--log-format json`` writes one JSON object per line, ready for
journald or a log shipper.  (``text`` is twistd's own format.)
"""

from __future__ import annotations

import io
import json
import time
from datetime import datetime, timezone
from typing import IO, Any, Optional

import orjson
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, LogEvent, LogLevel, Logger, formatEvent
from zope.interface import implementer

# Keys of Twisted's (and the legacy log's) own bookkeeping, left out of the
# object; ``log_namespace``, ``log_level`` and the text are kept by name.
_INTERNAL = frozenset({"message", "system", "isError", "format", "why", "failure", "time"})
# What a record never takes from an event's own keys: those above, what the
# record sets itself, and Twisted's usual "log_" keys.
_SKIP = _INTERNAL | {
    "level", "namespace", "text", "log_logger", "log_level", "log_namespace", "log_source", "log_format",
    "log_time", "log_failure", "log_system", "log_flattened", "log_trace", "log_io", "log_text",
}


_second = [-1, ""]  # the last whole second formatted, and its text
# The last millisecond formatted, and its text: a busy daemon logs several
# events a millisecond (two per connection).
_milli_at = -1
_milli_text = ""


def _time(when: float) -> str:
    global _milli_at, _milli_text
    milli = int(when * 1000)
    if milli == _milli_at:
        return _milli_text
    whole, part = divmod(milli, 1000)
    if whole != _second[0]:
        stamp = datetime.fromtimestamp(whole, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _second[0], _second[1] = whole, stamp
    _milli_at, _milli_text = milli, f"{_second[1]}.{part:03d}Z"
    return _milli_text


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


#: Which of an event's keys are its own fields, by the event's keys in order:
#: events of one call site have the same keys, so each kind is sorted out
#: once (the connect and disconnect events, on every connection).
_FIELDS: dict[tuple[str, ...], tuple[str, ...]] = {}
_FIELD_KINDS = 1024  # kinds remembered at most (a call site with varying keys)


def _fields(event: LogEvent) -> tuple[str, ...]:
    keys = tuple(event)
    fields = _FIELDS.get(keys)
    if fields is None:
        # The usual keys are skipped by name; any other "log_" key by its prefix.
        fields = tuple(key for key in keys if key not in _SKIP and key[:4] != "log_")
        if len(_FIELDS) < _FIELD_KINDS:
            _FIELDS[keys] = fields
    return fields


def _record(event: LogEvent) -> dict[str, Any]:
    get = event.get
    level = get("log_level")
    record: dict[str, Any] = {
        "time": _time(get("log_time", 0.0)),
        "level": level.name if level is not None else "info",
        "namespace": get("log_namespace", get("system", "-")),
        "text": _text(event),
    }
    for key in _fields(event):
        record[key] = event[key]
    failure = get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return record


# orjson: a log line is not part of the wire contract, so the fastest
# encoder wins (several times json's speed; it gives UTF-8 bytes).  Anything
# that is not JSON (an object in a field, a huge int) goes in as its repr.
_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


def _repr(value: Any) -> str:
    return repr(value)


def encode_json(event: LogEvent) -> bytes:
    """One event as one line of JSON (UTF-8): time, level, namespace, text, fields."""
    record = _record(event)
    try:
        return orjson.dumps(record, default=_repr, option=_OPTIONS)
    except (TypeError, orjson.JSONEncodeError):
        # What orjson refuses outright (an int over 64 bits, a nested
        # non-str key, a lone surrogate in a string) still gets a line.
        return json.dumps(record, default=repr).encode("utf-8", "backslashreplace") + b"\n"


def format_json(event: LogEvent) -> str:
    return encode_json(event).decode("utf-8")


_URGENT = frozenset({LogLevel.warn, LogLevel.error, LogLevel.critical})


@implementer(ILogObserver)
class JSONLogObserver:
    """
    Writes events as JSON lines to a binary stream, gathered and written
    once per reactor iteration rather than once per event: a busy daemon
    logs several events per iteration (two per connection), and each write
    is a system call.  Warnings and worse, and everything once the reactor
    is gone (``detach``), are written at once.
    """

    def __init__(self, out: IO[Any], clock: Optional[IReactorTime] = None) -> None:
        # A text stream is written through its binary buffer where it has one.
        self._out = getattr(out, "buffer", out) if isinstance(out, io.TextIOBase) else out
        self._text = isinstance(self._out, io.TextIOBase)
        self._clock = clock
        self._lines: list[bytes] = []

    def __call__(self, event: LogEvent) -> None:
        self._lines.append(encode_json(event))
        if self._clock is None or event.get("log_level") in _URGENT:
            self.flush()
        elif len(self._lines) == 1:
            self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        if not self._lines:
            return
        data = b"".join(self._lines)
        self._lines.clear()
        try:
            self._out.write(data.decode("utf-8") if self._text else data)
            self._out.flush()
        except (OSError, ValueError):
            pass  # stdout gone or closed: there is nobody to tell

    def detach(self) -> None:
        """From now on (the reactor stopping), write every event at once."""
        self._clock = None
        self.flush()


def json_observer(out: IO[Any], clock: Optional[IReactorTime] = None) -> JSONLogObserver:
    return JSONLogObserver(out, clock)


class HotPathLogger(Logger):
    """
    A ``twisted.logger.Logger`` for events logged on every connection.  The
    events are the same; what is skipped is ``Logger.emit``'s check that the
    level is a ``LogLevel``, which sorts all of ``LogLevel``'s constants on
    every event (chatd only ever passes the constants themselves), and
    ``Logger.info``'s second copy of its keyword arguments.
    """

    def emit(self, level: LogLevel, format: Optional[str] = None, **kwargs: object) -> None:
        self._emit(level, format, kwargs)

    def info(self, format: Optional[str] = None, **kwargs: object) -> None:
        # Straight to the event: Logger.info's call of emit copies the
        # keyword arguments once more.
        self._emit(LogLevel.info, format, kwargs)

    def _emit(self, level: LogLevel, format: Optional[str], event: dict[str, object]) -> None:
        if "log_trace" in event:
            return super().emit(level, format, **event)
        event.update(
            log_logger=self,
            log_level=level,
            log_namespace=self.namespace,
            log_source=self.source,
            log_format=format,
            # Wall-clock time, as Logger.emit gives: a log's time, not the reactor's.
            log_time=time.time(),  # noqa
        )
        self.observer(event)
