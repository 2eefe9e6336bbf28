"""What a relay sends upstream: PLURA's `[origip=]` format, RFC 5424, raw; and the framings."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.forward.origin import origin_from_sd, origip_stamps, split_origin
from relay.forward.upstream_format import (
    frame_lf,
    frame_octet_counted,
    render,
    rfc3164_timestamp,
    stamp_frame,
)
from relay.ingest.framing import Framer
from relay.ingest.limits import SourceFilter
from relay.message import SyslogMessage
from relay.output.template import escape
from relay.parse import parse
from relay.parse.fast import RFC3164_HEADER, has_control
from relay.parse.rfc3164 import TAG_MAX_BYTES
from relay.pipeline import Pipeline
from tests.memory_sink import Lines
from tests.rsyslogd import load_corpus

AT = 1_700_000_000.25  # 2023-11-14 22:13:20 UTC
CORPUS = load_corpus()

CASES = [
    pytest.param(b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed",
                 b"<34>Oct 11 22:14:15 mymachine su: [origip=10.1.2.3] 'su root' failed", id="colon-tag"),
    pytest.param(b"<13>Oct 11 22:14:15 host app[42]: hi",
                 b"<13>Oct 11 22:14:15 host app[42]: [origip=10.1.2.3] hi", id="pid-tag"),
    pytest.param(b"<13>Oct 11 22:14:15 host app hi",
                 b"<13>Oct 11 22:14:15 host app [origip=10.1.2.3] hi", id="tag-without-colon"),
    pytest.param(b"<13>Oct 11 22:14:15 host app:hi",
                 b"<13>Oct 11 22:14:15 host app:[origip=10.1.2.3] hi", id="no-space-after-colon"),
    pytest.param(b"<165>1 2003-10-11T22:14:15.003Z mymachine evntslog 99 ID47 [x@1 a=\"b\"] An application event",
                 b"<165>Oct 11 22:14:15 mymachine evntslog[99] [origip=10.1.2.3] An application event", id="rfc5424-in"),
    pytest.param(b"<999>Jan  5 10:11:12 host01 app: bad pri",
                 b"<13>Nov 14 22:13:20 10.1.2.3 - [origip=10.1.2.3] <999>Jan  5 10:11:12 host01 app: bad pri", id="invalid-pri"),
    pytest.param(b"<30>1 2024-01-05T10:41:02+09:00 node-1 nginx:1.25/web 1012 - - GET /",
                 b"<30>Jan  5 10:41:02 node-1 nginx_1.25/web[1012] [origip=10.1.2.3] GET /", id="docker-tag-with-colon"),
    pytest.param(b"<14>1 2024-01-05T10:11:12Z 2001:db8::1 app 1 - - v6 hostname",
                 b"<14>Jan  5 10:11:12 10.1.2.3 app[1] [origip=10.1.2.3] v6 hostname", id="unrepresentable-hostname"),
]  # fmt: skip


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    import time

    time.tzset()


@pytest.mark.parametrize(("received", "wire"), CASES)
def test_rfc3164_origip(received: bytes, wire: bytes) -> None:
    message = parse(received, received_at=AT, peer="10.1.2.3")
    assert render("rfc3164-origip", message, "10.1.2.3") == wire


FIVE = [
    pytest.param(
        b"<13>Oct 11 22:14:15 host app[42]: hi",
        b'<13>1 2023-10-11T22:14:15+00:00 host app[42]: - - [origin ip="fd00::7"]  hi',
        id="3164-tag-and-space-kept",
    ),
    pytest.param(
        b"<13>Dec 31 23:59:59 host app: new year",  # received in November: this year
        b'<13>1 2023-12-31T23:59:59+00:00 host app: - - [origin ip="fd00::7"]  new year',
        id="3164-year",
    ),
    pytest.param(
        b"<13>host01 no timestamp",
        b'<13>1 2023-11-14T22:13:20.250000+00:00 host01 no - - [origin ip="fd00::7"]  timestamp',
        id="3164-no-timestamp-arrival",
    ),
    pytest.param(
        b'<165>1 2003-10-11T22:14:15.003Z h.example.com evntslog 99 ID47 [x@1 a="b"][y@2 c="d"] ev',
        b'<165>1 2003-10-11T22:14:15.003Z h.example.com evntslog 99 ID47 [origin ip="fd00::7"]'
        b'[x@1 a="b"][y@2 c="d"] ev',
        id="5424-every-field-and-sd-element",
    ),
    pytest.param(
        b"<30>1 2024-01-05T10:41:02+09:00 node-1 nginx:1.25/web 1012 - - GET /",
        b'<30>1 2024-01-05T10:41:02+09:00 node-1 nginx:1.25/web 1012 - [origin ip="fd00::7"] GET /',
        id="5424-docker-app-name",
    ),
    pytest.param(
        b'<13>1 2024-01-05T10:41:02Z h a - - [origin ip="10.0.0.9"][x@1 k="v"] relayed twice',
        b'<13>1 2024-01-05T10:41:02Z h a - - [origin ip="fd00::7"][x@1 k="v"] relayed twice',
        id="5424-this-hop-replaces-a-relays-origin",
    ),
    pytest.param(
        b"<13>1 - h a - - - nil timestamp",
        b'<13>1 - h a - - [origin ip="fd00::7"] nil timestamp',
        id="5424-nil-timestamp",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("received", "wire"), FIVE)
def test_rfc5424_keeps_the_message_and_adds_the_origin(received: bytes, wire: bytes) -> None:
    message = parse(received, received_at=AT, peer="fd00::7")
    assert render("rfc5424", message, "fd00::7") == wire
    again = parse(wire, received_at=AT, peer="192.0.2.1")
    fields = ("pri", "hostname", "syslogtag", "programname", "msg")
    assert [getattr(again, f) for f in fields] == [getattr(message, f) for f in fields]
    assert origin_from_sd(wire) == ("fd00::7", False)


def test_raw_is_the_frame_as_received() -> None:
    frame = b"<13>anything \x01 at all"
    assert render("raw", parse(frame, received_at=AT, peer="10.0.0.1"), "10.0.0.1") == frame


@pytest.mark.parametrize(
    ("received", "expected"),
    [
        (b"Oct  1 22:14:15", b"Oct  1 22:14:15"),
        (b"2003-10-01T22:14:15.003+02:00", b"Oct  1 22:14:15"),
        (b"", b"Nov 14 22:13:20"),
        (b"-", b"Nov 14 22:13:20"),
    ],
)
def test_rfc3164_timestamp(received: bytes, expected: bytes) -> None:
    assert rfc3164_timestamp(received, AT) == expected


def _representable(message_host: bytes, tag: bytes, pri: int) -> bool:
    """What RFC 3164 can carry: a valid PRI, a hostname a 3164 parser reads as one, a tag
    with no `:` before its end (RFC 5424 APP-NAMEs may have one: docker's `image:tag`)."""
    return (
        pri >= 0
        and re.fullmatch(rb"[A-Za-z0-9._-]*[A-Za-z0-9]", message_host) is not None
        and b":" not in tag[:-1]
    )


@pytest.mark.parametrize("item", CORPUS, ids=[m.id for m in CORPUS])
def test_a_collector_reads_back_the_origin_and_the_message(item) -> None:  # type: ignore[no-untyped-def]
    """Every real-world message through the relay hop and a collector's parser: the origin is
    recovered from every one; the fields are the same wherever RFC 3164 can carry them."""
    sent = parse(item.raw, received_at=AT, peer="10.1.2.3")
    wire = render("rfc3164-origip", sent, "10.1.2.3")
    got = parse(wire, received_at=AT, peer="192.0.2.1")
    origin, msg, invalid = split_origin(got.msg)
    assert (origin, invalid) == ("10.1.2.3", False)
    if _representable(sent.hostname, sent.syslogtag, sent.pri):
        assert (got.pri, got.hostname) == (sent.pri, sent.hostname)
        # no tag at all goes as `-` (else the stamp would be read as the tag)
        assert (got.syslogtag, got.programname) == (
            (sent.syslogtag, sent.programname) if sent.syslogtag else (b"-", b"-")
        )
        assert msg in (sent.msg, b" " + sent.msg)


def test_how_many_corpus_messages_are_representable() -> None:
    parsed = [parse(m.raw, received_at=AT, peer="10.1.2.3") for m in CORPUS]
    ok = [p for p in parsed if _representable(p.hostname, p.syslogtag, p.pri)]
    assert len(ok) / len(parsed) > 0.95, (len(ok), len(parsed))


def _fast_path(raw: bytes) -> re.Match[bytes] | None:
    """The pipeline's fast-path condition (an empty tag takes the general path as well)."""
    match = RFC3164_HEADER.match(raw)
    if match is None or len(match[4]) > TAG_MAX_BYTES or has_control(raw) or not match[4]:
        return None
    return match


FAST = [m for m in CORPUS if _fast_path(m.raw)]


def test_the_corpus_has_fast_path_frames() -> None:
    assert len(FAST) > 100


@pytest.mark.parametrize("item", FAST, ids=[m.id for m in FAST])
def test_fast_path_stamp_equals_the_general_render(item) -> None:  # type: ignore[no-untyped-def]
    match = _fast_path(item.raw)
    assert match is not None
    general = render("rfc3164-origip", parse(item.raw, received_at=AT, peer="10.9.8.7"), "10.9.8.7")
    stamps = origip_stamps("10.9.8.7")
    assert stamp_frame(item.raw, match.end(), match[4], stamps) == general


@pytest.mark.parametrize("framing", [frame_octet_counted, frame_lf])
def test_framings_are_read_back_by_our_framer(framing) -> None:  # type: ignore[no-untyped-def]
    payloads = [b"<13>Jan  1 00:00:00 h a: one", b"<13>Jan  1 00:00:00 h a: two words", b"x" * 5000]
    assert Framer(max_msg_bytes=8096).feed(framing(payloads)) == payloads


def test_lf_framing_keeps_a_newline_from_splitting_the_message() -> None:
    assert frame_lf([b"a\nb"]) == b"a b\n"


@settings(max_examples=500, deadline=None)
@given(
    frame=st.one_of(
        st.binary(min_size=1, max_size=300),
        st.builds(
            lambda pri, host, tag, msg: b"<%d>Jan  5 10:11:12 %s %s%s" % (pri, host, tag, msg),
            st.integers(0, 200),
            st.binary(max_size=20),
            st.binary(max_size=40),
            st.binary(max_size=60),
        ),
    ),
    peer=st.sampled_from(["10.1.2.3", "fd00::7", "192.0.2.200"]),
)
def test_any_message_keeps_its_origin_through_the_hop(frame: bytes, peer: str) -> None:
    """Whatever a sender sends, the collector finds the relay's stamp (never raises either)."""
    for fmt in ("rfc3164-origip", "rfc5424", "raw"):
        wire = render(fmt, parse(frame, received_at=AT, peer=peer), peer)
        assert b"\n" not in wire or fmt == "raw"
    got = parse(render("rfc3164-origip", parse(frame, received_at=AT, peer=peer), peer),
                received_at=AT, peer="192.0.2.1")  # fmt: skip
    assert split_origin(got.msg)[:1] == (peer,)
    five = render("rfc5424", parse(frame, received_at=AT, peer=peer), peer)
    assert origin_from_sd(five) == (peer, False)


RELAY, COLLECTOR_MAX = "192.0.2.1", 16384  # a collector behind relays allows longer messages


def _five_representable(message: SyslogMessage) -> bool:
    """What `rfc5424` cannot carry: an invalid PRI (sent as user.notice: rsyslog would parse
    nothing, the origin included)."""
    return message.pri >= 0


@pytest.mark.parametrize("item", CORPUS, ids=[m.id for m in CORPUS])
def test_rfc5424_relayed_gives_the_direct_ceelog_line(item) -> None:  # type: ignore[no-untyped-def]
    """The whole corpus through a relay's `rfc5424` format to a plura-relay collector trusting
    the relay: the collector writes the line a direct delivery gives, in the sender's file."""
    direct, collector = Lines(), Lines()
    Pipeline(direct).handle(item.raw, "10.1.2.3", AT)
    sent = parse(item.raw, received_at=AT, peer="10.1.2.3")
    wire = render("rfc5424", sent, "10.1.2.3")
    Pipeline(
        collector, trusted_relays=SourceFilter([RELAY + "/32"]), max_message_bytes=COLLECTOR_MAX
    ).handle(wire, RELAY, AT)
    assert list(collector.files) == ["ceelog-10.1.2.3.log"]
    if not _five_representable(sent):
        return
    if sent.syslogtag:
        assert collector.files == direct.files
    else:  # no tag: an empty APP-NAME reads back as `-`, the rest is the same
        [[got]], [[expected]] = collector.files.values(), direct.files.values()
        tagless = b'"programname":"-", "hostname":"%s", "syslogtag":"-"' % escape(sent.hostname)
        assert got == expected.replace(
            b'"programname":"", "hostname":"%s", "syslogtag":""' % escape(sent.hostname), tagless
        )


def test_most_corpus_messages_are_representable_in_rfc5424() -> None:
    parsed = [parse(m.raw, received_at=AT, peer="10.1.2.3") for m in CORPUS]
    ok = [p for p in parsed if _five_representable(p)]
    assert len(ok) / len(parsed) > 0.95, (len(ok), len(parsed))
