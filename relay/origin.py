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


# RFC 5424's own `origin` structured-data element, as relay.upstream_format's `rfc5424` puts it
# first: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [origin ip="<ip>"]...`
_SD_ORIGIN = re.compile(rb'<[0-9]{1,3}>1 (?:[^ ]+ ){5}\[origin ip="([^"\s]{1,64})"')


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
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def stamp(msg: bytes, origin: str) -> bytes:
    """The relay side: insert the stamp before MSG (keeping MSG's leading space before it)."""
    if msg.startswith(b" "):
        return b" [origip=%s]%s" % (origin.encode(), msg)
    return b"[origip=%s] %s" % (origin.encode(), msg)
