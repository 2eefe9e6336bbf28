"""Syslog parsing: one frame's bytes in, one `SyslogMessage` out, exactly as rsyslog 8.2302.

Pure: no clock (reception time is passed in), no I/O, never raises, never drops. The steps are
rsyslog's: sanitize the raw bytes, read the PRI, then the RFC 5424 parser if the PRI is followed
by `1 `, else the RFC 3164 one. RSYSLOG-BEHAVIOUR.md in the design notes lists the rules.
"""

from __future__ import annotations

import re

from relay.message import DEFAULT_PRI, INVALID_PRI, SyslogMessage
from relay.parse.compression import inflate
from relay.parse.fast import PRI_VALUES, RFC3164_HEADER, RFC5424_HEADER, has_control
from relay.parse.rfc3164 import TAG_MAX_BYTES, parse_rfc3164
from relay.parse.rfc5424 import parse_rfc5424

__all__ = ["MAX_MESSAGE_BYTES", "parse", "programname", "sanitize"]

MAX_MESSAGE_BYTES = 8096  # rsyslog's maxMessageSize default

_CONTROL = re.compile(rb"[\x00-\x1f]")
_ESCAPED = {bytes([byte]): b"#%03o" % byte for byte in range(0x20)}
_PRI = re.compile(rb"<([0-9]*)>")
_PROGRAMNAME = re.compile(rb"[^:\[/\x00-\x1f\x7f-\xff]*")


def sanitize(raw: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    """rsyslog's SanitizeMsg: drop one trailing NUL, then one trailing LF; control bytes
    become `#ooo` (octal), and the escaped result (which can grow fourfold) is capped near
    `max_bytes` as rsyslog caps it (`_escaped_length`). The frame itself is already at most
    `max_bytes`: transports and the framer cut it there."""
    if raw.endswith(b"\x00"):
        raw = raw[:-1]
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    first = _CONTROL.search(raw)
    if first is None:
        return raw
    kept = _escaped_length(raw, first.start(), min(len(raw) * 4, max_bytes))
    return _CONTROL.sub(lambda m: _ESCAPED[m[0]], raw[:kept])


def _escaped_length(raw: bytes, first: int, max_dest: int) -> int:
    """How many bytes of `raw` rsyslog keeps once escaped. Its loop copies the bytes before the
    first control byte but one unchecked, then takes one input byte at a time (four output
    bytes for a control byte) while the output is shorter than `max_dest - 3`: so only whole
    escapes are kept, and the output stops 0-3 bytes short of `max_dest`."""
    limit = max_dest - 3
    if first - 1 >= limit:  # the unchecked copy alone reaches the limit
        return first - 1
    extra = 0  # output bytes beyond the input bytes consumed: 3 per escape so far
    for match in _CONTROL.finditer(raw, first):
        at = match.start()
        if at + extra >= limit:  # the plain bytes before this control byte reach the limit
            return limit - extra
        extra += 3
        if at + 1 + extra >= limit:  # this escape reaches or passes it
            return at + 1
    return min(len(raw), limit - extra)


def programname(syslogtag: bytes) -> bytes:
    """The static part of the tag: up to `:`, `[`, `/` or a non-printable byte."""
    match = _PROGRAMNAME.match(syslogtag)
    return match[0] if match is not None else b""


def parse(
    frame: bytes,
    *,
    received_at: float,
    peer: str,
    fromhost: bytes | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
    rsyslog_sd: bool = False,
) -> SyslogMessage:
    """Parse one frame. `fromhost` is the hostname used when the message carries none
    (rsyslog's FROMHOST; default: the peer's IP address). `rsyslog_sd`: see parse_rfc5424.
    A frame compressed by rsyslog (`z` + zlib) is inflated first, as rsyslog does."""
    if frame[:1] == b"z":
        frame = inflate(frame, max_bytes)
    fast = RFC3164_HEADER.match(frame)
    if fast is not None and len(fast[4]) <= TAG_MAX_BYTES and not has_control(frame):
        pri, timestamp, hostname, tag, program = fast.groups()
        msg = frame[fast.end() :]
        return SyslogMessage(
            PRI_VALUES[pri], hostname, tag, program, msg, timestamp, received_at, peer, frame
        )
    fast = RFC5424_HEADER.match(frame)
    if fast is not None and not has_control(frame):
        pri, timestamp, hostname, app, program, procid = fast.groups()
        tag = app if procid == b"-" else b"%s[%s]" % (app, procid)
        msg = frame[fast.end() :]
        return SyslogMessage(
            PRI_VALUES[pri], hostname, tag, program, msg, timestamp, received_at, peer, frame
        )
    return _parse_general(frame, received_at, peer, fromhost, max_bytes, rsyslog_sd)


def _parse_general(
    frame: bytes,
    received_at: float,
    peer: str,
    fromhost: bytes | None,
    max_bytes: int,
    rsyslog_sd: bool,
) -> SyslogMessage:
    data = sanitize(frame, max_bytes)
    pri, pos = _parse_pri(data)
    hostname: bytes | None
    if pri == INVALID_PRI:  # rsyslog parses nothing at all then
        hostname, tag, timestamp, pos = None, b"", b"", 0
    elif data.startswith(b"1 ", pos):
        header = parse_rfc5424(data, pos + 2, rsyslog_sd=rsyslog_sd)
        hostname, tag, timestamp = header.hostname, header.syslogtag, header.timestamp
        pos = header.msg_offset
    else:
        hostname, tag, timestamp, pos = parse_rfc3164(data, pos)
    if hostname is None:
        hostname = peer.encode() if fromhost is None else fromhost
    return SyslogMessage(
        pri=pri,
        hostname=hostname,
        syslogtag=tag,
        programname=programname(tag),
        msg=data[pos:],
        timestamp=timestamp,
        received_at=received_at,
        peer=peer,
        raw=frame,
    )


def _parse_pri(data: bytes) -> tuple[int, int]:
    """(pri, offset after it). No `<` at all: user.notice from offset 0."""
    if not data.startswith(b"<"):
        return DEFAULT_PRI, 0
    match = _PRI.match(data)
    if match is None:
        return INVALID_PRI, 0
    digits = match[1].lstrip(b"0")
    if len(digits) > 3 or int(digits or b"0") > 191:
        return INVALID_PRI, 0
    return int(digits or b"0"), match.end()
