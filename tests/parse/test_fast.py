"""The fast path must give exactly what the general (rsyslog-faithful) parser gives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.parse import MAX_MESSAGE_BYTES, _parse_general, parse
from relay.parse.fast import RFC3164_HEADER, RFC5424_HEADER

PIECES = [
    b"<13>", b"<0>", b"<191>", b"<192>", b"<013>", b"<134>", b"1 ", b"2 ", b"-", b" ", b"  ",
    b"Jan", b"jan", b"Dec", b" 5", b"05", b"31", b"32", b" 0", b"10:11:12", b"23:59:60", b"24:00:00",
    b"2024-01-05T10:11:12Z", b"2024-01-05T10:11:12.123456+09:00", b"2099-12-31T23:59:60-23:59",
    b"2100-01-01T00:00:00Z", b"2024-01-05T10:11:12", b"host01", b"host-", b"h.example.com", b"app",
    b"app:", b"app[1]:", b"postfix/smtpd[9]:", b":", b"[", b"]", b"] ", b"[x@1 a=\"1\"]", b"\\]",
    b"\"", b"/", b"\\", b"\xff", b"\xef\xbb\xbf", b"\t", b"\n", b"\x00", b"\r", b"x", b"7",
]  # fmt: skip

FRAMES = st.lists(st.sampled_from(PIECES), max_size=14).map(b"".join)


def _same(frame: bytes) -> None:
    fast = parse(frame, received_at=1.0, peer="127.0.0.9")
    general = _parse_general(frame, 1.0, "127.0.0.9", None, MAX_MESSAGE_BYTES, False)
    assert fast == general


@settings(max_examples=5000, deadline=None)
@given(FRAMES)
def test_fast_path_equals_general_path(frame: bytes) -> None:
    _same(frame)


@settings(max_examples=3000, deadline=None)
@given(
    st.sampled_from(
        [b"<13>Jan  5 10:11:12 host01 ", b"<13>1 - host app - - - ", b"<13>1 - h a p m "]
    ),
    st.binary(max_size=40),
)
def test_fast_path_equals_general_path_on_any_tail(head: bytes, tail: bytes) -> None:
    _same(head + tail)


COMMON = [
    b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
    b"<86>Nov 26 21:00:01 pod-1 sshd[123]: Accepted publickey for root from 10.0.0.1 port 22",
    b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [x@1 iut="3"] An event',
    b"<13>1 2024-01-05T10:11:12+09:00 host01 app 42 - - plain",
    b"<13>1 2024-01-05T10:11:12Z host01 app 42 - -",
]


@pytest.mark.parametrize("frame", COMMON)
def test_common_shapes_take_the_fast_path(frame: bytes) -> None:
    assert RFC3164_HEADER.match(frame) or RFC5424_HEADER.match(frame)
    _same(frame)
