"""Structured logs: one JSON object per line on stderr (timestamp, level, event, fields).

Tokens never reach a log line: callers pass fields, never requests.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Final, TextIO

import msgspec

LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_encode: Final = msgspec.json.Encoder().encode


class Logger:
    def __init__(
        self, *, enabled: bool = True, level: str = "info", stream: TextIO | None = None
    ) -> None:
        self.enabled = enabled
        self.threshold = LEVELS[level]
        self.stream = stream

    def log(self, level: str, event: str, **fields: object) -> None:
        if not self.enabled or LEVELS[level] < self.threshold:
            return
        record: dict[str, object] = {
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "event": event,
        }
        record.update(fields)
        stream = self.stream if self.stream is not None else sys.stderr
        stream.write(_encode(record).decode() + "\n")
        stream.flush()

    def info(self, event: str, **fields: object) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: object) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: object) -> None:
        self.log("error", event, **fields)

    def debug(self, event: str, **fields: object) -> None:
        self.log("debug", event, **fields)
