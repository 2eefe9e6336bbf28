"""What a relay sends upstream: a received message in the target's format, and its TCP framing.

Pure: a message (or a received frame) and the sender's address in, bytes out. The formats:

- `rfc3164-origip`, PLURA's relay format: `<PRI>TIMESTAMP HOSTNAME TAG [origip=<sender>] MSG`,
  which a PLURA collector (rsyslog with PLURA's rules, or plura-relay with `origin.trust_origip`)
  files under the sender's address;
- `rfc5424`: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [origin ip="<sender>"]SD MSG`,
  the sender in RFC 5424's own `origin` structured-data element put first, the rest of the
  message kept (see `rfc5424`);
- `raw`: the frame exactly as received.
"""

from __future__ import annotations

import re
import time

from relay.forward.origin import origip_stamps, stamped
from relay.message import SyslogMessage
from relay.parse import sanitize
from relay.parse.rfc3164 import HOSTNAME_MAX_BYTES
from relay.parse.rfc5424 import parse_rfc5424

_MONTHS = b"JanFebMarAprMayJunJulAugSepOctNovDec"
_RFC3164_TIME = re.compile(
    rb"((?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 0-3][0-9] "
    rb"[0-2][0-9]:[0-5][0-9]:[0-6][0-9])"
)
_RFC3339_TIME = re.compile(
    rb"[0-9]{4}-(0[1-9]|1[0-2])-([0-3][0-9])T([0-2][0-9]:[0-5][0-9]:[0-6][0-9])(\.[0-9]{1,9})?"
    rb"(Z|[+-][0-2][0-9]:[0-5][0-9])?$"
)
# an RFC 3164 timestamp as rsyslog reads it: `[YYYY ]Mmm [ ]d [YYYY ]hh:mm:ss[.frac][:]`
_BSD_TIME = re.compile(
    rb"(?:[0-9]{4} )?([A-Za-z]{3})  ?([0-9]{1,2}) (?:[0-9]{4} )?"
    rb"([0-9]{1,2}):([0-9]{1,2}):([0-9]{1,2})"
)
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
    """RFC 5424 that keeps the message: a collector's parser (plura-relay's or rsyslog's) reads
    the same fields as from the sender, the origin in one more SD element put first.

    RFC 5424 input: the header (timestamp, HOSTNAME, APP-NAME, PROCID, MSGID) and every SD
    element as received. Anything else: APP-NAME is the whole tag and PROCID `-` (so rsyslog's
    syslogtag is the tag as received, `:` included), MSGID `-`, HOSTNAME as parsed, MSG as
    parsed (the space rsyslog keeps after `tag:` is kept: RFC 5424's MSG starts after one SP),
    the RFC 3164 timestamp with the year and zone rsyslog gives it.
    """
    element = b'[origin ip="%s"]' % origin.encode()
    kept = _rfc5424_kept(message, element)
    if kept is not None:
        return kept
    pri = message.pri if message.pri >= 0 else INVALID_PRI_ON_WIRE
    return b"<%d>1 %s %s %s - - %s %s" % (
        pri, rfc3339_timestamp(message.timestamp, message.received_at),
        _field(message.hostname), _field(message.syslogtag), element, message.msg,
    )  # fmt: skip


_OUR_ORIGIN = re.compile(rb'\[origin ip="[^"\s\]]{1,64}"\]')


def _rfc5424_kept(message: SyslogMessage, element: bytes) -> bytes | None:
    """An RFC 5424 message's header and SD as received, `element` inserted first; None if the
    message is not RFC 5424 (as the parser read it)."""
    raw = message.raw
    pri_end = raw.find(b">", 0, 5) + 1
    if message.pri < 0 or not pri_end or not raw.startswith(b"1 ", pri_end):
        return None
    data = sanitize(raw, 4 * len(raw) + 16)  # the frame as parsed, not cut
    header = parse_rfc5424(data, pri_end + 2)
    if header.sd_offset < 0:
        return None
    sd = data[header.sd_offset : header.msg_offset]
    if sd[:1] == b"-" or sd[:1] != b"[":
        sd = b" "  # nil or invalid SD: only the origin element
    elif (ours := _OUR_ORIGIN.match(sd)) is not None:
        sd = sd[ours.end() :] or b" "  # a relay's origin before us: this hop's replaces it
    if not sd.endswith(b" "):
        sd += b" "  # SD up to the end of the message: MSG is empty
    head = data[: header.sd_offset]
    # a header cut short (`<PRI>1 TIMESTAMP host app`): its missing fields go as empty ones,
    # which parsers read as the sender's parser did (an empty PROCID, MSGID)
    missing = 5 - head.count(b" ", pri_end + 2)
    return head + b" " * missing + element + sd + message.msg


def rfc3339_from_3164(received: bytes, received_at: float) -> bytes | None:
    """An RFC 3164 timestamp as RFC 3339, with the year and local zone rsyslog gives it (the
    current year; the previous in January for a December stamp, the next in December for a
    January one)."""
    match = _BSD_TIME.match(received)
    if match is None:
        return None
    month = _MONTHS.index(match[1].capitalize()) // 3 + 1
    now = time.localtime(received_at)
    year = now.tm_year + (month == 1 and now.tm_mon == 12) - (month == 12 and now.tm_mon == 1)
    day, hour, minute, second = (int(match[i]) for i in range(2, 6))
    stamp = (year, month, day, hour, minute, min(second, 59), 0, 0, -1)
    offset = time.localtime(time.mktime(stamp)).tm_gmtoff
    sign = "+" if offset >= 0 else "-"
    zone = f"{sign}{abs(offset) // 3600:02d}:{abs(offset) % 3600 // 60:02d}"
    return b"%04d-%02d-%02dT%02d:%02d:%02d%s" % (
        year, month, day, hour, minute, second, zone.encode()
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
    """An RFC 5424 timestamp: the sender's own in that form, or its RFC 3164 one converted,
    else the arrival time."""
    if _RFC3339_TIME.match(received) and (received.endswith(b"Z") or received[-6:-5] in b"+-"):
        return received
    converted = rfc3339_from_3164(received, received_at)
    if converted is not None:
        return converted
    local = time.localtime(received_at)
    offset = local.tm_gmtoff
    sign = "+" if offset >= 0 else "-"
    zone = f"{sign}{abs(offset) // 3600:02d}:{abs(offset) % 3600 // 60:02d}"
    micros = int((received_at % 1) * 1_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{micros:06d}{zone}").encode()


def _field(value: bytes) -> bytes:
    """An RFC 5424 header field as parsers split it: no space (nor control byte), else `-`.
    Bytes over 0x7e are kept: rsyslog does not check them, and they are the sender's."""
    if not value or min(value) <= 0x20:
        return b"-"
    return value


def frame_octet_counted(payloads: list[bytes]) -> bytes:
    """RFC 6587 octet counting: `LEN SP MSG` per message."""
    return b"".join(b"%d %s" % (len(payload), payload) for payload in payloads)


def frame_lf(payloads: list[bytes]) -> bytes:
    """RFC 6587 non-transparent framing. A LF inside a message would end it early upstream:
    it is sent as a space (rsyslog's receivers would cut the message there)."""
    return b"".join(payload.replace(b"\n", b" ") + b"\n" for payload in payloads)
