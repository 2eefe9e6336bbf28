"""Quick property-based fuzzing of every stage, for CI (a few seconds; fuzz/README.md has the
long atheris runs). The properties are fuzz/invariants.py's, shared with the atheris harnesses:

- parse never raises, returns a well-formed message whose fast path equals the general path,
  in linear time;
- render gives one LF-terminated JSON line with the 11 keys in order, carrying the fields;
- the pipeline's fused hot path writes exactly render(parse(frame));
- the framer never raises, keeps at most max_msg_bytes buffered, cuts no frame longer than
  max_msg_bytes, gives the same frames (and counters) however the stream is chunked, matches
  the byte-at-a-time imtcp reference, and is mode-independent when nothing is oversize.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.invariants import (
    check_framer,
    check_framer_reference,
    check_parse,
    check_parse_time,
    check_pipeline,
    check_render,
    check_rfc3164,
    run_framer,
)
from tests.rsyslogd import load_corpus

CRASHES_DIR = Path(__file__).parent.parent.parent / "fuzz" / "crashes"

# Pieces of syslog headers and the bytes that make parsers branch: PRI forms, the RFC 5424
# version, month names, day/time/year digits, RFC 3339 timestamps, names, tags, structured
# data, JSON escapes, control bytes and invalid UTF-8.
PIECES = [
    b"<13>", b"<0>", b"<191>", b"<192>", b"<013>", b"<>", b"<", b">", b"<1", b"<-1>", b"<9999>",
    b"1 ", b"2 ", b"1", b"-", b"- ", b" ", b" ", b"  ", b"Jan", b"jan", b"JAN", b"Feb", b"Dec",
    b"Ja", b" 5", b"05", b"5", b"31", b"32", b"0", b" 0", b"2024", b"1969", b"2100", b"99999999999",
    b"10:11:12", b"23:59:60", b"24:00:00", b"10:11:12.123", b"10:11:12:", b":", b".", b"T", b"Z",
    b"2024-01-05T10:11:12Z", b"2024-01-05T10:11:12.123456+09:00", b"2099-12-31T23:59:60-23:59",
    b"2100-01-01T00:00:00Z", b"2024-01-05T10:11:12", b"+09:00", b"-24:00", b"host01", b"host-",
    b"h.example.com", b"10.0.0.1", b"app", b"app:", b"app[1]:", b"su:", b"postfix/smtpd[9]:",
    b"%ASA-6-302013:", b"[", b"]", b"] ", b"[x@1 a=\"1\"]", b"[a][b]", b"\\]", b"\\", b"\"", b"/",
    b"{", b"{\"k\":1}", b"=", b"x", b"msg text", b"\t", b"\n", b"\r\n", b"\x00", b"\x01", b"\x1f",
    b"\x7f", b"\x80", b"\xff", b"\xc3\xa9", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\xea\xb0\x80",
]  # fmt: skip

TOKENS = st.lists(st.sampled_from(PIECES), max_size=16).map(b"".join)
HEADS = st.sampled_from(
    [
        b"<13>Jan  5 10:11:12 host01 ", b"<34>Oct 11 22:14:15 mymachine su: ",
        b"<13>1 - host app - - - ", b"<165>1 2003-10-11T22:14:15.003Z h.example.com app 42 ID47 ",
        b"<13>1 - h a p m ", b"<190>2024 Jan  5 10:11:12: ", b"<13>Jan 05 2024 10:11:12 h t: ",
    ]
)  # fmt: skip
FRAMES = (
    TOKENS
    | st.binary(max_size=120)
    | st.tuples(HEADS, TOKENS | st.binary(max_size=40)).map(b"".join)
)
OPTIONS = st.fixed_dictionaries(
    {
        "fromhost": st.sampled_from([None, b"relay-peer", b'a\\b/"c\xff']),
        "max_bytes": st.sampled_from([8096, 1, 16, 64]),
        "rsyslog_sd": st.booleans(),
    }
)


# -- parse, render, pipeline ----------------------------------------------------------------------


@settings(max_examples=2000, deadline=None)
@given(frame=FRAMES)
def test_parse_and_render(frame: bytes) -> None:
    check_render(check_parse(frame))


@settings(max_examples=1000, deadline=None)
@given(frame=FRAMES, options=OPTIONS)
def test_parse_options(frame: bytes, options: dict[str, object]) -> None:
    message = check_parse(frame, **options)  # type: ignore[arg-type]
    check_render(message)


@settings(max_examples=1500, deadline=None)
@given(frame=FRAMES)
def test_rfc3164_shortcut_equals_its_general_path(frame: bytes) -> None:
    check_rfc3164(frame)


@settings(max_examples=600, deadline=None)
@given(frames=st.lists(FRAMES, max_size=6), options=OPTIONS)
def test_pipeline_batch_equals_render_of_parse(
    frames: list[bytes], options: dict[str, object]
) -> None:
    check_pipeline(frames, **options)  # type: ignore[arg-type]


def test_corpus() -> None:
    frames = [message.raw for message in load_corpus()]
    assert len(frames) > 400
    for frame in frames:
        check_render(check_parse(frame))
        check_parse(frame, fromhost=b"relay-peer", max_bytes=64, rsyslog_sd=True)
        check_rfc3164(frame)
        check_parse_time(frame)
    check_pipeline(frames)


LONG = 8000  # about max_message_bytes: what one TCP frame or UDP datagram can carry
LINEAR_CASES = [
    pytest.param(b"<13>1 - " + b"h" * LONG + b" a p m x", id="5424-hostname"),
    pytest.param(b"<13>1 - h a " + b"p" * LONG + b" m x", id="5424-procid"),
    pytest.param(b"<13>1 - h a p " + b"m" * LONG + b" x", id="5424-msgid"),
    pytest.param(b"<13>1 - h " + b"A" * LONG + b" p m - x", id="5424-app-valid-sd"),
    pytest.param(b"<13>1 - h " + b"[" * LONG + b" p m x", id="5424-app-brackets"),
    pytest.param(b"<13>1 - h a p m " + b"[a]" * (LONG // 3) + b"x", id="5424-sd-elements"),
    pytest.param(b"<13>1 - h a p m [" + b"\\] " * (LONG // 3), id="5424-sd-escaped"),
    pytest.param(b"<13>Jan  5 10:11:12 " + b"h" * LONG + b" x", id="3164-hostname"),
    pytest.param(b"<13>Jan  5 10:11:12 h " + b"t" * LONG, id="3164-tag"),
    pytest.param(b"<13>" + b"1" * LONG, id="3164-digits"),
    pytest.param(b"<13>2024-01-05T10:11:12." + b"1" * LONG + b"Z h t: x", id="3164-secfrac"),
    pytest.param(b"<" + b"0" * LONG + b">x", id="pri-zeros"),
    pytest.param(b"<13>" + b"\x01" * LONG, id="control-bytes"),
    # fuzz/crashes/slow-5424-app-name.bin: quadratic backtracking over a long APP-NAME before
    # the programname part became possessive (found reading the regex, confirmed by this check;
    # the atheris run's inputs stayed too short to trip it, see fuzz/README.md)
    pytest.param(b"<13>1 - h " + b"A" * LONG + b" p m x", id="5424-app-invalid-sd"),
    pytest.param(b"<13>1 - h " + b"A" * LONG, id="5424-app-to-the-end"),
]


@pytest.mark.parametrize("frame", LINEAR_CASES)
def test_parse_time_is_linear_in_long_fields(frame: bytes) -> None:
    check_parse_time(frame)


# -- framing --------------------------------------------------------------------------------------

STREAM_PIECES = st.sampled_from(
    [b"\n", b"\n", b" ", b"0", b"1", b"3", b"9", b"12 ", b"5 hello", b"40 ", b"999999999 ",
     b"<13>x", b"abc", b"\x00", b"\r", b"\n7 abc", b"\xff"]
)  # fmt: skip
STREAMS = st.lists(STREAM_PIECES, max_size=30).map(b"".join) | st.binary(max_size=80)
CHUNKINGS = st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=5), max_size=3)


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=STREAMS,
    chunkings=CHUNKINGS,
    max_msg=st.integers(1, 12),
    max_frame=st.integers(0, 48) | st.just(200_000),
)
def test_framer(stream: bytes, chunkings: list[list[int]], max_msg: int, max_frame: int) -> None:
    frames = check_framer(stream, chunkings, max_msg_bytes=max_msg, max_frame_bytes=max_frame)
    check_framer_reference(stream, frames, max_msg_bytes=max_msg, max_frame_bytes=max_frame)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.binary(min_size=1, max_size=20).filter(lambda b: b"\n" not in b)))
def test_framer_lf_oracle(lines: list[bytes]) -> None:
    """LF-framed lines that do not start with a digit and fit come out as they went in."""
    lines = [line for line in lines if not 0x30 <= line[0] <= 0x39]
    stream = b"".join(line + b"\n" for line in lines)
    for mode in ("truncate", "split", "rsyslog"):
        frames, _ = run_framer([stream], max_msg_bytes=20, max_frame_bytes=100, oversize=mode)
        assert frames == lines


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(st.binary(min_size=1, max_size=30)), sizes=st.lists(st.integers(1, 7)))
def test_framer_octet_oracle(messages: list[bytes], sizes: list[int]) -> None:
    """Octet-counted frames that fit come out as they went in, whatever they contain."""
    stream = b"".join(b"%d %s" % (len(message), message) for message in messages)
    frames = check_framer(stream, [sizes], max_msg_bytes=30, max_frame_bytes=30)
    assert frames["truncate"] == messages


@pytest.mark.parametrize("mode", ["truncate", "split", "rsyslog"])
@pytest.mark.parametrize(
    "stream",
    [b"x" * (1 << 20), b"9" * (1 << 20), b"100000 " + b"y" * (1 << 20)],
    ids=["no-lf", "digits", "octet-count"],
)
def test_framer_memory_is_bounded(stream: bytes, mode: str) -> None:
    """1 MiB without a frame end: never more than max_msg_bytes buffered, however it arrives."""
    results = [
        run_framer(chunks, max_msg_bytes=64, max_frame_bytes=200_000, oversize=mode)
        for chunks in ([stream], [stream[i : i + 4096] for i in range(0, len(stream), 4096)])
    ]
    assert results[0] == results[1]
