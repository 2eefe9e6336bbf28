"""PLURA's relay stamp: `<PRI>TIMESTAMP HOSTNAME TAG [origip=<ip>] MSG` (and RFC 5424's
`[origin ip="<ip>"]`, which the `rfc5424` forward format uses).

A relay in front of a NAT stamps the address it received a message from; the collector behind
the NAT files the message under that address. Pure: bytes in, (address, msg) out. The address is
validated with `ipaddress` and only ever used in its canonical form, never raw in a path.
"""

from __future__ import annotations

import ipaddress
import re

_STAMP = re.compile(rb"( ?)\[origip=([^\]\s]{1,64})\] ?")


def split_origin(msg: bytes) -> tuple[str | None, bytes, bool]:
    """(origin address, msg without the stamp, stamp present but invalid).

    ` [origip=10.0.0.5] hello` -> ("10.0.0.5", ` hello`, False): the space before the stamp is
    the one rsyslog keeps after the tag, so what remains is the original MSG.
    """
    match = _STAMP.match(msg)
    if match is None:
        return None, msg, False
    address = _address(match[2])
    if address is None:
        return None, msg, True
    return address, match[1] + msg[match.end() :], False


# RFC 5424's own `origin` structured-data element, as upstream_format's `rfc5424` puts it
# first: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [origin ip="<ip>"]...`
# (a header field may be empty: a relay keeps an RFC 5424 message's header as received)
_SD_ORIGIN = re.compile(rb'<[0-9]{1,3}>1 (?:[^ ]* ){5}\[origin ip="([^"\s]{1,64})"')


def origin_from_sd(raw: bytes) -> tuple[str | None, bool]:
    """(origin address, present but invalid) from an RFC 5424 frame's `[origin ip=...]`."""
    match = _SD_ORIGIN.match(raw)
    if match is None:
        return None, False
    address = _address(match[1])
    return address, address is None


def _address(text: bytes) -> str | None:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return None  # a zone id (`fe80::1%eth0`) is free text, local to the relay: no origin
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def origip_stamps(origin: str) -> tuple[bytes, bytes]:
    """The stamp's two spellings: before a MSG that starts with a space (` [origip=X]`), and
    right before a MSG that does not (`[origip=X] `)."""
    return b" [origip=%s]" % origin.encode(), b"[origip=%s] " % origin.encode()


def stamp(msg: bytes, origin: str) -> bytes:
    """The relay side: insert the stamp before MSG (keeping MSG's leading space before it)."""
    return stamped(b":", msg, origip_stamps(origin))


def stamped(syslogtag: bytes, msg: bytes, stamps: tuple[bytes, bytes]) -> bytes:
    """MSG with the stamp in front (`stamps`: origip_stamps), so that the collector reads the
    same TAG and, once the stamp is removed, the same MSG. After a tag that ends in `:` the
    stamp may touch it; any other tag needs a space after it, or the stamp would be read as
    part of the tag (then MSG starts with a space, as rsyslog's `sp-if-no-1st-sp` forwarding
    does)."""
    if msg[:1] == b" ":
        return stamps[0] + msg
    if syslogtag[-1:] == b":":
        return stamps[1] + msg
    return stamps[0] + b" " + msg
