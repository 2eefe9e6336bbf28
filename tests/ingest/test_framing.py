"""TCP framing (RSYSLOG-BEHAVIOUR.md section 1) and the UDP size rule.

The expected frames for the default ("rsyslog"-identical) cases and for oversize="rsyslog" were
checked against a real rsyslogd 8.2302 (imtcp defaults) by sending each stream over TCP and
reading back its records' rawmsg.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.ingest.framing import MAX_MSG_BYTES, Framer, truncate_datagram

M = MAX_MSG_BYTES
MODES = ("truncate", "split", "rsyslog")
HELLO = b"5 hello"  # an octet-counted frame after the case: framing must be back in sync


def payload(n: int) -> bytes:
    """n printable bytes, starting with a PRI, where every cut position is visible."""
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return (b"<13>" + alphabet * (n // len(alphabet) + 1))[:n]


def run(chunks: Iterable[bytes], **kwargs: object) -> tuple[list[bytes], Framer]:
    framer = Framer(**kwargs)  # type: ignore[arg-type]
    frames = [frame for chunk in chunks for frame in framer.feed(chunk)]
    return frames + framer.close(), framer


def pieces(stream: bytes, size: int) -> list[bytes]:
    return [stream[i : i + size] for i in range(0, len(stream), size)]


# -- section 1: frames whatever the oversize mode ------------------------------------------------

JAN = b"<13>Jan  5 10:11:12 host01 app: "
CASES = [
    pytest.param(b"<13>a\n<13>b\n", [b"<13>a", b"<13>b"], id="lf"),
    pytest.param(
        b"<14>Jan  5 10:11:12 host01 app: line1\nline2 (embedded LF)",
        [b"<14>Jan  5 10:11:12 host01 app: line1", b"line2 (embedded LF)"],
        id="lf-embedded-lf-and-unterminated-at-close",
    ),
    pytest.param(JAN + b"ends with CRLF\r\n", [JAN + b"ends with CRLF\r"], id="crlf"),
    pytest.param(b"<13>a\rb\r\r\n", [b"<13>a\rb\r\r"], id="cr-is-data"),
    pytest.param(
        b"<13>a\x00<13>b\n<13>c\x00\n", [b"<13>a\x00<13>b", b"<13>c\x00"], id="nul-is-data"
    ),
    pytest.param(b"\n", [], id="lone-lf"),
    pytest.param(b"\n\n<13>a\n\n\n", [b"<13>a"], id="empty-frames-dropped"),
    pytest.param(b" <13>a\n", [b" <13>a"], id="leading-space-kept"),
    pytest.param(
        b"1 2024-01-05T10:11:12Z host01 app - - - no PRI, 5424 otherwise",
        [b"2", b"01-05T10:11:12Z host01 a", b"pp - - - no PRI, 5424 otherwise"],
        id="digit-first-5424-without-pri",
    ),
    pytest.param(
        b"0 " + JAN + b"zero octet count", [JAN + b"zero octet count"], id="count-0-then-lf-mode"
    ),
    pytest.param(b"0\nabc\n" + HELLO, [b"abc", b"hello"], id="count-0-lf-delimiter-consumed"),
    pytest.param(b"000 abc\n" + HELLO, [b"abc", b"hello"], id="count-000"),
    pytest.param(b"0005 hello" + HELLO, [b"hello", b"hello"], id="count-leading-zeros"),
    pytest.param(b"0" * 9000 + b"5 hello" + HELLO, [b"hello", b"hello"], id="count-9000-zeros"),
    pytest.param(
        b"300000 " + JAN + b"x\n" + HELLO,
        [b"300000" + JAN + b"x", b"hello"],
        id="count-too-large-kept-as-text",
    ),
    pytest.param(b"300000\nfoo\n" + HELLO, [b"300000foo", b"hello"], id="count-too-large-eats-lf"),
    pytest.param(b"300000 foo", [b"300000foo"], id="count-too-large-unterminated"),
    pytest.param(b"99999999999 x\n" + HELLO, [b"99999999999x", b"hello"], id="count-huge"),
    pytest.param(
        b"42abc " + JAN + b"this is a longer message here\n",
        [b"bc " + JAN + b"this is", b" a longer message here"],
        id="count-42-delimiter-a",
    ),
    pytest.param(b"5xhello5\nworld", [b"hello", b"world"], id="count-non-sp-delimiters"),
    pytest.param(b"9999 " + JAN + b"incomplete", [], id="incomplete-9999-at-close"),
    pytest.param(b"16 <1>1", [], id="incomplete-16-at-close"),
    pytest.param(b"123", [], id="only-digits-at-close"),
    pytest.param(b"11 <13>ab\ncd\nX\n" + HELLO, [b"<13>ab\ncd\nX", b"hello"], id="octet-with-lf"),
    pytest.param(b"5 abcd\n" + HELLO, [b"abcd\n", b"hello"], id="octet-trailing-lf-is-data"),
    pytest.param(b"1 \n", [b"\n"], id="octet-just-lf"),
    pytest.param(b"5 hello5 world\n5 again", [b"hello", b"world", b"again"], id="octet-in-a-row"),
    pytest.param(b"3 abc\n\n3 def", [b"abc", b"def"], id="octet-then-empty-lf-frames"),
    pytest.param(b"<13>a\n7 <13>bcd\n", [b"<13>a", b"<13>bcd"], id="lf-then-octet"),
    pytest.param(b"<13>abc\n\n" + HELLO, [b"<13>abc", b"hello"], id="empty-lf-then-octet"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stream, expected", CASES)
def test_frames(stream: bytes, expected: list[bytes], mode: str) -> None:
    assert run([stream], oversize=mode)[0] == expected


@pytest.mark.parametrize("stream, expected", CASES)
def test_frames_split_at_every_offset(stream: bytes, expected: list[bytes]) -> None:
    for cut in range(1, len(stream)):
        assert run([stream[:cut], stream[cut:]])[0] == expected, f"cut at {cut}"
    assert run(pieces(stream, 1))[0] == expected


def test_max_frame_bytes_boundary() -> None:
    assert run([b"10 0123456789"], max_frame_bytes=10)[0] == [b"0123456789"]
    assert run([b"11 0123456789a\n"], max_frame_bytes=10)[0] == [b"110123456789a"]


# -- oversize ------------------------------------------------------------------------------------


def cuts(n: int, mode: str) -> list[tuple[int, int]]:
    """Where the messages of an n-byte oversize frame come from, per mode."""
    if mode == "truncate":
        return [(0, M)]
    step = M + 1 if mode == "rsyslog" else M  # rsyslog drops the byte that did not fit
    return [(start, min(start + M, n)) for start in range(0, n, step) if start < n]


def lf_stream(n: int) -> bytes:
    return payload(n) + b"\n" + HELLO


def octet_stream(n: int) -> bytes:
    return b"%d %s%s" % (n, payload(n), HELLO)


OVERSIZE = [
    pytest.param(kind, n, mode, id=f"{kind.__name__[:-7]}-{n}-{mode}")
    for kind in (lf_stream, octet_stream)
    for n in (M + 1, 8192, 64 * 1024)
    for mode in MODES
]


@pytest.mark.parametrize("make, n, mode", OVERSIZE)
def test_oversize(make: object, n: int, mode: str) -> None:
    stream = make(n)  # type: ignore[operator]
    body = payload(n)
    expected = [body[a:b] for a, b in cuts(n, mode)] + [b"hello"]
    frames, framer = run([stream], oversize=mode)
    assert [len(f) for f in frames] == [len(f) for f in expected]
    assert frames == expected
    assert framer.truncated == 1
    delivered = sum(b - a for a, b in cuts(n, mode))
    assert framer.discarded_bytes == n - delivered
    assert framer.buffered_bytes == 0


def test_oversize_rsyslog_record_counts() -> None:
    # what rsyslogd itself produced (doc 1.6): 8097 -> 1 record, 8192 -> 2, 64 KiB -> 9
    for n, records in ((M + 1, 1), (8192, 2), (64 * 1024, 9)):
        assert len(run([payload(n) + b"\n"], oversize="rsyslog")[0]) == records


@pytest.mark.parametrize("make, n, mode", [p for p in OVERSIZE if p.values[1] != 64 * 1024])
def test_oversize_split_anywhere(make: object, n: int, mode: str) -> None:
    stream = make(n)  # type: ignore[operator]
    expected = run([stream], oversize=mode)[0]
    for cut in (1, 5, M - 1, M, M + 1, M + 2, M + 5, M + 6, n - 1, n, n + 1, n + 5):
        assert run([stream[:cut], stream[cut:]], oversize=mode)[0] == expected, f"cut at {cut}"
    assert run(pieces(stream, 1), oversize=mode)[0] == expected
    assert run(pieces(stream, 997), oversize=mode)[0] == expected


EDGES = [
    pytest.param(payload(M) + b"\n" + HELLO, [payload(M), b"hello"], [], id="lf-exactly-max"),
    pytest.param(payload(M), [payload(M)], [], id="lf-exactly-max-at-close"),
    pytest.param(b"%d %s" % (M, payload(M)) + HELLO, [payload(M), b"hello"], [], id="octet-max"),
    # The byte after a full buffer decides; a frame going on after a cut is not digit-detected.
    pytest.param(
        payload(M) + b"5 hello\n" + HELLO,
        [payload(M), b"hello"],
        [b" hello", b"5 hello"],
        id="lf-cut-before-digit",
    ),
    pytest.param(
        b"8110 " + payload(M) + b"X5 hello world" + HELLO,
        [payload(M), b"hello"],
        [b"5 hello world", b"X5 hello world"],
        id="octet-cut-before-digit",
    ),
    # rsyslog submits a full buffer only when one more byte of the frame arrives
    pytest.param(b"8200 " + payload(M), [], [], id="octet-full-then-close"),
    pytest.param(b"8200 " + payload(M + 1), [payload(M)], [], id="octet-full-plus-1-then-close"),
    pytest.param(
        payload(M + 2), [payload(M)], [payload(M + 2)[M + 1 :], payload(M + 2)[M:]], id="lf-close"
    ),
    pytest.param(
        b"1" * 9000 + b" abc\n" + HELLO,
        [b"1" * M, b"hello"],
        [b"bc", b"abc"],
        id="count-digits-past-max-msg",
    ),
]


@pytest.mark.parametrize("stream, truncated, middles", EDGES)
@pytest.mark.parametrize("mode", MODES)
def test_oversize_edges(
    stream: bytes, truncated: list[bytes], middles: list[bytes], mode: str
) -> None:
    """`truncated` is the truncate-mode result; rsyslog/split insert middles[0]/[1] after frame 0."""
    expected = list(truncated)
    if middles and mode != "truncate":
        expected.insert(1, middles[0] if mode == "rsyslog" else middles[1])
    assert run([stream], oversize=mode)[0] == expected
    assert run(pieces(stream, 1000), oversize=mode)[0] == expected


# -- counters ------------------------------------------------------------------------------------

COUNTERS = [
    # stream, kwargs, (truncated, discarded_bytes, framing_errors, incomplete_at_close)
    pytest.param(b"<13>a\n5 hello", {}, (0, 0, 0, 0), id="clean"),
    pytest.param(b"5xhello", {}, (0, 0, 1, 0), id="non-sp-delimiter"),
    pytest.param(b"0 abc\n", {}, (0, 0, 1, 0), id="count-0"),
    pytest.param(b"0xabc\n", {}, (0, 0, 2, 0), id="count-0-non-sp"),
    pytest.param(b"300000 abc\n", {}, (0, 0, 1, 0), id="count-too-large"),
    pytest.param(b"9999 abc", {}, (0, 3, 0, 1), id="incomplete-octet"),
    pytest.param(b"123", {}, (0, 3, 0, 1), id="incomplete-count"),
    pytest.param(payload(8192) + b"\n", {}, (1, 96, 0, 0), id="truncate-lf"),
    pytest.param(payload(8192) + b"\n", {"oversize": "rsyslog"}, (1, 1, 0, 0), id="rsyslog-lf"),
    pytest.param(payload(8192) + b"\n", {"oversize": "split"}, (1, 0, 0, 0), id="split-lf"),
    pytest.param(b"9000 " + payload(8500), {}, (1, 404, 0, 1), id="truncate-octet-incomplete"),
    pytest.param(b"1" * 9000 + b" a\n", {}, (1, 905, 1, 0), id="digits-past-max-msg"),
    pytest.param(b"abcdefgh\nijklm", {"max_msg_bytes": 4}, (2, 5, 0, 0), id="two-truncated"),
]


@pytest.mark.parametrize("stream, kwargs, counters", COUNTERS)
def test_counters(stream: bytes, kwargs: dict[str, object], counters: tuple[int, ...]) -> None:
    framer = run([stream], **kwargs)[1]
    got = (
        framer.truncated,
        framer.discarded_bytes,
        framer.framing_errors,
        framer.incomplete_at_close,
    )
    assert got == counters


BUFFERED = [
    pytest.param([b"<13>abc"], 7, id="lf-partial"),
    pytest.param([b"12"], 2, id="count-digits"),
    pytest.param([b"5 he"], 2, id="octet-partial"),
    pytest.param([b"<13>abc\n"], 0, id="at-boundary"),
    pytest.param([payload(M + 5)], 0, id="truncate-skipping"),
    pytest.param([payload(M), payload(100)], 0, id="truncate-skipping-after-full"),
    pytest.param([b"9000 " + payload(8500)], 0, id="truncate-skipping-octet"),
]


@pytest.mark.parametrize("chunks, buffered", BUFFERED)
def test_buffered_bytes(chunks: list[bytes], buffered: int) -> None:
    framer = Framer()
    for chunk in chunks:
        framer.feed(chunk)
    assert framer.buffered_bytes == buffered
    framer.close()
    assert framer.buffered_bytes == 0


def test_rejects_unknown_oversize_mode() -> None:
    with pytest.raises(ValueError, match="oversize"):
        Framer(oversize="drop")


@pytest.mark.parametrize(
    "data, limit, expected",
    [
        pytest.param(b"", M, b"", id="empty"),
        pytest.param(b"<13>a\n", M, b"<13>a\n", id="short-untouched"),
        pytest.param(payload(M + 1), M, payload(M), id="8097-bytes"),
        pytest.param("한국어".encode(), 4, "한".encode() + b"\xea", id="cuts-inside-utf8"),
    ],
)
def test_truncate_datagram(data: bytes, limit: int, expected: bytes) -> None:
    assert truncate_datagram(data, limit) == expected


# -- properties ----------------------------------------------------------------------------------


def reference(
    stream: bytes, *, max_msg: int, max_frame: int, oversize: str, extra: int = 0x0A
) -> list[bytes]:
    """Byte-at-a-time port of imtcp's processDataRcvd + PrepareClose (8.2302), plus our modes.

    `extra`: imtcp's AddtlFrameDelimiter (the default, LF, is the same as none)."""
    out: list[bytes] = []
    msg = bytearray()
    state, octet, count = "start", False, 0
    for c in stream:
        if state == "start":
            state, octet, count = ("count", True, 0) if 0x30 <= c <= 0x39 else ("msg", False, 0)
        if state == "count":
            if 0x30 <= c <= 0x39:
                count = count * 10 + c - 0x30 if count <= 200_000_000 else count
                if len(msg) < max_msg:
                    msg.append(c)
                continue
            octet = 0 < count <= max_frame
            if count <= max_frame:
                msg.clear()
            state = "msg"
            continue
        if state == "skip":  # truncate mode, rest of an oversize frame
            count -= 1
            if (octet and count == 0) or (not octet and c in (0x0A, extra)):
                state = "start"
            continue
        if not octet and c in (0x0A, extra):
            if msg:
                out.append(bytes(msg))
            msg.clear()
            state = "start"
            continue
        if len(msg) >= max_msg:
            out.append(bytes(msg))
            msg.clear()
            if oversize != "split":  # rsyslog drops this byte; truncate drops the rest
                state = "skip" if oversize == "truncate" else "msg"
                count -= 1
                if octet and count == 0:
                    state = "start"
                continue
        msg.append(c)
        if octet:
            count -= 1
            if count == 0:
                out.append(bytes(msg))
                msg.clear()
                state = "start"
    if state == "msg" and not octet and msg:
        out.append(bytes(msg))
    return out


