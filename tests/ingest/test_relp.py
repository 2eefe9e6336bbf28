"""RELP protocol layer (relay.ingest.relp): frames split anywhere, bad input, the server session.

The wire forms follow librelp's src/relpframe.c, copen.c, cclose.c and offers.c; what rsyslog's
omrelp actually sends is checked end to end in tests/integration/test_relp.py.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.ingest.relp import (
    MAX_TXNR,
    RelpDecoder,
    RelpError,
    RelpFrame,
    ServerSession,
    answer_offers,
    encode,
    error,
    next_txnr,
    ok,
    open_offer,
    open_response,
    parse_offers,
    parse_rsp,
    serverclose,
)

# what rsyslog 8.2302's omrelp (librelp 1.11) sends as its open
OMRELP_OPEN = (
    b"1 open 86 relp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\n"
    b"commands=syslog\n"
)

STREAM_FRAMES = [
    RelpFrame(1, b"open", b"relp_version=0\ncommands=syslog"),
    RelpFrame(2, b"syslog", b"<13>Jan  5 10:11:12 host app: one"),
    RelpFrame(3, b"syslog", b"line1\nline2\n"),  # LF inside data is data
    RelpFrame(4, b"syslog", b""),  # zero-length data: `4 syslog 0` LF
    RelpFrame(5, b"syslog", b"\n"),
    RelpFrame(6, b"syslog", b"7 syslog 1 x\n"),  # a frame inside data is data
    RelpFrame(7, b"close", b""),
]
STREAM = b"".join(encode(f.txnr, f.command, f.data) for f in STREAM_FRAMES)


def decode_all(chunks: list[bytes], max_data_bytes: int = 1024) -> list[RelpFrame]:
    decoder = RelpDecoder(max_data_bytes)
    frames = [frame for chunk in chunks for frame in decoder.feed(chunk)]
    assert not decoder.in_frame
    return frames


def test_omrelp_open_is_one_frame() -> None:
    (frame,) = RelpDecoder().feed(OMRELP_OPEN)
    assert frame.txnr == 1 and frame.command == b"open"
    assert parse_offers(frame.data) == {
        "relp_version": ["0"],
        "relp_software": ["librelp", "1.11.0", "http://librelp.adiscon.com"],
        "commands": ["syslog"],
    }


def test_whole_stream() -> None:
    assert decode_all([STREAM]) == STREAM_FRAMES


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_every_split_point(cut: int) -> None:
    assert decode_all([STREAM[:cut], STREAM[cut:]]) == STREAM_FRAMES


def test_every_two_split_points_of_one_frame() -> None:
    frame = encode(12, b"syslog", b"<13>a b\nc")
    for i in range(1, len(frame)):
        for j in range(i, len(frame)):
            parts = [frame[:i], frame[i:j], frame[j:]]
            assert decode_all(parts) == [RelpFrame(12, b"syslog", b"<13>a b\nc")]


def test_byte_by_byte() -> None:
    assert decode_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == STREAM_FRAMES


def test_leading_zeros_are_read_as_librelp_does() -> None:
    assert decode_all([b"0001 syslog 002 ab\n"]) == [RelpFrame(1, b"syslog", b"ab")]


def test_largest_fields() -> None:
    command = b"a" * 32
    frames = decode_all([b"999999999 " + command + b" 000000003 abc\n"])
    assert frames == [RelpFrame(MAX_TXNR, command, b"abc")]


def test_data_at_the_maximum() -> None:
    assert decode_all([encode(1, b"syslog", b"x" * 1024)]) == [RelpFrame(1, b"syslog", b"x" * 1024)]


BAD = [
    pytest.param(b"x", "expecting TXNR digits", id="txnr-not-digit"),
    pytest.param(b" 1 syslog 0\n", "got SP", id="txnr-missing"),
    pytest.param(b"-1 syslog 0\n", "expecting TXNR digits", id="txnr-negative"),
    pytest.param(b"1x syslog 0\n", "expecting TXNR digits", id="txnr-letter"),
    pytest.param(b"1234567890 syslog 0\n", "TXNR longer than 9", id="txnr-10-digits"),
    pytest.param(b"12345678901", "TXNR longer than 9", id="txnr-10-digits-unterminated"),
    pytest.param(b"\n", "expecting TXNR digits", id="lone-lf"),
    pytest.param(b"1  0\n", "expecting COMMAND letters", id="command-empty"),
    pytest.param(b"1 sys-log 0\n", "expecting COMMAND letters", id="command-dash"),
    pytest.param(b"1 sys1og 0\n", "expecting COMMAND letters", id="command-digit"),
    pytest.param(b"1 syslog\n", "expecting COMMAND letters", id="command-lf"),
    pytest.param(b"1 " + b"a" * 33 + b" 0\n", "COMMAND longer than 32", id="command-33"),
    pytest.param("1 sýslog 0\n".encode(), "expecting COMMAND letters", id="command-non-ascii"),
    pytest.param(b"1 syslog x\n", "expecting DATALEN digits", id="datalen-letter"),
    pytest.param(b"1 syslog  x\n", "expecting DATALEN digits", id="datalen-missing"),
    pytest.param(b"1 syslog 1x", "expecting SP or LF after DATALEN", id="datalen-junk"),
    pytest.param(b"1 syslog -1 x\n", "expecting DATALEN digits", id="datalen-negative"),
    pytest.param(b"1 syslog 1234567890 x", "DATALEN longer than 9", id="datalen-10-digits"),
    pytest.param(b"1 syslog 1025 ", "over the maximum of 1024", id="oversize"),
    pytest.param(b"1 syslog 999999999 ", "over the maximum", id="oversize-largest"),
    pytest.param(b"1 syslog 0 \n", "expecting LF after DATALEN 0", id="zero-datalen-then-sp"),
    pytest.param(b"1 syslog 3\nabc\n", "expecting SP and 3 bytes", id="datalen-then-lf"),
    pytest.param(b"1 syslog 3 abcd\n", "expecting LF trailer", id="data-longer"),
    pytest.param(b"1 syslog 3 ab\nX", "expecting LF trailer", id="lf-in-data-then-junk"),
    pytest.param(b"1 syslog 3 abc\r\n", "expecting LF trailer", id="crlf-trailer"),
    pytest.param(b"<13>Jan  5 10:11:12 host app: hi\n", "expecting TXNR", id="plain-syslog"),
    pytest.param(b"17 <13>Jan  5 host app: hi", "expecting COMMAND", id="octet-counted-syslog"),
]


@pytest.mark.parametrize("raw, reason", BAD)
def test_bad_input_raises_relp_error(raw: bytes, reason: str) -> None:
    with pytest.raises(RelpError, match=reason):
        RelpDecoder(1024).feed(raw)


@pytest.mark.parametrize("raw, reason", BAD)
def test_bad_input_raises_byte_by_byte(raw: bytes, reason: str) -> None:
    decoder = RelpDecoder(1024)
    with pytest.raises(RelpError, match=reason):
        for i in range(len(raw)):
            decoder.feed(raw[i : i + 1])


def test_error_keeps_the_frames_before_it_and_sticks() -> None:
    decoder = RelpDecoder()
    with pytest.raises(RelpError) as caught:
        decoder.feed(encode(1, b"syslog", b"a") + encode(2, b"syslog", b"b") + b"junk\n")
    assert caught.value.frames == [RelpFrame(1, b"syslog", b"a"), RelpFrame(2, b"syslog", b"b")]
    with pytest.raises(RelpError, match="expecting TXNR"):
        decoder.feed(encode(3, b"syslog", b"c"))


def test_oversize_is_refused_before_the_data_arrives() -> None:
    decoder = RelpDecoder(10)
    with pytest.raises(RelpError, match="DATALEN 11 over the maximum of 10"):
        decoder.feed(b"1 syslog 11 ")


def test_long_frame_in_small_pieces_is_held_not_parsed_again() -> None:
    frame = encode(1, b"syslog", b"y" * 100_000)
    decoder = RelpDecoder(100_000)
    frames = [f for i in range(0, len(frame), 1000) for f in decoder.feed(frame[i : i + 1000])]
    assert frames == [RelpFrame(1, b"syslog", b"y" * 100_000)]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_no_input_raises_anything_but_relp_error(data: bytes, cuts: list[int]) -> None:
    decoder = RelpDecoder(64)
    points = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    try:
        for a, b in itertools.pairwise(points):
            decoder.feed(data[a:b])
    except RelpError:
        pass


FRAME_PART = st.sampled_from(
    [b"1", b"12", b" ", b"syslog", b"open", b"0", b"3", b"\n", b"abc", b"999999999", b"x"]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(FRAME_PART, max_size=20), st.integers(1, 10))
def test_near_frames_never_raise_anything_but_relp_error(parts: list[bytes], step: int) -> None:
    data = b"".join(parts)
    decoder = RelpDecoder(8)
    try:
        for i in range(0, len(data), step):
            decoder.feed(data[i : i + step])
    except RelpError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, MAX_TXNR), st.sampled_from([b"syslog", b"rsp"]), st.binary()),
        max_size=8,
    ),
    st.integers(1, 50),
)
def test_round_trip(frames: list[tuple[int, bytes, bytes]], step: int) -> None:
    data = b"".join(encode(*frame) for frame in frames)
    decoder = RelpDecoder(1 << 20)
    got = [f for i in range(0, len(data), step) for f in decoder.feed(data[i : i + step])]
    assert got == [RelpFrame(*frame) for frame in frames]


# -- encoding and helpers -----------------------------------------------------------------------


ENCODED = [
    pytest.param(1, b"syslog", b"hi", b"1 syslog 2 hi\n", id="data"),
    pytest.param(3, b"close", b"", b"3 close 0\n", id="no-data"),
    pytest.param(MAX_TXNR, b"rsp", b"200 OK", b"999999999 rsp 6 200 OK\n", id="largest-txnr"),
]


@pytest.mark.parametrize("txnr, command, data, wire", ENCODED)
def test_encode(txnr: int, command: bytes, data: bytes, wire: bytes) -> None:
    assert encode(txnr, command, data) == wire


@pytest.mark.parametrize(
    "txnr, command",
    [(-1, b"rsp"), (MAX_TXNR + 1, b"rsp"), (1, b""), (1, b"sys log"), (1, b"a" * 33), (1, b"1")],
)
def test_encode_refuses_what_librelp_would_not_read(txnr: int, command: bytes) -> None:
    with pytest.raises(ValueError):
        encode(txnr, command, b"")


def test_server_replies() -> None:
    assert ok(5) == b"5 rsp 6 200 OK\n"
    assert error(5, "syslog before open") == b"5 rsp 22 500 syslog before open\n"
    assert serverclose() == b"0 serverclose 0\n"
    assert len(parse_rsp(RelpDecoder().feed(error(1, "x" * 200))[0].data)[1]) == 76


@pytest.mark.parametrize(
    "txnr, after", [(1, 2), (41, 42), (MAX_TXNR - 1, MAX_TXNR), (MAX_TXNR, 1), (0, 1)]
)
def test_next_txnr_wraps(txnr: int, after: int) -> None:
    assert next_txnr(txnr) == after


RSPS = [
    pytest.param(b"200 OK", (200, "OK", b""), id="ok"),
    pytest.param(b"500 command disabled", (500, "command disabled", b""), id="error"),
    pytest.param(
        b"200 OK\nrelp_version=0\ncommands=syslog",
        (200, "OK", b"relp_version=0\ncommands=syslog"),
        id="open",
    ),
    pytest.param(b"200 ", (200, "", b""), id="empty-text"),
]


@pytest.mark.parametrize("data, parsed", RSPS)
def test_parse_rsp(data: bytes, parsed: tuple[int, str, bytes]) -> None:
    assert parse_rsp(data) == parsed


@pytest.mark.parametrize("data", [b"", b"20 OK", b"2000 OK", b"abc OK", b"200\nOK"])
def test_parse_rsp_refuses(data: bytes) -> None:
    with pytest.raises(RelpError, match="3-digit status code"):
        parse_rsp(data)


def test_open_offer_as_librelp_orders_it() -> None:
    frame = open_offer(version="0.1.0", software=("plura-relay", "https://x"))
    assert frame == (
        b"1 open 72 relp_version=0\nrelp_software=plura-relay,0.1.0,https://x\ncommands=syslog\n"
    )


OFFERS = [
    pytest.param(b"", {}, id="empty"),
    pytest.param(b"relp_version=0", {"relp_version": ["0"]}, id="one"),
    pytest.param(b"a=1,2,,3\n\nb=\nc", {"a": ["1", "2", "3"], "b": [], "c": []}, id="odd"),
]


@pytest.mark.parametrize("data, offers", OFFERS)
def test_parse_offers(data: bytes, offers: dict[str, list[str]]) -> None:
    assert parse_offers(data) == offers


def test_answer_offers() -> None:
    client = {"relp_version": ["3"], "commands": ["syslog", "frobnicate"], "x": ["y"]}
    answer = answer_offers(client, version="0.1.0", software=("me", "url"))
    assert answer == {
        "relp_version": ["0"],
        "relp_software": ["me", "0.1.0", "url"],
        "commands": ["syslog"],
    }
    assert open_response(1, answer) == (
        b"1 rsp 64 200 OK\nrelp_version=0\nrelp_software=me,0.1.0,url\ncommands=syslog\n"
    )


@pytest.mark.parametrize(
    "client, reason",
    [
        ({"commands": ["syslog"]}, "relp_version"),
        ({"relp_version": ["x"], "commands": ["syslog"]}, "relp_version"),
        ({"relp_version": ["0"]}, "required command"),
        ({"relp_version": ["0"], "commands": ["other"]}, "required command"),
    ],
)
def test_answer_offers_refuses(client: dict[str, list[str]], reason: str) -> None:
    with pytest.raises(RelpError, match=reason):
        answer_offers(client)


# -- the server session -------------------------------------------------------------------------


def session_steps(wire: bytes) -> list[tuple[bytes, bytes | None, int, bool, str]]:
    session = ServerSession(version="0.1.0", software=("plura-relay", "url"))
    steps = [session.on_frame(frame) for frame in RelpDecoder().feed(wire)]
    return [(s.reply, s.message, s.txnr, s.close, s.error) for s in steps]


def test_session_open_syslog_close() -> None:
    wire = OMRELP_OPEN + encode(2, b"syslog", b"<13>a") + encode(3, b"close")
    opened, message, closed = session_steps(wire)
    reply = RelpDecoder().feed(opened[0])[0]
    assert reply.txnr == 1 and reply.command == b"rsp"
    code, text, offers = parse_rsp(reply.data)
    assert (code, text) == (200, "OK")
    assert parse_offers(offers) == {
        "relp_version": ["0"],
        "relp_software": ["plura-relay", "0.1.0", "url"],
        "commands": ["syslog"],
    }
    assert opened[1:] == (None, 0, False, "")
    assert message == (b"", b"<13>a", 2, False, "")
    assert closed == (b"3 rsp 0\n0 serverclose 0\n", None, 0, True, "")


def test_session_txnr_wraps() -> None:
    session = ServerSession()
    session.on_frame(RelpFrame(MAX_TXNR - 1, b"open", b"relp_version=0\ncommands=syslog"))
    assert session.on_frame(RelpFrame(MAX_TXNR, b"syslog", b"a")).message == b"a"
    assert session.on_frame(RelpFrame(1, b"syslog", b"b")).message == b"b"


OPEN = encode(1, b"open", b"relp_version=0\ncommands=syslog")
SESSION_ERRORS = [
    pytest.param(encode(1, b"syslog", b"a"), b"1 rsp", "syslog before open", id="syslog-first"),
    pytest.param(OPEN + encode(1, b"open", b""), b"", "out of sequence", id="open-twice-same-txnr"),
    pytest.param(OPEN + encode(2, b"open", b""), b"2 rsp", "already open", id="open-twice"),
    pytest.param(OPEN + encode(3, b"syslog", b"a"), b"", "TXNR 3 out of sequence", id="gap"),
    pytest.param(OPEN + encode(1, b"syslog", b"a"), b"", "TXNR 1 out of sequence", id="repeat"),
    pytest.param(OPEN + encode(0, b"syslog", b"a"), b"", "TXNR 0", id="txnr-0"),
    pytest.param(
        OPEN + encode(2, b"frob", b""), b"2 rsp", "unexpected command 'frob'", id="unknown"
    ),
    pytest.param(
        OPEN + encode(2, b"rsp", b"200 OK"), b"2 rsp", "unexpected command 'rsp'", id="rsp"
    ),
    pytest.param(OPEN + encode(2, b"SYSLOG", b"a"), b"2 rsp", "'SYSLOG'", id="case-matters"),
    pytest.param(encode(1, b"open", b"commands=syslog"), b"1 rsp", "relp_version", id="no-version"),
    pytest.param(
        encode(1, b"open", b"relp_version=0"), b"1 rsp", "required command", id="no-syslog"
    ),
]


@pytest.mark.parametrize("wire, rsp, reason", SESSION_ERRORS)
def test_session_errors_end_it(wire: bytes, rsp: bytes, reason: str) -> None:
    *_, (reply, message, _, close, error_text) = session_steps(wire)
    assert reason in error_text and close and message is None
    assert reply.startswith(rsp) and reply.endswith(b"0 serverclose 0\n")
    if rsp:
        (answer, _) = RelpDecoder().feed(reply)
        assert parse_rsp(answer.data)[0] == 500


def test_session_decoder_error_and_stop() -> None:
    session = ServerSession()
    step = session.on_error(RelpError("expecting TXNR digits"))
    assert step.reply == b"0 serverclose 0\n" and step.close
    assert step.error == "expecting TXNR digits"
    assert session.on_frame(RelpFrame(1, b"open", b"")).close
    assert ServerSession().serverclose() == b"0 serverclose 0\n"
