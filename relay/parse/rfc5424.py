"""The RFC 5424 header, as rsyslog's pmrfc5424 parses it (after `<PRI>1 `).

rsyslog splits HOSTNAME, APP-NAME, PROCID and MSGID at single spaces without validating them, and
does not treat `-` as nil for these. It scans STRUCTURED-DATA for `] ` and consumes one SP after it.
"""

from __future__ import annotations

from relay.parse.timestamp import parse_rfc3339


class Rfc5424Header:
    """What the RFC 5424 header contributes to the ceelog properties."""

    __slots__ = ("hostname", "msg_offset", "sd_offset", "syslogtag", "timestamp")

    def __init__(
        self,
        hostname: bytes | None,
        syslogtag: bytes,
        timestamp: bytes,
        msg_offset: int,
        sd_offset: int = -1,
    ) -> None:
        self.hostname = hostname
        self.syslogtag = syslogtag
        self.timestamp = timestamp
        self.msg_offset = msg_offset
        self.sd_offset = sd_offset
        """Where STRUCTURED-DATA starts (after MSGID and its SP); -1 if the header is not
        RFC 5424 after all (an invalid timestamp)."""


def parse_rfc5424(data: bytes, pos: int, *, rsyslog_sd: bool = False) -> Rfc5424Header:
    """Parse from `pos` (the TIMESTAMP). hostname None means: fall back to the sender.

    `rsyslog_sd`: reproduce rsyslog exactly for structured data without a closing `] ` (MSG is
    then only the last byte of the message) instead of keeping the data as MSG.
    """
    size = len(data)
    start = pos
    if data.startswith(b"- ", pos):
        pos += 2
    else:
        pos = parse_rfc3339(data, pos)
        if pos < 0:  # rsyslog stops parsing here: all the rest is MSG
            return Rfc5424Header(None, b"", b"", start)
    timestamp = data[start:pos].rstrip(b" ")
    hostname, pos = _field(data, pos, size)
    app_name, pos = _field(data, pos, size)
    procid, pos = _field(data, pos, size)
    _msgid, pos = _field(data, pos, size)
    sd_offset = pos
    pos = _skip_structured_data(data, pos, size, rsyslog_sd)
    # rsyslog's tag buffer overflows past 511 bytes (stray memory); we keep the whole tag.
    # An empty APP-NAME reads back as "-" in rsyslog, an empty PROCID as "".
    app_name = app_name or b"-"
    tag = app_name if procid == b"-" else b"%s[%s]" % (app_name, procid)
    return Rfc5424Header(hostname, tag, timestamp, pos, sd_offset)


def _field(data: bytes, pos: int, size: int) -> tuple[bytes, int]:
    """parseRFCField: up to the next SP, which is consumed if present."""
    end = data.find(b" ", pos)
    if end < 0:
        return data[pos:], size
    return data[pos:end], end + 1


def _skip_structured_data(data: bytes, pos: int, size: int, rsyslog_sd: bool) -> int:
    """parseRFCStructuredData: return the offset of MSG."""
    if pos >= size or data[pos] not in b"[-":
        return pos  # invalid SD: MSG starts here
    if data[pos] == 0x2D:  # '-'
        pos += 1
    else:
        pos = _end_of_sd_elements(data, pos, size)
        if pos < 0:
            # rsyslog leaves MSG = the last byte of the message when no `] ` ends the SD; that
            # loses the data, so by default we keep everything from the SD on as MSG instead
            return size - 1 if rsyslog_sd else -pos - 1
    if pos < size and data[pos] == 0x20:
        pos += 1
    return pos


def _end_of_sd_elements(data: bytes, pos: int, size: int) -> int:
    """Offset just past the `]` that is followed by SP; `-start-1` if the SD never ends."""
    start = pos
    while True:
        end = data.find(b"] ", pos)
        if end < 0:
            if data.endswith(b"]"):
                return size  # SD up to the very end: empty MSG, as rsyslog
            return -start - 1
        if not _escaped(data, start, end):
            return end + 1
        pos = end + 1


def _escaped(data: bytes, start: int, bracket: int) -> bool:
    """True if rsyslog's scan pairs this `]` with the backslash before it (`\\]`).

    The scan does not treat `\\\\` as an escaped backslash: any `]` right after a backslash
    is taken as escaped.
    """
    return bracket > start and data[bracket - 1] == 0x5C