TOKENS = st.sampled_from([b"\n", b"\n", b" ", b" ", b"0", b"1", b"3", b"9", b"a", b"<", b"\x00"])


@settings(max_examples=400, deadline=None)
@given(
    tokens=st.lists(TOKENS, max_size=80),
    cut_points=st.lists(st.integers(0, 80), max_size=4),
    max_msg=st.integers(1, 10),
    max_frame=st.integers(0, 25),
    mode=st.sampled_from(MODES),
)
def test_matches_byte_at_a_time_reference(
    tokens: list[bytes], cut_points: list[int], max_msg: int, max_frame: int, mode: str
) -> None:
    stream = b"".join(tokens)
    bounds = sorted({0, len(stream), *(min(c, len(stream)) for c in cut_points)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    frames, framer = run(chunks, max_msg_bytes=max_msg, max_frame_bytes=max_frame, oversize=mode)
    assert frames == reference(stream, max_msg=max_msg, max_frame=max_frame, oversize=mode)
    assert framer.buffered_bytes == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b"ab\n12345678901 x\n3 abc0\nabcdefghijklmnop\n\n0 q", id="mixed"),
        pytest.param(b"40 " + b"x" * 40 + b"abcdefghijklmnopqrst", id="octet-oversize"),
        pytest.param(b"9" * 30 + b" " + b"y" * 20 + b"\n7 abc", id="digits-oversize"),
    ],
)
def test_small_limits_split_at_every_offset(stream: bytes, mode: str) -> None:
    kwargs: dict[str, object] = {"max_msg_bytes": 8, "max_frame_bytes": 30, "oversize": mode}
    expected = run([stream], **kwargs)[0]
    assert expected == reference(stream, max_msg=8, max_frame=30, oversize=mode)
    for cut in range(1, len(stream)):
        assert run([stream[:cut], stream[cut:]], **kwargs)[0] == expected, f"cut at {cut}"
    assert run(pieces(stream, 1), **kwargs)[0] == expected


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), max_msg=st.integers(1, 40), mode=st.sampled_from(MODES))
def test_never_raises_on_arbitrary_bytes(data: bytes, max_msg: int, mode: str) -> None:
    framer = Framer(max_msg_bytes=max_msg, max_frame_bytes=100, oversize=mode)
    frames = framer.feed(data)
    assert framer.buffered_bytes <= max_msg
    frames += framer.feed(data[::-1]) + framer.close()
    assert all(isinstance(frame, bytes) and frame for frame in frames)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), max_msg=st.integers(1, 40))
