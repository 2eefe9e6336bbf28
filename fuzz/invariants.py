"""The properties the fuzzers check, shared by the atheris harnesses and tests/fuzz.

Each `check_*` function runs one stage on one input and raises `InvariantError` (an
AssertionError, so pytest shows it as a failed assertion) when a property does not hold; a
crash of the code under test propagates as is. Plain `if`/`raise` rather than `assert`, so the
checks stay on under `python -O`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence

from relay.ingest.framing import OVERSIZE_MODES, Framer
from relay.message import FACILITY_NAMES, INVALID_PRI, SEVERITY_NAMES, SyslogMessage
from relay.output.template import CeeTemplate
from relay.parse import MAX_MESSAGE_BYTES, _parse_general, parse, programname, rfc3164, sanitize
from relay.parse.rfc3164 import parse_rfc3164
from relay.pipeline import Pipeline, ceelog_name
from tests.ingest.test_framing import reference as imtcp_reference

PEER = "192.0.2.7"
RECEIVED_AT = 1_700_000_000.123456
CEE_KEYS = (
    "timegenerated", "programname", "hostname", "syslogtag", "pri", "pri-text",
    "syslogfacility", "syslogfacility-text", "syslogseverity", "syslogseverity-text", "msg",
)  # fmt: skip
_TIMEGENERATED = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}[+-][0-9]{2}:[0-9]{2}"
)
_CONTROL = re.compile(rb"[\x00-\x1f]")

# Parsing is linear: a few microseconds per KiB. A frame may take at most this long (plus the
# per-byte allowance) before it counts as a hang; ~1000x the real cost, so noise never trips it.
PARSE_BUDGET_S = 0.005
PARSE_BUDGET_PER_BYTE_S = 1e-6


class InvariantError(AssertionError):
    """A property of the code under test does not hold for this input."""


def _require(condition: object, what: str, *details: object) -> None:
    if not condition:
        raise InvariantError(" | ".join((what, *map(repr, details))))


# -- parse ---------------------------------------------------------------------------------------


def check_parse(
    frame: bytes,
    *,
    fromhost: bytes | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
    rsyslog_sd: bool = False,
) -> SyslogMessage:
    """parse() returns a well-formed message, equal to the general path's."""
    message = parse(
        frame,
        received_at=RECEIVED_AT,
        peer=PEER,
        fromhost=fromhost,
        max_bytes=max_bytes,
        rsyslog_sd=rsyslog_sd,
    )
    general = _parse_general(frame, RECEIVED_AT, PEER, fromhost, max_bytes, rsyslog_sd)
    _require(message == general, "fast path != general path", frame, message, general)
    _require(isinstance(message, SyslogMessage), "not a SyslogMessage", frame, message)
    for name in ("hostname", "syslogtag", "programname", "msg", "timestamp", "raw"):
        _require(type(getattr(message, name)) is bytes, f"{name} is not bytes", frame, message)
    _require(message.pri == INVALID_PRI or 0 <= message.pri <= 191, "pri out of range", message)
    _require(message.raw is frame or message.raw == frame, "raw != frame", frame, message)
    _require(message.peer == PEER and message.received_at == RECEIVED_AT, "peer/clock", message)
    _require(message.programname == programname(message.syslogtag), "programname", message)
    # control bytes never reach the template (sanitizing turns them into #ooo): the JSON
    # escaping relies on it
    for name in ("syslogtag", "programname", "msg", "timestamp"):
        value = getattr(message, name)
        _require(_CONTROL.search(value) is None, f"control byte in {name}", frame, value)
    if fromhost is None:
        _require(_CONTROL.search(message.hostname) is None, "control byte in hostname", message)
    return message


def check_rfc3164(frame: bytes) -> None:
    """parse_rfc3164's own shortcut (the `_COMMON` regex) gives what its general path gives,
    on the sanitized frame from just after the PRI."""
    data = sanitize(frame)
    pos = data.index(b">") + 1 if data.startswith(b"<") and b">" in data else 0
    got, want = parse_rfc3164(data, pos), rfc3164._parse_general(data, pos)
    _require(got == want, "parse_rfc3164 shortcut != its general path", data, pos, got, want)


def check_parse_time(frame: bytes, *, tries: int = 3) -> float:
    """Parsing `frame` takes linear time: raise if the best of `tries` runs is over budget.

    Only a slow first run is timed again, so this costs one parse in the common case.
    """
    budget = PARSE_BUDGET_S + PARSE_BUDGET_PER_BYTE_S * len(frame)
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        parse(frame, received_at=RECEIVED_AT, peer=PEER)
        best = min(best, time.perf_counter() - start)
        if best <= budget:
            return best
    raise InvariantError(
        f"parse took {best * 1000:.1f} ms for {len(frame)} bytes "
        f"(budget {budget * 1000:.1f} ms): super-linear | {frame[:200]!r}"
    )


# -- template ------------------------------------------------------------------------------------


