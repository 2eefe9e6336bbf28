"""The RFC 3164 ("legacy") header, as rsyslog's pmrfc3164 parses it.

Input is the sanitized message and the offset just after the PRI; output is
(hostname or None, syslogtag, msg offset). A hostname of None means "not in the message":
the caller falls back to the sender's name, as rsyslog's FROMHOST does.
"""

from __future__ import annotations

import re

from relay.parse.timestamp import parse_bsd, parse_rfc3339

HOSTNAME_MAX_BYTES = 511  # CONF_HOSTNAME_MAXSIZE - 1
TAG_MAX_BYTES = 510  # CONF_TAG_MAXSIZE - 2

_HOSTNAME = re.compile(rb"[A-Za-z0-9._-]{0,%d}" % HOSTNAME_MAX_BYTES)
_TAG = re.compile(rb"[^: ]{0,%d}:?" % TAG_MAX_BYTES)
_ALNUM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")

# The shape nearly every sender uses: `Mmm dd hh:mm:ss host tag...`. When it matches (and the
# field values are in range) the result is what the general path would give, only faster.
_COMMON = re.compile(
    rb"([A-Za-z]{3}) ([ 0-9][0-9]) ([0-9]{2}):([0-9]{2}):([0-9]{2}) "
    rb"([A-Za-z0-9._-]{0,%d}[A-Za-z0-9]) ([^: ]{0,%d}:?)" % (HOSTNAME_MAX_BYTES - 1, TAG_MAX_BYTES)
)
_MONTHS = frozenset(
    (b"jan", b"feb", b"mar", b"apr", b"may", b"jun",
     b"jul", b"aug", b"sep", b"oct", b"nov", b"dec")
)  # fmt: skip


def parse_rfc3164(data: bytes, pos: int) -> tuple[bytes | None, bytes, bytes, int]:
    """Return (hostname or None, syslogtag, timestamp text, msg offset)."""
    fast = _COMMON.match(data, pos)
    if fast is not None and _plausible(fast):
        return fast[6], fast[7], data[pos : fast.start(6) - 1], fast.end()
    return _parse_general(data, pos)


def _plausible(m: re.Match[bytes]) -> bool:
    day = m[2]
    return (
        m[1].lower() in _MONTHS
        and 1 <= int(day) <= 31
        and day[1] != 0x20
        and int(m[3]) <= 23
        and int(m[4]) <= 59
        and int(m[5]) <= 60
    )


def _parse_general(data: bytes, pos: int) -> tuple[bytes | None, bytes, bytes, int]:
    size = len(data)
    # headerless: only spaces, then JSON or a bracket (TABs are already #011 here)
    probe = pos
    while probe < size and data[probe] == 0x20:
        probe += 1
    if probe < size and data[probe] in b"{[":
        return None, b"", b"", pos

    start = pos
    after = parse_rfc3339(data, pos)
    if after < 0:
        after = parse_bsd(data, pos)
    if after < 0 and pos < size - 1 and data[pos] == 0x20:  # HP ProCurve: a space first
        after = parse_bsd(data, pos + 1)
    timestamp = b""
    if after >= 0:
        timestamp = data[start:after].strip(b" ")
        pos = after

    hostname: bytes | None = None
    if pos < size:
        name = _HOSTNAME.match(data, pos)
        assert name is not None  # the pattern accepts the empty string
        length = name.end() - pos
        if name.end() == size:
            hostname, pos = name[0], size
        elif length and data[name.end() - 1] in _ALNUM and data[name.end()] == 0x20:
            hostname, pos = name[0], name.end() + 1

    tag = _TAG.match(data, pos)
    assert tag is not None
    return hostname, tag[0], timestamp, tag.end()
