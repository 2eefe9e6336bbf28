"""The server's own logs on stderr: readable text by default, or one JSON object per line.

Every message is passed through `printable`: log arguments carry remote input (hostnames,
addresses, peer names), and a control byte must not reach the operator's terminal raw."""

from __future__ import annotations

import logging
import sys
import time

import msgspec

from relay.message import printable

_encoder = msgspec.json.Encoder()


class TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    def __init__(self, tag: str = "") -> None:
        super().__init__()
        self._tag = tag

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": printable(record.getMessage()),
        }
        if self._tag:
            entry["process"] = self._tag
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


def setup_logging(level: str = "info", fmt: str = "text", *, tag: str = "") -> None:
    """Own logs to stderr; `tag` names the process (e.g. a worker) in every line."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(tag))
    else:
        where = f" [{tag}]" if tag else ""
        handler.setFormatter(
            TextFormatter(f"%(asctime)s %(levelname)s{where} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