def _pri_values(pri: int) -> tuple[str, ...]:
    if pri == INVALID_PRI:
        return ("invld", "invld.debug", "invld", "invld", "7", "debug")
    facility, severity = FACILITY_NAMES[pri >> 3], SEVERITY_NAMES[pri & 7]
    return (str(pri), f"{facility}.{severity}", str(pri >> 3), facility, str(pri & 7), severity)


def check_line(line: bytes, message: SyslogMessage) -> None:
    """One LF-terminated JSON line, the 11 keys in order, carrying the fields byte for byte."""
    _require(type(line) is bytes, "line is not bytes", line)
    _require(
        line.endswith(b"\n") and line.count(b"\n") == 1, "not exactly one LF, at the end", line
    )
    try:
        # rsyslog writes bytes >= 0x80 raw: surrogateescape keeps invalid UTF-8 decodable
        document = json.loads(line.decode("utf-8", "surrogateescape"))
    except ValueError as error:
        raise InvariantError(f"line is not JSON: {error} | {line!r}") from None
    _require(isinstance(document, dict) and list(document) == ["ceelog"], "not {ceelog}", line)
    fields = document["ceelog"]
    _require(isinstance(fields, dict) and tuple(fields) == CEE_KEYS, "keys/order", line)
    _require(all(isinstance(value, str) for value in fields.values()), "non-string value", line)
    _require(_TIMEGENERATED.fullmatch(fields["timegenerated"]), "timegenerated", line)
    for key, attribute in (
        ("programname", "programname"),
        ("hostname", "hostname"),
        ("syslogtag", "syslogtag"),
        ("msg", "msg"),
    ):
        carried = fields[key].encode("utf-8", "surrogateescape")
        _require(carried == getattr(message, attribute), f"{key} not carried", line, message)
    pri_keys = CEE_KEYS[4:10]
    _require(tuple(fields[key] for key in pri_keys) == _pri_values(message.pri), "pri fields", line)


def check_render(message: SyslogMessage) -> bytes:
    line = CeeTemplate().render(message)
    check_line(line, message)
    return line


# -- pipeline ------------------------------------------------------------------------------------


