"""What a relay sends upstream: a received message in the target's format, and its TCP framing.

Pure: a message (or a received frame) and the sender's address in, bytes out. The formats:

- `rfc3164-origip`, PLURA's relay format: `<PRI>TIMESTAMP HOSTNAME TAG [origip=<sender>] MSG`,
  which a PLURA collector (rsyslog with PLURA's rules, or plura-relay with `origin.trust_origip`)
  files under the sender's address;
- `rfc5424`: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID - [origin ip="<sender>"] MSG`, the
  sender in RFC 5424's own `origin` structured-data element;
- `raw`: the frame exactly as received.
"""

from __future__ import annotations

import re
import time

from relay.forward.origin import origip_stamps, stamped
from relay.message import SyslogMessage
from relay.parse.rfc3164 import HOSTNAME_MAX_BYTES

_MONTHS = b"JanFebMarAprMayJunJulAugSepOctNovDec"
_RFC3164_TIME = re.compile(
    rb"((?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 0-3][0-9] "
    rb"[0-2][0-9]:[0-5][0-9]:[0-6][0-9])"
)
_RFC3339_TIME = re.compile(
    rb"[0-9]{4}-(0[1-9]|1[0-2])-([0-3][0-9])T([0-2][0-9]:[0-5][0-9]:[0-6][0-9])(\.[0-9]{1,9})?"
    rb"(Z|[+-][0-2][0-9]:[0-5][0-9])?$"
)
_PROCID = re.compile(rb"\[([!-~]{1,128}?)\]:?$")
INVALID_PRI_ON_WIRE = 13  # a message with an invalid PRI goes on as user.notice: a PRI the
# upstream would find invalid would make it parse nothing, stamp included
_HOSTNAME_3164 = re.compile(rb"[A-Za-z0-9._-]{0,%d}[A-Za-z0-9]\Z" % (HOSTNAME_MAX_BYTES - 1))


def render(fmt: str, message: SyslogMessage, origin: str) -> bytes:
    """`message` (received from `origin`) as the payload of one upstream message."""
    if fmt == "raw":
        return message.raw
    if fmt == "rfc5424":
        return rfc5424(message, origin)
    return rfc3164_origip(message, origin)


def rfc3164_origip(message: SyslogMessage, origin: str) -> bytes:
    pri = message.pri if message.pri >= 0 else INVALID_PRI_ON_WIRE
    # no tag would leave the stamp where the collector reads a tag: rsyslog sends `-` then
    tag = message.syslogtag or b"-"
    if b":" in tag[:-1]:
        # an RFC 5424 APP-NAME may hold a `:` (docker's `image:tag`); a 3164 parser ends the
        # tag there and would read the rest, stamp included, as MSG: the origin would be lost
        tag = tag[:-1].replace(b":", b"_") + tag[-1:]
    timestamp = rfc3164_timestamp(message.timestamp, message.received_at)
    # a hostname an RFC 3164 parser would not read as one (RFC 5424's nil `-`, an IPv6
    # address) would shift every field after it: the sender's address stands in
    hostname = message.hostname
    if _HOSTNAME_3164.match(hostname) is None:
        hostname = _hostname_for(origin)
    return b"<%d>%s %s %s%s" % (pri, timestamp, hostname, tag,
                                stamped(tag, message.msg, origip_stamps(origin)))  # fmt: skip


def _hostname_for(origin: str) -> bytes:
    """The sender's address as an RFC 3164 HOSTNAME: an IPv6 address has `:`, which would end
    the hostname early, so they are written as `-` (`fd00::7` -> `fd00--7`)."""
    if ":" not in origin:
        return origin.encode()
    name = origin.replace(":", "-").replace("%", "-")
    return (name + "0" if name.endswith("-") else name).encode()


def stamp_frame(
    frame: bytes, header_end: int, syslogtag: bytes, stamps: tuple[bytes, bytes]
) -> bytes:
    """The fast path's `rfc3164-origip`: a frame whose header (up to and including the tag,
    `frame[:header_end]`) has the plain RFC 3164 shape keeps it as is; `stamps`: the sender's
    origip_stamps, made once per batch."""
    return frame[:header_end] + stamped(syslogtag, frame[header_end:], stamps)


def rfc5424(message: SyslogMessage, origin: str) -> bytes:
    pri = message.pri if message.pri >= 0 else INVALID_PRI_ON_WIRE
    match = _PROCID.search(message.syslogtag)
    procid = match[1] if match else b"-"
    app = _token(message.programname, 48)
    msg = message.msg[1:] if message.msg.startswith(b" ") else message.msg
    return b'<%d>1 %s %s %s %s - [origin ip="%s"] %s' % (
        pri, rfc3339_timestamp(message.timestamp, message.received_at),
        _token(message.hostname, 255), app, _token(procid, 128), origin.encode(), msg,
    )  # fmt: skip


def rfc3164_timestamp(received: bytes, received_at: float) -> bytes:
    """rsyslog's %TIMESTAMP%: `Mmm dd hh:mm:ss` of the time the sender gave, else of arrival."""
    match = _RFC3164_TIME.match(received)
    if match is not None:
        return match[1]
    match = _RFC3339_TIME.match(received)
    if match is not None:
        month = int(match[1])
        name = _MONTHS[3 * month - 3 : 3 * month]
        return b"%s %2d %s" % (name, int(match[2]), match[3])
    return time.strftime("%b %e %H:%M:%S", time.localtime(received_at)).encode()


def rfc3339_timestamp(received: bytes, received_at: float) -> bytes:
    """An RFC 5424 timestamp: the sender's own when it gave one in that form, else arrival."""
    if _RFC3339_TIME.match(received) and (received.endswith(b"Z") or received[-6:-5] in b"+-"):
        return received
    local = time.localtime(received_at)
    offset = local.tm_gmtoff
    sign = "+" if offset >= 0 else "-"
    zone = f"{sign}{abs(offset) // 3600:02d}:{abs(offset) % 3600 // 60:02d}"
    micros = int((received_at % 1) * 1_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{micros:06d}{zone}").encode()


def _token(value: bytes, limit: int) -> bytes:
    """An RFC 5424 header field: printable ASCII without spaces, at most `limit`, else `-`."""
    value = value[:limit]
    if not value or any(byte <= 32 or byte > 126 for byte in value):
        return b"-"
    return value


def frame_octet_counted(payloads: list[bytes]) -> bytes:
    """RFC 6587 octet counting: `LEN SP MSG` per message."""
    return b"".join(b"%d %s" % (len(payload), payload) for payload in payloads)


def frame_lf(payloads: list[bytes]) -> bytes:
    """RFC 6587 non-transparent framing. A LF inside a message would end it early upstream:
    it is sent as a space (rsyslog's receivers would cut the message there)."""
    return b"".join(payload.replace(b"\n", b" ") + b"\n" for payload in payloads)
