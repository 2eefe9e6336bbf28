"""PLURA's ceelog line: rsyslog's CEETemplate (list template, `format="jsonf"`), as bytes.

`{"ceelog": {"timegenerated":"…", "programname":"…", …, "msg":"…"}}` + LF. The constant parts and
the six PRI-derived values are precomputed per PRI, so rendering a message is one join of byte
strings; values are escaped only when they contain a byte that needs it.
"""

from __future__ import annotations

import re
import time

from relay.message import FACILITY_NAMES, INVALID_PRI, SEVERITY_NAMES, SyslogMessage


def escape(value: bytes) -> bytes:
    """rsyslog's jsonf escaping: `\\` `"` and `/` are escaped, bytes >= 0x80 pass through raw.

    Control bytes never reach a template: parsing has already turned them into `#ooo`.
    """
    if b"\\" in value:
        value = value.replace(b"\\", b"\\\\")
    if b'"' in value:
        value = value.replace(b'"', b'\\"')
    if b"/" in value:
        value = value.replace(b"/", b"\\/")
    return value


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


_THREE_DIGITS: tuple[bytes, ...] = tuple(b"%03d" % n for n in range(1000))


class Clock:
    """rsyslog's `dateFormat="rfc3339"` for timegenerated: the parts of a second are cached."""

    __slots__ = ("_prefix", "_second", "_suffix")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = b""
        self._suffix = b""

    def parts(self, timestamp: float) -> tuple[bytes, bytes, bytes, bytes]:
        """`YYYY-MM-DDTHH:MM:SS.`, milliseconds, microseconds, `+HH:MM` (local zone, never `Z`)."""
        second = int(timestamp)
        if second != self._second:
            local = time.localtime(second)
            offset = local.tm_gmtoff // 60
            sign = "-" if offset < 0 else "+"
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", local).encode()
            self._suffix = f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}".encode()
            self._second = second
        # scale first: (timestamp - second) would lose the last microsecond to float rounding
        micros = min(int(timestamp * 1_000_000) - second * 1_000_000, 999_999)
        return (
            self._prefix,
            _THREE_DIGITS[micros // 1000],
            _THREE_DIGITS[micros % 1000],
            self._suffix,
        )

    def rfc3339(self, timestamp: float) -> bytes:
        return b"".join(self.parts(timestamp))


HEADER_CACHE_ENTRIES = 4096
HeaderKey = tuple[bytes, bytes, bytes, int]
LINE_START = b'{"ceelog": {"timegenerated":"'
LINE_END = b'"}}\n'
_PROGRAMNAME_FIELD = b'", "programname":"'


class CeeTemplate:
    """Renders `SyslogMessage` -> one ceelog line (bytes, LF-terminated).

    Everything between timegenerated and msg depends only on (programname, hostname,
    syslogtag, pri), and a source sends the same few combinations again and again: that part
    is rendered once and cached, so a line costs one lookup, one msg escape and one join.
    """

    __slots__ = ("_at", "_clock", "_timegenerated", "headers")

    def __init__(self) -> None:
        self._clock = Clock()
        self._at = -1.0
        self._timegenerated = b""
        self.headers: dict[HeaderKey, bytes] = {}
        """(programname, hostname, syslogtag, pri) -> the line from `", "programname"` to
        `"msg":"`; read directly by the pipeline's hot path, filled by `header()`."""

    def render(self, message: SyslogMessage) -> bytes:
        return self.render_at(message, self._clock.rfc3339(message.received_at))

    def timegenerated(self, received_at: float) -> bytes:
        # every batch of one wake-up has the same reception time: format it once
        if received_at != self._at:
            self._at, self._timegenerated = received_at, self._clock.rfc3339(received_at)
        return self._timegenerated

    def render_at(self, message: SyslogMessage, timegenerated: bytes) -> bytes:
        """Render with a timegenerated already formatted (one per batch of a TCP read)."""
        return b"".join((LINE_START, timegenerated, self.middle(message), LINE_END))

    def middle(self, message: SyslogMessage) -> bytes:
        """The line between timegenerated and LINE_END: header and escaped msg."""
        key = (message.programname, message.hostname, message.syslogtag, message.pri)
        return (self.headers.get(key) or self.header(key)) + escape(message.msg)

    def render_fixed_programname(
        self, message: SyslogMessage, timegenerated: bytes, programname: bytes
    ) -> bytes:
        """The ceelog line with programname replaced by a constant: PLURA's copy of the template
        with `constant(outname="programname" value="..." format="jsonf")`, which rsyslog renders
        with a space after the colon (`"programname": "SECUi"`)."""
        key = (message.programname, message.hostname, message.syslogtag, message.pri)
        header = self.headers.get(key) or self.header(key)
        rest = header[len(_PROGRAMNAME_FIELD) + len(escape(message.programname)) :]
        fixed = b'", "programname": "' + escape(programname)
        return b"".join((LINE_START, timegenerated, fixed, rest, escape(message.msg), LINE_END))

    def header(self, key: HeaderKey) -> bytes:
        programname, hostname, syslogtag, pri = key
        header = b"".join(
            (
                _PROGRAMNAME_FIELD,
                escape(programname),
                b'", "hostname":"',
                escape(hostname),
                b'", "syslogtag":"',
                escape(syslogtag),
                _PRI_FIELDS[pri],
                b'", "msg":"',
            )
        )
        if len(self.headers) >= HEADER_CACHE_ENTRIES:
            self.headers.clear()  # hostile variety: start over rather than grow
        self.headers[key] = header
        return header


# --------------------------------------------------------------------------- other templates

_MONTH_NAMES: tuple[bytes, ...] = (
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
    b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
)  # fmt: skip
_MONTHS = {name.lower(): number for number, name in enumerate(_MONTH_NAMES, start=1)}
_RFC3339_FIELDS = re.compile(rb"\d+-(\d+)-(\d+)T(\d+):(\d+):(\d+)")
_BSD_FIELDS = re.compile(rb"(?:\d+ )?([A-Za-z]{3})  ?(\d+) (?:\d+ )?(\d+):(\d+):(\d+)")


def rfc3164_timestamp(timestamp: bytes, received_at: float) -> bytes:
    """rsyslog's `%TIMESTAMP%`: timereported as `Mmm dd hh:mm:ss` (day padded with a space).

    The fields are the sender's, as written (an RFC 5424 offset is not applied, its year and
    fraction are dropped); a message without a valid timestamp has the reception time, local.
    """
    if timestamp[:1].isdigit() and (fields := _RFC3339_FIELDS.match(timestamp)) is not None:
        month, day, hour, minute, second = (int(f) for f in fields.groups())
    elif (bsd := _BSD_FIELDS.match(timestamp)) is not None and bsd[1].lower() in _MONTHS:
        month = _MONTHS[bsd[1].lower()]
        day, hour, minute, second = (int(f) for f in bsd.groups()[1:])
    else:
        local = time.localtime(int(received_at))
        month, day = local.tm_mon, local.tm_mday
        hour, minute, second = local.tm_hour, local.tm_min, local.tm_sec
    return b"%s %2d %02d:%02d:%02d" % (_MONTH_NAMES[month - 1], day, hour, minute, second)


def render_plain(message: SyslogMessage) -> bytes:
    """`%HOSTNAME% %syslogtag% %msg%\\n` (PLURA's per-sender files)."""
    return b"%s %s %s\n" % (message.hostname, message.syslogtag, message.msg)


def render_traditional(message: SyslogMessage) -> bytes:
    """RSYSLOG_TraditionalFileFormat: `%TIMESTAMP% %HOSTNAME% %syslogtag%`
    `%msg:::sp-if-no-1st-sp%%msg:::drop-last-lf%\\n`."""
    msg = message.msg
    space = b"" if msg.startswith(b" ") else b" "
    if msg.endswith(b"\n"):
        msg = msg[:-1]
    stamp = rfc3164_timestamp(message.timestamp, message.received_at)
    return b"%s %s %s%s%s\n" % (stamp, message.hostname, message.syslogtag, space, msg)


def render_compact(message: SyslogMessage, timegenerated: bytes) -> bytes:
    """PLURA's older CEE string template: the ceelog fields without spaces, `:::json` escaping
    (the same as jsonf's), timegenerated as `date-rfc3339`."""
    pri = message.pri
    if pri == INVALID_PRI:
        values = (b"invld", b"invld.debug", b"invld", b"invld", b"7", b"debug")
    else:
        facility, severity = FACILITY_NAMES[pri >> 3], SEVERITY_NAMES[pri & 7]
        values = (
            b"%d" % pri, f"{facility}.{severity}".encode(), b"%d" % (pri >> 3),
            facility.encode(), b"%d" % (pri & 7), severity.encode(),
        )  # fmt: skip
    fields = (
        timegenerated, escape(message.programname), escape(message.hostname),
        escape(message.syslogtag), *values, escape(message.msg),
    )  # fmt: skip
    body = b'","'.join(b'%s":"%s' % pair for pair in zip(_COMPACT_NAMES, fields, strict=True))
    return b'{"ceelog":{"' + body + b'"}}\n'


_COMPACT_NAMES: tuple[bytes, ...] = (
    b"timegenerated", b"programname", b"hostname", b"syslogtag", b"pri", b"pri-text",
    b"syslogfacility", b"syslogfacility-text", b"syslogseverity", b"syslogseverity-text", b"msg",
)  # fmt: skip
