"""A fast path for the shapes nearly every sender uses, equal to the general parser on them.

One regular expression per shape matches the header of the raw frame; it only accepts what the
general parser would read the same way (no leading zeros in the PRI, values in range, nothing
that needs rsyslog's quirks), and frames with control bytes (which sanitizing would change) are
left out too, so any frame declined simply takes the general path.
tests/parse/test_fast.py checks the two paths agree.
"""

from __future__ import annotations

import re

# `<PRI>`: 0..191 without leading zeros
_PRI = rb"<(1[0-8][0-9]|19[01]|[1-9][0-9]|[0-9])>"
_CLOCK = rb"(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)"
# the static part of a tag: what `programname` keeps. Possessive (`*+`, no backtracking into
# it): the rest of the tag may hold the same bytes, and backtracking over every split point of a
# long tag that then fails to match costs quadratic time.
_PROGRAM = rb"[!-.0-9;-Z\\\]-~]*+"

# The pieces of an RFC 3164 header (the tag's two groups: the tag, and its programname).
RFC3164_TIMESTAMP = (
    rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (?: [1-9]|0[1-9]|[12][0-9]|3[01]) "
    + _CLOCK
)
RFC3164_HOSTNAME = rb"[A-Za-z0-9._-]{0,510}[A-Za-z0-9]"
RFC3164_TAG = rb"((" + _PROGRAM + rb")[^: \x00-\x1f]*+:?)"
PRI_FIELD = _PRI  # one group: the PRI's digits

# Only the header: the body is what follows `match.end()`, and whether the frame has control
# bytes is checked with `has_control` (bytes.translate is three times faster than a regex scan).
# Groups: PRI, timestamp, hostname, tag, programname.
RFC3164_HEADER = re.compile(
    _PRI + rb"(" + RFC3164_TIMESTAMP + rb") (" + RFC3164_HOSTNAME + rb") " + RFC3164_TAG
)
CONTROL_BYTES = bytes(range(0x20))

# The header up to MSG (which follows `match.end()`); control bytes as for RFC 3164.
RFC5424_HEADER = re.compile(
    _PRI
    + rb"1 (-|(?:[01][0-9]{3}|20[0-9]{2})-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])T"
    + _CLOCK
    + rb"(?:\.[0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])) "
    + rb"([^ \x00-\x1f]++) ((?=[^ \x00-\x1f])("
    + _PROGRAM
    + rb")[^ \x00-\x1f]*+) ([^ \x00-\x1f]++) [^ \x00-\x1f]++ "
    + rb"(?:-|(?:\[[^\]\\\x00-\x1f]*\])+)(?: |\Z)"
)

PRI_VALUES: dict[bytes, int] = {str(pri).encode(): pri for pri in range(192)}


def has_control(frame: bytes) -> bool:
    """Whether sanitizing would change `frame` (it holds a byte < 0x20)."""
    return len(frame.translate(None, CONTROL_BYTES)) != len(frame)
