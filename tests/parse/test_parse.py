"""Table-driven parser tests: each case is what rsyslog 8.2302 does with that input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.message import INVALID_PRI
from relay.parse import parse, programname, sanitize
from relay.parse.rfc3164 import _parse_general, parse_rfc3164

PEER = "127.0.0.12"

# (raw, pri, hostname, syslogtag, msg); hostname None = the sender's IP
CASES = [
    pytest.param(b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
                 34, b"mymachine", b"su:", b" 'su root' failed for lonvick on /dev/pts/8", id="3164-basic"),
    pytest.param(b"<13>Jan  5 10:11:12 su: 'su root' failed for lonvick", 13, None, b"su:",
                 b" 'su root' failed for lonvick", id="3164-no-hostname"),
    pytest.param(b"<13>Jan  5 10:11:12 this is free text after the date", 13, b"this", b"is",
                 b" free text after the date", id="3164-free-text"),
    pytest.param(b"just plain text without anything", 13, b"just", b"plain",
                 b" text without anything", id="no-pri-plain-text"),
    pytest.param(b"Jan  5 10:11:12 host01 app[1]: no PRI, 3164 otherwise", 13, b"host01", b"app[1]:",
                 b" no PRI, 3164 otherwise", id="no-pri-3164"),
    pytest.param(b" <14>Jan  5 10:11:12 host01 app: x", 13, None, b"",
                 b" <14>Jan  5 10:11:12 host01 app: x", id="leading-space-no-pri"),
    pytest.param(b"\t<14>Jan  5 10:11:12 host01 app: x", 13, None, b"#011<14>Jan",
                 b"  5 10:11:12 host01 app: x", id="leading-tab-no-pri"),
    pytest.param(b"<>Jan  5 10:11:12 host01 app: empty pri", 0, b"host01", b"app:", b" empty pri",
                 id="empty-pri"),
    pytest.param(b"<013>Jan  5 10:11:12 host01 app: x", 13, b"host01", b"app:", b" x", id="pri-0-padded"),
    pytest.param(b"<00013>Jan  5 10:11:12 host01 app: x", 13, b"host01", b"app:", b" x", id="pri-00-padded"),
    pytest.param(b"<13>>Jan  5 10:11:12 host01 app: x", 13, None, b">Jan",
                 b"  5 10:11:12 host01 app: x", id="pri-double-gt"),
    pytest.param(b"<14>  {\"level\":\"info\",\"msg\":\"two spaces then JSON\"}", 14, None, b"",
                 b"  {\"level\":\"info\",\"msg\":\"two spaces then JSON\"}", id="headerless-json"),
    pytest.param(b"<13>[bracket first]: x", 13, None, b"", b"[bracket first]: x", id="headerless-bracket"),
    pytest.param(b"<14>\t[tab then bracket] text", 14, None, b"#011[tab", b" then bracket] text",
                 id="tab-is-not-headerless"),
    pytest.param(b"<134>2 2024-01-05T10:11:12Z host01 app 1 - - version 2", 134, b"2",
                 b"2024-01-05T10:", b"11:12Z host01 app 1 - - version 2", id="version-2-is-3164"),
    pytest.param(b"<13>1", 13, b"1", b"", b"", id="lone-1"),
    pytest.param(b"<38> Mar  7 19:06:53 example tag: x", 38, b"example", b"tag:", b" x",
                 id="procurve-space-before-date"),
    pytest.param(b"<13>Jan  5 10:11:12 2024 host01 app: x", 13, b"2024", b"host01", b" app: x",
                 id="year-after-time-not-recognised"),
    pytest.param(b"<13>Mar 7 2008 19:06:53 host01 app: x", 13, b"host01", b"app:", b" x",
                 id="year-before-time"),
    pytest.param(b"<13>Jan  5 2100 10:11:12 host01 app: x", 13, b"Jan", b"", b" 5 2100 10:11:12 host01 app: x",
                 id="year-2100-before-time-fails"),
    pytest.param(b"<190>2024 Jan  5 10:11:12 KST nexus01 %ETHPORT-5-IF_UP: up", 190, b"KST", b"nexus01",
                 b" %ETHPORT-5-IF_UP: up", id="leading-year-nexus"),
    pytest.param(b"<13>jan  5 10:11:12 host01 app: x", 13, b"host01", b"app:", b" x", id="month-lower"),
    pytest.param(b"<13>JAN  5 10:11:12 host01 app: x", 13, b"host01", b"app:", b" x", id="month-upper"),
    pytest.param(b"<13>January  5 10:11:12 host01 app: x", 13, b"January", b"", b" 5 10:11:12 host01 app: x",
                 id="month-long-fails"),
    pytest.param(b"<13>Feb 30 10:11:12 host01 app: x", 13, b"host01", b"app:", b" x", id="feb-30-ok"),
    pytest.param(b"<13>Jan 32 10:11:12 host01 app: x", 13, b"Jan", b"32", b" 10:11:12 host01 app: x",
                 id="jan-32-fails"),
    pytest.param(b"<13>Jan  5 1:2:3 host01 app: x", 13, b"host01", b"app:", b" x", id="short-clock"),
    pytest.param(b"<13>Jan  5 010:11:12 host01 app: x", 13, b"host01", b"app:", b" x", id="3-digit-hour"),
    pytest.param(b"<13>Mar 7 19:06:53: example tag: x", 13, b"example", b"tag:", b" x", id="colon-after-time"),
    pytest.param(b"<13>Jan  5 10:11:12+09:00 host01 app: x", 13, b"Jan", b"", b" 5 10:11:12+09:00 host01 app: x",
                 id="bsd-with-offset-fails"),
    pytest.param(b"<13>2024-01-05T10:11:12.123+09:00 host01 app: x", 13, b"host01", b"app:", b" x",
                 id="3164-with-rfc3339"),
    pytest.param(b"<13>2024-01-05T10:11:12 host01 app: x", 13, None, b"2024-01-05T10:",
                 b"11:12 host01 app: x", id="3339-without-offset-fails"),
    pytest.param(b"<13>Jan  5 10:11:12 host- app: x", 13, None, b"host-", b" app: x", id="host-ending-dash"),
    pytest.param(b"<13>x-", 13, b"x-", b"", b"", id="host-at-end-any-last-byte"),
    pytest.param(b"<13>Jan  5 10:11:12  host01", 13, None, b"", b" host01", id="two-spaces-before-host"),
    pytest.param(b"<13>Jan  5 10:11:12 host01  app: double", 13, b"host01", b"", b" app: double",
                 id="two-spaces-before-tag"),
    pytest.param(b"<13>Jan  5 10:11:12 host01 a:b:c: colons in tag", 13, b"host01", b"a:", b"b:c: colons in tag",
                 id="tag-first-colon"),
    pytest.param(b"<13>Jan  5 10:11:12 host01 tag-no-colon message follows", 13, b"host01", b"tag-no-colon",
                 b" message follows", id="tag-no-colon"),
    pytest.param(b"<13>Jan  5 10:11:12 host01 app", 13, b"host01", b"app", b"", id="tag-at-end"),
    pytest.param(b"<13>Jan  5 10:11:12 host01 app:x", 13, b"host01", b"app:", b"x", id="tag-colon-no-space"),
    pytest.param(b"<13>Jan  5 10:11:12 host01 app [1]: x", 13, b"host01", b"app", b" [1]: x",
                 id="space-before-pid"),
    pytest.param(b"<13>Jan  5 10:11:12 host01 " + b"T" * 511 + b": 511-char tag", 13, b"host01",
                 b"T" * 510, b"T: 511-char tag", id="tag-cut-at-510"),
    pytest.param(b"<13>Jan  5 10:11:12 " + b"h" * 512 + b" app: x", 13, None, b"h" * 510,
                 b"hh app: x", id="hostname-512-is-tag"),
    pytest.param(b"<13>Jan  5 10:11:12 " + b"h" * 511 + b" app: x", 13, b"h" * 511, b"app:", b" x",
                 id="hostname-511"),
    pytest.param(b"<189>1234: *Mar  1 00:01:02.345: %LINK-3-UPDOWN: down", 189, None, b"1234:",
                 b" *Mar  1 00:01:02.345: %LINK-3-UPDOWN: down", id="cisco-seq"),
    pytest.param(b"<166>Jan 05 2024 10:11:12: %ASA-6-302014: Teardown", 166, None, b"%ASA-6-302014:",
                 b" Teardown", id="cisco-asa"),
    pytest.param(b"<13>Jan  5 10:11:12.123456 host01 app: x", 13, b"host01", b"app:", b" x", id="bsd-fraction"),
    pytest.param(b"<7>Jan  5 10:11:12.1234567890123 host app: x", 7, b"Jan", b"", b" 5 10:11:12.1234567890123 host app: x",
                 id="bsd-fraction-overflow-fails"),
    pytest.param(b"<7>2006-11-10T10:43:21.9999999999+01:00 bzorp app: x", 7, None, b"2006-11-10T10:",
                 b"43:21.9999999999+01:00 bzorp app: x", id="3339-fraction-overflow-fails"),
    # invalid PRI: nothing parsed
    pytest.param(b"<192>Jan  5 10:11:12 host01 app: pri 192", INVALID_PRI, None, b"",
                 b"<192>Jan  5 10:11:12 host01 app: pri 192", id="pri-192"),
    pytest.param(b"<999>x", INVALID_PRI, None, b"", b"<999>x", id="pri-999"),
    pytest.param(b"<-1>x", INVALID_PRI, None, b"", b"<-1>x", id="pri-negative"),
    pytest.param(b"<a>x", INVALID_PRI, None, b"", b"<a>x", id="pri-letter"),
    pytest.param(b"<13 x", INVALID_PRI, None, b"", b"<13 x", id="pri-unclosed"),
    pytest.param(b"<<13>x", INVALID_PRI, None, b"", b"<<13>x", id="pri-double-lt"),
    pytest.param(b"<1 3>x", INVALID_PRI, None, b"", b"<1 3>x", id="pri-space"),
    pytest.param(b"<" + b"0" * 5000 + b"13>x", 13, b"x", b"", b"", id="pri-5000-zeros"),
    pytest.param(b"<" + b"9" * 5000 + b">x", INVALID_PRI, None, b"", b"<" + b"9" * 5000 + b">x",
                 id="pri-5000-nines"),
    # sanitizing
    pytest.param(b"<13>Jan  5 10:11:12 host01 app: NUL at the end\x00", 13, b"host01", b"app:",
                 b" NUL at the end", id="trailing-nul"),
    pytest.param(b"<13>Jan  5 10:11:12 host01 app: two NULs\x00\x00", 13, b"host01", b"app:",
                 b" two NULs#000", id="two-trailing-nuls"),
    pytest.param(b"<13>Jan  5 10:11:12 host01 app: bell\x07 bs\x08 ff\x0c vt\x0b DEL\x7f", 13, b"host01",
                 b"app:", b" bell#007 bs#010 ff#014 vt#013 DEL\x7f", id="control-bytes"),
    pytest.param(b"<13>Jan  5 10:11:12 host01 app\ttab: t", 13, b"host01", b"app#011tab:", b" t", id="tab-in-tag"),
    pytest.param(b"<13>Jan  5 10:11:12 host\x01ctl app: x", 13, None, b"host#001ctl", b" app: x",
                 id="control-in-hostname"),
    pytest.param(b"<13>Jan  5 10:11:12 host01 app: line1\nline2", 13, b"host01", b"app:",
                 b" line1#012line2", id="inner-lf"),
    pytest.param(b"<13>Jan  5 10:11:12 host01 app: ends with CRLF\r\n", 13, b"host01", b"app:",
                 b" ends with CRLF#015", id="crlf"),
    pytest.param(b"\n", 13, None, b"", b"", id="lone-lf"),
    pytest.param(b"<13>Jan  5 10:11:12 host01 app: lone 0xff \xff byte", 13, b"host01", b"app:",
                 b" lone 0xff \xff byte", id="invalid-utf8"),
    # RFC 5424
    pytest.param(b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
                 b"[exampleSDID@32473 iut=\"3\"] An application event", 165, b"mymachine.example.com",
                 b"evntslog", b"An application event", id="5424-rfc-example"),
    pytest.param(b"<13>1 - - - - - -", 13, b"-", b"-", b"", id="5424-all-nil"),
    pytest.param(b"<134>1 2024-01-05T10:11:12Z  host01 app 1 - - double", 134, b"", b"host01[app]",
                 b"- double", id="5424-empty-hostname"),
    pytest.param(b"<134>1 2024-01-05t10:11:12z host01 app 1 - - lower", 134, None, b"",
                 b"2024-01-05t10:11:12z host01 app 1 - - lower", id="5424-lowercase-t"),
    pytest.param(b"<134>1 2024-01-05T10:11:12+0900 host01 app 1 - - x", 134, None, b"",
                 b"2024-01-05T10:11:12+0900 host01 app 1 - - x", id="5424-offset-no-colon"),
    pytest.param(b"<134>1 2024-01-05T10:11:12+24:00 host01 app 1 - - x", 134, None, b"",
                 b"2024-01-05T10:11:12+24:00 host01 app 1 - - x", id="5424-offset-24"),
    pytest.param(b"<134>1 2024-02-30T23:59:60Z host01 app 1 - - x", 134, b"host01", b"app[1]", b"x",
                 id="5424-feb-30-leap-second"),
    pytest.param(b"<13>1 2024-01-05T10:11:12Z host01 myapp 4321 - - x", 13, b"host01", b"myapp[4321]", b"x",
                 id="5424-procid"),
    pytest.param(b"<13>1 2024-01-05T10:11:12Z host01 app[1] 1 - - x", 13, b"host01", b"app[1][1]", b"x",
                 id="5424-bracket-appname"),
    pytest.param(b"<13>1 2024-01-05T10:11:12Z host01 - 123 - - x", 13, b"host01", b"-[123]", b"x",
                 id="5424-nil-app-procid"),
    pytest.param(b"<1>1 -   - - - -", 1, b"", b"-", b"-", id="5424-empty-appname-reads-dash"),
    pytest.param(b"<1>1 - -   - - -", 1, b"-", b"-[]", b"-", id="5424-empty-procid"),
    pytest.param(b"<13>1 - h a p m [x@1 a=\"1\"] [y@1 b=\"2\"] space", 13, b"h", b"a[p]",
                 b"[y@1 b=\"2\"] space", id="5424-space-between-sd"),
    pytest.param(b"<13>1 - h a p m [bad sd] unquoted", 13, b"h", b"a[p]", b"unquoted", id="5424-bad-sd"),
    pytest.param(b"<13>1 - h a p m [x@1 k=\"v\\] still\"] msg", 13, b"h", b"a[p]", b"msg",
                 id="5424-escaped-bracket"),
    pytest.param(b"<13>1 - h a p m [x@1 k=\"v\\\\] still\"] msg", 13, b"h", b"a[p]", b"msg",
                 id="5424-backslash-pair-still-escapes"),
    pytest.param(b"<13>1 - h a p m [x@1]", 13, b"h", b"a[p]", b"", id="5424-sd-at-end"),
    pytest.param(b"<13>1 - h a p m [x@1 k=\"v\"]no-space-after-SD", 13, b"h", b"a[p]",
                 b"[x@1 k=\"v\"]no-space-after-SD", id="5424-sd-unterminated-kept"),
    pytest.param(b"<13>1 - h a p m -  two spaces", 13, b"h", b"a[p]", b" two spaces", id="5424-two-spaces"),
    pytest.param(b"<13>1 - h a p m - \xef\xbb\xbfbom", 13, b"h", b"a[p]", b"\xef\xbb\xbfbom", id="5424-bom"),
    pytest.param(b"<13>1 - h a p m x msg", 13, b"h", b"a[p]", b"x msg", id="5424-sd-invalid-start"),
    pytest.param(b"<13>1 -", 13, None, b"", b"-", id="5424-lone-dash"),
    pytest.param(b"1 2024-01-05T10:11:12Z host01 app - - - no PRI", 13, b"host01", b"app", b"no PRI",
                 id="5424-no-pri"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "pri", "hostname", "syslogtag", "msg"), CASES)
def test_parse(raw: bytes, pri: int, hostname: bytes | None, syslogtag: bytes, msg: bytes) -> None:
    message = parse(raw, received_at=0.0, peer=PEER)
    assert (message.pri, message.hostname, message.syslogtag, message.msg) == (
        pri,
        PEER.encode() if hostname is None else hostname,
        syslogtag,
        msg,
    )


def test_unterminated_sd_rsyslog_mode_keeps_only_last_byte() -> None:
    raw = b'<13>1 - h a p m [x@1 k="v"]no-space-after-SD'
    assert parse(raw, received_at=0.0, peer=PEER, rsyslog_sd=True).msg == b"D"


def test_fromhost_replaces_missing_hostname() -> None:
    message = parse(b"<13>su: x", received_at=0.0, peer=PEER, fromhost=b"pod-a")
    assert message.hostname == b"pod-a"


def test_escaped_message_is_capped() -> None:
    raw = b"<13>Jan  5 10:11:12 host01 app: " + b"\t" * 3000
    message = parse(raw, received_at=0.0, peer=PEER)
    assert len(message.msg) == 8096 - len(b"<13>Jan  5 10:11:12 host01 app:")
    assert message.msg.startswith(b" #011#011")


# rsyslog's SanitizeMsg at the cap (max 8096): output stops once it has 8093 bytes or more,
# so only whole `#ooo` escapes are kept and plain bytes after an escape stop at 8093; the bytes
# before the first control byte but one are copied unchecked. Checked against rsyslogd by the
# `cap-*` lines of tests/corpus/hostile.jsonl.
H = b"<14>Jan  5 10:11:12 host01 "
SANITIZE_AT_CAP = [
    pytest.param(H + b"capped-tab: " + b"\t" * 3000, 8095, b"#011", id="issue-39-byte-header"),
    pytest.param(H + b"cap-tab: " + b"\t" * 3000, 8096, b"#011", id="cap-at-escape-end"),
    pytest.param(H + b"cap-tab1: " + b"\t" * 3000, 8093, b"#011", id="cap-3-bytes-short"),
    pytest.param(H + b"cap-tab12: " + b"\t" * 3000, 8094, b"#011", id="cap-2-bytes-short"),
    pytest.param(H + b"\x1b" * 2100, 8095, b"#033", id="esc"),
    pytest.param(H + b"a:\t" + b"y" * 8062, 8093, b"yyy", id="plain-after-escape"),
    pytest.param(b"z" * 8095 + b"\t", 8094, b"zzz", id="unchecked-copy-past-limit"),
    pytest.param(b"\t" + "한".encode() * 2800, 8093, b"\x9c\xed", id="inside-utf8"),
    pytest.param(b"\t" * 5, 20, b"#011", id="short-message-whole"),
]


@pytest.mark.parametrize(("raw", "length", "tail"), SANITIZE_AT_CAP)
def test_sanitize_keeps_whole_escapes_at_the_cap(raw: bytes, length: int, tail: bytes) -> None:
    sanitized = sanitize(raw)
    assert len(sanitized) == length
    assert sanitized.endswith(tail)


PROGRAMNAMES = [
    (b"su:", b"su"), (b"/usr/sbin/cron[123]:", b""), (b"postfix/smtpd[9912]:", b"postfix"),
    (b"app(with)parens:", b"app(with)parens"), ("한글태그:".encode(), b""), (b"host\xff01", b"host"),
    (b"app]123[:", b"app]123"), (b":", b""), (b"registry.example.com/team/image:1.2.3", b"registry.example.com"),
    (b"app#011tab:", b"app#011tab"), (b"a" * 600, b"a" * 600),
]  # fmt: skip


@pytest.mark.parametrize(("tag", "expected"), PROGRAMNAMES)
def test_programname(tag: bytes, expected: bytes) -> None:
    assert programname(tag) == expected


def test_sanitize_only_one_trailing_nul_and_lf() -> None:
    assert sanitize(b"a\n\x00") == b"a"
    assert sanitize(b"a\x00\n") == b"a#000"
    assert sanitize(b"a\n\n") == b"a#012"


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_parse_never_raises(raw: bytes) -> None:
    message = parse(raw, received_at=0.0, peer=PEER)
    assert message.msg is not None


HEADERISH = st.lists(
    st.sampled_from(
        [b"Jan", b"jan", b"Feb", b"Xyz", b" ", b"  ", b"5", b"05", b"31", b"32", b"0", b"10:11:12",
         b"23:59:60", b"24:00:00", b"10:11:12.5", b"host01", b"host-", b"h.example.com", b"app:",
         b"app[1]:", b":", b"2024", b"-", b"T", b"x", b"\xff"]
    ),
    max_size=10,
).map(b"".join)  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(HEADERISH)
def test_fast_path_agrees_with_general_parser(text: bytes) -> None:
    data = b"<13>" + text
    assert parse_rfc3164(data, 4)[0:2] == _parse_general(data, 4)[0:2]
    assert parse_rfc3164(data, 4)[3] == _parse_general(data, 4)[3]