class ListSink:
    """A LineSink that keeps every line in memory, in order, with its file name."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, bytes]] = []

    def append(self, name: str, line: bytes) -> None:
        self.lines.append((name, line))

    def extend(self, name: str, lines: list[bytes]) -> None:
        self.lines.extend((name, line) for line in lines)

    def extend_block(self, name: str, block: bytes, count: int) -> None:
        *lines, rest = block.split(b"\n")
        lines = [line + b"\n" for line in lines]
        if len(lines) != count or rest:
            raise AssertionError(f"a block of {count} lines holds {len(lines)}: {block[:200]!r}")
        self.extend(name, lines)


class _Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes, float, int]] = []

    def observe(self, ip: str, hostname: bytes, received_at: float, count: int = 1) -> None:
        self.seen.append((ip, hostname, received_at, count))


class _FixedHostnames:
    def __init__(self, name: bytes) -> None:
        self.name = name

    def fromhost(self, ip: str) -> bytes:
        return self.name


def check_pipeline(
    frames: Sequence[bytes],
    *,
    fromhost: bytes | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
    rsyslog_sd: bool = False,
    messages: Sequence[SyslogMessage] | None = None,
) -> None:
    """handle_batch (fused hot path included) writes exactly render(parse(frame)) per frame.

    `messages`: parse(frame) for each frame, when the caller has them already."""
    sink, observer = ListSink(), _Observer()
    pipeline = Pipeline(
        sink,
        observer=observer,
        hostnames=None if fromhost is None else _FixedHostnames(fromhost),
        max_message_bytes=max_bytes,
        rsyslog_sd=rsyslog_sd,
    )
    pipeline.handle_batch(list(frames), PEER, RECEIVED_AT)
    template = CeeTemplate()
    messages = messages or [
        parse(
            frame,
            received_at=RECEIVED_AT,
            peer=PEER,
            fromhost=fromhost,
            max_bytes=max_bytes,
            rsyslog_sd=rsyslog_sd,
        )
        for frame in frames
    ]
    expected = [(ceelog_name(PEER), template.render(message)) for message in messages]
    _require(sink.lines == expected, "pipeline != render(parse())", frames, sink.lines, expected)
    _require(pipeline.received == len(frames), "received count", pipeline.received, len(frames))
    seen = [(PEER, messages[-1].hostname, RECEIVED_AT, len(frames))] if frames else []
    _require(observer.seen == seen, "observer", observer.seen, seen)


# -- framing -------------------------------------------------------------------------------------

FramerResult = tuple[list[bytes], tuple[int, int, int, int]]


def run_framer(
    chunks: Sequence[bytes], *, max_msg_bytes: int, max_frame_bytes: int, oversize: str
) -> FramerResult:
    """Feed `chunks` then close; check the per-call invariants; return frames and counters."""
    framer = Framer(max_msg_bytes=max_msg_bytes, max_frame_bytes=max_frame_bytes, oversize=oversize)
    frames: list[bytes] = []
    for chunk in chunks:
        frames += framer.feed(chunk)
        # memory is bounded whatever the input
        _require(framer.buffered_bytes <= max_msg_bytes, "buffered_bytes > max_msg_bytes",
                 oversize, max_msg_bytes, framer.buffered_bytes)  # fmt: skip
    frames += framer.close()
    _require(framer.buffered_bytes == 0, "bytes left buffered after close", framer.buffered_bytes)
    for frame in frames:
        _require(type(frame) is bytes and frame, "frame empty or not bytes", oversize, frame)
        _require(len(frame) <= max_msg_bytes, "frame longer than max_msg_bytes",
                 oversize, max_msg_bytes, len(frame))  # fmt: skip
    counters = (
        framer.truncated,
        framer.discarded_bytes,
        framer.framing_errors,
        framer.incomplete_at_close,
    )
    return frames, counters


def chunked(stream: bytes, sizes: Sequence[int]) -> list[bytes]:
    """Cut `stream` into pieces of the given sizes (cycled; a 0 gives an empty feed)."""
    if not sizes or not any(sizes):
        return [stream]
    chunks, pos, i = [], 0, 0
    while pos < len(stream):
        size = sizes[i % len(sizes)]
        chunks.append(stream[pos : pos + size])
        pos, i = pos + size, i + 1
    return chunks


def check_framer(
    stream: bytes,
    chunkings: Sequence[Sequence[int]],
    *,
    max_msg_bytes: int,
    max_frame_bytes: int,
    check_counters: bool = True,
) -> dict[str, list[bytes]]:
    """In every oversize mode: the per-call invariants, the same frames (and counters) for
    the whole stream at once, one byte at a time and each chunking; and, when nothing was
    oversize, the same frames in every mode. Returns the frames per mode."""
    limits = {"max_msg_bytes": max_msg_bytes, "max_frame_bytes": max_frame_bytes}
    result: dict[str, list[bytes]] = {}
    truncated = False
    for mode in OVERSIZE_MODES:
        whole = run_framer([stream], oversize=mode, **limits)
        splits = [[stream[i : i + 1] for i in range(len(stream))]]
        splits += [chunked(stream, sizes) for sizes in chunkings]
        for chunks in splits:
            other = run_framer(chunks, oversize=mode, **limits)
            _require(other[0] == whole[0], "frames depend on the chunking",
                     mode, limits, [len(c) for c in chunks], whole[0], other[0])  # fmt: skip
            if check_counters:
                _require(other[1] == whole[1], "counters depend on the chunking",
                         mode, limits, [len(c) for c in chunks], whole[1], other[1])  # fmt: skip
        result[mode] = whole[0]
        truncated = truncated or whole[1][0] > 0
    if not truncated:
        _require(len({tuple(frames) for frames in result.values()}) == 1,
                 "modes differ though nothing was oversize", limits, result)  # fmt: skip
    return result


def check_framer_reference(
    stream: bytes, frames: dict[str, list[bytes]], *, max_msg_bytes: int, max_frame_bytes: int
) -> None:
    """The frames equal the byte-at-a-time port of imtcp in tests/ingest/test_framing.py, which was
    checked against a real rsyslogd."""
    for mode, got in frames.items():
        want = imtcp_reference(
            stream, max_msg=max_msg_bytes, max_frame=max_frame_bytes, oversize=mode
        )
        _require(got == want, "frames != imtcp reference",
                 mode, max_msg_bytes, max_frame_bytes, stream, got, want)  # fmt: skip


def check_framer_mode(
    stream: bytes, chunks: Sequence[bytes], *, mode: str, max_msg_bytes: int, max_frame_bytes: int
) -> list[bytes]:
    """One mode, two feeds (what check_framer does for all modes and many chunkings, at a
    cost per input a fuzzer can afford): the per-call invariants; the whole stream and `chunks`
    give the same frames and counters, equal to the imtcp reference; and when nothing was
    oversize, the frames are what the reference gives in the other modes too."""
    limits = {"max_msg_bytes": max_msg_bytes, "max_frame_bytes": max_frame_bytes}
    whole = run_framer([stream], oversize=mode, **limits)
    other = run_framer(chunks, oversize=mode, **limits)
    _require(other[0] == whole[0], "frames depend on the chunking",
             mode, limits, [len(c) for c in chunks], stream, whole[0], other[0])  # fmt: skip
    _require(other[1] == whole[1], "counters depend on the chunking",
             mode, limits, [len(c) for c in chunks], stream, whole[1], other[1])  # fmt: skip
    check_framer_reference(stream, {mode: whole[0]}, **limits)
    if whole[1][0] == 0:  # nothing truncated
        others = {m: whole[0] for m in OVERSIZE_MODES if m != mode}
        check_framer_reference(stream, others, **limits)
    return whole[0]