def test_truncate_never_exceeds_max_msg_bytes(data: bytes, max_msg: int) -> None:
    framer = Framer(max_msg_bytes=max_msg, max_frame_bytes=1000)
    frames = framer.feed(data) + framer.close()
    assert all(len(frame) <= max_msg for frame in frames)
    assert framer.buffered_bytes == 0


# -- listen.extra_frame_delimiter (imtcp's AddtlFrameDelimiter) ----------------------------------


@settings(max_examples=400, deadline=None)
@given(
    tokens=st.lists(TOKENS, max_size=80),
    cut_points=st.lists(st.integers(0, 80), max_size=4),
    max_msg=st.integers(1, 10),
    mode=st.sampled_from(MODES),
    extra=st.sampled_from([0x00, 0x20, ord("a")]),
)
def test_extra_delimiter_matches_byte_at_a_time_reference(
    tokens: list[bytes], cut_points: list[int], max_msg: int, mode: str, extra: int
) -> None:
    stream = b"".join(tokens)
    bounds = sorted({0, len(stream), *(min(c, len(stream)) for c in cut_points)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    kwargs: dict[str, object] = {"max_msg_bytes": max_msg, "max_frame_bytes": 25}
    frames, framer = run(chunks, oversize=mode, extra_delimiter=extra, **kwargs)
    assert frames == reference(stream, max_msg=max_msg, max_frame=25, oversize=mode, extra=extra)
    assert framer.buffered_bytes == 0


PYTHON_RECORDS = b"<14>app: one\x00<11>app: two\x0014 <13>octet\x00 NUL\x00<14>app: three\n\x00"


def test_nul_delimiter_ends_python_sysloghandler_records() -> None:
    """Python's SysLogHandler over TCP: `<PRI>message` + NUL, no LF. An octet-counted frame
    keeps its NUL; empty frames (NUL after LF) are dropped."""
    expected = [b"<14>app: one", b"<11>app: two", b"<13>octet\x00 NUL", b"<14>app: three"]
    assert run([PYTHON_RECORDS], extra_delimiter=0)[0] == expected
    for cut in range(1, len(PYTHON_RECORDS)):
        chunks = [PYTHON_RECORDS[:cut], PYTHON_RECORDS[cut:]]
        assert run(chunks, extra_delimiter=0)[0] == expected, f"cut at {cut}"
    # off by default: NUL is data, the records run together up to the LF
    assert run([PYTHON_RECORDS])[0] == [PYTHON_RECORDS[:-2], b"\x00"]
