"""A fast path for the shapes nearly every sender uses, equal to the general parser on them.

One regular expression per shape matches the whole raw frame; it only accepts what the general
parser would read the same way (no control bytes, no leading zeros in the PRI, values in range,
nothing that needs rsyslog's quirks), so any frame it declines simply takes the general path.
tests/parse/test_fast.py checks the two paths agree.
"""

from __future__ import annotations

import re

from relay.parse.rfc3164 import TAG_MAX_BYTES

# `<PRI>`: 0..191 without leading zeros
_PRI = rb"<(1[0-8][0-9]|19[01]|[1-9][0-9]|[0-9])>"
_CLOCK = rb"(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)"
# the message body: no control bytes, then at most the one trailing LF and NUL sanitizing drops
_BODY = rb"([^\x00-\x1f]*)\n?\x00?"
# the static part of a tag: what `programname` keeps
_PROGRAM = rb"[!-.0-9;-Z\\\]-~]*"

RFC3164 = re.compile(
    _PRI
    + rb"((?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (?: [1-9]|0[1-9]|[12][0-9]|3[01]) "
    + _CLOCK
    + rb") ([A-Za-z0-9._-]{0,510}[A-Za-z0-9]) (("
    + _PROGRAM
    + rb")[^: \x00-\x1f]*:?)"
    + _BODY,
    re.DOTALL,
)

RFC5424 = re.compile(
    _PRI
    + rb"1 (-|(?:[01][0-9]{3}|20[0-9]{2})-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])T"
    + _CLOCK
    + rb"(?:\.[0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])) "
    + rb"([^ \x00-\x1f]+) ((?=[^ \x00-\x1f])("
    + _PROGRAM
    + rb")[^ \x00-\x1f]*) ([^ \x00-\x1f]+) [^ \x00-\x1f]+ "
    + rb"(?:-|(?:\[[^\]\\\x00-\x1f]*\])+)(?: "
    + _BODY
    + rb")?",
    re.DOTALL,
)

PRI_VALUES: dict[bytes, int] = {str(pri).encode(): pri for pri in range(192)}


def fast_rfc3164(frame: bytes) -> re.Match[bytes] | None:
    """Groups: pri, timestamp, hostname, syslogtag, programname, msg."""
    match = RFC3164.fullmatch(frame)
    if match is None or len(match[4]) > TAG_MAX_BYTES:
        return None  # a tag at rsyslog's length limit is cut: the general path knows how
    return match


def fast_rfc5424(frame: bytes) -> re.Match[bytes] | None:
    """Groups: pri, timestamp, hostname, app-name, programname, procid, msg (None = empty)."""
    return RFC5424.fullmatch(frame)
