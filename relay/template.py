"""PLURA's ceelog line: rsyslog's CEETemplate (list template, `format="jsonf"`), as bytes.

`{"ceelog": {"timegenerated":"…", "programname":"…", …, "msg":"…"}}` + LF. The constant parts and
the six PRI-derived values are precomputed per PRI, so rendering a message is one join of byte
strings; values are escaped only when they contain a byte that needs it.
"""

from __future__ import annotations

import re
import time

from relay.message import FACILITY_NAMES, INVALID_PRI, SEVERITY_NAMES, SyslogMessage

_NEEDS_ESCAPE = re.compile(rb'[\\"/\x00-\x1f]')
_CONTROL_ESCAPES = {
    **{bytes([byte]): b"\\u%04X" % byte for byte in range(0x20)},
    b"\b": b"\\b",
    b"\f": b"\\f",
    b"\n": b"\\n",
    b"\r": b"\\r",
    b"\t": b"\\t",
    b"\\": b"\\\\",
    b'"': b'\\"',
    b"/": b"\\/",
}


def escape(value: bytes) -> bytes:
    """rsyslog's jsonf escaping: `"` `\\` and `/` are escaped, bytes >= 0x80 pass through raw."""
    if _NEEDS_ESCAPE.search(value) is None:
        return value
    return _NEEDS_ESCAPE.sub(lambda m: _CONTROL_ESCAPES[m[0]], value)


def _pri_fields(pri: int) -> bytes:
    if pri == INVALID_PRI:
        values = ("invld", "invld.debug", "invld", "invld", "7", "debug")
    else:
        facility, severity = FACILITY_NAMES[pri >> 3], SEVERITY_NAMES[pri & 7]
        values = (
            str(pri), f"{facility}.{severity}", str(pri >> 3), facility, str(pri & 7), severity
        )  # fmt: skip
    names = ("pri", "pri-text", "syslogfacility", "syslogfacility-text",
             "syslogseverity", "syslogseverity-text")  # fmt: skip
    return "".join(f'", "{n}":"{v}' for n, v in zip(names, values, strict=True)).encode()


# index 0..191 by PRI; index -1 (INVALID_PRI) is the "invld" set
_PRI_FIELDS: tuple[bytes, ...] = tuple(_pri_fields(pri) for pri in (*range(192), INVALID_PRI))


class Clock:
    """rsyslog's `dateFormat="rfc3339"` for timegenerated, cached per second."""

    __slots__ = ("_prefix", "_second", "_suffix")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = b""
        self._suffix = b""

    def rfc3339(self, timestamp: float) -> bytes:
        """`YYYY-MM-DDTHH:MM:SS.ffffff+HH:MM` in the local zone (never `Z`)."""
        second = int(timestamp)
        if second != self._second:
            local = time.localtime(second)
            offset = local.tm_gmtoff // 60
            sign = "-" if offset < 0 else "+"
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", local).encode()
            self._suffix = f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}".encode()
            self._second = second
        micros = int((timestamp - second) * 1_000_000)
        return b"%s%06d%s" % (self._prefix, micros, self._suffix)


class CeeTemplate:
    """Renders `SyslogMessage` -> one ceelog line (bytes, LF-terminated)."""

    __slots__ = ("_clock",)

    def __init__(self) -> None:
        self._clock = Clock()

    def render(self, message: SyslogMessage) -> bytes:
        return b"".join(
            (
                b'{"ceelog": {"timegenerated":"',
                self._clock.rfc3339(message.received_at),
                b'", "programname":"',
                escape(message.programname),
                b'", "hostname":"',
                escape(message.hostname),
                b'", "syslogtag":"',
                escape(message.syslogtag),
                _PRI_FIELDS[message.pri],
                b'", "msg":"',
                escape(message.msg),
                b'"}}\n',
            )
        )
