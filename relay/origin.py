"""PLURA's relay stamp: `<PRI>TIMESTAMP HOSTNAME TAG [origip=<ip>] MSG`.

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
    try:
        address = ipaddress.ip_address(match[2].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None, msg, True
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), match[1] + msg[match.end() :], False


def stamp(msg: bytes, origin: str) -> bytes:
    """The relay side: insert the stamp before MSG (keeping MSG's leading space before it)."""
    if msg.startswith(b" "):
        return b" [origip=%s]%s" % (origin.encode(), msg)
    return b"[origip=%s] %s" % (origin.encode(), msg)
